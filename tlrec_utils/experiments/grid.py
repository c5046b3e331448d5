"""The paper's experiment grid as one command (run_experiments.py): settings x seeds x methods, each cell a
run directory; finished cells are skipped; local or SLURM array execution; then Table 1 and the figures.

Config (YAML or JSON; typed by `GridConfig` and the dataclasses beside it: an unknown key or a wrong type is one
error line naming the key and the file), e.g. configs/experiments/movie_tiny.yaml (relative paths are read from
the config file's folder, see `resolve_grid_paths`):

    name: movie_tiny
    output_dir: experiments/movie_tiny
    target: {train: ..., valid: ..., test: ..., items: ...}      # prepared target domain (baselines)
    source: {train: ..., valid: ...}                             # prepared source domain (zero-shot baselines)
    settings: [zero-shot, 16, 64, 256]
    seeds: [0, 1, 2, 3, 4]                      # always a list (a bare number is refused)
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

import contextlib
import dataclasses
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.paths import REPO_ROOT
from ..errors import EXIT_INTERRUPTED, InputError, mask_secrets
from ..evaluation.metrics import NUM_NEGATIVES
from ..fileio import atomic_write_json, atomic_write_text, read_config_file
from .command_line import flags
from .reporting import DEFAULT_METRICS

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


def setting_key(setting, where: str = "settings") -> str:
    s = str(setting).strip().lower()
    if s in ("zero-shot", "zero_shot", "zeroshot", "0"):
        return "zero-shot"
    s = s.lstrip("k")
    if not s.isdigit():
        raise InputError(f"{where}: {setting!r} is neither zero-shot nor a K")
    if int(s) < 1:
        raise InputError(f"{where}: {setting!r}: K must be at least 1 (the setting without target records is "
                         "written zero-shot)")
    return f"k{int(s)}"


# ---- the grid config, typed ----------------------------------------------------------------------------------


@dataclass
class Splits:
    """A prepared domain's record files (`target:`, `source:`)."""

    train: str | None = None
    valid: str | None = None
    test: str | None = None
    items: str | None = None


@dataclass
class MethodSpec:
    """A Table 1 row or an ablation: a baseline, a variant of a pipeline run, or `same_as` a Table 1 method."""

    name: str
    baseline: str | None = None  # run_baselines --model
    options: dict = field(default_factory=dict)  # more run_baselines flags
    pipeline: str | None = None  # a key of pipeline_runs
    variant: str | None = None  # a run_pipeline method (pipeline.METHODS)
    same_as: str | None = None  # an ablation that is this Table 1 method: its results again


@dataclass
class BackboneSpec:
    """Figure 3: the named methods again on another base model."""

    name: str
    methods: list[str] | None = None  # default: [ours]
    pipeline: dict = field(default_factory=dict)  # run_pipeline settings of this backbone (base_model, ...)


@dataclass
class SetupStep:
    """A script run once before any cell, unless `creates` exists already."""

    script: str
    creates: str
    args: dict = field(default_factory=dict)  # its flags


@dataclass
class SlurmSettings:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus: str | None = None  # per GPU job (tuning and evaluation phases)
    time: str = "24:00:00"
    cpus: int = 8
    mem: str = "64G"
    max_parallel: int = 16
    job_name: str | None = None
    python: str = "python"
    setup: list[str] = field(default_factory=list)  # shell lines run first in every job (module load, ...)
    extra_directives: list[str] = field(default_factory=list)  # more #SBATCH lines


@dataclass
class GridConfig:
    """A grid config file (see the module docstring), every key checked against these fields."""

    output_dir: str
    target: Splits
    methods: list[MethodSpec]
    name: str = "grid"
    title: str | None = None
    source: Splits = field(default_factory=Splits)
    settings: list[str | int] = field(default_factory=lambda: ["zero-shot", 16, 64, 256])  # setting_key()s once loaded
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # a list in every config (validation.check_seeds)
    test_limit: int | None = None
    ours: str = "TLRec"
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS))
    pipeline: dict = field(default_factory=dict)  # run_pipeline settings shared by every pipeline run
    pipeline_runs: dict = field(default_factory=dict)  # run name -> its run_pipeline settings
    ablations: list[MethodSpec] = field(default_factory=list)
    backbones: list[BackboneSpec] = field(default_factory=list)
    backbone_settings: list[str | int] | None = None  # default: settings
    setup: list[SetupStep] = field(default_factory=list)
    slurm: SlurmSettings = field(default_factory=SlurmSettings)
    estimate: dict = field(default_factory=dict)  # GPU-hours assumptions (ESTIMATE_DEFAULTS)
    path: str = "config"  # the file it was read from (error messages, SLURM job commands)


def _typed(dtype, values, where: str):
    """`values` (a mapping of the file) as `dtype`: unknown and missing keys and wrong types name the key and the
    file; nested mappings and lists stay as they are (the caller types them)."""
    from ..validation import check_config_values

    if isinstance(values, dtype):  # the field's default: not in the file
        return values
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping, got {type(values).__name__}")
    known = [f.name for f in dataclasses.fields(dtype) if f.name != "path"]
    unknown = [k for k in values if k not in known]
    if unknown:
        raise InputError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(known)})")
    missing = [f.name for f in dataclasses.fields(dtype) if f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING and values.get(f.name) is None]
    if missing:
        raise InputError(f"{where}: missing '{missing[0]}'")
    return dtype(**check_config_values({k: v for k, v in values.items() if v is not None}, (dtype,), where))


