"""Where the raw public datasets live: `--data_dir`, else `$TLREC_DATA_DIR`, else the user cache
(`$XDG_CACHE_HOME/tlrec`, default `~/.cache/tlrec`), which `--download` fills."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR_ENV = "TLREC_DATA_DIR"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tlrec"


def data_dir(explicit=None) -> Path:
    """The data directory. A `$TLREC_DATA_DIR` that is set but does not exist is an error, never a silent
    fallback to the cache (a typo would otherwise download or miss data somewhere unexpected)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env)
        if not path.is_dir():
            raise InputError(f"${DATA_DIR_ENV}={env}: directory not found (unset it to use {user_cache_dir()})")
        return path
    return user_cache_dir()
