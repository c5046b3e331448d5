"""The paper's experiment grid as one command (run_experiments.py): settings x seeds x methods, each cell a
run directory; finished cells are skipped; local or SLURM array execution; then Table 1 and the figures.

Config (YAML or JSON), e.g. configs/experiments/movie_tiny.yaml (paths relative to the working directory):

    name: movie_tiny
    output_dir: experiments/movie_tiny
    target: {train: ..., valid: ..., test: ..., items: ...}      # prepared target domain (baselines)
    source: {train: ..., valid: ...}                             # prepared source domain (zero-shot baselines)
    settings: [zero-shot, 16, 64, 256]
    seeds: 5                                    # or an explicit list [0, 1, 2]
    test_limit: 300                             # optional: every method on the first N test records
    ours: TLRec
    metrics: [auc, ndcg@10]
    pipeline: {data_dir: ..., base_model: ...}  # run_pipeline flags shared by every pipeline run
    pipeline_runs:                              # one run_pipeline run_dir each (all seeds), per backbone
      main: {methods: [tlrec, tallrec]}         # run_pipeline --methods (pipeline.METHODS)
      ablations: {methods: [wo_cot, wo_curriculum, wo_rec_tuning]}
    methods:                                    # Table 1 rows, in order
      - {name: TLRec, pipeline: main, variant: tlrec}
      - {name: TALLRec, pipeline: main, variant: tallrec}
      - {name: SASRec, baseline: sasrec, options: {epochs: 20}}
    ablations:                                  # Figure 2 (beside `ours`)
      - {name: w/o curriculum, pipeline: ablations, variant: wo_curriculum}
      - {name: SASRec again, same_as: SASRec}   # reuse a Table 1 method's results
    backbones:                                  # Figure 3: the named methods again per backbone
      - {name: tiny-gpt2, methods: [TLRec, TALLRec], pipeline: {base_model: ...}}
    backbone_settings: [64]                     # settings of the backbone grid (default: all)
    setup:                                      # steps run once, here, before any cell (both launchers)
      - {script: run_prepare_data.py, args: {dataset: ml-100k, ...}, creates: data/movie/test.json}
    slurm: {partition: ..., time: "24:00:00", gpus: 1, cpus: 8, mem: 64G, max_parallel: 16, setup: [...]}

Cells: a baseline cell is one (method, setting, seed); a pipeline cell is one run_pipeline run_dir giving
every setting and seed of every variant it trains (its shared phases run once). Layout:
OUTPUT/runs/<group>/[<backbone>/]<method>/<setting>/seed<S>/ (baselines) or
OUTPUT/runs/<group>/[<backbone>/]pipeline-<RUN>/ (pipeline runs) with cell.json (what the
cell is, where each metrics.json lands) written before the cell runs; OUTPUT/results/ for the report.
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InputError
from .fileio import atomic_write_json, atomic_write_text, read_config_file
from .paths import REPO_ROOT

logger = logging.getLogger(__name__)


@dataclass
class Cell:
    group: str  # main | ablation | backbone
    name: str  # method (baseline cell) or pipeline-RUN (pipeline cell)
    seed: int | None  # None: a pipeline cell covering every seed
    script: str  # entry script at the repo root
    args: list[str]
    outputs: list[dict]  # [{method, setting, seed, metrics}]: metrics relative to the cell directory
    setting: str | None = None  # baseline cells: zero-shot | k16 | ...
    backbone: str | None = None
    path: str = ""  # relative to OUTPUT/runs


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


CONFIG_KEYS = ("name", "title", "output_dir", "target", "source", "settings", "seeds", "test_limit", "ours",
               "metrics", "pipeline", "pipeline_runs", "methods", "ablations", "backbones", "backbone_settings",
               "setup", "slurm")  # fmt: skip
METHOD_KEYS = ("name", "baseline", "options", "pipeline", "variant", "same_as")


def load_config(path) -> dict:
    """The grid config, checked up front: unknown keys (a typo such as `seedz`), seeds, settings, baseline
    names and pipeline options fail here with the key and the file, before any cell runs."""
    path = Path(path)
    config = read_config_file(path)
    unknown = [k for k in config if k not in CONFIG_KEYS]
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})")
    for key in ("output_dir", "target", "methods"):
        if key not in config:
            raise InputError(f"{path}: missing '{key}'")
    config["_path"] = str(path)
    check_config(config)
    return config


def check_config(config) -> None:
    from .baselines import BASELINES
    from .pipeline import PipelineConfig
    from .validation import check_config_values

    path = config["_path"]
    seeds_of(config)
    from .validation import check_output_dir

    check_output_dir(config["output_dir"], f"{path}: output_dir")
    for key in ("target", "source", "pipeline", "pipeline_runs", "slurm"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise InputError(f"{path}: {key} must be a mapping, got {type(config[key]).__name__}")
    for key in ("methods", "ablations", "backbones", "setup", "settings", "backbone_settings"):
        if config.get(key) is not None and not isinstance(config[key], list):
            raise InputError(f"{path}: {key} must be a list, got {type(config[key]).__name__}")
    test_limit = config.get("test_limit")
    if test_limit is not None and (not isinstance(test_limit, int) or isinstance(test_limit, bool) or test_limit < 1):
        raise InputError(f"{path}: test_limit must be a positive integer, got {test_limit!r}")
    for group in ("methods", "ablations"):
        for method in config.get(group) or []:
            if not isinstance(method, dict):
                raise InputError(f"{path}: {group}: every entry must be a mapping, got {method!r}")
            extra = [k for k in method if k not in METHOD_KEYS]
            if extra:
                raise InputError(f"{path}: {group}: {method.get('name')!r} has unknown key {extra[0]!r}")
            if "baseline" in method and method["baseline"] not in BASELINES:
                raise InputError(f"{path}: method {method.get('name')!r}: unknown baseline {method['baseline']!r} "
                                 f"(one of {', '.join(BASELINES)})")
    runs = config.get("pipeline_runs") or {}
    sources = [("pipeline", config.get("pipeline"))] + [(f"pipeline_runs.{k}", v) for k, v in runs.items()]
    sources += [(f"backbones.{b.get('name')}.pipeline", b.get("pipeline")) for b in config.get("backbones") or []
                if isinstance(b, dict)]
    for where_, options in sources:
        if options is not None:
            if not isinstance(options, dict):
                raise InputError(f"{path}: {where_} must be a mapping of run_pipeline settings")
            settings = {k: v for k, v in options.items() if k != "config"}  # `config`: run_pipeline's file
            check_config_values(settings, (PipelineConfig,), f"{path}: {where_}")


def seeds_of(config) -> list[int]:
    """`seeds: N` (0..N-1) or an explicit list of integers."""
    seeds = config.get("seeds", 5)
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        return list(range(seeds))
    if isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return list(seeds)
    raise InputError(f"{config.get('_path', 'config')}: seeds must be a positive integer or a list of integers, "
                     f"got {seeds!r}")


def flags(options: dict, explicit_bools: bool = False) -> list[str]:
    """{key: value} -> ['--key', 'value', ...]; None -> omitted, lists -> several values; booleans: a bare
    flag / omitted (argparse store_true), or `--key true|false` with `explicit_bools` (HfArgumentParser)."""
    out = []
    for key, value in options.items():
        if value is None or (value is False and not explicit_bools):
            continue
        out.append(f"--{key}")
        if isinstance(value, dict):  # run_pipeline's mappings (--tuning, --eval, ...) take JSON
            out.append(json.dumps(value))
            continue
        if isinstance(value, bool):
            if explicit_bools:
                out.append(str(value).lower())
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
        "seed": seed, "test_limit": config.get("test_limit"), **(method.get("options") or {}),
    }
    outputs = [{"method": method["name"], "setting": setting, "seed": seed, "metrics": "metrics.json"}]
    return Cell(group, method["name"], seed, "run_baselines.py", flags(options), outputs, setting=setting)


def pipeline_setting(setting: str, seed: int) -> str:
    """The pipeline's name for a grid setting (its eval/<name>/ directory)."""
    return "zero_shot" if setting == "zero-shot" else f"{setting}_seed{seed}"


