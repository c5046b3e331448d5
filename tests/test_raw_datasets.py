"""Raw dataset loaders and windowing: real MovieLens-100K, the real windowed Netflix release, and small
fixtures written here in each raw format (malformed lines included)."""

import ast
import csv
import json
import re
import shutil
from collections import OrderedDict

import numpy as np
import pytest
from helpers import write_ml100k  # tests/ is on sys.path (conftest)

from tlrec_utils.data import loaders as raw_datasets
from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset
from tlrec_utils.data.record_parsing import parse_rec_input
from tlrec_utils.data.windows import parse_split_ratio, sliding_windows, split_sizes
from tlrec_utils.errors import InputError
from tlrec_utils.model.tokenization import rerender

MOVIE_INSTRUCTION = ("Given the user's preference and unpreference, identify whether the user will like the "
                     'target movie by answering "Yes." or "No.".')


def reference_ml100k_split(ml_dir):
    """The published procedure written out plainly (data/README.md), independent of tlrec_utils."""
    titles = {}
    for line in open(ml_dir / "u.item", encoding="iso-8859-1"):
        f = line.split("|")
        titles[f[0]] = f[1]
    by_user = OrderedDict()
    for line in open(ml_dir / "u.data"):
        user, item, rating, ts = line.split()
        by_user.setdefault(user, []).append((int(ts), item, int(rating)))
    windows = []
    for user, seq in by_user.items():
        seq = sorted(seq, key=lambda x: x[0])  # stable
        for t in range(10, len(seq)):
            windows.append((user, seq[t - 10:t], seq[t]))
    windows = windows[-10000:]
    records = []
    for user, hist, (ts, item, rating) in windows:
        liked = ", ".join(f'"{titles[i]}"' for _, i, r in hist if r > 3)
        disliked = ", ".join(f'"{titles[i]}"' for _, i, r in hist if r <= 3)
        records.append({
            "instruction": MOVIE_INSTRUCTION,
            "input": f"User Preference: {liked}\nUser Unpreference: {disliked}\n"
                     f'Whether the user will like the target movie "{titles[item]}"?',
            "output": "Yes." if rating > 3 else "No.",
            "user_id": user, "timestamp": ts,
        })
    return {"train": records[:8000], "valid": records[8000:9000], "test": records[9000:]}


