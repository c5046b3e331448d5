"""Where the raw public datasets live: `--data_dir`, else `$TLREC_DATA_DIR`, else the user cache
(`$XDG_CACHE_HOME/tlrec`, default `~/.cache/tlrec`), which `--download` fills; and how a relative path inside a
config file is read: from the folder of that file, never from the working directory (`resolve_config_paths`)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]  # tlrec_utils/data/paths.py -> the repository
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


# Settings whose values are paths, in any config file. A relative one is taken from the folder of the file that
# holds it (`output_dir: ../../runs/x` in configs/experiments/x.yaml is REPO/runs/x from any working directory).
# Command-line flags (and --override) stay relative to the working directory, as paths on a command line are.
CONFIG_PATH_KEYS = frozenset({
    "output_dir", "run_dir", "data_dir", "raw_dir", "start_adapter", "cot_file", "accelerate_config", "init_adapter",
    "train_files", "val_file", "test_file", "items_file", "adapter", "train_file", "valid_file", "deepspeed",
    "logging_dir", "config", "creates", "interactions_file",
})  # fmt: skip
MODEL_KEYS = frozenset({"base_model", "text_encoder"})  # a path when it names a folder there, else a hub id
# mappings of settings handed on to another script (run_pipeline's `tuning`, ..., `eval`)
NESTED_SETTINGS = ("tuning", "cot_tuning", "source_tuning", "kshot_tuning", "eval")
NESTED_LISTS = ("source_datasets",)  # lists of such mappings (each source's cot_file)


def _from(base: Path, value):
    if isinstance(value, list):
        return [_from(base, v) for v in value]
    if not isinstance(value, str) or not value.strip():
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() else os.path.normpath(base / path)


def resolve_config_paths(values: dict, config_file, keys=None) -> dict:
    """`values` (a config file's settings) with every relative path taken from the folder of `config_file`:
    the keys in CONFIG_PATH_KEYS (or `keys`: all of them), a model that names a folder there, and the same inside
    the mappings handed on to other scripts. Values of a wrong type are left for the checks that follow."""
    if not isinstance(values, dict):
        return values
    base = Path(config_file).expanduser().absolute().parent
    out = dict(values)
    for key, value in values.items():
        if key in NESTED_SETTINGS and isinstance(value, dict):
            out[key] = resolve_config_paths(value, config_file)
        elif key in NESTED_LISTS and isinstance(value, list):
            out[key] = [resolve_config_paths(v, config_file) for v in value]
        elif keys == "all" or key in (keys or CONFIG_PATH_KEYS):
            out[key] = _from(base, value)
        elif key in MODEL_KEYS and isinstance(value, str) and value.strip() and (base / value).exists():
            out[key] = _from(base, value)
    return out