def pipeline_cell(config, run: str, methods: list[dict], settings: list[str], seeds: list[int], group: str,
                  backbone: dict | None = None) -> Cell:
    """One run_pipeline run_dir for all seeds: its seed-independent phases (data, CoT data and tuning, source
    rec-tuning = the zero-shot model) run once, the K-shot phases once per seed. The zero-shot model is
    therefore reported once (first seed), not as seeds that would only repeat it."""
    runs = config.get("pipeline_runs") or {}
    if run not in runs:
        raise InputError(f"{config['_path']}: pipeline run {run!r} is not defined in pipeline_runs")
    options = {**(config.get("pipeline") or {}), **(runs[run] or {}), **((backbone or {}).get("pipeline") or {})}
    if config.get("test_limit"):  # baselines and pipeline evaluate on the same first N test records
        options["test_limit"] = config["test_limit"]
    k_shots = [int(s[1:]) for s in settings if s != "zero-shot"]
    if not k_shots:
        raise InputError(f"{config['_path']}: pipeline runs need at least one K in settings")
    options.update(seeds=list(seeds), k_shots=k_shots)
    outputs = [
        {"method": m["name"], "setting": s, "seed": seed,
         "metrics": f"{m['variant']}/eval/{pipeline_setting(s, seed)}/metrics.json"}
        for m in methods
        for s in settings
        for seed in (seeds[:1] if s == "zero-shot" else seeds)
    ]
    return Cell(group, f"pipeline-{run}", None, "run_pipeline.py", flags(options, explicit_bools=True), outputs,
                backbone=backbone["name"] if backbone else None)


