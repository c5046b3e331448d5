"""The whole TLRec method, and the methods it is compared with, as chained, resumable phases (run_pipeline.py;
run_experiments.py builds on it).

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
    model/                        python -m tlrec_utils.model.tiny_llm: the tiny LLaMA, only without `base_model`
    <method>/cot_tuning/          run_tuning.py on the CoT records, in curriculum order (Stage 1, 2, 3)
    <method>/source_tuning/       run_tuning.py on source records: the zero-shot model
    <method>/k{K}_seed{S}/        run_tuning.py on K target records, for every K in k_shots and S in seeds
    <method>/eval/<setting>/      run_eval.py on the target test split: metrics.json, predictions.jsonl
    results.json                  every method's metrics per setting (zero_shot, k16_seed0, ...); `phases`: each
                                  tuning phase's held-out figure before and after it; `warnings`

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
import dataclasses
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cot.registry import TEACHERS, help_text
from ..data.paths import REPO_ROOT
from ..errors import EXIT_INTERRUPTED, InputError, mask_secrets, mask_secrets_in
from ..evaluation.metrics import NDCG_K, ndcg_key
from ..fileio import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

PHASE_DONE = "phase_done.json"
FINGERPRINT_FILE = "fingerprint.json"  # written before a phase runs: what its output will be made from
# flags that do not change a phase's output (how files are fetched, progress and log output): not fingerprinted
UNFINGERPRINTED_FLAGS = {"--download": 0, "--mirror": 1, "--no-progress": 0, "--logging_steps": 1}
SETTING_ZERO_SHOT = "zero_shot"
LOCK_FILE = ".pipeline.lock"

# method -> its tuning chain before the K-shot phase (paper 5.1.2 and 5.3; see the module docstring)
METHODS = {
    "tlrec": ("cot", "source"),
    "tlrec_staged": ("cot_staged", "source"),
    "tallrec": (),
    "wo_cot": ("source",),
    "wo_curriculum": ("cot_shuffled", "source"),
    "wo_rec_tuning": ("cot",),
}

# Validation as the authors' scripts do it (ljy2222/TLRec rec_tuning.py and ins_tuning.py, commit 561abcf):
# evaluation and checkpoint every `eval_steps` steps (10; K-shot with K > 128: K / 128 * 5), best checkpoint
# kept, early stopping after 10 evaluations without improvement, 3 checkpoints kept; rec_tuning.py selects by
# validation loss (ins_tuning.py, used for the CoT and source phases, by validation AUC). Any of these can be
# overridden through the `tuning` mapping.
AUTHORS_VALIDATION = {"eval_strategy": "steps", "save_strategy": "steps", "load_best_model_at_end": True,
                      "metric_for_best_model": "loss", "early_stopping_patience": 10, "save_total_limit": 3}
COT_MAX_LENGTH_CAP = 2048


class PhaseInterrupted(Exception):
    """A phase stopped early (SIGTERM) after saving a checkpoint; rerun to resume."""


class PhaseFailed(Exception):
    """A phase's command failed: one line naming the phase and its log file."""


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
                          "default: run_prepare_data's."},
    )
    source_files: dict = field(
        default_factory=dict,
        metadata={"help": "Published records as the source splits, {train: F, valid: F, test: F} (paths under "
                          "data_dir unless absolute): prepared with --dataset records from links to these files."},
    )
    target_dataset: str = field(default="ml-100k", metadata={"help": "run_prepare_data --dataset of the target."})
    target_subdir: str = field(default="ml-100k", metadata={"help": "Target raw files: DATA_DIR/TARGET_SUBDIR."})
    target_prepare_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra run_prepare_data flags for the target."}
    )
    target_files: dict = field(
        default_factory=dict, metadata={"help": "Published records as the target splits (as source_files)."}
    )
    item_kind: str = field(default="movie", metadata={"help": "movie or book (prompt wording)."})
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
                          "shuffled or stagewise.", "choices": ["ordered", "shuffled", "stagewise", "trainer"]},
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


# ---- phase arguments from run_tuning's and run_eval's own dataclasses ---------------------------------------


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


