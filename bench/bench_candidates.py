"""Candidate sets at Netflix Prize scale: time and peak memory of sparse user-filtering.

Generated data: `--users` windows x `--items` items, `--history` distinct items per window drawn with
popularity ~ rank^-exponent (0 = uniform), 5 windows per user_id. Goal: under 2 minutes, under 4 GB.

    python bench/bench_candidates.py                      # 500k users x 20k items x 10 items
    python bench/bench_candidates.py --users 50000        # quick check
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlrec_utils.cot.candidates import Interactions, _binary_csr, user_filtering_candidates  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is KiB on Linux


def generate(n_users, n_items, history, exponent, seed):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** exponent
    draws = rng.choice(n_items, size=(n_users, history), p=p / p.sum()).astype(np.int32)
    indptr = np.arange(0, n_users * history + 1, history, dtype=np.int64)
    matrix = _binary_csr(indptr, draws.ravel(), n_users, n_items)  # repeats in a window count once
    return Interactions(matrix, [str(i) for i in range(n_items)], np.arange(n_users) // 5)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--history", type=int, default=10)
    parser.add_argument("--exponent", type=float, default=0.0, help="item popularity skew (0 = uniform)")
    parser.add_argument("--chunk_size", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n_jobs", type=int, default=None, help="threads (default: CPU cores, at most 8)")
    args = parser.parse_args()

    start = time.perf_counter()
    inter = generate(args.users, args.items, args.history, args.exponent, args.seed)
    gen_s = time.perf_counter() - start
    base_gb = peak_rss_gb()
    start = time.perf_counter()
    cands = user_filtering_candidates(inter, chunk_size=args.chunk_size, progress=True, n_jobs=args.n_jobs)
    elapsed = time.perf_counter() - start
    filled = (cands.items >= 0).sum(axis=1)
    print(
        f"users={args.users} items={args.items} history={args.history} exponent={args.exponent} "
        f"nnz={inter.matrix.nnz} n_jobs={args.n_jobs or 'auto'}"
    )
    print(f"generate: {gen_s:.1f} s; peak RSS after generating: {base_gb:.2f} GB")
    print(f"candidate sets: {elapsed:.1f} s ({args.users / elapsed:,.0f} users/s); peak RSS: {peak_rss_gb():.2f} GB")
    print(f"mean candidates per user: {filled.mean():.2f}; mean neighbours: {(cands.neighbors >= 0).sum(1).mean():.2f}")
    print(f"goal: < 120 s and < 4 GB -> {'met' if elapsed < 120 and peak_rss_gb() < 4 else 'NOT met'}")


if __name__ == "__main__":
    main()
