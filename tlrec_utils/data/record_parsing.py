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

from .. import prompts

_INPUT_RE = re.compile(
    "^"
    + re.escape(prompts.PREFERENCE_PREFIX)
    + r"(?P<liked>[^\n]*)\n"
    + re.escape(prompts.UNPREFERENCE_PREFIX)
    + r"(?P<disliked>[^\n]*)\n"
    + re.escape(prompts.TARGET_QUESTION.split("{kind}")[0])
    + r'(?P<kind>[^"\n]+) (?P<target>"[^\n]*)\?$'  # any noun (prompts.ITEM_KINDS or a config's); items start with '"'
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


def _pieces(text: str) -> tuple[list[int], list[int]]:
    """Start and end of each piece of `text` between the separators ', "' (a piece after one starts with its quote)."""
    starts = [0] + [m.start() + 2 for m in re.finditer(re.escape(_SEPARATOR), text)]
    return starts, [s - 2 for s in starts[1:]] + [len(text)]


# A reading of the pieces from piece i on: ((items, clean items), ways to reach that score (capped at 2), index
# of the last piece of its first item), or None when the pieces from i cannot be cut into accepted items.
def _merge(top, option):
    if option is None or (top is not None and option[0] < top[0]):
        return top
    if top is None or option[0] > top[0]:
        return option
    return top[0], min(2, top[1] + option[1]), top[2]


def _rest(best, j: int):
    """What follows a first item that ends at piece j: the best reading after j, marked with j."""
    return None if best[j + 1] is None else (best[j + 1][0], best[j + 1][1], j)


def _first_item(rests, clean: int):
    """The best reading made of a first item (`clean` or not) and the best of `rests` (merged `_rest`s)."""
    return None if rests is None else ((rests[0][0] + 1, rests[0][1] + clean), rests[1], rests[2])


def _unique_reading(text: str, starts, ends, best) -> list[str] | None:
    """The items of the best reading from piece 0; None when there is none or two remain tied."""
    if not text:
        return []
    if best[0] is None or best[0][1] > 1:
        return None
    items, i = [], 0
    while i < len(starts):
        j = best[i][2]
        items.append(text[starts[i] : ends[j]])
        i = j + 1
    return items


def _plausible_segmentation(text: str) -> list[str] | None:
    """The reading of a list text as `_plausible` items with the most items (no item text contains the separator),
    ties broken by `_title_is_clean`; None when there is none or two remain tied.

    Linear in the number of pieces: whether pieces i..j make a plausible item depends only on the first piece, the
    last one, and the quotes and author marks in between (prefix counts; the separator holds neither), so the
    best reading from piece i is the best over a few ranges of j, kept as running aggregates, not a loop over j."""
    starts, ends = _pieces(text)
    n = len(starts)
    pieces = [text[a:b] for a, b in zip(starts, ends)]
    marks = [p.count(_BOOK_MARK) for p in pieces]  # from a piece's start: where the piece follows another
    next_marked = [n] * (n + 1)  # next_marked[k]: the first piece >= k holding an author mark
    for k in range(n - 1, -1, -1):
        next_marked[k] = k if marks[k] else next_marked[k + 1]
    odd_quotes = [0] * (n + 1)  # parity of the quotes in the pieces before k
    for k, p in enumerate(pieces):
        odd_quotes[k + 1] = odd_quotes[k] ^ (p.count('"') & 1)
    best: list = [None] * (n + 1)
    best[n] = ((0, 0), 1, -1)
    unmarked = [None, None]  # _rest(j) for j in i+1 .. the next marked piece - 1, by the quote parity before j + 1
    rests_to_next_mark: dict[int, object] = {}  # marked piece m: _rest(j) for j in m .. the next marked piece - 1
    for i in range(n - 1, -1, -1):
        if marks[i]:
            rests_to_next_mark[i] = None
            for j in range(i, next_marked[i + 1]):
                rests_to_next_mark[i] = _merge(rests_to_next_mark[i], _rest(best, j))
        with_i = list(unmarked)
        if pieces[i].endswith('"'):
            with_i[odd_quotes[i + 1]] = _merge(with_i[odd_quotes[i + 1]], _rest(best, i))
        unmarked = [None, None] if marks[i] else with_i  # an unmarked item cannot reach across a marked piece
        if not pieces[i].startswith('"'):
            continue
        own = pieces[i].count(_BOOK_MARK, 1)  # the marks of piece i when it starts an item: after its first quote
        if own == 0:
            # an unmarked item, its quotes balanced (a piece of one '"' alone is not), or a book item whose mark
            # lies in a later piece m: its title holds the separator (not clean) unless m is the next piece and
            # starts with the mark (the separator's quote is then the mark's)
            top = _first_item(with_i[odd_quotes[i]], 1)
            m = next_marked[i + 1]
            if m < n and marks[m] == 1:
                clean = int(m == i + 1 and pieces[m].startswith(_BOOK_MARK))
                top = _merge(top, _first_item(rests_to_next_mark[m], clean))
        elif own == 1:  # a book item marked in its first piece: its title is clean
            top = _first_item(rests_to_next_mark[i], 1)
        else:
            top = None
        best[i] = top
    return _unique_reading(text, starts, ends, best)


def _catalog_segmentation(text: str, accept, longest: int) -> list[str] | None:
    """The reading of a list text as items that `accept` takes with the most items, ties broken by
    `_title_is_clean`; an item is at most `longest` characters (the longest catalog text and its quotes), so
    each piece starts only the few items that fit: linear in the number of pieces."""
    starts, ends = _pieces(text)
    n = len(starts)
    best: list = [None] * (n + 1)
    best[n] = ((0, 0), 1, -1)
    for i in range(n - 1, -1, -1):
        top = None
        for j in range(i, n):
            if ends[j] - starts[i] > longest:
                break
            shown = text[starts[i] : ends[j]]
            if best[j + 1] is not None and accept(shown):
                top = _merge(top, _first_item(_rest(best, j), _title_is_clean(shown)))
        best[i] = top
    return _unique_reading(text, starts, ends, best)


class _Catalog:
    def __init__(self, catalog: dict | None):
        self.id_of: dict[str, str] = {}
        for item_id, text in (catalog or {}).items():
            self.id_of.setdefault(text, str(item_id))  # duplicate texts (ml-100k has a few): first id
        self.longest = max(map(len, self.id_of), default=0) + 2  # shown with its quotes

    def __bool__(self):
        return bool(self.id_of)

    def known(self, shown: str) -> list[str]:
        return [c for c in _text_candidates(shown) if c in self.id_of]


def _parse_list(text: str, catalog: _Catalog) -> list[str] | None:
    """Item texts of a list; with a catalog, a reading whose items are all in it wins."""
    if catalog:
        shown = _catalog_segmentation(text, lambda s: len(catalog.known(s)) == 1, catalog.longest)
        if shown is not None:
            return [catalog.known(s)[0] for s in shown]
    shown = _plausible_segmentation(text)
    return None if shown is None else [_text_candidates(s)[0] for s in shown]


def _parse_target(shown: str, kind: str, catalog: _Catalog) -> tuple[str, str] | None:
    """(target text, quote style). 'wrap' when the text is wrapped around a well-formed item,
    otherwise 'item' (as in a list): a book target ending in a quote is read as wrapped."""
    options = []
    if len(shown) >= 2 and shown.startswith('"') and shown.endswith('"'):
        inner = shown[1:-1]
        if kind != "book" or _plausible(inner) or not inner.startswith('"'):  # only book texts carry quotes
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
