"""CoT data construction (paper Section 4.1, Table 2): candidate sets, three chained teacher prompts per
user, hit filtering, and the CoT instruction records for curriculum tuning.

Users are the prepared train records whose target is liked (a window of watched items; the target is
the true next item). Output directory:

- `progress.jsonl`: one line per answered stage (appended and flushed at once): what a resume reuses;
- `responses.jsonl`: one line per completed user (candidates, three prompts, three answers, usage, hit);
- `cot_train.json`: three instruction records (`stage` 1, 2, 3) per user whose Stage 3 hit the true item
  (`--hit_match`), in the TLRec authors' format (`load_cot_records` also reads their released stage123.json);
- `summary.json`: counts, hit rate, candidate diagnostics, tokens and estimated cost;
- `run_config.json`: the settings that fix the outputs; a rerun with different ones is refused;
- `batches.json`, `batches/` (--mode batch / files): the rounds of request files, their upload and batch ids and
  the downloaded output and error files (rounds.py).

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
from .batch_files import BATCH_PRICE_FACTOR, MAX_REQUESTS_PER_FILE, STATE_FILE, custom_id, request_line
from .records import cot_records
from .registry import ASKED, MODES, TEACHERS, help_text
from .replies import HIT_RULES, hits, line_hits, parse_recommendations
from .teacher import Budget, BudgetExceeded, Reply, TeacherError, teacher_messages
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
    teacher: str = field(default="openai", metadata={"help": help_text(ASKED) + ".", "choices": ASKED})
    mode: str = field(
        default="live", metadata={"help": "How an openai teacher is asked: " + "; ".join(
            f"{name}: {what}" for name, what in MODES.items()) + ".", "choices": list(MODES)},
    )
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
    max_retries: int = field(default=6, metadata={"help": "Retries of a failed request (--mode batch/files: rounds "
                                                          "a failed request is asked again in)."})
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
    poll_interval: float = field(default=60.0, metadata={"help": "--mode batch: seconds between polls of the "
                                                                 "batches."})
    batch_file_requests: int = field(
        default=MAX_REQUESTS_PER_FILE, metadata={"help": "--mode batch: requests per batch file at most (the Batch "
                                                         "API's limit, 50,000; files are also cut at 200 MB)."},
    )
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
                          "recommended candidates).", "choices": list(HIT_RULES)},
    )
    context_style: str = field(
        default="history",
        metadata={"help": "history (watched items oldest first, item texts as they are) or authors (generate_data.py: "
                          "the preference then unpreference items reversed; a book shows as its quoted title only; "
                          "see shown_items).", "choices": list(CONTEXT_STYLES)},
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
    batch_failure: str | None = None  # a batch that failed as a whole (--mode batch): one line, exit 2
    waiting: bool = False  # --mode files: the offline runner has the requests


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


class Generator:
    """Records the teacher's answers as they come (progress.jsonl) and each completed user (responses.jsonl);
    `run` asks the live teacher for every user not yet complete (rounds.Rounds asks in batch rounds)."""

    def __init__(self, cfg, kind, budget, output_dir: Path, progress: dict, responses: dict, label: str):
        self.cfg, self.kind, self.budget, self.label = cfg, kind, budget, label
        self.progress = progress  # key -> {stage: entry}
        self.responses = responses  # key -> line
        self.progress_file = open(output_dir / "progress.jsonl", "a", encoding="utf-8")
        self.responses_file = open(output_dir / "responses.jsonl", "a", encoding="utf-8")
        self.state = RunState(hits=sum(r["hit"] for r in responses.values()), completed=len(responses))
        self.retries = 0
        self.bar = None

    def record(self, user: CotUser, stage: int, prompt: str, reply: Reply) -> None:
        entry = {"key": user.key, "stage": stage, "prompt": prompt, "answer": reply.text,
                 "prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
        append_jsonl(self.progress_file, entry)
        self.progress.setdefault(user.key, {})[stage] = entry

    def complete(self, user: CotUser) -> None:
        line = response_line(user, self.progress[user.key], self.cfg, self.label)
        append_jsonl(self.responses_file, line)
        self.responses[user.key] = line
        self.state.completed += 1
        self.state.hits += line["hit"]

    def fail(self, key: str, message: str, exc: TeacherError | None = None) -> None:
        self.state.failed += 1
        self.state.errors.append(f"{key}: {message}")
        self.state.last_error = exc
        logger.error("user %s failed (a rerun retries it): %s", key, message)

    async def ask_user(self, teacher, user: CotUser) -> None:
        done = self.progress.get(user.key, {})
        answers = []
        for stage in (1, 2, 3):
            prompt = prompts.cot_teacher_prompt(user.context, answers, self.kind)
            if stage not in done:
                reply = await teacher.answer(user, stage, teacher_messages(prompt, self.cfg.system_prompt))
                self.record(user, stage, prompt, reply)
                done = self.progress[user.key]
            answers.append(done[stage]["answer"])
        self.complete(user)

    async def run(self, teacher, users, total: int) -> RunState:
        """`users`: an iterator of CotUser (built as workers take them)."""
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="CoT users", unit="user", disable=not self.cfg.progress)
        pending = iter(users)
        failures_in_a_row = [0]
        give_up_after = max(3, self.cfg.concurrency)  # the server is down or broken: stop instead of crawling on

        async def worker():
            for user in pending:  # one shared iterator: each user goes to exactly one worker
                if self.state.stop_reason:
                    return
                await self.ask_one(teacher, user, failures_in_a_row, give_up_after)

        workers = self.cfg.concurrency if TEACHERS[self.cfg.teacher].server else 1
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, workers))))
        finally:
            self.bar.close()
            self.retries = getattr(teacher, "retries", 0)
            await teacher.close()
        return self.state

    async def ask_one(self, teacher, user: CotUser, failures_in_a_row: list, give_up_after: int) -> None:
        """Ask one user; a failure is counted, and stops the run when fatal or when too many fail in a row."""
        try:
            await self.ask_user(teacher, user)
            failures_in_a_row[0] = 0
        except BudgetExceeded as exc:
            self.state.stop_reason = str(exc)
            return
        except TeacherError as exc:
            self.fail(user.key, str(exc), exc)
            failures_in_a_row[0] += 1
            if exc.fatal or failures_in_a_row[0] >= give_up_after:
                self.state.stop_reason = (str(exc) if exc.fatal
                                          else f"{failures_in_a_row[0]} users failed in a row: {exc}")
                return
        self.bar.update(1)
        rate = self.state.hits / max(self.state.completed, 1)
        self.bar.set_postfix(hit=f"{rate:.1%}", spent=f"${self.budget.cost:.2f}", refresh=False)

    def close(self) -> None:
        self.progress_file.close()
        self.responses_file.close()


def response_line(user: CotUser, done: dict, cfg, label: str) -> dict:
    """responses.jsonl's line of a user with its three answers (`done`: stage -> progress entry)."""
    answers = [done[s]["answer"] for s in (1, 2, 3)]
    recommended = parse_recommendations(answers[2], [c["title"] for c in user.candidates], user.shown)
    hit_by_rule = hits(user.show(user.target["title"]), answers[2], recommended, user.target["title"])
    return {
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
        "hit": hit_by_rule[cfg.hit_match],
        "hit_by_rule": hit_by_rule,
        "usage": {
            "prompt_tokens": sum(done[s]["prompt_tokens"] for s in (1, 2, 3)),
            "completion_tokens": sum(done[s]["completion_tokens"] for s in (1, 2, 3)),
        },
        "teacher": label,
        "model": cfg.model if TEACHERS[cfg.teacher].server else None,
    }


