"""The whole TLRec method, and the methods it is compared with, as chained, resumable phases (run_pipeline.py;
run_experiments.py builds on it). Its settings and their checks: pipeline_config.py; the plan, every phase and its
command (`pipeline_phases`): phases.py; running the phases: here.

API:

    from tlrec_utils.experiments.pipeline import PipelineConfig, run_pipeline, format_table, pipeline_phases
    results = run_pipeline(PipelineConfig(run_dir="runs/qs", data_dir="data", methods=["tlrec", "tallrec"]))
    # results["variants"]["tlrec"]["k16_seed0"] == {"auc": ..., "ndcg@10": ..., "ndcg@10_user": ..., ...}
    print(format_table(results))
    for phase in pipeline_phases(cfg):       # every phase's exact command line, nothing run
        print(phase.key, phase.after, shlex.join(phase.command_line(cfg)))

Methods (`methods`, each a named variant in results.json and the grid), paper Sections 5.1.2 and 5.3:

    tlrec           start model -> CoT tuning (the `cot_stages` records in `cot_curriculum` order) -> source
                    rec-tuning (zero-shot) -> K-shot target rec-tuning. Default: Stages 1, 2, 3 in curriculum order
                    (the paper's text); the paper configs: Stage-3 records only, random order (the chain the
                    authors' logs give Table 1's numbers for, see docs/experiments.md)
    tlrec_staged    the same with Stage 1 -> 2 -> 3 curriculum tuning always (the paper's text)
    tallrec         start model -> K-shot target rec-tuning (TALLRec: no source data, no CoT); zero-shot = start model
    wo_cot          start model -> source rec-tuning -> K-shot                       (Figure 2, w/o CoT)
    wo_curriculum   start model -> CoT tuning, the three stages' records shuffled together -> source rec-tuning ->
                    K-shot (w/o curriculum: tlrec_staged without its order)
    wo_rec_tuning   start model -> tlrec's CoT tuning -> K-shot: no source rec-tuning   (w/o rec-tuning)

The start model is `base_model` (+ `start_adapter`, e.g. an Alpaca LoRA, continued by every first phase as the
authors' scripts do with `--resume_from_checkpoint .../alpaca/`). A tuning phase two methods have in common
(tlrec's and wo_rec_tuning's CoT tuning; tlrec's and tlrec_staged's when they are the same) runs once, in the
directory of the first method that needs it.

Phases, each in its own directory under `run_dir`, each one command (`pipeline_phases`):

    data/source, data/target      run_prepare_data.py (source: Netflix / Amazon-Book release, target: Movie / Book)
    cot/                          run_cot_generation.py on the source train split, or the CoT records of
                                  `cot_file` (teacher: published, the authors' GPT-4 data stage123.json)
    data/source-NAME, cot-NAME    several sources (`source_datasets`): each prepared and asked on its own; then
                                  data/source is their mix (python -m tlrec_utils.data.mix) and cot/ their CoT
                                  records (docs/data.md#several-sources-at-once)
    model/                        python -m tlrec_utils.model.tiny_llm: the tiny LLaMA, only without `base_model`
    <method>/cot_tuning/          run_tuning.py on the CoT records, in curriculum order (Stage 1, 2, 3)
    <method>/source_tuning/       run_tuning.py on source records: the zero-shot model
    <method>/k{K}_seed{S}/        run_tuning.py on K target records, for every K in k_shots and S in seeds
    <method>/eval/<setting>/      run_eval.py on the target test split: metrics.json, predictions.jsonl
    results.json                  every method's metrics per setting (zero_shot, k16_seed0, ...); `phases`: each
                                  tuning phase's held-out figure before and after it; `warnings`; `sources`: each
                                  source domain's records; `method_sources`: the sources each method learned from

Each tuning phase's effect: run_tuning scores fixed held-out records before its first step and after its last
(`effect_files`): CoT tuning the loss on held-out CoT records (`cot_heldout_records` per stage, kept out of
training), source rec-tuning the source valid AUC, K-shot rec-tuning the target valid AUC (the first
`effect_records` of each valid split). A phase whose model scores them exactly as its start model did is a
warning naming it; one whose start figures are not those the model it continues ended with stops the run.

Phase arguments: the run_tuning / run_eval flags come from the `tuning` and `eval` mappings (keys = the fields of
tlrec_utils.arguments' dataclasses, checked against them; their defaults are those of run_tuning/run_eval) plus
what the pipeline sets itself (paths, chaining, epochs, K, seed, validation). Every phase directory gets
`command.txt`, the exact command that runs it alone. `launcher: accelerate` runs every tuning and evaluation phase
as `accelerate launch [--config_file F] [--num_processes N] run_tuning.py|run_eval.py ...` (output in the phase's
`log.txt`); `inprocess` (default) calls the same scripts' `main` in this process.

Resumption and provenance: every phase has a fingerprint of what determines its output (`phase_fingerprint`: its
script and flags, its inputs outside run_dir by content, the fingerprints of the phases it reads), written to
`fingerprint.json` before it runs and into `phase_done.json`, written last. A rerun reuses a finished phase only
while its fingerprint matches; a phase whose settings or inputs changed is redone, and with it everything
downstream (their fingerprints include its), after its old output is removed (`on_change: error` refuses instead,
before anything runs). One log line lists the phases reused, one those rerun and why; results.json records each
phase's status and fingerprint, and the run's fingerprint. An interrupted tuning phase resumes from its own last
checkpoint (run_tuning), and the CoT phase never asks the teacher again for an answered user
(run_cot_generation). SIGTERM (SLURM preemption) is forwarded to a launched child; the run raises
`PhaseInterrupted` (run_pipeline.py exits 143); rerunning the same command continues. A failing child raises
`PhaseFailed` (one line naming the phase and its log). One run at a time per `run_dir` (`fcntl.flock` on
run_dir/.pipeline.lock).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NamedTuple

from ..cot.registry import TEACHERS
from ..data.paths import REPO_ROOT
from ..errors import EXIT_INTERRUPTED, InputError, mask_secrets, mask_secrets_in
from ..evaluation.metrics import NDCG_K, ndcg_key
from ..fileio import atomic_write_json, atomic_write_text, read_json_or_none
from .phases import COT_RECORDS_MODULE, PHASE_DONE, SETTING_ZERO_SHOT, Phase, pipeline_phases
from .pipeline_config import PipelineConfig, check_launcher

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"  # written before a phase runs: what its output will be made from
# flags that do not change a phase's output (how files are fetched, progress and log output): not fingerprinted
UNFINGERPRINTED_FLAGS = {"--download": 0, "--mirror": 1, "--no-progress": 0, "--logging_steps": 1}
LOCK_FILE = ".pipeline.lock"


class PhaseInterrupted(Exception):
    """A phase stopped early (SIGTERM) after saving a checkpoint; rerun to resume."""


class PhaseFailed(Exception):
    """A phase's command failed: one line naming the phase and its log file."""


