"""CoT data construction (paper Section 4.1, Table 2): candidate sets, three chained teacher prompts per
user, hit filtering, and the CoT instruction records for curriculum tuning.

Users are the prepared train records whose target is liked (a window of watched items; the target is
the true next item). Output directory:

- `progress.jsonl`: one line per answered stage (appended and flushed at once): what a resume reuses;
- `responses.jsonl`: one line per completed user (candidates, three prompts, three answers, usage, hit);
- `cot_train.json`: three instruction records (`stage` 1, 2, 3) per user whose Stage 3 hit the true item
  (`--hit_match`), in the TLRec authors' format (`load_cot_records` also reads their released stage123.json);
- `summary.json`: counts, hit rate, candidate diagnostics, tokens and estimated cost;
- `run_config.json`: the settings that fix the outputs; a rerun with different ones is refused.

A run killed at any moment (kill -9) loses at most the requests in flight: a rerun into the same
directory skips every user and stage already answered, and a torn last line is cut off, never duplicated.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import prompts
from ..data.records import load_records
from ..errors import InputError, mask_secrets_in
from ..fileio import append_jsonl, atomic_write_json, exclusive_lock, read_jsonl, sha256_file
from .records import cot_records
from .replies import HIT_RULES, hits, line_hits, parse_recommendations
from .teacher import Budget, BudgetExceeded, HeuristicTeacher, OpenAITeacher, TeacherError, cooccurrence_matrix
from .users import CONTEXT_STYLES, CotUser, LazyUsers, build_users, detect_kind

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # rough size estimate for --dry_run (no tokenizer needed)
# settings that change what is asked or kept: a resume must use the same ones
FINGERPRINT_KEYS = (
    "neighbor_num", "candidate_num", "seed", "allow_same_user_neighbors", "ensure_target", "teacher",
    "model", "temperature", "max_tokens", "kind", "system_prompt", "context_style",
)  # fmt: skip


@dataclass
class CotConfig:
    """A CoT generation run (run_cot_generation.py: its flags are the field names)."""

    data_dir: str = field(metadata={"help": "Prepared source domain (run_prepare_data.py output); its train.json "
                                            "is used."})
    output_dir: str = field(metadata={"help": "responses.jsonl, progress.jsonl, cot_train.json, summary.json; "
                                              "rerun to resume."})
    teacher: str = field(default="openai", metadata={"help": "openai (any OpenAI-compatible server) or heuristic "
                                                             "(offline, NOT an LLM)."})
    model: str = field(default="gpt-4", metadata={"help": "The teacher model's name on the server."})
    base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM) or "
                                        "http://localhost:11434/v1 (Ollama)."},
    )
    temperature: float = field(default=0.2, metadata={"help": "Sampling temperature of the teacher."})
    max_tokens: int = field(default=512, metadata={"help": "Longest teacher answer in tokens."})
    concurrency: int = field(default=8, metadata={"help": "Requests in flight at once."})
    requests_per_minute: float | None = field(
        default=None, metadata={"help": "Spread request starts to at most this many per minute."}
    )
    max_retries: int = field(default=6, metadata={"help": "Retries of a failed request."})
    request_timeout: float = field(
        default=120.0, metadata={"help": "Seconds before a request counts as timed out (and is retried)."}
    )
    retry_base_delay: float = field(
        default=1.0, metadata={"help": "First retry delay in seconds; doubles each attempt, with jitter; "
                                       "Retry-After wins."},
    )
    max_requests: int | None = field(
        default=None, metadata={"help": "Stop cleanly after this many requests (retries included)."}
    )
    max_cost: float | None = field(
        default=None, metadata={"help": "Stop cleanly once the estimated spend reaches this (in-flight requests "
                                        "still finish)."},
    )
    price_per_1k_input: float = field(default=0.03, metadata={"help": "USD per 1k prompt tokens (GPT-4 8k list "
                                                                      "price)."})
    price_per_1k_output: float = field(default=0.06, metadata={"help": "USD per 1k answer tokens."})
    max_users: int | None = field(default=None, metadata={"help": "Only the first N liked windows."})
    neighbor_num: int = field(default=12, metadata={"help": "Similar users whose items make the candidates."})
    candidate_num: int = field(default=19, metadata={"help": "Candidates shown to the teacher."})
    allow_same_user_neighbors: bool = field(
        default=False, metadata={"help": "The authors' behaviour: a user's own other windows may be neighbours "
                                         "(leaks the target)."},
    )
    ensure_target: bool = field(
        default=False, metadata={"help": "Insert the true next item into candidate sets that miss it instead of "
                                         "skipping the user."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the candidate sampling."})
    kind: str = field(default="auto", metadata={"help": "Item kind of the wording: movie, book, game, item (prompts."
                                                        "ITEM_KINDS), NOUN/VERB, NOUN/PLURAL/VERB, or auto (the "
                                                        "records' noun)."})
    hit_match: str = field(
        default="title_in_answer",
        metadata={"help": "Which users are kept (HIT_RULES): title_in_answer (the target's title appears in the "
                          "Stage-3 answer, as the authors) or recommended (the target is one of the parsed "
                          "recommended candidates)."},
    )
    context_style: str = field(
        default="history",
        metadata={"help": "history (watched items oldest first, item texts as they are) or authors (generate_data.py: "
                          "the preference then unpreference items reversed; a book shows as its quoted title only; "
                          "see shown_items)."},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "A system message sent with every request (the authors send none)."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Print the first user's prompts and a token/cost estimate; call nothing, "
                                         "write nothing."},
    )
    progress: bool = field(default=True, metadata={"help": "Progress bar (--no-progress: none)."})


@dataclass
class RunState:
    completed: int = 0
    hits: int = 0
    failed: int = 0
    stop_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    last_error: TeacherError | None = None


def check_run_config(output_dir: Path, cfg: CotConfig, kind: str, data_sha: str) -> None:
    fingerprint = {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}
    fingerprint.update(kind=kind, train_sha256=data_sha,
                       prompt_wording_sha256=prompts.cot_wording_fingerprint(kind, cfg.system_prompt))
    path = output_dir / "run_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        made_by_0_1_0 = (old.get("prompt_wording_sha256")
                         == prompts.cot_wording_fingerprint_strings_only(kind, cfg.system_prompt))
        if made_by_0_1_0:  # its fingerprint hashed the strings alone: these strings are the same
            old["prompt_wording_sha256"] = fingerprint["prompt_wording_sha256"]
        diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
        if "prompt_wording_sha256" in diff:  # made by another version of the prompts
            raise InputError(f"{path}: this output dir holds answers to prompts worded differently (another "
                             "version of tlrec_utils/prompts.py or --system_prompt); use a new --output_dir")
        if diff:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise InputError(f"{path}: this output dir was made with other settings ({what}); use a new --output_dir")
        if not made_by_0_1_0:
            return
    atomic_write_json(path, fingerprint)  # a new output dir, or one of 0.1.0 upgraded


# ------------------------------------------------------------------------------------------ asking


def teacher_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one request: the prompt alone, as the authors send it, unless a system message
    is asked for."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


class Generator:
    """Asks the teacher for every user not yet complete, writing each answer as soon as it arrives."""

    def __init__(self, cfg, kind, teacher, budget, output_dir: Path, progress: dict, responses: dict):
        self.cfg, self.kind, self.teacher, self.budget = cfg, kind, teacher, budget
        self.progress = progress  # key -> {stage: entry}
        self.responses = responses  # key -> line
        self.progress_file = open(output_dir / "progress.jsonl", "a", encoding="utf-8")
        self.responses_file = open(output_dir / "responses.jsonl", "a", encoding="utf-8")
        self.state = RunState(hits=sum(r["hit"] for r in responses.values()), completed=len(responses))
        self.hit_match = cfg.hit_match
        self.bar = None

    async def ask_user(self, user: CotUser) -> None:
        done = self.progress.get(user.key, {})
        answers = []
        for stage in (1, 2, 3):
            prompt = prompts.cot_teacher_prompt(user.context, answers, self.kind)
            if stage not in done:
                reply = await self.teacher.answer(user, stage, teacher_messages(prompt, self.cfg.system_prompt))
                entry = {
                    "key": user.key,
                    "stage": stage,
                    "prompt": prompt,
                    "answer": reply.text,
                    "prompt_tokens": reply.prompt_tokens,
                    "completion_tokens": reply.completion_tokens,
                }
                append_jsonl(self.progress_file, entry)
                done[stage] = entry
                self.progress[user.key] = done
            answers.append(done[stage]["answer"])
        recommended = parse_recommendations(answers[2], [c["title"] for c in user.candidates], user.shown)
        hit_by_rule = hits(user.show(user.target["title"]), answers[2], recommended, user.target["title"])
        hit = hit_by_rule[self.hit_match]
        line = {
            "key": user.key,
            "record_index": user.index,
            "user_id": user.user_id,
            "target": user.target,
            "watched": user.history,
            "candidates": user.candidates,
            "target_inserted": user.target_inserted,
            "target_shown": user.show(user.target["title"]),
            "context": user.context,
            "prompts": [done[s]["prompt"] for s in (1, 2, 3)],
            "answers": answers,
            "recommended": recommended,
            "hit": hit,
            "hit_by_rule": hit_by_rule,
            "usage": {
                "prompt_tokens": sum(done[s]["prompt_tokens"] for s in (1, 2, 3)),
                "completion_tokens": sum(done[s]["completion_tokens"] for s in (1, 2, 3)),
            },
            "teacher": self.teacher.label,
            "model": self.cfg.model if self.cfg.teacher == "openai" else None,
        }
        append_jsonl(self.responses_file, line)
        self.responses[user.key] = line
        self.state.completed += 1
        self.state.hits += hit

    async def run(self, users, total: int) -> RunState:
        """`users`: an iterator of CotUser (built as workers take them)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="CoT users", unit="user", disable=not self.cfg.progress)
        pending = iter(users)
        failures_in_a_row = 0
        give_up_after = max(3, self.cfg.concurrency)  # the server is down or broken: stop instead of crawling on

        async def worker():
            nonlocal failures_in_a_row
            for user in pending:  # one shared iterator: each user goes to exactly one worker
                if self.state.stop_reason:
                    return
                try:
                    await self.ask_user(user)
                    failures_in_a_row = 0
                except BudgetExceeded as exc:
                    self.state.stop_reason = str(exc)
                    return
                except TeacherError as exc:
                    self.state.failed += 1
                    self.state.errors.append(f"{user.key}: {exc}")
                    self.state.last_error = exc
                    logger.error("user %s failed (a rerun retries it): %s", user.key, exc)
                    failures_in_a_row += 1
                    if exc.fatal or failures_in_a_row >= give_up_after:
                        self.state.stop_reason = (str(exc) if exc.fatal
                                                  else f"{failures_in_a_row} users failed in a row: {exc}")
                        return
                self.bar.update(1)
                rate = self.state.hits / max(self.state.completed, 1)
                self.bar.set_postfix(hit=f"{rate:.1%}", spent=f"${self.budget.cost:.2f}", refresh=False)

        workers = self.cfg.concurrency if self.cfg.teacher == "openai" else 1
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, workers))))
        finally:
            self.bar.close()
            self.progress_file.close()
            self.responses_file.close()
            await self.teacher.close()
        return self.state