def build_cells(config) -> list[Cell]:
    settings = [setting_key(s) for s in config.get("settings", ["zero-shot", 16, 64, 256])]
    seeds = seeds_of(config)
    cells = []

    def add(methods: list[dict], group: str, group_settings, backbone=None):
        pipelines = {}
        for method in methods:
            if "name" not in method:
                raise InputError(f"{config['_path']}: every method needs a 'name'")
            if "baseline" in method:
                for setting in group_settings:
                    for seed in seeds:
                        cells.append(baseline_cell(config, method, setting, seed, group))
            elif "pipeline" in method and "variant" in method:
                pipelines.setdefault(method["pipeline"], []).append(method)
            else:
                raise InputError(
                    f"{config['_path']}: method {method['name']!r} needs 'baseline', or 'pipeline' and 'variant'"
                )
        for run, run_methods in pipelines.items():
            cells.append(pipeline_cell(config, run, run_methods, group_settings, seeds, group, backbone))

    add(config["methods"], "main", settings)
    # an ablation that is a Table 1 method (w/o CoT = TALLRec here) reuses its cells: `same_as: TALLRec`
    add([a for a in config.get("ablations") or [] if "same_as" not in a], "ablation", settings)
    by_name = {m["name"]: m for m in config["methods"]}
    backbone_settings = [setting_key(s) for s in config.get("backbone_settings", settings)]
    for backbone in config.get("backbones") or []:
        names = backbone.get("methods", [config.get("ours", "TLRec")])
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(f"{config['_path']}: backbone {backbone.get('name')!r} names unknown method(s) {unknown}")
        if any("baseline" in by_name[n] for n in names):
            raise InputError(f"{config['_path']}: backbone {backbone.get('name')!r}: only pipeline methods have a backbone")
        before = len(cells)
        add([by_name[n] for n in names], "backbone", backbone_settings, backbone)
        for cell in cells[before:]:
            cell.backbone = backbone["name"]
    for cell in cells:
        parts = [cell.group] + ([slug(cell.backbone)] if cell.backbone else []) + [slug(cell.name)]
        cell.path = "/".join(parts + ([cell.setting, f"seed{cell.seed}"] if cell.setting else []))
    return cells


def runs_dir(config) -> Path:
    return Path(config["output_dir"]) / "runs"


def cell_dir(config, cell: Cell) -> Path:
    return runs_dir(config) / cell.path


def is_finished(config, cell: Cell) -> bool:
    return all((cell_dir(config, cell) / out["metrics"]).is_file() for out in cell.outputs)


def cell_argv(config, cell: Cell) -> list[str]:
    out = str(cell_dir(config, cell))
    return cell.args + (["--output_dir", out] if cell.script == "run_baselines.py" else ["--run_dir", out])


def write_cell_json(config, cell: Cell) -> None:
    info = {k: v for k, v in asdict(cell).items() if k in ("group", "seed", "backbone", "outputs")}
    info["command"] = shlex.join([sys.executable, cell.script, *cell_argv(config, cell)])
    atomic_write_json(cell_dir(config, cell) / "cell.json", info)


