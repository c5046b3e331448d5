"""Verified downloads of the public data: MovieLens-100K, the TLRec authors' processed releases, TALLRec's
published records and the authors' GPT-4 CoT data (the registry `RELEASES`).

Each release is one folder of the data directory (tlrec_utils.data.paths.data_dir), named as in `RELEASES`; which
release a dataset reads by default is in dataset_registry.DATASETS.
`fetch_missing` downloads the files a folder lacks: into a temporary file beside the target, verified
(git blob id, or SHA-256 for the GroupLens zip), then renamed into place, so an interrupted or failed
download leaves nothing behind and rerunning continues. A mirror (`--mirror URL` or `$TLREC_MIRROR`) serves
`https://HOST/PATH` as `URL/HOST/PATH`. Where each file came from is recorded in the folder's
`.downloads.json` (source URL, commit, verified hash), which run_prepare_data copies into meta.json.
A download gives up when no byte arrives for `stall_s` seconds or the file is not complete after `deadline_s`
(`--download_stall_s` / `$TLREC_DOWNLOAD_STALL_S`, `--download_deadline_s` / `$TLREC_DOWNLOAD_DEADLINE_S`), and
a failed download leaves no folder it made.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import atomic_write_json, made_dirs, sha256_file

logger = logging.getLogger(__name__)

MIRROR_ENV = "TLREC_MIRROR"
PROVENANCE_FILE = ".downloads.json"
VERIFIED_FILE = ".verified.json"  # files whose hash matched the registry, by size and mtime (verify_present)
# giving up: no byte for STALL seconds (also the connect timeout), or a file not complete after DEADLINE seconds
STALL_ENV, STALL_S = "TLREC_DOWNLOAD_STALL_S", 60.0
DEADLINE_ENV, DEADLINE_S = "TLREC_DOWNLOAD_DEADLINE_S", 3600.0

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "README")
# the TLRec authors' repository: processed releases (instrument_data/) and their GPT-4 CoT data (cot_data/)
TLREC_REPO = "ljy2222/TLRec"
TLREC_DATA_COMMIT = "38fca0f1117b2d251ef3ca71625bea011eb00153"
TLREC_COT_COMMIT = "534c6c97ea67dcde1230f102c65d4ef141cd3435"
TALLREC_REPO = "SAI990323/TALLRec"
TALLREC_COMMIT = "c1db29ce6501bce32cc8c3e343c4eb14155beeb1"


@dataclass(frozen=True)
class Release:
    """One folder of the data directory. GitHub files: `files` maps each name to its git blob id
    (`git hash-object`); an archive (`archive_url`): `files` maps the archive's name to its SHA-256 and
    `members` are extracted from it, `required` deciding whether the folder is complete."""

    what: str
    files: dict[str, str]
    repo: str | None = None
    commit: str | None = None
    folder: str = ""
    archive_url: str | None = None
    members: tuple[str, ...] = ()
    required: tuple[str, ...] = field(default=())

    def url(self, name: str) -> str:
        if self.archive_url:
            return self.archive_url
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.folder}/{name}"

    @property
    def hash_kind(self) -> str:
        return "sha256" if self.archive_url else "git_blob"


RELEASES: dict[str, Release] = {
    "ml-100k": Release(
        "MovieLens-100K (GroupLens)",
        {"ml-100k.zip": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"},  # 4,924,029 bytes
        archive_url=ML100K_URL, members=ML100K_FILES, required=("u.data", "u.item"),
    ),
    "netflix": Release(
        "Netflix, processed by the TLRec authors (Movie source)",
        {"train.csv": "c2a5948912e47bc80912683437c43b048c34db5b",
         "valid.csv": "3fe0b8c3f1bc439261d05b767f28395226334c7a",
         "test.csv": "605d8dbfb2e319e26d8cedc9c04fb600e075c72e",
         "item_mapping.csv": "08ae64dc360c744aed5247dd3eb90dbfac46bc7f",
         "valid.json": "fdde5422b64003d6da0dee57fa3b933c5f122e61",
         "test.json": "44a9050787528a4330a98bf1cbfc7b09bc00455a"},
        TLREC_REPO, TLREC_DATA_COMMIT, "instrument_data/netflix",
    ),
    "amazon-book": Release(
        "Amazon Books, processed by the TLRec authors (Book source)",
        {"train.csv": "82abfdae415b15efdc0400da9ffb8ce8333e633e",
         "valid.csv": "192c2a2c6a971eaffa3e296b7b7d029c82f3947d",
         "test.csv": "4a0b2870f3c6fb92fa23d3afa70f228a0c9eb020",
         "item_mapping.csv": "85fc60bdb8a3cc59cfd5f40ddaa009b3f86f8381",
         "valid.json": "3c3c03ec6e1706ff728a47856a1d3e9b6fb33464",
         "test.json": "ee0cc88cd09e0d2251fe8d9d9c9bd6e0fab4c6fd"},
        TLREC_REPO, TLREC_DATA_COMMIT, "instrument_data/amazon-book",
    ),
    "book": Release(
        "BookCrossing records as published by TALLRec (Book target)",
        {"train.json": "ca3b6b7b028a679ffac30eda342f1697b54d4156",
         "valid.json": "6bfc37282e913de25d333479ad3df4285bac1660",
         "test.json": "5f06875fd757fc49c5e7334fe5b8969fa59c1634"},
        TALLREC_REPO, TALLREC_COMMIT, "data/book",
    ),
    "movie": Release(
        "MovieLens-100K records as published by TALLRec (cross-check of the ml-100k split)",
        {"train.json": "2bbe93bffecd30423606a6d8e78d22c9a6c5f64f",
         "valid.json": "d26599315557a9587cd74d83c1c565670361d215",
         "test.json": "ee8bb62c56a82d6f176b07d094cc39e8a13878bc"},
        TALLREC_REPO, TALLREC_COMMIT, "data/movie",
    ),
    "tlrec-cot": Release(
        "the TLRec authors' GPT-4 CoT instruction data",
        {"stage123.json": "7cc3a205d7bcd0548dfe902e3f493e67a5ee7621"},
        TLREC_REPO, TLREC_COT_COMMIT, "cot_data",
    ),
}

def release(name: str) -> Release:
    if name not in RELEASES:
        raise InputError(f"--release {name!r}: no such published release; choose one of {', '.join(RELEASES)}")
    return RELEASES[name]


def mirrored(url: str, mirror: str | None = None) -> str:
    """`url` as served by the mirror (`--mirror`, else `$TLREC_MIRROR`): MIRROR/HOST/PATH."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


