"""Batch request and response files, the format the OpenAI Batch API and offline runners (`vllm run-batch`) share:
JSONL of requests `{custom_id, method, url, body}` in, JSONL of `{id, custom_id, response: {status_code, body},
error}` out. Here: the custom ids of a CoT run, the request lines, splitting at the Batch API's limits, reading
an output or error file back into replies (parsed exactly as the live client parses its replies) and failures,
and the run directory's record of rounds and batches (`batches.json`, written atomically).
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, where
from ..fileio import atomic_write_bytes, atomic_write_json
from .teacher import MalformedReply, Reply, parse_completion, redact

ENDPOINT = "/v1/chat/completions"
# the OpenAI Batch API's limits per input file (platform.openai.com/docs/guides/batch)
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200 * 10**6
BATCH_PRICE_FACTOR = 0.5  # batch requests cost half the live price
STATE_FILE = "batches.json"
FOLDER = "batches"
CUSTOM_ID = re.compile(r"^tlrec-cot-(?P<run>[0-9a-f]+)-s(?P<stage>\d)-(?P<key>.+)$")


def custom_id(run_id: str, stage: int, key: str) -> str:
    return f"tlrec-cot-{run_id}-s{stage}-{key}"


def request_line(cid: str, body: dict) -> bytes:
    return (json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}, ensure_ascii=False)
            + "\n").encode()


def split_lines(lines: list[bytes], max_requests: int = MAX_REQUESTS_PER_FILE,
                max_bytes: int = MAX_BYTES_PER_FILE) -> list[list[bytes]]:
    """Consecutive pieces of `lines` within both limits (a line larger than `max_bytes` alone is an error)."""
    parts: list[list[bytes]] = []
    size = 0
    for line in lines:
        if len(line) > max_bytes:
            raise InputError(f"one batch request is {len(line)} bytes, over the {max_bytes}-byte file limit")
        if not parts or len(parts[-1]) >= max_requests or size + len(line) > max_bytes:
            parts.append([])
            size = 0
        parts[-1].append(line)
        size += len(line)
    return parts


@dataclass
class Outcome:
    """What one batch (or offline file) answered: replies by custom id, and the problem of each failed one."""

    replies: dict[str, Reply] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def read_request_ids(path) -> list[str]:
    return [json.loads(line)["custom_id"] for line in Path(path).read_bytes().splitlines() if line.strip()]


def check_custom_id(path, n: int, cid, run_id: str, stage: int, asked: set[str]) -> None:
    """An output line's custom id must be one of the requests of this round: a file of another run or stage (or
    of anything else) is refused, naming the line."""
    m = CUSTOM_ID.match(cid) if isinstance(cid, str) else None
    if m is None:
        problem = f"custom_id {cid!r} is not one of this tool's requests"
    elif m["run"] != run_id:
        problem = f"custom_id {cid!r} belongs to another CoT run ({m['run']}; this output dir's run is {run_id})"
    elif int(m["stage"]) != stage:
        problem = f"custom_id {cid!r} answers Stage {m['stage']}, but this file's requests ask Stage {stage}"
    elif cid not in asked:
        problem = f"custom_id {cid!r} is not among the requests this output answers"
    else:
        return
    raise InputError(f"{where(path, line=n)}: {problem}; not this round's answers (remove the file, or give the "
                     "output of its own request file)")


def reply_or_problem(row: dict, secret: str | None) -> Reply | str:
    """The reply of one output line, parsed as the live client parses a reply, or why it failed."""
    error, response = row.get("error"), row.get("response")
    if error:
        if isinstance(error, dict):
            return f"{error.get('code') or 'error'}: {error.get('message', '')}"
        return f"error: {error}"
    if not isinstance(response, dict):
        return "no response in the output line"
    body = response.get("body")
    if response.get("status_code") != 200:
        message = body.get("error", {}).get("message", "") if isinstance(body, dict) else ""
        return f"HTTP {response.get('status_code')}: {message}".strip()
    if not isinstance(body, dict):
        return "malformed reply (no JSON body)"
    from openai.types.chat import ChatCompletion

    try:
        reply = parse_completion(ChatCompletion.construct(**body))
    except (MalformedReply, TypeError, ValueError) as exc:
        return f"malformed reply ({type(exc).__name__}: {exc})"
    reply.text = redact(reply.text, secret)
    return reply


def read_output(path, outcome: Outcome, run_id: str, stage: int, asked: set[str], secret: str | None) -> None:
    """Add an output or error file's lines to `outcome`. A line that is not JSON or names no request of this
    round makes the whole file unusable: one line naming it."""
    for n, raw in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{where(path, line=n)}: not a JSON batch output line ({exc}); the file is malformed "
                             "(remove it to ask again)") from None
        if not isinstance(row, dict):
            raise InputError(f"{where(path, line=n)}: a batch output line must be a JSON object")
        cid = row.get("custom_id")
        check_custom_id(path, n, cid, run_id, stage, asked)
        result = reply_or_problem(row, secret)
        if isinstance(result, Reply):
            outcome.replies[cid] = result
            outcome.failed.pop(cid, None)
        elif cid not in outcome.replies:
            outcome.failed[cid] = redact(result, secret)[:300]


class BatchState:
    """`batches.json`: the run id (in every custom id) and every round: its stage, mode, request files and, for
    the Batch API, each file's upload id, batch id, status and output/error file ids. Rewritten atomically after
    every change, so a killed run resumes by polling the same batches."""

    def __init__(self, output_dir: Path):
        self.output_dir = output_dir
        self.path = output_dir / STATE_FILE
        data = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.run_id: str = data.get("run_id") or secrets.token_hex(4)
        self.rounds: list[dict] = data.get("rounds", [])

    def save(self) -> None:
        atomic_write_json(self.path, {"run_id": self.run_id, "rounds": self.rounds})

    def open_round(self) -> dict | None:
        return next((r for r in self.rounds if not r["collected"]), None)

    def check_open_round(self, mode: str) -> None:
        """A round still open is finished in its own mode (another would ask again what is already asked)."""
        open_ = self.open_round()
        if open_ and open_["mode"] != mode:
            raise InputError(f"{self.path}: a Stage-{open_['stage']} round of --mode {open_['mode']} is still open; "
                             f"rerun with --mode {open_['mode']} to collect it (--mode {mode} would ask again what "
                             "is already asked)")

    def new_round(self, stage: int, mode: str, parts: list[list[bytes]]) -> dict:
        number = sum(r["stage"] == stage for r in self.rounds)
        folder = self.output_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        round_ = {"stage": stage, "mode": mode, "number": number, "collected": False, "parts": []}
        for p, lines in enumerate(parts):
            name = f"stage{stage}-round{number}" + (f"-part{p}" if len(parts) > 1 else "")
            atomic_write_bytes(folder / f"{name}.requests.jsonl", b"".join(lines))  # before the state names it
            round_["parts"].append({"name": name, "requests": len(lines), "bytes": sum(map(len, lines)),
                                    "file_id": None, "batch_id": None, "status": None})
        self.rounds.append(round_)
        self.save()
        return round_

    def file(self, part: dict, kind: str) -> Path:
        """kind: requests, output or errors."""
        return self.output_dir / FOLDER / f"{part['name']}.{kind}.jsonl"
