"""Netflix Prize loader throughput and memory on a generated raw file (combined_data_*.txt format).

    python bench/bench_netflix_loader.py [--ratings 5000000] [--movies 2000]

Prints ratings/s and the peak memory of the process (ru_maxrss) and of the loader's own allocations
(tracemalloc would slow pandas; we report RSS growth instead). Goal: 5M ratings in < 30 s and < 2 GB.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from tlrec_utils.raw_datasets import read_netflix_ratings


def write_netflix_file(path, n_ratings: int, n_movies: int, seed: int = 0) -> None:
    """A raw Netflix file: 'MovieID:' then 'CustomerID,Rating,YYYY-MM-DD' rows, written block by block."""
    rng = np.random.default_rng(seed)
    per_movie = np.full(n_movies, n_ratings // n_movies)
    per_movie[: n_ratings % n_movies] += 1
    days = np.arange(np.datetime64("1999-11-11"), np.datetime64("2005-12-31")).astype(str)
    with open(path, "w") as f:
        for movie, count in enumerate(per_movie, 1):
            users = rng.integers(1, 2_649_430, count)
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


if __name__ == "__main__":
    main()
