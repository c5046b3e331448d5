"""Asking the teacher in rounds of batch files (run_cot_generation --mode batch / files).

The three stages are chained (the Stage-2 prompt holds the Stage-1 answer), so a run is a sequence of rounds,
each one stage's requests of every user still to ask: Stage-1 rounds until every user has a Stage-1 answer or
has failed `max_retries + 1` times, then Stage 2, then Stage 3. A round is written as request files
(batch_files.py), then answered by a backend:

- `BatchAPI` (--mode batch): each file uploaded (`files.create`, purpose batch) and run as a batch
  (`batches.create`, endpoint /v1/chat/completions, 24 h window), polled with a progress bar, its output and error
  files downloaded. Every file id and batch id is recorded before the next call, so a killed run resumes by
  polling the same batches; a batch created but killed before its id was recorded is found again by its input
  file (`batches.list`), never created twice.
- `OfflineFiles` (--mode files): the round's request file is left for an offline runner (`vllm run-batch`); the
  run stops with the command to run, and the next run reads the output file and goes on.

Answers are recorded exactly as the live client records them (Generator.record); a request that failed (an error
line, an expired batch, a refusal, a malformed reply) goes into the next round of its stage.
"""

from __future__ import annotations

import collections
import logging
import shlex
import time

from .. import prompts
from ..errors import InputError
from ..fileio import atomic_write_bytes
from .batch_files import (
    CUSTOM_ID,
    ENDPOINT,
    MAX_BYTES_PER_FILE,
    BatchState,
    Outcome,
    custom_id,
    read_output,
    read_request_ids,
    request_line,
    split_lines,
)
from .teacher import BudgetExceeded, api_key_for, teacher_messages

logger = logging.getLogger(__name__)

TERMINAL = ("completed", "expired", "failed", "cancelled")
WHOLE_BATCH_FAILURES = ("failed", "cancelled")


def request_body(cfg, prompt: str) -> dict:
    """The chat-completions request the live client sends for `prompt` (same model and sampling settings)."""
    return {"model": cfg.model, "messages": teacher_messages(prompt, cfg.system_prompt),
            "temperature": cfg.temperature, "max_tokens": cfg.max_tokens, "seed": cfg.seed}


class Rounds:
    """Runs rounds until every user of `todo` has its three answers, failed for good, or the run must wait."""

    def __init__(self, gen, users, todo: list[int], backend):
        self.gen, self.cfg, self.backend = gen, gen.cfg, backend
        self.state = backend.state
        self.users = users
        self.rows = {users.keys[j]: j for j in todo}
        self.attempts: collections.Counter = collections.Counter()  # (key, stage) -> failed attempts in this run
        self.given_up: set[str] = set()

    def run(self):
        run_state = self.gen.state
        while not run_state.stop_reason:
            round_ = self.state.open_round() or self.next_round()
            if round_ is None:
                break
            self.state.check_open_round(self.cfg.mode)
            outcome, waiting, failure = self.backend.answer(round_)
            if waiting:
                run_state.stop_reason, run_state.waiting = waiting, True
                break
            self.record(round_, outcome)
            if failure:
                run_state.stop_reason = run_state.batch_failure = failure
        for key, j in self.rows.items():  # users whose three answers are in (this run or one killed before)
            if key not in self.gen.responses and len(self.gen.progress.get(key, {})) == 3:
                self.gen.complete(self.users[j])
        return run_state

    def prompt(self, user, stage: int) -> str:
        done = self.gen.progress.get(user.key, {})
        return prompts.cot_teacher_prompt(user.context, [done[s]["answer"] for s in range(1, stage)],
                                          self.gen.kind)

    def pending(self, stage: int) -> list[str]:
        progress = self.gen.progress
        return [key for key in self.rows if key not in self.given_up and stage not in progress.get(key, {})
                and all(s in progress.get(key, {}) for s in range(1, stage))]

    def next_round(self) -> dict | None:
        """The next round's request files (the earliest stage with users to ask), or None: nothing to ask."""
        for stage in (1, 2, 3):
            keys = self.pending(stage)
            if not keys:
                continue
            lines, capped = [], None
            for key in keys:
                try:
                    self.gen.budget.take_request()
                except BudgetExceeded as exc:  # a cap: this round goes out with what is under it, then stop
                    capped = str(exc)
                    break
                user = self.users[self.rows[key]]
                lines.append(request_line(custom_id(self.state.run_id, stage, key),
                                          request_body(self.cfg, self.prompt(user, stage))))
            if not lines:
                self.gen.state.stop_reason = capped
                return None
            parts = split_lines(lines, self.cfg.batch_file_requests) if self.cfg.mode == "batch" else [lines]
            round_ = self.state.new_round(stage, self.cfg.mode, parts)
            logger.info("Stage %d round %d: %d requests in %d file(s)", stage, round_["number"], len(lines),
                        len(parts))
            return round_
        return None

    def record(self, round_: dict, outcome: Outcome) -> None:
        """Answers into progress.jsonl (as the live client writes them); failures counted, and a user given up
        after `max_retries + 1` failed attempts at a stage, reported as the live client reports it."""
        stage = round_["stage"]
        for cid in sorted(outcome.replies.keys() | outcome.failed.keys()):
            key = CUSTOM_ID.match(cid)["key"]
            user = self.users[self.rows[key]] if key in self.rows else None
            if user is None or stage in self.gen.progress.get(key, {}):
                continue  # recorded before a kill, or a user this run does not ask
            if cid in outcome.replies:
                self.gen.budget.add_usage(outcome.replies[cid])
                self.gen.record(user, stage, self.prompt(user, stage), outcome.replies[cid])
                continue
            self.attempts[key, stage] += 1
            if self.attempts[key, stage] > self.cfg.max_retries:
                self.given_up.add(key)
                self.gen.fail(key, f"Stage {stage}: gave up after {self.attempts[key, stage]} attempts: "
                                   f"{outcome.failed[cid]}")
            else:
                self.gen.retries += 1
        round_["collected"] = True
        self.state.save()