# ---- phase arguments from run_tuning's and run_eval's own dataclasses ---------------------------------------


# ---- the plan: every phase and its command ------------------------------------------------------------------


# ---- running phases -------------------------------------------------------------------------------------


class Signals:
    """SIGTERM/SIGINT while the pipeline runs: forwarded to a launched child's process group (the child saves a
    checkpoint and exits); with no child running, the phase in this process stops with PhaseInterrupted."""

    def __init__(self):
        self.child: subprocess.Popen | None = None
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the embedding application handles signals
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.received = signum
        if self.child is not None and self.child.poll() is None:
            logger.warning("signal %d: forwarded to the running phase (pid %d)", signum, self.child.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signal.SIGTERM)
            return
        raise PhaseInterrupted(f"stopped by signal {signum}: rerun the same command to resume")


def entry_main(script: str):
    """The `main` of an entry script (run_*.py at the repository root) or of a `-m` module, undecorated."""
    import importlib

    if script.startswith("-m "):
        module = importlib.import_module(script[3:])
    else:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        module = importlib.import_module(Path(script).stem)
    main = module.main
    return getattr(main, "__wrapped__", main)  # errors stay exceptions (no exit) inside the pipeline


def _last_error_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line.split(":")[0]:
            return line[:300]
    return lines[-1][:300] if lines else "(no output)"


