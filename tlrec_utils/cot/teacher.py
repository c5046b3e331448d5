"""Teachers that answer the three CoT questions.

- `OpenAITeacher`: any OpenAI-compatible chat-completions server (OpenAI GPT-4 as in the paper, or a local
  vLLM / Ollama / llama.cpp server via `base_url`) through the `openai` package's AsyncOpenAI. Concurrency
  limit, requests-per-minute limit, retries with exponential backoff and jitter on 429, 5xx, timeouts,
  connection errors and malformed replies (honouring `Retry-After`), and hard caps on requests and cost.
  The API key comes from OPENAI_API_KEY only and is never logged or written.
- `HeuristicTeacher`: NOT an LLM. Writes the three answers from the data itself (offline demos, dry runs,
  tests); its output is labelled `heuristic (not an LLM)` everywhere it is recorded.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import random
import re
import time
from dataclasses import dataclass

import numpy as np

from .. import prompts
from ..errors import InputError

logger = logging.getLogger(__name__)

HEURISTIC_LABEL = "heuristic (not an LLM)"


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0


class BudgetExceeded(Exception):
    """A cap (`max_requests`, `max_cost`) is reached: no new request is sent."""


class TeacherError(Exception):
    """A request failed for good (retries exhausted, or an error retrying cannot fix).

    `fatal`: every other request would fail the same way (bad key, no access, unknown model): stop the run."""

    def __init__(self, message: str, fatal: bool = False, cause: str | None = None):
        super().__init__(message)
        self.fatal = fatal
        self.cause = cause  # "auth" (401/403), "not_found" (404), "connection" (server unreachable) or None


class Budget:
    """Counts requests and spend; refuses new requests once a cap is reached.

    Requests already in flight still complete (and are paid for), so spend can pass `max_cost` by at most
    the cost of `concurrency` requests."""

    def __init__(self, max_requests=None, max_cost=None, price_per_1k_input=0.0, price_per_1k_output=0.0):
        self.max_requests = max_requests
        self.max_cost = max_cost
        self.price_in = price_per_1k_input
        self.price_out = price_per_1k_output
        self.requests = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def cost_of(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens / 1000 * self.price_in + completion_tokens / 1000 * self.price_out

    @property
    def cost(self) -> float:
        return self.cost_of(self.prompt_tokens, self.completion_tokens)

    def exhausted(self) -> str | None:
        if self.max_requests is not None and self.requests >= self.max_requests:
            return f"max_requests={self.max_requests} reached"
        if self.max_cost is not None and self.cost >= self.max_cost:
            return f"max_cost={self.max_cost} reached (spent {self.cost:.4f})"
        return None

    def take_request(self) -> None:
        reason = self.exhausted()
        if reason:
            raise BudgetExceeded(reason)
        self.requests += 1

    def add_usage(self, reply: Reply) -> None:
        self.prompt_tokens += reply.prompt_tokens
        self.completion_tokens += reply.completion_tokens


class RateLimiter:
    """At most `per_minute` request starts per minute, evenly spaced (None = unlimited)."""

    def __init__(self, per_minute: float | None):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            delay = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if delay > 0:
            await asyncio.sleep(delay)


def retry_after_seconds(headers) -> float | None:
    """Seconds from a `Retry-After` (or `retry-after-ms`) header; None when absent or unreadable."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return float(value)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None