def _model_keys() -> set[str]:
    from ..arguments import ModelArguments

    return {f.name for f in dataclasses.fields(ModelArguments)}


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
    from ..validation import check_number, check_seed, check_settings

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown or not cfg.methods:
        raise InputError(f"--methods: unknown method(s) {unknown or '(none given)'}; choose from {', '.join(METHODS)}")
    if len(set(cfg.methods)) != len(cfg.methods):
        raise InputError(f"--methods: {cfg.methods} names a method twice")
    if cfg.teacher not in TEACHERS:
        raise InputError(f"--teacher must be one of {', '.join(TEACHERS)}, got {cfg.teacher!r}")
    if cfg.teacher_mode not in TEACHERS[cfg.teacher].modes and TEACHERS[cfg.teacher].build is not None:
        raise InputError(f"--teacher_mode {cfg.teacher_mode}: the {cfg.teacher} teacher is asked live only")
    if not cfg.k_shots:
        raise InputError("--k_shots: give at least one K")
    for k in cfg.k_shots:
        check_number("--k_shots", k, 1)
    if not cfg.seeds:
        raise InputError("--seeds: give at least one seed")
    for seed in cfg.seeds:
        check_seed("--seeds", seed)
    if cfg.on_change not in ("rerun", "error"):
        raise InputError(f"--on_change must be rerun or error, got {cfg.on_change!r}")
    if cfg.source_target_style not in (None, "wrap", "item"):
        raise InputError(f"--source_target_style must be wrap or item, got {cfg.source_target_style!r}")
    if not cfg.cot_stages or any(s not in (1, 2, 3) for s in cfg.cot_stages):
        raise InputError(f"--cot_stages must be CoT stages (1, 2, 3), got {cfg.cot_stages}")
    from ..arguments import CURRICULUM_MODES

    if cfg.cot_curriculum not in CURRICULUM_MODES:
        raise InputError(f"--cot_curriculum must be one of {', '.join(CURRICULUM_MODES)}, got {cfg.cot_curriculum!r}")
    if cfg.launcher not in ("inprocess", "accelerate"):
        raise InputError(f"--launcher must be inprocess or accelerate, got {cfg.launcher!r}")
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
    from ..arguments import KShotArguments
    from ..data.prepare import PrepareConfig

    for which in ("source", "target"):
        check_flags((PrepareConfig, KShotArguments), getattr(cfg, f"{which}_prepare_args"),
                    f"--{which}_prepare_args", "run_prepare_data.py")
        files = getattr(cfg, f"{which}_files")
        if files:
            if not isinstance(files, dict) or sorted(files) != ["test", "train", "valid"]:
                raise InputError(f"--{which}_files: expected a mapping with exactly train, valid and test, got "
                                 f"{files!r}")
            for split, name in files.items():
                if not isinstance(name, str) or not name.strip():
                    raise InputError(f"--{which}_files.{split}: expected a file path (under data_dir unless "
                                     f"absolute), got {name!r}")
    if cfg.start_adapter and setting(cfg, "tuning", "finetune") != "lora":
        raise InputError("--start_adapter needs LoRA tuning (finetune: lora); for full fine-tuning give the merged "
                         "start model as --base_model")
    if cfg.prompt_template is not None:
        from ..prompts import get_template

        get_template(cfg.prompt_template)  # an unknown name fails before any phase runs


def check_flags(dataclass_types, argv: list[str], flag: str, script: str) -> dict:
    """Extra flags handed on to a script (`--tuning_args`, `--source_prepare_args`) parsed now as that script
    parses them (HfArgumentParser over its dataclasses) and their values checked: {field: value} given."""
    if not argv:
        return {}
    from transformers import HfArgumentParser

    from ..arguments import _optional
    from ..errors import _one_line_argparse
    from ..validation import check_settings

    parser = HfArgumentParser([_optional(t) for t in dataclass_types])
    argv = [str(a) for a in argv]
    dests = {option: action.dest for action in parser._actions for option in action.option_strings}
    try:
        with _one_line_argparse():
            parsed, unknown = parser.parse_known_args(argv)
        if unknown:
            raise InputError(f"unrecognized arguments {' '.join(unknown)} (not {script} flags)")
        given = {dests[a.split("=")[0]] for a in argv if a.split("=")[0] in dests} - {"help"}
        return check_settings(dataclass_types, {name: getattr(parsed, name) for name in given})
    except InputError as exc:
        raise InputError(f"{flag}: {exc}") from None