def run_cell(config, cell: Cell, in_process: bool = True) -> None:
    """Run one cell (in this process by default: no interpreter start-up per cell)."""
    write_cell_json(config, cell)
    argv = cell_argv(config, cell)
    logger.info("cell %s: %s %s", cell.path, cell.script, shlex.join(argv))
    _run_script(cell.script, argv, in_process)
    if not is_finished(config, cell):
        missing = [o["metrics"] for o in cell.outputs if not (cell_dir(config, cell) / o["metrics"]).is_file()]
        raise RuntimeError(f"cell {cell.path}: finished without writing {', '.join(missing)}")


def run_setup(config, in_process: bool = True, download: bool = False, mirror: str | None = None) -> None:
    """Each `setup` step whose `creates` path does not exist yet (data preparation, tiny model, CoT data).
    `download`/`mirror` go to the run_prepare_data steps: they fetch the published files they lack."""
    for n, step in enumerate(config.get("setup") or []):
        if "script" not in step or "creates" not in step:
            raise InputError(f"{config['_path']}: setup step {n} needs 'script' and 'creates'")
        if Path(step["creates"]).exists():
            continue
        args = dict(step.get("args") or {})
        if step["script"] == "run_prepare_data.py" and "k_shot" not in args:
            args.update({"download": True} if download else {}, **({"mirror": mirror} if mirror else {}))
        argv = flags(args)
        logger.info("setup %d: %s %s", n, step["script"], shlex.join(argv))
        _run_script(step["script"], argv, in_process)
        if not Path(step["creates"]).exists():
            raise RuntimeError(f"setup step {n} ({step['script']}) did not create {step['creates']}")


EXIT_INTERRUPTED = 143  # run_pipeline's status after SIGTERM (checkpoint saved): stop the grid, rerun resumes


class GridInterrupted(Exception):
    """A cell stopped on SIGTERM (SLURM preemption, timeout): the whole grid stops; rerunning resumes."""


def _run_script(script: str, argv: list[str], in_process: bool) -> None:
    if in_process:
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        module = importlib.import_module(Path(script).stem)
        main = getattr(module, "main")
        main = getattr(main, "__wrapped__", main)  # entry scripts may decorate main with cli_entry
        status = main(argv)
    else:
        status = subprocess.run([sys.executable, str(REPO_ROOT / script), *argv]).returncode
        if status not in (0, EXIT_INTERRUPTED, -signal.SIGTERM):
            raise RuntimeError(f"{script} exited with status {status}")
    if status in (EXIT_INTERRUPTED, -signal.SIGTERM):
        raise GridInterrupted(f"{script} was interrupted (SIGTERM)")


def run_local(config, cells: list[Cell], in_process: bool = True) -> list[str]:
    """Run every unfinished cell in order; a failing cell is logged and the grid goes on. Returns failures."""
    from tqdm.auto import tqdm

    todo = [c for c in cells if not is_finished(config, c)]
    logger.info("%d cells, %d finished, %d to run", len(cells), len(cells) - len(todo), len(todo))
    failures = []

    def on_sigterm(signum, frame):  # between or inside baseline cells; tuning phases install their own handler
        raise GridInterrupted("SIGTERM")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        _run_cells(config, todo, in_process, failures, tqdm)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return failures


def _run_cells(config, todo, in_process, failures, tqdm) -> None:
    for cell in tqdm(todo, desc="cells"):
        started = time.time()
        try:
            run_cell(config, cell, in_process=in_process)
        except GridInterrupted:
            logger.warning("cell %s interrupted: stopping the grid; rerun the same command to resume", cell.path)
            raise
        except (Exception, SystemExit) as exc:  # one broken cell must not stop the grid
            logger.error("cell %s failed: %s", cell.path, exc)
            failures.append(cell.path)
        else:
            logger.info("cell %s done in %.1f s", cell.path, time.time() - started)


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
    for ablation in config.get("ablations") or []:
        if "same_as" in ablation:
            rows += [{**r, "group": "ablation", "method": ablation["name"]}
                     for r in rows if r["group"] == "main" and r["method"] == ablation["same_as"]]
    methods = [m["name"] for m in config["methods"]]
    settings = [setting_key(s) for s in config.get("settings", ["zero-shot", 16, 64, 256])]
    return write_report(
        rows, Path(config["output_dir"]) / "results", metrics=tuple(config.get("metrics", ("auc", "ndcg@10"))),
        ours=config.get("ours", "TLRec"), methods=methods, settings=settings, title=config.get("title"),
        ablation_order=[config.get("ours", "TLRec")] + [a["name"] for a in config.get("ablations") or []],
        backbone_order=[b["name"] for b in config.get("backbones") or []] or None,
    )
