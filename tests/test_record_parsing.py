"""Recovering structured fields from rec-tuning text (published TALLRec/TLRec records)."""

import ast
import csv
import functools
import json
import logging

import pytest

from tlrec_utils import prompts
from tlrec_utils.data.record_parsing import parse_rec_input
from tlrec_utils.data.records import build_record, load_records
from tlrec_utils.errors import InputError

TRICKY_MOVIES = [
    "Toy Story (1995)",
    "Ice Storm, The (1997)",
    'Brazil: The "Love Conquers All" Version (1985)',
    'Say "Yes", "No" (1999)',  # contains the list separator '", "' but its quotes are balanced
    "Nightwatch (1997)",
    "Yes, No, Maybe, (2001)",
]
TRICKY_BOOKS = [
    '"The Colonel" written by Patrick A. Davis',
    '"\\O\\" Is for Outlaw"" written by SUE GRAFTON',  # BookCrossing's lenient-CSV title
    '"Hello, World: "Quoted" Part, Two" written by Smith, John',
    '"Rick Steves\' Rome 2004" written by Rick Steves\', \'Gene Openshaw',  # Amazon author-list artefact
    '"My Life in France" written by Julia Child\', "Alex Prud\'homme',
    '"Gertrude and Alice" written by Janet Malcolm',
    '"A fools errand," written by Robin Hobb',
]


def _record(titles, liked, target, kind, style="wrap"):
    history = [{"item_id": f"i{n}", "title": t, "liked": lk} for n, (t, lk) in enumerate(zip(titles, liked))]
    return build_record("u1", history, {"item_id": "t", "title": target}, 1, kind, target_style=style)


def _expected_order(rec):
    """The text keeps liked items first, then disliked (interleaving is lost)."""
    hist = rec["history"]
    return [h["title"] for h in hist if h["liked"]] + [h["title"] for h in hist if not h["liked"]]


@pytest.mark.parametrize("kind,titles", [("movie", TRICKY_MOVIES), ("book", TRICKY_BOOKS), ("game", TRICKY_MOVIES),
                                         ("board game", TRICKY_MOVIES)])  # any noun a config names
@pytest.mark.parametrize("style", ["wrap", "item"])
def test_round_trip_with_quotes_and_commas(kind, titles, style):
    for shift in range(len(titles)):
        order = titles[shift:] + titles[:shift]
        liked = [(n * 7 + shift) % 3 == 0 for n in range(len(order) - 1)]
        rec = _record(order[:-1], liked, order[-1], kind, style)
        parsed = parse_rec_input(rec["input"])
        assert parsed is not None, rec["input"]
        assert [h["title"] for h in parsed["history"]] == _expected_order(rec)
        assert [h["liked"] for h in parsed["history"]] == sorted(liked, reverse=True)
        assert parsed["target"]["title"] == order[-1]
        assert parsed["kind"] == kind
        again = prompts.rec_input(
            [h["title"] for h in parsed["history"] if h["liked"]],
            [h["title"] for h in parsed["history"] if not h["liked"]],
            parsed["target"]["title"], kind, parsed["target_style"],
        )
        assert again == rec["input"]


def test_empty_lists_and_catalog_ids():
    catalog = {"17": "Ice Storm, The (1997)", "3": "Toy Story (1995)", "4": "Toy Story (1995)"}
    rec = _record(["Ice Storm, The (1997)"], [False], "Toy Story (1995)", "movie")
    assert rec["input"].startswith("User Preference: \nUser Unpreference: ")
    parsed = parse_rec_input(rec["input"], catalog=catalog)
    assert parsed["history"] == [{"item_id": "17", "title": "Ice Storm, The (1997)", "liked": False}]
    assert parsed["target"] == {"item_id": "3", "title": "Toy Story (1995)"}  # duplicate text: first id
    # without a catalog the id is the text itself
    assert parse_rec_input(rec["input"])["target"]["item_id"] == "Toy Story (1995)"