def execute(cfg: PipelineConfig, phase: Phase, signals: Signals | None = None):
    """Run one phase's command (in this process, or launched with accelerate); returns the script's result
    (in-process) or None."""
    command = phase.command_line(cfg)
    phase.dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for link, target in phase.links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
        lines.append(shlex.join(["ln", "-sfn", str(target), str(link)]))
    atomic_write_text(phase.dir / "command.txt", mask_secrets("\n".join(lines + [shlex.join(command)]) + "\n"))
    if phase.launched and cfg.launcher == "accelerate":
        log = phase.dir / "log.txt"
        logger.info("[%s] %s (output: %s)", phase.name, shlex.join(command[:4]) + " ...", log)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                                         os.environ.get("PYTHONPATH")]))}
        with open(log, "ab") as f:
            proc = subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env)
            if signals is not None:
                signals.child = proc
            try:
                status = proc.wait()
            finally:
                if signals is not None:
                    signals.child = None
        if status == EXIT_INTERRUPTED or (signals is not None and signals.received):
            raise PhaseInterrupted(f"{phase.name} stopped (SIGTERM); its checkpoint is in {phase.dir}: rerun to resume")
        if status != 0:
            raise PhaseFailed(f"phase {phase.name!r} failed (exit {status}): {_last_error_line(log)} [log: {log}]")
        return None
    result = entry_main(phase.script)(list(phase.argv))
    if phase.kind == "tuning" and result == EXIT_INTERRUPTED:
        raise PhaseInterrupted(f"{phase.name} stopped (SIGTERM) after a checkpoint in {phase.dir}: rerun to resume")
    return result


def _phase_info(cfg: PipelineConfig, phase: Phase) -> dict:
    """What `phase_done.json` records beyond the wall time; also checks the phase left its output."""
    if phase.kind == "tuning":
        from ..tuning.training import FINISHED_MARKER

        summary_path = phase.dir / FINISHED_MARKER
        if not summary_path.is_file():
            raise PhaseFailed(f"phase {phase.name!r} ended without writing {summary_path}")
        s = json.loads(summary_path.read_text())
        info = {"train_loss": s.get("train_loss"), "global_step": s.get("global_step"),
                "train_records": s.get("train_records"), "max_length": s.get("max_length"),
                "truncated_records": sum((s.get("truncated_train_records") or {}).values()),
                "best_metric": s.get("best_metric"), "best_checkpoint": s.get("best_checkpoint"),
                "effect": s.get("effect")}
        if phase.key.endswith("cot_tuning") and info["truncated_records"]:
            logger.warning("[%s] %d of %d CoT records were longer than max_length %s and were cut", phase.name,
                           info["truncated_records"], info["train_records"], info["max_length"])
        return info
    if phase.kind == "eval":
        if not (phase.dir / "metrics.json").is_file():
            raise PhaseFailed(f"phase {phase.name!r} ended without writing {phase.dir / 'metrics.json'}")
        return {}
    if phase.kind == "cot" and phase.script == COT_RECORDS_MODULE:
        return json.loads((phase.dir / "cot_records.json").read_text())
    if phase.kind == "cot":
        summary = json.loads((phase.dir / "summary.json").read_text())
        if summary.get("stopped") or summary.get("users_remaining"):
            raise PhaseInterrupted(f"CoT generation stopped early ({summary.get('stopped')}, "
                                   f"{summary.get('users_remaining')} users left): rerun to continue")
        if not summary["cot_records"]:
            raise InputError(f"{phase.dir}: the teacher produced no CoT records (no user hit); ask more users")
        return {k: summary.get(k) for k in ("users_completed", "users_hit", "hit_rate", "cot_records",
                                            "estimated_cost")}
    if phase.kind == "prepare":
        meta = phase.dir / "meta.json"
        return {"counts": json.loads(meta.read_text()).get("counts")} if meta.is_file() else {}
    return {"path": str(phase.dir)}


def finished_earlier(phase: Phase) -> bool:
    """Output of a finished run of this phase's command (e.g. run by hand or by a SLURM job) is present."""
    from ..tuning.training import FINISHED_MARKER

    if phase.kind == "tuning":
        return (phase.dir / FINISHED_MARKER).is_file()
    if phase.kind == "eval":
        return (phase.dir / "metrics.json").is_file() and (phase.dir / "predictions.jsonl").is_file()
    return False