def _typed_list(dtype, items, where: str) -> list:
    if not isinstance(items, list):
        raise InputError(f"{where} must be a list, got {type(items).__name__}")
    out = []
    for n, item in enumerate(items):
        label = f"{where}: {item.get('name')!r}" if isinstance(item, dict) and "name" in item else f"{where} entry {n}"
        out.append(_typed(dtype, item, label))
    return out


def load_config(path, overrides: list[str] | None = None) -> GridConfig:
    """The grid config with `--override`s applied, checked up front: unknown keys (a typo such as `seedz`),
    types, seeds, settings, baseline names and pipeline options fail here with the key and the file, before any
    cell runs."""
    path = Path(path)
    raw = apply_overrides(resolve_grid_paths(read_config_file(path), path), overrides or [])
    return grid_config(raw, str(path))


def resolve_grid_paths(raw: dict, path) -> dict:
    """A grid file's relative paths taken from its folder (paths.resolve_config_paths): output_dir, the target and
    source files, setup steps (creates, their args), baseline options and every run_pipeline mapping (its
    `config` file included)."""
    from ..data.paths import resolve_config_paths

    out = resolve_config_paths(raw, path, keys={"output_dir"})
    for domain in ("target", "source"):
        out[domain] = resolve_config_paths(raw.get(domain), path, keys="all")
    if isinstance(raw.get("setup"), list):
        out["setup"] = [{**resolve_config_paths(step, path, keys={"creates"}),
                         "args": resolve_config_paths(step.get("args"), path)} if isinstance(step, dict) else step
                        for step in raw["setup"]]
    for group in ("methods", "ablations"):
        if isinstance(raw.get(group), list):
            out[group] = [{**m, "options": resolve_config_paths(m["options"], path)}
                          if isinstance(m, dict) and isinstance(m.get("options"), dict) else m for m in raw[group]]
    out["pipeline"] = resolve_config_paths(raw.get("pipeline"), path)
    if isinstance(raw.get("pipeline_runs"), dict):
        out["pipeline_runs"] = {k: resolve_config_paths(v, path) for k, v in raw["pipeline_runs"].items()}
    if isinstance(raw.get("backbones"), list):
        out["backbones"] = [{**b, "pipeline": resolve_config_paths(b["pipeline"], path)}
                            if isinstance(b, dict) and isinstance(b.get("pipeline"), dict) else b
                            for b in raw["backbones"]]
    return {k: v for k, v in out.items() if v is not None or k in raw}


def grid_config(raw: dict, path: str) -> GridConfig:
    """A GridConfig from a config file's mapping (`path` names it in errors)."""
    from ..arguments import BaselineArguments
    from ..baselines.registry import BASELINES
    from ..validation import check_number, check_output_dir, check_seed, check_settings
    from .pipeline import METHODS, PipelineConfig

    config = _typed(GridConfig, raw, path)
    config.path = path
    config.target = _typed(Splits, config.target, f"{path}: target")
    config.source = _typed(Splits, config.source, f"{path}: source")
    config.methods = _typed_list(MethodSpec, config.methods, f"{path}: methods")
    config.ablations = _typed_list(MethodSpec, config.ablations, f"{path}: ablations")
    config.backbones = _typed_list(BackboneSpec, config.backbones, f"{path}: backbones")
    config.setup = _typed_list(SetupStep, config.setup, f"{path}: setup")
    config.slurm = _typed(SlurmSettings, config.slurm, f"{path}: slurm")
    for seed in config.seeds:
        check_seed(f"{path}: seeds", seed)
    config.settings = [setting_key(s, f"{path}: settings") for s in config.settings]
    config.backbone_settings = [setting_key(s, f"{path}: backbone_settings")
                                for s in (config.backbone_settings or config.settings)]
    check_number(f"{path}: test_limit", config.test_limit, 1)
    check_output_dir(config.output_dir, f"{path}: output_dir")
    for group, methods in (("methods", config.methods), ("ablations", config.ablations)):
        for method in methods:
            if method.baseline is not None and method.baseline not in BASELINES:
                raise InputError(f"{path}: method {method.name!r}: unknown baseline {method.baseline!r} "
                                 f"(one of {', '.join(BASELINES)})")
            if method.baseline is not None:  # its options: run_baselines flags, checked as run_baselines would
                check_settings((BaselineArguments,), method.options, path, f"{group}: {method.name!r}: options.")
            if method.variant is not None and method.variant not in METHODS:
                raise InputError(f"{path}: {group}: method {method.name!r}: unknown variant {method.variant!r} "
                                 f"(a run_pipeline method: {', '.join(METHODS)})")
            pipeline_method = method.pipeline is not None and method.variant is not None
            if method.same_as is None and method.baseline is None and not pipeline_method:
                raise InputError(f"{path}: {group}: method {method.name!r} needs 'baseline', or 'pipeline' and "
                                 "'variant'")
    names = [m.name for m in config.methods] + [a.name for a in config.ablations]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:
        raise InputError(f"{path}: methods: the name {twice!r} is given twice (Table 1 rows and ablations need "
                         "distinct names: results under one name would be averaged as if they were seeds)")
    backbone_names = [b.name for b in config.backbones]
    twice = next((n for n in backbone_names if backbone_names.count(n) > 1), None)
    if twice is not None:
        raise InputError(f"{path}: backbones: the name {twice!r} is given twice")
    sources = [("pipeline", config.pipeline)] + [(f"pipeline_runs.{k}", v) for k, v in config.pipeline_runs.items()]
    sources += [(f"backbones.{b.name}.pipeline", b.pipeline) for b in config.backbones]
    for where_, options in sources:
        if options is not None:
            if not isinstance(options, dict):
                raise InputError(f"{path}: {where_} must be a mapping of run_pipeline settings")
            settings = {k: v for k, v in options.items() if k != "config"}  # `config`: run_pipeline's file
            check_settings((PipelineConfig,), settings, path, f"{where_}.")  # every value, mappings included
    for n, step in enumerate(config.setup):
        types_ = script_arguments(step.script)
        if types_ is None and not (REPO_ROOT / step.script).is_file():
            raise InputError(f"{path}: setup entry {n}: script {step.script!r} not found (setup runs an entry "
                             f"script of {REPO_ROOT}: {', '.join(ENTRY_SCRIPTS)})")
        if types_ is not None:
            check_settings(types_, step.args, path, f"setup entry {n}: args.")
    return config