def test_catalog_resolves_a_title_that_reads_like_two_items():
    odd = 'Alpha", "Beta (1990)'  # balanced quotes: without a catalog it reads as two items
    rec = _record([odd, "Gamma (1991)"], [True, True], "Toy Story (1995)", "movie")
    assert len(parse_rec_input(rec["input"])["history"]) == 3
    catalog = {"1": odd, "2": "Gamma (1991)", "3": "Toy Story (1995)"}
    parsed = parse_rec_input(rec["input"], catalog=catalog)
    assert [h["item_id"] for h in parsed["history"]] == ["1", "2"]

    # a book title containing ', "' could also end the previous author: the catalog decides
    books = ['"First" written by Ann Lee', '"Hello, "World" again" written by Bo Ek']
    rec = _record(books, [True, True], '"T" written by X', "book")
    assert [h["title"] for h in parse_rec_input(rec["input"])["history"]] != books
    parsed = parse_rec_input(rec["input"], catalog={"a": books[0], "b": books[1], "t": '"T" written by X'})
    assert [h["item_id"] for h in parsed["history"]] == ["a", "b"]


@pytest.mark.parametrize("text", [
    "not a rec-tuning input",
    'User Preference: "A (1999)"\nWhether the user will like the target movie "B (1998)"?',
    'User Preference: "A (1999)", B (1998)\nUser Unpreference: \nWhether the user will like the target movie "C"?',
    'User Preference: \nUser Unpreference: \nWhether the user will like the target song C?',  # target not quoted
    'User Preference: \nUser Unpreference: \nWhether the user will like the target "C"?',  # no noun
])
def test_not_parseable_gives_none(text):
    assert parse_rec_input(text) is None


def test_load_records_reports_unparsed_and_bad_files(tmp_path, caplog):
    good = _record(["Toy Story (1995)"], [True], "Heat (1995)", "movie")
    published = [{k: good[k] for k in ("instruction", "input", "output")},
                 {"instruction": good["instruction"], "input": "User Preference: broken", "output": "No."}]
    path = tmp_path / "pub.json"
    path.write_text(json.dumps(published))
    with caplog.at_level(logging.WARNING):
        records = load_records(path)
    assert records[0]["history"][0]["title"] == "Toy Story (1995)" and records[0]["label"] == 1
    assert "history" not in records[1]
    assert "1 record(s)" in caplog.text and "first: 1" in caplog.text

    path.write_text(json.dumps({"instruction": "x"}))
    with pytest.raises(InputError, match="expected a JSON list"):
        load_records(path)
    path.write_text(json.dumps([{**published[0], "output": "Maybe."}]))
    with pytest.raises(InputError, match="record 0.*Maybe"):
        load_records(path)


PUBLISHED = ["netflix/valid.json", "netflix/test.json", "book/valid.json", "book/test.json",
             "amazon-book/valid.json", "amazon-book/test.json"]


@pytest.mark.parametrize("name", PUBLISHED)
def test_every_published_record_parses(data_dir, name):
    records = json.loads((data_dir / name).read_text())
    unparsed = []
    for i, rec in enumerate(records):
        parsed = parse_rec_input(rec["input"])
        if parsed is None:
            unparsed.append(i)
            continue
        titles = [h["title"] for h in parsed["history"]]
        assert prompts.rec_input(
            [h["title"] for h in parsed["history"] if h["liked"]],
            [h["title"] for h in parsed["history"] if not h["liked"]],
            parsed["target"]["title"], parsed["kind"], parsed["target_style"],
        ) == rec["input"]
        if parsed["kind"] == "book":
            # every book item carries the author mark once: items = marks in the text
            assert len(titles) + 1 == rec["input"].count('" written by ')
            assert all(t.startswith('"') for t in titles + [parsed["target"]["title"]])
        if not name.startswith("book/"):  # TLRec releases: windows of exactly 10
            assert len(titles) == 10
    assert unparsed == [], f"{name}: {len(unparsed)} of {len(records)} records not parsed: {unparsed[:10]}"