def phase_outputs(phase: Phase) -> list[Path]:
    """The files later phases read from a finished phase (checked when it is skipped as complete)."""
    from ..tuning.training import FINISHED_MARKER

    if phase.kind == "tuning":
        return [phase.dir / FINISHED_MARKER]
    if phase.kind == "eval":
        return [phase.dir / "metrics.json"]
    if phase.kind == "prepare":
        return [phase.dir / f"{split}.json" for split in ("train", "valid", "test", "items")]
    if phase.kind == "cot":
        return [phase.dir / "cot_train.json"]
    if phase.kind == "model":
        return [phase.dir / "config.json"]
    return []


def completed(phase: Phase) -> dict | None:
    """What the phase's `phase_done.json` says, or None when the phase has not finished. A marker that cannot be
    read, or whose phase's files are gone, is an InputError saying how to run the phase again."""
    marker = phase.dir / PHASE_DONE
    if not marker.is_file():
        return None
    rerun = f"delete {marker} (or the whole {phase.dir}) and rerun to run phase {phase.name!r} again"
    try:
        done = json.loads(marker.read_text(encoding="utf-8"))
        if not isinstance(done, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{marker}: unreadable ({'empty' if not marker.stat().st_size else exc}): the phase may "
                         f"be incomplete; {rerun}") from None
    missing = [p.name for p in phase_outputs(phase) if not p.is_file()]
    if missing:
        raise InputError(f"{marker}: the phase is marked complete but {', '.join(missing)} is gone from "
                         f"{phase.dir} (files deleted?): the phase is incomplete; {rerun}")
    return done


# ---- fingerprints: what determines each phase's output ------------------------------------------------------


def _normalized_argv(argv: list[str], run_dir: Path) -> list[str]:
    """The phase's flags as fingerprinted: run_dir written as $RUN_DIR (a moved run stays valid), flags that do
    not change the output left out."""
    out, skip = [], 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        if arg in UNFINGERPRINTED_FLAGS:
            skip = UNFINGERPRINTED_FLAGS[arg]
            continue
        out.append(mask_secrets(arg.replace(str(run_dir), "$RUN_DIR")))  # recorded in fingerprint.json
    return out


def _external_inputs(phase: Phase, run_dir: Path) -> list[str]:
    """Files and folders outside run_dir the phase reads: every path in its command (raw data, base model, start
    adapter, CoT file, DeepSpeed config, ...) and the published files its links point to. Inside run_dir the
    upstream phases' fingerprints stand for their outputs."""
    paths = {str(t) for t in phase.links.values()}
    for path in _command_paths(phase):
        if not path.startswith(str(run_dir)):
            paths.add(path)
    return sorted(paths)


def _command_paths(phase: Phase) -> list[str]:
    """The values of a phase's command that may be paths: `PATH` or `NAME=PATH` (e.g. --effect_files)."""
    out = []
    for arg in phase.argv:
        if os.sep in arg and not arg.startswith("-"):
            out.append(arg.split("=", 1)[1] if "=" in arg and os.sep not in arg.split("=", 1)[0] else arg)
    return out


def phase_fingerprint(cfg: PipelineConfig, phase: Phase, upstream: dict[str, str]) -> tuple[str, dict]:
    """(fingerprint, what it hashes) of a phase: its script and flags, the fingerprints of its inputs outside
    run_dir (tlrec_utils.provenance: files by content, folders by their files) and of the phases it reads
    (`upstream`: key -> fingerprint, of the phases named in its command; a change upstream changes every phase
    downstream that reads it, e.g. TALLRec's phases do not read the source data), and for a launched
    phase the processes it runs on. An input that is gone now (raw files deleted after preparation) keeps the
    fingerprint it had when the phase ran."""
    from ..provenance import fingerprint, path_fingerprint

    run_dir = Path(cfg.run_dir).resolve()
    recorded = ((read_json_or_none(phase.dir / FINGERPRINT_FILE) or {}).get("what") or {}).get("inputs") or {}
    inputs = {}
    for path in _external_inputs(phase, run_dir):
        fp = path_fingerprint(path)
        inputs[path] = recorded.get(path) if fp is None else fp
    launch = {}
    if phase.launched and cfg.launcher == "accelerate":
        if cfg.num_processes:
            launch["num_processes"] = cfg.num_processes
        if cfg.accelerate_config:
            launch["accelerate_config"] = path_fingerprint(cfg.accelerate_config)
    # the phases whose output it reads (a phase's directory is run_dir/<key>): named in its command
    paths = _command_paths(phase)
    reads = [key for key in phase.after
             if any(path == str(run_dir / key) or path.startswith(f"{run_dir / key}{os.sep}") for path in paths)]
    what = {"script": phase.script, "argv": _normalized_argv(phase.argv, run_dir), "inputs": inputs,
            "after": {key: upstream.get(key) for key in reads}, "launch": launch}
    return fingerprint(what), what


