"""run_pipeline's settings (`PipelineConfig`, every field a flag) and their checks, before anything is read or run:
the config's own values, and the settings it hands on to run_tuning / run_eval / run_prepare_data, checked with
the dataclasses those scripts parse them into. `METHODS`: each method's tuning chain (pipeline.py's docstring).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from dataclasses import dataclass, field

from ..arguments import CURRICULUM_MODES
from ..cot.registry import TEACHERS, help_text
from ..errors import InputError
from ..prompts import item_kind

# method -> its tuning chain before the K-shot phase (paper 5.1.2 and 5.3; see the module docstring)
METHODS = {
    "tlrec": ("cot", "source"),
    "tlrec_staged": ("cot_staged", "source"),
    "tallrec": (),
    "wo_cot": ("source",),
    "wo_curriculum": ("cot_shuffled", "source"),
    "wo_rec_tuning": ("cot",),
}


@dataclass
class DatasetSpec:
    """A dataset the pipeline prepares. One entry of `source_datasets`: a source domain, prepared on its own
    (data/source-NAME), its CoT records asked of the teacher on its own records (cot-NAME), then mixed with the
    other sources (data.mix); the single source and the target are described in the same form (phases.domains)."""

    name: str  # names its phases and folders, and its rows in results.json
    dataset: str | None = None  # run_prepare_data --dataset (needed unless `files`)
    subdir: str | None = None  # raw files: DATA_DIR/SUBDIR (default: name)
    item_kind: str | None = None  # the wording of its records and CoT prompts (default: the config's item_kind)
    records: int | None = None  # its share of source rec-tuning: N records drawn from its train split (default: all)
    files: dict = field(default_factory=dict)  # published records as its splits (as source_files)
    prepare_args: list[str] = field(default_factory=list)  # more run_prepare_data flags
    target_style: str | None = field(default=None, metadata={"choices": ["wrap", "item"]})
    cot_file: str | None = None  # its CoT records from this file instead of the teacher


SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def source_flag(i: int, spec: DatasetSpec) -> str:
    """How messages name entry `i` of `source_datasets`."""
    return f"--source_datasets[{i}] ({spec.name})"


def source_specs(cfg: PipelineConfig) -> list[DatasetSpec]:
    """The config's source domains: the entries of `source_datasets` (checked), else the one source of
    `source_dataset`, `source_subdir`, `source_files`, ... named by its subdir."""
    from ..validation import typed

    if not cfg.source_datasets:
        return [DatasetSpec(cfg.source_subdir, cfg.source_dataset, cfg.source_subdir, cfg.item_kind,
                           files=cfg.source_files, prepare_args=list(cfg.source_prepare_args),
                           target_style=cfg.source_target_style)]
    specs = []
    for i, entry in enumerate(cfg.source_datasets):
        spec = typed(DatasetSpec, entry, f"--source_datasets[{i}]")
        where = source_flag(i, spec)
        if not SOURCE_NAME.fullmatch(spec.name):
            raise InputError(f"{where}: name {spec.name!r}: use letters, digits, '.', '_' and '-' (it names folders)")
        if spec.name in (s.name for s in specs):
            raise InputError(f"{where}: the name {spec.name!r} is given twice")
        if spec.dataset is None and not spec.files:
            raise InputError(f"{where}: give its dataset (run_prepare_data --dataset) or its files")
        spec.subdir = spec.subdir or spec.name
        spec.item_kind = spec.item_kind or cfg.item_kind
        specs.append(spec)
    return specs


@dataclass
class PipelineConfig:
    run_dir: str = field(metadata={"help": "Everything goes here, one directory per phase."})
    data_dir: str | None = field(
        default=None,
        metadata={"help": "Folder holding the raw datasets (default: $TLREC_DATA_DIR, else ~/.cache/tlrec)."},
    )
    source_dataset: str = field(default="windows-csv", metadata={"help": "run_prepare_data --dataset of the source."})
    source_subdir: str = field(default="netflix", metadata={"help": "Source raw files: DATA_DIR/SOURCE_SUBDIR."})
    source_prepare_args: list[str] = field(
        default_factory=list,
        metadata={"help": "Extra run_prepare_data flags for the source (e.g. --target_style item)."},
    )
    source_target_style: str | None = field(
        default=None,
        metadata={"help": "run_prepare_data --target_style of the source records: item keeps an item text as it is "
                          "(the authors' Amazon-Book targets `\"Title\" written by Author`), wrap quotes it; "
                          "default: run_prepare_data's.", "choices": ["wrap", "item"]},
    )
    source_files: dict = field(
        default_factory=dict,
        metadata={"help": "Published records as the source splits, {train: F, valid: F, test: F} (paths under "
                          "data_dir unless absolute): prepared with --dataset records from links to these files."},
    )
    source_datasets: list[dict] = field(
        default_factory=list,
        metadata={"help": "Several source domains at once, in this order, instead of source_dataset/source_subdir/"
                          "source_files/...: each a mapping {name, dataset, subdir, item_kind, records, files, "
                          "prepare_args, target_style, cot_file} (DatasetSpec). CoT records and source rec-tuning "
                          "records come from each source (docs/data.md#several-sources-at-once). On the command "
                          "line: --source_datasets '{name: netflix, dataset: windows-csv}' '{name: ...}'."},
    )
    target_dataset: str = field(default="ml-100k", metadata={"help": "run_prepare_data --dataset of the target."})
    target_subdir: str = field(default="ml-100k", metadata={"help": "Target raw files: DATA_DIR/TARGET_SUBDIR."})
    target_prepare_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra run_prepare_data flags for the target."}
    )
    target_files: dict = field(
        default_factory=dict, metadata={"help": "Published records as the target splits (as source_files)."}
    )
    item_kind: str = field(default="movie", metadata={"help": "Prompt wording: movie, book, game, item "
                                                              "(prompts.ITEM_KINDS) or NOUN/PLURAL/VERB."})
    max_windows: int = field(default=10000, metadata={"help": "Windows kept per prepared dataset (paper: 10000)."})
    download: bool = field(
        default=False, metadata={"help": "Download the data's missing files (verified) into data_dir/<subdir>."}
    )
    mirror: str | None = field(
        default=None, metadata={"help": "Download from MIRROR/HOST/PATH instead of https://HOST/PATH ($TLREC_MIRROR)."}
    )
    base_model: str | None = field(
        default=None, metadata={"help": "Causal LM path. Default: a tiny random LLaMA built from the data (demo)."}
    )
    start_adapter: str | None = field(
        default=None,
        metadata={"help": "LoRA adapter every method starts from (the authors: an Alpaca LoRA on LLaMA-7B); "
                          "its zero-shot cell is TALLRec's. Or give a merged Alpaca model as base_model."},
    )
    tiny_vocab_size: int = field(default=2000)
    tiny_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny LLaMA (2 layers, 4 heads)."})
    # CoT data (source domain)
    teacher: str = field(
        default="heuristic",
        metadata={"help": help_text() + " (published: cot_file, default DATA_DIR/tlrec-cot/stage123.json, "
                          "--download fetches it).", "choices": list(TEACHERS)},
    )
    teacher_mode: str = field(
        default="live", metadata={"help": "How the openai teacher is asked (run_cot_generation --mode): live, or "
                                          "batch (the OpenAI Batch API, half the price, within 24 h).",
                                  "choices": ["live", "batch"]},
    )
    cot_file: str | None = field(
        default=None, metadata={"help": "Use these CoT records (ours or the authors' stage123.json) instead of "
                                        "asking a teacher."},
    )
    hit_match: str = field(default="title_in_answer",
                           metadata={"help": "CoT hit rule: title_in_answer or recommended."})
    cot_same_user_neighbors: bool = field(
        default=False,
        metadata={"help": "CoT candidates may come from the user's own other windows (the authors' "
                          "generate_data.py: leaks the target; run_cot_generation --allow_same_user_neighbors). "
                          "Default: leak-free candidates."},
    )
    teacher_system_prompt: str | None = field(default=None, metadata={"help": "System message to the teacher (none)."})
    cot_context_style: str = field(
        default="history", metadata={"help": "CoT context: history (oldest first) or authors (their item order and "
                                             "book titles; run_cot_generation --context_style)."},
    )
    teacher_model: str = field(default="gpt-4")
    teacher_base_url: str | None = field(default=None)
    cot_max_users: int | None = field(default=None, metadata={"help": "Ask the teacher about the first N users."})
    cot_max_cost: float | None = field(default=None, metadata={"help": "Teacher spending cap (USD)."})
    # methods
    methods: list[str] = field(
        default_factory=lambda: ["tlrec", "tallrec"],
        metadata={"help": f"Methods to run, in order: {', '.join(METHODS)}."},
    )
    # phases
    cot_stages: list[int] = field(
        default_factory=lambda: [1, 2, 3],
        metadata={"help": "CoT stages tlrec's CoT phase trains on ([3]: the authors' released recipe, whose "
                          "preprocess_data.py writes the Stage-3 records only; their inputs hold the Stage 1-2 "
                          "answers)."},
    )
    cot_curriculum: str = field(
        default="ordered",
        metadata={"help": "Order of tlrec's CoT records (run_tuning --curriculum): ordered (Stage 1, 2, 3 each "
                          "epoch: the paper's text), trainer (the Trainer's random order: the authors' ins_tuning.py), "
                          "shuffled or stagewise.", "choices": list(CURRICULUM_MODES)},
    )
    cot_epochs: float = field(default=1.0)
    cot_max_length: int | None = field(
        default=None,
        metadata={"help": "max_length of the CoT phase (default: the model's limit, at most 2048: no CoT record "
                          "shorter than that is cut; the authors used 512)."},
    )
    source_records: int | None = field(default=None, metadata={"help": "Rec-tune on N sampled source records (all)."})
    source_epochs: float = field(default=1.0)
    k_shots: list[int] = field(default_factory=lambda: [16, 64, 256])
    seeds: list[int] = field(default_factory=lambda: [0])
    kshot_epochs: float = field(default=10.0)
    effect_records: int = field(
        default=128,
        metadata={"help": "Each tuning phase's effect: the first N records of the source and target valid splits, "
                          "scored before and after it (AUC; run_tuning --effect_files)."},
    )
    cot_heldout_records: int = field(
        default=8, metadata={"help": "CoT records per stage held out of CoT tuning: their loss before and after."},
    )
    prompt_template: str | None = field(
        default=None, metadata={"help": "Alpaca template of every tuning and evaluation phase: tallrec (default), "
                                        "tlrec or alpaca (tlrec_utils/prompts.py)."},
    )
    tuning: dict = field(
        default_factory=dict,
        metadata={"help": "run_tuning settings for every tuning phase, e.g. {learning_rate: 1e-4, finetune: lora, "
                          "max_length: 512}; model settings (torch_dtype, load_in_8bit, ...) apply to evaluation too. "
                          "On the command line: --tuning KEY=VALUE ... or a YAML/JSON mapping."},
    )
    cot_tuning: dict = field(default_factory=dict, metadata={"help": "run_tuning settings of the CoT phase only."})
    source_tuning: dict = field(default_factory=dict, metadata={"help": "... of the source rec-tuning phase only."})
    kshot_tuning: dict = field(default_factory=dict, metadata={"help": "... of the K-shot phases only."})
    tuning_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra run_tuning flags for every tuning phase, e.g. --bf16 --use_cpu."}
    )
    validate: bool = field(
        default=False,
        metadata={"help": "Validate every tuning phase on the target valid split and keep the best checkpoint "
                          "(the authors' recipe: every eval_steps, early stopping, metric_for_best_model loss)."},
    )
    # evaluation (target test split)
    eval: dict = field(
        default_factory=dict, metadata={"help": "run_eval settings, e.g. {num_negatives: 50, batch_size: 32}."}
    )
    test_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N test records (all)."})
    # launcher
    launcher: str = field(
        default="inprocess",
        metadata={"help": "inprocess (every phase in this process) or accelerate (tuning and evaluation phases "
                          "as `accelerate launch` subprocesses).", "choices": ["inprocess", "accelerate"]},
    )
    accelerate_config: str | None = field(
        default=None, metadata={"help": "accelerate config file (configs/accelerate/*.yaml) for launched phases."}
    )
    num_processes: int | None = field(default=None, metadata={"help": "Processes per launched phase."})
    launcher_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra `accelerate launch` flags, e.g. --main_process_port 29600."}
    )
    on_change: str = field(
        default="rerun",
        metadata={"help": "A finished phase whose fingerprint (settings, inputs, upstream phases) no longer matches: "
                          "rerun it and everything downstream (rerun), or stop before running anything (error).",
                  "choices": ["rerun", "error"]},
    )

    def check_values(self):
        """Every value checked without reading a file or building anything, the settings handed on to
        run_tuning / run_eval / run_prepare_data included (`check_values` below)."""
        check_values(self)


MAPPINGS = ("tuning", "cot_tuning", "source_tuning", "kshot_tuning", "eval")


def phase_argument_types(kind: str) -> tuple:
    """The dataclasses a tuning (run_tuning.py) or eval (run_eval.py) phase parses its flags into."""
    from ..arguments import (
        DataArguments,
        EvalArguments,
        LoraArguments,
        ModelArguments,
        TuningTrainingArguments,
    )

    if kind == "tuning":
        return ModelArguments, LoraArguments, DataArguments, TuningTrainingArguments
    return ModelArguments, EvalArguments


def _dataclass_fields(kind: str) -> dict[str, dataclasses.Field]:
    out = {}
    for t in phase_argument_types(kind):
        for f in dataclasses.fields(t):
            out.setdefault(f.name, f)
    return out


# keys the pipeline sets itself (chaining, data, K, seed): not settable through the mappings
# (`seed`, the Trainer's seed, may be set: default the K-shot seed; the authors' recipe: 42, see paper_recipe.yaml)
PIPELINE_TUNING_KEYS = {"base_model", "output_dir", "train_files", "init_adapter", "k_shot", "k_shot_seed",
                        "val_file", "num_train_epochs", "overwrite_output_dir", "resume_from_checkpoint", "stages",
                        "effect_files", "effect_records", "effect_max_length", "heldout_records"}


PIPELINE_EVAL_KEYS = {"base_model", "output_dir", "test_file", "items_file", "adapter", "limit"}


def setting(cfg: PipelineConfig, kind: str, key: str, mapping: dict | None = None):
    """The value a phase gets for `key`: the config's mapping, else the dataclass default (one source of truth)."""
    mapping = getattr(cfg, kind) if mapping is None else mapping
    if key in mapping:
        return mapping[key]
    f = _dataclass_fields("tuning" if kind != "eval" else "eval")[key]
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def to_flags(mapping: dict) -> list[str]:
    """{key: value} -> HfArgumentParser flags (`--key value`, booleans `--key true|false`, lists several values)."""
    from .command_line import flags

    return flags({k: v for k, v in mapping.items() if v is not None}, explicit_bools=True)


