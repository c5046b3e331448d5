"""The grid on SLURM: one array job over the baseline cells (`write_sbatch`, `cell_from_index`) and chains of
dependent jobs, one per unfinished pipeline phase (`slurm_plan`, `submit_slurm_chains`, `run_one_phase`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..data.paths import REPO_ROOT
from ..errors import EXIT_INTERRUPTED, InputError
from ..fileio import atomic_write_json, atomic_write_text
from .cells import Cell, cell_phases, cell_pipeline_config, is_finished, slug, write_cell_json
from .grid_config import GridConfig, SlurmSettings

logger = logging.getLogger(__name__)


SBATCH_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --array=0-{last}%{max_parallel}
#SBATCH --output={log_dir}/%A_%a.out
#SBATCH --time={time}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem}
{optional}#
# One grid cell per array task: run_experiments.py maps $SLURM_ARRAY_TASK_ID to the N-th unfinished cell
# listed in {cells_file} (written when this script was). Finished cells are skipped, so resubmitting is safe.
set -euo pipefail
cd {repo}
{setup}exec {python} run_experiments.py --config {config} --cells_file {cells_file} --cell_index "$SLURM_ARRAY_TASK_ID"
"""


def write_sbatch(config, cells: list[Cell], config_path) -> tuple[Path, Path] | None:
    """sbatch array script over the unfinished cells; None when nothing is left to run."""
    todo = [c.path for c in cells if not is_finished(config, c)]
    if not todo:
        return None
    slurm = config.slurm
    out = Path(config.output_dir).resolve() / "slurm"
    cells_file = out / "cells.json"
    atomic_write_json(cells_file, todo)
    script = SBATCH_TEMPLATE.format(
        job_name=slurm.job_name or f"tlrec-{slug(config.name)}",
        last=len(todo) - 1,
        max_parallel=slurm.max_parallel,
        log_dir=out / "logs",
        time=slurm.time,
        cpus=slurm.cpus,
        mem=slurm.mem,
        optional=_directives(slurm, gpus=True),
        cells_file=shlex.quote(str(cells_file)),
        repo=shlex.quote(str(REPO_ROOT)),
        setup="".join(f"{line}\n" for line in slurm.setup),
        python=slurm.python,
        config=shlex.quote(str(Path(config_path).resolve())),
    )
    (out / "logs").mkdir(parents=True, exist_ok=True)
    script_path = out / "grid.sbatch"
    atomic_write_text(script_path, script)
    return script_path, cells_file


def cell_from_index(config, cells: list[Cell], cells_file, index: int) -> Cell:
    paths = json.loads(Path(cells_file).read_text(encoding="utf-8"))
    if not 0 <= index < len(paths):
        raise InputError(f"{cells_file}: no cell {index} (it lists {len(paths)})")
    by_path = {c.path: c for c in cells}
    if paths[index] not in by_path:
        raise InputError(f"{cells_file}: cell {paths[index]!r} is not in the config's grid any more")
    return by_path[paths[index]]


PHASE_JOB_TEMPLATE = """#!/bin/bash
#SBATCH --job-name={job_name}
#SBATCH --output={log}
#SBATCH --time={time}
#SBATCH --cpus-per-task={cpus}
#SBATCH --mem={mem}
#SBATCH --requeue
#SBATCH --signal=B:TERM@120
{optional}#
# {what}
# A rerun (requeue after preemption, or resubmission) resumes the phase: finished phases are skipped, a tuning
# phase continues from its last checkpoint, the CoT phase never asks the teacher twice. SIGTERM is forwarded by
# slurm/preemptible.sh; the job is requeued after the checkpoint.
set -euo pipefail
cd {repo}
source slurm/preemptible.sh
{setup}run_preemptible {command}
"""


@dataclass
class SlurmJob:
    key: str  # "<cell path>:<phase key>", "<cell path>" (baseline array) or "report"
    what: str
    command: list[str]
    after: list[str]
    gpus: bool = True
    dependency: str = "afterok"  # the report job: afterany (it reports whatever finished)


