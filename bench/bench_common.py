"""Shared setup of the tuning/eval benchmarks: the Movie split prepared from ml-100k and a tiny LLaMA."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlrec_utils.data.paths import data_dir  # noqa: E402

logger = logging.getLogger(__name__)


def movie_split_and_model(work_dir: Path, prepared: str | None, base_model: str | None, hidden_size: int = 128):
    """(prepared dir, model dir): given ones, else ml-100k prepared from the local data and a tiny LLaMA."""
    import run_prepare_data
    from tlrec_utils.model.tiny_llm import build_tiny_llama

    if prepared is None:
        raw = data_dir() / "ml-100k"
        if not (raw / "u.data").is_file():
            raise SystemExit(f"no {raw}/u.data: pass --prepared DIR (run_prepare_data.py output) or set TLREC_DATA_DIR")
        prepared = work_dir / "ml-100k"
        if not (prepared / "train.json").is_file():
            run_prepare_data.main(["--dataset", "ml-100k", "--raw_dir", str(raw),
                                   "--output_dir", str(prepared)])
    prepared = Path(prepared)
    if base_model is None:
        base_model = work_dir / "tiny-llama"
        if not (base_model / "config.json").is_file():
            build_tiny_llama([prepared / "train.json"], base_model, hidden_size=hidden_size)
    return prepared, Path(base_model)
