"""run_prepare_data.py: outputs, K-shot sampling and every bad input (downloads: test_download.py)."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_raw_datasets import write_ml100k  # tests/ is on sys.path (conftest)

import run_prepare_data
from tlrec_utils.errors import InputError
from tlrec_utils.prepare import PrepareConfig, prepare_dataset, write_k_shot
from tlrec_utils.records import load_records

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def ml_raw(tmp_path):
    return write_ml100k(tmp_path / "raw", n_users=4, per_user=15)


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run_prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


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
def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_cli_bad_inputs_exit_2_one_line(ml_raw, tmp_path):
    out = tmp_path / "out"
    _assert_one_line_error(run_cli("--dataset", "ml-100k", "--raw_dir", tmp_path / "missing", "--output_dir", out),
                           "directory not found (u.data, u.item)", "grouplens")
    _assert_one_line_error(run_cli("--dataset", "movielens", "--raw_dir", ml_raw, "--output_dir", out),
                           "unknown dataset", "ml-100k")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "train.json").write_text(json.dumps({"not": "a list"}))
    _assert_one_line_error(run_cli("--output_dir", tmp_path / "pool", "--k_shot", "4"),
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
