"""The paper's experiments as one command: every (setting, seed, method) cell of the grid in a config, then
results/table1.md + .csv (mean ± std, t-test stars) and the ablation / backbone charts.

    python run_experiments.py --config configs/experiments/movie_tiny.yaml              # run here
    python run_experiments.py --config configs/experiments/paper_movie.yaml --dry_run       # commands, GPU-hours
    python run_experiments.py --config configs/experiments/paper_movie.yaml --slurm         # dependent SLURM jobs
    python run_experiments.py --config configs/experiments/paper_movie.yaml --report_only   # table + figures

Rerunning skips finished cells (a cell is finished when its metrics.json exists).
"""

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tlrec_utils.errors import cli_entry, exit_status  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML/JSON grid config (configs/experiments/)")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local")
    parser.add_argument("--slurm", action="store_true", help="same as --launcher slurm")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="change the config: a grid key (seeds=[0], slurm.partition=gpu) or a run_pipeline "
                             "setting of every pipeline run (base_model=models/tiny, teacher=published)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="only the cells whose path contains TEXT (repeatable)")
    parser.add_argument("--report_only", action="store_true", help="only aggregate finished cells into results/")
    parser.add_argument("--dry_run", action="store_true",
                        help="print every cell's commands and a GPU-hours estimate; run and write nothing "
                             "(with --slurm: write the sbatch files of the plan, submit nothing)")
    parser.add_argument("--subprocess", action="store_true", help="local: one Python process per cell")
    parser.add_argument("--download", action="store_true",
                        help="setup steps fetch the published data files they lack (verified)")
    parser.add_argument("--mirror", help="download from MIRROR/HOST/PATH instead of https://HOST/PATH")
    parser.add_argument("--cells_file", help=argparse.SUPPRESS)  # slurm array task: run one listed cell
    parser.add_argument("--cell_index", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run_phase", nargs=2, metavar=("CELL", "PHASE"), help=argparse.SUPPRESS)  # a SLURM job
    args = parser.parse_args(argv)

    from tlrec_utils import experiments as X

    config = X.apply_overrides(X.load_config(args.config), args.override)
    cells = X.build_cells(config)
    if args.only:
        cells = [c for c in cells if any(text in c.path for text in args.only)]
        if not cells:
            raise X.InputError(f"--only {' '.join(args.only)}: no cell path contains it")
    if args.slurm:
        args.launcher = "slurm"
    if args.run_phase:
        return X.run_one_phase(config, cells, *args.run_phase)
    if args.cells_file is not None:
        X.run_cell(config, X.cell_from_index(config, cells, args.cells_file, args.cell_index))
        return 0
    if args.dry_run and args.launcher == "slurm":  # the plan and its job scripts, nothing submitted
        X.submit_slurm_chains(config, cells, args.config, args.override, dry_run=True)
        return 0
    if args.dry_run:
        X.dry_run(config, cells)
        return 0
    failures = []
    if not args.report_only:
        X.run_setup(config, in_process=not args.subprocess, download=args.download, mirror=args.mirror)
        if args.launcher == "slurm":
            X.submit_slurm_chains(config, cells, args.config, args.override)
            return 0
        try:
            failures = X.run_local(config, cells, in_process=not args.subprocess)
        except X.GridInterrupted as exc:
            print(f"interrupted: {exc}; rerun the same command to resume", file=sys.stderr)
            return X.EXIT_INTERRUPTED
    written = X.report(config)
    for path in written.values():
        print(f"wrote {path}")
    if "table1.md" in written:
        print(written["table1.md"].read_text(encoding="utf-8"))
    if failures:
        print(f"{len(failures)} cell(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_status(cli_entry(main)()))