ENTRY_SCRIPTS = ("run_prepare_data.py", "run_cot_generation.py", "run_tuning.py", "run_eval.py", "run_pipeline.py",
                 "run_baselines.py")


def script_arguments(script: str) -> tuple | None:
    """The dataclasses an entry script parses its flags into (a setup step's args are checked against them);
    None for another script."""
    from .. import arguments as A

    if script == "run_prepare_data.py":
        from ..data.prepare import PrepareConfig

        return PrepareConfig, A.KShotArguments
    if script == "run_cot_generation.py":
        from ..cot.generation import CotConfig

        return (CotConfig,)
    if script in ("run_tuning.py", "run_eval.py"):
        from .pipeline import phase_argument_types

        return phase_argument_types("tuning" if script == "run_tuning.py" else "eval")
    if script == "run_baselines.py":
        return (A.BaselineArguments,)
    if script == "run_pipeline.py":
        from .pipeline import PipelineConfig

        return (PipelineConfig,)
    return None


def check_grid(config: GridConfig, cells: list[Cell], launcher: str = "local") -> None:
    """What only the merged settings of a pipeline run show, before any cell or setup step runs: each pipeline
    cell's run_pipeline config (the grid's `pipeline`, the run's and the backbone's settings over the file
    `pipeline.config` names) parses and holds every variant a method asks of it. `launcher` local: the cells run
    here, so `launcher: accelerate` needs the command now."""
    from .pipeline import check_launcher, check_values

    for cell in cells:
        if cell.script != "run_pipeline.py":
            continue
        cfg = cell_pipeline_config(config, cell)
        check_values(cfg)
        for out in cell.outputs:
            variant = out["metrics"].split("/", 1)[0]
            if variant not in cfg.methods:
                run = cell.name.removeprefix("pipeline-")
                raise InputError(f"{config.path}: method {out['method']!r}: variant {variant!r} is not a method of "
                                 f"pipeline run {run!r} (its methods: {', '.join(cfg.methods)}); add it to "
                                 f"pipeline_runs.{run}.methods")
        if launcher == "local":
            check_launcher(cfg)


def baseline_cell(config: GridConfig, method: MethodSpec, setting: str, seed: int, group: str) -> Cell:
    target, source = config.target, config.source
    if setting == "zero-shot":
        if source.train is None:
            raise InputError(f"{config.path}: zero-shot needs source.train (baselines train on the source domain)")
        data = {"train_file": source.train, "valid_file": source.valid}
    else:
        if target.train is None or target.test is None:
            raise InputError(f"{config.path}: baselines need target.train and target.test")
        data = {"train_file": target.train, "valid_file": target.valid, "k_shot": int(setting[1:])}
    options = {
        "model": method.baseline, **data, "test_file": target.test, "items_file": target.items,
        "seed": seed, "test_limit": config.test_limit, **method.options,
    }
    outputs = [{"method": method.name, "setting": setting, "seed": seed, "metrics": "metrics.json"}]
    return Cell(group, method.name, seed, "run_baselines.py", flags(options), outputs, setting=setting)


def pipeline_setting(setting: str, seed: int) -> str:
    """The pipeline's name for a grid setting (its eval/<name>/ directory)."""
    return "zero_shot" if setting == "zero-shot" else f"{setting}_seed{seed}"


def pipeline_cell(config: GridConfig, run: str, methods: list[MethodSpec], settings: list[str], seeds: list[int],
                  group: str, backbone: BackboneSpec | None = None) -> Cell:
    """One run_pipeline run_dir for all seeds: its seed-independent phases (data, CoT data and tuning, source
    rec-tuning = the zero-shot model) run once, the K-shot phases once per seed. The zero-shot model is
    therefore reported once (first seed), not as seeds that would only repeat it."""
    if run not in config.pipeline_runs:
        raise InputError(f"{config.path}: pipeline run {run!r} is not defined in pipeline_runs")
    options = {**config.pipeline, **(config.pipeline_runs[run] or {}), **(backbone.pipeline if backbone else {})}
    if config.test_limit:  # baselines and pipeline evaluate on the same first N test records
        options["test_limit"] = config.test_limit
    k_shots = [int(s[1:]) for s in settings if s != "zero-shot"]
    if not k_shots:
        raise InputError(f"{config.path}: pipeline runs need at least one K in settings")
    options.update(seeds=list(seeds), k_shots=k_shots)
    outputs = [
        {"method": m.name, "setting": s, "seed": seed,
         "metrics": f"{m.variant}/eval/{pipeline_setting(s, seed)}/metrics.json"}
        for m in methods
        for s in settings
        for seed in (seeds[:1] if s == "zero-shot" else seeds)
    ]
    return Cell(group, f"pipeline-{run}", None, "run_pipeline.py", flags(options, explicit_bools=True), outputs,
                backbone=backbone.name if backbone else None)


