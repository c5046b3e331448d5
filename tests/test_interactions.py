"""A researcher's own interactions (--dataset interactions), Amazon Reviews 2023 (--dataset amazon-2023) and item
kinds beyond movie and book (item_kind: game, or NOUN/PLURAL/VERB)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

import run_cot_generation
import run_prepare_data
from tlrec_utils import prompts
from tlrec_utils.data.records import load_records

SPLITS = ("train", "valid", "test")


def ml100k_as_interactions(data_dir, out, *extra) -> list[str]:
    """MovieLens-100K's own files through the generic reader: u.data has no header (user, item, rating, time; tabs),
    u.item is '|'-separated ISO-8859-1 (id|title|...)."""
    raw = data_dir / "ml-100k"
    return ["--dataset", "interactions", "--interactions_file", str(raw / "u.data"), "--interactions_sep", "\\t",
            "--interactions_names", "user_id,item_id,rating,timestamp", "--rating_column", "rating",
            "--timestamp_column", "timestamp", "--like_threshold", "3", "--items_file", str(raw / "u.item"),
            "--items_sep", "|", "--items_names", "item_id,title", "--encoding", "iso-8859-1", "--item_kind", "movie",
            "--output_dir", str(out), *extra]


def all_records(prepared: Path) -> list[dict]:
    return [r for s in SPLITS for r in json.loads((prepared / f"{s}.json").read_text())]


def test_interactions_on_ml100k_files_is_byte_identical_to_ml100k(data_dir, tmp_path):
    generic = run_prepare_data.main(ml100k_as_interactions(data_dir, tmp_path / "generic"))
    builtin = run_prepare_data.main(["--dataset", "ml-100k", "--raw_dir", str(data_dir / "ml-100k"),
                                     "--output_dir", str(tmp_path / "builtin")])
    for name in ("train.json", "valid.json", "test.json", "items.json"):
        assert (tmp_path / "generic" / name).read_bytes() == (tmp_path / "builtin" / name).read_bytes(), name
    assert generic["counts"] == builtin["counts"] == {"train": 8000, "valid": 1000, "test": 1000}
    assert generic["kind"] == "movie" and generic["dataset"] == "interactions"
    assert generic["params"]["rating_column"] == "rating" and "category" not in generic["params"]
    assert [Path(s["file"]).name for s in generic["sources"]] == ["u.data", "u.item"]
    assert "rating_column" not in builtin["params"]  # another dataset's settings stay out of its meta.json


def test_item_kind_game_from_a_config_says_games_and_played(data_dir, tmp_path):
    """`item_kind: game` in a config: the rec records say 'target game', the CoT prompts and stage instructions
    (--kind auto reads the noun back from the records) say games and played; movie wording nowhere."""
    config = tmp_path / "games.yaml"
    args = ml100k_as_interactions(data_dir, tmp_path / "games", "--max_windows", "400")
    settings = {k.lstrip("-"): v for k, v in zip(args[::2], args[1::2])}
    settings.update(max_windows=400, like_threshold=3, item_kind="game")
    config.write_text(yaml.safe_dump(settings))
    meta = run_prepare_data.main([str(config)])
    assert meta["kind"] == "game"
    records = all_records(tmp_path / "games")
    assert {r["instruction"] for r in records} == {prompts.REC_INSTRUCTION.format(kind="game")}
    assert all("the target game \"" in r["input"] and "movie" not in r["input"] for r in records)

    summary = run_cot_generation.main(["--data_dir", str(tmp_path / "games"), "--output_dir", str(tmp_path / "cot"),
                                       "--teacher", "heuristic", "--max_users", "30", "--ensure_target",
                                       "--no-progress"])
    assert summary["users_hit"] > 0
    cot = json.loads((tmp_path / "cot" / "cot_train.json").read_text())
    assert [r["instruction"] for r in cot[:3]] == [prompts.cot_stage_instruction(s, "game") for s in (1, 2, 3)]
    assert "the user's played games" in cot[0]["instruction"]
    first = cot[2]["input"]
    assert first.startswith("Candidate Set (candidate games): ")
    assert "The games that the user has played (played games): " in first
    assert "the user has played (Format: [no. a played game - a candidate game])?" in first
    assert "(Format: [no. a played game])" in first and "when selecting games" in first
    assert not any("movie" in r["instruction"] + r["input"] or "watched" in r["instruction"] + r["input"]
                   for r in cot)


def test_explicit_noun_plural_verb(data_dir, tmp_path):
    """A kind outside the table: NOUN/PLURAL/VERB in prepare and CoT generation; --kind auto cannot know its verb."""
    run_prepare_data.main(ml100k_as_interactions(data_dir, tmp_path / "p", "--max_windows", "300",
                                                 "--item_kind", "series/series/binged"))
    records = all_records(tmp_path / "p")
    assert records[0]["instruction"] == prompts.REC_INSTRUCTION.format(kind="series")
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["kind"] == "series/series/binged"
    run_cot_generation.main(["--data_dir", str(tmp_path / "p"), "--output_dir", str(tmp_path / "cot"),
                             "--teacher", "heuristic", "--max_users", "20", "--ensure_target", "--no-progress",
                             "--kind", "series/series/binged"])
    cot = json.loads((tmp_path / "cot" / "cot_train.json").read_text())
    assert "The series that the user has binged (binged series): " in cot[0]["input"]
    assert cot[1]["instruction"].endswith("from the binged series according to the user's preferences in "
                                          "descending order (Format: [no. a binged series]).")


def test_movie_and_book_kinds_keep_the_released_strings():
    """The table's movie and book are the released wording (tests/test_prompts.py pins the bytes): "watched" for
    both, plural + s; a config may still say book/books/read."""
    assert prompts.item_kind("movie") == prompts.ItemKind("movie", "movies", "watched")
    assert prompts.item_kind("book") == prompts.ItemKind("book", "books", "watched")
    for kind in ("movie", "book"):
        assert prompts.cot_context(["A"], ["B"], kind) == prompts.COT_CONTEXT.format(
            kind=kind, candidates='"A"', watched='"B"')
        assert prompts.cot_stage_instruction(2, kind) == prompts.COT_STAGE_INSTRUCTIONS[1].format(kind=kind)
    read = prompts.item_kind("book/books/read")
    assert "(read books)" in prompts.cot_context([], [], read) and read.spec == "book/books/read"
    assert prompts.item_kind("cd/listened to") == prompts.ItemKind("cd", "cds", "listened to")
    for bad in ("moive", "a/b/c/d", 'say "x"/said', "game/", "{x}/played"):
        with pytest.raises(Exception, match="--item_kind"):
            prompts.item_kind(bad)


# ---- hand-made tables in every format ----------------------------------------------------------------------
ITEMS_TSV = "id\tname\tby\nb1\tDune\tHerbert\nb2\tEmma\tAusten\nb3\tUlysses\tJoyce\nb4\tBeloved\tMorrison\n"


def test_csv_with_dates_and_a_label_column_and_an_item_text_template(tmp_path):
    (tmp_path / "items.tsv").write_text(ITEMS_TSV)
    (tmp_path / "ratings.csv").write_text(
        "who,what,liked,when\n"
        "u1,b1,true,2020-01-03\n"
        "u2,b2,0,2020-01-01T10:00:00Z\n"
        "u1,b2,1,2020-01-01\n"
        "u1,b3,false,2020-01-02\n"
        "u2,b4,1,2019-12-31\n"
        "u2,b1,1,2020-01-02\n")
    meta = run_prepare_data.main([
        "--dataset", "interactions", "--interactions_file", str(tmp_path / "ratings.csv"), "--user_column", "who",
        "--item_column", "what", "--label_column", "liked", "--timestamp_column", "when",
        "--items_file", str(tmp_path / "items.tsv"), "--item_id_column", "id", "--title_column", "name",
        "--item_text", '"{name}" written by {by}', "--item_kind", "book", "--history_len", "2",
        "--split_ratio", "1:0:0", "--output_dir", str(tmp_path / "out")])
    records = all_records(tmp_path / "out")
    # u1 by date: b2 (liked), b3 (not), b1 (liked); u2: b4 (liked), b2 (not, 10:00 on the 1st), b1 (liked)
    assert [(r["user_id"], [h["item_id"] for h in r["history"]], r["target"]["item_id"], r["label"])
            for r in records] == [("u1", ["b2", "b3"], "b1", 1), ("u2", ["b4", "b2"], "b1", 1)]
    assert records[0]["history"][1] == {"item_id": "b3", "title": '"Ulysses" written by Joyce', "liked": False}
    assert records[0]["timestamp"] == 1578009600 and records[1]["timestamp"] == 1577923200  # dates: Unix seconds
    assert records[0]["input"] == ('User Preference: "Emma" written by Austen\nUser Unpreference: "Ulysses" written '
                                   'by Joyce\nWhether the user will like the target book ""Dune" written by Herbert"?')
    assert meta["kind"] == "book" and meta["params"]["like_threshold"] is None and meta["counts"]["train"] == 2


def test_implicit_jsonl_gz_draws_negatives_the_user_never_saw(tmp_path):
    rows = [{"user": u, "item": i, "t": t} for u, i, t in [
        ("a", "1", 5), ("a", "2", 1), ("a", "3", 3), ("b", "4", 2), ("b", "1", 1), ("b", "5", 4), ("a", "6", 9),
        ("b", "2", 7)]]
    with gzip.open(tmp_path / "clicks.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "items.csv").write_text("item_id,title\n" + "".join(f"{i},Game {i}\n" for i in range(1, 8)))
    argv = ["--dataset", "interactions", "--interactions_file", str(tmp_path / "clicks.jsonl.gz"), "--user_column",
            "user", "--item_column", "item", "--timestamp_column", "t", "--implicit", "--negatives", "2",
            "--items_file", str(tmp_path / "items.csv"), "--item_id_column", "item_id", "--item_kind", "game",
            "--history_len", "2",
            "--split_ratio", "1:0:0"]
    meta = run_prepare_data.main(argv + ["--output_dir", str(tmp_path / "one")])
    run_prepare_data.main(argv + ["--output_dir", str(tmp_path / "two")])
    assert (tmp_path / "one" / "train.json").read_bytes() == (tmp_path / "two" / "train.json").read_bytes()
    records = all_records(tmp_path / "one")
    seen = {u: {r["item"] for r in rows if r["user"] == u} for u in "ab"}
    rated = {r["item"] for r in rows}  # item 7 is in the items file but nobody's: never drawn
    # a: 2, 3, 1, 6 -> windows (2,3)->1 and (3,1)->6; b: 1, 4, 5, 2 -> (1,4)->5 and (4,5)->2; each positive, then 2
    positives = [r for r in records if r["label"] == 1]
    assert [(r["user_id"], r["target"]["item_id"]) for r in positives] == [("a", "1"), ("a", "6"), ("b", "5"),
                                                                           ("b", "2")]
    assert [r["label"] for r in records] == [1, 0, 0] * 4 and len(records) == 12
    for n, pos in enumerate(positives):
        negs = records[3 * n + 1: 3 * n + 3]
        assert all(neg["history"] == pos["history"] and neg["user_id"] == pos["user_id"] for neg in negs)
        drawn = [neg["target"]["item_id"] for neg in negs]
        assert len(set(drawn)) == 2 and not set(drawn) & seen[pos["user_id"]] and set(drawn) <= rated
    assert all(h["liked"] for r in records for h in r["history"])
    assert meta["like_rate"]["all"] == pytest.approx(1 / 3) and meta["params"]["negatives"] == 2


# ---- Amazon Reviews 2023 -----------------------------------------------------------------------------------
def review(user, parent, rating, ms, asin=None):
    """A line of a category's reviews file as the McAuley lab publishes it (amazon-reviews-2023.github.io)."""
    return {"rating": rating, "title": "Review title", "text": "Review text, with \"quotes\".", "images": [],
            "asin": asin or parent, "parent_asin": parent, "user_id": user, "timestamp": ms, "helpful_vote": 0,
            "verified_purchase": True}


