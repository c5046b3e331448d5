"""Fetching the public datasets: MovieLens-100K from GroupLens (checksum verified); where to get the rest.

Only MovieLens-100K is downloadable without a login. The others need an account (Kaggle) or come from
mirrors, so `missing_files_error` says where to get them and where to put them.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from .errors import InputError
from .fileio import sha256_file

logger = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_SHA256 = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"  # the official zip, 4,924,029 bytes
ML100K_FILES = ("u.data", "u.item", "u.user", "u.genre", "u.occupation", "README")

WHERE_TO_GET = {
    "ml-100k": f"{ML100K_URL} (or pass --download); put u.data and u.item into --raw_dir",
    "bookcrossing": "a copy of the Book-Crossing dump BX-CSV-Dump.zip (the original page, "
    "www2.informatik.uni-freiburg.de/~cziegler/BX/, is offline; copies exist on Kaggle and the Internet Archive); "
    "put BX-Book-Ratings.csv and BX-Books.csv into --raw_dir",
    "netflix": "Kaggle 'netflix-inc/netflix-prize-data' (login required); put combined_data_1.txt .. "
    "combined_data_4.txt and movie_titles.csv into --raw_dir",
    "amazon-books": "Kaggle 'mohamedbakhet/amazon-books-reviews' (login required); put Books_rating.csv and "
    "books_data.csv into --raw_dir",
    "windows-csv": "a processed release (e.g. the TLRec authors' netflix/ folder); --raw_dir must hold "
    "train.csv, valid.csv, test.csv and item_mapping.csv",
}


def missing_files_error(dataset: str, raw_dir, names, what: str = "missing") -> InputError:
    names = ", ".join(str(n) for n in names)
    hint = WHERE_TO_GET.get(dataset, "")
    return InputError(f"{raw_dir}: {what} ({names}) for dataset {dataset}; get it from {hint}")


def download_ml100k(raw_dir, url: str | None = None, sha256: str | None = None, timeout: float = 60) -> Path:
    """Download the MovieLens-100K zip (any urllib URL, file:// too), verify its SHA-256 and extract its files
    into `raw_dir` (flat). Files appear only after the checksum matched and extraction finished."""
    url = url or ML100K_URL
    sha256 = sha256 or ML100K_SHA256
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".download-") as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        logger.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError) as exc:
            raise InputError(f"{url}: download failed ({exc}); {WHERE_TO_GET['ml-100k']}") from None
        got = sha256_file(archive)
        if got != sha256:
            raise InputError(f"{url}: SHA-256 mismatch (got {got}, expected {sha256}); nothing was extracted")
        staged = Path(tmp) / "files"
        staged.mkdir()
        try:
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    name = Path(info.filename).name
                    if info.is_dir() or name not in ML100K_FILES:
                        continue
                    with zf.open(info) as src, open(staged / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as exc:
            raise InputError(f"{url}: not a valid zip ({exc})") from None
        for name in ("u.data", "u.item"):
            if not (staged / name).is_file():
                raise InputError(f"{url}: the archive has no {name}")
        for f in staged.iterdir():
            f.replace(raw_dir / f.name)
    logger.info("MovieLens-100K extracted into %s", raw_dir)
    return raw_dir
