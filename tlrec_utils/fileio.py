"""Atomic file and directory writes: a failed or interrupted run never leaves half-written output."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the permissions a plain open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=indent) + "\n")


@contextlib.contextmanager
def staged_output_dir(output_dir, overwrite: bool = True):
    """Yield a temporary sibling directory; on success it replaces `output_dir`, on error it is removed.

    Files already in `output_dir` that the run does not rewrite are kept (e.g. K-shot files).
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.staging-"))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    move_contents(stage, output_dir)


def move_contents(stage, output_dir) -> None:
    """Move every entry of `stage` into `output_dir` (replacing same-named entries), then remove `stage`."""
    stage, output_dir = Path(stage), Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for item in stage.iterdir():
        target = output_dir / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    shutil.rmtree(stage, ignore_errors=True)


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_config_file(path) -> dict:
    """A JSON or YAML (.yaml/.yml) config file as a dict ({} when empty); InputError naming the file otherwise."""
    if not str(path).strip():
        raise InputError("config file: empty path")
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a config file")
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # yaml and json raise different types: both are bad input
        kind = "YAML" if path.suffix in (".yaml", ".yml") else "JSON"
        raise InputError(f"{path}: not valid {kind} ({' '.join(str(exc).split())})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: expected a mapping at the top level, got {type(values).__name__}")
    return values