def phase_status(phase: Phase, fp: str) -> tuple[str, dict | None]:
    """(status, the recorded `what` when it differs): `reused` (finished with this fingerprint), `resume` (started
    with it: a checkpoint or finished output to continue from), `rerun` (its directory holds output made from other
    settings or inputs, or of unknown origin), `new`."""
    done = read_json_or_none(phase.dir / PHASE_DONE)
    started = read_json_or_none(phase.dir / FINGERPRINT_FILE) or {}
    if done is not None and done.get("fingerprint") == fp:
        return "reused", None
    if done is None and started.get("fingerprint") == fp:
        return "resume", None
    if done is not None or (phase.dir.is_dir() and any(phase.dir.iterdir())):
        return "rerun", started.get("what")
    return "new", None


class PlannedPhase(NamedTuple):
    """A phase's entry in `plan_fingerprints`: what its output is made from and what a run would do with it."""

    fingerprint: str
    what: dict  # what the fingerprint hashes
    status: str  # phase_status: reused | resume | rerun | new
    recorded: dict | None  # the `what` its existing output was made from, when that differs


def plan_fingerprints(cfg: PipelineConfig, phases: list[Phase]) -> dict[str, PlannedPhase]:
    """key -> PlannedPhase of every phase, in run order; nothing runs."""
    out, upstream = {}, {}
    for phase in phases:
        fp, what = phase_fingerprint(cfg, phase, upstream)
        upstream[phase.key] = fp
        out[phase.key] = PlannedPhase(fp, what, *phase_status(phase, fp))
    return out


def with_status(plan: dict[str, PlannedPhase], status: str) -> list[str]:
    """The keys of the planned phases with this status (`rerun`: made from other settings or inputs)."""
    return [key for key, entry in plan.items() if entry.status == status]


def _changed(entry: PlannedPhase) -> str:
    from ..provenance import changes

    return "; ".join(changes(entry.recorded, entry.what)[:3])


def check_on_change(cfg: PipelineConfig, plan: dict[str, PlannedPhase], where: str) -> None:
    """--on_change error: refuse (one line) before anything runs when a phase would be rerun."""
    stale = with_status(plan, "rerun")
    if stale and cfg.on_change == "error":
        raise InputError(f"--on_change error: {len(stale)} phase(s) in {where} were made from other settings or "
                         f"inputs, first {stale[0]} ({_changed(plan[stale[0]])}); rerun with --on_change rerun to "
                         "redo them and everything after them, or use a new --run_dir")