def download_limits(stall_s: float | None = None, deadline_s: float | None = None) -> tuple[float, float]:
    """(stall, deadline) in seconds: the flags' values, else the environment's, else the defaults; each must be a
    positive number (InputError naming the flag or variable)."""
    out = []
    for value, flag, env, default in ((stall_s, "--download_stall_s", STALL_ENV, STALL_S),
                                      (deadline_s, "--download_deadline_s", DEADLINE_ENV, DEADLINE_S)):
        source = flag
        if value is None and os.environ.get(env, "").strip():
            value, source = os.environ[env], f"${env}"
        try:
            value = default if value is None else float(value)
        except ValueError:
            raise InputError(f"{source}: {value!r} is not a number of seconds") from None
        if not 0 < value < float("inf"):
            raise InputError(f"{source} must be a positive number of seconds, got {value:g}")
        out.append(value)
    return out[0], out[1]


def git_blob_id(path) -> str:
    """`git hash-object`: SHA-1 of 'blob <size>\\0' followed by the content."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_hash(path, kind: str) -> str:
    return sha256_file(path) if kind == "sha256" else git_blob_id(path)


def _one_line(exc) -> str:
    return " ".join(str(getattr(exc, "reason", None) or exc or type(exc).__name__).split())


def _stream(url: str, out, desc: str, hand_copy: Path, progress: bool, stall_s: float | None = None,
            deadline_s: float | None = None) -> None:
    """Write the body at `url` to the open file `out` with a progress bar; one-line InputErrors. Gives up when no
    byte comes for `stall_s` seconds or the body is not complete after `deadline_s` (see `download_limits`)."""
    where = f"download it by hand to {hand_copy}, or use --mirror / ${MIRROR_ENV}"
    stall_s, deadline_s = download_limits(stall_s, deadline_s)
    got = total = 0
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=stall_s) as response:  # the timeout of every socket read
            total = response.length  # Content-Length, None when the server does not say
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not progress,
                      leave=False) as bar:
                # read1: what one socket read brings, so a trickle cannot hold a 64 KiB read past the deadline
                for chunk in iter(lambda: response.read1(1 << 16), b""):
                    out.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
                    if time.monotonic() - started > deadline_s:
                        raise InputError(
                            f"{url}: not complete after {deadline_s:g} s ({got} of {total or '?'} bytes; "
                            f"--download_deadline_s / ${DEADLINE_ENV}); nothing was kept: rerun to try again, "
                            f"or {where}")
    except TimeoutError:
        raise InputError(f"{url}: no data for {stall_s:g} s after {got} bytes (--download_stall_s / ${STALL_ENV}); "
                         f"nothing was kept: rerun to try again, or {where}") from None
    except urllib.error.HTTPError as exc:
        raise InputError(f"{url}: HTTP {exc.code} {_one_line(exc.reason)}; {where}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        if isinstance(exc, http.client.IncompleteRead) or got:
            raise InputError(f"{url}: connection dropped after {got} bytes ({_one_line(exc)}); nothing was kept: "
                             f"rerun to try again, or {where}") from None
        raise InputError(f"{url}: cannot download ({_one_line(exc)}); {where}") from None
    if total is not None and got < total:
        raise InputError(f"{url}: connection dropped after {got} of {total} bytes; nothing was kept: rerun to try "
                         f"again, or {where}")


def download_verified(url: str, dest, kind: str, expected: str, progress: bool = True, fetch_url: str | None = None,
                      hand_copy=None, limits: tuple = (None, None)) -> str:
    """Download `url` (from `fetch_url`, a mirror, when given) to `dest`: temporary file beside it, hash
    checked, then renamed. A mismatch raises an InputError naming the file and both hashes; nothing is kept.
    Errors name `hand_copy` (default `dest`) as the place for a hand-downloaded copy; `limits`: (stall, deadline)
    seconds (`download_limits`)."""
    dest = Path(dest)
    with made_dirs(dest.parent):
        _download_verified(url, dest, kind, expected, progress, fetch_url, hand_copy, limits)
    return expected


def _download_verified(url, dest: Path, kind, expected, progress, fetch_url, hand_copy, limits) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            _stream(fetch_url or url, out, dest.name, Path(hand_copy or dest), progress, *limits)
        got = file_hash(tmp, kind)
        if got != expected:
            label = "SHA-256" if kind == "sha256" else "git blob id"
            raise InputError(f"{hand_copy or dest}: {label} mismatch (expected {expected}, got {got}) from "
                             f"{fetch_url or url}; nothing was kept")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def missing_files(name: str, folder) -> list[str]:
    rel, folder = release(name), Path(folder)
    if rel.archive_url:
        # the archive's own ml-100k/ folder counts too (a hand-extracted zip)
        have = any(all((d / m).is_file() for m in rel.required) for d in (folder, folder / name))
        return [] if have else list(rel.files)
    return [f for f in rel.files if not (folder / f).is_file()]


def verify_present(name: str, folder, download: bool = False) -> list[str]:
    """Check the files of release `name` already in `folder` against the registry's hashes (for an archive: the
    zip, and the members it extracted, by the hash recorded then), each once: a match is cached by size and
    mtime in VERIFIED_FILE. A mismatch (truncated, edited) is removed with `download` (to be fetched again, the
    names returned), else one line naming the file and how to fix it."""
    rel, folder = release(name), Path(folder)
    expected = {}
    if rel.archive_url:
        (zip_name, sha256), = rel.files.items()
        expected[zip_name] = ("sha256", sha256)
        for member, entry in read_provenance(folder).items():
            if entry.get("archive_sha256") == sha256 and entry.get("sha256"):
                expected[member] = ("sha256", entry["sha256"])
    else:
        expected = {fname: ("git_blob", blob) for fname, blob in rel.files.items()}
    try:
        cache = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    removed, changed = [], False
    for fname, (kind, want) in expected.items():
        path = folder / fname
        if not path.is_file():
            continue
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns, want]
        if cache.get(fname) == stamp:
            continue
        got = file_hash(path, kind)
        changed = True
        if got == want:
            cache[fname] = stamp
            continue
        label = "SHA-256" if kind == "sha256" else "git blob id"
        if not download:
            raise InputError(f"{path}: not the published {name} file ({label} {got}, expected {want}: truncated or "
                             "edited); rerun with --download to fetch it again, or put the original back")
        logger.warning("%s: not the published file (%s mismatch): downloading it again", path, label)
        path.unlink()
        cache.pop(fname, None)
        removed.append(fname)
    if changed:
        try:
            atomic_write_json(folder / VERIFIED_FILE, cache)
        except OSError:  # a read-only data folder: verified again next time
            pass
    return removed


def fetch_missing(name: str, folder, mirror: str | None = None, progress: bool = True, stall_s: float | None = None,
                  deadline_s: float | None = None, only: list[str] | None = None) -> list[str]:
    """Download (verified) the files of release `name` that `folder` lacks (`only`: of these file names, not
    the whole release); returns their names. A failure before any file arrived leaves no folder this made."""
    rel, folder = release(name), Path(folder)
    missing = [f for f in missing_files(name, folder) if only is None or rel.archive_url or f in only]
    if not missing:
        return []
    limits = download_limits(stall_s, deadline_s)
    with made_dirs(folder):
        provenance = read_provenance(folder)
        if rel.archive_url:
            provenance.update(_fetch_archive(rel, folder, mirror, progress, limits))
        else:
            for fname in missing:
                url = rel.url(fname)
                logger.info("downloading %s -> %s", url, folder / fname)
                verified = download_verified(url, folder / fname, "git_blob", rel.files[fname], progress,
                                             fetch_url=mirrored(url, mirror), limits=limits)
                provenance[fname] = {"url": url, "repo": rel.repo, "commit": rel.commit, "git_blob": verified,
                                     "sha256": sha256_file(folder / fname)}
                atomic_write_json(folder / PROVENANCE_FILE, provenance)  # after each file: a rerun keeps it
        atomic_write_json(folder / PROVENANCE_FILE, provenance)
    logger.info("%s: %s verified in %s", name, ", ".join(missing), folder)
    return missing


def _fetch_archive(rel: Release, folder: Path, mirror, progress, limits) -> dict:
    """Verify the archive (a hand-downloaded copy at FOLDER/NAME.zip, else downloaded), then extract its
    members flat into `folder`, the required ones last (they decide whether the folder is complete)."""
    (zip_name, sha256), = rel.files.items()
    hand_copy = folder / zip_name
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        archive = Path(tmp) / zip_name
        if hand_copy.is_file():
            got = sha256_file(hand_copy)
            if got != sha256:
                raise InputError(f"{hand_copy}: SHA-256 mismatch (expected {sha256}, got {got}); remove it and rerun "
                                 "to download it")
            shutil.copyfile(hand_copy, archive)
        else:
            logger.info("downloading %s -> %s", rel.archive_url, folder)
            download_verified(rel.archive_url, archive, "sha256", sha256, progress,
                              fetch_url=mirrored(rel.archive_url, mirror), hand_copy=hand_copy, limits=limits)
        staged = Path(tmp) / "files"
        staged.mkdir()
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = Path(info.filename).name
                    if info.is_dir() or name not in rel.members:
                        continue
                    with zf.open(info) as src, open(staged / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{rel.archive_url}: not a valid zip ({exc})") from None
        missing = [m for m in rel.required if not (staged / m).is_file()]
        if missing:
            raise InputError(f"{rel.archive_url}: the archive has no {', '.join(missing)}")
        provenance = {}
        for f in sorted(staged.iterdir(), key=lambda p: p.name in rel.required):
            provenance[f.name] = {"url": rel.archive_url, "archive_sha256": sha256, "sha256": sha256_file(f)}
            os.replace(f, folder / f.name)
    return provenance


def read_provenance(folder) -> dict:
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def provenance_of(path) -> dict | None:
    """Where a downloaded file came from (url, commit, verified hash), if it was downloaded and is unchanged."""
    path = Path(path)
    entry = read_provenance(path.parent).get(path.name)
    if entry and path.is_file() and entry.get("sha256") == sha256_file(path):
        return {k: v for k, v in entry.items() if k != "sha256"}
    return None


def release_file(name: str, filename: str, data_dir=None, download: bool = False, mirror: str | None = None) -> Path:
    """DATA_DIR/NAME/FILENAME of a release, downloaded (verified) first when missing and `download` is set."""
    from .paths import data_dir as resolve

    rel = release(name)
    path = resolve(data_dir) / name / filename
    verify_present(name, path.parent, download)
    if not path.is_file():
        if not download:
            raise InputError(f"{path}: file not found; pass --download to fetch it (verified) from "
                             f"{rel.url(filename)}, or put a copy there")
        fetch_missing(name, path.parent, mirror, only=[filename])
    return path