def build_cells(config: GridConfig) -> list[Cell]:
    settings, seeds = config.settings, config.seeds
    cells = []

    def add(methods: list[MethodSpec], group: str, group_settings, backbone=None):
        pipelines = {}
        for method in methods:
            if method.baseline is not None:
                for setting in group_settings:
                    for seed in seeds:
                        cells.append(baseline_cell(config, method, setting, seed, group))
            else:
                pipelines.setdefault(method.pipeline, []).append(method)
        for run, run_methods in pipelines.items():
            cell = pipeline_cell(config, run, run_methods, group_settings, seeds, group, backbone)
            # ablations of a pipeline run Table 1 also uses: the same run directory (data, CoT, shared phases
            # once), its outputs marked with their group
            same = next((c for c in cells if c.script == "run_pipeline.py" and c.name == cell.name
                         and c.backbone == cell.backbone and c.group != group), None)
            if same is not None and same.args == cell.args:
                same.outputs += [{**o, "group": group} for o in cell.outputs]
            else:
                cells.append(cell)

    add(config.methods, "main", settings)
    # an ablation that is a Table 1 method (w/o CoT = TALLRec here) reuses its cells: `same_as: TALLRec`
    add([a for a in config.ablations if a.same_as is None], "ablation", settings)
    by_name = {m.name: m for m in config.methods}
    for backbone in config.backbones:
        names = backbone.methods or [config.ours]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise InputError(f"{config.path}: backbone {backbone.name!r} names unknown method(s) {unknown}")
        if any(by_name[n].baseline is not None for n in names):
            raise InputError(f"{config.path}: backbone {backbone.name!r}: only pipeline methods have a backbone")
        before = len(cells)
        add([by_name[n] for n in names], "backbone", config.backbone_settings, backbone)
        for cell in cells[before:]:
            cell.backbone = backbone.name
    for cell in cells:
        parts = [cell.group] + ([slug(cell.backbone)] if cell.backbone else []) + [slug(cell.name)]
        cell.path = "/".join(parts + ([cell.setting, f"seed{cell.seed}"] if cell.setting else []))
    return cells


def runs_dir(config: GridConfig) -> Path:
    return Path(config.output_dir) / "runs"


def cell_dir(config, cell: Cell) -> Path:
    return runs_dir(config) / cell.path


CELL_DONE = "cell_done.json"  # a baseline cell's fingerprint, written after its metrics.json


def cell_fingerprint(config, cell: Cell) -> str:
    """A baseline cell's fingerprint: its script, its flags and the content of the files they name (a pipeline
    cell has one per phase: tlrec_utils.experiments.pipeline.phase_fingerprint)."""
    import os

    from ..provenance import fingerprint, path_fingerprint

    inputs = {a: path_fingerprint(a) for a in cell.args if os.sep in a and not a.startswith("-")}
    return fingerprint({"script": cell.script, "args": cell.args, "inputs": inputs})


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def current_outputs(config, cell: Cell) -> list[bool]:
    """Per output of `cell`: its metrics.json exists and was made from the current config (a baseline cell's
    fingerprint in cell_done.json; for a pipeline cell, the fingerprint of the evaluation phase that wrote it)."""
    folder = cell_dir(config, cell)
    if cell.script != "run_pipeline.py":
        done = _read_json(folder / CELL_DONE) or {}
        ok = done.get("fingerprint") == cell_fingerprint(config, cell)
        return [ok and (folder / o["metrics"]).is_file() for o in cell.outputs]
    plan, phases = _cell_plan(config, cell)
    by_dir = {str(p.dir): p.key for p in phases}
    out = []
    for o in cell.outputs:
        key = by_dir.get(str((folder / o["metrics"]).resolve().parent))
        out.append(key is not None and plan[key][2] == "reused" and (folder / o["metrics"]).is_file())
    return out


def _cell_plan(config, cell: Cell):
    """(fingerprints and statuses of the phases, the phases) of a pipeline cell; none when it cannot be planned
    yet (its raw data is not there)."""
    from .pipeline import plan_fingerprints

    cfg = cell_pipeline_config(config, cell)
    try:
        phases = cell_phases(config, cell)
    except InputError:
        return {}, []
    return plan_fingerprints(cfg, phases), phases


def is_finished(config, cell: Cell) -> bool:
    return all(current_outputs(config, cell))


def stale_cells(config, cells: list[Cell]) -> list[str]:
    """Results on disk that no current cell vouches for: cell folders this config does not have (another
    config's, a method since removed), and current cells whose results were made from other settings."""
    root = runs_dir(config).resolve()
    known = {cell_dir(config, c).resolve(): c for c in cells}
    out = []
    for cell_file in sorted(root.rglob("cell.json")) if root.is_dir() else []:
        folder = cell_file.parent
        cell = known.get(folder)
        if cell is None:
            out.append(f"{folder.relative_to(root)} (not a cell of this config)")
            continue
        for o, ok in zip(cell.outputs, current_outputs(config, cell)):
            if not ok and (folder / o["metrics"]).is_file():
                out.append(f"{cell.path}/{o['metrics']} (made from other settings)")
    return out


