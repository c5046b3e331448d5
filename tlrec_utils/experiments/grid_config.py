"""The grid config of run_experiments.py, typed and checked up front, and its `--override`s.

The paper's experiment grid as one command: settings x seeds x methods, each cell a run directory
(cells.py); finished cells are skipped; local (local.py) or SLURM (slurm.py) execution; then Table 1 and the
figures (results.py). Config (YAML or JSON; typed by `GridConfig` and the dataclasses beside it: an unknown key
or a wrong type is one error line naming the key and the file), e.g. configs/experiments/movie_tiny.yaml
(relative paths are read from the config file's folder, see `resolve_grid_paths`):

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
      main: {methods: [tlrec, tallrec]}         # run_pipeline --methods (pipeline_config.METHODS)
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
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..data.paths import REPO_ROOT
from ..errors import InputError
from ..fileio import read_config_file
from .reporting import DEFAULT_METRICS

logger = logging.getLogger(__name__)


def setting_key(setting, where: str = "settings") -> str:
    s = str(setting).strip().lower()
    if s in ("zero-shot", "zero_shot", "zeroshot", "0"):
        return "zero-shot"
    s = s.lstrip("k")
    if not s.isdigit():
        raise InputError(f"{where}: {setting!r} is neither zero-shot nor a K")
    if int(s) < 1:
        raise InputError(f"{where}: {setting!r}: K must be >= 1, got {int(s)} (the setting without target records "
                         "is written zero-shot)")
    return f"k{int(s)}"


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
    variant: str | None = None  # a run_pipeline method (pipeline_config.METHODS)
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
    from ..validation import check_number, check_output_dir, check_seed, check_settings, typed, typed_list
    from .pipeline_config import METHODS, PipelineConfig

    config = typed(GridConfig, raw, path)
    config.path = path
    config.target = typed(Splits, config.target, f"{path}: target")
    config.source = typed(Splits, config.source, f"{path}: source")
    config.methods = typed_list(MethodSpec, config.methods, f"{path}: methods")
    config.ablations = typed_list(MethodSpec, config.ablations, f"{path}: ablations")
    config.backbones = typed_list(BackboneSpec, config.backbones, f"{path}: backbones")
    config.setup = typed_list(SetupStep, config.setup, f"{path}: setup")
    config.slurm = typed(SlurmSettings, config.slurm, f"{path}: slurm")
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
        from .pipeline_config import phase_argument_types

        return phase_argument_types("tuning" if script == "run_tuning.py" else "eval")
    if script == "run_baselines.py":
        return (A.BaselineArguments,)
    if script == "run_pipeline.py":
        from .pipeline_config import PipelineConfig

        return (PipelineConfig,)
    return None


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
