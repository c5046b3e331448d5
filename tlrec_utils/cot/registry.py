"""The CoT teachers: one table, `TEACHERS`, from which run_cot_generation's and the pipeline's --teacher choices,
help texts and behaviour (asked at all, at a price, in which modes) come; and the ways of asking one, `MODES`.

A new teacher: its class in teacher.py (`answer(user, stage, messages) -> Reply`, `close()`, a `label`) and one
line in `TEACHERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# how run_cot_generation asks an OpenAI-protocol teacher (--mode; docs/cot.md)
MODES = {
    "live": "requests in flight at once, answers as they come (resume, retries, caps)",
    "batch": "the OpenAI Batch API (/v1/files + /v1/batches): one batch round per stage, half the live price",
    "files": "request JSONL files for an offline runner (vllm run-batch), read back on the next run",
}


@dataclass(frozen=True)
class Teacher:
    what: str  # one line for --help and the docs
    build: Callable | None  # (cfg, budget, interactions, item_code, kind) -> a teacher; None: the records are read
    server: bool = False  # asked over the OpenAI protocol: --model, --base_url and the key apply
    paid: bool = False  # its answers cost money: never deleted (moved aside) when settings change
    modes: tuple[str, ...] = ("live",)  # the --mode values it takes


def _openai(cfg, budget, interactions, code, kind):
    from .teacher import OpenAITeacher

    return OpenAITeacher(model=cfg.model, base_url=cfg.base_url, temperature=cfg.temperature,
                         max_tokens=cfg.max_tokens, seed=cfg.seed, concurrency=cfg.concurrency,
                         requests_per_minute=cfg.requests_per_minute, max_retries=cfg.max_retries,
                         request_timeout=cfg.request_timeout, retry_base_delay=cfg.retry_base_delay, budget=budget)


def _heuristic(cfg, budget, interactions, code, kind):
    from .teacher import HeuristicTeacher, cooccurrence_matrix

    return HeuristicTeacher(cooccurrence_matrix(interactions.matrix), code, kind)


TEACHERS: dict[str, Teacher] = {
    "openai": Teacher("any OpenAI-protocol server: the OpenAI API (GPT-4, as the paper) or a local vLLM/Ollama "
                      "(--base_url)", _openai, server=True, paid=True, modes=tuple(MODES)),
    "heuristic": Teacher("offline, NOT an LLM: answers written from the data (demos, dry runs, tests)", _heuristic),
    "published": Teacher("the TLRec authors' released GPT-4 CoT data (stage123.json); asks no one (pipeline only)",
                         None),
}
ASKED = [name for name, t in TEACHERS.items() if t.build is not None]  # run_cot_generation's --teacher choices


def help_text(names=None) -> str:
    return "; ".join(f"{name}: {TEACHERS[name].what}" for name in (names or TEACHERS))