@pytest.fixture(scope="module")
def prepared_ml100k(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ml") / "movie"
    meta = prepare_dataset(PrepareConfig("ml-100k", str(data_dir / "ml-100k"), str(out)))
    return out, meta


def test_ml100k_reproduces_published_split(data_dir, prepared_ml100k):
    out, meta = prepared_ml100k
    assert meta["counts"] == {"train": 8000, "valid": 1000, "test": 1000}
    published_instruction = json.loads((data_dir / "netflix/valid.json").read_text())[0]["instruction"]
    assert published_instruction == MOVIE_INSTRUCTION
    want = reference_ml100k_split(data_dir / "ml-100k")
    for split in ("train", "valid", "test"):
        got = json.loads((out / f"{split}.json").read_text())
        assert len(got) == len(want[split])
        for idx in (0, -1):  # first and last record of each split, exactly
            for key in ("instruction", "input", "output", "user_id", "timestamp"):
                assert got[idx][key] == want[split][idx][key], (split, idx, key)
        assert [r["input"] for r in got] == [r["input"] for r in want[split]]
        assert [r["output"] for r in got] == [r["output"] for r in want[split]]
    # hand-checked against u.data/u.item: the very first window belongs to user 843, target Dead Poets Society
    first = json.loads((out / "train.json").read_text())[0]
    assert first["user_id"] == "843" and first["target"] == {"item_id": "196", "title": "Dead Poets Society (1989)"}
    assert len(first["history"]) == 10 and first["label"] == 0
    items = json.loads((out / "items.json").read_text())
    assert len(items) == 1682 and items["1"] == "Toy Story (1995)"
    assert meta["sources"][0]["sha256"] == "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"


def test_windows_csv_reproduces_published_netflix_records(data_dir, tmp_path):
    meta = prepare_dataset(PrepareConfig("windows-csv", str(data_dir / "netflix"), str(tmp_path / "nf")))
    assert meta["counts"] == {"train": 8000, "valid": 1000, "test": 1000}
    for split in ("valid", "test"):
        got = json.loads((tmp_path / "nf" / f"{split}.json").read_text())
        want = json.loads((data_dir / "netflix" / f"{split}.json").read_text())
        assert [{k: r[k] for k in ("instruction", "input", "output")} for r in got] == want
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", got[0]["timestamp"]) and got[0]["user_id"].isdigit()


def test_windows_csv_without_titles_fails_clearly(data_dir, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(data_dir / "amazon-book" / f"{split}.csv", raw / f"{split}.csv")
    with pytest.raises(InputError, match="item_mapping.csv: file not found.*--download fetches it"):
        prepare_dataset(PrepareConfig("windows-csv", str(raw), str(tmp_path / "ab")))
    assert not (tmp_path / "ab").exists()


def test_windows_csv_amazon_book_item_mapping_reproduces_published_records(data_dir, tmp_path):
    """An item_mapping.csv in the Amazon-Book release's format (rows 'id,title,authors list' under the header
    'movie_id,movie_name', as instrument_data/preprocess_data_book.py at ljy2222/TLRec@38fca0f writes it),
    holding the texts of the items of the published valid/test records, renders those records exactly."""
    src, raw = data_dir / "amazon-book", tmp_path / "raw"
    raw.mkdir()
    texts = {}
    for split in ("valid", "test"):
        with open(src / f"{split}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        published = json.loads((src / f"{split}.json").read_text())
        assert len(rows) == len(published)
        for row, rec in zip(rows, published):
            parsed = parse_rec_input(rec["input"])
            ids, liked = ast.literal_eval(row["history_movie_id"]), ast.literal_eval(row["history_rating"])
            in_text_order = [i for i, v in zip(ids, liked) if v] + [i for i, v in zip(ids, liked) if not v]
            for item_id, item in zip(in_text_order, parsed["history"]):
                texts[item_id] = item["title"]
            texts[row["movie_id"]] = parsed["target"]["title"]
        shutil.copyfile(src / f"{split}.csv", raw / f"{split}.csv")
    shutil.copyfile(src / "valid.csv", raw / "train.csv")
    with open(raw / "item_mapping.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movie_id", "movie_name"])
        for item_id, text in texts.items():
            title, authors = text[1:].split('" written by ', 1)
            writer.writerow([item_id, title, f"['{authors}']"])
    prepare_dataset(PrepareConfig("windows-csv", str(raw), str(tmp_path / "out"), item_kind="book",
                                  target_style="item"))
    for split in ("valid", "test"):
        got = json.loads((tmp_path / "out" / f"{split}.json").read_text())
        want = json.loads((src / f"{split}.json").read_text())
        assert [{k: r[k] for k in ("instruction", "input", "output")} for r in got] == want
    assert re.fullmatch(r"A[0-9A-Z]+", got[0]["user_id"]) and got[0]["target"]["item_id"] in texts


def test_records_dataset_keeps_the_published_text(data_dir, tmp_path):
    """TALLRec's Book records as a target: text untouched, structure recovered, no user ids."""
    raw = tmp_path / "book"
    raw.mkdir()
    for split, name in (("train", "valid"), ("valid", "valid"), ("test", "test")):
        shutil.copyfile(data_dir / "book" / f"{name}.json", raw / f"{split}.json")
    meta = prepare_dataset(PrepareConfig("records", str(raw), str(tmp_path / "out")))
    assert meta["kind"] == "book" and meta["counts"] == {"train": 2427, "valid": 2427, "test": 2427}
    assert meta["skipped"] == {"records_without_structure": 0, "malformed_rows": 0, "malformed_rows_by_file": {}}
    items = json.loads((tmp_path / "out" / "items.json").read_text())
    for split in ("train", "test"):
        got = json.loads((tmp_path / "out" / f"{split}.json").read_text())
        want = json.loads((raw / f"{split}.json").read_text())
        assert [{k: r[k] for k in ("instruction", "input", "output")} for r in got] == want
        for r in got:
            assert r["user_id"] is None and r["label"] == (r["output"] == "Yes.")
            assert rerender(r)["input"] == r["input"]
            assert all(items[i["item_id"]] == i["title"] for i in r["history"] + [r["target"]])


def test_windows_csv_bad_rows_use_literal_eval(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "item_mapping.csv").write_text("movie_id,movie_name\n1,A (2000)\n2,\"B, The (2001)\"\n3,C (2002)\n")
    header = "user_id,history_movie_id,history_rating,movie_id,rating,timestamp\n"
    good = "7,\"['1', '2']\",\"[1, 0]\",3,1,2005-01-02\n"
    evil = "8,\"__import__('os').getcwd()\",\"[1, 0]\",3,1,2005-01-02\n"
    for split in ("train", "valid", "test"):
        (raw / f"{split}.csv").write_text(header + good * 30 + (evil if split == "train" else ""))
    meta = prepare_dataset(PrepareConfig("windows-csv", str(raw), str(tmp_path / "out"), history_len=2,
                                         item_kind="book", bad_row_tolerance=0.1))
    assert meta["counts"] == {"train": 30, "valid": 30, "test": 30}
    rec = json.loads((tmp_path / "out" / "train.json").read_text())[0]
    assert rec["input"] == ('User Preference: "A (2000)"\nUser Unpreference: "B, The (2001)"\n'
                            'Whether the user will like the target book "C (2002)"?')
    with pytest.raises(InputError, match=r"train.csv line 32: history columns"):
        prepare_dataset(PrepareConfig("windows-csv", str(raw), str(tmp_path / "out2"), bad_row_tolerance=0.01))


def test_sliding_windows_small():
    # users b, a (first appearance order b then a); a's ratings out of time order; ties keep file order
    users = np.array(["b", "a", "b", "a", "a", "b", "a"])
    stamps = np.array([5, 9, 1, 3, 3, 7, 1])
    hist, tgt = sliding_windows(users, stamps, history_len=2, max_windows=None)
    # b sorted: rows 2(1),0(5),5(7) -> one window; a sorted: rows 6(1),3(3),4(3),1(9) -> two windows
    assert hist.tolist() == [[2, 0], [6, 3], [3, 4]]
    assert tgt.tolist() == [5, 4, 1]
    hist, tgt = sliding_windows(users, stamps, history_len=2, max_windows=2)
    assert tgt.tolist() == [4, 1]
    assert split_sizes(10000, (8, 1, 1)) == (8000, 1000, 1000)
    assert sum(split_sizes(7, (8, 1, 1))) == 7
    for bad in ("8:1", "a:b:c", "8:-1:1", "0:0:0", ""):
        with pytest.raises(InputError, match="split_ratio"):
            parse_split_ratio(bad)


# ---------------------------------------------------------------- fixtures in raw formats
def test_ml100k_fixture_with_malformed_lines(tmp_path):
    raw = write_ml100k(tmp_path / "raw", bad_lines=["1\t2\tthree\t4\n"])
    loaded = raw_datasets.load_ml100k(raw, tolerance=0.05)
    assert len(loaded.ratings) == 42 and loaded.stats["malformed_rows"] == 1
    assert loaded.items["3"] == "Caf\u00e9 3, The (1993)"  # ISO-8859-1 decoded
    with pytest.raises(InputError, match=r"u.data line 43: expected"):
        raw_datasets.load_ml100k(raw, tolerance=0.0)
    (raw / "u.data").write_text("")
    with pytest.raises(InputError, match="u.data: no ratings"):
        raw_datasets.load_ml100k(raw)


def write_bookcrossing(raw):
    raw.mkdir(parents=True, exist_ok=True)
    books = [
        '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"',
        '"001";"Plain Title";"Ann Author";"2001";"P";"s";"m";"l"',
        '"002";"\\"O\\" Is for Outlaw";"Sue Grafton";"1999";"P";"s";"m";"l"',
        '"003";"Title; with semicolon";"Bo, Jr.";"1999";"P";"s";"m";"l"',
        '"004";"Broken row";"X";"1999";"P"',  # malformed: 5 fields
        '"005";"Fifth";"Eve";"2000";"P";"s";"m";"l"',
        '"006";"Sixth";"Fay";"2000";"P";"s";"m";"l"',
    ]
    (raw / "BX-Books.csv").write_bytes(("\n".join(books) + "\n").encode("latin-1"))
    ratings = ['"User-ID";"ISBN";"Book-Rating"']
    seq = [("9", "001", 8), ("9", "002", 0), ("9", "003", 3), ("7", "005", 9), ("9", "005", 6),
           ("9", "006", 2), ("7", "001", 1), ("9", "001", 10), ("9", "999", 7), ("7", "006", 7)]
    ratings += [f'"{u}";"{i}";"{r}"' for u, i, r in seq]
    ratings.insert(4, '"9";"003"')  # malformed: 2 fields
    (raw / "BX-Book-Ratings.csv").write_text("\n".join(ratings) + "\n", encoding="latin-1")
    return raw


def test_bookcrossing_loader_and_records(tmp_path):
    raw = write_bookcrossing(tmp_path / "raw")
    loaded = raw_datasets.load_bookcrossing(raw, tolerance=0.2)
    assert loaded.items["002"] == '"\\O\\" Is for Outlaw"" written by Sue Grafton'  # lenient CSV, as TALLRec
    assert loaded.items["003"] == '"Title; with semicolon" written by Bo, Jr.'
    assert "004" not in loaded.items
    assert loaded.stats == {"malformed_rows": 1, "implicit_ratings_dropped": 1}
    assert loaded.ratings["user_id"].tolist() == [9, 9, 7, 9, 9, 7, 9, 9, 7]

    meta = prepare_dataset(PrepareConfig("bookcrossing", str(raw), str(tmp_path / "out"), history_len=2,
                                         split_ratio="1:0:0", bad_row_tolerance=0.2))
    recs = json.loads((tmp_path / "out" / "train.json").read_text())
    assert meta["skipped"]["ratings_with_unknown_item_dropped"] == 1  # ISBN 999 has no title
    # user 9 in file order without 0-ratings and unknown items: 001(8) 003(3) 005(6) 006(2) 001(10)
    user9 = [r for r in recs if r["user_id"] == "9"]
    assert [r["target"]["item_id"] for r in user9] == ["005", "006", "001"]
    assert [r["label"] for r in user9] == [1, 0, 1]  # like = rating > 5
    assert user9[0]["input"] == ('User Preference: "Plain Title" written by Ann Author\n'
                                 'User Unpreference: "Title; with semicolon" written by Bo, Jr.\n'
                                 'Whether the user will like the target book ""Fifth" written by Eve"?')
    assert user9[0]["timestamp"] is None and "book" in user9[0]["instruction"]

    implicit = prepare_dataset(PrepareConfig("bookcrossing", str(raw), str(tmp_path / "imp"), history_len=2,
                                             split_ratio="1:0:0", keep_implicit=True, bad_row_tolerance=0.2))
    recs = json.loads((tmp_path / "imp" / "train.json").read_text())
    assert [h["item_id"] for h in recs[0]["history"]] == ["001", "002"]  # rating 0 kept as a dislike
    assert [h["liked"] for h in recs[0]["history"]] == [True, False]
    assert implicit["counts"]["train"] == meta["counts"]["train"] + 1

    def shuffled(seed, name):
        prepare_dataset(PrepareConfig("bookcrossing", str(raw), str(tmp_path / name), history_len=2,
                                      split_ratio="1:0:0", shuffle_seed=seed, bad_row_tolerance=0.2))
        return [r["input"] for r in json.loads((tmp_path / name / "train.json").read_text())]

    assert shuffled(3, "s3") == shuffled(3, "s3b")
    assert {tuple(shuffled(s, f"x{s}")) for s in range(6)} != {tuple(shuffled(3, "s3"))}


def write_netflix(raw):
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "movie_titles.csv").write_bytes(
        "1,2003,Dinosaur Planet\n2,2004,Love, Actually: \"Sort Of\"\n3,NULL,Ancient Rome\n4,1997,Caf\u00e9, Paris\n"
        .encode("latin-1"))
    (raw / "combined_data_1.txt").write_text(
        "1:\n10,4,2005-01-03\n11,2,2005-01-01\n10,5,2005-01-01\n2:\n10,1,2005-01-02\n11,5,2004-12-30\n"
        "bad,row\n")
    (raw / "combined_data_2.txt").write_text(
        "3:\n11,3,2005-02-01\n10,4,2005-02-02\n4:\n10,2,2005-02-03\n11,4,2005-02-04\n10,9,2005-02-05\n")
    return raw


def test_netflix_loader_and_records(tmp_path):
    raw = write_netflix(tmp_path / "raw")
    loaded = raw_datasets.load_netflix(raw, tolerance=0.2)
    assert loaded.items == {"1": "Dinosaur Planet (2003)", "2": 'Love, Actually: "Sort Of" (2004)',
                            "3": "Ancient Rome (<NA>)", "4": "Caf\u00e9, Paris (1997)"}
    assert loaded.stats["malformed_rows"] == 2
    assert loaded.ratings["user_id"].tolist() == [10, 11, 10, 10, 11, 11, 10, 10, 11]
    assert loaded.ratings["item_id"].tolist() == [1, 1, 1, 2, 2, 3, 3, 4, 4]
    assert loaded.ratings["rating"].dtype == np.int8 and loaded.ratings["user_id"].dtype == np.int32

    prepare_dataset(PrepareConfig("netflix", str(raw), str(tmp_path / "out"), history_len=3,
                                  split_ratio="1:0:0", bad_row_tolerance=0.2))
    recs = json.loads((tmp_path / "out" / "train.json").read_text())
    # user 10 by date: 1(01-01,5) 2(01-02,1) 1(01-03,4) 3(02-02,4) 4(02-03,2); user 11: 2(12-30) 1 3 4
    assert [(r["user_id"], r["target"]["item_id"], r["label"], r["timestamp"]) for r in recs] == [
        ("10", "3", 1, "2005-02-02"), ("10", "4", 0, "2005-02-03"), ("11", "4", 1, "2005-02-04")]
    assert recs[2]["input"] == (
        'User Preference: "Love, Actually: \"Sort Of\" (2004)"\n'
        'User Unpreference: "Dinosaur Planet (2003)", "Ancient Rome (<NA>)"\n'
        'Whether the user will like the target movie "Caf\u00e9, Paris (1997)"?')
    with pytest.raises(InputError, match=r"combined_data_1.txt line 8: expected"):
        raw_datasets.load_netflix(raw, tolerance=0.05)


def test_netflix_reader_gives_the_same_ratings_across_chunk_boundaries(tmp_path):
    """The Netflix files are read in chunks of `chunk_rows` lines: a 'MovieID:' header in one chunk and its
    ratings in the next, and line numbers of malformed rows, must not depend on where the chunks break."""
    raw = write_netflix(tmp_path / "raw")
    path = raw / "combined_data_1.txt"
    path.write_text(path.read_text() + "3:\n12,3,2005-03-01\n12,x,2005-03-02\n4:\n12,4,2005-03-03\n")
    n_lines = len(path.read_text().splitlines())

    def read(chunk_rows, tolerance=0.3):
        arrays, malformed = raw_datasets.read_netflix_ratings(path, tolerance, chunk_rows=chunk_rows)
        return {k: v.tolist() for k, v in arrays.items()}, malformed

    whole, malformed = read(n_lines + 1)
    assert malformed == 2 and whole["movie"] == [1, 1, 1, 2, 2, 3, 4] and whole["user"][-2:] == [12, 12]
    with pytest.raises(InputError) as one_chunk:
        read(n_lines + 1, tolerance=0.0)
    for chunk_rows in range(1, n_lines + 1):  # every split point, a header last in a chunk included
        assert read(chunk_rows) == (whole, malformed), chunk_rows
        with pytest.raises(InputError) as chunked:
            read(chunk_rows, tolerance=0.0)
        assert str(chunked.value) == str(one_chunk.value)  # the same first malformed line named


def write_amazon(raw):
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "books_data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Title", "description", "authors", "image", "previewLink", "publisher", "publishedDate",
                    "infoLink", "categories", "ratingsCount"])
        w.writerow(["Its Only Art If Its Well Hung!", "d", "['Julie Strain']", "", "", "", "1996", "", "", ""])
        w.writerow(['Rome, "Again"', "d", "['Rick Steves', \"Gene O'Shaw\"]", "", "", "", "", "", "", ""])
        w.writerow(["No Author", "d", "", "", "", "", "", "", "", ""])
    with open(raw / "Books_rating.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Id", "Title", "Price", "User_id", "profileName", "review/helpfulness", "review/score",
                    "review/time", "review/summary", "review/text"])
        rows = [("B1", "Its Only Art If Its Well Hung!", "U1", "4.0", "30"),
                ("B2", 'Rome, "Again"', "U1", "2.0", "10"),
                ("B3", "No Author", "U1", "5.0", "20"),
                ("B2", 'Rome, "Again"', "", "5.0", "5"),  # anonymous
                ("B1", "Its Only Art If Its Well Hung!", "U2", "x", "5"),  # malformed score
                ("B3", "No Author", "U1", "1.0", "40")]
        for item, title, user, score, when in rows:
            w.writerow([item, title, "", user, "p", "1/2", score, when, "s", "text, with \"quotes\"\nand lines"])
    return raw


