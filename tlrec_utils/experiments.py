"""The paper's experiment grid as one command (run_experiments.py): settings x seeds x methods, each cell a
run directory; finished cells are skipped; local or SLURM array execution; then Table 1 and the figures.

Config (YAML or JSON), e.g. configs/experiments/movie_tiny.yaml:

    name: movie_tiny
    output_dir: experiments/movie_tiny          # relative to the config's directory's repo root (cwd)
    target: {train: ..., valid: ..., test: ..., items: ...}      # prepared target domain
    source: {train: ..., valid: ...}                             # prepared source domain (zero-shot)
    settings: [zero-shot, 16, 64, 256]
    seeds: 5                                    # or an explicit list [0, 1, 2]
    ours: TLRec
    metrics: [auc, ndcg@10]
    methods:                                    # Table 1 rows, in order
      - {name: TLRec, pipeline: {...run_pipeline flags...}}
      - {name: SASRec, baseline: sasrec}
    ablations: [{name: TLRec w/o CoT, pipeline: {...}}]      # Figure 2 (with `ours`)
    backbones: [{name: tiny-gpt2, methods: [TLRec, TALLRec], pipeline: {base_model: ...}}]  # Figure 3
    backbone_settings: [64]                     # settings of the backbone grid (default: all)
    slurm: {partition: ..., time: "24:00:00", gpus: 1, cpus: 8, mem: 64G, max_parallel: 16, setup: [...]}
    setup:                                      # steps run once, here, before any cell (both launchers)
      - {script: run_prepare_data.py, args: {dataset: ml-100k, ...}, creates: data/movie/test.json}

Layout: OUTPUT/runs/<group>/[<backbone>/]<method>/<setting>/seed<S>/ with cell.json (what the cell is and
where its metrics.json lands) written before the cell runs; OUTPUT/results/ for the report.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError
from .fileio import atomic_write_json, atomic_write_text
from .paths import REPO_ROOT

logger = logging.getLogger(__name__)


@dataclass
class Cell:
    group: str  # main | ablation | backbone
    method: str
    setting: str  # zero-shot | k16 | k64 | k256
    seed: int
    script: str  # entry script at the repo root
    args: list[str]
    metrics: str = "metrics.json"  # relative to the cell directory
    backbone: str | None = None
    path: str = ""  # relative to OUTPUT/runs
    extra: dict = field(default_factory=dict)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def setting_key(setting) -> str:
    s = str(setting).strip().lower()
    if s in ("zero-shot", "zero_shot", "zeroshot", "0"):
        return "zero-shot"
    s = s.lstrip("k")
    if not s.isdigit():
        raise InputError(f"settings: {setting!r} is neither zero-shot nor a K")
    return f"k{int(s)}"


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            config = yaml.safe_load(text)
        else:
            config = json.loads(text)
    except Exception as exc:  # yaml and json raise different types: report either as bad input
        raise InputError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    for key in ("output_dir", "target", "methods"):
        if key not in config:
            raise InputError(f"{path}: missing '{key}'")
    config["_path"] = str(path)
    return config


def seeds_of(config) -> list[int]:
    seeds = config.get("seeds", 5)
    return list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]


def flags(options: dict) -> list[str]:
    """{key: value} -> ['--key', 'value', ...]; True -> bare flag, False/None -> omitted, lists -> repeated values."""
    out = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        out.append(f"--{key}")
        if value is True:
            continue
        out.extend(str(v) for v in value) if isinstance(value, list) else out.append(str(value))
    return out


def baseline_cell(config, method: dict, setting: str, seed: int, group: str) -> Cell:
    target, source = config["target"], config.get("source") or {}
    if setting == "zero-shot":
        if "train" not in source:
            raise InputError(f"{config['_path']}: zero-shot needs source.train (baselines train on the source domain)")
        data = {"train_file": source["train"], "valid_file": source.get("valid")}
    else:
        data = {"train_file": target["train"], "valid_file": target.get("valid"), "k_shot": int(setting[1:])}
    options = {
        "model": method["baseline"], **data, "test_file": target["test"], "items_file": target.get("items"),
        "seed": seed, **(method.get("options") or {}),
    }
    return Cell(group, method["name"], setting, seed, "run_baselines.py", flags(options))


def pipeline_cell(config, method: dict, setting: str, seed: int, group: str, backbone=None) -> Cell:
    """A cell run by run_pipeline.py: see `pipeline_args` for the mapping."""
    options = {**(config.get("pipeline") or {}), **(method.get("pipeline") or {})}
    if backbone is not None:
        options.update(backbone.get("pipeline") or {})
    args, metrics = pipeline_args(config, options, setting, seed)
    return Cell(group, method["name"], setting, seed, "run_pipeline.py", args, metrics=metrics)


def pipeline_args(config, options: dict, setting: str, seed: int) -> tuple[list[str], str]:
    """Flags for run_pipeline.py and where its metrics.json lands inside the cell directory.
    The cell directory itself is appended as --run_dir when the cell runs."""
    k = None if setting == "zero-shot" else int(setting[1:])
    options = {**options, "seed": seed, "k_shot": k if k is not None else 0}
    return flags(options), "eval/metrics.json" if k is None else f"k{k}/eval/metrics.json"


def build_cells(config) -> list[Cell]:
    settings = [setting_key(s) for s in config.get("settings", ["zero-shot", 16, 64, 256])]
    seeds = seeds_of(config)
    cells = []

    def make(method, setting, seed, group, backbone=None):
        if "baseline" in method:
            return baseline_cell(config, method, setting, seed, group)
        if "pipeline" in method or config.get("pipeline"):
            return pipeline_cell(config, method, setting, seed, group, backbone)
        raise InputError(f"{config['_path']}: method {method.get('name')!r} needs 'baseline' or 'pipeline'")

    by_name = {}
    for method in config["methods"]:
        if "name" not in method:
            raise InputError(f"{config['_path']}: every method needs a 'name'")
        by_name[method["name"]] = method
        for setting in settings:
            for seed in seeds:
                cells.append(make(method, setting, seed, "main"))
    for method in config.get("ablations") or []:
        for setting in settings:
            for seed in seeds:
                cells.append(make(method, setting, seed, "ablation"))
    backbone_settings = [setting_key(s) for s in config.get("backbone_settings", settings)]
    for backbone in config.get("backbones") or []:
        for name in backbone.get("methods", [config.get("ours", "TLRec")]):
            if name not in by_name:
                raise InputError(f"{config['_path']}: backbone {backbone['name']!r} names unknown method {name!r}")
            for setting in backbone_settings:
                for seed in seeds:
                    cell = make(by_name[name], setting, seed, "backbone", backbone)
                    cell.backbone = backbone["name"]
                    cells.append(cell)
    for cell in cells:
        parts = [cell.group] + ([slug(cell.backbone)] if cell.backbone else []) + [slug(cell.method), cell.setting, f"seed{cell.seed}"]
        cell.path = "/".join(parts)
    return cells


def runs_dir(config) -> Path:
    return Path(config["output_dir"]) / "runs"


def cell_dir(config, cell: Cell) -> Path:
    return runs_dir(config) / cell.path


def is_finished(config, cell: Cell) -> bool:
    return (cell_dir(config, cell) / cell.metrics).is_file()


def cell_argv(config, cell: Cell) -> list[str]:
    out = str(cell_dir(config, cell))
    return cell.args + (["--output_dir", out] if cell.script == "run_baselines.py" else ["--run_dir", out])


def write_cell_json(config, cell: Cell) -> None:
    info = {k: v for k, v in asdict(cell).items() if k in ("group", "method", "setting", "seed", "backbone", "metrics")}
    info["command"] = shlex.join([sys.executable, cell.script, *cell_argv(config, cell)])
    atomic_write_json(cell_dir(config, cell) / "cell.json", info)


def run_cell(config, cell: Cell, in_process: bool = True) -> None:
    """Run one cell (in this process by default: no interpreter start-up per cell)."""
    write_cell_json(config, cell)
    argv = cell_argv(config, cell)
    logger.info("cell %s: %s %s", cell.path, cell.script, shlex.join(argv))
    _run_script(cell.script, argv, in_process)
    if not is_finished(config, cell):
        raise RuntimeError(f"cell {cell.path}: finished without writing {cell.metrics}")


def run_setup(config, in_process: bool = True) -> None:
    """Each `setup` step whose `creates` path does not exist yet (data preparation, tiny model, CoT data)."""
    for n, step in enumerate(config.get("setup") or []):
        if "script" not in step or "creates" not in step:
            raise InputError(f"{config['_path']}: setup step {n} needs 'script' and 'creates'")
        if Path(step["creates"]).exists():
            continue
        argv = flags(step.get("args") or {})
        logger.info("setup %d: %s %s", n, step["script"], shlex.join(argv))
        _run_script(step["script"], argv, in_process)
        if not Path(step["creates"]).exists():
            raise RuntimeError(f"setup step {n} ({step['script']}) did not create {step['creates']}")


def _run_script(script: str, argv: list[str], in_process: bool) -> None:
    if in_process:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        module = importlib.import_module(Path(script).stem)
        main = getattr(module, "main")
        main = getattr(main, "__wrapped__", main)  # entry scripts may decorate main with cli_entry
        main(argv)
    else:
        subprocess.run([sys.executable, str(REPO_ROOT / script), *argv], check=True)


def run_local(config, cells: list[Cell], in_process: bool = True) -> list[str]:
    """Run every unfinished cell in order; a failing cell is logged and the grid goes on. Returns failures."""
    from tqdm.auto import tqdm

    todo = [c for c in cells if not is_finished(config, c)]
    logger.info("%d cells, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    failures = []
    for cell in tqdm(todo, desc="cells"):
        started = time.time()
        try:
            run_cell(config, cell, in_process=in_process)
        except (Exception, SystemExit) as exc:  # one broken cell must not stop the grid
            logger.error("cell %s failed: %s", cell.path, exc)
            failures.append(cell.path)
        else:
            logger.info("cell %s done in %.1f s", cell.path, time.time() - started)
    return failures


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
    slurm = config.get("slurm") or {}
    out = Path(config["output_dir"]).resolve() / "slurm"
    cells_file = out / "cells.json"
    atomic_write_json(cells_file, todo)
    optional = ""
    for key, directive in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("gpus", "gpus"),
                           ("constraint", "constraint")):
        if slurm.get(key):
            optional += f"#SBATCH --{directive}={slurm[key]}\n"
    for line in slurm.get("extra_directives") or []:
        optional += f"#SBATCH {line}\n"
    setup = "".join(f"{line}\n" for line in slurm.get("setup") or [])
    script = SBATCH_TEMPLATE.format(
        job_name=slurm.get("job_name", f"tlrec-{slug(config.get('name', 'grid'))}"),
        last=len(todo) - 1,
        max_parallel=slurm.get("max_parallel", 16),
        log_dir=out / "logs",
        time=slurm.get("time", "24:00:00"),
        cpus=slurm.get("cpus", 8),
        mem=slurm.get("mem", "64G"),
        optional=optional,
        cells_file=shlex.quote(str(cells_file)),
        repo=shlex.quote(str(REPO_ROOT)),
        setup=setup,
        python=slurm.get("python", "python"),
        config=shlex.quote(str(Path(config_path).resolve())),
    )
    (out / "logs").mkdir(parents=True, exist_ok=True)
    script_path = out / "grid.sbatch"
    atomic_write_text(script_path, script)
    return script_path, cells_file


def submit_slurm(config, cells: list[Cell], config_path) -> str | None:
    """Write the array script and submit it with sbatch; returns sbatch's answer (the job id line)."""
    written = write_sbatch(config, cells, config_path)
    if written is None:
        logger.info("every cell is finished: nothing to submit")
        return None
    script_path, _ = written
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise InputError(f"sbatch not found on PATH: wrote {script_path}; submit it on the cluster with `sbatch {script_path}`")
    proc = subprocess.run([sbatch, str(script_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise InputError(f"sbatch {script_path} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    logger.info("%s (%s)", proc.stdout.strip(), script_path)
    return proc.stdout.strip()


def cell_from_index(config, cells: list[Cell], cells_file, index: int) -> Cell:
    paths = json.loads(Path(cells_file).read_text(encoding="utf-8"))
    if not 0 <= index < len(paths):
        raise InputError(f"{cells_file}: no cell {index} (it lists {len(paths)})")
    by_path = {c.path: c for c in cells}
    if paths[index] not in by_path:
        raise InputError(f"{cells_file}: cell {paths[index]!r} is not in the config's grid any more")
    return by_path[paths[index]]


def report(config) -> dict:
    from .reporting import collect_rows, write_report

    rows = collect_rows(runs_dir(config))
    methods = [m["name"] for m in config["methods"]]
    settings = [setting_key(s) for s in config.get("settings", ["zero-shot", 16, 64, 256])]
    return write_report(
        rows, Path(config["output_dir"]) / "results", metrics=tuple(config.get("metrics", ("auc", "ndcg@10"))),
        ours=config.get("ours", "TLRec"), methods=methods, settings=settings, title=config.get("title"),
    )