def check_config(cfg: PipelineConfig, check_data: bool = True) -> None:
    """Every setting checked (`check_values`); with `check_data`, also that the raw data is there (a plan for a
    machine without the data, `run_experiments.py --dry_run`, passes False)."""
    check_values(cfg)
    if cfg.accelerate_config and not Path(cfg.accelerate_config).is_file():
        raise InputError(f"--accelerate_config {cfg.accelerate_config}: file not found")
    if cfg.cot_file and not Path(cfg.cot_file).is_file():
        raise InputError(f"{cfg.cot_file}: CoT file not found (cot_file)")
    # the raw data must be there before run_dir is made (not needed once a data phase is complete)
    if not check_data:
        return
    for which, subdir, dataset in (("source", cfg.source_subdir, cfg.source_dataset),
                                   ("target", cfg.target_subdir, cfg.target_dataset)):
        if (Path(cfg.run_dir) / "data" / which / PHASE_DONE).is_file():
            continue
        if getattr(cfg, f"{which}_files"):
            split_links(cfg, which)  # checks the mapping and that every file exists
            continue
        raw = _raw_dir(cfg, subdir)
        if not raw.is_dir() and cfg.download:  # --download will make it: a file or a locked folder fails now
            from ..validation import check_output_dir

            check_output_dir(raw, "--data_dir" if cfg.data_dir else "data directory")
        if not raw.is_dir() and not cfg.download:
            flag = "--data_dir" if cfg.data_dir else "data directory"
            raise InputError(f"{flag}: {raw} not found (raw files of the {which} dataset {dataset}; "
                             "--download fetches the public ones)")


# ---- the plan: every phase and its command ------------------------------------------------------------------


@dataclass
class Phase:
    key: str  # unique, e.g. "data/source", "tlrec/source_tuning", "tallrec/eval/zero_shot"
    name: str  # for logs, e.g. "tlrec: source rec-tuning"
    kind: str  # prepare | cot | model | tuning | eval
    dir: Path
    script: str  # entry script (run_*.py) or module (-m tlrec_utils.model.tiny_llm)
    argv: list[str]
    after: list[str] = field(default_factory=list)  # keys of the phases whose outputs it reads
    method: str | None = None
    setting: str | None = None  # eval phases: zero_shot | k16_seed0 | ...
    start: str | None = None  # tuning phases: the key of the tuning phase whose model it continues (None: start model)
    links: dict = field(default_factory=dict)  # symlink -> file, made before the command runs (split files)

    @property
    def launched(self) -> bool:
        return self.kind in ("tuning", "eval")

    def command_line(self, cfg: PipelineConfig) -> list[str]:
        """The exact command that runs this phase alone (what `command.txt` holds)."""
        if self.script.startswith("-m "):
            return [sys.executable, "-m", self.script[3:], *self.argv]
        script = str(REPO_ROOT / self.script)
        if self.launched and cfg.launcher == "accelerate":
            return [*launcher_prefix(cfg), script, *self.argv]
        return [sys.executable, script, *self.argv]


def check_launcher(cfg: PipelineConfig) -> None:
    """`launcher: accelerate` needs the `accelerate` command here (checked where the phases run, not in the plan:
    a SLURM job's environment may differ from the login node's)."""
    if cfg.launcher == "accelerate" and shutil.which("accelerate") is None:
        raise InputError("--launcher accelerate: the `accelerate` command is not on PATH (pip install accelerate, "
                         "or activate the environment that has it; --launcher inprocess runs every phase in this "
                         "process)")


def launcher_prefix(cfg: PipelineConfig) -> list[str]:
    prefix = ["accelerate", "launch"]
    if cfg.accelerate_config:
        prefix += ["--config_file", str(Path(cfg.accelerate_config).resolve())]
    if cfg.num_processes:
        if cfg.num_processes > 1 and not cfg.accelerate_config:
            prefix += ["--multi_gpu"]  # plain data parallel (torchrun); on CPU with --use_cpu it uses gloo
        prefix += ["--num_processes", str(cfg.num_processes)]
    return prefix + list(cfg.launcher_args)


def _raw_dir(cfg: PipelineConfig, subdir: str) -> Path:
    from ..data.paths import data_dir

    return (data_dir(cfg.data_dir) / subdir).resolve()