def _clear_stale(cfg: PipelineConfig, phase: Phase) -> None:
    """Remove a phase's output made from other settings (checkpoints included: they must not be resumed). Teacher
    answers bought from an API are moved aside instead (nothing paid for is lost)."""
    if not phase.dir.exists():
        return
    if phase.kind == "cot" and TEACHERS[cfg.teacher].paid:
        aside = phase.dir.with_name(f"{phase.dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        phase.dir.rename(aside)
        logger.warning("[%s] the CoT answers made with other settings moved to %s", phase.name, aside)
    else:
        shutil.rmtree(phase.dir)


def run_phase(cfg: PipelineConfig, phase: Phase, signals: Signals | None = None,
              upstream: dict[str, str] | None = None) -> dict:
    """Run `phase` unless it finished with the same fingerprint (`upstream`: the fingerprints of the phases
    before it, key -> fingerprint); output made from other settings is removed first (or refused with
    `on_change: error`). `fingerprint.json` is written before the command runs, `phase_done.json` (with the
    fingerprint and `status`: run, rerun, resumed) last."""
    fp, what = phase_fingerprint(cfg, phase, upstream or {})
    status, old = phase_status(phase, fp)
    marker = phase.dir / PHASE_DONE
    if status == "reused":
        logger.debug("[%s] reused (%s)", phase.name, phase.dir)
        return {**json.loads(marker.read_text()), "status": "reused"}
    if status == "rerun":
        check_on_change(cfg, {phase.key: PlannedPhase(fp, what, status, old)}, str(phase.dir))
        _clear_stale(cfg, phase)
    started = time.time()
    atomic_write_json(phase.dir / FINGERPRINT_FILE, {"fingerprint": fp, "what": what})
    if status == "resume" and finished_earlier(phase):
        note = {"note": "finished by an earlier run"}
    else:
        logger.info("[%s] running -> %s", phase.name, phase.dir)
        execute(cfg, phase, signals)
        note = {}
    fp_after, what_after = phase_fingerprint(cfg, phase, upstream or {})
    if fp_after != fp:  # its inputs appeared while it ran (a download): what it was made from
        fp = fp_after
        atomic_write_json(phase.dir / FINGERPRINT_FILE, {"fingerprint": fp, "what": what_after})
    done = {"phase": phase.name, "wall_time_s": round(time.time() - started, 1), **note, **_phase_info(cfg, phase),
            "fingerprint": fp, "status": {"new": "run", "resume": "resumed"}.get(status, status)}
    atomic_write_json(marker, json.loads(json.dumps(done, default=str)))
    logger.info("[%s] done in %.1f s", phase.name, done["wall_time_s"])
    return done


@contextlib.contextmanager
def run_dir_lock(run_dir: Path):
    """One pipeline at a time per run_dir (a requeued job racing its predecessor, a command started twice): an
    exclusive lock (fileio.exclusive_lock), released by the OS when the holder dies; the lock file says who holds it."""
    from ..fileio import exclusive_lock

    def busy(holder: str) -> str:
        return (f"{run_dir} is in use by another run_pipeline ({holder or 'another process'}); wait for it to "
                "finish or stop it, then rerun")

    with exclusive_lock(run_dir / LOCK_FILE, busy, sign=True):
        yield


# ---- each tuning phase's effect on held-out records ------------------------------------------------------

# the held-out figure that tells what a tuning phase did: CoT tuning the loss on held-out CoT records, source
# rec-tuning the source valid AUC, K-shot rec-tuning the target valid AUC (run_tuning's summary `effect`)
EFFECT_SETS = {"cot_tuning": ("heldout", "held-out CoT loss"), "source_tuning": ("source", "source valid AUC"),
               "kshot": ("target", "target valid AUC")}
CHAIN_TOLERANCE = 1e-3  # start figures vs the figures the previous phase ended with (same model, same records)
UNCHANGED = 1e-7  # a largest change of P(Yes) (or of the held-out loss) at most this: the model did not move


def phase_effect(phase: Phase, done: dict) -> dict | None:
    """{phase, held_out, metric, records, before, after, unchanged} of a finished tuning phase (None when it
    reported no effect: an earlier version's phase, or cot_heldout_records 0 for CoT tuning)."""
    kind = phase.key.rsplit("/", 1)[1]
    which, label = EFFECT_SETS.get(kind, EFFECT_SETS["kshot"])
    entry = (done.get("effect") or {}).get(which)
    if not entry:
        return None
    metric = entry["metric"]
    change = entry.get("max_p_yes_change", entry.get("loss_change"))
    return {"phase": phase.name, "held_out": label, "metric": metric, "records": entry["records"],
            "before": (entry["before"] or {}).get(metric), "after": entry["after"].get(metric),
            "unchanged": change is not None and abs(change) <= UNCHANGED}


def check_start(phase: Phase, done: dict[str, dict], start_figures: dict) -> None:
    """A tuning phase started from the model its method names: its figures before training equal those its
    start phase ended with (or, from the start model, those every other phase from the start model began with),
    on the same held-out records; otherwise PhaseFailed naming both."""
    effect = done[phase.key].get("effect") or {}
    for name, entry in effect.items():
        if name == "heldout" or not entry.get("before"):
            continue
        if phase.start:
            ref = ((done[phase.start].get("effect") or {}).get(name) or {}).get("after")
            what = f"the model {phase.start} ended with"
        else:
            ref, owner = start_figures.setdefault(name, (entry["before"], phase.key))
            what = f"the start model (as {owner} began)"
        if not ref:
            continue
        for key, value in entry["before"].items():
            expected = ref.get(key)
            if value is None or expected is None:
                continue
            if abs(value - expected) > CHAIN_TOLERANCE * max(1.0, abs(expected)):
                raise PhaseFailed(
                    f"phase {phase.name!r} did not start from {what}: before training it scores {key} "
                    f"{value:.4f} on {entry['records']} records of {entry['file']}, that model {expected:.4f} "
                    f"[{phase.dir / 'tuning_summary.json'}]")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) every phase; returns {"variants": {method: {setting: metrics}}, "phases": {key: effect},
    "warnings": [...], "provenance": {key: {status, fingerprint}}, "fingerprint": ..., "config": ...} and writes
    it to run_dir/results.json. A tuning phase that did not start from the model its method names stops the run
    (PhaseFailed); one whose model scores its held-out records exactly as its start model did is a warning."""
    from ..provenance import fingerprint

    phases = pipeline_phases(cfg)
    check_launcher(cfg)
    for phase in phases:  # a damaged finished phase fails now, before any phase runs
        completed(phase)
    started = time.time()
    run_dir = Path(cfg.run_dir).resolve()
    done: dict[str, dict] = {}
    start_figures: dict = {}
    effects: dict[str, dict] = {}
    warnings: list[str] = []
    record = {}
    with run_dir_lock(run_dir), Signals() as signals:
        plan = plan_fingerprints(cfg, phases)
        check_on_change(cfg, plan, str(run_dir))
        reused, stale = with_status(plan, "reused"), with_status(plan, "rerun")
        if reused:
            logger.info("reused %d phase(s), fingerprints match: %s", len(reused), ", ".join(reused))
        if stale:
            logger.info("rerun %d phase(s), made from other settings or inputs: %s", len(stale),
                        ", ".join(f"{key} ({_changed(plan[key])})" for key in stale))
        upstream: dict[str, str] = {}
        for phase in phases:
            done[phase.key] = run_phase(cfg, phase, signals, upstream)
            upstream[phase.key] = done[phase.key]["fingerprint"]
            record[phase.key] = {"status": done[phase.key]["status"], "fingerprint": upstream[phase.key]}
            if phase.kind != "tuning":
                continue
            check_start(phase, done, start_figures)
            effect = phase_effect(phase, done[phase.key])
            if effect is None:
                continue
            effects[phase.key] = effect
            if effect["unchanged"]:
                warnings.append(f"{phase.name}: the trained model scores the {effect['records']} held-out records "
                                f"({effect['held_out']}) exactly as its start model did: the phase changed nothing")
                logger.warning("[%s] %s", phase.name, warnings[-1])
    results: dict[str, dict] = {m: {} for m in cfg.methods}
    for phase in phases:
        if phase.kind == "eval":
            results[phase.method][phase.setting] = json.loads((phase.dir / "metrics.json").read_text())
    out = {"variants": results, "sources": source_summary(cfg, run_dir, done),
           "method_sources": {m: method_sources(cfg, m) for m in cfg.methods},
           "phases": effects, "warnings": warnings, "provenance": record,
           "fingerprint": fingerprint(upstream), "config": mask_secrets_in(asdict(cfg)),
           "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "results.json", json.loads(json.dumps(out, default=str)))
    return out


def method_sources(cfg: PipelineConfig, method: str) -> list[str]:
    """The names of the source domains a method learns from (none for TALLRec: no CoT, no source records)."""
    from .pipeline_config import METHODS, source_specs

    return [spec.name for spec in source_specs(cfg)] if METHODS[method] else []


def source_summary(cfg: PipelineConfig, run_dir: Path, done: dict[str, dict]) -> list[dict]:
    """Each source domain of the run, in order: its dataset and wording, its records per split in data/source
    (`train`: those source rec-tuning draws from; `train_available`: its whole train split) and the CoT records
    it gave (None when no method tunes on CoT)."""
    from .pipeline_config import source_specs

    meta = read_json_or_none(run_dir / "data" / "source" / "meta.json") or {}
    cot = done.get("cot") or {}
    out = []
    for spec in source_specs(cfg):
        if cfg.source_datasets:
            counts = dict(((meta.get("source_domains") or {}).get(spec.name) or {}).get("counts") or {})
            cot_records = ((cot.get("per_source") or {}).get(spec.name) or {}).get("cot_records")
        else:
            counts = {**(meta.get("counts") or {}), "train_available": (meta.get("counts") or {}).get("train")}
            cot_records = cot.get("cot_records")
        out.append({"name": spec.name, "dataset": "records" if spec.files else spec.dataset,
                    "item_kind": spec.item_kind, "records": counts, "cot_records": cot_records})
    return out


def format_sources(results: dict) -> str:
    """One line per source domain: what it gave the run."""
    lines = []
    for s in results.get("sources", []):
        records = s["records"]
        train = f"{records.get('train', 0):,} train records"
        if records.get("train_available") not in (None, records.get("train")):
            train += f" (drawn from {records['train_available']:,})"
        cot = f", {s['cot_records']:,} CoT records" if s.get("cot_records") is not None else ""
        lines.append(f"- {s['name']} ({s['dataset']}, {s['item_kind']}): {train}, {records.get('valid', 0):,} valid"
                     f"{cot}")
    return "\n".join(lines)


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_table(results: dict, k: int = NDCG_K) -> str:
    """A Markdown table: one row per setting, AUC and NDCG@k (sampled and per user, those measured) per method."""
    names = list(results["variants"])
    settings = list(dict.fromkeys(s for n in names for s in results["variants"][n]))
    cols = [("AUC", "auc"), (f"NDCG@{k}", ndcg_key(k)), (f"NDCG@{k} user", ndcg_key(k, per_user=True))]
    measured = {key for n in names for m in results["variants"][n].values() for key in (m or {})}
    cols = [c for c in cols if c[1] in measured] or cols  # e.g. no sampled-NDCG column under metrics=auc
    header = ["setting"] + [f"{n} {label}" for n in names for label, _ in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in settings:
        row = [s] + [_fmt((results["variants"][n].get(s) or {}).get(key)) for n in names for _, key in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def format_effects(results: dict) -> str:
    """A Markdown table of every tuning phase's held-out figure before and after it."""
    lines = ["| phase | held-out figure (records) | before | after |", "|---|---|---|---|"]
    for effect in results.get("phases", {}).values():
        flag = " (unchanged)" if effect["unchanged"] else ""
        lines.append(f"| {effect['phase']} | {effect['held_out']} ({effect['records']}) | {_fmt(effect['before'])} "
                     f"| {_fmt(effect['after'])}{flag} |")
    return "\n".join(lines)