def test_amazon_books_loader_and_records(tmp_path):
    raw = write_amazon(tmp_path / "raw")
    loaded = raw_datasets.load_amazon_books(raw, tolerance=0.2)
    assert loaded.items == {"B1": '"Its Only Art If Its Well Hung!" written by Julie Strain',
                            "B2": '"Rome, "Again"" written by Rick Steves, Gene O\'Shaw',
                            "B3": '"No Author"'}
    assert loaded.stats == {"malformed_rows": 1, "anonymous_reviews_dropped": 1}
    prepare_dataset(PrepareConfig("amazon-books", str(raw), str(tmp_path / "out"), history_len=2,
                                  split_ratio="1:0:0", target_style="item", bad_row_tolerance=0.2))
    recs = json.loads((tmp_path / "out" / "train.json").read_text())
    # U1 by time: B2(10,2) B3(20,5) B1(30,4) B3(40,1); like = score > 3
    assert [(r["target"]["item_id"], r["label"]) for r in recs] == [("B1", 1), ("B3", 0)]
    assert recs[0]["input"] == ('User Preference: "No Author"\nUser Unpreference: "Rome, "Again"" written by '
                                "Rick Steves, Gene O'Shaw\nWhether the user will like the target book "
                                '"Its Only Art If Its Well Hung!" written by Julie Strain?')
    with pytest.raises(InputError, match="Books_rating.csv row 5: bad score"):
        raw_datasets.load_amazon_books(raw, tolerance=0.0)