# ------------------------------------------------------------------------------------------ outputs


def dry_run_report(users: LazyUsers, todo: list[int], cfg: CotConfig, kind: str, budget: Budget) -> dict:
    """The first user's three prompts (earlier answers as placeholders) and an upper-bound estimate."""
    if len(users):
        first = users[0]
        placeholders = [f"<answer to step {s}>" for s in (1, 2)]
        for stage in (1, 2, 3):
            print(f"===== Stage {stage} prompt (user {first.key}) =====")
            print(prompts.cot_teacher_prompt(first.context, placeholders[: stage - 1], kind))
    # every earlier answer at most max_tokens; output at most max_tokens per stage
    prompt_tokens = 0
    for j in todo:
        context = users[j].context
        for stage in (1, 2, 3):
            text = prompts.cot_teacher_prompt(context, [""] * (stage - 1), kind)
            prompt_tokens += len(text) // CHARS_PER_TOKEN + (stage - 1) * cfg.max_tokens + 20
    completion_tokens = 3 * cfg.max_tokens * len(todo)
    estimate = {
        "users_to_ask": len(todo),
        "requests": 3 * len(todo),
        "prompt_tokens_upper_bound": prompt_tokens,
        "completion_tokens_upper_bound": completion_tokens,
        "cost_upper_bound": round(budget.cost_of(prompt_tokens, completion_tokens), 4),
    }
    print("===== estimate (about 4 characters per token; answers assumed max_tokens long) =====")
    print(json.dumps(estimate, indent=2))
    return estimate