def collect(state: BatchState, round_: dict, secret: str | None, expired: set[str] = frozenset()) -> Outcome:
    """Every output and error file of the round read back; a request without a line failed ("expired" for a
    part whose batch expired, else "no answer")."""
    outcome = Outcome()
    for part in round_["parts"]:
        asked = read_request_ids(state.file(part, "requests"))
        for kind in ("output", "errors"):
            if state.file(part, kind).exists():
                read_output(state.file(part, kind), outcome, state.run_id, round_["stage"], set(asked), secret)
        if part.get("status") in ("failed", "cancelled"):
            continue  # the batch failed as a whole: its requests are asked again by the next run
        for cid in asked:
            if cid not in outcome.replies and cid not in outcome.failed:
                outcome.failed[cid] = ("the batch expired before this request ran" if part["name"] in expired
                                       else f"no line for it in {state.file(part, 'output').name}")
    return outcome


class OfflineFiles:
    """--mode files: the round's request file for an offline runner; its output file read back."""

    def __init__(self, cfg, state: BatchState):
        self.cfg, self.state = cfg, state

    def answer(self, round_: dict):
        part = round_["parts"][0]
        requests, output = self.state.file(part, "requests"), self.state.file(part, "output")
        if not output.exists():
            command = shlex.join(["vllm", "run-batch", "-i", str(requests), "-o", str(output), "--model",
                                  self.cfg.model])
            print(f"Stage {round_['stage']}: {part['requests']} requests are in {requests}.\n"
                  f"Answer them with a local teacher, e.g.\n    {command}\n"
                  "(or any runner that writes OpenAI batch output lines to that -o file), then rerun this command.")
            return None, f"waiting for {output} (run: {command}; then rerun)", None
        return collect(self.state, round_, None), None, None


