"""Verified downloads (tlrec_utils.download) against a loopback HTTP mirror serving copies of the local data,
the default data directory, and the registry's hashes checked against the local copies."""

import subprocess
from pathlib import Path

import pytest

from tlrec_utils import download, paths
from tlrec_utils.errors import InputError

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- the data directory
def test_data_dir_order_and_a_missing_env_dir_is_an_error(tmp_path, monkeypatch):
    monkeypatch.delenv("TLREC_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert paths.data_dir() == tmp_path / "cache" / "tlrec"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.data_dir() == tmp_path / "home" / ".cache" / "tlrec"
    monkeypatch.setenv("TLREC_DATA_DIR", str(tmp_path))
    assert paths.data_dir() == tmp_path
    assert paths.data_dir(tmp_path / "explicit") == tmp_path / "explicit"  # --data_dir wins, even over a bad env
    monkeypatch.setenv("TLREC_DATA_DIR", str(tmp_path / "typo"))
    assert paths.data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    with pytest.raises(InputError, match=r"\$TLREC_DATA_DIR=.*typo: directory not found"):
        paths.data_dir()


def test_product_never_points_at_the_development_data():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    product = [f for f in tracked if not f.startswith(("tests/", ".ci/"))]
    assert product and not [f for f in product if "shared/data" in (REPO / f).read_text(errors="replace")]


# ---------------------------------------------------------------- the registry
def test_registry_hashes_match_the_local_copies(data_dir):
    """Every registry file present in the local data has the table's git blob id (the table is right), and our
    blob id is git's own (`git hash-object`)."""
    checked = []
    for name, rel in download.RELEASES.items():
        if rel.archive_url:
            continue
        for fname, blob in rel.files.items():
            path = data_dir / name / fname
            if path.is_file():
                assert download.git_blob_id(path) == blob, path
                checked.append(f"{name}/{fname}")
    assert {"netflix/train.csv", "netflix/item_mapping.csv", "amazon-book/train.csv", "book/test.json"} <= set(checked)
    sample = data_dir / "netflix" / "valid.csv"
    git = subprocess.run(["git", "hash-object", str(sample)], capture_output=True, text=True, check=True).stdout
    assert download.git_blob_id(sample) == git.strip()
    assert download.RELEASES["netflix"].url("train.csv") == (
        "https://raw.githubusercontent.com/ljy2222/TLRec/38fca0f1117b2d251ef3ca71625bea011eb00153/"
        "instrument_data/netflix/train.csv")


def test_mirror_url_layout(monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    assert download.mirrored(download.ML100K_URL) == download.ML100K_URL
    assert download.mirrored(download.ML100K_URL, "http://m.example/data/") == (
        "http://m.example/data/files.grouplens.org/datasets/movielens/ml-100k.zip")
    monkeypatch.setenv(download.MIRROR_ENV, "http://env.example")
    assert download.mirrored(download.ML100K_URL).startswith("http://env.example/files.grouplens.org/")