def check_values(cfg: PipelineConfig) -> None:
    """The config's values, every one, before any phase runs, reading no file: methods, K, seeds, numbers, and
    what is handed on to the phases' scripts, parsed with the dataclasses those scripts parse them into
    (`tuning`, `cot_tuning`, ..., `eval`: keys, types, choices, ranges; `tuning_args` and `*_prepare_args`:
    their flags). Errors name the flag (`--tuning.learning_rate`); read from a config file, the file and key."""
    from ..validation import check_choices, check_number, check_seed, check_settings

    check_choices(PipelineConfig, cfg)  # teacher, launcher, on_change, cot_curriculum, source_target_style
    item_kind(cfg.item_kind)
    teacher = TEACHERS[cfg.teacher]
    if teacher.build is not None and cfg.teacher_mode not in teacher.modes:
        raise InputError(f"--teacher_mode {cfg.teacher_mode}: the {cfg.teacher} teacher is asked live only")
    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise InputError(f"--methods: unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise InputError(f"--methods: {cfg.methods} names a method twice")
    if not cfg.k_shots:
        raise InputError("--k_shots: give at least one K")
    for k in cfg.k_shots:
        check_number("--k_shots", k, 1)
    if not cfg.seeds:
        raise InputError("--seeds: give at least one seed")
    for seed in cfg.seeds:
        check_seed("--seeds", seed)
    if not cfg.cot_stages or any(s not in (1, 2, 3) for s in cfg.cot_stages):
        raise InputError(f"--cot_stages must be CoT stages (1, 2, 3), got {cfg.cot_stages}")
    for name in ("tiny_vocab_size", "tiny_hidden_size", "test_limit", "source_records", "cot_max_users",
                 "cot_max_length", "num_processes", "effect_records"):
        check_number(f"--{name}", getattr(cfg, name), 1)
    check_number("--max_windows", cfg.max_windows, 0)
    check_number("--cot_heldout_records", cfg.cot_heldout_records, 0)
    for name in ("cot_epochs", "source_epochs", "kshot_epochs", "cot_max_cost"):
        check_number(f"--{name}", getattr(cfg, name), 0, exclusive_min=True)
    for name in MAPPINGS:
        mapping = getattr(cfg, name)
        script = "run_eval.py" if name == "eval" else "run_tuning.py"
        if not isinstance(mapping, dict):
            raise InputError(f"--{name}: expected a mapping of {script} settings, got {type(mapping).__name__}")
        known = _dataclass_fields("eval" if name == "eval" else "tuning")
        bad = sorted(set(mapping) - set(known))
        if bad:
            raise InputError(f"--{name}.{bad[0]}: not a {script} setting (python {script} --help lists them)")
        reserved = PIPELINE_EVAL_KEYS if name == "eval" else PIPELINE_TUNING_KEYS
        taken = sorted(set(mapping) & reserved)
        if taken:
            raise InputError(f"--{name}.{taken[0]}: set by the pipeline itself (see PipelineConfig: "
                             "base_model, start_adapter, *_epochs, k_shots, seeds, test_limit, validate)")
        check_settings(phase_argument_types("eval" if name == "eval" else "tuning"), mapping, None, f"{name}.")
    check_flags(phase_argument_types("tuning"), cfg.tuning_args, "--tuning_args", "run_tuning.py")
    check_sources(cfg)
    check_domain(cfg.target_prepare_args, cfg.target_files, "--target_prepare_args", "--target_files")
    if cfg.start_adapter and setting(cfg, "tuning", "finetune") != "lora":
        raise InputError("--start_adapter needs LoRA tuning (finetune: lora); for full fine-tuning give the merged "
                         "start model as --base_model")
    if cfg.prompt_template is not None:
        from ..prompts import get_template

        get_template(cfg.prompt_template)  # an unknown name fails before any phase runs


def check_sources(cfg: PipelineConfig) -> None:
    """The source domain(s): `source_datasets` (each entry's keys, name, wording, share, files, flags) or the
    single source's flags, not both; a source's CoT from a file."""
    from ..validation import check_number

    if not cfg.source_datasets:
        check_domain(cfg.source_prepare_args, cfg.source_files, "--source_prepare_args", "--source_files")
        return
    defaults = PipelineConfig(run_dir="")
    both = [name for name in ("source_dataset", "source_subdir", "source_files", "source_prepare_args",
                              "source_target_style") if getattr(cfg, name) != getattr(defaults, name)]
    if both:
        raise InputError(f"--source_datasets and --{both[0]}: give the sources in source_datasets only (each entry "
                         "takes dataset, subdir, files, prepare_args, target_style)")
    if cfg.cot_file:
        raise InputError("--cot_file: with source_datasets, give each source its own cot_file")
    for i, spec in enumerate(source_specs(cfg)):
        where = source_flag(i, spec)
        item_kind(spec.item_kind, f"{where}: item_kind")
        check_number(f"{where}: records", spec.records, 1)
        check_domain(spec.prepare_args, spec.files, f"{where}: prepare_args", f"{where}: files")
        if spec.cot_file is None and TEACHERS[cfg.teacher].build is None and uses_cot(cfg):
            raise InputError(f"{where}: the {cfg.teacher} teacher's records are one file: give this source its "
                             "cot_file")


def uses_cot(cfg: PipelineConfig) -> bool:
    """Whether a method of this config tunes on CoT records."""
    return any(step.startswith("cot") for method in cfg.methods for step in METHODS.get(method, ()))


def check_domain(prepare_args: list[str], files: dict, args_flag: str, files_flag: str) -> None:
    """A domain's extra run_prepare_data flags (parsed as run_prepare_data parses them) and its published record
    files (a mapping with exactly train, valid and test)."""
    from ..arguments import KShotArguments
    from ..data.prepare import PrepareConfig

    check_flags((PrepareConfig, KShotArguments), prepare_args, args_flag, "run_prepare_data.py")
    if not files:
        return
    if not isinstance(files, dict) or sorted(files) != ["test", "train", "valid"]:
        raise InputError(f"{files_flag}: expected a mapping with exactly train, valid and test, got {files!r}")
    for split, name in files.items():
        if not isinstance(name, str) or not name.strip():
            raise InputError(f"{files_flag}.{split}: expected a file path (under data_dir unless absolute), got "
                             f"{name!r}")


def check_flags(dataclass_types, argv: list[str], flag: str, script: str) -> dict:
    """Extra flags handed on to a script (`--tuning_args`, `--source_prepare_args`) parsed now as that script
    parses them (HfArgumentParser over its dataclasses) and their values checked: {field: value} given."""
    if not argv:
        return {}
    from transformers import HfArgumentParser

    from ..arguments import without_required_fields
    from ..errors import one_line_argparse
    from ..validation import check_settings

    parser = HfArgumentParser([without_required_fields(t) for t in dataclass_types])
    argv = [str(a) for a in argv]
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    try:
        with one_line_argparse():
            parsed, unknown = parser.parse_known_args(argv)
        if unknown:
            raise InputError(f"unrecognized arguments {' '.join(unknown)} (not {script} flags)")
        given = {dests[a.split("=")[0]] for a in argv if a.split("=")[0] in dests} - {"help"}
        return check_settings(dataclass_types, {name: getattr(parsed, name) for name in given})
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None


def check_launcher(cfg: PipelineConfig) -> None:
    """`launcher: accelerate` needs the `accelerate` command here (checked where the phases run, not in the plan:
    a SLURM job's environment may differ from the login node's)."""
    if cfg.launcher == "accelerate" and shutil.which("accelerate") is None:
        raise InputError("--launcher accelerate: the `accelerate` command is not on PATH (pip install accelerate, "
                         "or activate the environment that has it; --launcher inprocess runs every phase in this "
                         "process)")


def parse_pipeline_args(argv=None, description: str | None = None) -> PipelineConfig:
    """PipelineConfig from flags; a config file (first argument or `--config FILE.yaml|json`) supplies values
    that flags after it override; the mapping flags (--tuning, --cot_tuning, --source_tuning, --kshot_tuning,
    --eval, --source_files, --target_files) add to the file's mappings; --tuning_args takes the rest of the line."""
    from ..arguments import parse_args

    (cfg,) = parse_args((PipelineConfig,), argv, description=description, rest_of_line=("tuning_args",))
    return cfg