def _job_base_command(config, config_path, overrides) -> list[str]:
    python = config.slurm.python
    out = [python, "run_experiments.py", "--config", str(Path(config_path).resolve())]
    return out + (["--override", *overrides] if overrides else [])  # one flag, every override (action extend)


def slurm_plan(config, cells: list[Cell], config_path, overrides=None) -> list[SlurmJob]:
    """The jobs left to run, in submission order: one job per unfinished pipeline phase (its `--dependency`: the
    unfinished phases it reads, so shared phases such as data, CoT and source rec-tuning run once per run
    directory and every K-shot chain waits for them), one array job over the unfinished baseline cells, and a
    report job after all of them."""
    from .pipeline import finished_earlier, plan_fingerprints

    base = _job_base_command(config, config_path, overrides)
    jobs: list[SlurmJob] = []
    for cell in cells:
        if cell.script != "run_pipeline.py" or is_finished(config, cell):
            continue
        phases = cell_phases(config, cell)
        plan = plan_fingerprints(cell_pipeline_config(config, cell), phases)
        for phase in phases:
            status = plan[phase.key].status
            if status == "reused" or (status == "resume" and finished_earlier(phase)):
                continue
            left = {j.key for j in jobs}
            after = [f"{cell.path}:{a}" for a in phase.after if f"{cell.path}:{a}" in left]
            jobs.append(SlurmJob(f"{cell.path}:{phase.key}", f"{cell.path}: {phase.name}",
                                 base + ["--run_phase", cell.path, phase.key], after, phase.kind in ("tuning", "eval")))
    baselines = [c for c in cells if c.script != "run_pipeline.py" and not is_finished(config, c)]
    if baselines:
        jobs.append(SlurmJob("baselines", f"{len(baselines)} baseline cells (array)", [], [], gpus=False))
    if jobs:
        jobs.append(SlurmJob("report", "Table 1 and the figures from every finished cell",
                             base + ["--report_only"], [j.key for j in jobs], gpus=False, dependency="afterany"))
    return jobs


def _directives(slurm: SlurmSettings, gpus: bool) -> str:
    """The optional #SBATCH lines of a job script (`gpus`: the job uses a GPU)."""
    lines = [f"--{key}={getattr(slurm, key)}" for key in ("partition", "account", "qos", "constraint")
             if getattr(slurm, key)]
    lines += [f"--gpus={slurm.gpus}"] if gpus and slurm.gpus else []
    return "".join(f"#SBATCH {line}\n" for line in lines + slurm.extra_directives)


def _render_job(config: GridConfig, job: SlurmJob, slurm_dir: Path) -> str:
    slurm = config.slurm
    return PHASE_JOB_TEMPLATE.format(
        job_name=f"tlrec-{slug(config.name)}-{slug(job.key)}"[:120],
        log=slurm_dir / "logs" / f"{slug(job.key)}-%j.out", time=slurm.time, cpus=slurm.cpus, mem=slurm.mem,
        optional=_directives(slurm, job.gpus), what=job.what, repo=shlex.quote(str(REPO_ROOT)),
        setup="".join(f"{line}\n" for line in slurm.setup), command=shlex.join(job.command),
    )


def _alive(job_ids: list[str]) -> set[str]:
    """Job ids still pending or running (squeue), so a resubmission waits on them instead of doubling them."""
    squeue = shutil.which("squeue")
    if squeue is None or not job_ids:
        return set()
    proc = subprocess.run([squeue, "-h", "-o", "%i", "-j", ",".join(job_ids)], capture_output=True, text=True,
                          check=False)
    return {line.strip().split("_")[0] for line in proc.stdout.splitlines() if line.strip()}


