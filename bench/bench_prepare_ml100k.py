"""Time to prepare MovieLens-100K (the published TALLRec/TLRec Movie split) end to end.

    python bench/bench_prepare_ml100k.py [--raw_dir DIR] [--repeats 3]

DIR defaults to the local copy ($TLREC_DATA_DIR, else ~/.cache/tlrec)/ml-100k. Goal: under 10 s.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tlrec_utils.data.paths import data_dir  # noqa: E402
from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--raw_dir", default=None)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    raw_dir = Path(args.raw_dir) if args.raw_dir else data_dir() / "ml-100k"
    if not (raw_dir / "u.data").is_file():
        sys.exit(f"no ml-100k copy at {raw_dir}: pass --raw_dir or set TLREC_DATA_DIR")
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            meta = prepare_dataset(PrepareConfig("ml-100k", str(raw_dir), str(Path(tmp) / "movie")))
            times.append(time.perf_counter() - t0)
    print(f"prepared ml-100k ({meta['n_ratings']:,} ratings -> {sum(meta['counts'].values()):,} records "
          f"{meta['counts']}) in median {statistics.median(times):.2f} s (min {min(times):.2f} s, "
          f"{args.repeats} runs; goal < 10 s: {10 / statistics.median(times):.1f}x under)")


if __name__ == "__main__":
    main()
