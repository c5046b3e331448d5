"""What the tests share: the repository root, the one-line-error check, an entry script run in this process,
free ports, readers of what the scripts write, and small data written by the tests themselves (records with a
planted signal; raw files in the published formats)."""

from __future__ import annotations

import importlib
import json
import math
import os
import random
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tlrec_utils.data.records import build_record

REPO = Path(__file__).resolve().parent.parent

# the settings of the first phases of the pipeline tests' runs (conftest.pipeline_start runs them once)
PIPELINE_START = {"max_windows": 300, "cot_max_users": 60, "tiny_vocab_size": 600}

# a log line (errors.setup_logging's format) or a download progress bar: what may precede a one-line error
_NOISE = re.compile(r"^(\d\d:\d\d:\d\d (INFO|WARNING|ERROR) |[^:]+: .*\[\d\d:\d\d)")  # tqdm: [elapsed


def assert_one_line_error(proc, *fragments, status: int = 2, logs_ok: bool = False) -> str:
    """The promise of every entry script (README, Bad input): exit `status`, no traceback, exactly one line on
    stderr (after log lines and progress bars when `logs_ok`), the last one, starting `error: ` for a user's
    mistake, holding every fragment. `proc`: anything with .stderr (text) and .returncode. Returns the line."""
    err = proc.stderr
    assert "Traceback" not in err, err
    assert proc.returncode == status, (proc.returncode, err)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip()]
    kept = [ln for ln in lines if not (logs_ok and _NOISE.match(ln))]
    assert len(kept) == 1 and lines[-1] == kept[0], err
    line = kept[0]
    if status == 2:
        assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def run_entry(script: str, argv, capsys) -> SimpleNamespace:
    """Entry script `script` (e.g. "run_eval") run in this process through its cli_entry guard, as its command
    line would: returns .stdout, .stderr and .returncode (SystemExit's code; 0 when main returns) and main's
    .value."""
    from tlrec_utils.errors import cli_entry

    main = importlib.import_module(script).main
    main = cli_entry(getattr(main, "__wrapped__", main))  # some scripts decorate main, others wrap it in __main__
    capsys.readouterr()
    value, status = None, 0
    try:
        value = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code
    captured = capsys.readouterr()
    return SimpleNamespace(stdout=captured.out, stderr=captured.err, returncode=status, value=value)


def free_port() -> int:
    """A loopback port nothing listens on (free when this returns)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(*roots, skip=("__pycache__", ".git", ".pytest_cache", ".ruff_cache")) -> dict[str, tuple]:
    """Every file and folder under `roots` with its size and modification time (folders `skip` left out): two
    snapshots are equal when nothing was written, created or removed there."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                out[path] = (st.st_size if name in filenames else None, st.st_mtime_ns)
    return out


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_metrics(eval_dir) -> dict:
    """metrics.json of an evaluation (run_eval.py / run_baselines.py --output_dir)."""
    return read_json(Path(eval_dir) / "metrics.json")


