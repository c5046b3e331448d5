"""The Book route of the pipeline (Amazon-Book source -> BookCrossing target) on small fixtures in the formats of
the real files: the TLRec authors' Amazon-Book release (windows-csv with item_mapping.csv) and TALLRec's Book
records (train/valid/test.json, the `records` dataset); and the variant for the partial copy of the Book files
(published records picked file by file)."""

import csv
import json

import pytest
from helpers import REPO, read_results

import run_pipeline
from tlrec_utils.errors import InputError
from tlrec_utils.experiments.pipeline import pipeline_phases

SMALL = ["--max_windows", "0", "--cot_max_users", "200", "--source_records", "64", "--k_shots", "16",
         "--tiny_vocab_size", "600",
         "--tiny_hidden_size", "64", "--cot_epochs", "1", "--source_epochs", "1", "--kshot_epochs", "1",
         "--test_limit", "12", "--tuning", "per_device_train_batch_size=8", "max_length=320",
         "--eval", '{"num_negatives": 5, "batch_size": 16}']  # fmt: skip


@pytest.fixture()
def book_fixtures(data_dir, tmp_path):
    """DATA/amazon-book (csv splits cut from the release, item_mapping.csv with made-up titles: the shared copy
    has none) and DATA/book (TALLRec Book records cut from the shared valid/test files)."""
    root = tmp_path / "data"
    amazon = root / "amazon-book"
    amazon.mkdir(parents=True)
    asins = set()
    for split, n in (("train", 800), ("valid", 40), ("test", 40)):
        with open(data_dir / "amazon-book" / f"{split}.csv", newline="") as f:
            rows = list(csv.reader(f))[: n + 1]
        for row in rows[1:]:
            asins.update(x.strip(" '") for x in row[1].strip("[]").split(","))
            asins.add(row[3])
        with open(amazon / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows(rows)
    with open(amazon / "item_mapping.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movie_id", "movie_name"])
        for i, asin in enumerate(sorted(asins)):
            writer.writerow([asin, f'"Fixture Book {asin}" written by Author {i % 37}'])
    book = root / "book"
    book.mkdir()
    valid = json.loads((data_dir / "book" / "valid.json").read_text())
    test = json.loads((data_dir / "book" / "test.json").read_text())
    for name, records in (("train", valid[:300]), ("valid", valid[300:340]), ("test", test[:40])):
        (book / f"{name}.json").write_text(json.dumps(records))
    return root


def test_book_route_real_layout(book_fixtures, tmp_path):
    run_dir = tmp_path / "book"
    argv = ["--config", str(REPO / "configs/experiments/book_quickstart.yaml"), "--run_dir", str(run_dir),
            "--data_dir", str(book_fixtures), "--download", "false", "--methods", "tlrec", "tallrec", *SMALL]
    assert run_pipeline.main(argv) == 0
    source = json.loads((run_dir / "data/source/train.json").read_text())
    target = json.loads((run_dir / "data/target/test.json").read_text())
    assert len(source) == 800 and all("book" in r["instruction"] and "written by" in r["input"] for r in source)
    # the target's test split is TALLRec's published records, every one, text as published, in file order
    published = json.loads((book_fixtures / "book/test.json").read_text())
    assert len(target) == len(published) == 40
    assert [(t["instruction"], t["input"], t["output"]) for t in target] == [
        (o["instruction"], o["input"], o["output"]) for o in published]
    cot = json.loads((run_dir / "cot/cot_train.json").read_text())
    assert cot and all("book" in r["instruction"].lower() for r in cot)
    results = read_results(run_dir)
    assert set(results["variants"]) == {"tlrec", "tallrec"}
    for settings in results["variants"].values():
        assert set(settings) == {"zero_shot", "k16_seed0"}
        assert all(m["counts"]["records"] == 12 for m in settings.values())


def test_book_partial_files_variant(data_dir, tmp_path):
    """The partial copy of the Book files (records only, no train.json): source_files / target_files take
    Amazon-Book records as the source and TALLRec Book valid as the K-shot pool, test as the test split, through
    links (nothing copied); the plan shows the links and the records dataset."""
    partial = tmp_path / "partial-data"
    for folder, sizes in (("amazon-book", {"valid": 300, "test": 40}), ("book", {"valid": 300, "test": 40})):
        (partial / folder).mkdir(parents=True)
        for split, n in sizes.items():
            records = json.loads((data_dir / folder / f"{split}.json").read_text())[:n]
            (partial / folder / f"{split}.json").write_text(json.dumps(records))
    run_dir = tmp_path / "partial"
    # 30 CoT users: the published Book records hit often (200 users gave 432 CoT records, 47 s of CoT tuning)
    few_cot_users = [("30" if flag == "--cot_max_users" else a) for flag, a in zip(["", *SMALL], SMALL)]
    argv = ["--config", str(REPO / "configs/experiments/book_quickstart_partial.yaml"), "--run_dir", str(run_dir),
            "--data_dir", str(partial), "--methods", "tlrec", *few_cot_users]
    cfg = run_pipeline.parse_args(argv)
    phases = {p.key: p for p in pipeline_phases(cfg)}
    prep = phases["data/target"]
    assert prep.argv[prep.argv.index("--dataset") + 1] == "records"
    assert {link.name: target for link, target in prep.links.items()} == {
        "train.json": (partial / "book/valid.json").resolve(), "valid.json": (partial / "book/valid.json").resolve(),
        "test.json": (partial / "book/test.json").resolve()}
    assert run_pipeline.main(argv) == 0
    raw = run_dir / "raw" / "target"
    assert (raw / "train.json").is_symlink()
    assert (raw / "train.json").resolve() == (partial / "book/valid.json").resolve()
    assert "ln -sfn" in (run_dir / "data/target/command.txt").read_text()
    source = json.loads((run_dir / "data/source/train.json").read_text())
    published = json.loads((partial / "amazon-book/valid.json").read_text())
    assert [r["input"] for r in source] == [r["input"] for r in published]
    results = read_results(run_dir)
    assert set(results["variants"]["tlrec"]) == {"zero_shot", "k16_seed0"}
    # a missing file is one line naming the flag and the file
    (partial / "book" / "test.json").unlink()
    with pytest.raises(InputError, match="--target_files: test: .*book/test.json not found"):
        pipeline_phases(run_pipeline.parse_args(argv[:3] + [str(tmp_path / "other"), *argv[4:]]))