def split_links(cfg: PipelineConfig, which: str, check_files: bool = True) -> dict[str, Path]:
    """{train.json: FILE, valid.json: FILE, test.json: FILE} of `source_files` / `target_files`."""
    files = getattr(cfg, f"{which}_files")
    flag = f"--{which}_files"
    if not isinstance(files, dict) or sorted(files) != ["test", "train", "valid"]:
        raise InputError(f"{flag}: expected a mapping with exactly train, valid and test, got {files!r}")
    from ..data.paths import data_dir

    links = {}
    for split, name in files.items():
        path = Path(name) if Path(name).is_absolute() else data_dir(cfg.data_dir) / name
        if check_files and not path.is_file():
            raise InputError(f"{flag}: {split}: {path} not found")
        links[f"{split}.json"] = path.resolve()
    return links


def _model_limit(base_model: str | None) -> int | None:
    """max_position_embeddings of a local base model's config.json (None when unknown)."""
    if not base_model:
        return None
    path = Path(base_model) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    for key in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def cot_max_length(cfg: PipelineConfig, base_model: str | None) -> int:
    """`cot_max_length`, else the model's limit capped at 2048. Padding is dynamic, so a larger cap costs only on
    records that need it: no CoT record up to this length is cut."""
    if cfg.cot_max_length:
        return cfg.cot_max_length
    limit = _model_limit(base_model) or COT_MAX_LENGTH_CAP
    return min(limit, COT_MAX_LENGTH_CAP)


def kshot_eval_steps(k: int | None) -> int:
    """The authors' rule (rec_tuning.py): every 10 steps for K <= 128, else K / 128 * 5; CoT and source
    phases (ins_tuning.py): 10."""
    if k is None or k <= 128:
        return 10
    return max(1, int(k / 128 * 5))


def cot_spec(cfg: PipelineConfig, step: str) -> tuple[tuple[int, ...] | None, str]:
    """(stages or None for all three, curriculum) of a CoT step of METHODS."""
    if step == "cot":
        stages = tuple(sorted(set(cfg.cot_stages)))
        return (None if stages == (1, 2, 3) else stages), cfg.cot_curriculum
    return None, "ordered" if step == "cot_staged" else "shuffled"


