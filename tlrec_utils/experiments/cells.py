"""The grid's cells: what each runs, where its results land, whether they are current (fingerprints).

Cells: a baseline cell is one (method, setting, seed); a pipeline cell is one run_pipeline run_dir giving
every setting and seed of every variant it trains (its shared phases run once). Layout:
OUTPUT/runs/<group>/[<backbone>/]<method>/<setting>/seed<S>/ (baselines) or
OUTPUT/runs/<group>/[<backbone>/]pipeline-<RUN>/ (pipeline runs) with cell.json (what the
cell is, where each metrics.json lands) written before the cell runs; OUTPUT/results/ for the report.
"""

from __future__ import annotations

import logging
import re
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError, mask_secrets
from ..fileio import atomic_write_json, read_json_or_none
from .command_line import flags
from .grid_config import BackboneSpec, GridConfig, MethodSpec

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


def cell_argv(config, cell: Cell) -> list[str]:
    out = str(cell_dir(config, cell))
    if cell.script == "run_baselines.py":
        return cell.args + ["--output_dir", out]
    return ["--run_dir", out] + cell.args  # first: a `tuning_args` list takes the rest of the line


def cell_pipeline_config(config, cell: Cell):
    from .pipeline_config import parse_pipeline_args

    return parse_pipeline_args(cell_argv(config, cell))


def cell_phases(config, cell: Cell, check_data: bool = True):
    """The pipeline phases of a pipeline cell (phases.pipeline_phases), nothing run or written;
    `check_data=False`: a plan for a machine without the data."""
    from .phases import pipeline_phases

    return pipeline_phases(cell_pipeline_config(config, cell), check_data)


def current_outputs(config, cell: Cell) -> list[bool]:
    """Per output of `cell`: its metrics.json exists and was made from the current config (a baseline cell's
    fingerprint in cell_done.json; for a pipeline cell, the fingerprint of the evaluation phase that wrote it)."""
    folder = cell_dir(config, cell)
    if cell.script != "run_pipeline.py":
        done = read_json_or_none(folder / CELL_DONE) or {}
        ok = done.get("fingerprint") == cell_fingerprint(config, cell)
        return [ok and (folder / o["metrics"]).is_file() for o in cell.outputs]
    plan, phases = _cell_plan(config, cell)
    by_dir = {str(p.dir): p.key for p in phases}
    out = []
    for o in cell.outputs:
        key = by_dir.get(str((folder / o["metrics"]).resolve().parent))
        out.append(key is not None and plan[key].status == "reused" and (folder / o["metrics"]).is_file())
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


def check_grid(config: GridConfig, cells: list[Cell], launcher: str = "local") -> None:
    """What only the merged settings of a pipeline run show, before any cell or setup step runs: each pipeline
    cell's run_pipeline config (the grid's `pipeline`, the run's and the backbone's settings over the file
    `pipeline.config` names) parses and holds every variant a method asks of it. `launcher` local: the cells run
    here, so `launcher: accelerate` needs the command now."""
    from .pipeline_config import check_launcher, check_values

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


def check_on_change(config, cells: list[Cell]) -> None:
    """`--on_change error`: refuse (one line) before any cell runs when one would redo results made from other
    settings."""
    from .pipeline import with_status

    for cell in cells:
        folder = cell_dir(config, cell)
        if cell.script == "run_pipeline.py":
            plan, _ = _cell_plan(config, cell)
            stale = with_status(plan, "rerun")
            if stale:
                raise InputError(f"--on_change error: cell {cell.path}: {len(stale)} phase(s) were made from other "
                                 f"settings or inputs, first {stale[0]}; rerun with --on_change rerun, or use another "
                                 "output_dir")
        elif folder.is_dir() and any(folder.iterdir()) and not is_finished(config, cell):
            raise InputError(f"--on_change error: cell {cell.path} holds results made from other settings; rerun "
                             "with --on_change rerun, or use another output_dir")


def same_bytes(a, b) -> bool:
    from ..provenance import path_fingerprint

    return path_fingerprint(a) == path_fingerprint(b)


def same_test_records(a, b) -> bool:
    """Whether two test files hold the same test set: the same bytes, or the same records as the models see them
    (instruction, input, output, in order), as a published records file and the copy run_prepare_data made of
    it, which adds derived fields (label, history, ...)."""
    from ..data.records import read_json_list

    if same_bytes(a, b):
        return True
    try:
        seen = [[(r.get("instruction"), r.get("input"), r.get("output")) for r in read_json_list(p)] for p in (a, b)]
    except InputError:
        return False
    return seen[0] == seen[1]


def check_one_test_set(config, cells: list[Cell]) -> None:
    """Every row of a table is scored on the same test records and candidate items: a pipeline cell's prepared
    target test.json must hold the grid's `target.test` records (`same_test_records`) and its items.json be the
    grid's `target.items` (same bytes), else one line, exit 2."""
    for cell in cells:
        if cell.script != "run_pipeline.py":
            continue
        prepared = Path(cell_pipeline_config(config, cell).run_dir) / "data" / "target"
        for split, name, same in (("test", "test.json", same_test_records), ("items", "items.json", same_bytes)):
            grid_file = getattr(config.target, split)
            ours = prepared / name
            if grid_file and ours.is_file() and Path(grid_file).is_file() and not same(ours, grid_file):
                raise InputError(f"{config.path}: target.{split} {grid_file} differs from {ours}, the {split} file "
                                 f"pipeline cell {cell.path} prepared: one test set per table; prepare both the "
                                 f"same way (or point target.{split} at {ours})")


def write_cell_json(config, cell: Cell) -> None:
    info = {k: v for k, v in asdict(cell).items() if k in ("group", "seed", "backbone", "outputs")}
    info["command"] = mask_secrets(shlex.join([sys.executable, cell.script, *cell_argv(config, cell)]))
    if cell.script != "run_pipeline.py":
        info["fingerprint"] = cell_fingerprint(config, cell)
    atomic_write_json(cell_dir(config, cell) / "cell.json", info)
