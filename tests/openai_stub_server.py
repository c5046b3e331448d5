"""A real HTTP server on 127.0.0.1 that speaks the OpenAI chat-completions protocol, for tests and benches.

Scripted teacher: Stage 1 and 2 get short fixed-form answers; Stage 3 recommends the first 10 candidates
of the prompt's candidate set, in the order shown, with varied quoting and case (what parsing must
survive). Faults can be queued (`faults`): "429" (with Retry-After), "500", "timeout" (no answer for
`timeout_sleep` s), "malformed" (not JSON), "no_choices" (JSON without choices), "401_echo" (an auth
error that echoes the key back, as some servers do). Every request is recorded.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


class StubOpenAI:
    def __init__(self, latency: float = 0.0, timeout_sleep: float = 2.0, retry_after: str = "0.3"):
        self.latency = latency
        self.timeout_sleep = timeout_sleep
        self.retry_after = retry_after
        self.faults: collections.deque[str] = collections.deque()
        # {time, prompt, messages, fault, authorization, prompt_tokens, completion_tokens}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
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
        text = scripted_answer(prompt)
        entry["prompt_tokens"] = len(prompt) // 4
        entry["completion_tokens"] = len(text) // 4
        reply = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": entry["prompt_tokens"],
                "completion_tokens": entry["completion_tokens"],
                "total_tokens": entry["prompt_tokens"] + entry["completion_tokens"],
            },
        }
        return self._send(handler, 200, json.dumps(reply).encode())

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