def check_on_change(config, cells: list[Cell]) -> None:
    """`--on_change error`: refuse (one line) before any cell runs when one would redo results made from other
    settings."""
    for cell in cells:
        folder = cell_dir(config, cell)
        if cell.script == "run_pipeline.py":
            plan, _ = _cell_plan(config, cell)
            stale = [k for k, entry in plan.items() if entry[2] == "rerun"]
            if stale:
                raise InputError(f"--on_change error: cell {cell.path}: {len(stale)} phase(s) were made from other "
                                 f"settings or inputs, first {stale[0]}; rerun with --on_change rerun, or use another "
                                 "output_dir")
        elif folder.is_dir() and any(folder.iterdir()) and not is_finished(config, cell):
            raise InputError(f"--on_change error: cell {cell.path} holds results made from other settings; rerun "
                             "with --on_change rerun, or use another output_dir")


def check_one_test_set(config, cells: list[Cell]) -> None:
    """Every row of a table is scored on the same test records and candidate items: a pipeline cell's prepared
    target test.json and items.json must be the grid's `target:` files (same content), else one line, exit 2."""
    from ..provenance import path_fingerprint

    for cell in cells:
        if cell.script != "run_pipeline.py":
            continue
        prepared = Path(cell_pipeline_config(config, cell).run_dir) / "data" / "target"
        for split, name in (("test", "test.json"), ("items", "items.json")):
            grid_file = getattr(config.target, split)
            ours = prepared / name
            if grid_file and ours.is_file() and Path(grid_file).is_file() and \
                    path_fingerprint(ours) != path_fingerprint(grid_file):
                raise InputError(f"{config.path}: target.{split} {grid_file} differs from {ours}, the {split} file "
                                 f"pipeline cell {cell.path} prepared: one test set per table; prepare both the "
                                 f"same way (or point target.{split} at {ours})")


def cell_argv(config, cell: Cell) -> list[str]:
    out = str(cell_dir(config, cell))
    if cell.script == "run_baselines.py":
        return cell.args + ["--output_dir", out]
    return ["--run_dir", out] + cell.args  # first: a `tuning_args` list takes the rest of the line


def write_cell_json(config, cell: Cell) -> None:
    info = {k: v for k, v in asdict(cell).items() if k in ("group", "seed", "backbone", "outputs")}
    info["command"] = mask_secrets(shlex.join([sys.executable, cell.script, *cell_argv(config, cell)]))
    if cell.script != "run_pipeline.py":
        info["fingerprint"] = cell_fingerprint(config, cell)
    atomic_write_json(cell_dir(config, cell) / "cell.json", info)


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
        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        module = importlib.import_module(Path(script).stem)
        main = module.main
        main = getattr(main, "__wrapped__", main)  # entry scripts may decorate main with cli_entry
        status = main(argv)
    else:
        status = subprocess.run([sys.executable, str(REPO_ROOT / script), *argv]).returncode
        if status not in (0, EXIT_INTERRUPTED, -signal.SIGTERM):
            raise RuntimeError(f"{script} exited with status {status}")
    if status in (EXIT_INTERRUPTED, -signal.SIGTERM):
        raise GridInterrupted(f"{script} was interrupted (SIGTERM)")


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


def report(config) -> dict:
    """results/: Table 1 and the figures from the cells of this config whose results match it (fingerprints),
    and results.json (every row with its cell, the stale results left out, the test file's hash)."""
    from ..provenance import path_fingerprint
    from .reporting import write_report

    cells = build_cells(config)
    check_one_test_set(config, cells)
    rows, pending = [], 0
    for cell in cells:
        for out, ok in zip(cell.outputs, current_outputs(config, cell)):
            if not ok:
                pending += 1
                continue
            metrics = json.loads((cell_dir(config, cell) / out["metrics"]).read_text(encoding="utf-8"))
            rows.append({"group": out.get("group") or cell.group, "backbone": cell.backbone, "seed": out["seed"],
                         "method": out["method"], "setting": out["setting"], "metrics": metrics, "cell": cell.path})
    stale = stale_cells(config, cells)
    if pending:
        logger.warning("%d result(s) of this config not finished (or made from other settings): left out", pending)
    if stale:
        logger.warning("%d stale result(s) on disk, never tabled: %s", len(stale), "; ".join(stale))
    test_file = config.target.test
    test_hash = path_fingerprint(test_file) if test_file else None
    footer = f"Every row is scored on the test records of {test_file} ({test_hash})." if test_hash else None
    out_dir = Path(config.output_dir) / "results"
    atomic_write_json(out_dir / "results.json", {"test_file": {"path": test_file, "fingerprint": test_hash},
                                                 "rows": rows, "pending": pending, "stale": stale})
    for ablation in config.ablations:
        if ablation.same_as is not None:
            rows += [{**r, "group": "ablation", "method": ablation.name}
                     for r in rows if r["group"] == "main" and r["method"] == ablation.same_as]
    written = write_report(
        rows, out_dir, metrics=tuple(config.metrics), ours=config.ours, footer=footer,
        methods=[m.name for m in config.methods], settings=config.settings, title=config.title,
        ablation_order=[config.ours] + [a.name for a in config.ablations],
        backbone_order=[b.name for b in config.backbones] or None,
    )
    for name in ("table1.md", "table1.csv", "ablation.png", "backbones.png"):  # an earlier report's, now empty
        if name not in written and (out_dir / name).is_file():
            (out_dir / name).unlink()
    return {"results.json": out_dir / "results.json", **written}


