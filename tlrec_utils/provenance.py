"""Fingerprints of what determines a result: files by their content, folders by their files, a command by its
settings and the fingerprints of its inputs. A pipeline phase, a grid cell and a run_tuning run each store one
beside their output and are reused only while it matches (see docs/experiments.md, "What a result says").

    from tlrec_utils.provenance import fingerprint, path_fingerprint, changes
    fp = fingerprint({"argv": [...], "inputs": {"data/x.json": path_fingerprint("data/x.json")}})

- A file up to FULL_HASH_BYTES is hashed whole (sha256 of its content: a rewrite with the same bytes keeps its
  fingerprint); a larger one (model weights) by size, modification time and the sha256 of its first HEAD_BYTES.
- A folder: the fingerprints of its files by relative path; names starting with "." (locks, staging, caches)
  are left out.
- Results are cached per process by (path, size, mtime), so a grid that plans many cells hashes a file once.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FULL_HASH_BYTES = 64 << 20
HEAD_BYTES = 1 << 20
_cache: dict[tuple, str] = {}


def fingerprint(what) -> str:
    """sha256 of `what` as canonical JSON (sorted keys)."""
    text = json.dumps(what, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_fingerprint(path) -> str:
    """`sha256:<hex>` of the content, or `head:<size>:<mtime_ns>:<sha256 of the head>` above FULL_HASH_BYTES."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        from .fileio import sha256_file

        if st.st_size <= FULL_HASH_BYTES:
            _cache[key] = f"sha256:{sha256_file(path)}"
        else:
            with open(path, "rb") as f:
                head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
            _cache[key] = f"head:{st.st_size}:{st.st_mtime_ns}:{head}"
    return _cache[key]


def dir_fingerprint(path) -> str:
    """One fingerprint of every file under `path` (hidden names left out), by relative path."""
    path = Path(path)
    files = {}
    for root, dirs, names in os.walk(path, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if not name.startswith("."):
                full = Path(root) / name
                files[str(full.relative_to(path))] = file_fingerprint(full)
    return "dir:" + fingerprint(files)


def path_fingerprint(path) -> str | None:
    """A file's or folder's fingerprint; None when nothing is there."""
    path = Path(path)
    if path.is_file():
        return file_fingerprint(path)
    if path.is_dir():
        return dir_fingerprint(path)
    return None


def _flag_values(argv: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    flag = "(positional)"
    for arg in argv:
        if arg.startswith("--"):
            flag = arg
            out.setdefault(flag, [])
        else:
            out.setdefault(flag, []).append(arg)
    return out


def changes(old: dict | None, new: dict) -> list[str]:
    """What differs between two recorded `what`s of a fingerprint, in words (flags, inputs, upstream phases)."""
    if not old:
        return ["no fingerprint recorded (made before fingerprints, or by hand)"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if key == "argv" and isinstance(a, list) and isinstance(b, list):
            fa, fb = _flag_values(a), _flag_values(b)
            for flag in sorted(set(fa) | set(fb)):
                if fa.get(flag) != fb.get(flag):
                    before, after = (" ".join(f.get(flag) or ["(unset)"]) for f in (fa, fb))
                    out.append(f"{flag} {before} -> {after}")
        elif isinstance(a, dict) and isinstance(b, dict):
            names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"{key}: {', '.join(names)} changed")
        else:
            out.append(f"{key} changed")
    return out
