"""run_prepare_data.py: outputs, K-shot sampling and every bad input (downloads: test_download.py)."""

import hashlib
import json

import pytest
from helpers import assert_one_line_error, run_entry, write_ml100k  # tests/ is on sys.path (conftest)

import run_prepare_data
from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset, write_k_shot
from tlrec_utils.data.records import load_records
from tlrec_utils.errors import InputError


@pytest.fixture()
def ml_raw(tmp_path):
    return write_ml100k(tmp_path / "raw", n_users=4, per_user=15)


def test_outputs_and_meta(ml_raw, tmp_path):
    out = tmp_path / "out"
    meta = run_prepare_data.main(["--dataset", "ml-100k", "--raw_dir", str(ml_raw), "--output_dir", str(out),
                                  "--history_len", "4", "--split_ratio", "6:2:2", "--like_threshold", "2"])
    assert sorted(p.name for p in out.iterdir()) == ["items.json", "meta.json", "test.json", "train.json", "valid.json"]
    n = 4 * (15 - 4)
    assert meta["counts"] == {"train": n * 6 // 10, "valid": n * 8 // 10 - n * 6 // 10, "test": n - n * 8 // 10}
    assert json.loads((out / "meta.json").read_text()) == meta
    records = [r for s in ("train", "valid", "test") for r in load_records(out / f"{s}.json")]
    assert meta["like_rate"]["all"] == pytest.approx(sum(r["label"] for r in records) / n)
    assert meta["params"]["like_threshold"] == 2 and meta["params"]["history_len"] == 4
    assert [s["sha256"] for s in meta["sources"]] == [
        hashlib.sha256((ml_raw / name).read_bytes()).hexdigest() for name in ("u.data", "u.item")]
    items = json.loads((out / "items.json").read_text())
    for r in records:
        assert set(r) >= {"instruction", "input", "output", "user_id", "history", "target", "label", "timestamp"}
        assert len(r["history"]) == 4 and isinstance(r["user_id"], str) and isinstance(r["timestamp"], int)
        assert all(items[h["item_id"]] == h["title"] for h in r["history"] + [r["target"]])
        assert r["output"] == ("Yes." if r["label"] else "No.")


def test_k_shot_reproducible(ml_raw, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(PrepareConfig("ml-100k", str(ml_raw), str(out), history_len=3))
    pool = json.loads((out / "train.json").read_text())
    path = run_prepare_data.main(["--output_dir", str(out), "--k_shot", "16", "--seed", "3"])
    assert path == out / "train_k16_seed3.json"
    first = json.loads(path.read_text())
    again = json.loads(write_k_shot(out, 16, 3).read_text())
    other = json.loads(write_k_shot(out, 16, 4).read_text())
    assert first == again and first != other and len(first) == 16
    assert len({json.dumps(r) for r in first}) == 16 and all(r in pool for r in first)
    # re-preparing keeps K-shot files (staged output replaces only what it writes)
    prepare_dataset(PrepareConfig("ml-100k", str(ml_raw), str(out), history_len=3))
    assert path.is_file()


def test_download_needs_a_published_release(tmp_path):
    with pytest.raises(InputError, match="--download has no published release.*Kaggle 'netflix-inc"):
        prepare_dataset(PrepareConfig("netflix", str(tmp_path / "none"), str(tmp_path / "o"), download=True))
    with pytest.raises(InputError, match="--release 'netflx': no such published release; choose one of ml-100k"):
        prepare_dataset(PrepareConfig("windows-csv", None, str(tmp_path / "o"), release="netflx"))
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------- bad input: exit 2, one line, no output
def test_cli_bad_inputs_exit_2_one_line(ml_raw, tmp_path, capsys):
    out = tmp_path / "out"

    def run_cli(*argv):  # the command line, in this process
        return run_entry("run_prepare_data", argv, capsys)

    assert_one_line_error(run_cli("--dataset", "ml-100k", "--raw_dir", tmp_path / "missing", "--output_dir", out),
                          "directory not found (u.data, u.item)", "grouplens")
    assert_one_line_error(run_cli("--dataset", "movielens", "--raw_dir", ml_raw, "--output_dir", out),
                          "unknown dataset", "ml-100k")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "train.json").write_text(json.dumps({"not": "a list"}))
    assert_one_line_error(run_cli("--output_dir", tmp_path / "pool", "--k_shot", "4"),
                          "train.json", "expected a JSON list")
    assert not out.exists()


BAD_CASES = {
    "history_len": ({"history_len": 0}, "--history_len must be at least 1"),
    "split_ratio": ({"split_ratio": "80-10-10"}, "--split_ratio '80-10-10'"),
    "missing_file": ({"remove": "u.item"}, "u.item"),
    "empty_ratings": ({"write": ("u.data", "")}, "u.data: no ratings"),
    "malformed_beyond_tolerance": ({"write": ("u.data", "1\t2\t3\t4\nx\ty\n1\t2\n")}, "u.data line 2: expected"),
    "too_short_for_windows": ({"history_len": 500}, "no user has more than --history_len=500"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_inputs_leave_no_output(ml_raw, tmp_path, case):
    change, message = BAD_CASES[case]
    cfg = PrepareConfig("ml-100k", str(ml_raw), str(tmp_path / "out"), history_len=change.get("history_len", 3),
                        split_ratio=change.get("split_ratio", "8:1:1"))
    if "remove" in change:
        (ml_raw / change["remove"]).unlink()
    if "write" in change:
        (ml_raw / change["write"][0]).write_text(change["write"][1])
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        prepare_dataset(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no output dir, no staging leftovers


def test_k_shot_and_records_bad_inputs(ml_raw, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(PrepareConfig("ml-100k", str(ml_raw), str(out), history_len=3))
    n_train = len(json.loads((out / "train.json").read_text()))
    with pytest.raises(InputError, match=f"K={n_train + 1} is larger than the pool of {n_train}"):
        write_k_shot(out, n_train + 1, 0)
    with pytest.raises(InputError, match="file not found"):
        write_k_shot(tmp_path / "nowhere", 4, 0)
    records = json.loads((out / "train.json").read_text())
    records[5]["output"] = "Maybe"
    (out / "train.json").write_text(json.dumps(records))
    with pytest.raises(InputError, match=r"train.json record 5: output 'Maybe' is not"):
        write_k_shot(out, 4, 0)
    assert not list(out.glob("train_k*"))


# The first 16 indices `datasets.Dataset.shuffle(seed=S).select(range(16))` picks from a pool of 8,000 rows (the
# Movie train split), computed once with datasets 5.2.0 (`Dataset.from_dict({"i": range(8000)})`), whose shuffle is
# `np.random.default_rng(seed).permutation(len(self))` + `select` (huggingface/datasets
# src/datasets/arrow_dataset.py, commit 1435bdae): the TLRec authors' K-shot draw (ljy2222/TLRec rec_tuning.py
# @561abcf lines 185-187, @df4a416 lines 44-46; few_shot.sh @26a79cf passes the seed). AUTHORS_ORDER_SEED0: the
# same 16 after their second `.shuffle(seed=0)` (the order the Trainer gets).
DATASETS_SHUFFLE_SELECT_8000 = {
    0: [7780, 1259, 6745, 6339, 3523, 4061, 4497, 5198, 6480, 5959, 5326, 6525, 4607, 7400, 2387, 3849],
    1: [5675, 1149, 1305, 3286, 6253, 1322, 5273, 6851, 3439, 475, 2729, 3332, 6845, 7922, 4141, 5398],
    2: [5418, 5557, 1784, 5715, 2937, 7243, 2859, 2912, 6450, 3910, 5269, 1025, 7509, 6776, 1904, 6950],
    3: [1099, 441, 5911, 2825, 4871, 6299, 6155, 2919, 3185, 2883, 4098, 2172, 6972, 1171, 4500, 3532],
    4: [644, 6940, 795, 5556, 4538, 5533, 1680, 5139, 5796, 632, 532, 6308, 1758, 3296, 4135, 3524],
}
AUTHORS_ORDER_SEED0 = [6745, 6525, 6339, 5326, 7780, 3523, 5198, 4061, 2387, 4607, 4497, 5959, 7400, 6480, 1259, 3849]


def test_k_shot_draws_are_the_authors_shuffle_select():
    from tlrec_utils.data.kshot import authors_order, k_shot_indices, sample_k_shot

    pool = [{"i": i} for i in range(8000)]
    for seed, expected in DATASETS_SHUFFLE_SELECT_8000.items():
        assert k_shot_indices(8000, 16, seed) == expected
        assert [r["i"] for r in sample_k_shot(pool, 16, seed)] == expected
        assert k_shot_indices(8000, 256, seed)[:64] == k_shot_indices(8000, 64, seed)  # nested across K
    assert [r["i"] for r in authors_order(sample_k_shot(pool, 16, 0), 0)] == AUTHORS_ORDER_SEED0


def test_k_shot_files_of_the_movie_split_are_nested(data_dir, tmp_path):
    """run_prepare_data --k_shot 16 --seed 0 on the Movie split: records 0-15 of default_rng(0).permutation(8000);
    the K=64 file of the same seed starts with the K=16 file's records."""
    out = tmp_path / "movie"
    run_prepare_data.main(["--dataset", "ml-100k", "--raw_dir", str(data_dir / "ml-100k"), "--output_dir", str(out)])
    train = json.loads((out / "train.json").read_text())
    assert len(train) == 8000
    k16 = json.loads(run_prepare_data.main(["--output_dir", str(out), "--k_shot", "16", "--seed", "0"]).read_text())
    k64 = json.loads(run_prepare_data.main(["--output_dir", str(out), "--k_shot", "64", "--seed", "0"]).read_text())
    assert k16 == [train[i] for i in DATASETS_SHUFFLE_SELECT_8000[0]]
    assert k64[:16] == k16 and len(k64) == 64
