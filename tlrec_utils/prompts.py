"""Every prompt string of TLRec in one place, used identically at training and evaluation.

Alpaca templates are data: `TEMPLATES` holds named templates with their bytes and their source. The default,
`tallrec`, is byte for byte what TALLRec's `finetune_rec.py` and `evaluate.py` build (the f-string's first line
ends in `request.  # noqa: E501`, two spaces and the comment inside the string: every TALLRec/TLRec model was
trained and evaluated on them). The rec-tuning wording is the one in the published TALLRec/TLRec records, and
the CoT wording the TLRec authors' `cot_data/generate_data.py` / `preprocess_data.py`, byte for byte.
Changing a string here changes the data format: published records will no longer match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError

logger = logging.getLogger(__name__)

RESPONSE_SPLIT = "### Response:"
_HEADER = ("Below is an instruction that describes a task{paired}. "
           "Write a response that appropriately completes the request.")
_PAIRED = ", paired with an input that provides further context"
_NOQA = "  # noqa: E501"  # inside the released f-strings, so inside every released prompt
_BODY_INPUT = "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
_BODY_NO_INPUT = "\n\n### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass(frozen=True)
class PromptTemplate:
    """An Alpaca-style template up to and including '### Response:\\n' (the response follows directly).

    Records without an input use `no_input_train` when building training sequences and `no_input_eval` when
    scoring, because the TLRec authors' training and evaluation code differ there by one space."""

    name: str
    with_input: str
    no_input_train: str
    no_input_eval: str
    source: str = ""

    def render(self, instruction: str, input: str | None = None, training: bool = False) -> str:
        if input:
            return self.with_input.format(instruction=instruction, input=input)
        text = self.no_input_train if training else self.no_input_eval
        return text.format(instruction=instruction)

    def texts(self) -> tuple[str, str, str]:
        return self.with_input, self.no_input_train, self.no_input_eval


def _template(name, source, input_header, train_header, eval_header) -> PromptTemplate:
    return PromptTemplate(name, input_header + _BODY_INPUT, train_header + _BODY_NO_INPUT,
                          eval_header + _BODY_NO_INPUT, source)


TEMPLATES = {
    t.name: t
    for t in (
        # SAI990323/TALLRec@c1db29ce6501bce32cc8c3e343c4eb14155beeb1 finetune_rec.py generate_prompt and
        # evaluate.py generate_prompt: the same bytes in both, with and without input
        _template("tallrec", "TALLRec finetune_rec.py / evaluate.py (SAI990323/TALLRec@c1db29c)",
                  _HEADER.format(paired=_PAIRED) + _NOQA, _HEADER.format(paired="") + _NOQA,
                  _HEADER.format(paired="") + _NOQA),
        # ljy2222/TLRec@534c6c97ea67dcde1230f102c65d4ef141cd3435 utils.py: generate_prompt (training) ends the
        # no-input header in "request. " (a trailing space, no comment), generate_prompt_eval in "request."
        _template("tlrec", "TLRec utils.py generate_prompt / generate_prompt_eval (ljy2222/TLRec@534c6c9)",
                  _HEADER.format(paired=_PAIRED) + _NOQA, _HEADER.format(paired="") + " ",
                  _HEADER.format(paired="")),
        # tloen/alpaca-lora templates/alpaca.json: the clean header
        _template("alpaca", "alpaca-lora templates/alpaca.json", _HEADER.format(paired=_PAIRED),
                  _HEADER.format(paired=""), _HEADER.format(paired="")),
    )
}
DEFAULT_TEMPLATE = "tallrec"
TEMPLATE_FILE = "tlrec_prompt.json"  # saved next to every tuned model/adapter


def get_template(name: str | None = None) -> PromptTemplate:
    name = DEFAULT_TEMPLATE if name is None else name
    if name not in TEMPLATES:
        raise InputError(f"--prompt_template: unknown template {name!r} (choose from {', '.join(TEMPLATES)})")
    return TEMPLATES[name]


def save_template(directory, template: PromptTemplate) -> None:
    from .fileio import atomic_write_json

    atomic_write_json(Path(directory) / TEMPLATE_FILE, asdict(template))