def pipeline_phases(cfg: PipelineConfig, check_data: bool = True) -> list[Phase]:
    """Every phase of this config in run order, with its exact command (`Phase.command_line(cfg)`) and the
    phases it depends on (`after`); nothing runs, nothing is written. Used by run_pipeline itself, by
    `run_experiments.py --dry_run` and for SLURM dependency chains (one job per phase, `--dependency=afterok`
    on the jobs of `after`). Running a phase's command alone, then `run_pipeline` again, skips nothing the
    command finished only if its output is complete: run_pipeline marks it done after checking.
    `check_data=False`: a plan on a machine without the data (nothing is read, fetched or checked there)."""
    check_config(cfg, check_data)
    run_dir = Path(cfg.run_dir).resolve()
    data = {w: run_dir / "data" / w for w in ("source", "target")}
    phases: list[Phase] = []
    for which in ("source", "target"):
        dataset = cfg.source_dataset if which == "source" else cfg.target_dataset
        raw = _raw_dir(cfg, cfg.source_subdir if which == "source" else cfg.target_subdir)
        subdir = cfg.source_subdir if which == "source" else cfg.target_subdir
        links = split_links(cfg, which, check_data) if getattr(cfg, f"{which}_files") else {}
        if links:  # published records picked file by file: run_prepare_data reads links to them
            dataset, raw = "records", run_dir / "raw" / which
        argv = ["--dataset", dataset, "--raw_dir", str(raw), "--output_dir", str(data[which]),
                "--max_windows", str(cfg.max_windows), "--item_kind", cfg.item_kind]
        if cfg.download and not links:
            from ..data.download import RELEASES

            argv += ["--download"] + (["--release", subdir] if subdir in RELEASES else [])
            argv += ["--mirror", cfg.mirror] if cfg.mirror else []
        if which == "source" and cfg.source_target_style:
            argv += ["--target_style", cfg.source_target_style]
        argv += list(cfg.source_prepare_args if which == "source" else cfg.target_prepare_args)
        phases.append(Phase(f"data/{which}", f"prepare {which}", "prepare", data[which], "run_prepare_data.py", argv,
                            links={raw / name: target for name, target in links.items()}))

    plan = [METHODS[m] for m in cfg.methods]
    uses_cot = any(s.startswith("cot") for chain in plan for s in chain)
    cot_file = None
    if uses_cot:
        cot_file = run_dir / "cot" / "cot_train.json"
        if cfg.cot_file or TEACHERS[cfg.teacher].build is None:  # records from a file, asked of no one
            if cfg.cot_file:
                source = Path(cfg.cot_file).resolve()
            elif not check_data:  # a plan: where the file will be
                from ..data.paths import data_dir

                source = (data_dir(cfg.data_dir) / "tlrec-cot" / "stage123.json").resolve()
            else:  # DATA_DIR/tlrec-cot/stage123.json, fetched and verified with --download
                from ..data.download import release_file
                from ..data.paths import data_dir
                from ..validation import check_output_dir

                if cfg.download and not (data_dir(cfg.data_dir) / "tlrec-cot" / "stage123.json").is_file():
                    check_output_dir(data_dir(cfg.data_dir) / "tlrec-cot", "--data_dir")

                source = release_file("tlrec-cot", "stage123.json", cfg.data_dir, download=cfg.download,
                                      mirror=cfg.mirror).resolve()
            argv = ["cot_records", "--cot_file", str(source), "--output_dir", str(run_dir / "cot")]
            phases.append(Phase("cot", "CoT records from a file", "cot", run_dir / "cot",
                                "-m tlrec_utils.cot.records", argv))
        else:
            argv = ["--data_dir", str(data["source"]), "--output_dir", str(run_dir / "cot"), "--teacher", cfg.teacher,
                    "--model", cfg.teacher_model, "--kind", cfg.item_kind, "--hit_match", cfg.hit_match,
                    "--context_style", cfg.cot_context_style, "--no-progress"]
            argv += ["--mode", cfg.teacher_mode] if cfg.teacher_mode != "live" else []
            argv += ["--allow_same_user_neighbors"] if cfg.cot_same_user_neighbors else []
            for flag, value in (("--base_url", cfg.teacher_base_url), ("--max_users", cfg.cot_max_users),
                                ("--max_cost", cfg.cot_max_cost), ("--system_prompt", cfg.teacher_system_prompt)):
                if value is not None:
                    argv += [flag, str(value)]
            phases.append(Phase("cot", "cot generation", "cot", run_dir / "cot", "run_cot_generation.py", argv,
                                after=["data/source"]))

    base_model = cfg.base_model
    model_after = []
    if base_model:
        if Path(base_model).exists():
            base_model = str(Path(base_model).resolve())
    else:
        base_model = str(run_dir / "model")
        text = [str(data["source"] / "train.json"), str(data["target"] / "train.json")]
        text += [str(cot_file)] if cot_file else []
        argv = ["--data", *text, "--output_dir", base_model, "--vocab_size", str(cfg.tiny_vocab_size),
                "--hidden_size", str(cfg.tiny_hidden_size)]
        after = ["data/source", "data/target"] + (["cot"] if cot_file else [])
        phases.append(Phase("model", "tiny LLaMA", "model", Path(base_model), "-m tlrec_utils.model.tiny_llm", argv,
                            after))
        model_after = ["model"]
    start_adapter = str(Path(cfg.start_adapter).resolve()) if cfg.start_adapter else None
    full = setting(cfg, "tuning", "finetune") == "full"
    model_keys = _model_keys()
    rec_max_length = cfg.tuning.get("max_length")

    def tuning_argv(out: Path, state, train_files, epochs, phase_kind: str, k_shot=None, seed=0, cot=None):
        """Each run_tuning flag once, with its effective value: what the pipeline sets, then `tuning`, then the
        phase's mapping (later ones win; a key keeps its first position); `tuning_args` (raw flags) last."""
        model, adapter = state
        opts = {"base_model": model, "output_dir": str(out), "train_files": [str(f) for f in train_files],
                "num_train_epochs": epochs, "seed": seed, "init_adapter": adapter, "k_shot": k_shot,
                "k_shot_seed": seed if k_shot else None,
                # checkpoints for resumption (SIGTERM); the mappings may change these
                "save_strategy": "steps", "save_steps": 50, "save_total_limit": 1, "dataloader_num_workers": 0,
                # the phase's effect: held-out records scored before and after (phase_effect, check_start); a
                # K-shot phase, which no phase continues, scores the target records only
                "effect_files": [f"{w}={data[w] / 'valid.json'}"
                                 for w in (("target",) if phase_kind == "kshot" else ("source", "target"))],
                "effect_records": cfg.effect_records,
                "effect_max_length": setting(cfg, "tuning", "max_length"),  # the rec length, in the CoT phase too
                "heldout_records": cfg.cot_heldout_records if phase_kind == "cot" else None}
        if cfg.validate:
            steps = kshot_eval_steps(k_shot if phase_kind == "kshot" else None)
            opts.update(AUTHORS_VALIDATION, val_file=str(data["target"] / "valid.json"), eval_steps=steps,
                        save_steps=steps)
            if "eval_steps" in cfg.tuning and "save_steps" not in cfg.tuning:
                opts["save_steps"] = cfg.tuning["eval_steps"]
        opts["prompt_template"] = cfg.prompt_template
        opts.update({k: v for k, v in cfg.tuning.items() if not (phase_kind == "cot" and k == "max_length")})
        if phase_kind == "cot":
            stages, curriculum = cot
            opts.update(max_length=cot_max_length(cfg, base_model), stages=list(stages) if stages else None,
                        curriculum=curriculum)
        opts.update(getattr(cfg, f"{phase_kind}_tuning"))
        return to_flags(opts) + list(cfg.tuning_args)

    def eval_argv(out: Path, state) -> list[str]:
        model, adapter = state
        opts = {"base_model": model, "adapter": adapter, "test_file": str(data["target"] / "test.json"),
                "items_file": str(data["target"] / "items.json"), "output_dir": str(out), "limit": cfg.test_limit,
                "max_length": rec_max_length,  # evaluate with the length the model was rec-tuned with
                "prompt_template": cfg.prompt_template}
        opts.update({k: v for k, v in cfg.tuning.items() if k in model_keys})
        return to_flags({**opts, **cfg.eval})

    owners: dict[tuple, tuple[str, Path]] = {}  # tuning chain -> (phase key, directory): shared phases run once
    data_after = ["data/source", "data/target", *model_after]
    for method in cfg.methods:
        mdir = run_dir / method
        state, state_key, chain = (base_model, start_adapter), None, ()
        for step in METHODS[method]:
            cot = cot_spec(cfg, step) if step.startswith("cot") else None
            chain = chain + ((step[:3], cot) if cot else (step,),)  # tlrec and tlrec_staged may be one chain
            label, sub = ("CoT tuning", "cot_tuning") if cot else ("source rec-tuning", "source_tuning")
            if chain not in owners:
                out = mdir / sub
                if cot:
                    argv = tuning_argv(out, state, [cot_file], cfg.cot_epochs, "cot", cot=cot)
                    after = data_after + ["cot"]
                else:
                    argv = tuning_argv(out, state, [data["source"] / "train.json"], cfg.source_epochs, "source",
                                       k_shot=cfg.source_records)
                    after = list(data_after)
                after += [state_key] if state_key else []
                key = f"{method}/{sub}"
                phases.append(Phase(key, f"{method}: {label}", "tuning", out, "run_tuning.py", argv, after, method,
                                    start=state_key))
                owners[chain] = (key, out)
            state_key, out = owners[chain]
            state = (str(out), None) if full else (base_model, str(out))

        def add_eval(setting_name, eval_state, eval_after, method=method, mdir=mdir):
            out = mdir / "eval" / setting_name
            phases.append(Phase(f"{method}/eval/{setting_name}", f"{method}: eval {setting_name}", "eval", out,
                                "run_eval.py", eval_argv(out, eval_state), eval_after, method, setting_name))

        add_eval(SETTING_ZERO_SHOT, state, data_after + ([state_key] if state_key else []))
        for k in cfg.k_shots:
            for seed in cfg.seeds:
                name = f"k{k}_seed{seed}"
                out = mdir / name
                argv = tuning_argv(out, state, [data["target"] / "train.json"], cfg.kshot_epochs, "kshot",
                                   k_shot=k, seed=seed)
                key = f"{method}/{name}"
                phases.append(Phase(key, f"{method}: {k}-shot target rec-tuning (seed {seed})", "tuning", out,
                                    "run_tuning.py", argv, data_after + ([state_key] if state_key else []), method,
                                    start=state_key))
                add_eval(name, (str(out), None) if full else (base_model, str(out)), [key])
    return phases


