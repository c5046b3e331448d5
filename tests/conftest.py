import json
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from helpers import PIPELINE_START, REPO  # noqa: E402 (tests/ and the repository are importable from here on)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from a hub: fail loudly instead
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@pytest.fixture(scope="session")
def data_dir():
    """The local copies of the public datasets: $TLREC_DATA_DIR. Missing data skips the tests that need it,
    except under CI (`CI` set), where it fails them: CI must never pass by skipping."""
    env = os.environ.get("TLREC_DATA_DIR")
    problem = None
    if not env:
        problem = "TLREC_DATA_DIR is not set"
    elif not Path(env).is_dir():
        problem = f"TLREC_DATA_DIR={env} not found"
    if problem:
        message = f"real data needed: {problem} (see README, Tests)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(env)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    """(records, catalog, path of records JSON) with a planted signal."""
    from helpers import synthetic_records

    records, catalog = synthetic_records()
    path = tmp_path_factory.mktemp("synthetic") / "records.json"
    path.write_text(json.dumps(records))
    return records, catalog, path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, synthetic):
    """A tiny random LLaMA with a byte-level BPE tokenizer trained on the synthetic records."""
    from tlrec_utils.model.tiny_llm import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama")
    return build_tiny_llama([synthetic[2]], out, vocab_size=1000)


@pytest.fixture(scope="session")
def tiny_llama_sp(tmp_path_factory, synthetic):
    """The same with a sentencepiece-style tokenizer (LLaMA-1/2 style)."""
    from tlrec_utils.model.tiny_llm import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama_sp")
    return build_tiny_llama([synthetic[2]], out, vocab_size=1000, tokenizer_style="sentencepiece")


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory):
    """A data directory laid out as $TLREC_DATA_DIR, written by the tests: MovieLens-100K's raw files in the
    published format (30 users x 25 ratings of 80 movies: 450 windows of 10) and a windowed Netflix-format
    release (not the published one). For tests that need files of the real formats but not the real data."""
    from helpers import write_ml100k, write_windows_csv

    root = tmp_path_factory.mktemp("small_data")
    write_ml100k(root / "ml-100k", n_users=30, per_user=25, n_items=80)
    write_windows_csv(root / "netflix")
    return root


@pytest.fixture()
def fake_sbatch(tmp_path, monkeypatch):
    """`sbatch` on PATH (tests/fake_sbatch: records its arguments, one line a call, and prints job ids 1001,
    1002, ... as `sbatch --parsable` does). Returns the file of recorded calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(REPO / "tests" / "fake_sbatch", bin_dir / "sbatch")
    log = tmp_path / "sbatch_calls.txt"
    monkeypatch.setenv("FAKE_SBATCH_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log

SHARED_PHASES = ("data/source", "data/target", "cot", "model")


@pytest.fixture(scope="session")
def pipeline_start(tmp_path_factory, data_dir):
    """The first phases the pipeline tests share, run once on the real data with PIPELINE_START: both data
    splits, the heuristic teacher's CoT records and the tiny LLaMA built on them. Returns
    `copy_into(run_dir, *keys)`, which copies the finished phases `keys` (default: all four) into a run
    directory: a run with the same settings reuses them (their fingerprints match: run_dir is written as
    $RUN_DIR in them), a run with other settings redoes them as it would redo any stale phase."""
    from tlrec_utils.experiments.pipeline import PipelineConfig, pipeline_phases, run_phase

    source = tmp_path_factory.mktemp("pipeline_start") / "run"
    cfg = PipelineConfig(run_dir=str(source), data_dir=str(data_dir), methods=["tlrec"], **PIPELINE_START)
    upstream = {}
    for phase in pipeline_phases(cfg):
        if phase.key in SHARED_PHASES:
            upstream[phase.key] = run_phase(cfg, phase, upstream=upstream)["fingerprint"]
    assert set(upstream) == set(SHARED_PHASES)

    def copy_into(run_dir, *keys):
        for key in keys or SHARED_PHASES:
            shutil.copytree(source / key, Path(run_dir) / key)
        return Path(run_dir)

    return copy_into