def test_published_netflix_text_matches_its_csv(data_dir):
    """Parsed items equal the ids/titles of the same windows in valid.csv (an independent source)."""
    with open(data_dir / "netflix/item_mapping.csv", newline="") as f:
        catalog = {row[0]: row[1] for row in list(csv.reader(f))[1:]}
    with open(data_dir / "netflix/valid.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    records = json.loads((data_dir / "netflix/valid.json").read_text())
    assert len(rows) == len(records)
    for row, rec in zip(rows, records):
        ids = ast.literal_eval(row["history_movie_id"])
        liked = ast.literal_eval(row["history_rating"])
        want = [catalog[i] for i, v in zip(ids, liked) if v == 1] + [catalog[i] for i, v in zip(ids, liked) if v == 0]
        parsed = parse_rec_input(rec["input"], catalog=catalog)
        assert [h["title"] for h in parsed["history"]] == want
        assert parsed["target"]["title"] == catalog[row["movie_id"]]
        assert [catalog[h["item_id"]] for h in parsed["history"]] == want


def _every_reading(text: str, accept):
    """Brute force (the definition in the module docstring): every way to cut `text` at ', "' into accepted
    items, as (items, clean items) -> the readings with that score."""
    import itertools

    from tlrec_utils.data.record_parsing import _title_is_clean

    pieces = text.split(', "')
    pieces = [pieces[0]] + ['"' + p for p in pieces[1:]]
    readings = {}
    for cuts in itertools.product((False, True), repeat=len(pieces) - 1):
        items, current = [], pieces[0]
        for cut, piece in zip(cuts, pieces[1:]):
            if cut:
                items.append(current)
                current = piece
            else:
                current += ", " + piece
        items.append(current)
        if all(accept(s) for s in items):
            score = (len(items), sum(_title_is_clean(s) for s in items))
            readings.setdefault(score, []).append(items)
    return readings


def test_segmentation_equals_brute_force_on_random_lists():
    """The linear-time readings equal the exhaustive search over every cut, with and without a catalog, on
    random texts made of quotes, author marks, separators and commas (ties and no reading included)."""
    import random

    from tlrec_utils.data import record_parsing as rp

    tokens = ['"', ', "', '" written by ', "a", ", ", "'", " ", 'x"', '"y', ",", " written by "]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(1, 12)))
        readings = _every_reading(text, rp._plausible)
        top = max(readings, default=None)
        want = readings[top][0] if top and len(readings[top]) == 1 else None
        assert rp._plausible_segmentation(text) == want, text
        outcomes.add("none" if want is None else "unique")
        # a catalog of some of the spans' texts: readings whose items it all holds
        spans = {s for reading in readings.values() for items in reading for s in items if rng.random() < 0.5}
        texts = sorted(c for s in spans for c in rp._text_candidates(s))
        catalog = rp._Catalog({str(n): t for n, t in enumerate(texts)})
        known = functools.partial(lambda cat, s: len(cat.known(s)) == 1, catalog)
        readings = _every_reading(text, known)
        top = max(readings, default=None)
        want = readings[top][0] if top and len(readings[top]) == 1 else None
        assert rp._catalog_segmentation(text, known, catalog.longest) == want, text
    assert outcomes == {"none", "unique"}


@pytest.mark.parametrize("kind,titles", [("movie", TRICKY_MOVIES), ("book", TRICKY_BOOKS), ("game", TRICKY_MOVIES),
                                         ("board game", TRICKY_MOVIES)])  # any noun a config names
def test_long_histories_round_trip(kind, titles):
    """20,000 items (the tricky titles among plain ones), with and without a catalog: every item back in order."""
    items = [titles[n % len(titles)] if n % 4 == 0 else
             (f"Plain {n}, Part {n % 5} ({1950 + n % 60})" if kind == "movie" else f'"Plain {n}" written by A {n}')
             for n in range(20_000)]
    rec = _record(items[1:], [n % 3 > 0 for n in range(1, len(items))], items[0], kind)
    for catalog in (None, {str(n): t for n, t in enumerate(items)}):
        parsed = parse_rec_input(rec["input"], catalog=catalog)
        assert [h["title"] for h in parsed["history"]] == _expected_order(rec)
        assert parsed["target"]["title"] == items[0]
