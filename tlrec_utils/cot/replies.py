"""Reading the teacher's replies: the candidates recommended in a Stage-3 answer, written in the format
prompts.py defines once (`prompts.cot_answer_line`: `N. watched - candidate`), and whether a user is a hit."""

from __future__ import annotations

import re
import unicodedata

from .. import prompts

# which Stage-3 answers count as a hit (the user's CoT records are kept):
# title_in_answer: the target's title appears in the answer text (the authors' generate_data.py: `GT in predictions`);
# recommended: the target is one of the candidates parsed from the numbered list (stricter)
HIT_RULES = ("title_in_answer", "recommended")

QUOTE_CHARS = "\"'`\u201c\u201d\u2018\u2019\u00ab\u00bb"
# a numbered answer line as prompts.cot_answer_line writes it ("3. ..."), or as teachers vary it: "3)", "3:", "[3]"
NUMBERED_LINE = re.compile(rf"^\s*[\[(]?\s*(\d+)\s*[{re.escape(prompts.COT_NUMBER_END)}):\]]\s*(.+?)\s*$")
# prompts.COT_PAIR_SEPARATOR (" - ", any whitespace around the dash), or an arrow
PAIR_SEPARATOR = re.compile(rf"\s+{re.escape(prompts.COT_PAIR_SEPARATOR.strip())}\s+|\s*->\s*")


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
            tail = normalize_title(prompts.COT_PAIR_SEPARATOR.join(pieces[start:]))
            if tail in by_norm:
                match = by_norm[tail]
                break
        if match is None:  # a free-form line: a candidate named inside it, as whole words
            rest = prompts.COT_PAIR_SEPARATOR.join(pieces[1:]) if len(pieces) > 1 else body
            contained = [n for n in by_norm if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", rest)]
            if contained:
                match = by_norm[max(contained, key=len)]
        if match is not None and match not in found:
            found.append(match)
    return found


def hits(shown_target: str, stage3_answer: str, recommended: list[str], target: str | None = None) -> dict[str, bool]:
    """Whether the user counts as a hit under each of HIT_RULES (`shown_target`: the target as the teacher would
    write it; `target`: its item text, default the same)."""
    return {"title_in_answer": shown_target in stage3_answer,
            "recommended": (shown_target if target is None else target) in recommended}


def line_hits(line: dict) -> dict[str, bool]:
    title = line["target"]["title"]
    return hits(line.get("target_shown", title), line["answers"][2], line["recommended"], title)