def check_config(cfg: CotConfig) -> None:
    for name in ("concurrency", "neighbor_num", "candidate_num", "max_tokens"):
        if getattr(cfg, name) < 1:
            raise InputError(f"--{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.candidate_num < 10:
        raise InputError(f"--candidate_num must be at least 10 (Stage 3 asks for 10), got {cfg.candidate_num}")
    if cfg.teacher not in ("openai", "heuristic"):
        raise InputError(f"--teacher must be openai or heuristic, got {cfg.teacher!r}")
    if cfg.context_style not in CONTEXT_STYLES:
        raise InputError(f"--context_style must be one of {', '.join(CONTEXT_STYLES)}, got {cfg.context_style!r}")
    if cfg.hit_match not in HIT_RULES:
        raise InputError(f"--hit_match must be one of {', '.join(HIT_RULES)}, got {cfg.hit_match!r}")
    for name in ("max_requests", "max_cost", "max_users", "requests_per_minute", "request_timeout"):
        value = getattr(cfg, name)
        if value is not None and not value > 0:  # NaN too
            raise InputError(f"--{name} must be positive, got {value}")
    from ..validation import check_number, check_seed

    check_number("--max_retries", cfg.max_retries, 0)
    check_seed("--seed", cfg.seed)


def run(cfg: CotConfig) -> dict:
    check_config(cfg)
    data_dir, output_dir = Path(cfg.data_dir), Path(cfg.output_dir)
    train_path = data_dir / "train.json"
    records = load_records(train_path)
    kind = prompts.item_kind(detect_kind(records) if cfg.kind == "auto" else cfg.kind, "--kind").spec
    users, stats, interactions, code = build_users(records, cfg, kind)
    if not len(users) and not cfg.dry_run:
        raise InputError(no_users_message(train_path, stats, cfg))
    budget = Budget(cfg.max_requests, cfg.max_cost, cfg.price_per_1k_input, cfg.price_per_1k_output)

    if cfg.dry_run:  # reads what is there, writes and calls nothing
        done = {r["key"] for r in read_jsonl(output_dir / "responses.jsonl", repair=False)}
        print("===== users and candidate sets =====")
        print(json.dumps(stats, indent=2))
        return {**stats, **dry_run_report(users, users.pending(done), cfg, kind, budget)}

    existed = output_dir.exists()
    busy = f"{output_dir}: another run_cot_generation is writing here"
    with exclusive_lock(output_dir / ".lock", lambda _holder: busy):
        progress: dict[str, dict] = {}
        try:
            check_run_config(output_dir, cfg, kind, sha256_file(train_path))
            for entry in read_jsonl(output_dir / "progress.jsonl"):
                progress.setdefault(entry["key"], {})[entry["stage"]] = entry
            responses = {}
            for line in read_jsonl(output_dir / "responses.jsonl"):
                responses.setdefault(line["key"], line)
            todo = users.pending(responses)
            logger.info(
                "%d users seen, %d skipped (true item not a candidate), %d already done, %d to ask",
                stats["users_seen"], stats["skipped_target_not_in_candidates"], len(users) - len(todo), len(todo),
            )  # fmt: skip
            if cfg.teacher == "heuristic":
                teacher = HeuristicTeacher(cooccurrence_matrix(interactions.matrix), code, kind)
            elif cfg.teacher == "openai":
                teacher = OpenAITeacher(
                    model=cfg.model,
                    base_url=cfg.base_url,
                    temperature=cfg.temperature,
                    max_tokens=cfg.max_tokens,
                    seed=cfg.seed,
                    concurrency=cfg.concurrency,
                    requests_per_minute=cfg.requests_per_minute,
                    max_retries=cfg.max_retries,
                    request_timeout=cfg.request_timeout,
                    retry_base_delay=cfg.retry_base_delay,
                    budget=budget,
                )
            else:
                raise AssertionError(cfg.teacher)
            answered_before = len(responses)
            generator = Generator(cfg, kind, teacher, budget, output_dir, progress, responses)
            state = asyncio.run(generator.run((users[j] for j in todo), total=len(todo)))

            lines = list(responses.values())
            cot = cot_records(lines, kind, cfg.hit_match)
            nothing = not cot and not state.stop_reason and not users.pending(responses)  # all asked, none hit
            if not nothing:  # nothing: an error below, not an empty file a tuning run would take
                atomic_write_json(output_dir / "cot_train.json", cot, indent=1)
            stage_entries = [e for stages in progress.values() for e in stages.values()]
            prompt_tokens = sum(e["prompt_tokens"] for e in stage_entries)
            completion_tokens = sum(e["completion_tokens"] for e in stage_entries)
            by_rule = {rule: sum(line_hits(line)[rule] for line in lines) for rule in HIT_RULES}
            hit_count = by_rule[cfg.hit_match]
            summary = {
                **stats,
                "users_asked": len(progress),
                "users_completed": len(lines),
                "hit_match": cfg.hit_match,
                "users_hit": hit_count,
                "hit_rate": round(hit_count / len(lines), 4) if lines else None,
                **{f"hit_rate_{rule}": round(n / len(lines), 4) if lines else None for rule, n in by_rule.items()},
                "users_failed_this_run": state.failed,
                "first_errors": state.errors[:5],
                "users_remaining": len(users.pending(responses)),  # a rerun asks these
                "cot_records": len(cot),
                "stopped": state.stop_reason,
                "teacher": teacher.label,
                "model": cfg.model if cfg.teacher == "openai" else None,
                "requests_this_run": budget.requests,
                "retries_this_run": getattr(teacher, "retries", 0),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "estimated_cost": round(budget.cost_of(prompt_tokens, completion_tokens), 6),
                "price_per_1k_input": cfg.price_per_1k_input,
                "price_per_1k_output": cfg.price_per_1k_output,
                "settings": mask_secrets_in({k: v for k, v in asdict(cfg).items() if k not in ("progress",)}),
            }
            atomic_write_json(output_dir / "summary.json", summary)
            failure = teacher_failure(state, cfg, todo, len(responses) - answered_before)
            if failure:
                raise InputError(failure)
            if nothing:
                raise InputError(
                    f"{output_dir}: no CoT record written: none of the {len(lines)} answered users hit (--hit_match "
                    f"{cfg.hit_match}: the true item in the teacher's Stage-3 answer); ask more users (raise "
                    "--max_users) or use --hit_match recommended; the answers are kept, a rerun asks only new users")
            if state.stop_reason:
                logger.warning("stopped early: %s (rerun with a higher cap to go on)", state.stop_reason)
            logger.info(
                "%d/%d users hit (%.1f%%), %d CoT records, estimated cost %.4f",
                hit_count, len(lines), 100 * (summary["hit_rate"] or 0), len(cot), summary["estimated_cost"],
            )  # fmt: skip
            return summary
        except BaseException:  # a failure or Ctrl-C that obtained nothing leaves no new output directory behind
            if not existed and not progress:
                import shutil

                shutil.rmtree(output_dir, ignore_errors=True)
            raise


def no_users_message(train_path, stats: dict, cfg: CotConfig) -> str:
    """Why no user can be asked (so no CoT record could be written), and what to raise."""
    within = f" within --max_users {cfg.max_users}" if cfg.max_users else ""
    if not stats.get("users_seen"):
        return (f"{train_path}: no CoT user{within}: no liked window with a user id and a structured history "
                f"({stats.get('liked_windows', 0)} liked windows); the source split needs liked records")
    return (f"{train_path}: no CoT user{within}: for none of the {stats['users_seen']} users is the true next item "
            f"among the {cfg.candidate_num} candidates of its {cfg.neighbor_num} most similar users, so no CoT "
            "record could be written; raise --max_users, --neighbor_num or --candidate_num, or add --ensure_target "
            "(insert the true item)")


def teacher_failure(state: RunState, cfg: CotConfig, todo: list, answered: int) -> str | None:
    """One line when the teacher refused us (key, model, URL) or a run with users to ask obtained nothing:
    a failure, not a finished run (what was answered is kept; a rerun resumes)."""
    exc = state.last_error
    server = f"--base_url {cfg.base_url}" if cfg.base_url else "the OpenAI API"
    cause = getattr(exc, "cause", None)
    if cause == "auth":
        return f"{server} refused the API key ({str(exc)[:120]}): check OPENAI_API_KEY"
    if cause == "not_found":
        return f"{server}: not found ({str(exc)[:120]}): check --model {cfg.model} and --base_url"
    if todo and answered == 0 and state.failed:
        if cause == "connection":
            return f"{server}: cannot connect ({str(exc)[:120]}): check the URL and that the server is running"
        return f"{cfg.output_dir}: no user was answered ({state.failed} failed; first: {state.errors[0][:160]})"
    return None
