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
import fcntl
import json
import logging
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import prompts
from .candidates import build_interactions, user_filtering_candidates
from .errors import InputError, where
from .fileio import atomic_write_json, sha256_file
from .records import load_records, read_json_list
from .teacher import Budget, BudgetExceeded, HeuristicTeacher, OpenAITeacher, TeacherError, cooccurrence_matrix

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4  # rough size estimate for --dry_run (no tokenizer needed)
# settings that change what is asked or kept: a resume must use the same ones
FINGERPRINT_KEYS = (
    "neighbor_num", "candidate_num", "seed", "allow_same_user_neighbors", "ensure_target", "teacher",
    "model", "temperature", "max_tokens", "kind", "system_prompt", "context_style",
)  # fmt: skip
# which Stage-3 answers count as a hit (the user's CoT records are kept):
# title_in_answer: the target's title appears in the answer text (the authors' generate_data.py: `GT in predictions`);
# recommended: the target is one of the candidates parsed from the numbered list (stricter)
HIT_RULES = ("title_in_answer", "recommended")


@dataclass
class CotConfig:
    data_dir: str
    output_dir: str
    teacher: str = "openai"  # openai | heuristic
    model: str = "gpt-4"
    base_url: str | None = None
    temperature: float = 0.2
    max_tokens: int = 512
    concurrency: int = 8
    requests_per_minute: float | None = None
    max_retries: int = 6
    request_timeout: float = 120.0
    retry_base_delay: float = 1.0
    max_requests: int | None = None
    max_cost: float | None = None
    price_per_1k_input: float = 0.03  # GPT-4 (8k) list prices, USD
    price_per_1k_output: float = 0.06
    max_users: int | None = None
    neighbor_num: int = 12
    candidate_num: int = 19
    allow_same_user_neighbors: bool = False
    ensure_target: bool = False
    seed: int = 0
    kind: str = "auto"  # movie | book | auto (from the records' instruction)
    hit_match: str = "title_in_answer"  # see HIT_RULES
    context_style: str = "history"  # history | authors (see shown_items)
    system_prompt: str | None = None  # the authors send none
    dry_run: bool = False
    progress: bool = True


@dataclass
class CotUser:
    key: str
    index: int  # record index in train.json
    user_id: str
    history: list[dict]
    target: dict
    candidates: list[dict]  # {item_id, title, weight}, in the order shown to the teacher
    context: str
    target_inserted: bool = False
    shown: dict = field(default_factory=dict)  # item text -> the text the teacher sees, where they differ

    def show(self, text: str) -> str:
        return self.shown.get(text, text)


@dataclass
class RunState:
    completed: int = 0
    hits: int = 0
    failed: int = 0
    stop_reason: str | None = None
    errors: list[str] = field(default_factory=list)
    last_error: TeacherError | None = None


# ------------------------------------------------------------------------------------------ users


def detect_kind(records: list[dict]) -> str:
    text = records[0]["instruction"] if records else ""
    for kind in prompts.ITEM_KINDS:
        if f"target {kind}" in text:
            return kind
    return "movie"


def user_key(index: int, record: dict) -> str:
    return f"{index}:{record['user_id']}:{record['target']['item_id']}"


class LazyUsers:
    """The CoT users in train order, each built when asked for: prompts for every user of the full Netflix
    Prize would not fit in memory at once."""

    def __init__(self, rows: list[int], keys: list[str], make):
        self.rows, self.keys, self._make = rows, keys, make

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> CotUser:
        return self._make(self.rows[j])

    def pending(self, done) -> list[int]:
        return [j for j, key in enumerate(self.keys) if key not in done]


