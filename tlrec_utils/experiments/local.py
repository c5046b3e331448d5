"""The grid run here: setup steps, then every unfinished cell in order (in this process by default).
"""

from __future__ import annotations

import logging
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..data.paths import REPO_ROOT
from ..errors import EXIT_INTERRUPTED, InputError
from ..fileio import atomic_write_json
from .cells import (
    CELL_DONE,
    Cell,
    cell_argv,
    cell_dir,
    cell_fingerprint,
    check_on_change,
    check_one_test_set,
    current_outputs,
    is_finished,
    write_cell_json,
)
from .command_line import flags
from .grid_config import script_arguments

logger = logging.getLogger(__name__)


def run_setup(config, in_process: bool = True, download: bool = False, mirror: str | None = None) -> None:
    """Each `setup` step whose `creates` path does not exist yet (data preparation, tiny model, CoT data).
    `download`/`mirror` go to the run_prepare_data steps: they fetch the published files they lack."""
    for n, step in enumerate(config.setup):
        if Path(step.creates).exists():
            continue
        if script_arguments(step.script) is None and not (REPO_ROOT / step.script).is_file():
            raise InputError(f"{config.path}: setup entry {n}: script {step.script!r} not found")
        args = dict(step.args)
        if step.script == "run_prepare_data.py" and "k_shot" not in args:
            args.update({"download": True} if download else {}, **({"mirror": mirror} if mirror else {}))
        argv = flags(args)
        logger.info("setup %d: %s %s", n, step.script, shlex.join(argv))
        _run_script(step.script, argv, in_process)
        if not Path(step.creates).exists():
            raise RuntimeError(f"setup step {n} ({step.script}) did not create {step.creates}")


class GridInterrupted(BaseException):  # not Exception: no `except Exception` inside a cell may swallow it
    """A cell stopped on SIGTERM (SLURM preemption, timeout): the whole grid stops; rerunning resumes."""


def _run_script(script: str, argv: list[str], in_process: bool) -> None:
    if in_process:
        from .pipeline import entry_main

        status = entry_main(script)(argv)  # errors stay exceptions: the grid logs a failed cell and goes on
    else:
        status = subprocess.run([sys.executable, str(REPO_ROOT / script), *argv]).returncode
        if status not in (0, EXIT_INTERRUPTED, -signal.SIGTERM):
            raise RuntimeError(f"{script} exited with status {status}")
    if status in (EXIT_INTERRUPTED, -signal.SIGTERM):
        raise GridInterrupted(f"{script} was interrupted (SIGTERM)")


def run_cell(config, cell: Cell, in_process: bool = True, on_change: str = "rerun") -> None:
    """Run one cell (in this process by default: no interpreter start-up per cell). A baseline cell's results
    made from other settings are removed first (`on_change: error` refuses instead); a pipeline cell redoes the
    phases whose fingerprints changed."""
    folder = cell_dir(config, cell)
    if cell.script != "run_pipeline.py" and folder.is_dir() and any(folder.iterdir()):
        if is_finished(config, cell):
            return
        if on_change == "error":
            check_on_change(config, [cell])
        shutil.rmtree(folder)
    write_cell_json(config, cell)
    argv = cell_argv(config, cell) + (["--on_change", on_change] if cell.script == "run_pipeline.py" else [])
    logger.info("cell %s: %s %s", cell.path, cell.script, shlex.join(argv))
    _run_script(cell.script, argv, in_process)
    if cell.script != "run_pipeline.py":
        missing = [o["metrics"] for o in cell.outputs if not (folder / o["metrics"]).is_file()]
        if missing:
            raise RuntimeError(f"cell {cell.path}: finished without writing {', '.join(missing)}")
        atomic_write_json(folder / CELL_DONE, {"fingerprint": cell_fingerprint(config, cell)})
    if not is_finished(config, cell):
        missing = [o["metrics"] for o, ok in zip(cell.outputs, current_outputs(config, cell)) if not ok]
        raise RuntimeError(f"cell {cell.path}: finished without writing {', '.join(missing)}")


def run_local(config, cells: list[Cell], in_process: bool = True, on_change: str = "rerun") -> list[str]:
    """Run every unfinished cell in order; a failing cell is logged and the grid goes on. Returns failures.
    Refused up front: a pipeline cell's prepared test set that is not the grid's (`check_one_test_set`), and with
    `on_change: error` any cell whose results were made from other settings."""
    from tqdm.auto import tqdm

    check_one_test_set(config, cells)
    todo = [c for c in cells if not is_finished(config, c)]
    if on_change == "error":
        check_on_change(config, todo)
    logger.info("%d cells, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    failures = []

    def on_sigterm(signum, frame):  # between or inside baseline cells; tuning phases install their own handler
        raise GridInterrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run_cells(config, todo, in_process, failures, tqdm, on_change)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures


def _run_cells(config, todo, in_process, failures, tqdm, on_change) -> None:
    for cell in tqdm(todo, desc="cells"):
        started = time.time()
        try:
            run_cell(config, cell, in_process=in_process, on_change=on_change)
        except GridInterrupted:
            logger.warning("cell %s interrupted: stopping the grid; rerun the same command to resume", cell.path)
            raise
        except (Exception, SystemExit) as exc:  # one broken cell must not stop the grid
            logger.error("cell %s failed: %s", cell.path, exc)
            failures.append(cell.path)
        else:
            logger.info("cell %s done in %.1f s", cell.path, time.time() - started)
