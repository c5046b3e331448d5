"""Command-line arguments of run_tuning.py and run_eval.py as dataclasses for `HfArgumentParser`.

Every `TrainingArguments` flag works (`--deepspeed`, `--bf16`, `--report_to`, ...), and a single `.json` or
`.yaml` file path can replace the flags (as in HF run_clm.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .errors import InputError
from .validation import check_config_values, check_device, check_number, comma_list, missing_required

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

    def __post_init__(self):
        if not str(self.base_model or "").strip():
            raise InputError("--base_model: empty (give a model directory or hub id)")
        from .validation import check_model_path

        check_model_path(self.base_model, "--base_model")
        if self.load_in_4bit and self.load_in_8bit:
            raise InputError("--load_in_4bit and --load_in_8bit exclude each other")


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

    def __post_init__(self):
        check_number("--lora_r", self.lora_r, 1)
        check_number("--lora_alpha", self.lora_alpha, 0, exclusive_min=True)
        check_number("--lora_dropout", self.lora_dropout, 0, 0.999)
        self.lora_target_modules = ",".join(comma_list("--lora_target_modules", self.lora_target_modules))
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
        default=None, metadata={"help": "Train on K records drawn from the training files with --seed."}
    )
    max_length: int = field(
        default=512, metadata={"help": "Longest sequence in tokens; longer prompts are cut inside the history."}
    )
    train_on_inputs: bool = field(default=False, metadata={"help": "Also compute the loss on the prompt tokens."})
    curriculum: str = field(
        default="ordered",
        metadata={"help": "Order of CoT records with a 'stage' field: ordered (per epoch Stage 1, 2, 3), "
                          "shuffled (no curriculum), stagewise (all epochs of Stage 1, then 2, then 3).",
                  "choices": ["ordered", "shuffled", "stagewise"]},
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

    def __post_init__(self):
        from .validation import check_input_file

        if not self.train_files:
            raise InputError("--train_files: give at least one records file")
        for path in self.train_files:
            check_input_file(path, "--train_files")
        if self.val_file is not None:
            check_input_file(self.val_file, "--val_file")
        check_number("--k_shot", self.k_shot, 1)
        check_number("--max_length", self.max_length, 8)
        check_number("--max_val_records", self.max_val_records, 1)


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

        def __post_init__(self):
            check_number("--learning_rate", self.learning_rate, 0)
            if self.max_steps is None or self.max_steps <= 0:  # --max_steps overrides the epochs
                check_number("--num_train_epochs", self.num_train_epochs, 0, exclusive_min=True)
            check_number("--per_device_train_batch_size", self.per_device_train_batch_size, 1)
            check_number("--per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
            check_number("--gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
            check_number("--warmup_steps", self.warmup_steps, 0)
            check_number("--early_stopping_patience", self.early_stopping_patience, 1)
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
    num_negatives: int = field(default=50)
    ndcg_k: int = field(default=10)
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

    def __post_init__(self):
        from .validation import check_adapter_dir, check_input_file, check_output_dir

        self.metrics = ",".join(dict.fromkeys(comma_list("--metrics", self.metrics, EVAL_METRICS)))
        check_number("--num_negatives", self.num_negatives, 1)
        check_number("--ndcg_k", self.ndcg_k, 1)
        check_number("--batch_size", self.batch_size, 1)
        check_number("--max_length", self.max_length, 8)
        check_number("--max_new_tokens", self.max_new_tokens, 1)
        check_number("--limit", self.limit, 1)
        check_input_file(self.test_file, "--test_file")
        if self.items_file is not None:
            check_input_file(self.items_file, "--items_file")
        if self.adapter is not None:
            check_adapter_dir(self.adapter, "--adapter")
        check_device("--device", self.device)
        check_output_dir(self.output_dir, "--output_dir")


def parse_args(dataclass_types, argv=None):
    """Flags, or one .json/.yaml file holding them all. Returns one instance per dataclass type; every value
    is checked here (the dataclasses' __post_init__), before any data or model is read."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        from .fileio import read_config_file

        path = argv[0]
        values = check_config_values(read_config_file(path), dataclass_types, path)
        missing = missing_required(values, dataclass_types)
        if missing:
            raise InputError(f"{path}: missing required setting(s) {', '.join(missing)}")
        try:
            return parser.parse_dict(values)
        except (ValueError, TypeError) as exc:  # TrainingArguments' own checks (e.g. --bf16 without support)
            raise InputError(f"{path}: {' '.join(str(exc).split())}") from None
    try:
        *instances, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except ValueError as exc:  # TrainingArguments' own checks
        raise InputError(" ".join(str(exc).split())) from None
    if rest:
        raise InputError(f"unrecognized arguments: {' '.join(rest)}")
    return tuple(instances)


def parse_tuning_args(argv=None):
    """run_tuning's (ModelArguments, LoraArguments, DataArguments, TuningTrainingArguments). The model, LoRA
    and data flags and --output_dir are checked first, before the slow TrainingArguments import."""
    argv = list(sys.argv[1:] if argv is None else argv)
    light = (ModelArguments, LoraArguments, DataArguments)
    config_file = len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))
    if not config_file and not {"-h", "--help"} & set(argv):
        parser = HfArgumentParser(light, allow_abbrev=False)
        parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if "--output_dir" in argv:
            from .validation import check_output_dir

            i = argv.index("--output_dir")
            check_output_dir(argv[i + 1] if i + 1 < len(argv) else "", "--output_dir")
    from . import arguments

    return parse_args((*light, arguments.TuningTrainingArguments), argv)