# ---- running phases -------------------------------------------------------------------------------------


class _Signals:
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


def _import_main(script: str):
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


def execute(cfg: PipelineConfig, phase: Phase, signals: _Signals | None = None):
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
    result = _import_main(phase.script)(list(phase.argv))
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
    if phase.kind == "cot" and phase.script == "-m tlrec_utils.cot.records":
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


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    recorded = ((_read_json(phase.dir / FINGERPRINT_FILE) or {}).get("what") or {}).get("inputs") or {}
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
    done = _read_json(phase.dir / PHASE_DONE)
    started = _read_json(phase.dir / FINGERPRINT_FILE) or {}
    if done is not None and done.get("fingerprint") == fp:
        return "reused", None
    if done is None and started.get("fingerprint") == fp:
        return "resume", None
    if done is not None or (phase.dir.is_dir() and any(phase.dir.iterdir())):
        return "rerun", started.get("what")
    return "new", None


def plan_fingerprints(cfg: PipelineConfig, phases: list[Phase]) -> dict[str, tuple[str, dict, str, dict | None]]:
    """key -> (fingerprint, what, status, recorded what) of every phase, in run order; nothing runs."""
    out, upstream = {}, {}
    for phase in phases:
        fp, what = phase_fingerprint(cfg, phase, upstream)
        upstream[phase.key] = fp
        out[phase.key] = (fp, what, *phase_status(phase, fp))
    return out


