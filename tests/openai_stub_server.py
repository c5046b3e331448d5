"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests and benches.

Scripted teacher: Stage 1 and 2 get short fixed-form answers; Stage 3 recommends the first 10 candidates
of the prompt's candidate set, in the order shown, with varied quoting and case (what parsing must
survive). Faults can be queued (`faults`): "429" (with Retry-After), "500", "timeout" (no answer for
`timeout_sleep` s), "malformed" (not JSON), "no_choices" (JSON without choices), "401_echo" (an auth
error that echoes the key back, as some servers do). Every request is recorded.

The Batch API too (`batch_api=True`, the default; False answers 404 as a live-only server such as vLLM's):
POST /v1/files (multipart upload), GET /v1/files/{id}/content, POST /v1/batches, GET /v1/batches[/{id}]. A batch is
`validating`, then `in_progress` for `polls` retrieves (as set when it was created; `release()`: 1), then what
`batch_plan` says next (default `completed`; `expired`: half its requests run, the rest are error lines
`batch_expired`; `failed`: a validation error, nothing runs; `cancelled`). Requests run as the live endpoint answers
them (`scripted_answer`); per-request faults come from the same `faults` queue: "error" (an error-file line with HTTP
500), "error_object" (an error line without a response), "refusal" (a 200 whose message is a refusal),
"no_choices". `submitted` counts each custom_id submitted in a created batch. `offline_run(in, out)` is a fake
`vllm run-batch`: the same answers, written to a file.
"""

from __future__ import annotations

import collections
import email.parser
import email.policy
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

STEP = re.compile(r"Step (\d):")
CANDIDATE_LINE = re.compile(r"^Candidate Set \(candidate \w+\): (.*)$", re.M)
WATCHED_LINE = re.compile(r"^The \w+ that the user has watched \(watched \w+\): (.*)$", re.M)
QUOTED = re.compile(r'"([^"]*)"')


def scripted_answer(prompt: str) -> str:
    stage = int(STEP.findall(prompt)[-1])
    watched = QUOTED.findall(WATCHED_LINE.search(prompt).group(1))
    if stage == 1:
        return f"I like films such as {watched[0]}; length of list {len(watched)}."
    if stage == 2:
        return "\n".join(f"{n}. {title}" for n, title in enumerate(watched[:3], 1))
    candidates = QUOTED.findall(CANDIDATE_LINE.search(prompt).group(1))
    styles = [
        lambda w, c: f'{w} - "{c}"',
        lambda w, c: f"“{w}” - “{c.upper()}”",
        lambda w, c: f"{w}  -   {c.lower()}.",
    ]
    lines = [f"{n}. " + styles[n % 3](watched[0], c) for n, c in enumerate(candidates[:10], 1)]
    return "Here are my picks:\n" + "\n".join(lines)


def completion(prompt: str, model: str, n: int) -> tuple[dict, int, int]:
    """A chat completion answering `prompt` as the scripted teacher, with its token counts."""
    text = scripted_answer(prompt)
    prompt_tokens, completion_tokens = len(prompt) // 4, len(text) // 4
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, prompt_tokens, completion_tokens


def batch_line(request: dict, fault: str | None, n: int) -> tuple[str, dict, int, int]:
    """("output" or "errors", the output line, prompt tokens, completion tokens) of one batch request."""
    body = request["body"]
    out = {"id": f"batch_req_{n}", "custom_id": request["custom_id"], "error": None,
           "response": {"status_code": 200, "request_id": f"req_{n}", "body": None}}
    if fault == "error":
        out["response"].update(status_code=500, body={"error": {"message": "internal error", "type": "server_error"}})
        return "errors", out, 0, 0
    if fault == "error_object":
        out.update(response=None, error={"code": "server_error", "message": "The server had an error"})
        return "errors", out, 0, 0
    reply, prompt_tokens, completion_tokens = completion(body["messages"][-1]["content"], body["model"], n)
    if fault == "refusal":
        reply["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
    elif fault == "no_choices":
        del reply["choices"]
    out["response"]["body"] = reply
    return "output", out, prompt_tokens, completion_tokens


class StubOpenAI:
    def __init__(self, latency: float = 0.0, timeout_sleep: float = 2.0, retry_after: str = "0.3",
                 batch_api: bool = True, polls: int = 1):
        self.latency = latency
        self.timeout_sleep = timeout_sleep
        self.retry_after = retry_after
        self.batch_api = batch_api
        self.polls = polls
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_plan: collections.deque[str] = collections.deque()
        self.submitted: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()  # "POST /v1/files", ...
        self.faults: collections.deque[str] = collections.deque()
        # {time, prompt, messages, fault, authorization, prompt_tokens, completion_tokens}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                stub._batch_route(self, "GET", b"")

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if not self.path.endswith("/chat/completions"):
                    return stub._batch_route(self, "POST", raw)
                body = json.loads(raw)
                prompt = body["messages"][-1]["content"]
                with stub.lock:
                    fault = stub.faults.popleft() if stub.faults else None
                    entry = {
                        "time": time.monotonic(),
                        "prompt": prompt,
                        "messages": body["messages"],
                        "fault": fault,
                        "authorization": self.headers.get("authorization"),
                        "prompt_tokens": 0,
                        "completion_tokens": 0,
                    }
                    stub.requests.append(entry)
                if stub.latency:
                    time.sleep(stub.latency)
                try:
                    stub._respond(self, fault, prompt, body, entry)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def _send(self, handler, status: int, payload: bytes, headers: dict | None = None):
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(payload)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)

    def _respond(self, handler, fault, prompt, body, entry):
        if fault == "timeout":  # the client has given up by then
            time.sleep(self.timeout_sleep)
            return self._send(handler, 504, b'{"error": {"message": "gateway timeout"}}')
        if fault == "429":
            error = {"error": {"message": "Rate limit reached", "type": "rate_limit_exceeded"}}
            return self._send(handler, 429, json.dumps(error).encode(), {"retry-after": self.retry_after})
        if fault == "500":
            return self._send(handler, 500, b'{"error": {"message": "internal error"}}')
        if fault == "malformed":
            return self._send(handler, 200, b'{"id": "x", "choices": [{"message": ')
        if fault == "no_choices":
            return self._send(handler, 200, b'{"id": "x", "object": "chat.completion"}')
        if fault == "401_echo":
            key = (entry["authorization"] or "").removeprefix("Bearer ")
            error = {"error": {"message": f"Incorrect API key provided: {key}", "type": "invalid_request_error"}}
            return self._send(handler, 401, json.dumps(error).encode())
        reply, entry["prompt_tokens"], entry["completion_tokens"] = completion(
            prompt, body.get("model", "stub"), len(self.requests))
        return self._send(handler, 200, json.dumps(reply).encode())

    # ---- the Batch API
    def _json(self, handler, status: int, obj) -> None:
        self._send(handler, status, json.dumps(obj).encode())

    def _batch_route(self, handler, method: str, raw: bytes) -> None:
        path = handler.path.split("?")[0].removeprefix("/v1")
        with self.lock:
            self.calls[f"{method} {re.sub(r'/(file|batch)-[0-9]+', r'/{id}', path)}"] += 1
            if not self.batch_api:
                return self._json(handler, 404, {"error": {"message": f"Not Found: {path}"}})
            if method == "POST" and path == "/files":
                return self._json(handler, 200, self._upload(handler, raw))
            if method == "GET" and path.startswith("/files/") and path.endswith("/content"):
                return self._send(handler, 200, self.files[path.split("/")[2]]["content"])
            if method == "POST" and path == "/batches":
                status, obj = self._create(json.loads(raw))
                return self._json(handler, status, obj)
            if method == "GET" and path == "/batches":
                data = [self._public(b) for b in reversed(self.batches.values())]
                return self._json(handler, 200, {"object": "list", "data": data, "has_more": False})
            if method == "GET" and path.startswith("/batches/"):
                return self._json(handler, 200, self._public(self._advance(self.batches[path.split("/")[2]])))
        return self._json(handler, 404, {"error": {"message": f"Not Found: {path}"}})

    def _upload(self, handler, raw: bytes) -> dict:
        head = f"Content-Type: {handler.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(head + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        file_id = f"file-{len(self.files)}"
        content = fields["file"].get_payload(decode=True)
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                               "filename": fields["file"].get_filename(), "status": "processed",
                               "purpose": fields["purpose"].get_payload(decode=True).decode(), "content": content}
        return {k: v for k, v in self.files[file_id].items() if k != "content"}

    def _create(self, body: dict) -> tuple[int, dict]:
        if body.get("endpoint") != "/v1/chat/completions" or body.get("completion_window") != "24h":
            return 400, {"error": {"message": f"invalid endpoint or window: {body}"}}
        source = self.files.get(body["input_file_id"])
        if source is None or source["purpose"] != "batch":
            return 400, {"error": {"message": f"no batch file {body['input_file_id']}"}}
        lines = [json.loads(line) for line in source["content"].splitlines() if line.strip()]
        for line in lines:
            self.submitted[line["custom_id"]] += 1
        batch_id = f"batch-{len(self.batches)}"
        self.batches[batch_id] = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
            "completion_window": "24h", "status": "validating", "created_at": int(time.time()),
            "metadata": body.get("metadata"), "output_file_id": None, "error_file_id": None, "errors": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines, "_polls": 0, "_hold": self.polls,
            "_plan": self.batch_plan.popleft() if self.batch_plan else "completed",
        }
        return 200, self._public(self.batches[batch_id])

    @staticmethod
    def _public(batch: dict) -> dict:
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _advance(self, batch: dict) -> dict:
        """One retrieve: validating -> in_progress -> (after `polls` retrieves) the batch's planned end."""
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
            bad = [n for n, line in enumerate(batch["_lines"], 1) if line.get("url") != batch["endpoint"]]
            if bad or batch["_plan"] == "failed":
                batch["errors"] = {"object": "list", "data": [{"code": "invalid_url" if bad else "invalid_request",
                                   "message": "line url does not match the batch endpoint" if bad else
                                   "the input file is invalid", "line": bad[0] if bad else None}]}
                batch["status"] = "failed"
        elif batch["status"] == "in_progress":
            batch["_polls"] += 1
            batch["request_counts"]["completed"] = len(batch["_lines"]) * batch["_polls"] // (batch["_hold"] + 1)
            if batch["_polls"] >= batch["_hold"]:
                self._finish(batch)
        return batch

    def _finish(self, batch: dict) -> None:
        plan, lines = batch["_plan"], batch["_lines"]
        ran = lines[: len(lines) // 2] if plan in ("expired", "cancelled") else lines
        files = {"output": [], "errors": []}
        for request in ran:
            fault = self.faults.popleft() if self.faults else None
            kind, out, prompt_tokens, completion_tokens = batch_line(request, fault, len(self.requests))
            self.requests.append({"time": time.monotonic(), "prompt": request["body"]["messages"][-1]["content"],
                                  "messages": request["body"]["messages"], "fault": fault, "authorization": None,
                                  "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
            files[kind].append(out)
        if plan == "expired":
            for n, request in enumerate(lines[len(ran):]):
                files["errors"].append({"id": f"batch_req_x{n}", "custom_id": request["custom_id"], "response": None,
                                        "error": {"code": "batch_expired", "message": "This request could not be "
                                                  "executed before the completion window expired."}})
        for kind, rows in files.items():
            if rows:
                file_id = f"file-{len(self.files)}"
                content = "".join(json.dumps(r) + "\n" for r in rows).encode()
                self.files[file_id] = {"id": file_id, "purpose": "batch_output", "content": content}
                batch["output_file_id" if kind == "output" else "error_file_id"] = file_id
        batch["request_counts"].update(completed=len(files["output"]), failed=len(files["errors"]))
        batch["status"] = {"completed": "completed", "expired": "expired", "cancelled": "cancelled"}[plan]

    def release(self) -> None:
        """Every batch created so far finishes at its next retrieve (new ones wait `polls` retrieves)."""
        with self.lock:
            for batch in self.batches.values():
                batch["_hold"] = 1

    def offline_run(self, requests_path, output_path) -> None:
        """A fake `vllm run-batch -i requests_path -o output_path`: every line answered into one file."""
        rows = []
        for raw in Path(requests_path).read_bytes().splitlines():
            request = json.loads(raw)
            fault = self.faults.popleft() if self.faults else None
            _, out, prompt_tokens, completion_tokens = batch_line(request, fault, len(self.requests))
            self.submitted[request["custom_id"]] += 1
            self.requests.append({"prompt": request["body"]["messages"][-1]["content"], "fault": fault,
                                  "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens})
            rows.append(out)
        Path(output_path).write_text("".join(json.dumps(r) + "\n" for r in rows))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