# ---- overrides, the plan (--dry_run) and its GPU-hours estimate ----------------------------------------------

GRID_KEYS = {f.name for f in dataclasses.fields(GridConfig)} - {"path"}


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """`--override KEY=VALUE` (values read as YAML): a grid key (`seeds=[0]`, `settings=[zero-shot,16]`,
    `slurm.partition=gpu`, `pipeline_runs.main.methods=[tlrec]`: dots walk into mappings), else a run_pipeline
    setting of every pipeline run and backbone (`base_model=models/tiny`, `start_adapter=null`,
    `teacher=published`, `kshot_tuning={load_in_8bit: false}`: a mapping adds to the recipe's mapping)."""
    from ..arguments import yaml_value

    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"--override: expected KEY=VALUE, got {item!r}")
        value = yaml_value(text)
        parts = key.split(".")
        if parts[0] in GRID_KEYS:
            node = config
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[parts[-1]] = value
            continue
        pipeline = config.setdefault("pipeline", {})
        if "config" in pipeline:  # inline the pipeline config file, so an override can also unset its values
            from ..data.paths import resolve_config_paths

            nested = Path(pipeline.pop("config"))
            inlined = resolve_config_paths(read_config_file(nested), nested)
            for name, val in pipeline.items():
                inlined[name] = {**inlined[name], **val} if isinstance(val, dict) and isinstance(
                    inlined.get(name), dict) else val
            pipeline.clear()
            pipeline.update(inlined)
        targets = [pipeline]
        targets += [b["pipeline"] for b in config.get("backbones") or [] if key in (b.get("pipeline") or {})]
        for target in targets:
            if isinstance(value, dict) and isinstance(target.get(key), dict):
                target[key] = {**target[key], **value}
            else:
                target[key] = value
    return config


MEASURED_BACKBONE_B = 7.0  # the measured model's size (billions of parameters)

ESTIMATE_DEFAULTS = {
    # a config's `estimate:` mapping overrides any of these; train_tokens_per_s None: the measured figure above
    # (with or without gradient checkpointing, as the cell's tuning settings say; a backbone larger than ~8B
    # scaled by 7B / its size, an assumption); the forward figure is an assumption
    "train_tokens_per_s": None,
    "eval_tokens_per_s": 15000.0,  # forward passes only (assumed; bench/gpu_check.sh: scoring 56.4 prompts/s)
    "tokens_per_record": {"rec": 300, "cot": 700},
    "liked_share": 0.55,  # test records ranked among the negatives (sampled NDCG)
    # record counts of files that do not exist yet: the known release sizes (KNOWN_RECORDS), else these, marked
    # assumed (CoT: users hit x 3 records, x the share of stages trained)
    "records": {"cot": 3000, "source": 8000, "valid": 1000, "test": 1000, "target": 8000},
}

# records per split of the published releases at the pipeline's defaults (max_windows 10000, split 8:1:1): the
# TLRec authors' Netflix and Amazon-Book (preprocess_data_book.py @561abcf lines 9-12: the last 10,000 windows,
# 8:1:1; the release's csv files), MovieLens-100K prepared as TALLRec (docs/data.md), TALLRec's Book records
# (valid.json and test.json of data/book @c1db29c; its train.json is not counted here)
KNOWN_RECORDS = {
    "netflix": {"train": 8000, "valid": 1000, "test": 1000},
    "amazon-book": {"train": 8000, "valid": 1000, "test": 1000},
    "ml-100k": {"train": 8000, "valid": 1000, "test": 1000},
    "movie": {"train": 8000, "valid": 1000, "test": 1000},
    "book": {"valid": 2427, "test": 2427},
}


def _last_flag(argv: list[str], name: str):
    value = None
    for i, arg in enumerate(argv[:-1]):
        if arg == name:
            value = argv[i + 1]
    return value


def _count_records(path, role: str, est: dict, cache: dict, subdirs: dict | None = None) -> int:
    """Records in `path` (read when the file exists), else the release's known size, else the assumed count;
    `cache["origin"]` notes where each count came from (the dry run prints it)."""
    origin = cache.setdefault("origin", {})
    if path and path not in cache:
        p = Path(path)
        if p.is_file():
            cache[path] = len(json.loads(p.read_text(encoding="utf-8")))
            origin[path] = "read"
        else:
            which, split = p.parent.name, p.stem
            known = KNOWN_RECORDS.get((subdirs or {}).get(which, ""), {}).get(split)
            if p.parent.parent.name == "data" and known:
                cache[path] = known
                origin[path] = f"known size of the {subdirs[which]} release"
            else:
                cache[path] = est["records"][role]
                origin[path] = f"assumed (estimate.records.{role})"
    return cache.get(path) or est["records"][role]


