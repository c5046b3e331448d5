"""Recover structured fields from the text of a rec-tuning record (published TALLRec/TLRec files).

The input text is

    User Preference: ITEM, ITEM, ...
    User Unpreference: ITEM, ...
    Whether the user will like the target KIND TARGET?

where an ITEM is `prompts.quote_item(text)`: `"Toy Story (1995)"` for movies, `"Title" written by Author`
for books; TARGET is `prompts.quote_target(text, style)`: wrapped again in quotes (style 'wrap', TALLRec:
`""Title" written by Author"`) or as in a list (style 'item', the TLRec Amazon-Books release).

Items are separated by `, ` but titles and authors may contain `, ` and `"` themselves, so splitting on
a separator or a regex gets them wrong. Instead the list is cut at `, "` only where every piece is a
well-formed item (movie: quoted, balanced quotes inside; book: `"Title" written by Author`), and among those
readings (found by dynamic programming) the one with the most items wins: no item text contains the
separator. Ties go to the reading whose book titles do not contain `, "`; a tie beyond that is reported
(None), never guessed. A catalog (item_id -> text) is tried first: a reading whose items all exist in it wins.
"""

from __future__ import annotations

import re

from . import prompts

_INPUT_RE = re.compile(
    "^"
    + re.escape(prompts.PREFERENCE_PREFIX)
    + r"(?P<liked>[^\n]*)\n"
    + re.escape(prompts.UNPREFERENCE_PREFIX)
    + r"(?P<disliked>[^\n]*)\n"
    + re.escape(prompts.TARGET_QUESTION.split("{kind}")[0])
    + "(?P<kind>" + "|".join(prompts.ITEM_KINDS) + r") (?P<target>[^\n]*)\?$"
)
_SEPARATOR = ', "'
_BOOK_MARK = '" written by '


def _text_candidates(shown: str) -> list[str]:
    """Item texts `t` with `prompts.quote_item(t) == shown`, the likely one first: the text itself when it
    starts with a quote (book style, always for '"Title" written by Author', even when the author ends in a
    quote), and the unwrapped text for `"Title"` (movie style)."""
    out = []
    if len(shown) >= 2 and shown.endswith('"') and not shown[1:].startswith('"'):
        out.append(shown[1:-1])
    if shown.startswith('"'):
        out.insert(0 if _BOOK_MARK in shown[1:] else len(out), shown)
    return out


def _plausible(shown: str) -> bool:
    """A book item reads '"Title" written by Author' (the mark exactly once); any other item is wrapped in
    quotes with balanced quotes inside (so '"Say "Yes"' is no item but '"Say "Yes", "No" (1999)"' can be)."""
    if len(shown) < 2 or not shown.startswith('"'):
        return False
    marks = shown.count(_BOOK_MARK, 1)
    if marks:
        return marks == 1
    return shown.endswith('"') and shown.count('"') % 2 == 0


def _title_is_clean(shown: str) -> int:
    """Tie-break between readings: 1 unless a book item's title part contains the separator ', "'.

    Author lists in the TLRec Amazon release are list reprs (`A', "B O'Neil", 'C`), so when a ', "' can
    close either an author list or open a title, the author reading is the likely one."""
    mark = shown.find(_BOOK_MARK, 1)
    return int(mark < 0 or _SEPARATOR not in shown[1:mark])


def _best_segmentation(text: str, accept) -> list[str] | None:
    """The way to cut a list text at ', "' into items accepted by `accept` with the most items (the reading
    in which no item text contains the separator), ties broken by `_title_is_clean`; None when there is no
    such way or two remain tied."""
    if text == "":
        return []
    starts = [0] + [m.start() + 2 for m in re.finditer(re.escape(_SEPARATOR), text)]
    ends = [s - 2 for s in starts[1:]] + [len(text)]
    n = len(starts)
    # best[i] = (score, ways to reach that score (capped at 2), end index of the first item) for the text
    # from starts[i]; score = (items, clean items)
    best: list[tuple | None] = [None] * (n + 1)
    best[n] = ((0, 0), 1, -1)
    for i in range(n - 1, -1, -1):
        top = None
        for j in range(i, n):
            rest = best[j + 1]
            shown = text[starts[i] : ends[j]]
            if rest is None or not accept(shown):
                continue
            score = (rest[0][0] + 1, rest[0][1] + _title_is_clean(shown))
            if top is None or score > top[0]:
                top = (score, rest[1], j)
            elif score == top[0]:
                top = (score, min(2, top[1] + rest[1]), top[2])
        best[i] = top
    if best[0] is None or best[0][1] > 1:
        return None
    items, i = [], 0
    while i < n:
        j = best[i][2]
        items.append(text[starts[i] : ends[j]])
        i = j + 1
    return items


class _Catalog:
    def __init__(self, catalog: dict | None):
        self.id_of: dict[str, str] = {}
        for item_id, text in (catalog or {}).items():
            self.id_of.setdefault(text, str(item_id))  # duplicate texts (ml-100k has a few): first id

    def __bool__(self):
        return bool(self.id_of)

    def known(self, shown: str) -> list[str]:
        return [c for c in _text_candidates(shown) if c in self.id_of]


def _parse_list(text: str, catalog: _Catalog) -> list[str] | None:
    """Item texts of a list; with a catalog, a reading whose items are all in it wins."""
    if catalog:
        shown = _best_segmentation(text, lambda s: len(catalog.known(s)) == 1)
        if shown is not None:
            return [catalog.known(s)[0] for s in shown]
    shown = _best_segmentation(text, _plausible)
    return None if shown is None else [_text_candidates(s)[0] for s in shown]


def _parse_target(shown: str, kind: str, catalog: _Catalog) -> tuple[str, str] | None:
    """(target text, quote style). 'wrap' when the text is wrapped around a well-formed item,
    otherwise 'item' (as in a list): a book target ending in a quote is read as wrapped."""
    options = []
    if len(shown) >= 2 and shown.startswith('"') and shown.endswith('"'):
        inner = shown[1:-1]
        if kind == "movie" or _plausible(inner) or not inner.startswith('"'):
            options.append((inner, "wrap"))
    for cand in _text_candidates(shown):
        if prompts.quote_target(cand, "item") == shown and all(cand != o[0] for o in options):
            options.append((cand, "item"))
    if catalog:
        found = [o for o in options if o[0] in catalog.id_of]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            options = found
    return options[0] if options else None


def parse_rec_input(text: str, catalog: dict | None = None) -> dict | None:
    """`history` (liked items first, then disliked ones), `target`, `kind` and `target_style` recovered from a
    rec-tuning input; None when the text is not in that format or its items cannot be told apart.

    Item ids: the catalog's id for the item text when a catalog (item_id -> text) is given and holds it,
    else the item text itself. `prompts.rec_input(..., kind, target_style)` of the result gives the text back."""
    m = _INPUT_RE.match(text)
    if m is None:
        return None
    cat = _Catalog(catalog)
    kind = m["kind"]
    liked = _parse_list(m["liked"], cat)
    disliked = _parse_list(m["disliked"], cat)
    target = _parse_target(m["target"], kind, cat)
    if liked is None or disliked is None or target is None:
        return None

    def item(t):
        return cat.id_of.get(t, t)

    history = [{"item_id": item(t), "title": t, "liked": True} for t in liked]
    history += [{"item_id": item(t), "title": t, "liked": False} for t in disliked]
    target_text, style = target
    return {
        "history": history,
        "target": {"item_id": item(target_text), "title": target_text},
        "kind": kind,
        "target_style": style,
    }
