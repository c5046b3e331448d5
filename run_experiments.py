"""The paper's experiments as one command: every (setting, seed, method) cell of the grid in a config, then
results/table1.md + .csv (mean ± std, t-test stars) and the ablation / backbone charts.

    python run_experiments.py --config configs/experiments/movie_tiny.yaml              # run here
    python run_experiments.py configs/experiments/movie_tiny.yaml --only main/Pop       # the grid file first
    python run_experiments.py --config configs/experiments/paper_movie.yaml --dry_run       # commands, GPU-hours
    python run_experiments.py --config configs/experiments/paper_movie.yaml --slurm         # dependent SLURM jobs
    python run_experiments.py --config configs/experiments/paper_movie.yaml --report_only   # table + figures

Rerunning skips finished cells (a cell is finished when its metrics.json exists and was made from this config:
fingerprints); a cell whose settings changed is redone (--on_change error refuses instead). Table 1 and
results/results.json hold only the cells of this config; results left on disk by others are listed as stale.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tlrec_utils.errors import EXIT_INTERRUPTED, cli_entry, exit_status  # noqa: E402


def main(argv=None):
    from tlrec_utils.arguments import ExperimentsArguments, parse_args

    (args,) = parse_args((ExperimentsArguments,), argv, description=__doc__, config_field="config")
    from tlrec_utils.errors import InputError
    from tlrec_utils.experiments import estimate, local, results, slurm
    from tlrec_utils.experiments.cells import build_cells, check_grid
    from tlrec_utils.experiments.grid_config import load_config

    config = load_config(args.config, args.override)
    cells = build_cells(config)
    if args.only:
        cells = [c for c in cells if any(text in c.path for text in args.only)]
        if not cells:
            raise InputError(f"--only {' '.join(args.only)}: no cell path contains it")
    if args.run_phase:
        return slurm.run_one_phase(config, cells, *args.run_phase)
    if args.cells_file is not None:
        cell = slurm.cell_from_index(config, cells, args.cells_file, args.cell_index)
        local.run_cell(config, cell, on_change=args.on_change)
        return 0
    if not args.report_only:  # every cell's settings, before any setup step or cell runs (--dry_run too)
        check_grid(config, cells, args.launcher)
    if args.dry_run and args.launcher == "slurm":  # the plan and its job scripts, nothing submitted
        slurm.submit_slurm_chains(config, cells, args.config, args.override, dry_run=True)
        return 0
    if args.dry_run:
        estimate.dry_run(config, cells)
        return 0
    failures = []
    if not args.report_only:
        local.run_setup(config, in_process=not args.subprocess, download=args.download, mirror=args.mirror)
        if args.launcher == "slurm":
            slurm.submit_slurm_chains(config, cells, args.config, args.override)
            return 0
        try:
            failures = local.run_local(config, cells, in_process=not args.subprocess, on_change=args.on_change)
        except local.GridInterrupted as exc:
            print(f"interrupted: {exc}; rerun the same command to resume", file=sys.stderr)
            return EXIT_INTERRUPTED
    written = results.report(config)
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