def phase_tokens(phase, est: dict, cache: dict, subdirs: dict | None = None) -> tuple[float, float]:
    """(training tokens, forward-only tokens) of one pipeline phase: records x epochs x tokens per record,
    validation passes, and test prompts (with the ranking candidates); an upper bound (early stopping may stop
    sooner)."""
    import math

    argv = phase.argv
    tpr = est["tokens_per_record"]
    if phase.kind == "tuning":
        train = _last_flag(argv, "--train_files")
        role = "cot" if "cot" in phase.key else ("source" if "source" in phase.key else "target")
        n = _count_records(train, role, est, cache, subdirs)
        if role == "cot" and "--stages" in argv:  # stages: the values after the flag
            i = argv.index("--stages") + 1
            while i < len(argv) and not argv[i].startswith("--"):
                i += 1
            n = n * (i - argv.index("--stages") - 1) / 3
        if _last_flag(argv, "--k_shot"):
            n = min(n, int(_last_flag(argv, "--k_shot")))
        epochs = float(_last_flag(argv, "--num_train_epochs") or 1)
        train_tokens = n * epochs * tpr["cot" if role == "cot" else "rec"]
        forward = 0.0
        if _last_flag(argv, "--val_file"):
            batch = int(_last_flag(argv, "--per_device_train_batch_size") or 8) * int(
                _last_flag(argv, "--gradient_accumulation_steps") or 1)
            steps = math.ceil(n * epochs / batch)
            evals = steps // max(1, int(float(_last_flag(argv, "--eval_steps") or 10)))
            n_val = _count_records(_last_flag(argv, "--val_file"), "valid", est, cache, subdirs)
            max_val = _last_flag(argv, "--max_val_records")
            forward = evals * min(n_val, int(max_val) if max_val else n_val) * tpr["rec"] * 2  # loss + answer
        return train_tokens, forward
    if phase.kind == "eval":
        n = _count_records(_last_flag(argv, "--test_file"), "test", est, cache, subdirs)
        if _last_flag(argv, "--limit"):
            n = min(n, int(_last_flag(argv, "--limit")))
        negatives = int(_last_flag(argv, "--num_negatives") or NUM_NEGATIVES)
        return 0.0, n * (1 + est["liked_share"] * (negatives + 1)) * tpr["rec"]
    return 0.0, 0.0


# Measured training throughput per GPU (bench/gpu_check.sh writes it; docs/measurements.md, GPU checks): LoRA r=8
# on q,v of a LLaMA-7B-shaped model, records <= 512 tokens (mean 424), bf16, one GPU; a row per batch setting
MEASURED_FILE = Path(__file__).resolve().parents[2] / "bench" / "measured_throughput.json"


def _tuning_setting(pipeline_config, key: str):
    values = [(getattr(pipeline_config, name) or {}).get(key)
              for name in ("tuning", "cot_tuning", "source_tuning", "kshot_tuning")]
    return next((v for v in values if v not in (None, "")), None)


def measured_train_figure(pipeline_config) -> tuple[float, str]:
    """(tokens/s, where from): the MEASURED_FILE row of the cell's batches (padded, or packed micro batches when
    --max_tokens_per_batch), checkpointing and attention kernel; the padded row when that one was not measured."""
    ckpt = "_checkpointing" if str(_tuning_setting(pipeline_config, "gradient_checkpointing")).lower() == "true" else ""
    kernel = "flash_attention_2" if _tuning_setting(pipeline_config, "attn_implementation") == "flash_attention_2" \
        else "sdpa"
    rows = "packed_budget" if _tuning_setting(pipeline_config, "max_tokens_per_batch") else "padded"
    measured = json.loads(MEASURED_FILE.read_text(encoding="utf-8"))
    figures = measured["train_tokens_per_s"]
    key = next(k for k in (f"{rows}{ckpt}_{kernel}", f"{rows}{ckpt}_sdpa", f"padded{ckpt}_sdpa") if k in figures)
    figure = float(figures[key])
    return figure, (f"measured {figure:,.0f} tokens/s: LoRA 7B on one {measured['card']} "
                    f"{'with' if ckpt else 'without'} gradient checkpointing, {key.replace('_', ' ')} "
                    f"({measured['date']}, bench/{MEASURED_FILE.name})")


def train_throughput(est: dict, pipeline_config) -> tuple[float, str]:
    """(training tokens/s per GPU, where the figure comes from) for a pipeline cell."""
    if est.get("train_tokens_per_s"):
        return float(est["train_tokens_per_s"]), "estimate.train_tokens_per_s of the config"
    import re

    figure, what = measured_train_figure(pipeline_config)
    match = re.search(r"(\d+(?:\.\d+)?)b\b", str(pipeline_config.base_model or "").lower())
    size = float(match.group(1)) if match else None
    if size and size > 8:
        figure = figure * MEASURED_BACKBONE_B / size
        what += f" x 7/{size:g} for a {size:g}B backbone (assumed: inversely proportional to its size)"
    elif not pipeline_config.base_model:
        what += " (the cell builds the tiny model: far faster in fact)"
    return figure, what


def cell_phases(config, cell: Cell, check_data: bool = True):
    """The pipeline phases of a pipeline cell (experiments.pipeline.pipeline_phases), nothing run or written;
    `check_data=False`: a plan for a machine without the data."""
    from .pipeline import pipeline_phases

    return pipeline_phases(cell_pipeline_config(config, cell), check_data)


