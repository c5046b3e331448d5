import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

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