def _auc_with_interval(metrics: dict | None) -> str:
    metrics = metrics or {}
    lo, hi = metrics.get("auc_ci95") or (None, None)
    text = _fmt(metrics.get("auc"), 3)
    return text if lo is None else f"{text} [{lo:.3f}, {hi:.3f}]"


def method_lines(results: dict, baseline: str = "tallrec") -> list[str]:
    """One line per method: what its phases did on held-out records and where its zero-shot test AUC (95%
    interval) stands against the untuned start model's (TALLRec's zero-shot cell)."""
    variants = results["variants"]
    ref = (variants.get(baseline) or {}).get(SETTING_ZERO_SHOT)
    out = []
    for method, settings in variants.items():
        parts = [f"{e['held_out']} {_fmt(e['before'], 3)} -> {_fmt(e['after'], 3)}" + (" (UNCHANGED)"
                                                                                       if e["unchanged"] else "")
                 for key, e in results.get("phases", {}).items()
                 if key.startswith(f"{method}/") and not key.rsplit("/", 1)[1].startswith("k")]
        zero = settings.get(SETTING_ZERO_SHOT)
        line = f"{method}: " + ("; ".join(parts) + "; " if parts else "")
        line += f"zero-shot test AUC {_auc_with_interval(zero)}"
        if method != baseline and ref and zero and zero.get("auc_ci95") and ref.get("auc_ci95"):
            (lo, hi), (rlo, rhi) = zero["auc_ci95"], ref["auc_ci95"]
            if None not in (lo, hi, rlo, rhi):
                verdict = ("above" if lo > rhi else "below" if hi < rlo else "not told apart from (intervals overlap)")
                line += f", {verdict} the untuned start model's {_auc_with_interval(ref)}"
        kshot = [e for key, e in results.get("phases", {}).items()
                 if key.startswith(f"{method}/") and key.rsplit("/", 1)[1].startswith("k")]
        if kshot:
            moved = sum(e["after"] is not None and e["before"] is not None and e["after"] > e["before"] for e in kshot)
            line += f"; K-shot rec-tuning raised the target valid AUC in {moved} of {len(kshot)} runs"
        out.append(line)
    return out


