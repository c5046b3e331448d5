"""Every prompt string of TLRec in one place, used identically at training and evaluation.

The Alpaca template is TALLRec's (alpaca-lora `templates/alpaca.json`); the rec-tuning wording is the one
in the published TALLRec/TLRec records, byte for byte. Changing a string here changes the data format:
published records will no longer match.
"""

from __future__ import annotations

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
RESPONSE_SPLIT = "### Response:"

YES = "Yes."
NO = "No."
ANSWERS = (NO, YES)  # index = label

ITEM_KINDS = ("movie", "book")

REC_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target {kind} "
    'by answering "Yes." or "No.".'
)
PREFERENCE_PREFIX = "User Preference: "
UNPREFERENCE_PREFIX = "User Unpreference: "
TARGET_QUESTION = "Whether the user will like the target {kind} {target}?"


def generate_prompt(instruction: str, input: str | None = None) -> str:
    """The Alpaca prompt up to and including '### Response:\\n' (the response follows directly)."""
    if input:
        return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input)
    return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def record_prompt(record: dict) -> str:
    return generate_prompt(record["instruction"], record.get("input"))


def rec_instruction(kind: str) -> str:
    if kind not in ITEM_KINDS:
        raise ValueError(f"item kind must be one of {ITEM_KINDS}, got {kind!r}")
    return REC_INSTRUCTION.format(kind=kind)


def quote_item(text: str) -> str:
    """How an item appears in a history list.

    Movies are written `"Title (1995)"`. Book texts already carry their quotes
    (`"Title" written by Author`) and appear as they are, as in the published records.
    """
    return text if text.startswith('"') else f'"{text}"'


def quote_target(text: str, style: str = "wrap") -> str:
    """How the target item appears in the question.

    style 'wrap' (TALLRec Movie and Book): always wrapped in quotes, so a book target reads
    `""Title" written by Author"`; style 'item' (the TLRec Amazon-Books release): as in a history list.
    """
    if style == "wrap":
        return f'"{text}"'
    if style == "item":
        return quote_item(text)
    raise ValueError(f"unknown target quote style {style!r}")


def rec_input(liked: list[str], disliked: list[str], target: str, kind: str, target_style: str = "wrap") -> str:
    """The rec-tuning `input` text from item texts (in history order) and the target's text."""
    return (
        PREFERENCE_PREFIX
        + ", ".join(quote_item(t) for t in liked)
        + "\n"
        + UNPREFERENCE_PREFIX
        + ", ".join(quote_item(t) for t in disliked)
        + "\n"
        + TARGET_QUESTION.format(kind=kind, target=quote_target(text=target, style=target_style))
    )


def answer(label: int) -> str:
    return ANSWERS[int(bool(label))]


def label_of(output: str) -> int | None:
    """1 for 'Yes.', 0 for 'No.', None for anything else (the caller reports it)."""
    output = output.strip()
    if output == YES:
        return 1
    if output == NO:
        return 0
    return None


# ---------------------------------------------------------------------------------------------------------
# CoT data construction (run_cot_generation.py, tlrec_utils/cot.py) -- appended by helper H3.
# Three chained questions to the teacher in the style of the paper's Table 2 (after NIR's three-step
# prompting); each stage repeats the context and the earlier questions and answers. The same strings build
# the CoT instruction records (`stage` 1, 2, 3) used by curriculum instruction tuning.
# ---------------------------------------------------------------------------------------------------------

COT_SYSTEM = "You are a helpful {kind} recommendation assistant."
COT_INSTRUCTION = (
    "Given the candidate {kind}s and the {kind}s the user has watched, answer the question step by step."
)
COT_CONTEXT = "Candidate Set (candidate {kind}s): {candidates}.\nThe {kind}s I have watched (watched {kind}s): {watched}."
COT_QUESTIONS = (
    "Step 1: What features are most important to me when selecting {kind}s (Summarize my preferences briefly)?",
    "Step 2: Selecting the most featured {kind}s (at most 5 {kind}s) from the watched {kind}s according to my "
    "preferences in descending order (Format: [no. a watched {kind}.]).",
    "Step 3: Can you recommend 10 {kind}s from the Candidate Set similar to the selected {kind}s I've watched "
    "(Format: [no. a watched {kind} - a candidate {kind}])?",
)
COT_ANSWER_PREFIX = "Answer: "


def cot_context(candidates: list[str], watched: list[str], kind: str) -> str:
    return COT_CONTEXT.format(
        kind=kind,
        candidates=", ".join(quote_item(t) for t in candidates),
        watched=", ".join(quote_item(t) for t in watched),
    )


def cot_question(stage: int, kind: str) -> str:
    """The question of stage 1, 2 or 3."""
    return COT_QUESTIONS[stage - 1].format(kind=kind)


def cot_dialogue(context: str, answers: list[str], kind: str) -> str:
    """Context, then each earlier question with its answer: what the teacher sees before the next question."""
    parts = [context]
    for stage, text in enumerate(answers, start=1):
        parts.append(cot_question(stage, kind) + "\n" + COT_ANSWER_PREFIX + text.strip())
    return "\n\n".join(parts)


def cot_teacher_prompt(context: str, answers: list[str], kind: str) -> str:
    """The user message for stage len(answers) + 1."""
    return cot_dialogue(context, answers, kind) + "\n\n" + cot_question(len(answers) + 1, kind) + "\n" + COT_ANSWER_PREFIX.strip()


def cot_record(context: str, answers: list[str], stage: int, kind: str) -> dict:
    """The stage-k CoT instruction record: input = context + Q&A of stages < k, output = the stage-k answer."""
    return {
        "instruction": COT_INSTRUCTION.format(kind=kind) + "\n" + cot_question(stage, kind),
        "input": cot_dialogue(context, answers[: stage - 1], kind),
        "output": answers[stage - 1].strip(),
        "stage": stage,
    }
