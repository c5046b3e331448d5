"""Netflix Prize loader throughput and memory on a generated raw file (combined_data_*.txt format).

    python bench/bench_netflix_loader.py [--ratings 5000000] [--movies 2000]

Prints ratings/s, the process's peak memory (ru_maxrss, which includes Python, numpy and pandas themselves)
and the bytes per rating the loaded arrays hold. Goal: 5M ratings in < 30 s and < 2 GB.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlrec_utils.data.loaders import read_netflix_ratings  # noqa: E402
from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset  # noqa: E402


def write_netflix_file(path, n_ratings: int, n_movies: int, seed: int = 0) -> None:
    """A raw Netflix file: 'MovieID:' then 'CustomerID,Rating,YYYY-MM-DD' rows, written block by block."""
    rng = np.random.default_rng(seed)
    per_movie = np.full(n_movies, n_ratings // n_movies)
    per_movie[: n_ratings % n_movies] += 1
    days = np.arange(np.datetime64("1999-11-11"), np.datetime64("2005-12-31")).astype(str)
    with open(path, "w") as f:
        for movie, count in enumerate(per_movie, 1):
            users = rng.integers(1, 200_001, count)  # ~25 ratings a user: plenty of windows
            ratings = rng.integers(1, 6, count)
            dates = days[rng.integers(0, len(days), count)]
            f.write(f"{movie}:\n")
            f.write("\n".join(f"{u},{r},{d}" for u, r, d in zip(users.tolist(), ratings.tolist(), dates.tolist())))
            f.write("\n")


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ratings", type=int, default=5_000_000)
    p.add_argument("--movies", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "combined_data_1.txt"
        t0 = time.perf_counter()
        write_netflix_file(path, args.ratings, args.movies)
        print(f"generated {args.ratings:,} ratings ({path.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.1f} s")
        rss_before = rss_mb()
        t0 = time.perf_counter()
        arrays, bad = read_netflix_ratings(path)
        elapsed = time.perf_counter() - t0
        n = len(arrays["user"])
        assert n == args.ratings and bad == 0, (n, bad)
        held = sum(a.nbytes for a in arrays.values()) / 2**20
        print(f"loaded {n:,} ratings in {elapsed:.2f} s: {n / elapsed:,.0f} ratings/s (goal: 5M in < 30 s)")
        print(f"peak RSS {rss_mb():.0f} MiB (before loading {rss_before:.0f} MiB; goal < 2048 MiB); "
              f"arrays held {held:.0f} MiB = {held * 2**20 / n:.0f} bytes/rating")
        del arrays
        # the whole preparation on the same file: load, sort, window, 10,000 records, write
        (Path(tmp) / "movie_titles.csv").write_text(
            "".join(f"{m},{1990 + m % 20},Movie {m}, Part {m % 3}\n" for m in range(1, args.movies + 1)))
        t0 = time.perf_counter()
        meta = prepare_dataset(PrepareConfig("netflix", tmp, str(Path(tmp) / "out")))
        print(f"run_prepare_data --dataset netflix on it: {time.perf_counter() - t0:.2f} s "
              f"({meta['counts']}); peak RSS so far {rss_mb():.0f} MiB")


if __name__ == "__main__":
    main()