def build_users(records: list[dict], cfg: CotConfig, kind: str):
    """CoT users (liked-target records whose true next item is a candidate, or inserted with
    --ensure_target) and candidate-set diagnostics."""
    liked = [i for i, r in enumerate(records) if r.get("label") == 1 and "history" in r]
    unstructured = sum(1 for r in records if "history" not in r)
    if not liked:
        raise InputError(f"{cfg.data_dir}/train.json: no record with a liked target and structured history")
    seen = liked[: cfg.max_users] if cfg.max_users is not None else liked
    no_user_id = [i for i in liked if records[i].get("user_id") in (None, "")]
    if no_user_id:  # published TALLRec files: windows of one person cannot be told apart
        logger.warning(
            "%d liked records have no user_id (e.g. record %d): each counts as its own user, so a person's "
            "other windows cannot be excluded from its neighbours",
            len(no_user_id), no_user_id[0],
        )  # fmt: skip
        for i in no_user_id:
            records[i]["user_id"] = f"record-{i}"
    # the neighbour pool: every liked window (the users); candidates only for the users seen
    interactions = build_interactions(
        [[h["item_id"] for h in records[i]["history"]] for i in liked], [records[i]["user_id"] for i in liked]
    )
    code = {item: c for c, item in enumerate(interactions.item_ids)}
    titles = {}
    for r in records:
        for h in r.get("history", []):
            titles.setdefault(h["item_id"], h["title"])
    diagnostics = {}
    chosen = None
    for allow in (True, False):
        cands = user_filtering_candidates(
            interactions,
            query_rows=np.arange(len(seen)),
            neighbor_num=cfg.neighbor_num,
            candidate_num=cfg.candidate_num,
            allow_same_user=allow,
        )
        in_set = [code.get(records[i]["target"]["item_id"], -2) in cands.items[u] for u, i in enumerate(seen)]
        name = "with_same_user_neighbors" if allow else "other_users_only"
        diagnostics[f"target_in_candidates_rate_{name}"] = round(float(np.mean(in_set)), 4)
        if allow:  # how many of the 12 neighbours are the user's own other windows when allowed
            diagnostics["mean_same_user_neighbors_when_allowed"] = round(float(cands.same_user_neighbors.mean()), 3)
        if allow == cfg.allow_same_user_neighbors:
            chosen = cands
    target_codes = np.array([code.get(records[i]["target"]["item_id"], -2) for i in seen])
    in_set = (chosen.items == target_codes[:, None]).any(axis=1)
    kept = np.arange(len(seen)) if cfg.ensure_target else np.flatnonzero(in_set)

    def make_user(u: int) -> CotUser:
        i, rec = seen[u], records[seen[u]]
        cand = [
            {"item_id": interactions.item_ids[c], "title": titles[interactions.item_ids[c]], "weight": float(w)}
            for c, w in zip(chosen.items[u], chosen.weights[u])
            if c >= 0
        ]
        if not in_set[u]:  # only with --ensure_target
            if len(cand) >= cfg.candidate_num:
                cand = cand[: cfg.candidate_num - 1]  # drop the weakest
            cand.append({**rec["target"], "weight": 0.0})
        rng = np.random.default_rng([cfg.seed, i])
        cand = [cand[j] for j in rng.permutation(len(cand))]  # the teacher must not see the ranking
        watched, shown = shown_items(rec["history"], [c["title"] for c in cand] + [rec["target"]["title"]],
                                     cfg.context_style)
        return CotUser(
            key=user_key(i, rec),
            index=i,
            user_id=str(rec["user_id"]),
            history=rec["history"],
            target=rec["target"],
            candidates=cand,
            context=prompts.cot_context([shown.get(c["title"], c["title"]) for c in cand], watched, kind),
            target_inserted=not in_set[u],
            shown=shown,
        )

    users = LazyUsers([int(u) for u in kept], [user_key(seen[u], records[seen[u]]) for u in kept], make_user)
    stats = {
        "records": len(records),
        "records_without_structure": unstructured,
        "liked_windows": len(liked),
        "liked_windows_without_user_id": len(no_user_id),
        "users_seen": len(seen),
        "skipped_target_not_in_candidates": len(seen) - len(kept),
        "target_inserted": int((~in_set[kept]).sum()),
        **diagnostics,
    }
    return users, stats, interactions, code


CONTEXT_STYLES = ("history", "authors")
FIRST_QUOTED = re.compile(r'^"(.*?)"')


def shown_items(history: list[dict], other_titles: list[str], style: str) -> tuple[list[str], dict[str, str]]:
    """(watched item texts in the order the teacher sees them, {item text: shown text} where they differ).

    history: the window's items oldest first, as they are. authors: as the authors' generate_data.py builds them
    from a record's text: the quoted item texts of the preference list, then of the unpreference list, reversed,
    each cut to its first quoted span (a book `"Title" written by Author` shows as `"Title"`)."""
    if style == "history":
        return [h["title"] for h in history], {}
    ordered = [h for h in history if h["liked"]] + [h for h in history if not h["liked"]]
    shown = {}
    for text in [h["title"] for h in history] + other_titles:
        m = FIRST_QUOTED.match(text)
        if m:
            shown[text] = m.group(1)
    return [shown.get(h["title"], h["title"]) for h in reversed(ordered)], shown


