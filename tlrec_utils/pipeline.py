"""The whole TLRec method as chained, resumable phases (run_pipeline.py; run_experiments.py builds on it).

API:

    from tlrec_utils.pipeline import PipelineConfig, run_pipeline, format_table
    results = run_pipeline(PipelineConfig(run_dir="runs/qs", data_dir="data"))
    # results["variants"]["tlrec"]["k16_seed0"] == {"auc": ..., "ndcg@10": ..., "ndcg@10_user": ..., ...}
    print(format_table(results))

Phases, each in its own directory under `run_dir` (each LoRA phase continues the previous adapter):

    data/source, data/target      run_prepare_data (source: the Netflix release, target: MovieLens-100K)
    cot/                          run_cot_generation on the source train split (teacher: heuristic or openai),
                                  or the CoT records of `cot_file` (teacher: published, the authors' GPT-4 data)
    model/                        the tiny LLaMA built from the data, only when no --base_model is given
    <variant>/cot_tuning/         LoRA on the CoT records, in curriculum order (Stage 1, 2, 3)
    <variant>/source_tuning/      rec-tuning on source records: the zero-shot model
    <variant>/k{K}_seed{S}/       K-shot rec-tuning on target records, for every K in k_shots and S in seeds
    <variant>/eval/<setting>/     run_eval on the target test split: metrics.json, predictions.jsonl
    results.json                  every variant's metrics per setting (zero_shot, k16_seed0, ...)

Variants: `tlrec` (or `tlrec_wo_cot`, `tlrec_wo_rec_tuning`, `tlrec_wo_curriculum` when the ablation switches
`use_cot`, `use_rec_tuning`, `curriculum=shuffled` say so), plus `wo_cot` (the same without CoT, TALLRec-style)
when `compare_without_cot`. Shared phases (data, cot, model) run once.

Resumption: a phase is complete when its directory holds `phase_done.json`, written last; complete phases are
skipped. An interrupted tuning phase (SIGTERM, kill) resumes from its own last checkpoint (run_tuning), and the
CoT phase never asks the teacher again for an answered user (run_cot_generation). A run stopped by SIGTERM
raises `PhaseInterrupted`; rerunning the same command continues.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import InputError
from .fileio import atomic_write_json, read_config_file

logger = logging.getLogger(__name__)

PHASE_DONE = "phase_done.json"
SETTING_ZERO_SHOT = "zero_shot"


class PhaseInterrupted(Exception):
    """A phase stopped early (SIGTERM) after saving a checkpoint; rerun to resume."""


@dataclass
class PipelineConfig:
    run_dir: str = field(metadata={"help": "Everything goes here, one directory per phase."})
    data_dir: str | None = field(
        default=None, metadata={"help": "Folder holding the raw datasets (default: $TLREC_DATA_DIR, else ~/.cache/tlrec)."}
    )
    source_dataset: str = field(default="windows-csv", metadata={"help": "run_prepare_data --dataset of the source."})
    source_subdir: str = field(default="netflix", metadata={"help": "Source raw files: DATA_DIR/SOURCE_SUBDIR."})
    target_dataset: str = field(default="ml-100k", metadata={"help": "run_prepare_data --dataset of the target."})
    target_subdir: str = field(default="ml-100k", metadata={"help": "Target raw files: DATA_DIR/TARGET_SUBDIR."})
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
    trust_remote_code: bool = field(default=False)
    tiny_vocab_size: int = field(default=2000)
    tiny_hidden_size: int = field(default=64, metadata={"help": "Hidden size of the tiny LLaMA (2 layers, 4 heads)."})
    # CoT data (source domain)
    teacher: str = field(
        default="heuristic",
        metadata={"help": "heuristic (offline, not an LLM), openai, or published (the TLRec authors' GPT-4 CoT data "
                          "stage123.json: cot_file, default DATA_DIR/tlrec-cot/stage123.json, --download fetches it)."},
    )
    cot_file: str | None = field(
        default=None, metadata={"help": "Use these CoT records (ours or the authors' stage123.json) instead of "
                                        "asking a teacher."},
    )
    hit_match: str = field(default="title_in_answer", metadata={"help": "CoT hit rule: title_in_answer or recommended."})
    teacher_system_prompt: str | None = field(default=None, metadata={"help": "System message to the teacher (none)."})
    teacher_model: str = field(default="gpt-4")
    teacher_base_url: str | None = field(default=None)
    cot_max_users: int | None = field(default=None, metadata={"help": "Ask the teacher about the first N users."})
    cot_max_cost: float | None = field(default=None, metadata={"help": "Teacher spending cap (USD)."})
    # method and ablations (paper Section 5.3)
    use_cot: bool = field(default=True, metadata={"help": "CoT curriculum tuning phase (off: w/o CoT)."})
    curriculum: str = field(
        default="ordered",
        metadata={"help": "ordered, stagewise, or shuffled (w/o curriculum).",
                  "choices": ["ordered", "shuffled", "stagewise"]},
    )
    use_rec_tuning: bool = field(default=True, metadata={"help": "Source rec-tuning phase (off: w/o rec-tuning)."})
    compare_without_cot: bool = field(default=True, metadata={"help": "Also run the same without CoT (TALLRec-style)."})
    # tuning
    cot_epochs: float = field(default=1.0)
    source_records: int | None = field(default=None, metadata={"help": "Rec-tune on N sampled source records (all)."})
    source_epochs: float = field(default=1.0)
    k_shots: list[int] = field(default_factory=lambda: [16, 64, 256])
    seeds: list[int] = field(default_factory=lambda: [0])
    kshot_epochs: float = field(default=10.0)
    learning_rate: float = field(default=1e-4)
    per_device_train_batch_size: int = field(default=8)
    gradient_accumulation_steps: int = field(default=1)
    max_length: int = field(default=512)
    prompt_template: str | None = field(
        default=None, metadata={"help": "Alpaca template of every tuning and evaluation phase: tallrec (default), "
                                        "tlrec or alpaca (tlrec_utils/prompts.py)."},
    )
    finetune: str = field(
        default="lora",
        metadata={"help": "lora (the paper: each phase continues the previous adapter) or full (each phase continues "
                          "the previous phase's full model; for the tiny demo model, which LoRA alone barely moves).",
                  "choices": ["lora", "full"]},
    )
    lora_r: int = field(default=8)
    tuning_args: list[str] = field(
        default_factory=list, metadata={"help": "Extra run_tuning flags for every tuning phase, e.g. --bf16 --use_cpu."}
    )
    # evaluation (target test split)
    test_limit: int | None = field(default=None, metadata={"help": "Evaluate on the first N test records (all)."})
    eval_metrics: str = field(default="auc,ndcg")
    num_negatives: int = field(default=50)
    ndcg_k: int = field(default=10)
    eval_batch_size: int = field(default=16)
    device: str | None = field(default=None)


# ---- phases ----------------------------------------------------------------------------------------------


def _phase(directory: Path, name: str, fn, is_complete=None) -> dict:
    """Run `fn()` unless `directory` holds the marker (or `is_complete()` says an earlier run finished it);
    write the marker last."""
    marker = directory / PHASE_DONE
    if marker.is_file():
        logger.info("[%s] complete, skipped (%s)", name, directory)
        return json.loads(marker.read_text())
    started = time.time()
    if is_complete is not None and is_complete():
        info = {"note": "finished by an earlier run"}
    else:
        logger.info("[%s] running -> %s", name, directory)
        info = fn() or {}
    done = {"phase": name, "wall_time_s": round(time.time() - started, 1), **info}
    atomic_write_json(marker, json.loads(json.dumps(done, default=str)))
    logger.info("[%s] done in %.1f s", name, done["wall_time_s"])
    return done


def _raw_dir(cfg: PipelineConfig, subdir: str) -> Path:
    from .paths import data_dir

    return data_dir(cfg.data_dir) / subdir


def prepare_phase(cfg: PipelineConfig, which: str) -> Path:
    from .prepare import PrepareConfig, prepare_dataset

    out = Path(cfg.run_dir) / "data" / which
    dataset = cfg.source_dataset if which == "source" else cfg.target_dataset
    subdir = cfg.source_subdir if which == "source" else cfg.target_subdir
    raw = _raw_dir(cfg, subdir)

    def run():
        from .download import RELEASES

        meta = prepare_dataset(PrepareConfig(
            dataset=dataset, raw_dir=str(raw), output_dir=str(out), max_windows=cfg.max_windows,
            download=cfg.download, release=subdir if subdir in RELEASES else None, mirror=cfg.mirror,
            item_kind=cfg.item_kind,
        ))  # fmt: skip
        return {"counts": meta["counts"]}

    _phase(out, f"prepare {which}", run)
    return out


def cot_phase(cfg: PipelineConfig, source_dir: Path) -> Path:
    from .cot import CotConfig, run

    out = Path(cfg.run_dir) / "cot"
    if cfg.cot_file or cfg.teacher == "published":
        return published_cot_phase(cfg, out)

    def go():
        summary = run(CotConfig(
            data_dir=str(source_dir), output_dir=str(out), teacher=cfg.teacher, model=cfg.teacher_model,
            base_url=cfg.teacher_base_url, max_users=cfg.cot_max_users, max_cost=cfg.cot_max_cost, kind=cfg.item_kind,
            hit_match=cfg.hit_match, system_prompt=cfg.teacher_system_prompt, progress=False,
        ))  # fmt: skip
        if summary.get("stopped") or summary.get("users_remaining"):
            raise PhaseInterrupted(f"CoT generation stopped early ({summary.get('stopped')}, "
                                   f"{summary.get('users_remaining')} users left): rerun to continue")
        if not summary["cot_records"]:
            raise InputError(f"{out}: the teacher produced no CoT records (no user hit); ask more users")
        return {k: summary[k] for k in ("users_completed", "users_hit", "hit_rate", "cot_records", "estimated_cost")}

    _phase(out, "cot generation", go)
    return out / "cot_train.json"


def published_cot_phase(cfg: PipelineConfig, out: Path) -> Path:
    """CoT records from a file (the authors' released stage123.json or an earlier cot_train.json), validated,
    stages recovered, written as out/cot_train.json."""
    from .cot import load_cot_records
    from .download import release_file
    from .fileio import sha256_file

    if cfg.cot_file:
        path = Path(cfg.cot_file)
        if not path.is_file():
            raise InputError(f"{path}: CoT file not found (cot_file)")
    else:  # DATA_DIR/tlrec-cot/stage123.json, fetched and verified with --download
        path = release_file("tlrec-cot", "stage123.json", cfg.data_dir, download=cfg.download, mirror=cfg.mirror)

    def go():
        records = load_cot_records(path)
        atomic_write_json(out / "cot_train.json", records, indent=1)
        stages = {s: sum(r["stage"] == s for r in records) for s in sorted({r["stage"] for r in records})}
        return {"cot_file": str(path), "sha256": sha256_file(path), "cot_records": len(records),
                "records_per_stage": stages}

    _phase(out, "CoT records from a file", go)
    return out / "cot_train.json"


def model_phase(cfg: PipelineConfig, text_files: list[Path]) -> str:
    if cfg.base_model:
        return cfg.base_model
    from .tiny_llm import build_tiny_llama

    out = Path(cfg.run_dir) / "model"
    _phase(out, "tiny LLaMA", lambda: {"path": str(build_tiny_llama(
        text_files, out, vocab_size=cfg.tiny_vocab_size, hidden_size=cfg.tiny_hidden_size))})
    return str(out)


def tuning_phase(cfg: PipelineConfig, name: str, out: Path, base_model: str, train_files, init_adapter=None,
                 epochs: float = 1.0, k_shot: int | None = None, seed: int = 0, curriculum: str = "ordered") -> Path:
    from .arguments import DataArguments, LoraArguments, ModelArguments, TuningTrainingArguments, parse_args
    from .training import FINISHED_MARKER, tune

    argv = [
        "--base_model", base_model, "--output_dir", str(out), "--train_files", *map(str, train_files),
        "--num_train_epochs", str(epochs), "--learning_rate", str(cfg.learning_rate), "--seed", str(seed),
        "--per_device_train_batch_size", str(cfg.per_device_train_batch_size),
        "--gradient_accumulation_steps", str(cfg.gradient_accumulation_steps), "--max_length", str(cfg.max_length),
        "--finetune", cfg.finetune, "--lora_r", str(cfg.lora_r), "--curriculum", curriculum,
        "--save_strategy", "steps", "--save_steps", "50", "--save_total_limit", "1", "--dataloader_num_workers", "0",
    ]  # fmt: skip
    if init_adapter:
        argv += ["--init_adapter", str(init_adapter)]
    if k_shot:
        argv += ["--k_shot", str(k_shot)]
    if cfg.trust_remote_code:
        argv += ["--trust_remote_code"]
    if cfg.prompt_template:
        argv += ["--prompt_template", cfg.prompt_template]
    argv += list(cfg.tuning_args)

    def run():
        status = tune(*parse_args((ModelArguments, LoraArguments, DataArguments, TuningTrainingArguments), argv))
        if status != 0:
            raise PhaseInterrupted(f"{name} stopped (SIGTERM) after a checkpoint in {out}: rerun to resume")
        summary = json.loads((out / FINISHED_MARKER).read_text())
        return {"train_loss": summary["train_loss"], "global_step": summary["global_step"], "argv": argv}

    _phase(out, name, run, is_complete=lambda: (out / FINISHED_MARKER).is_file())
    return out


def eval_phase(cfg: PipelineConfig, name: str, out: Path, base_model: str, adapter, test_file: Path,
               items_file: Path) -> dict:
    from .arguments import EvalArguments, ModelArguments
    from .evaluation import evaluate, load_catalog, load_test_records, summary_line, write_outputs
    from .modeling import load_for_inference
    from .prompts import resolve_template

    def run():
        model_args = ModelArguments(base_model=base_model, trust_remote_code=cfg.trust_remote_code)
        eval_args = EvalArguments(
            test_file=str(test_file), output_dir=str(out), adapter=str(adapter) if adapter else None,
            items_file=str(items_file), metrics=cfg.eval_metrics, num_negatives=cfg.num_negatives, ndcg_k=cfg.ndcg_k,
            batch_size=cfg.eval_batch_size, max_length=cfg.max_length, limit=cfg.test_limit, device=cfg.device,
            prompt_template=cfg.prompt_template,
        )  # fmt: skip
        template = resolve_template(cfg.prompt_template, [eval_args.adapter, base_model])
        records = load_test_records(eval_args.test_file, eval_args.limit)
        catalog = load_catalog(eval_args.items_file, records) if "ndcg" in eval_args.metrics else None
        model, tokenizer = load_for_inference(model_args, eval_args.adapter, eval_args.device)
        metrics, predictions = evaluate(model, tokenizer, records, eval_args, catalog, source=eval_args.test_file,
                                        template=template)
        metrics["settings"].update(base_model=base_model, adapter=eval_args.adapter, test_file=eval_args.test_file)
        write_outputs(out, metrics, predictions)
        logger.info("[%s] %s", name, summary_line(metrics, cfg.ndcg_k))
        return {}

    _phase(out, name, run)
    return json.loads((out / "metrics.json").read_text())


# ---- the pipeline ----------------------------------------------------------------------------------------


def variant_name(use_cot: bool, use_rec_tuning: bool, curriculum: str) -> str:
    parts = [p for p, on in (("wo_cot", not use_cot), ("wo_rec_tuning", not use_rec_tuning),
                             ("wo_curriculum", use_cot and curriculum == "shuffled")) if on]
    return "_".join(["tlrec", *parts])


def variants(cfg: PipelineConfig) -> dict[str, dict]:
    """name -> {use_cot, use_rec_tuning, curriculum} of every variant this config runs."""
    out = {variant_name(cfg.use_cot, cfg.use_rec_tuning, cfg.curriculum):
           {"use_cot": cfg.use_cot, "use_rec_tuning": cfg.use_rec_tuning, "curriculum": cfg.curriculum}}
    if cfg.compare_without_cot and cfg.use_cot:
        out["wo_cot"] = {"use_cot": False, "use_rec_tuning": cfg.use_rec_tuning, "curriculum": cfg.curriculum}
    return out


def check_config(cfg: PipelineConfig) -> None:
    if cfg.curriculum not in ("ordered", "shuffled", "stagewise"):
        raise InputError(f"--curriculum must be ordered, shuffled or stagewise, got {cfg.curriculum!r}")
    if cfg.finetune not in ("lora", "full"):
        raise InputError(f"--finetune must be lora or full, got {cfg.finetune!r}")
    if cfg.teacher not in ("heuristic", "openai", "published"):
        raise InputError(f"--teacher must be heuristic, openai or published, got {cfg.teacher!r}")
    if any(k < 1 for k in cfg.k_shots):
        raise InputError(f"--k_shots must be positive, got {cfg.k_shots}")
    if cfg.prompt_template is not None:
        from .prompts import get_template

        get_template(cfg.prompt_template)  # an unknown name fails before any phase runs
    from .validation import check_device, check_number, comma_list

    for name in ("tiny_vocab_size", "tiny_hidden_size", "per_device_train_batch_size", "gradient_accumulation_steps",
                 "lora_r", "num_negatives", "ndcg_k", "eval_batch_size", "test_limit", "source_records",
                 "cot_max_users"):
        check_number(f"--{name}", getattr(cfg, name), 1)
    check_number("--max_length", cfg.max_length, 8)
    check_number("--max_windows", cfg.max_windows, 0)
    for name in ("cot_epochs", "source_epochs", "kshot_epochs", "cot_max_cost"):
        check_number(f"--{name}", getattr(cfg, name), 0, exclusive_min=True)
    check_number("--learning_rate", cfg.learning_rate, 0)
    cfg.eval_metrics = ",".join(dict.fromkeys(comma_list("--eval_metrics", cfg.eval_metrics, ("auc", "ndcg"))))
    check_device("--device", cfg.device)
    # the raw data must be there before run_dir is made (not needed once a data phase is complete)
    for which, subdir, dataset in (("source", cfg.source_subdir, cfg.source_dataset),
                                   ("target", cfg.target_subdir, cfg.target_dataset)):
        if (Path(cfg.run_dir) / "data" / which / PHASE_DONE).is_file():
            continue
        raw = _raw_dir(cfg, subdir)
        if not raw.is_dir() and not cfg.download:
            flag = "--data_dir" if cfg.data_dir else "data directory"
            raise InputError(f"{flag}: {raw} not found (raw files of the {which} dataset {dataset}; "
                             "--download fetches the public ones)")


def run_variant(cfg: PipelineConfig, name: str, spec: dict, base_model: str, data: dict, cot_file) -> dict:
    """Tuning chain and evaluation of one variant; returns {setting: metrics}.

    The chain state is (model, adapter): with LoRA every phase trains the previous phase's adapter on the base
    model; with full fine-tuning every phase starts from the previous phase's saved model."""
    vdir = Path(cfg.run_dir) / name
    state = (base_model, None)

    def tune_next(label, out, train_files, **kwargs):
        model, adapter = state
        tuning_phase(cfg, f"{name}: {label}", out, model, train_files, init_adapter=adapter, **kwargs)
        return (base_model, out) if cfg.finetune == "lora" else (str(out), None)

    if spec["use_cot"]:
        state = tune_next("CoT curriculum tuning", vdir / "cot_tuning", [cot_file], epochs=cfg.cot_epochs,
                          curriculum=spec["curriculum"])
    if spec["use_rec_tuning"]:
        state = tune_next("source rec-tuning", vdir / "source_tuning", [data["source"] / "train.json"],
                          epochs=cfg.source_epochs, k_shot=cfg.source_records)

    def evaluate_on(setting, model_and_adapter):
        model, adapter = model_and_adapter
        return eval_phase(cfg, f"{name}: eval {setting}", vdir / "eval" / setting, model, adapter,
                          data["target"] / "test.json", data["target"] / "items.json")

    results = {SETTING_ZERO_SHOT: evaluate_on(SETTING_ZERO_SHOT, state)}
    for k in cfg.k_shots:
        for seed in cfg.seeds:
            setting = f"k{k}_seed{seed}"
            few = tune_next(f"{k}-shot target rec-tuning (seed {seed})", vdir / setting,
                            [data["target"] / "train.json"], epochs=cfg.kshot_epochs, k_shot=k, seed=seed)
            results[setting] = evaluate_on(setting, few)
    return results


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run (or resume) every phase; returns {"variants": {name: {setting: metrics}}, "config": ...} and writes
    it to run_dir/results.json."""
    check_config(cfg)
    started = time.time()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {which: prepare_phase(cfg, which) for which in ("source", "target")}
    plan = variants(cfg)
    cot_file = cot_phase(cfg, data["source"]) if any(v["use_cot"] for v in plan.values()) else None
    text_files = [data["source"] / "train.json", data["target"] / "train.json"] + ([cot_file] if cot_file else [])
    base_model = model_phase(cfg, text_files)
    results = {name: run_variant(cfg, name, spec, base_model, data, cot_file) for name, spec in plan.items()}
    out = {"variants": results, "config": asdict(cfg), "wall_time_s": round(time.time() - started, 1)}
    atomic_write_json(run_dir / "results.json", json.loads(json.dumps(out, default=str)))
    return out


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def format_table(results: dict, k: int = 10) -> str:
    """A Markdown table: one row per setting, AUC and NDCG@k (sampled and per user) per variant."""
    names = list(results["variants"])
    settings = list(next(iter(results["variants"].values())))
    cols = [("AUC", "auc"), (f"NDCG@{k}", f"ndcg@{k}"), (f"NDCG@{k} user", f"ndcg@{k}_user")]
    header = ["setting"] + [f"{n} {label}" for n in names for label, _ in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in settings:
        row = [s] + [_fmt(results["variants"][n][s].get(key)) for n in names for _, key in cols]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(PipelineConfig)]


def parse_pipeline_args(argv=None, description: str | None = None) -> PipelineConfig:
    """PipelineConfig from flags; `--config FILE.yaml|json` supplies defaults that flags override."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(PipelineConfig, description=description)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise InputError("--config needs a file")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        from .validation import check_config_values

        values = check_config_values(read_config_file(path), (PipelineConfig,), path)
        parser.set_defaults(**values)
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in values:
                action.required = False
    # --tuning_args takes the rest of the line (it holds run_tuning flags)
    tuning_args = []
    if "--tuning_args" in argv:
        i = argv.index("--tuning_args")
        argv, tuning_args = argv[:i], argv[i + 1 :]
    (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    if tuning_args:
        cfg.tuning_args = list(cfg.tuning_args) + tuning_args
    return cfg
