"""CoT generation throughput: `--concurrency 16` vs sequential through a loopback OpenAI-protocol server
that adds 200 ms latency per request (100 users x 3 stages = 300 requests). Goal: at least 10x.

    python bench/bench_cot_concurrency.py [--users 100] [--latency 0.2] [--concurrency 16]
"""

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from openai_stub_server import StubOpenAI  # noqa: E402

from tlrec_utils.cot.generation import CotConfig, run  # noqa: E402
from tlrec_utils.data.records import build_record, save_records  # noqa: E402


def write_source_domain(directory: Path, users: int, seed: int = 0) -> None:
    """`users` liked windows (4 per person) over a 60-movie catalog."""
    rng = random.Random(seed)
    titles = [f"Movie {i} ({1950 + i})" for i in range(60)]
    records = []
    for p in range((users + 3) // 4):
        sequence = rng.sample(range(len(titles)), 14)
        for w in range(4):
            hist = [{"item_id": str(i), "title": titles[i], "liked": True} for i in sequence[w : w + 10]]
            t = sequence[w + 10]
            records.append(build_record(f"p{p}", hist, {"item_id": str(t), "title": titles[t]}, 1, "movie"))
    save_records(directory / "train.json", records[:users])


def timed_run(data: Path, out: Path, server: StubOpenAI, concurrency: int) -> tuple[float, dict]:
    cfg = CotConfig(
        data_dir=str(data), output_dir=str(out), base_url=server.base_url, model="stub",
        concurrency=concurrency, ensure_target=True, progress=False,
    )  # fmt: skip
    start = time.perf_counter()
    summary = run(cfg)
    return time.perf_counter() - start, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("OPENAI_API_KEY", "sk-bench-not-a-real-key")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_source_domain(tmp, args.users)
        results = {}
        for concurrency in (1, args.concurrency):
            with StubOpenAI(latency=args.latency) as server:
                seconds, summary = timed_run(tmp, tmp / f"out_c{concurrency}", server, concurrency)
            assert len(server.requests) == 3 * args.users, len(server.requests)
            results[concurrency] = seconds
            print(
                f"concurrency {concurrency:>3}: {seconds:6.2f} s for {len(server.requests)} requests "
                f"({len(server.requests) / seconds:.1f} req/s), {summary['users_hit']} hits"
            )
        same = (tmp / "out_c1" / "cot_train.json").read_bytes() == (
            tmp / f"out_c{args.concurrency}" / "cot_train.json"
        ).read_bytes()
        speedup = results[1] / results[args.concurrency]
        goal = "met" if speedup >= 10 else "NOT met"
        print(f"speedup: {speedup:.1f}x (goal >= 10x: {goal}); identical cot_train.json: {same}")
        print(json.dumps({"latency_s": args.latency, "users": args.users, "seconds": results,
                          "speedup": round(speedup, 2)}))


if __name__ == "__main__":
    main()
