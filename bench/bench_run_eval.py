"""run_eval.py as a user runs it (a fresh process): the default scoring against `--eval_mode generate` (the
authors' method, 128 new tokens) on the untuned tiny model over the whole Movie test split, `--metrics auc`.
Goal: the evaluation time run_eval reports (metrics.json `wall_time_s`: encoding, forward passes, metrics) at
least 10x shorter than generate mode's (issue 21).

    python bench/bench_run_eval.py [--prepared DIR] [--base_model DIR] [--repeats 2]

Prints both reported times and whole-process times (imports and model loading included) and the ratios.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import movie_split_and_model

REPO = Path(__file__).resolve().parent.parent


def run_eval(model: Path, test_file: Path, out: Path, *extra: str) -> tuple[float, float]:
    """(reported evaluation seconds, process seconds) of one run_eval.py process."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "run_eval.py"), "--base_model", str(model), "--test_file",
                    str(test_file), "--output_dir", str(out), "--metrics", "auc", *extra],
                   check=True, capture_output=True, text=True)
    process = time.perf_counter() - start
    return json.loads((out / "metrics.json").read_text())["wall_time_s"], process


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared")
    ap.add_argument("--base_model")
    ap.add_argument("--work_dir")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each mode; the best is reported")
    args = ap.parse_args()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_run_eval_"))
    prepared, model = movie_split_and_model(work, args.prepared, args.base_model)
    test_file = prepared / "test.json"
    n = len(json.loads(test_file.read_text()))
    times = {}
    for mode in ("score", "generate"):
        runs = [run_eval(model, test_file, work / f"{mode}{r}", "--eval_mode", mode) for r in range(args.repeats)]
        times[mode] = (min(r[0] for r in runs), min(r[1] for r in runs))
        print(f"{mode:8} {n} Movie test records: reported {times[mode][0]:.2f} s, process {times[mode][1]:.2f} s",
              flush=True)
    print(f"score vs generate: {times['generate'][0] / times['score'][0]:.1f}x (reported evaluation time, goal >= "
          f"10x); {times['generate'][1] / times['score'][1]:.1f}x (whole process)")


if __name__ == "__main__":
    main()
