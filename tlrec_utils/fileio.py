"""Atomic file and directory writes: a failed or interrupted run never leaves half-written output. Append-only
JSONL logs that survive kill -9 (a torn last line is cut off on reading), and exclusive locks on output folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import InputError

logger = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path, data: bytes) -> None:
    """`path` holds `data` or what it held before, never a part (a temporary file moved over it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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


def read_json_or_none(path):
    """A JSON file's content, or None when it is missing or unreadable (a marker or record that may not be there)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


def append_jsonl(handle, obj) -> None:
    """One JSON line, flushed at once: in the OS when this returns, so it survives kill -9 of this process."""
    handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
    handle.flush()


def read_jsonl(path, repair: bool = True) -> list[dict]:
    """The complete lines of a JSONL file written with `append_jsonl`. A torn last line (killed mid-write) is
    left out, and with `repair` also cut off the file, so appending goes on from a clean line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(data) - end)
        with open(path, "r+b") as f:
            f.truncate(end)
    out = []
    for n, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(f"{path} line {n}: not valid JSON ({exc.msg}); move the file away to start over") from None
    return out


@contextlib.contextmanager
def made_dirs(path, keep_on_success: bool = True):
    """Create the directory `path` and its missing parents for the with-block; afterwards (on an error, or
    always when not `keep_on_success`) remove those it created that are empty: a failed command leaves no
    empty folders behind."""
    path = Path(path)
    created, p = [], path
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    failed = True
    try:
        yield path
        failed = False
    finally:
        if failed or not keep_on_success:
            for d in created:  # the deepest first
                try:
                    d.rmdir()
                except OSError:  # not empty (or gone): what is above it stays too
                    break


@contextlib.contextmanager
def exclusive_lock(path, busy, sign: bool = False):
    """Hold an exclusive `fcntl.flock` on `path` (created, with its folder) for the with-block; the OS releases
    it when the holder dies. Taken already: InputError(busy(text the holder wrote into the file)). Yields the
    open file, for the holder to say who it is (`sign`: "pid N on host H" written for it). On leaving, the lock
    file (and the folders made for it, when still empty) are removed, so a failed command leaves no lock behind."""
    import fcntl

    path = Path(path)
    with made_dirs(path.parent, keep_on_success=False):
        while True:
            f = open(path, "a+")
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip()
                f.close()
                raise InputError(busy(holder)) from None
            try:  # the holder before us removed the file after we opened it: lock the file now at `path`
                same = os.path.samestat(os.fstat(f.fileno()), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            f.close()
        if sign:
            import socket

            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
            f.flush()
        try:
            yield f
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # still holding the lock: whoever opened the old file retries on the new one
            f.close()