class BatchAPI:
    """--mode batch: the OpenAI Batch API through the `openai` client."""

    def __init__(self, cfg, state: BatchState):
        import openai

        self.cfg, self.state, self.openai = cfg, state, openai
        self.secret = api_key_for(cfg.base_url)
        self.client = openai.OpenAI(api_key=self.secret, base_url=cfg.base_url, timeout=cfg.request_timeout,
                                    max_retries=cfg.max_retries)

    def call(self, what: str, fn, *args, **kwargs):
        """One API call; a refusal or an unreachable server is one line naming the server and the call."""
        errors = self.openai
        server = f"--base_url {self.cfg.base_url}" if self.cfg.base_url else "the OpenAI API"
        try:
            return fn(*args, **kwargs)
        except errors.APIStatusError as exc:
            problem = f"{what}: HTTP {exc.status_code} ({str(exc)[:120]})"
            if exc.status_code in (401, 403):
                raise InputError(f"{server} refused the API key ({problem}): check OPENAI_API_KEY") from None
            if exc.status_code in (404, 405):
                raise InputError(f"{server}: no OpenAI Batch API there ({problem}); a local server: use --mode "
                                 "files (vllm run-batch) or --mode live") from None
            raise InputError(f"{server}: {problem}; rerun to go on (recorded batches are polled, not resubmitted)"
                             ) from None
        except errors.APIConnectionError as exc:
            raise InputError(f"{server}: cannot connect ({what}: {exc}); rerun to go on (recorded batches are "
                             "polled, not resubmitted)") from None

    def submit(self, part: dict) -> None:
        """Upload the part's request file and create its batch, recording each id before the next call."""
        if part["file_id"] is None:
            data = self.state.file(part, "requests").read_bytes()
            uploaded = self.call("files.create", self.client.files.create,
                                 file=(f"tlrec-cot-{self.state.run_id}-{part['name']}.jsonl", data), purpose="batch")
            part.update(file_id=uploaded.id, uploaded_at=time.time())
            self.state.save()
        if part["batch_id"] is None:
            found = self.find_batch(part) if part.get("creating") else None  # killed inside batches.create?
            part["creating"] = True
            self.state.save()
            batch = found or self.call(
                "batches.create", self.client.batches.create, input_file_id=part["file_id"], endpoint=ENDPOINT,
                completion_window="24h", metadata={"tlrec_cot_run": self.state.run_id, "file": part["name"]})
            if batch.endpoint != ENDPOINT:
                raise InputError(f"batch {batch.id}: endpoint {batch.endpoint}, expected {ENDPOINT}")
            part.update(batch_id=batch.id, status=batch.status)
            self.state.save()

    def find_batch(self, part: dict):
        """A batch already made from this file (created by a run killed before it recorded the id), or None."""
        since = part.get("uploaded_at", 0) - 600
        page = self.call("batches.list", self.client.batches.list, limit=100)
        while page is not None:
            for batch in page.data:
                if batch.input_file_id == part["file_id"]:
                    logger.info("found batch %s of %s (created before a restart)", batch.id, part["name"])
                    return batch
                if batch.created_at and batch.created_at < since:  # newest first: older ones cannot be ours
                    return None
            page = self.call("batches.list", page.get_next_page) if page.has_next_page() else None
        return None

    def poll(self, round_: dict) -> None:
        from tqdm.auto import tqdm

        parts = round_["parts"]
        bar = tqdm(total=sum(p["requests"] for p in parts), desc=f"Stage {round_['stage']} batches",
                   unit="request", disable=not self.cfg.progress)
        try:
            while True:
                for part in parts:
                    if part["status"] not in TERMINAL:
                        batch = self.call("batches.retrieve", self.client.batches.retrieve, part["batch_id"])
                        counts = batch.request_counts
                        part.update(status=batch.status, output_file_id=batch.output_file_id,
                                    error_file_id=batch.error_file_id,
                                    done=(counts.completed + counts.failed) if counts else 0,
                                    errors=[f"{e.code}: {e.message}" for e in (batch.errors.data or [])][:3]
                                    if batch.errors else [])
                self.state.save()
                bar.update(sum(p["requests"] if p["status"] in TERMINAL else p.get("done", 0) for p in parts)
                           - bar.n)
                if all(p["status"] in TERMINAL for p in parts):
                    return
                time.sleep(self.cfg.poll_interval)
        finally:
            bar.close()

    def download(self, part: dict) -> None:
        for kind, file_id in (("output", part.get("output_file_id")), ("errors", part.get("error_file_id"))):
            path = self.state.file(part, kind)
            if file_id and not path.exists():
                content = self.call("files.content", self.client.files.content, file_id)
                atomic_write_bytes(path, content.content)

    def answer(self, round_: dict):
        for part in round_["parts"]:
            self.submit(part)
        self.poll(round_)
        for part in round_["parts"]:
            self.download(part)
        expired = {p["name"] for p in round_["parts"] if p["status"] == "expired"}
        outcome = collect(self.state, round_, self.secret, expired)
        failed = [p for p in round_["parts"] if p["status"] in WHOLE_BATCH_FAILURES]
        failure = None
        if failed:
            p = failed[0]
            why = "; ".join(p.get("errors") or []) or "no reason given"
            failure = (f"{self.cfg.output_dir}: batch {p['batch_id']} ({p['name']}, Stage {round_['stage']}) "
                       f"{p['status']}: {why[:200]}; the answers collected are kept, a rerun asks its requests again")
        return outcome, None, failure


BACKENDS = {"batch": BatchAPI, "files": OfflineFiles}


def files_for(requests: int, request_bytes: int, max_requests: int) -> int:
    """How many batch files `requests` requests of `request_bytes` in all take (the dry run's count)."""
    if not requests:
        return 0
    return max(-(-requests // max_requests), -(-request_bytes // MAX_BYTES_PER_FILE))