# ------------------------------------------------------------------------------------------ hits

QUOTE_CHARS = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
NUMBERED_LINE = re.compile(r"^\s*[\[(]?\s*(\d+)\s*[.):\]]\s*(.+?)\s*$")
PAIR_SEPARATOR = re.compile(r"\s+-\s+|\s*->\s*")


def normalize_title(text: str) -> str:
    """Case, whitespace, quotes, dashes and markdown emphasis do not matter when matching titles."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub("[\u2010-\u2015\u2212]", "-", text)
    text = text.translate({ord(c): None for c in QUOTE_CHARS + "*_"})
    text = " ".join(text.split())
    return text.strip(" .,;:[]")


def parse_recommendations(text: str, candidate_titles: list[str], shown: dict | None = None) -> list[str]:
    """Candidate titles recommended in Stage 3's numbered list (`no. watched item - candidate item`), in
    order, each once. The candidate is the longest tail of the line after a ' - ' that equals a candidate
    (titles may contain ' - ' themselves); failing that, the longest candidate title named (as whole words)
    in the part after the first separator, or anywhere in a line without one. `shown`: title -> the text the
    teacher saw, where they differ (matched on that, returned as the title)."""
    shown = shown or {}
    by_norm = {}
    for t in candidate_titles:
        by_norm.setdefault(normalize_title(shown.get(t, t)), t)
    found: list[str] = []
    for line in text.splitlines():
        m = NUMBERED_LINE.match(line)
        if not m:
            continue
        body = normalize_title(m.group(2))
        pieces = PAIR_SEPARATOR.split(body)
        match = None
        for start in range(len(pieces)):
            tail = normalize_title(" - ".join(pieces[start:]))
            if tail in by_norm:
                match = by_norm[tail]
                break
        if match is None:  # a free-form line: a candidate named inside it, as whole words
            rest = " - ".join(pieces[1:]) if len(pieces) > 1 else body
            contained = [n for n in by_norm if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", rest)]
            if contained:
                match = by_norm[max(contained, key=len)]
        if match is not None and match not in found:
            found.append(match)
    return found


# ------------------------------------------------------------------------------------------ files


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a JSONL file we append to; a torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for n, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n}: not valid JSON ({exc.msg}); move the file away to start over") from None
    return out


def lock_output_dir(output_dir: Path):
    output_dir.mkdir(parents=True, exist_ok=True)
    handle = open(output_dir / ".lock", "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise InputError(f"{output_dir}: another run_cot_generation is writing here") from None
    return handle


def check_run_config(output_dir: Path, cfg: CotConfig, kind: str, data_sha: str) -> None:
    fingerprint = {k: getattr(cfg, k) for k in FINGERPRINT_KEYS}
    fingerprint.update(kind=kind, train_sha256=data_sha,
                       prompt_wording_sha256=prompts.cot_wording_fingerprint(kind, cfg.system_prompt))
    path = output_dir / "run_config.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in fingerprint.items() if old.get(k) != v}
        if "prompt_wording_sha256" in diff:  # made by another version of the prompts
            raise InputError(f"{path}: this output dir holds answers to prompts worded differently (another "
                             "version of tlrec_utils/prompts.py or --system_prompt); use a new --output_dir")
        if diff:
            what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise InputError(f"{path}: this output dir was made with other settings ({what}); use a new --output_dir")
    else:
        atomic_write_json(path, fingerprint)


# ------------------------------------------------------------------------------------------ asking


def teacher_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one request: the prompt alone, as the authors send it, unless a system message
    is asked for."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def hits(shown_target: str, stage3_answer: str, recommended: list[str], target: str | None = None) -> dict[str, bool]:
    """Whether the user counts as a hit under each of HIT_RULES (`shown_target`: the target as the teacher would
    write it; `target`: its item text, default the same)."""
    return {"title_in_answer": shown_target in stage3_answer,
            "recommended": (shown_target if target is None else target) in recommended}


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

    @staticmethod
    def _append(handle, obj) -> None:
        handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
        handle.flush()  # in the OS once written: survives kill -9 of this process

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
                self._append(self.progress_file, entry)
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
        self._append(self.responses_file, line)
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


def line_hits(line: dict) -> dict[str, bool]:
    title = line["target"]["title"]
    return hits(line.get("target_shown", title), line["answers"][2], line["recommended"], title)


def cot_records(responses: list[dict], kind: str, hit_match: str = "title_in_answer") -> list[dict]:
    """Three instruction records per user who hit under `hit_match`, in train-record order (identical however
    the run went)."""
    out = []
    for line in sorted(responses, key=lambda r: r["record_index"]):
        if not line_hits(line)[hit_match]:
            continue
        for stage in (1, 2, 3):
            rec = prompts.cot_record(line["context"], line["answers"], stage, kind)
            rec.update(user_id=line["user_id"], cot_key=line["key"])
            out.append(rec)
    return out


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
    for name in ("max_requests", "max_cost", "max_users", "requests_per_minute"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name} must be positive, got {value}")


def run(cfg: CotConfig) -> dict:
    check_config(cfg)
    data_dir, output_dir = Path(cfg.data_dir), Path(cfg.output_dir)
    train_path = data_dir / "train.json"
    records = load_records(train_path)
    kind = detect_kind(records) if cfg.kind == "auto" else cfg.kind
    if kind not in prompts.ITEM_KINDS:
        raise InputError(f"--kind must be one of {prompts.ITEM_KINDS} or auto, got {cfg.kind!r}")
    users, stats, interactions, code = build_users(records, cfg, kind)
    budget = Budget(cfg.max_requests, cfg.max_cost, cfg.price_per_1k_input, cfg.price_per_1k_output)

    if cfg.dry_run:  # reads what is there, writes and calls nothing
        done = {r["key"] for r in read_only_jsonl(output_dir / "responses.jsonl")}
        print("===== users and candidate sets =====")
        print(json.dumps(stats, indent=2))
        return {**stats, **dry_run_report(users, users.pending(done), cfg, kind, budget)}

    existed = output_dir.exists()
    lock = lock_output_dir(output_dir)
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
            "settings": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        }
        atomic_write_json(output_dir / "summary.json", summary)
        failure = teacher_failure(state, cfg, todo, len(responses) - answered_before)
        if failure:
            raise InputError(failure)
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
    finally:
        lock.close()


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


def read_only_jsonl(path: Path) -> list[dict]:
    """Complete lines of a JSONL file, without repairing it (for --dry_run)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