def submit_slurm_chains(config, cells: list[Cell], config_path, overrides=None, dry_run: bool = False,
                        out=None) -> dict:
    """Write one sbatch script per job of `slurm_plan` under OUTPUT/slurm/jobs/ and submit them in order with
    `--dependency=afterok:` on their predecessors' job ids (dry_run: print the plan, submit nothing). Jobs of an
    earlier submission that are still queued are reused, not submitted again. Returns {job key: job id}."""
    out = out or sys.stdout
    slurm_dir = Path(config.output_dir).resolve() / "slurm"
    jobs = slurm_plan(config, cells, config_path, overrides)
    if not jobs:
        print("every cell is finished: nothing to submit", file=out)
        return {}
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    (slurm_dir / "jobs").mkdir(parents=True, exist_ok=True)
    scripts = []
    for n, job in enumerate(jobs):
        if job.key == "baselines":
            scripts.append(write_sbatch(config, [c for c in cells if c.script != "run_pipeline.py"], config_path)[0])
        else:
            scripts.append(slurm_dir / "jobs" / f"{n:04d}-{slug(job.key)}.sbatch")
            atomic_write_text(scripts[-1], _render_job(config, job, slurm_dir))
    if dry_run:
        for n, (job, script) in enumerate(zip(jobs, scripts)):
            deps = [f"<{i}>" for i, j in enumerate(jobs[:n]) if j.key in job.after]
            print(f"job <{n}>  {job.key}  after {' '.join(deps) or '-'}  {script}", file=out)
        print(f"{len(jobs)} jobs written under {slurm_dir} (nothing submitted)", file=out)
        return {}
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise InputError(f"sbatch not found on PATH: wrote {len(jobs)} job scripts under {slurm_dir}; run this on "
                         "the cluster's login node")
    record_path = slurm_dir / "submitted.json"
    earlier = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    alive = _alive(sorted(set(earlier.values())))
    ids: dict[str, str] = {}
    for job, script in zip(jobs, scripts):
        if earlier.get(job.key) in alive:
            ids[job.key] = earlier[job.key]
            logger.info("%s: job %s from an earlier submission is still queued", job.key, ids[job.key])
            continue
        deps = [ids[a] for a in job.after if a in ids]
        dep_flag = [f"--dependency={job.dependency}:{':'.join(deps)}"] if deps else []
        proc = subprocess.run([sbatch, "--parsable", *dep_flag, str(script)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise InputError(f"sbatch {script} failed: {proc.stderr.strip() or proc.stdout.strip()}")
        ids[job.key] = proc.stdout.strip().split(";")[0].split()[-1]  # --parsable: "ID" or "ID;cluster"
        earlier[job.key] = ids[job.key]
        atomic_write_json(record_path, earlier)  # after every submission: a failure later loses nothing
    print(f"submitted {len(ids)} jobs for what is left to run; ids in {record_path}", file=out)
    return ids


@contextlib.contextmanager
def _phase_lock(phase_dir: Path):
    """One job per phase at a time (a requeued job racing its predecessor): a lock file beside the phase dir."""
    from ..fileio import exclusive_lock

    with exclusive_lock(phase_dir.parent / f".{phase_dir.name}.lock",
                        lambda _holder: f"{phase_dir}: another job is running this phase"):
        yield


def run_one_phase(config, cells: list[Cell], cell_path: str, phase_key: str) -> int:
    """A SLURM phase job: run (or resume, or skip when finished) one phase of a pipeline cell. Returns the
    exit status (EXIT_INTERRUPTED after SIGTERM: the checkpoint is saved and the job is requeued)."""
    from .phases import pipeline_phases
    from .pipeline import PhaseInterrupted, Signals, plan_fingerprints, run_phase

    cell = next((c for c in cells if c.path == cell_path and c.script == "run_pipeline.py"), None)
    if cell is None:
        raise InputError(f"--run_phase: no pipeline cell {cell_path!r} in the config's grid")
    write_cell_json(config, cell)
    cfg = cell_pipeline_config(config, cell)
    phases = pipeline_phases(cfg)
    phase = next((p for p in phases if p.key == phase_key), None)
    if phase is None:
        raise InputError(f"--run_phase: cell {cell_path} has no phase {phase_key!r}")
    upstream = {key: entry.fingerprint for key, entry in plan_fingerprints(cfg, phases).items()}
    with _phase_lock(phase.dir), Signals() as signals:
        try:
            run_phase(cfg, phase, signals, upstream)
        except PhaseInterrupted as exc:
            logger.warning("%s", exc)
            return EXIT_INTERRUPTED
    return 0