def dry_run(config, cells: list[Cell], out=None) -> float:
    """Print the setup steps and every cell's commands (each pipeline phase's exact command line: `accelerate
    launch ...` when the pipeline's launcher is accelerate) and a GPU-hours estimate. Works on a machine with no
    data and no model: nothing is read beyond the config, nothing fetched or written; missing data shows as
    setup steps to do, record counts come from the known release sizes or are marked assumed. Returns the
    GPU-hours."""
    from .pipeline import plan_fingerprints

    out = out or sys.stdout
    est = {**ESTIMATE_DEFAULTS, **config.estimate}
    est["tokens_per_record"] = {**ESTIMATE_DEFAULTS["tokens_per_record"], **est["tokens_per_record"]}
    est["records"] = {**ESTIMATE_DEFAULTS["records"], **est["records"]}
    for n, step in enumerate(config.setup):
        state = "done" if Path(step.creates).exists() else "todo"
        print(f"{state}  setup {n}: {shlex.join([sys.executable, step.script, *flags(dict(step.args))])}", file=out)
    cache: dict = {}
    total_train = total_forward = 0.0
    rows, figures = [], {}
    for cell in cells:
        state = "done" if is_finished(config, cell) else "todo"
        if cell.script != "run_pipeline.py":
            command = mask_secrets(shlex.join([sys.executable, cell.script, *cell_argv(config, cell)]))
            print(f"{state}  {cell.path}\n      {command}", file=out)
            continue
        pipeline_config = cell_pipeline_config(config, cell)
        phases = cell_phases(config, cell, check_data=False)
        plan = plan_fingerprints(pipeline_config, phases)
        print(f"{state}  {cell.path}  ({len(phases)} phases)", file=out)
        for which in ("source", "target"):
            raw = _pipeline_raw_dir(pipeline_config, which)
            if raw is not None and not raw.is_dir():
                print(f"  todo  [data] {raw} not found: the run fetches it with --download (the "
                      f"{getattr(pipeline_config, f'{which}_subdir')} release) or reads a copy put there", file=out)
        subdirs = {"source": pipeline_config.source_subdir, "target": pipeline_config.target_subdir}
        speed, what = train_throughput(est, pipeline_config)
        figures.setdefault(what, []).append(cell.path)
        train = forward = 0.0
        for phase in phases:
            done = {"reused": "done", "rerun": "stale"}.get(plan[phase.key][2], "todo")
            print(f"  {done}  [{phase.key}]  {mask_secrets(shlex.join(phase.command_line(pipeline_config)))}",
                  file=out)
            t, f = phase_tokens(phase, est, cache, subdirs)
            train, forward = train + t, forward + f
        hours = train / speed / 3600 + forward / est["eval_tokens_per_s"] / 3600
        rows.append((cell.path, train, forward, hours))
        total_train, total_forward = total_train + train, total_forward + forward
    total = sum(r[3] for r in rows)
    print("\nGPU-hours estimate (an upper bound: early stopping ends phases sooner; baselines run on CPU):", file=out)
    for what, paths in figures.items():
        print(f"  training throughput per GPU: {what} [{', '.join(paths)}]", file=out)
    print(f"  forward throughput per GPU: {est['eval_tokens_per_s']:,.0f} tokens/s (assumed); tokens per record "
          f"{est['tokens_per_record']}", file=out)
    origins = {}
    for path, origin in cache.get("origin", {}).items():
        origins.setdefault(origin, []).append(f"{Path(path).parent.name}/{Path(path).name} {cache[path]:,}")
    for origin, counts in origins.items():
        print(f"  records ({origin}): {', '.join(dict.fromkeys(counts))}", file=out)
    for path, train, forward, hours in rows:
        print(f"  {path}: {train / 1e6:,.1f} M training + {forward / 1e6:,.1f} M forward tokens -> {hours:,.1f} "
              "GPU-hours", file=out)
    print(f"  total: {total_train / 1e6:,.1f} M training + {total_forward / 1e6:,.1f} M forward tokens -> "
          f"{total:,.1f} GPU-hours", file=out)
    return total


def _pipeline_raw_dir(pipeline_config, which: str) -> Path | None:
    """DATA_DIR/<subdir> a pipeline cell prepares `which` from (None when it reads published files by name)."""
    from ..data.paths import data_dir

    if getattr(pipeline_config, f"{which}_files"):
        return None
    return data_dir(pipeline_config.data_dir) / getattr(pipeline_config, f"{which}_subdir")


def cell_pipeline_config(config, cell: Cell):
    from .pipeline import parse_pipeline_args

    return parse_pipeline_args(cell_argv(config, cell))


# ---- SLURM: the grid as chains of dependent jobs ----------------------------------------------------------------

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
            status = plan[phase.key][2]
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
    from .pipeline import (
        PhaseInterrupted,
        _Signals,
        pipeline_phases,
        plan_fingerprints,
        run_phase,
    )

    cell = next((c for c in cells if c.path == cell_path and c.script == "run_pipeline.py"), None)
    if cell is None:
        raise InputError(f"--run_phase: no pipeline cell {cell_path!r} in the config's grid")
    write_cell_json(config, cell)
    cfg = cell_pipeline_config(config, cell)
    phases = pipeline_phases(cfg)
    phase = next((p for p in phases if p.key == phase_key), None)
    if phase is None:
        raise InputError(f"--run_phase: cell {cell_path} has no phase {phase_key!r}")
    upstream = {key: entry[0] for key, entry in plan_fingerprints(cfg, phases).items()}
    with _phase_lock(phase.dir), _Signals() as signals:
        try:
            run_phase(cfg, phase, signals, upstream)
        except PhaseInterrupted as exc:
            logger.warning("%s", exc)
            return EXIT_INTERRUPTED
    return 0