def ask_teacher(cfg: CotConfig, gen: Generator, source: Source, todo: list[int]) -> RunState:
    """Every user of `todo` asked: live (concurrent requests) or in batch rounds (--mode batch / files)."""
    from .batch_files import BatchState

    batches = BatchState(Path(cfg.output_dir))
    if cfg.mode == "live":
        batches.check_open_round(cfg.mode)
        teacher = TEACHERS[cfg.teacher].build(cfg, gen.budget, source.interactions, source.code, source.kind)
        gen.label = teacher.label
        return asyncio.run(gen.run(teacher, (source.users[j] for j in todo), total=len(todo)))
    from .rounds import BACKENDS, Rounds

    backend = BACKENDS[cfg.mode](cfg, batches)
    return Rounds(gen, source.users, todo, backend).run()


# ------------------------------------------------------------------------------------------ outputs


def dry_run_report(users: LazyUsers, todo: list[int], cfg: CotConfig, kind: str, budget: Budget) -> dict:
    """The first user's three prompts (earlier answers as placeholders) and an upper-bound estimate; in batch
    mode at the batch price, with the number of batch files per stage."""
    if len(users):
        first = users[0]
        placeholders = [f"<answer to step {s}>" for s in (1, 2)]
        for stage in (1, 2, 3):
            print(f"===== Stage {stage} prompt (user {first.key}) =====")
            print(prompts.cot_teacher_prompt(first.context, placeholders[: stage - 1], kind))
    # every earlier answer at most max_tokens; output at most max_tokens per stage
    prompt_tokens, request_bytes = 0, [0, 0, 0]
    for j in todo:
        user = users[j]
        for stage in (1, 2, 3):
            text = prompts.cot_teacher_prompt(user.context, [""] * (stage - 1), kind)
            prompt_tokens += len(text) // CHARS_PER_TOKEN + (stage - 1) * cfg.max_tokens + 20
            if cfg.mode == "batch":
                from .rounds import request_body

                line = request_line(custom_id("0" * 8, stage, user.key), request_body(cfg, text))
                request_bytes[stage - 1] += len(line) + (stage - 1) * cfg.max_tokens * CHARS_PER_TOKEN
    completion_tokens = 3 * cfg.max_tokens * len(todo)
    estimate = {
        "users_to_ask": len(todo),
        "requests": 3 * len(todo),
        "prompt_tokens_upper_bound": prompt_tokens,
        "completion_tokens_upper_bound": completion_tokens,
        "cost_upper_bound": round(budget.cost_of(prompt_tokens, completion_tokens), 4),
    }
    if cfg.mode == "batch":
        from .rounds import files_for

        live = Budget(price_per_1k_input=cfg.price_per_1k_input, price_per_1k_output=cfg.price_per_1k_output)
        estimate.update(live_cost_upper_bound=round(live.cost_of(prompt_tokens, completion_tokens), 4),
                        batch_price_factor=BATCH_PRICE_FACTOR,
                        batch_files_per_stage=[files_for(len(todo), b, cfg.batch_file_requests)
                                               for b in request_bytes])
        estimate["batch_files"] = sum(estimate["batch_files_per_stage"])
    print("===== estimate (about 4 characters per token; answers assumed max_tokens long) =====")
    print(json.dumps(estimate, indent=2))
    return estimate