class OpenAITeacher:
    label = "openai-compatible"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        temperature: float = 0.2,
        max_tokens: int = 512,
        seed: int | None = None,
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        max_retries: int = 6,
        request_timeout: float = 120.0,
        retry_base_delay: float = 1.0,
        retry_max_delay: float = 60.0,
        budget: Budget | None = None,
    ):
        import openai

        self._openai = openai
        api_key = self._secret = api_key_for(base_url)
        # retries are ours (backoff with jitter, Retry-After, counted against the budget)
        self.client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=request_timeout, max_retries=0
        )
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.seed = seed
        self.semaphore = asyncio.Semaphore(concurrency)
        self.rate = RateLimiter(requests_per_minute)
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay
        self.budget = budget or Budget()
        self.retries = 0
        self.rng = random.Random()  # jitter must differ between runs and clients

    def redact(self, text: str) -> str:
        return redact(text, self._secret)

    def _retry_delay(self, attempt: int, headers) -> float:
        backoff = min(self.retry_max_delay, self.retry_base_delay * 2**attempt)
        delay = backoff * (0.5 + self.rng.random())  # jitter: spread out clients that failed together
        server = retry_after_seconds(headers)
        return max(delay, min(server, self.retry_max_delay)) if server is not None else delay

    async def answer(self, user, stage: int, messages: list[dict]) -> Reply:
        errors = self._openai
        retryable = (errors.RateLimitError, errors.InternalServerError, errors.APITimeoutError,
                     errors.APIConnectionError)
        for attempt in range(self.max_retries + 1):
            self.budget.take_request()
            await self.rate.wait()
            headers, cause = None, None
            try:
                async with self.semaphore:
                    response = await self.client.chat.completions.create(
                        model=self.model,
                        messages=messages,
                        temperature=self.temperature,
                        max_tokens=self.max_tokens,
                        seed=self.seed,
                    )
                reply = parse_completion(response)
                reply.text = self.redact(reply.text)  # a server that echoes the key must not get it stored
            except retryable as exc:
                problem = f"{type(exc).__name__}: {exc}"
                cause = "connection" if type(exc) is errors.APIConnectionError else None
                headers = getattr(getattr(exc, "response", None), "headers", None)
            except errors.APIStatusError as exc:
                if exc.status_code < 500 and exc.status_code != 429:
                    fatal = exc.status_code in (401, 403, 404)
                    cause = {401: "auth", 403: "auth", 404: "not_found"}.get(exc.status_code)
                    raise TeacherError(self.redact(f"HTTP {exc.status_code}: {exc}"), fatal=fatal,
                                       cause=cause) from None
                problem = f"HTTP {exc.status_code}"
                headers = exc.response.headers
            except (MalformedReply, json.JSONDecodeError, errors.APIResponseValidationError) as exc:
                problem = f"malformed reply ({type(exc).__name__}: {exc})"
            else:
                self.budget.add_usage(reply)
                return reply
            if attempt == self.max_retries:
                raise TeacherError(self.redact(f"gave up after {attempt + 1} attempts: {problem}"),
                                   cause=cause)
            delay = self._retry_delay(attempt, headers)
            self.retries += 1
            logger.warning("%s; retry %d in %.2f s", self.redact(problem)[:300], attempt + 1, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.client.close()


class MalformedReply(Exception):
    """A 200 reply that is not a usable chat completion (retried like a server error)."""


def teacher_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """The chat messages of one request: the prompt alone, as the authors send it, unless a system message
    is asked for."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def api_key_for(base_url: str | None) -> str:
    """The API key, from OPENAI_API_KEY only (never logged or written); local servers take any key."""
    api_key = os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if base_url is None:
            raise InputError("OPENAI_API_KEY is not set (needed for the OpenAI API; local servers take --base_url)")
        api_key = "EMPTY"  # local servers (vLLM, Ollama) accept any key
    return api_key


def redact(text: str, secret: str | None) -> str:
    """`text` with the key masked (a server that echoes the key must not get it stored)."""
    return text.replace(secret, "***") if secret else text


def parse_completion(response) -> Reply:
    """Text and usage of a chat completion (as the openai client returns it), or MalformedReply. A refusal
    (`message.refusal`, no content) is malformed too: retried."""
    choices = getattr(response, "choices", None)
    if not choices:
        raise MalformedReply("no choices in the reply")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if not isinstance(text, str) or not text.strip():
        raise MalformedReply("no message content in the reply")
    usage = getattr(response, "usage", None)
    return Reply(
        text=text,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
    )


YEAR = re.compile(r"\((\d{4})\)\s*$")
WORD = re.compile(r"[A-Za-z][A-Za-z']+")
STOPWORDS = set(
    "the a an of and in on to for with from by at is it its my his her your our their vs part written".split()
)


class HeuristicTeacher:
    """NOT an LLM: answers written from the data for offline demos, dry runs and tests.

    Stage 1: preferences from item text (decades of the liked items, recurring title words).
    Stage 2: the liked watched items that co-occur most (in training windows) with the candidate set.
    Stage 3: ten candidates, best user-filtering weight first, each paired with the featured watched item
    it co-occurs with most.
    """

    label = HEURISTIC_LABEL

    def __init__(self, cooccurrence, item_code: dict[str, int], kind: str = "movie"):
        self.kind = kind
        self.cooc = cooccurrence.tocsr()  # items x items, windows containing both
        self.code = item_code

    def _co_block(self, user) -> np.ndarray:
        """history x candidates co-occurrence counts (0 for items outside the training windows)."""
        rows = [self.code.get(h["item_id"], -1) for h in user.history]
        cols = [self.code.get(c["item_id"], -1) for c in user.candidates]
        block = self.cooc[[max(r, 0) for r in rows]][:, [max(c, 0) for c in cols]].toarray()
        block[[r < 0 for r in rows], :] = 0
        block[:, [c < 0 for c in cols]] = 0
        return block

    def _featured(self, user, block) -> list[int]:
        """Indices into the history of at most 5 featured items, best first."""
        liked = [i for i, h in enumerate(user.history) if h["liked"]] or list(range(len(user.history)))
        return sorted(liked, key=lambda i: (-block[i].sum(), i))[:5]

    async def answer(self, user, stage: int, messages) -> Reply:
        if stage == 1:
            liked = [h["title"] for h in user.history if h["liked"]]
            disliked = [h["title"] for h in user.history if not h["liked"]]
            decades = collections.Counter(int(m.group(1)) // 10 * 10 for t in liked if (m := YEAR.search(t)))
            words = collections.Counter(
                w.lower() for t in liked for w in WORD.findall(YEAR.sub("", t)) if w.lower() not in STOPWORDS
            )
            kind = prompts.item_kind(self.kind)
            parts = [f"I liked {len(liked)} of the {len(user.history)} {kind.plural} I {kind.verb}."]
            if decades:
                parts.append("Mostly from the " + ", ".join(f"{d}s" for d, _ in decades.most_common(2)) + ".")
            common = [w for w, n in words.most_common(3) if n > 1]
            if common:
                parts.append("Recurring themes in titles: " + ", ".join(common) + ".")
            if disliked:
                parts.append(f"I disliked {len(disliked)}, e.g. {disliked[0]}.")
            return Reply(" ".join(parts))
        block = self._co_block(user)
        featured = self._featured(user, block)
        if stage == 2:
            return Reply("\n".join(prompts.cot_answer_line(n, user.show(user.history[i]["title"]))
                                   for n, i in enumerate(featured, 1)))
        ranked = sorted(range(len(user.candidates)), key=lambda j: (-user.candidates[j]["weight"], j))[:10]
        lines = []
        for n, j in enumerate(ranked, 1):
            best = max(featured, key=lambda i: block[i, j])  # first featured item on ties
            lines.append(prompts.cot_answer_line(n, user.show(user.history[best]["title"]),
                                                 user.show(user.candidates[j]["title"])))
        return Reply("\n".join(lines))

    async def close(self) -> None:
        pass


def cooccurrence_matrix(matrix):
    """items x items: number of windows containing both items."""
    matrix = matrix.astype(np.int32)
    return matrix.T @ matrix
