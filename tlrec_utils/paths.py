"""Where the local copies of the public datasets live (tests, benchmarks, quickstart)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """`$TLREC_DATA_DIR`, else `../shared/data` beside the repository, else None."""
    env = os.environ.get("TLREC_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for cand in candidates:
        if cand.is_dir():
            return cand
    return None