# ------------------------------------------------------------------------------------------ reading CoT data


def is_cot_file(records: list[dict]) -> bool:
    """A CoT file: its first record has a `stage` or one of the three CoT stage instructions."""
    if not records:
        return False
    first = records[0]
    return "stage" in first or first.get("instruction") in prompts.COT_INSTRUCTION_STAGES


def cot_records_from(raw: list[dict], path) -> list[dict]:
    """Validated CoT records with an integer `stage`: our cot_train.json (a `stage` field) or the TLRec authors'
    released `cot_data/stage123.json` (instruction/input/output only: the stage is the one whose instruction the
    record carries, prompts.COT_INSTRUCTION_STAGES)."""
    out = []
    for i, rec in enumerate(raw):
        if not isinstance(rec.get("instruction"), str):
            raise InputError(f"{where(path, record=i)}: missing or non-string 'instruction'")
        rec = dict(rec)
        rec.setdefault("input", "")
        if not isinstance(rec["input"], str):
            raise InputError(f"{where(path, record=i)}: non-string 'input'")
        if not isinstance(rec.get("output"), str) or not rec["output"].strip():
            raise InputError(f"{where(path, record=i)}: missing or empty 'output'")
        if "stage" in rec:
            try:
                rec["stage"] = int(rec["stage"])
            except (TypeError, ValueError):
                raise InputError(f"{where(path, record=i)}: stage {rec['stage']!r} is not an integer") from None
        else:
            known = prompts.COT_INSTRUCTION_STAGES.get(rec["instruction"])
            if known is None:
                raise InputError(f"{where(path, record=i)}: unknown CoT instruction {rec['instruction'][:60]!r}... "
                                 "(not one of the three stage instructions of the TLRec authors' preprocess_data.py)")
            rec["stage"], rec["kind"] = known
        out.append(rec)
    return out


def load_cot_records(path) -> list[dict]:
    """CoT records of a file (see cot_records_from); an InputError when it holds none or is not CoT data."""
    raw = read_json_list(path)
    if not raw:
        raise InputError(f"{path}: no records")
    if not is_cot_file(raw):
        raise InputError(f"{where(path, record=0)}: not a CoT record (no 'stage' and not one of the three CoT "
                         "stage instructions)")
    return cot_records_from(raw, path)