def load_saved_template(directory) -> PromptTemplate | None:
    """The template saved next to a model/adapter by run_tuning, or None when there is none. The saved bytes
    win over the registry's: they are what the model was trained on."""
    if not directory:
        return None
    path = Path(directory) / TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        template = PromptTemplate(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise InputError(f"{path}: not a saved prompt template ({exc})") from None
    for text in template.texts():
        if not isinstance(text, str) or not text.endswith(RESPONSE_SPLIT + "\n") or "{instruction}" not in text:
            raise InputError(f"{path}: a template text does not hold {{instruction}} and end in '### Response:\\n'")
    if "{input}" not in template.with_input:
        raise InputError(f"{path}: the with_input template has no {{input}}")
    return template


def resolve_template(requested: str | None, saved_in=()) -> PromptTemplate:
    """The template to use: `requested` (a name) if given, else the one saved in the first of `saved_in`
    (directories: adapter, model) that holds one, else the default. An explicit request that differs from
    the saved template is used, with a warning naming both."""
    saved, where_saved = None, None
    for directory in saved_in:
        saved = load_saved_template(directory)
        if saved is not None:
            where_saved = Path(directory) / TEMPLATE_FILE
            break
    if requested is None:
        if saved is not None:
            logger.info("prompt template %r from %s", saved.name, where_saved)
            return saved
        return get_template(None)
    template = get_template(requested)
    if saved is not None and saved.texts() != template.texts():  # the bytes matter, not the description
        logger.warning("--prompt_template %s differs from the template %r the model was trained with (%s): "
                       "using %s", template.name, saved.name, where_saved, template.name)
    return template


YES = "Yes."
NO = "No."
ANSWERS = (NO, YES)  # index = label



@dataclass(frozen=True)
class ItemKind:
    """What the prompts call an item: its noun ("the target game"), plural ("selecting games") and the verb of the
    history ("the games that the user has played")."""

    noun: str
    plural: str
    verb: str

    @property
    def spec(self) -> str:
        """How a config names it: the table's name, else 'noun/plural/verb'."""
        return self.noun if ITEM_KINDS.get(self.noun) == self else "/".join((self.noun, self.plural, self.verb))


# The item kinds a config names (`item_kind: game`). Movie and book are the released wording, byte for byte: the
# TLRec authors' book prompts keep "watched" ("The books that the user has watched (watched books)",
# ljy2222/TLRec@534c6c9 cot_data/generate_data.py); `item_kind: book/books/read` says "read" instead.
ITEM_KINDS = {k.noun: k for k in (
    ItemKind("movie", "movies", "watched"),
    ItemKind("book", "books", "watched"),
    ItemKind("game", "games", "played"),
    ItemKind("item", "items", "bought"),
)}  # fmt: skip
RELEASED_KINDS = ("movie", "book")  # the kinds of the authors' released prompts and CoT files
_KIND_FORMS = "a name (" + ", ".join(ITEM_KINDS) + "), NOUN/VERB or NOUN/PLURAL/VERB (e.g. album/albums/listened to)"


def _is_word(text) -> bool:
    """A noun, plural or verb a prompt can say: non-empty, no surrounding space, no quote (items are quoted),
    brace (templates) or line break."""
    return isinstance(text, str) and bool(text) and text.strip() == text and not any(c in text for c in '"{}\n\r')


def _check_word(text: str, spec, flag: str) -> str:
    text = text.strip() if isinstance(text, str) else ""
    if not _is_word(text):
        raise InputError(f"{flag} {spec!r}: an item noun, plural or verb must be non-empty words without quotes, "
                         f"braces or line breaks; give {_KIND_FORMS}")
    return text


def item_kind(spec, flag: str = "--item_kind") -> ItemKind:
    """The ItemKind a config names: a name of ITEM_KINDS, 'noun/verb' (plural: noun + 's'), 'noun/plural/verb',
    or an ItemKind. Anything else is an InputError naming `flag`."""
    if isinstance(spec, ItemKind):
        return spec
    if isinstance(spec, str) and spec in ITEM_KINDS:
        return ITEM_KINDS[spec]
    parts = spec.split("/") if isinstance(spec, str) else []
    if len(parts) not in (2, 3):
        raise InputError(f"{flag} {spec!r}: unknown item kind; give {_KIND_FORMS}")
    words = [_check_word(w, spec, flag) for w in parts]
    return ItemKind(words[0], words[0] + "s" if len(words) == 2 else words[1], words[-1])


def item_noun(kind) -> str:
    """The noun of a kind (what the rec prompts say): of an ItemKind or spec, or a bare noun as a record's
    instruction says it (any noun, also one outside the table)."""
    if isinstance(kind, str) and "/" not in kind and kind not in ITEM_KINDS:
        return _check_word(kind, kind, "item kind")
    return item_kind(kind, "item kind").noun


REC_INSTRUCTION = (
    "Given the user's preference and unpreference, identify whether the user will like the target {kind} "
    'by answering "Yes." or "No.".'
)
PREFERENCE_PREFIX = "User Preference: "
UNPREFERENCE_PREFIX = "User Unpreference: "
TARGET_QUESTION = "Whether the user will like the target {kind} {target}?"


def generate_prompt(instruction: str, input: str | None = None, template: PromptTemplate | None = None,
                    training: bool = False) -> str:
    """The Alpaca prompt up to and including '### Response:\\n' (the response follows directly)."""
    return (template or TEMPLATES[DEFAULT_TEMPLATE]).render(instruction, input, training=training)


def record_prompt(record: dict, template: PromptTemplate | None = None, training: bool = False) -> str:
    return generate_prompt(record["instruction"], record.get("input"), template, training=training)


def rec_instruction(kind) -> str:
    return REC_INSTRUCTION.format(kind=item_noun(kind))


def rec_noun(instruction: str) -> str | None:
    """The item noun of a rec-tuning instruction (`rec_instruction`'s inverse), None for another instruction."""
    head, tail = REC_INSTRUCTION.split("{kind}")
    if not (isinstance(instruction, str) and instruction.startswith(head) and instruction.endswith(tail)):
        return None
    noun = instruction[len(head):len(instruction) - len(tail)]
    return noun if _is_word(noun) else None


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


def rec_input(liked: list[str], disliked: list[str], target: str, kind, target_style: str = "wrap") -> str:
    """The rec-tuning `input` text from item texts (in history order) and the target's text."""
    return (
        PREFERENCE_PREFIX
        + ", ".join(quote_item(t) for t in liked)
        + "\n"
        + UNPREFERENCE_PREFIX
        + ", ".join(quote_item(t) for t in disliked)
        + "\n"
        + TARGET_QUESTION.format(kind=item_noun(kind), target=quote_target(text=target, style=target_style))
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
# CoT data construction (run_cot_generation.py, tlrec_utils/cot*.py): the TLRec authors' wording, byte for byte
# (ljy2222/TLRec@534c6c97ea67dcde1230f102c65d4ef141cd3435 cot_data/generate_data.py for the teacher prompts,
# cot_data/preprocess_data.py for the instruction records). Both scripts have movie and book wording.
# Three chained questions (paper Table 2, after NIR): each stage's prompt repeats the context and the earlier
# questions with their answers and ends in "\nAnswer:".
# ---------------------------------------------------------------------------------------------------------

# The answer formats the Stage-2 and Stage-3 questions ask for, defined once: the questions and stage instructions
# quote them, the heuristic teacher writes its answers with `cot_answer_line`, and the reply parser
# (cot_replies.NUMBERED_LINE, PAIR_SEPARATOR) reads Stage-3 lines by these parts.
COT_NUMBER_END = "."  # "1. ..."
COT_PAIR_SEPARATOR = " - "  # "watched - candidate"
COT_STAGE2_FORMAT = "[no" + COT_NUMBER_END + " a watched {kind}]"
COT_STAGE3_FORMAT = "[no" + COT_NUMBER_END + " a watched {kind}" + COT_PAIR_SEPARATOR + "a candidate {kind}]"


def cot_answer_line(number: int, *items: str) -> str:
    """One line of a Stage-2 answer (`1. watched`) or a Stage-3 answer (`1. watched - candidate`)."""
    return f"{number}{COT_NUMBER_END} " + COT_PAIR_SEPARATOR.join(items)


COT_CONTEXT = (
    "Candidate Set (candidate {kind}s): {candidates}\n"
    "The {kind}s that the user has watched (watched {kind}s): {watched}\n"
)
COT_QUESTIONS = (
    "Step 1: What features are most important to the user when selecting {kind}s (Summarize the user's "
    "preferences briefly)?",
    "Step 2: Selecting the most featured {kind}s (at most 5 {kind}s) from the watched {kind}s according to the "
    "user's preferences in descending order (Format: " + COT_STAGE2_FORMAT + ").",
    "Step 3: Can you recommend 10 {kind}s from the Candidate Set similar to the selected {kind}s the user has "
    "watched (Format: " + COT_STAGE3_FORMAT + ")?",
)
COT_ANSWER_CUE = "\nAnswer:"  # ends every teacher prompt
COT_ANSWERED = "\nAnswer: {answer}\n"  # an earlier stage's answer, before the next question
# the instruction of the stage-k training record (preprocess_data.py); the stage-3 one has no final period
COT_STAGE_INSTRUCTIONS = (
    "Given the candidate set and the user's watched {kind}s, summarize the user's preferences briefly.",
    "Given the candidate set, the user's watched {kind}s and the user's preferences, select the most featured "
    "{kind}s (at most 5 {kind}s) from the watched {kind}s according to the user's preferences in descending "
    "order (Format: " + COT_STAGE2_FORMAT + ").",
    "Given the candidate set, the user's watched {kind}s, the user's preferences and the most featured {kind}s, "
    "recommend 10 {kind}s from the candidate set similar to the selected {kind}s the user has watched "
    "(Format: " + COT_STAGE3_FORMAT + ")",
)


def cot_worded(text: str, kind) -> str:
    """A CoT string for an item kind. The strings above are the released movie wording with {kind} for the noun;
    another kind takes its plural where they say "{kind}s" and its verb where they say "watched" (for movie and
    book that is the released text itself)."""
    k = item_kind(kind, "item kind")
    text = re.sub(r"(?<!\{)watched(?!\})", k.verb, text)  # not the context's {watched} placeholder
    return text.replace("{kind}s", k.plural).replace("{kind}", k.noun)


def cot_stage_instruction(stage: int, kind) -> str:
    return cot_worded(COT_STAGE_INSTRUCTIONS[stage - 1], kind)


# every instruction of a CoT record, for telling a record's stage (and item kind) from its instruction
COT_INSTRUCTION_STAGES = {
    cot_stage_instruction(stage, kind): (stage, kind) for kind in RELEASED_KINDS for stage in (1, 2, 3)
}


def cot_context(candidates: list[str], watched: list[str], kind) -> str:
    return cot_worded(COT_CONTEXT, kind).format(
        candidates=", ".join(quote_item(t) for t in candidates),
        watched=", ".join(quote_item(t) for t in watched),
    )


def cot_question(stage: int, kind) -> str:
    """The question of stage 1, 2 or 3."""
    return cot_worded(COT_QUESTIONS[stage - 1], kind)


def cot_teacher_prompt(context: str, answers: list[str], kind) -> str:
    """The prompt of stage len(answers) + 1: the context, each earlier question with its answer, the question,
    then "\nAnswer:"."""
    text = context
    for stage, answer_text in enumerate(answers, start=1):
        text += cot_question(stage, kind) + COT_ANSWERED.format(answer=answer_text)
    return text + cot_question(len(answers) + 1, kind) + COT_ANSWER_CUE


def cot_record(context: str, answers: list[str], stage: int, kind) -> dict:
    """The stage-k CoT instruction record: the stage's instruction; input = the stage-k teacher prompt without
    its trailing "\nAnswer:"; output = the stage-k answer as the teacher gave it."""
    prompt = cot_teacher_prompt(context, answers[: stage - 1], kind)
    return {
        "instruction": cot_stage_instruction(stage, kind),
        "input": prompt[: -len(COT_ANSWER_CUE)],
        "output": answers[stage - 1],
        "stage": stage,
    }


def _sha256_of(strings: list[str]) -> str:
    return hashlib.sha256(json.dumps(strings).encode("utf-8")).hexdigest()


def _cot_strings(kind, system_prompt: str | None) -> list[str]:
    return [COT_CONTEXT, *COT_QUESTIONS, COT_ANSWER_CUE, COT_ANSWERED, *COT_STAGE_INSTRUCTIONS,
            item_kind(kind, "item kind").spec,
            system_prompt or ""]


def cot_wording_fingerprint(kind, system_prompt: str | None = None) -> str:
    """SHA-256 of every string that shapes a teacher prompt, a CoT record or the reading of an answer (the
    templates and the answer format), and of a probe user's three prompts and CoT records as rendered now, so a
    change in how they are put together counts too: a resume must not mix answers to different prompts."""
    probe = cot_context(["Candidate (1999)", '"Book" written by Author'], ["Watched (2001)"], kind)
    answers = ["preferences", cot_answer_line(1, "Watched (2001)"),
               cot_answer_line(1, "Watched (2001)", "Candidate (1999)")]
    rendered = [cot_teacher_prompt(probe, answers[:n], kind) for n in range(3)]
    rendered += [json.dumps(cot_record(probe, answers, stage, kind)) for stage in (1, 2, 3)]
    return _sha256_of(_cot_strings(kind, system_prompt) + [COT_NUMBER_END, COT_PAIR_SEPARATOR] + rendered)


def cot_wording_fingerprint_strings_only(kind, system_prompt: str | None = None) -> str:
    """The fingerprint of versions up to 0.1.0 (the strings alone): their output directories resume while these
    strings are unchanged."""
    return _sha256_of(_cot_strings(kind, system_prompt))
