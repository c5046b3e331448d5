"""The dataset and baseline registries drive the CLIs (choices, help, defaults), and a new dataset or baseline
is one registry line: nothing else in prepare.py, run_prepare_data.py, the baseline runner or run_baselines.py
needs to know it."""

import dataclasses
import re
import subprocess
import sys

import pytest
from helpers import REPO, read_metrics

import run_baselines
import run_prepare_data
from tlrec_utils.baselines import heuristics
from tlrec_utils.baselines.registry import BASELINES, Baseline
from tlrec_utils.data.records import load_records
from tlrec_utils.data.registry import DATASETS, markdown_table


def help_text(script: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return re.sub(r"-\s+", "-", " ".join(proc.stdout.split()))  # undo the help formatter's line wrapping


def test_the_clis_list_what_the_registries_hold():
    prepare_help = help_text("run_prepare_data.py")
    for name, spec in DATASETS.items():
        assert name in prepare_help
        if spec.like_threshold is not None:  # the --like_threshold default of each dataset
            assert re.search(rf"{spec.like_threshold:g} for [\w/-]*\b{re.escape(name)}\b", prepare_help), name
    assert all(name in help_text("run_baselines.py") for name in BASELINES)
    assert [line.split(" | ")[0] for line in markdown_table().splitlines()[2:]] == [f"| {n}" for n in DATASETS]


@pytest.fixture()
def strict_ml100k(monkeypatch):
    """A new dataset in one line: ml-100k read by the same loader, with 'liked' only for 5 stars."""
    monkeypatch.setitem(DATASETS, "ml-100k-strict",
                        dataclasses.replace(DATASETS["ml-100k"], like_threshold=4, what="5-star likes"))


def test_a_new_dataset_is_one_registry_line(strict_ml100k, small_data_dir, tmp_path):
    common = ["--raw_dir", str(small_data_dir / "ml-100k"), "--max_windows", "500"]
    new = run_prepare_data.main(["--dataset", "ml-100k-strict", "--output_dir", str(tmp_path / "new"), *common])
    same = run_prepare_data.main(["--dataset", "ml-100k", "--like_threshold", "4", "--output_dir",
                                  str(tmp_path / "same"), *common])
    default = run_prepare_data.main(["--dataset", "ml-100k", "--output_dir", str(tmp_path / "default"), *common])
    assert new["dataset"] == "ml-100k-strict" and new["params"]["like_threshold"] == 4 and new["kind"] == "movie"
    assert new["like_rate"] == same["like_rate"] and new["counts"] == same["counts"]
    assert load_records(tmp_path / "new" / "train.json") == load_records(tmp_path / "same" / "train.json")
    assert new["like_rate"]["all"] < default["like_rate"]["all"]  # fewer likes: the registry's threshold was used


def test_a_new_baseline_is_one_registry_line(monkeypatch, small_data_dir, tmp_path):
    monkeypatch.setitem(BASELINES, "popularity-again",
                        Baseline(lambda seed=0, text_encoder=None, **_: heuristics.ItemPopularity(), "a copy"))
    prepared = tmp_path / "data"
    run_prepare_data.main(["--dataset", "ml-100k", "--raw_dir", str(small_data_dir / "ml-100k"), "--max_windows", "400",
                           "--output_dir", str(prepared)])
    files = ["--train_file", str(prepared / "train.json"), "--test_file", str(prepared / "test.json"),
             "--items_file", str(prepared / "items.json")]
    new = run_baselines.main(["--model", "popularity-again", "--output_dir", str(tmp_path / "new"), *files])
    old = run_baselines.main(["--model", "item-popularity", "--output_dir", str(tmp_path / "old"), *files])
    assert new["settings"]["method"] == "popularity-again"
    assert read_metrics(tmp_path / "new")["auc"] == old["auc"] != 0.5
    assert new["ndcg@10"] == old["ndcg@10"]