def summarize(cfg: CotConfig, stats: dict, gen: Generator, cot: list, todo_left: int) -> dict:
    """summary.json: counts, hit rates under each rule, tokens and the estimated cost, why the run stopped."""
    lines, state, budget = list(gen.responses.values()), gen.state, gen.budget
    stage_entries = [e for stages in gen.progress.values() for e in stages.values()]
    prompt_tokens = sum(e["prompt_tokens"] for e in stage_entries)
    completion_tokens = sum(e["completion_tokens"] for e in stage_entries)
    by_rule = {rule: sum(line_hits(line)[rule] for line in lines) for rule in HIT_RULES}
    hit_count = by_rule[cfg.hit_match]
    return {
        **stats,
        "users_asked": len(gen.progress),
        "users_completed": len(lines),
        "hit_match": cfg.hit_match,
        "users_hit": hit_count,
        "hit_rate": round(hit_count / len(lines), 4) if lines else None,
        **{f"hit_rate_{rule}": round(n / len(lines), 4) if lines else None for rule, n in by_rule.items()},
        "users_failed_this_run": state.failed,
        "first_errors": state.errors[:5],
        "users_remaining": todo_left,  # a rerun asks these
        "cot_records": len(cot),
        "stopped": state.stop_reason,
        "teacher": gen.label,
        "model": cfg.model if TEACHERS[cfg.teacher].server else None,
        "mode": cfg.mode,
        "requests_this_run": budget.requests,
        "retries_this_run": gen.retries,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "estimated_cost": round(budget.cost_of(prompt_tokens, completion_tokens), 6),
        "price_per_1k_input": budget.price_in,
        "price_per_1k_output": budget.price_out,
        "settings": mask_secrets_in({k: v for k, v in asdict(cfg).items() if k not in ("progress",)}),
    }