def _changed(plan_entry) -> str:
    from ..provenance import changes

    fp, what, status, old = plan_entry
    return "; ".join(changes(old, what)[:3])


def check_on_change(cfg: PipelineConfig, plan: dict, where: str) -> None:
    """--on_change error: refuse (one line) before anything runs when a phase would be rerun."""
    stale = [key for key, entry in plan.items() if entry[2] == "rerun"]
    if stale and cfg.on_change == "error":
        raise InputError(f"--on_change error: {len(stale)} phase(s) in {where} were made from other settings or "
                         f"inputs, first {stale[0]} ({_changed(plan[stale[0]])}); rerun with --on_change rerun to "
                         "redo them and everything after them, or use a new --run_dir")


def _clear_stale(cfg: PipelineConfig, phase: Phase) -> None:
    """Remove a phase's output made from other settings (checkpoints included: they must not be resumed). Teacher
    answers bought from an API are moved aside instead (nothing paid for is lost)."""
    import shutil

    if not phase.dir.exists():
        return
    if phase.kind == "cot" and TEACHERS[cfg.teacher].paid:
        aside = phase.dir.with_name(f"{phase.dir.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
        phase.dir.rename(aside)
        logger.warning("[%s] the CoT answers made with other settings moved to %s", phase.name, aside)
    else:
        shutil.rmtree(phase.dir)


def run_phase(cfg: PipelineConfig, phase: Phase, signals: _Signals | None = None,
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
        check_on_change(cfg, {phase.key: (fp, what, status, old)}, str(phase.dir))
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
    with run_dir_lock(run_dir), _Signals() as signals:
        plan = plan_fingerprints(cfg, phases)
        check_on_change(cfg, plan, str(run_dir))
        reused = [key for key, entry in plan.items() if entry[2] == "reused"]
        stale = [key for key, entry in plan.items() if entry[2] == "rerun"]
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
    out = {"variants": results, "phases": effects, "warnings": warnings, "provenance": record,
           "fingerprint": fingerprint(upstream), "config": mask_secrets_in(asdict(cfg)),
           "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "results.json", json.loads(json.dumps(out, default=str)))
    return out


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


def parse_pipeline_args(argv=None, description: str | None = None) -> PipelineConfig:
    """PipelineConfig from flags; a config file (first argument or `--config FILE.yaml|json`) supplies values
    that flags after it override; the mapping flags (--tuning, --cot_tuning, --source_tuning, --kshot_tuning,
    --eval, --source_files, --target_files) add to the file's mappings; --tuning_args takes the rest of the line."""
    from ..arguments import parse_args

    (cfg,) = parse_args((PipelineConfig,), argv, description=description, rest_of_line=("tuning_args",))
    return cfg
