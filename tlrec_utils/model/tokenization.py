"""Turning records into token ids for training and scoring, with the answer position known exactly.

- The two answer tokens come from the tokenizer and the template: the first token where the tokenized
  prompt + "Yes." and prompt + "No." differ. Nothing is hard-coded and nothing is found by scanning for
  Yes/No ids (titles such as "Yes Man (2008)" contain them).
- A scoring prompt is that common prefix: the model's next-token distribution after its last token is
  the answer distribution.
- Training: prompt + output + EOS, prompt tokens labelled -100 (Eq. 1 of the paper) unless train_on_inputs.
- Over-long prompts are cut inside the history, oldest items first (re-rendered from the record's
  structured `history`), or, for records without structure (CoT records), in the middle of the prompt.
  The response and the target question are never cut. `truncation="end"` instead keeps the first max_length
  tokens of prompt + response + EOS, as the TLRec authors' `tokenize(truncation=True, max_length=512)` does
  (ljy2222/TLRec utils.py @df4a416 lines 49-61; rec_tuning.py @561abcf lines 97-117: EOS only when shorter).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from .. import prompts
from ..data.records import build_record
from ..errors import InputError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
MIN_PROMPT_TOKENS = 16  # below this a middle cut leaves nothing useful


@dataclass(frozen=True)
class AnswerTokens:
    yes_id: int
    no_id: int


def common_prefix_length(a, b) -> int:
    """Length of the common prefix of two id lists (binary search over slice comparisons, which run in C: the
    ranking evaluation compares ~100 prompts of ~500 tokens per target)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def first_difference(a, b) -> int | None:
    i = common_prefix_length(a, b)
    return None if i == len(a) == len(b) else i


def derive_answer_tokens(tokenizer, template: prompts.PromptTemplate | None = None) -> AnswerTokens:
    """The token ids that decide "Yes." vs "No." right after the template's response header."""
    prompt = prompts.generate_prompt(prompts.rec_instruction("movie"), "An example input.", template)
    yes_ids, no_ids = tokenizer([prompt + prompts.YES, prompt + prompts.NO]).input_ids
    i = first_difference(yes_ids, no_ids)
    if i is None or i >= len(yes_ids) or i >= len(no_ids):
        raise InputError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')}: {prompts.YES!r} and {prompts.NO!r} tokenize "
            "identically after the prompt, so the answer cannot be scored (unknown tokens?)"
        )
    return AnswerTokens(yes_id=yes_ids[i], no_id=no_ids[i])


# ---- re-rendering a record with another history or target --------------------------------------------


def render_settings(record: dict):
    """(kind, target_style) under which `build_record` reproduces this record's text, else None."""
    if not isinstance(record.get("history"), list) or not isinstance(record.get("target"), dict):
        return None
    kind = prompts.rec_noun(record["instruction"])
    for style in ("wrap", "item") if kind else ():
        try:
            rebuilt = build_record(record.get("user_id", ""), record["history"], record["target"],
                                   record.get("label", 0), kind, target_style=style)
        except (KeyError, TypeError):
            return None
        if rebuilt["input"] == record["input"]:
            return kind, style
    return None


def rerender(record: dict, history=None, target=None, settings=None) -> dict | None:
    """The record with its history and/or target replaced, text rendered by `prompts`; None when the record
    has no structure that reproduces its text (then it cannot be re-rendered). `settings`: the record's
    `render_settings`, when the caller re-renders one record many times."""
    settings = settings or render_settings(record)
    if settings is None:
        return None
    kind, style = settings
    return build_record(
        record.get("user_id", ""),
        record["history"] if history is None else history,
        record["target"] if target is None else target,
        record.get("label", 0),
        kind,
        timestamp=record.get("timestamp"),
        target_style=style,
    )


# ---- encoders --------------------------------------------------------------------------------------------