def check_config(cfg: CotConfig) -> None:
    """Every setting: choices (the fields' `choices`) and ranges (validation.check_number)."""
    from ..validation import check_choices, check_number, check_seed

    check_choices(CotConfig, cfg)
    for name in ("concurrency", "neighbor_num", "max_tokens"):
        check_number(f"--{name}", getattr(cfg, name), 1)
    check_number("--batch_file_requests", cfg.batch_file_requests, 1, MAX_REQUESTS_PER_FILE)  # the API's limit
    check_number("--candidate_num", cfg.candidate_num, 10)  # Stage 3 asks for 10
    for name in ("max_requests", "max_cost", "max_users", "requests_per_minute", "request_timeout",
                 "poll_interval"):
        check_number(f"--{name}", getattr(cfg, name), 0, exclusive_min=True)
    check_number("--max_retries", cfg.max_retries, 0)
    check_seed("--seed", cfg.seed)
    if cfg.mode not in TEACHERS[cfg.teacher].modes:
        raise InputError(f"--mode {cfg.mode}: the {cfg.teacher} teacher is asked live only (--mode "
                         f"{cfg.mode} needs --teacher openai)")


CotConfig.check_values = staticmethod(check_config)  # validation.check_settings: a grid's cot settings too


@dataclass
class Source:
    """The CoT users of a prepared source domain and what the heuristic teacher needs."""

    train_path: Path
    kind: str
    users: LazyUsers
    stats: dict
    interactions: object
    code: dict


def load_source(cfg: CotConfig) -> Source:
    train_path = Path(cfg.data_dir) / "train.json"
    records = load_records(train_path)
    kind = prompts.item_kind(detect_kind(records) if cfg.kind == "auto" else cfg.kind, "--kind").spec
    users, stats, interactions, code = build_users(records, cfg, kind)
    if not len(users) and not cfg.dry_run:
        raise InputError(no_users_message(train_path, stats, cfg))
    return Source(train_path, kind, users, stats, interactions, code)


def make_budget(cfg: CotConfig) -> Budget:
    """Caps and prices; batch requests at the batch price (BATCH_PRICE_FACTOR of the live one)."""
    factor = BATCH_PRICE_FACTOR if cfg.mode == "batch" else 1.0
    return Budget(cfg.max_requests, cfg.max_cost, cfg.price_per_1k_input * factor, cfg.price_per_1k_output * factor)


def read_answers(output_dir: Path) -> tuple[dict, dict]:
    """(progress: key -> {stage: entry}, responses: key -> line) of an output directory (empty for a new one)."""
    progress: dict[str, dict] = {}
    for entry in read_jsonl(output_dir / "progress.jsonl"):
        progress.setdefault(entry["key"], {})[entry["stage"]] = entry
    responses = {}
    for line in read_jsonl(output_dir / "responses.jsonl"):
        responses.setdefault(line["key"], line)
    return progress, responses