def read_predictions(eval_dir) -> list[dict]:
    """predictions.jsonl of an evaluation, one dict a record."""
    with open(Path(eval_dir) / "predictions.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_results(run_dir) -> dict:
    """results.json of a pipeline run or a grid's report folder."""
    return read_json(Path(run_dir) / "results.json")

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Western"]


def synthetic_catalog(n_items: int = 120, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    words = ["Dark", "Love", "Night", "Star", "River", "Ghost", "Iron", "Summer", "City", "Storm", "Yes", "No"]
    catalog = {}
    for i in range(n_items):
        genre = GENRES[i % len(GENRES)]
        title = f"{genre} {rng.choice(words)} {rng.choice(words)} {i} ({1970 + i % 40})"
        catalog[str(i)] = title
    return catalog


def synthetic_records(n: int = 200, seed: int = 0, history_len: int = 10, n_users: int = 40, kind: str = "movie"):
    """Records whose label is predictable: users like one genre; the target is liked iff it is that genre."""
    rng = random.Random(seed)
    catalog = synthetic_catalog(seed=seed)
    items = list(catalog)
    records = []
    for r in range(n):
        user = r % n_users
        fav = GENRES[user % len(GENRES)]
        hist_ids = rng.sample(items, history_len + 1)
        target_id = hist_ids.pop()
        history = [
            {"item_id": i, "title": catalog[i], "liked": catalog[i].startswith(fav)} for i in hist_ids
        ]
        label = int(catalog[target_id].startswith(fav))
        records.append(
            build_record(
                user_id=f"u{user}",
                history=history,
                target={"item_id": target_id, "title": catalog[target_id]},
                label=label,
                kind=kind,
                timestamp=1000 + r,
            )
        )
    return records, catalog


GENRE_APPEAL = dict(zip(GENRES, (2.0, 1.2, 0.4, -0.4, -1.2, -2.0)))  # log-odds of a like, by the item's genre
FAVOURITE_BONUS = 1.5  # added log-odds when the item is of the user's favourite genre


def planted_probability_records(n: int, seed: int, history_len: int = 3, n_users: int = 40):
    """Records whose labels are drawn with known probabilities, P(like) = sigmoid(appeal of the item's genre
    + a bonus for the user's favourite genre), over the titles of `synthetic_catalog()` (which the tiny
    tokenizer knows). Returns (records, the probability each record's label was drawn with)."""
    rng = random.Random(seed)
    catalog = synthetic_catalog()
    items = list(catalog)
    records, probabilities = [], []
    for r in range(n):
        user = rng.randrange(n_users)
        favourite = GENRES[user % len(GENRES)]

        def probability(item_id, favourite=favourite):
            genre = catalog[item_id].split()[0]
            return 1 / (1 + math.exp(-GENRE_APPEAL[genre] - FAVOURITE_BONUS * (genre == favourite)))

        hist_ids = rng.sample(items, history_len + 1)
        target_id = hist_ids.pop()
        history = [{"item_id": i, "title": catalog[i], "liked": rng.random() < probability(i)} for i in hist_ids]
        p = probability(target_id)
        label = int(rng.random() < p)
        target = {"item_id": target_id, "title": catalog[target_id]}
        records.append(build_record(f"u{user}", history, target, label, "movie", timestamp=r))
        probabilities.append(p)
    return records, probabilities


# ---------------------------------------------------------------- raw files in the published formats
def write_ml100k(raw, n_users: int = 3, per_user: int = 14, bad_lines=(), n_items: int = 20) -> Path:
    """MovieLens-100K's u.data (user<TAB>item<TAB>rating<TAB>time) and u.item (id|title|...; ISO-8859-1, one
    title with a non-ASCII letter): `per_user` ratings for each of `n_users` users over `n_items` movies."""
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    items = [f"Movie {i}, The ({1990 + i % 30})" for i in range(1, n_items + 1)]
    (raw / "u.item").write_bytes("".join(f"{i}|{t}|01-Jan-1995||http://x|0\n" for i, t in enumerate(items, 1))
                                 .replace("Movie 3,", "Caf\u00e9 3,").encode("iso-8859-1"))
    rng = np.random.default_rng(0)
    lines = [f"{u}\t{rng.integers(1, n_items + 1)}\t{rng.integers(1, 6)}\t{1000 + rng.integers(0, 50)}\n"
             for _ in range(per_user) for u in range(1, n_users + 1)]
    lines += list(bad_lines)
    (raw / "u.data").write_text("".join(lines))
    return raw


def write_windows_csv(raw, n_rows: int = 40, n_items: int = 60, history_len: int = 10) -> Path:
    """An already windowed release in the TLRec authors' format (their Netflix / Amazon-Books): train, valid and
    test.csv with `user_id,history_movie_id,history_rating,movie_id,rating,timestamp` (history columns are
    Python-style lists, rating 1 = liked) and item_mapping.csv (`movie_id,movie_name`). Not the published files:
    a release check (git blob ids) refuses them."""
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    (raw / "item_mapping.csv").write_text(
        "movie_id,movie_name\n" + "".join(f"{i},Film {i} ({1980 + i % 40})\n" for i in range(1, n_items + 1)))
    header = "user_id,history_movie_id,history_rating,movie_id,rating,timestamp\n"
    for split, n in (("train", n_rows * 8 // 10), ("valid", n_rows // 10), ("test", n_rows // 10)):
        rows = []
        for r in range(n):
            items = rng.sample(range(1, n_items + 1), history_len + 1)
            ids = ", ".join(f"'{i}'" for i in items[:-1])
            liked = ", ".join(str(rng.randint(0, 1)) for _ in items[:-1])
            day = f"2005-06-{1 + r % 28:02d}"
            rows.append(f'{100 + r % 7},"[{ids}]","[{liked}]",{items[-1]},{rng.randint(0, 1)},{day}\n')
        (raw / f"{split}.csv").write_text(header + "".join(rows))
    return raw