class RecordEncoder:
    """Encodes records for scoring (`prompt_ids`) and training (`training_features`), within `max_length`.

    `template`: the Alpaca template (prompts.TEMPLATES; default tallrec). `truncations` counts records cut:
    {'history': n, 'middle': m}."""

    def __init__(self, tokenizer, max_length: int, answer: AnswerTokens | None = None, train_on_inputs: bool = False,
                 template: prompts.PromptTemplate | None = None, truncation: str = "history"):
        self.tokenizer = tokenizer
        self.truncation = truncation
        self.template = template or prompts.get_template()
        self.max_length = max_length
        self.answer = answer
        self.train_on_inputs = train_on_inputs
        self.truncations: Counter = Counter()

    # scoring ------------------------------------------------------------------------------------------
    def _scoring_ids(self, prompt: str, source: str) -> list[int]:
        yes_ids, no_ids = self.tokenizer([prompt + prompts.YES, prompt + prompts.NO]).input_ids
        i = first_difference(yes_ids, no_ids)
        if i is None or i >= min(len(yes_ids), len(no_ids)) or (yes_ids[i], no_ids[i]) != (
            self.answer.yes_id, self.answer.no_id
        ):
            raise InputError(f"{source}: the answer does not start with the template's answer tokens after this prompt")
        return yes_ids[:i]

    def prompt_ids_many(self, records: list[dict], sources: list[str]) -> list[list[int]]:
        """`prompt_ids` of many records, tokenized in one batch call (the tokenizer's threads); a prompt that
        is too long or fails the answer check goes through `prompt_ids` (cut, or its one-line error)."""
        texts = [prompts.record_prompt(r, self.template) + answer
                 for r in records for answer in (prompts.YES, prompts.NO)]
        ids = self.tokenizer(texts).input_ids if texts else []
        out = []
        for n, (record, source) in enumerate(zip(records, sources)):
            yes_ids, no_ids = ids[2 * n], ids[2 * n + 1]
            i = first_difference(yes_ids, no_ids)
            if (i is not None and i < min(len(yes_ids), len(no_ids)) and i <= self.max_length
                    and (yes_ids[i], no_ids[i]) == (self.answer.yes_id, self.answer.no_id)):
                out.append(yes_ids[:i])
            else:
                out.append(self.prompt_ids(record, source))
        return out

    def prompt_ids(self, record: dict, source: str = "record") -> list[int]:
        """Token ids whose last position predicts the answer token, at most `max_length` long."""
        ids = self._scoring_ids(prompts.record_prompt(record, self.template), source)
        if len(ids) <= self.max_length:
            return ids
        history = record.get("history") or []
        for start in range(1, len(history) + 1):
            shorter = rerender(record, history=history[start:])
            if shorter is None:
                break
            ids = self._scoring_ids(prompts.record_prompt(shorter, self.template), source)
            if len(ids) <= self.max_length:
                self.truncations["history"] += 1
                return ids
        self.truncations["middle"] += 1
        return self._cut_middle(ids, self.max_length, source)

    # training -----------------------------------------------------------------------------------------
    def _split_ids(self, prompt: str, output: str) -> tuple[list[int], list[int]]:
        """(prompt ids, response ids + EOS) from one joint tokenization (so merges match inference)."""
        full = self.tokenizer(prompt + output).input_ids
        prompt_only = self.tokenizer(prompt).input_ids
        n = common_prefix_length(full, prompt_only)
        # a tokenizer that appends EOS itself also appends it to the prompt: never count that as prompt
        if n == len(prompt_only) and prompt_only and prompt_only[-1] == self.tokenizer.eos_token_id:
            n -= 1
        response = full[n:]
        eos = self.tokenizer.eos_token_id
        if eos is not None and (not response or response[-1] != eos):
            response = response + [eos]
        return full[:n], response

    def training_features(self, record: dict, source: str = "record") -> dict:
        """{'input_ids', 'labels'} with prompt labels -100 (unless train_on_inputs)."""
        output = record["output"]
        prompt_ids, response_ids = self._split_ids(prompts.record_prompt(record, self.template, training=True), output)
        if self.truncation == "end":
            return self._cut_end(prompt_ids, response_ids)
        budget = self.max_length - len(response_ids)
        if budget < MIN_PROMPT_TOKENS:
            raise InputError(
                f"{source}: the response has {len(response_ids)} tokens and the prompt needs at least "
                f"{MIN_PROMPT_TOKENS}: raise --max_length to at least {len(response_ids) + MIN_PROMPT_TOKENS} "
                f"(now {self.max_length})"
            )
        if len(prompt_ids) > budget:
            history = record.get("history") or []
            for start in range(1, len(history) + 1):
                shorter = rerender(record, history=history[start:])
                if shorter is None:
                    break
                shorter["output"] = output
                prompt_ids, response_ids = self._split_ids(
                    prompts.record_prompt(shorter, self.template, training=True), output)
                if len(prompt_ids) <= budget:
                    self.truncations["history"] += 1
                    break
            if len(prompt_ids) > budget:
                self.truncations["middle"] += 1
                prompt_ids = self._cut_middle(prompt_ids, budget, source)
        input_ids = prompt_ids + response_ids
        labels = list(input_ids) if self.train_on_inputs else [IGNORE_INDEX] * len(prompt_ids) + response_ids
        return {"input_ids": input_ids, "labels": labels}

    def _cut_end(self, prompt_ids: list[int], response_ids: list[int]) -> dict:
        """The first max_length tokens of prompt + response + EOS (the authors' truncation side)."""
        input_ids = prompt_ids + response_ids
        if len(input_ids) > self.max_length:
            self.truncations["end"] += 1
            input_ids = input_ids[: self.max_length]
        n_prompt = min(len(prompt_ids), len(input_ids))
        labels = list(input_ids) if self.train_on_inputs else [IGNORE_INDEX] * n_prompt + input_ids[n_prompt:]
        return {"input_ids": input_ids, "labels": labels}

    # ---------------------------------------------------------------------------------------------------
    def _cut_middle(self, ids: list[int], budget: int, source: str) -> list[int]:
        """Keep the head (instruction) and the tail (target question, response header) of a prompt."""
        if budget < MIN_PROMPT_TOKENS:
            raise InputError(f"{source}: --max_length {self.max_length} leaves no room for the prompt")
        head = budget // 2
        return ids[:head] + ids[len(ids) - (budget - head):]

    def report(self, what: str, total: int) -> None:
        n = sum(self.truncations.values())
        if n:
            logger.warning(
                "%s: %d of %d records longer than --max_length %d were cut (%d by dropping the oldest history "
                "items, %d in the middle of the prompt, %d at the end)",
                what, n, total, self.max_length, self.truncations["history"], self.truncations["middle"],
                self.truncations["end"],
            )
