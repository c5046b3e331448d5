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

from tlrec_utils.paths import shared_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir():
    """The local copies of the public datasets (../shared/data or $TLREC_DATA_DIR)."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data not found: set TLREC_DATA_DIR or place it at ../shared/data (see README)")
    return d


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
    from tlrec_utils.tiny_llm import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama")
    return build_tiny_llama([synthetic[2]], out, vocab_size=1000)


@pytest.fixture(scope="session")
def tiny_llama_sp(tmp_path_factory, synthetic):
    """The same with a sentencepiece-style tokenizer (LLaMA-1/2 style)."""
    from tlrec_utils.tiny_llm import build_tiny_llama

    out = tmp_path_factory.mktemp("tiny_llama_sp")
    return build_tiny_llama([synthetic[2]], out, vocab_size=1000, tokenizer_style="sentencepiece")