def run(cfg: CotConfig) -> dict:
    check_config(cfg)
    output_dir = Path(cfg.output_dir)
    source = load_source(cfg)
    budget = make_budget(cfg)
    if cfg.dry_run:  # reads what is there, writes and calls nothing
        done = {r["key"] for r in read_jsonl(output_dir / "responses.jsonl", repair=False)}
        print("===== users and candidate sets =====")
        print(json.dumps(source.stats, indent=2))
        return {**source.stats, **dry_run_report(source.users, source.users.pending(done), cfg, source.kind, budget)}

    existed = output_dir.exists()
    busy = f"{output_dir}: another run_cot_generation is writing here"
    with exclusive_lock(output_dir / ".lock", lambda _holder: busy):
        progress: dict = {}
        try:
            check_run_config(output_dir, cfg, source.kind, sha256_file(source.train_path))
            progress, responses = read_answers(output_dir)
            return generate(cfg, source, budget, progress, responses)
        except BaseException:  # a failure or Ctrl-C that obtained nothing leaves no new output directory behind
            if not existed and not progress and not batches_recorded(output_dir):
                import shutil

                shutil.rmtree(output_dir, ignore_errors=True)
            raise


def generate(cfg: CotConfig, source: Source, budget: Budget, progress: dict, responses: dict) -> dict:
    """Ask for every user not yet complete, then write cot_train.json and summary.json; a failure to report is
    raised after they are written (what was answered is kept)."""
    output_dir, users, stats = Path(cfg.output_dir), source.users, source.stats
    todo = users.pending(responses)
    logger.info(
        "%d users seen, %d skipped (true item not a candidate), %d already done, %d to ask",
        stats["users_seen"], stats["skipped_target_not_in_candidates"], len(users) - len(todo), len(todo),
    )  # fmt: skip
    answered_before = len(responses)
    gen = Generator(cfg, source.kind, budget, output_dir, progress, responses, "openai-compatible")
    try:
        state = ask_teacher(cfg, gen, source, todo)
    finally:
        gen.close()
    lines = list(responses.values())
    cot = cot_records(lines, source.kind, cfg.hit_match)
    left = len(users.pending(responses))
    nothing = not cot and not state.stop_reason and not left  # all asked, none hit
    failure = teacher_failure(state, cfg, todo, len(responses) - answered_before)
    if cot or not (nothing or state.waiting or failure):  # never an empty file a tuning run would take
        atomic_write_json(output_dir / "cot_train.json", cot, indent=1)
    summary = summarize(cfg, stats, gen, cot, left)
    atomic_write_json(output_dir / "summary.json", summary)
    if failure:
        raise InputError(failure)
    if nothing:
        raise InputError(
            f"{output_dir}: no CoT record written: none of the {len(lines)} answered users hit (--hit_match "
            f"{cfg.hit_match}: the true item in the teacher's Stage-3 answer); ask more users (raise "
            "--max_users) or use --hit_match recommended; the answers are kept, a rerun asks only new users")
    if state.stop_reason:
        logger.warning("stopped: %s (rerun to go on)", state.stop_reason)
    logger.info(
        "%d/%d users hit (%.1f%%), %d CoT records, estimated cost %.4f",
        summary["users_hit"], len(lines), 100 * (summary["hit_rate"] or 0), len(cot), summary["estimated_cost"],
    )  # fmt: skip
    return summary


def batches_recorded(output_dir: Path) -> bool:
    """Whether the run directory records an uploaded file or a batch (paid for or about to be: never removed)."""
    path = output_dir / STATE_FILE
    if not path.exists():
        return False
    rounds = json.loads(path.read_text()).get("rounds", [])
    return any(part.get("file_id") or part.get("batch_id") for r in rounds for part in r["parts"])


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
    """One line when the teacher refused us (key, model, URL), a batch failed as a whole, or a run with users to
    ask obtained nothing: a failure, not a finished run (what was answered is kept; a rerun resumes)."""
    if state.batch_failure:
        return state.batch_failure
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
