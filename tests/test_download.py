"""Verified downloads (tlrec_utils.data.download) against a loopback HTTP mirror serving copies of the local data,
the default data directory, and the registry's hashes checked against the local copies."""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, free_port, read_results
from mirror_server import MirrorServer  # tests/ is on sys.path (conftest)

import run_prepare_data
from tlrec_utils.data import download, paths
from tlrec_utils.errors import InputError


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


# ---------------------------------------------------------------- downloads from a loopback mirror
def mirror_path(url: str) -> str:
    """The URL path under which the mirror serves `url` (MIRROR/HOST/PATH)."""
    parts = urllib.parse.urlsplit(url)
    return f"/{parts.netloc}{parts.path}"


@pytest.fixture(scope="module")
def mirror_root(data_dir, tmp_path_factory):
    """The local copies in the mirror layout (only files that exist here), plus an ml-100k zip built from the
    local ml-100k files as GroupLens lays it out (its SHA-256 is not the official one: see `mirror`)."""
    root = tmp_path_factory.mktemp("mirror")
    for name, rel in download.RELEASES.items():
        for fname in [] if rel.archive_url else rel.files:
            if (data_dir / name / fname).is_file():
                dst = root / mirror_path(rel.url(fname)).lstrip("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(data_dir / name / fname, dst)
    archive = root / mirror_path(download.ML100K_URL).lstrip("/")
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/", "")
        for f in sorted((data_dir / "ml-100k").iterdir()):
            zf.write(f, f"ml-100k/{f.name}")
    return root


@pytest.fixture(scope="module")
def mirror_server(mirror_root):
    with MirrorServer(mirror_root) as server:
        yield server


@pytest.fixture()
def mirror(mirror_server, mirror_root, monkeypatch):
    """The running mirror, faults and request log cleared. The test-built ml-100k zip differs from the official
    one, so its SHA-256 replaces the official one in the registry for this test only."""
    mirror_server.faults.clear()
    mirror_server.requests.clear()
    zip_sha = hashlib.sha256((mirror_root / mirror_path(download.ML100K_URL).lstrip("/")).read_bytes()).hexdigest()
    monkeypatch.setitem(download.RELEASES, "ml-100k",
                        dataclasses.replace(download.RELEASES["ml-100k"], files={"ml-100k.zip": zip_sha}))
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    return mirror_server


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the machine without network."""
    return f"http://127.0.0.1:{free_port()}"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith(".download-"))


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "run_prepare_data.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, check=False)


def test_release_download_is_verified_recorded_and_not_repeated(mirror, data_dir, tmp_path):
    data = tmp_path / "data"
    meta = run_prepare_data.main(["--dataset", "windows-csv", "--release", "netflix", "--data_dir", str(data),
                                  "--output_dir", str(tmp_path / "prepared"), "--download", "--mirror", mirror.url])
    folder = data / "netflix"
    rel = download.RELEASES["netflix"]
    for fname in rel.files:
        assert (folder / fname).read_bytes() == (data_dir / "netflix" / fname).read_bytes()
    assert sorted(mirror.requests) == sorted(mirror_path(rel.url(f)) for f in rel.files)
    assert leftovers(folder) == []
    train = next(s for s in meta["sources"] if s["file"].endswith("train.csv"))
    assert train["downloaded"] == {"url": rel.url("train.csv"), "repo": "ljy2222/TLRec", "commit": rel.commit,
                                   "git_blob": rel.files["train.csv"]}
    assert meta["counts"] == {"train": 8000, "valid": 1000, "test": 1000}
    # complete: a rerun asks nothing, even with the network gone
    mirror.requests.clear()
    assert download.fetch_missing("netflix", folder, closed_port_url()) == []
    assert mirror.requests == []


def test_corrupt_dropped_and_missing_files_keep_nothing_and_a_rerun_completes(mirror, data_dir, tmp_path):
    rel = download.RELEASES["netflix"]
    folder = tmp_path / "netflix"
    url = {f: mirror_path(rel.url(f)) for f in rel.files}
    mirror.faults[url["test.csv"]] = "corrupt"
    with pytest.raises(InputError) as err:
        download.fetch_missing("netflix", folder, mirror.url)
    message = str(err.value)
    assert re.fullmatch(rf"{re.escape(str(folder / 'test.csv'))}: git blob id mismatch \(expected "
                        rf"{rel.files['test.csv']}, got [0-9a-f]{{40}}\) from .*; nothing was kept", message), message
    assert not (folder / "test.csv").exists() and leftovers(folder) == []
    assert (folder / "train.csv").is_file()  # verified files before the bad one stay: a rerun skips them

    mirror.faults = {url["item_mapping.csv"]: "drop"}
    size = (data_dir / "netflix" / "item_mapping.csv").stat().st_size
    with pytest.raises(InputError, match=rf"connection dropped after {size // 2} of {size} bytes"):
        download.fetch_missing("netflix", folder, mirror.url)
    assert not (folder / "item_mapping.csv").exists() and leftovers(folder) == []

    mirror.faults = {url["valid.json"]: "404"}
    with pytest.raises(InputError, match=rf"HTTP 404 .*download it by hand to {re.escape(str(folder / 'valid.json'))}"):
        download.fetch_missing("netflix", folder, mirror.url)
    assert not (folder / "valid.json").exists() and (folder / "item_mapping.csv").is_file()

    mirror.faults = {}
    mirror.requests.clear()
    assert download.fetch_missing("netflix", folder, mirror.url) == ["valid.json", "test.json"]
    assert mirror.requests == [url[f] for f in ("valid.json", "test.json")]
    for fname in rel.files:
        assert download.git_blob_id(folder / fname) == rel.files[fname]
    assert set(download.read_provenance(folder)) == set(rel.files)


def test_mirror_from_the_environment_fetches_only_what_is_missing(mirror, data_dir, tmp_path, monkeypatch):
    folder = tmp_path / "amazon-book"
    folder.mkdir()
    for fname in ("train.csv", "valid.csv", "valid.json"):
        shutil.copyfile(data_dir / "amazon-book" / fname, folder / fname)
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    missing = download.missing_files("amazon-book", folder)
    assert missing == ["test.csv", "item_mapping.csv", "test.json"]
    if (data_dir / "amazon-book" / "item_mapping.csv").is_file():
        assert download.fetch_missing("amazon-book", folder) == missing
        assert len(mirror.requests) == 3
    else:  # the local data has no amazon-book item_mapping.csv: the mirror answers 404 for it
        with pytest.raises(InputError, match="item_mapping.csv: HTTP 404"):
            download.fetch_missing("amazon-book", folder)
        assert (folder / "test.csv").read_bytes() == (data_dir / "amazon-book" / "test.csv").read_bytes()
        assert len(mirror.requests) == 2
    assert all(p.startswith("/raw.githubusercontent.com/ljy2222/TLRec/") for p in mirror.requests)


def test_cli_download_errors_are_one_line_exit_2(mirror, tmp_path):
    data = tmp_path / "data"
    offline = closed_port_url()
    proc = run_cli("--dataset", "windows-csv", "--data_dir", data, "--output_dir", tmp_path / "out", "--download",
                   "--mirror", offline)
    rel = download.RELEASES["netflix"]
    assert_one_line_error(proc, f"{offline}{mirror_path(rel.url('train.csv'))}: cannot download",
                          f"download it by hand to {data / 'netflix' / 'train.csv'}", logs_ok=True)
    mirror.faults[mirror_path(rel.url("train.csv"))] = "corrupt"
    proc = run_cli("--dataset", "windows-csv", "--data_dir", data, "--output_dir", tmp_path / "out", "--download",
                   "--mirror", mirror.url)
    assert_one_line_error(proc, f"{data / 'netflix' / 'train.csv'}: git blob id mismatch",
                          f"expected {rel.files['train.csv']}, got ", logs_ok=True)
    env = {**os.environ, "TLREC_DATA_DIR": str(tmp_path / "typo")}
    proc = subprocess.run([sys.executable, str(REPO / "run_prepare_data.py"), "--dataset", "ml-100k",
                           "--output_dir", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          env=env, check=False)
    assert_one_line_error(proc, f"$TLREC_DATA_DIR={tmp_path / 'typo'}: directory not found", logs_ok=True)
    assert not (tmp_path / "out").exists() and not (data / "netflix" / "train.csv").exists()


def test_ml100k_zip_verified_extracted_and_a_hand_copy_works_offline(mirror, mirror_root, data_dir, tmp_path,
                                                                      monkeypatch):
    official = download.RELEASES["ml-100k"]
    data = tmp_path / "data"
    meta = run_prepare_data.main(["--dataset", "ml-100k", "--data_dir", str(data), "--output_dir",
                                  str(tmp_path / "movie"), "--download", "--mirror", mirror.url])
    folder = data / "ml-100k"
    for name in download.ML100K_FILES:
        if (data_dir / "ml-100k" / name).is_file():
            assert (folder / name).read_bytes() == (data_dir / "ml-100k" / name).read_bytes()
    assert meta["counts"] == {"train": 8000, "valid": 1000, "test": 1000}
    assert meta["sources"][0]["downloaded"] == {"url": download.ML100K_URL,
                                                "archive_sha256": official.files["ml-100k.zip"]}
    assert mirror.requests == [mirror_path(download.ML100K_URL)] and leftovers(folder) == []
    # a hand-downloaded zip at the path the error names is verified and used, no network needed
    hand = tmp_path / "hand" / "ml-100k"
    hand.mkdir(parents=True)
    shutil.copyfile(mirror_root / mirror_path(download.ML100K_URL).lstrip("/"), hand / "ml-100k.zip")
    assert download.fetch_missing("ml-100k", hand, closed_port_url()) == ["ml-100k.zip"]
    assert (hand / "u.data").read_bytes() == (data_dir / "ml-100k" / "u.data").read_bytes()
    # with the official checksum the test-built zip is rejected: verification is on, nothing is extracted
    monkeypatch.setitem(download.RELEASES, "ml-100k", download.Release(
        official.what, {"ml-100k.zip": "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"},
        archive_url=official.archive_url, members=official.members, required=official.required))
    fresh = tmp_path / "fresh"
    with pytest.raises(InputError, match=r"ml-100k.zip: SHA-256 mismatch \(expected 50d2a982c669.*, got "):
        download.fetch_missing("ml-100k", fresh, mirror.url)
    assert not fresh.exists()  # not even the folder


def test_quickstart_on_a_fresh_machine_downloads_what_is_missing_then_runs(mirror, data_dir, tmp_path, monkeypatch):
    """The README's quickstart command with no data anywhere: the default data directory (the user cache) is
    filled from the mirror, verified, and the pipeline runs to the end. Overrides keep it to a small slice of the
    quickstart (this checks the download wiring; the README's figures come from the full run)."""
    import run_pipeline

    monkeypatch.delenv("TLREC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    argv = ["--config", str(REPO / "configs/experiments/quickstart.yaml"), "--run_dir", str(tmp_path / "run"),
            "--max_windows", "300", "--cot_max_users", "20", "--cot_epochs", "1", "--source_records", "64",
            "--k_shots", "16", "--kshot_epochs", "1", "--methods", "tlrec", "--tiny_hidden_size", "32",
            "--tiny_vocab_size", "600", "--tuning", "max_length=256", "--test_limit", "20",
            "--eval", "num_negatives=5"]
    assert run_pipeline.main(argv) == 0
    data = tmp_path / "cache" / "tlrec"
    netflix = download.RELEASES["netflix"]
    assert sorted(mirror.requests) == sorted([mirror_path(download.ML100K_URL)]
                                             + [mirror_path(netflix.url(f)) for f in netflix.files])
    for fname in netflix.files:
        assert (data / "netflix" / fname).read_bytes() == (data_dir / "netflix" / fname).read_bytes()
    assert (data / "ml-100k" / "u.data").read_bytes() == (data_dir / "ml-100k" / "u.data").read_bytes()
    results = read_results(tmp_path / "run")
    assert set(results["variants"]["tlrec"]) == {"zero_shot", "k16_seed0"}
    # full fine-tuning (the quickstart's): each setting is scored by its own saved model
    run = tmp_path / "run" / "tlrec"
    for setting, model in {"zero_shot": run / "source_tuning", "k16_seed0": run / "k16_seed0"}.items():
        assert results["variants"]["tlrec"][setting]["settings"]["base_model"] == str(model)
        assert len((run / "eval" / setting / "predictions.jsonl").read_text().splitlines()) == 20
    source_meta = json.loads((tmp_path / "run" / "data" / "source" / "meta.json").read_text())
    assert all(s["downloaded"]["commit"] == netflix.commit for s in source_meta["sources"])
    # the same command again: nothing downloaded, every phase skipped
    mirror.requests.clear()
    assert run_pipeline.main(argv) == 0 and mirror.requests == []


def test_published_cot_file_is_found_or_fetched_in_the_data_directory(mirror, mirror_root, tmp_path, monkeypatch):
    """The authors' stage123.json (release tlrec-cot): a clear error without --download, fetched with it. A CoT
    fixture in its format stands in (its blob id replaces the real one for this test)."""
    fixture = REPO / "tests" / "data" / "stage123_fixture.json"
    rel = download.RELEASES["tlrec-cot"]
    served = mirror_root / mirror_path(rel.url("stage123.json")).lstrip("/")
    served.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fixture, served)
    with pytest.raises(InputError, match=rf"tlrec-cot/stage123.json: file not found; pass --download to fetch it "
                                         rf"\(verified\) from {re.escape(rel.url('stage123.json'))}"):
        download.release_file("tlrec-cot", "stage123.json", tmp_path)
    with pytest.raises(InputError, match=f"expected {rel.files['stage123.json']}"):
        download.release_file("tlrec-cot", "stage123.json", tmp_path, download=True, mirror=mirror.url)
    monkeypatch.setitem(download.RELEASES, "tlrec-cot",
                        dataclasses.replace(rel, files={"stage123.json": download.git_blob_id(fixture)}))
    path = download.release_file("tlrec-cot", "stage123.json", tmp_path, download=True, mirror=mirror.url)
    assert path == tmp_path / "tlrec-cot" / "stage123.json" and path.read_bytes() == fixture.read_bytes()
    assert download.provenance_of(path)["commit"] == "534c6c97ea67dcde1230f102c65d4ef141cd3435"


def test_files_picked_by_name_are_fetched_by_themselves(mirror, data_dir, tmp_path):
    """A pipeline's `files` entry naming a published release's file (RELEASE/FILE) is fetched and verified alone
    with download: true (not the rest of the release), once; without download, or for a file no release
    publishes, the file must be there (one line naming the split and the path)."""
    from tlrec_utils.experiments.phases import split_links
    from tlrec_utils.experiments.pipeline_config import parse_pipeline_args

    data = tmp_path / "data"
    files = {"train": "amazon-book/valid.json", "valid": "amazon-book/test.json", "test": "amazon-book/test.json"}
    argv = ["--run_dir", str(tmp_path / "run"), "--data_dir", str(data), "--mirror", mirror.url]
    with pytest.raises(InputError, match=r"^--source_files: train: .*amazon-book/valid.json not found$"):
        split_links(parse_pipeline_args(argv), files, "--source_files")
    assert mirror.requests == []
    cfg = parse_pipeline_args([*argv, "--download", "true"])
    links = split_links(cfg, files, "--source_files")
    rel = download.RELEASES["amazon-book"]
    assert mirror.requests == [mirror_path(rel.url(f)) for f in ("valid.json", "test.json")]
    assert sorted(p.name for p in (data / "amazon-book").glob("*.json") if not p.name.startswith(".")) == [
        "test.json", "valid.json"]
    for split, name in files.items():
        assert links[f"{split}.json"] == (data / name).resolve()
        assert (data / name).read_bytes() == (data_dir / name).read_bytes()
    assert download.provenance_of(data / "amazon-book/valid.json")["commit"] == rel.commit
    mirror.requests.clear()
    assert split_links(cfg, files, "--source_files") == links and mirror.requests == []
    with pytest.raises(InputError, match=r"^--target_files: train: .*book/extra.json not found$"):
        split_links(cfg, {"train": "book/extra.json"}, "--target_files")
    assert mirror.requests == []


def test_grid_setup_steps_download_what_they_lack(mirror, data_dir, tmp_path, monkeypatch):
    """run_experiments --download --mirror: the run_prepare_data setup steps fetch their releases first."""
    from tlrec_utils.experiments.grid_config import GridConfig, SetupStep, Splits
    from tlrec_utils.experiments.local import run_setup

    monkeypatch.setenv("TLREC_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    out = tmp_path / "prepared" / "netflix"
    step = SetupStep(script="run_prepare_data.py", creates=str(out / "test.json"),
                     args={"dataset": "windows-csv", "release": "netflix", "output_dir": str(out)})
    config = GridConfig(output_dir=str(tmp_path / "grid"), target=Splits(), methods=[],
                        setup=[step], path="grid.yaml")
    run_setup(config, download=True, mirror=mirror.url)
    assert (out / "test.json").is_file() and len(mirror.requests) == len(download.RELEASES["netflix"].files)
    meta = json.loads((out / "meta.json").read_text())
    assert all(s["downloaded"]["url"].startswith("https://raw.githubusercontent.com/") for s in meta["sources"])


# ---------------------------------------------------------------- stalls, deadlines, leftovers, the error line
def test_stalled_and_trickling_mirrors_are_given_up_and_leave_nothing(mirror, tmp_path):
    """No byte for --download_stall_s seconds, or a file not complete after --download_deadline_s (a mirror
    sending one byte at a time never stalls): one line, exit 2, and no folder left in the data directory."""
    rel = download.RELEASES["netflix"]
    data = tmp_path / "data"
    for fault, flags, needle in (("stall", ["--download_stall_s", "1"], "no data for 1 s after "),
                                 ("trickle", ["--download_deadline_s", "2"], "not complete after 2 s")):
        mirror.faults = {mirror_path(rel.url("train.csv")): fault}
        proc = run_cli("--dataset", "windows-csv", "--data_dir", data, "--output_dir", tmp_path / "out",
                       "--download", "--mirror", mirror.url, *flags)
        assert_one_line_error(proc, needle, mirror_path(rel.url("train.csv")), flags[0], logs_ok=True)
        assert not data.exists() and not (tmp_path / "out").exists()


def test_download_limits_must_be_positive_numbers(monkeypatch):
    monkeypatch.delenv(download.STALL_ENV, raising=False)
    monkeypatch.delenv(download.DEADLINE_ENV, raising=False)
    assert download.download_limits() == (download.STALL_S, download.DEADLINE_S)
    assert download.download_limits(5, 7.5) == (5.0, 7.5)
    monkeypatch.setenv(download.DEADLINE_ENV, "90")
    assert download.download_limits(5) == (5.0, 90.0)
    for stall, deadline, message in ((0, None, "--download_stall_s must be a positive number of seconds, got 0"),
                                     (None, -1, "--download_deadline_s must be a positive"),
                                     (float("nan"), None, "--download_stall_s must be a positive")):
        with pytest.raises(InputError, match=re.escape(message)):
            download.download_limits(stall, deadline)
    monkeypatch.setenv(download.STALL_ENV, "soon")
    with pytest.raises(InputError, match=re.escape("$TLREC_DOWNLOAD_STALL_S: 'soon' is not a number of seconds")):
        download.download_limits()


def test_error_after_a_progress_bar_starts_its_own_line(mirror, tmp_path):
    """A download dropped mid-file with its progress bar drawn: the error line still starts a line of stderr
    (split at newlines only, as a log file or grep sees it), and the failed download left no folder."""
    rel = download.RELEASES["netflix"]
    mirror.faults = {mirror_path(rel.url("train.csv")): "drop"}
    proc = subprocess.run([sys.executable, str(REPO / "run_prepare_data.py"), "--dataset", "windows-csv", "--data_dir",
                           str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"), "--download", "--mirror",
                           mirror.url], capture_output=True, cwd=REPO, check=False)  # bytes: '\r' kept as it is
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert "\rtrain.csv:" in stderr  # the bar was drawn
    errors = [line for line in stderr.split("\n") if line.startswith("error: ")]
    assert len(errors) == 1 and "connection dropped after" in errors[0], repr(stderr)
    assert not (tmp_path / "data").exists()


def test_a_truncated_release_file_already_present_is_refused_or_fetched_again(mirror, data_dir, tmp_path):
    """Issue 19 case 6: a half-truncated netflix/train.csv in the data directory is not used as it is: without
    --download one line names it and the fix; with --download it is fetched again (all 8,000 training records),
    and a file checked once is not hashed again (cached by size and mtime). Skipped malformed rows are counted
    in meta.json per file."""
    folder = tmp_path / "data" / "netflix"
    shutil.copytree(data_dir / "netflix", folder)
    text = (folder / "train.csv").read_text()
    (folder / "train.csv").write_text(text[: len(text) // 2])  # cut mid-row: one malformed row
    common = ["--dataset", "windows-csv", "--release", "netflix", "--data_dir", tmp_path / "data"]
    proc = run_cli(*common, "--output_dir", tmp_path / "out")
    assert_one_line_error(proc, f"{folder / 'train.csv'}: not the published netflix file (git blob id",
                          "rerun with --download to fetch it again", logs_ok=True)
    assert not (tmp_path / "out").exists()
    meta = run_prepare_data.main([*map(str, common), "--output_dir", str(tmp_path / "out"), "--download",
                                  "--mirror", mirror.url])
    assert meta["counts"]["train"] == 8000
    assert mirror.requests == [mirror_path(download.RELEASES["netflix"].url("train.csv"))]
    assert meta["skipped"]["malformed_rows"] == 0
    assert set(meta["skipped"]["malformed_rows_by_file"]) == {str(folder / f) for f in (
        "item_mapping.csv", "train.csv", "valid.csv", "test.csv")}
    assert download.verify_present("netflix", folder) == []  # the fetched copy checked once more, then cached
    cached = json.loads((folder / download.VERIFIED_FILE).read_text())
    assert set(cached) == set(download.RELEASES["netflix"].files)

    # a file of our own with one malformed row (not a release folder): counted in meta.json
    own = tmp_path / "own"
    shutil.copytree(data_dir / "netflix", own)
    lines = (own / "valid.csv").read_text().splitlines(keepends=True)
    (own / "valid.csv").write_text("".join(lines[:5] + ["u1,not a list,[1],5,1,0\n"] + lines[5:]))
    meta = run_prepare_data.main(["--dataset", "windows-csv", "--raw_dir", str(own), "--output_dir",
                                  str(tmp_path / "own-out")])
    assert meta["skipped"]["malformed_rows"] == 1
    assert meta["skipped"]["malformed_rows_by_file"][str(own / "valid.csv")] == 1


def test_a_generic_interactions_target_is_downloaded_and_matches_the_builtin_loader(mirror, data_dir, tmp_path,
                                                                                  monkeypatch):
    """interactions_target.yaml on a fresh machine: its target phase (`--dataset interactions --release ml-100k
    --download`, tables named relative to DATA_DIR/ml-100k) fetches and verifies MovieLens-100K, then reads u.data
    and u.item through the generic reader into records byte-identical to `--dataset ml-100k`'s."""
    from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset
    from tlrec_utils.experiments.pipeline import pipeline_phases, run_phase
    from tlrec_utils.experiments.pipeline_config import parse_pipeline_args

    monkeypatch.delenv("TLREC_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv(download.MIRROR_ENV, mirror.url)
    cfg = parse_pipeline_args([str(REPO / "configs/experiments/interactions_target.yaml"),
                               "--run_dir", str(tmp_path / "run")])
    target = next(p for p in pipeline_phases(cfg) if p.key == "data/target")
    assert target.argv[target.argv.index("--dataset") + 1] == "interactions"
    run_phase(cfg, target)
    assert mirror.requests == [mirror_path(download.ML100K_URL)]
    meta = json.loads((target.dir / "meta.json").read_text())
    assert meta["dataset"] == "interactions" and meta["kind"] == "movie"
    prepare_dataset(PrepareConfig(dataset="ml-100k", raw_dir=str(data_dir / "ml-100k"),
                                  output_dir=str(tmp_path / "builtin")))
    for name in ("train.json", "valid.json", "test.json", "items.json"):
        assert (target.dir / name).read_bytes() == (tmp_path / "builtin" / name).read_bytes(), name