def meta_line(parent, title):
    return {"main_category": "Video Games", "title": title, "average_rating": 4.4, "rating_number": 120,
            "features": ["One player"], "description": [], "price": 19.99, "images": [], "videos": [],
            "store": "Studio", "categories": ["Video Games", "PC"], "details": {"Release date": "May 1, 2020"},
            "parent_asin": parent, "bought_together": None}


@pytest.fixture()
def amazon_2023(tmp_path):
    raw = tmp_path / "amazon"
    raw.mkdir()
    reviews = [
        review("U1", "P1", 5.0, 1_600_000_003_000), review("U2", "P2", 2.0, 1_600_000_000_500),
        review("U1", "P2", 4.0, 1_600_000_001_000, asin="P2-red"),  # a variant: its parent is the item
        review("U1", "P3", 3.0, 1_600_000_002_000), review("U2", "P1", 4.0, 1_600_000_000_500),  # tie: file order
        review("U1", "P9", 5.0, 1_600_000_002_500),  # P9's meta has no title: dropped
        review("U2", "P4", 1.0, 1_600_000_004_000), review("U1", "P4", 5.0, 1_600_000_005_000),
        review("U2", "P3", 5.0, 1_600_000_003_000)]
    with gzip.open(raw / "Video_Games.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    metas = [meta_line("P1", "Star Quest"), meta_line("P2", 'The "Red" Racer'), meta_line("P3", "Puzzle, Deluxe"),
             meta_line("P4", "Farm Life 2"), meta_line("P9", "")]
    (raw / "meta_Video_Games.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas), encoding="utf-8")
    return raw


def test_amazon_2023_category_prepares_by_hand(amazon_2023, tmp_path):
    meta = run_prepare_data.main(["--dataset", "amazon-2023", "--raw_dir", str(amazon_2023), "--category",
                                  "Video_Games", "--history_len", "2", "--split_ratio", "2:1:1",
                                  "--output_dir", str(tmp_path / "out")])
    assert meta["kind"] == "game" and meta["params"]["category"] == "Video_Games"
    assert meta["params"]["like_threshold"] == 3 and meta["skipped"]["ratings_with_unknown_item_dropped"] == 1
    records = all_records(tmp_path / "out")
    # U1 by time: P2 (4, liked), P3 (3, not), P1 (5), P4 (5) -> (P2,P3)->P1, (P3,P1)->P4
    # U2 by time: P2 (2) and P1 (4) tie at ...500 (file order), then P3 (5), P4 (1) -> (P2,P1)->P3, (P1,P3)->P4
    got = [(r["user_id"], [(h["title"], h["liked"]) for h in r["history"]], r["target"]["title"], r["label"],
            r["timestamp"]) for r in records]
    assert got == [
        ("U1", [('The "Red" Racer', True), ("Puzzle, Deluxe", False)], "Star Quest", 1, 1_600_000_003_000),
        ("U1", [("Puzzle, Deluxe", False), ("Star Quest", True)], "Farm Life 2", 1, 1_600_000_005_000),
        ("U2", [('The "Red" Racer', False), ("Star Quest", True)], "Puzzle, Deluxe", 1, 1_600_000_003_000),
        ("U2", [("Star Quest", True), ("Puzzle, Deluxe", True)], "Farm Life 2", 0, 1_600_000_004_000),
    ]
    assert meta["counts"] == {"train": 2, "valid": 1, "test": 1}
    assert records[2]["input"] == ('User Preference: "Star Quest"\nUser Unpreference: "The "Red" Racer"\n'
                                   'Whether the user will like the target game "Puzzle, Deluxe"?')
    assert records[0]["target"]["item_id"] == "P1" and records[0]["history"][0]["item_id"] == "P2"
    assert json.loads((tmp_path / "out" / "items.json").read_text()) == {
        "P1": "Star Quest", "P2": 'The "Red" Racer', "P3": "Puzzle, Deluxe", "P4": "Farm Life 2"}
    assert load_records(tmp_path / "out" / "train.json")[0]["label"] == 1  # the records load and validate


def test_amazon_2023_other_categories_and_a_kind_flag(amazon_2023, tmp_path):
    for name in ("Video_Games.jsonl.gz", "meta_Video_Games.jsonl"):
        (amazon_2023 / name).rename(amazon_2023 / name.replace("Video_Games", "All_Beauty"))
    common = ["--dataset", "amazon-2023", "--raw_dir", str(amazon_2023), "--category", "All_Beauty",
              "--history_len", "2"]
    assert run_prepare_data.main(common + ["--output_dir", str(tmp_path / "a")])["kind"] == "item"
    assert "the target item " in all_records(tmp_path / "a")[0]["input"]
    meta = run_prepare_data.main(common + ["--item_kind", "product/bought", "--output_dir", str(tmp_path / "b")])
    assert meta["kind"] == "product/products/bought"
    assert "the target product " in all_records(tmp_path / "b")[0]["input"]

