"""Rec-tuning and CoT instruction tuning inside HF Trainer (LoRA or full), driven by run_tuning.py.

- Training features: prompt + output + EOS, loss on the response only (tokenization.RecordEncoder).
- Dynamic padding, length grouping (TrainingArguments.train_sampling_strategy, default group_by_length);
  CoT records with a `stage` field go through the curriculum sampler (tlrec_utils.tuning.curriculum).
- Validation AUC: evaluation returns only the (No, Yes) logits at the answer position of each validation
  prompt (never full-vocabulary logits, never a scan for Yes/No ids), so `metric_for_best_model=auc`,
  `load_best_model_at_end` and early stopping work, on one process or many.
- SIGTERM (SLURM preemption) saves a checkpoint before exiting; a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import signal
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import get_last_checkpoint, seed_worker

from ..cot.records import cot_records_from, is_cot_file, looks_like_cot, not_cot_message
from ..data.kshot import authors_order, sample_k_shot
from ..data.records import load_records, read_json_list
from ..errors import EXIT_INTERRUPTED, InputError, where
from ..evaluation import metrics as M
from ..evaluation.scoring import answer_logits, left_pad
from ..fileio import atomic_write_json, exclusive_lock, move_contents
from ..model.loading import (
    check_weights_fit,
    choose_attn_implementation,
    load_base_model,
    load_tokenizer,
    model_skeleton,
    prepare_for_training,
)
from ..model.tokenization import IGNORE_INDEX, AnswerTokens, RecordEncoder, derive_answer_tokens
from ..prompts import resolve_template, save_template
from ..provenance import changes, fingerprint, path_fingerprint
from ..validation import check_output_dir
from .curriculum import build_curriculum_sampler
from .packing import (
    PACKING_KERNELS,
    PackedCollator,
    TokenBudgetBatchSampler,
    check_packing_isolated,
    micro_batches_per_step,
    use_packing,
)

logger = logging.getLogger(__name__)

FINISHED_MARKER = "tuning_summary.json"  # written last: its presence means the output dir is complete
RUN_FINGERPRINT = "tlrec_run.json"  # in output_dir and in every checkpoint: what the run was made from
LOCK_FILE = ".tuning.lock"
# TrainingArguments that do not change the model (where and how often it logs and saves, how it resumes)
UNFINGERPRINTED = {"output_dir", "logging_dir", "resume_from_checkpoint", "overwrite_output_dir", "force_resume",
                   "report_to", "run_name", "disable_tqdm", "dataloader_num_workers", "local_rank", "save_steps",
                   "save_strategy", "save_total_limit", "logging_steps", "logging_strategy", "logging_first_step",
                   "hub_token", "push_to_hub_token"}


# ---- data ------------------------------------------------------------------------------------------------


def load_training_records(paths) -> list[dict]:
    """Records of all training files. CoT files (records with `stage`, or the TLRec authors' stage123.json whose
    records carry one of the three stage instructions) may have free-form outputs; every other record must be a
    Yes/No record."""
    out = []
    for path in paths:
        raw = read_json_list(path)
        if is_cot_file(raw):
            out.extend(cot_records_from(raw, path))
        elif looks_like_cot(raw):  # free-text answers: CoT data whose first instruction is not a stage's
            raise InputError(not_cot_message(path, raw[0]))
        else:
            if any("stage" in r for r in raw):
                raise InputError(f"{path}: some records have a 'stage' and some do not; keep CoT and Yes/No "
                                 "records in separate files")
            out.extend(load_records(path, require_label=True))
    if not out:
        raise InputError(f"{', '.join(map(str, paths))}: no training records")
    return out


def stage_records(records: list[dict], stages, source: str) -> list[dict]:
    """The CoT records of `stages` (--stages): the authors train on the Stage-3 records only."""
    if "stage" not in records[0]:
        raise InputError(f"--stages: {source} holds Yes/No records, not CoT records with a stage")
    kept = [r for r in records if r["stage"] in set(stages)]
    if not kept:
        found = sorted({r["stage"] for r in records})
        raise InputError(f"--stages {' '.join(map(str, stages))}: {source} has no record of these stages "
                         f"(it has stages {', '.join(map(str, found))})")
    return kept


def curriculum_stages(records: list[dict], curriculum: str, train_files) -> tuple[list | None, dict]:
    """(the stage of each record for the curriculum sampler, or None: no CoT records; record counts by kind).
    CoT and Yes/No records mixed (from separate files, in any order): `shuffled` shuffles them all together (the
    Yes/No records as stage 0); `ordered` and `stagewise` have no place for Yes/No records and are refused."""
    cot = sum("stage" in r for r in records)
    kinds = {"cot": cot, "yes_no": len(records) - cot}
    if not cot:
        return None, kinds
    if cot < len(records) and curriculum != "shuffled":
        raise InputError(f"--train_files {' '.join(map(str, train_files))}: {cot} CoT and {len(records) - cot} "
                         f"Yes/No records mixed; --curriculum {curriculum} orders CoT stages only: train them in "
                         "separate runs (--init_adapter chains them) or pass --curriculum shuffled")
    stages = [r.get("stage", 0) for r in records]
    logger.info("CoT records with stages %s (%d Yes/No records beside them): curriculum %s",
                sorted(set(stages) - {0}), kinds["yes_no"], curriculum)
    return stages, kinds


def training_dataset(records: list[dict], encoder, source: str) -> list[dict]:
    features = [encoder.training_features(r, where(source, record=i)) for i, r in enumerate(records)]
    encoder.report(source, len(records))
    return features


def validation_dataset(records: list[dict], encoder, source: str, loss_encoder=None) -> list[dict]:
    """Scoring prompts with their binary label (the 'label' key survives Trainer's column filter); with
    `loss_encoder`, also the training features (prompt + answer) whose loss is the validation loss."""
    features = []
    for i, r in enumerate(records):
        f = {"input_ids": encoder.prompt_ids(r, where(source, record=i)), "label": int(r["label"])}
        if loss_encoder is not None:
            train = loss_encoder.training_features(r, where(source, record=i))
            f.update(loss_input_ids=train["input_ids"], loss_labels=train["labels"])
        features.append(f)
    encoder.report(source, len(records))
    return features


def _right_pad(seqs, labels, pad_id: int, multiple: int | None = None):
    width = max(len(s) for s in seqs)
    if multiple:
        width = math.ceil(width / multiple) * multiple
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    out_labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, (s, lab) in enumerate(zip(seqs, labels)):
        ids[row, : len(s)] = torch.tensor(s)
        out_labels[row, : len(s)] = torch.tensor(lab)
        mask[row, : len(s)] = 1
    return ids, mask, out_labels


class TuningCollator:
    """Dynamic padding. Training features (`labels`): right padding, labels -100 on padding.
    Validation features (`label`): left padding with position ids, the answer position last."""

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None):
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features):
        if "labels" not in features[0]:
            ids, mask, pos = left_pad([f["input_ids"] for f in features], self.pad_id)
            batch = {"input_ids": ids, "attention_mask": mask, "position_ids": pos,
                     "label": torch.tensor([f["label"] for f in features])}
            if "loss_input_ids" in features[0]:
                batch["loss_input_ids"], batch["loss_attention_mask"], batch["loss_labels"] = _right_pad(
                    [f["loss_input_ids"] for f in features], [f["loss_labels"] for f in features], self.pad_id)
            return batch
        ids, mask, labels = _right_pad([f["input_ids"] for f in features], [f["labels"] for f in features],
                                       self.pad_id, self.pad_to_multiple_of)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def two_logit_p_yes(logits) -> np.ndarray:
    """P(Yes) from gathered (No, Yes) logits: the softmax over the two."""
    logits = np.asarray(logits, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))


def compute_auc(eval_pred) -> dict:
    """`compute_metrics`: AUC from the gathered (No, Yes) logits."""
    return {"auc": M.auc(np.asarray(eval_pred.label_ids), two_logit_p_yes(eval_pred.predictions))}


# ---- trainer ---------------------------------------------------------------------------------------------


class TLRecTrainer(Trainer):
    """Trainer with answer-token validation and the curriculum sampler for staged (CoT) records."""

    def __init__(self, *args, answer_tokens: AnswerTokens | None = None, stages=None, curriculum: str = "ordered",
                 packed_collator=None, budget: dict | None = None, **kwargs):
        if budget:  # G micro batches per optimizer step, set before the Trainer (and DeepSpeed's config) read it
            (kwargs["args"] if "args" in kwargs else args[1]).gradient_accumulation_steps = budget["micro_batches"]
        super().__init__(*args, **kwargs)
        self.answer_tokens = answer_tokens
        self.stages = stages
        self.curriculum = curriculum
        self.packed_collator = packed_collator  # training batches padding-free (evaluation stays padded)
        self.budget = budget  # training.token_budget: micro batches sized by tokens

    def get_train_dataloader(self):
        if self.packed_collator is None:
            return super().get_train_dataloader()
        if self.budget is None:  # the Trainer's own batches, each packed into one row
            padded, self.data_collator = self.data_collator, self.packed_collator
            try:
                return super().get_train_dataloader()
            finally:
                self.data_collator = padded
        batches = TokenBudgetBatchSampler(self._get_train_sampler(self.train_dataset), self.budget["lengths"],
                                          self.budget["records_per_step"], self.budget["micro_batches"],
                                          self.args.world_size)
        loader = DataLoader(
            self.train_dataset, batch_sampler=batches,
            collate_fn=self._get_collator_with_removed_columns(self.packed_collator, description="training"),
            num_workers=self.args.dataloader_num_workers, pin_memory=self.args.dataloader_pin_memory,
            worker_init_fn=partial(seed_worker, num_workers=self.args.dataloader_num_workers,
                                   rank=self.args.process_index))
        return self.accelerator.prepare(loader)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for key in ("loss_input_ids", "loss_labels"):  # validation-loss features reach TuningCollator
            if key not in self._signature_columns:
                self._signature_columns.append(key)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.stages is None and self.budget and self.args.train_sampling_strategy == "group_by_length":
            # the mega-batches of the padded path (its batch x accumulation steps): the same order
            return LengthGroupedSampler(self.budget["sampler_batch"], lengths=self.budget["lengths"])
        if self.stages is None:
            return super()._get_train_sampler(train_dataset)
        lengths = None
        if self.args.train_sampling_strategy == "group_by_length":
            lengths = [len(f["input_ids"]) for f in dataset]
        return build_curriculum_sampler(
            stages=list(self.stages), mode=self.curriculum, seed=self.args.seed, lengths=lengths,
            num_epochs=math.ceil(self.args.num_train_epochs),
        )

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "label" not in inputs:  # a training-style batch (held-out CoT records): its loss only, no logits
            return super().prediction_step(model, inputs, True, ignore_keys)
        inputs = self._prepare_inputs(inputs)
        loss = None
        with torch.no_grad():
            logits = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs.get("position_ids"))
            two = logits[:, [self.answer_tokens.no_id, self.answer_tokens.yes_id]].float()
            if "loss_input_ids" in inputs:  # validation loss: the training loss on the validation records
                loss = model(input_ids=inputs["loss_input_ids"], attention_mask=inputs["loss_attention_mask"],
                             labels=inputs["loss_labels"], use_cache=False).loss.detach()
        return loss, two, inputs["label"]


# ---- the phase's effect: held-out records scored by the start model and by the trained model ----------------

EFFECT_BEFORE = "effect_before.json"  # the start model's scores, kept so that a resumed run still reports them


def split_heldout(records: list[dict], n: int) -> tuple[list[dict], list[dict]]:
    """(training records, held-out records): the last `n` records of each CoT stage in file order (of all records
    when they have no stages), leaving at least one training record per stage."""
    if not n:
        return records, []
    by_stage: dict = {}
    for i, r in enumerate(records):
        by_stage.setdefault(r.get("stage"), []).append(i)
    held = {i for idx in by_stage.values() for i in idx[len(idx) - min(n, len(idx) - 1):]}
    return ([r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held])


def effect_sets(data_args, tokenizer, answer, template, heldout: list[dict], train_encoder) -> dict:
    """{name: (file, features)} of --effect_files (the first --effect_records Yes/No records: their prompts, scored
    by P(Yes) in one forward pass each) and of the held-out training records (`heldout`: their training loss)."""
    sets = {}
    for spec in data_args.effect_files:
        name, _, path = spec.partition("=")
        records = load_records(path, require_label=True)[: data_args.effect_records]
        if not records:
            raise InputError(f"--effect_files {path}: no records")
        scoring = RecordEncoder(tokenizer, data_args.effect_max_length or data_args.max_length, answer,
                                template=template)
        sets[name] = (path, validation_dataset(records, scoring, path))
    if heldout:
        sets["heldout"] = (None, [train_encoder.training_features(r, f"held-out record {i}")
                                  for i, r in enumerate(heldout)])
    return sets


def score_effect(trainer, sets: dict) -> dict:
    """{name: {records, loss[, auc, p_yes]}}: the model's scores of every effect set (on every process). Yes/No
    records: AUC and log loss of P(Yes) (softmax over the two answer logits); held-out training records: their
    training loss."""
    out = {}
    for name, (_, features) in sets.items():
        pred = trainer.predict(features, metric_key_prefix="effect")
        entry = {"records": len(features), "loss": pred.metrics.get("effect_loss")}
        if "label" in features[0]:
            p_yes = two_logit_p_yes(pred.predictions)
            labels = np.asarray(pred.label_ids)
            p_true = np.clip(np.where(labels == 1, p_yes, 1.0 - p_yes), 1e-12, 1.0)
            entry.update(auc=M.auc(labels, p_yes), loss=float(-np.log(p_true).mean()), p_yes=p_yes.tolist())
        out[name] = entry
    return out


class ScoreStartModel(TrainerCallback):
    """Scores the effect sets with the start model when training begins: after accelerate or DeepSpeed has set
    the model up and before the first step (where `eval_on_start` evaluates), and saves the scores to `path`."""

    def __init__(self, sets: dict, path: Path):
        self.sets, self.path = sets, path
        self.trainer = None  # set once the trainer exists
        self.scores = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self.scores is None:
            self.scores = score_effect(self.trainer, self.sets)
            if self.trainer.is_world_process_zero():
                atomic_write_json(self.path, self.scores)


def effect_summary(sets: dict, before: dict | None, after: dict) -> dict:
    """The summary's `effect`: per set, its file, the figures before and after, and how far the model moved
    (largest change of P(Yes) on Yes/No records; change of the loss on held-out training records)."""
    out = {}
    for name, (path, _) in sets.items():
        b, a = (before or {}).get(name), after[name]
        figures = ("auc", "loss") if "auc" in a else ("loss",)
        entry = {"file": path, "records": a["records"], "metric": figures[0],
                 "before": {k: M.json_safe(b[k]) for k in figures} if b else None,
                 "after": {k: M.json_safe(a[k]) for k in figures}}
        if b and "p_yes" in a:
            entry["max_p_yes_change"] = float(np.max(np.abs(np.asarray(a["p_yes"]) - np.asarray(b["p_yes"]))))
        elif b and a["loss"] is not None and b["loss"] is not None:
            entry["loss_change"] = a["loss"] - b["loss"]
        out[name] = entry
    return out


# ---- preemption ------------------------------------------------------------------------------------------


class SaveOnSigterm(TrainerCallback):
    """On SIGTERM (SLURM preemption, `scancel`), finish the current step, save a checkpoint and stop."""

    def __init__(self):
        self.received = False
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (an embedding application): it handles signals itself
            self._previous = None
            logger.warning("not in the main thread: SIGTERM will not save a checkpoint")

    def _handle(self, signum, frame):
        logger.warning("SIGTERM received: saving a checkpoint after this step, then exiting")
        self.received = True

    def on_step_end(self, args, state, control, **kwargs):
        if self.received:
            control.should_save = True
            control.should_training_stop = True
        return control

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def last_checkpoint(output_dir) -> str | None:
    path = Path(output_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


# ---- the whole run ---------------------------------------------------------------------------------------


def deepspeed_safe_arch_list() -> None:
    """DeepSpeed (0.19) JIT-builds its fused optimizer for the archs in TORCH_CUDA_ARCH_LIST and parses each one as
    numbers, so an arch-specific suffix such as Hopper's "9.0a" stops it ("invalid literal for int() with base 10:
    '0a'", seen on an H100 whose image sets 9.0a). Its ops need no arch-specific instructions: build them for the
    plain arch ("9.0") and say so."""
    value = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    plain = re.sub(r"(\d)[a-z]+", r"\1", value)
    if plain != value:
        logger.warning("TORCH_CUDA_ARCH_LIST=%s: DeepSpeed cannot parse arch suffixes; its ops are built for %s",
                       value, plain)
        os.environ["TORCH_CUDA_ARCH_LIST"] = plain


def run_fingerprint(model_args, lora_args, data_args, training_args) -> tuple[str, dict]:
    """(fingerprint, what it hashes) of a tuning run: every setting that changes the model (UNFINGERPRINTED left
    out), the content of its data files, base model and start adapter, and the number of processes."""
    settings = {}
    for args in (model_args, lora_args, data_args):
        settings.update(dataclasses.asdict(args))
    settings.update(training_args.to_dict())
    settings = {k: v for k, v in settings.items() if k not in UNFINGERPRINTED and not k.startswith(("hub_", "push_"))}
    paths = [*data_args.train_files, data_args.val_file, model_args.base_model, lora_args.init_adapter]
    what = {"settings": settings, "inputs": {str(p): path_fingerprint(p) for p in paths if p},
            "processes": training_args.world_size}
    return fingerprint(what), what


class RecordFingerprint(TrainerCallback):
    """Writes the run's fingerprint into every checkpoint, so a resume can tell this run's checkpoints from
    another's."""

    def __init__(self, record: dict):
        self.record = record

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                atomic_write_json(folder / RUN_FINGERPRINT, self.record)


def check_resume(resume: str, fp: str, what: dict, explicit: bool, force: bool, output_dir: Path) -> dict:
    """A checkpoint is resumed only when it was made by this run (same fingerprint), unless `force`; returns what
    the summary records about it."""
    try:
        recorded = json.loads((Path(resume) / RUN_FINGERPRINT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    same = recorded.get("fingerprint") == fp
    if not same and not force:
        why = "; ".join(changes(recorded.get("what"), what)[:3])
        if explicit:
            raise InputError(f"--resume_from_checkpoint {resume}: not a checkpoint of this run ({why}); pass "
                             "--force_resume to continue it anyway")
        raise InputError(f"{output_dir}: its checkpoints were made with other settings or inputs ({why}); pass "
                         "--overwrite_output_dir to start over, or --force_resume to continue them")
    if not same:
        logger.warning("resuming from %s, a checkpoint made with other settings (--force_resume)", resume)
    return {"checkpoint": str(resume), "same_run": same, "forced": not same}


def _is_main_launch_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def tune(model_args, lora_args, data_args, training_args) -> int:
    """Train and save to `training_args.output_dir` (one run_tuning per output_dir at a time: an exclusive lock,
    taken by the first process of a launch). Returns the exit status: 0, or EXIT_INTERRUPTED after a SIGTERM
    (a checkpoint was saved; rerunning the same command resumes from it)."""
    check_output_dir(training_args.output_dir, "--output_dir")
    with contextlib.ExitStack() as held:
        return _tune(model_args, lora_args, data_args, training_args, held)


@contextlib.contextmanager
def output_dir_lock(output_dir: Path):
    """The exclusive lock on OUTPUT/.tuning.lock (fileio.exclusive_lock), saying who holds it; taken after every
    check and before the first write, by the first process of a launch only."""
    if not _is_main_launch_process():
        yield
        return

    def busy(holder: str) -> str:
        return f"{output_dir} is in use by another run_tuning ({holder or 'another process'}); wait for it or stop it"

    with exclusive_lock(output_dir / LOCK_FILE, busy, sign=True):
        yield


@dataclasses.dataclass
class TuningData:
    """What `load_data` prepares: the records, their encodings and the template, before any model loads."""

    train_records: list
    heldout: list
    val_records: list | None
    k_shot_seed: int
    template: object
    tokenizer: object
    answer: AnswerTokens | None
    train_features: list
    train_truncations: dict
    val_features: list | None
    effects: dict
    stages: list | None  # the curriculum sampler's stage of each record; None: the Trainer's own sampler
    staged: bool  # CoT records with stages (also under --curriculum trainer)
    kinds: dict
    curriculum: str


def check_can_start(output_dir: Path, data_args, training_args) -> None:
    if (output_dir / FINISHED_MARKER).is_file() and not training_args.overwrite_output_dir:
        raise InputError(f"{output_dir}: already holds a finished model ({FINISHED_MARKER}); "
                         "pass --overwrite_output_dir to train again")
    if training_args.metric_for_best_model in ("auc", "eval_auc") and not data_args.val_file:
        raise InputError("--metric_for_best_model auc needs --val_file")


def read_records(data_args, training_args) -> tuple[list, list, list | None, int]:
    """(training records, held-out records, validation records or None, K-shot seed): bad input fails here,
    before the model loads."""
    train_records = load_training_records(data_args.train_files)
    if data_args.stages:
        train_records = stage_records(train_records, data_args.stages, ", ".join(data_args.train_files))
    k_shot_seed = training_args.seed if data_args.k_shot_seed is None else data_args.k_shot_seed
    if data_args.k_shot:
        train_records = authors_order(sample_k_shot(train_records, data_args.k_shot, k_shot_seed,
                                                    source=", ".join(data_args.train_files)), k_shot_seed)
    train_records, heldout = split_heldout(train_records, data_args.heldout_records)
    if not data_args.val_file:
        return train_records, heldout, None, k_shot_seed
    val_records = load_records(data_args.val_file, require_label=True)
    if data_args.max_val_records:
        val_records = val_records[: data_args.max_val_records]
    if not val_records:
        raise InputError(f"{data_args.val_file}: no records")
    classes = {int(r["label"]) for r in val_records}
    if len(classes) < 2:
        what = f"all {len(val_records)} validation records are {'Yes' if 1 in classes else 'No'}"
        if training_args.metric_for_best_model in ("auc", "eval_auc"):
            raise InputError(f"--val_file {data_args.val_file}: {what}; AUC needs both classes "
                             "(--metric_for_best_model auc)")
        logger.warning("%s: %s; validation AUC will be undefined (nan)", data_args.val_file, what)
    return train_records, heldout, val_records, k_shot_seed


def load_data(model_args, lora_args, data_args, training_args) -> TuningData:
    """The records, the tokenizer and template (the previous phase's unless told otherwise), and the features."""
    train_records, heldout, val_records, k_shot_seed = read_records(data_args, training_args)
    template = resolve_template(data_args.prompt_template, [lora_args.init_adapter, model_args.base_model])
    tokenizer = load_tokenizer(model_args.base_model, model_args.trust_remote_code)
    wants_answer = val_records is not None or data_args.effect_files
    answer = derive_answer_tokens(tokenizer, template) if wants_answer else None

    def training_encoder():
        return RecordEncoder(tokenizer, data_args.max_length, answer, train_on_inputs=data_args.train_on_inputs,
                             template=template, truncation=data_args.truncation)

    encoder = training_encoder()
    train_features = training_dataset(train_records, encoder, ", ".join(data_args.train_files))
    val_features = None
    if val_records is not None:
        # selection by validation loss (the authors' rec_tuning.py) needs the loss of each validation record
        loss_encoder = training_encoder() if training_args.metric_for_best_model in ("loss", "eval_loss") else None
        val_features = validation_dataset(val_records, RecordEncoder(tokenizer, data_args.max_length, answer,
                                                                     template=template),
                                          data_args.val_file, loss_encoder)
    effects = effect_sets(data_args, tokenizer, answer, template, heldout, encoder)
    stages, kinds = curriculum_stages(train_records, data_args.curriculum, data_args.train_files)
    return TuningData(
        train_records=train_records, heldout=heldout, val_records=val_records, k_shot_seed=k_shot_seed,
        template=template, tokenizer=tokenizer, answer=answer, train_features=train_features,
        train_truncations=dict(encoder.truncations), val_features=val_features, effects=effects,
        stages=None if data_args.curriculum == "trainer" else stages,  # trainer: the authors' ins_tuning.py
        staged=stages is not None, kinds=kinds, curriculum=data_args.curriculum)


def check_resume_point(model_args, lora_args, data_args, training_args, output_dir: Path):
    """(checkpoint to resume or None, what the summary records about it, fingerprint, what it hashes): the
    adapter and checkpoint checked against the base model from file headers, before any weight loads."""
    fp, what = run_fingerprint(model_args, lora_args, data_args, training_args)
    resume = training_args.resume_from_checkpoint
    explicit = resume is not None
    if resume is None and not training_args.overwrite_output_dir:
        resume = last_checkpoint(output_dir)  # like run_clm.py: a rerun continues where it stopped
    if lora_args.init_adapter or resume:
        skeleton = model_skeleton(model_args)
        if lora_args.init_adapter:
            check_weights_fit(lora_args.init_adapter, model_args, "--init_adapter", skeleton)
        if resume:
            if not Path(resume).is_dir():
                raise InputError(f"--resume_from_checkpoint {resume}: directory not found")
            check_weights_fit(resume, model_args, "checkpoint", skeleton)
        del skeleton
    resumed = check_resume(resume, fp, what, explicit, training_args.force_resume, output_dir) if resume else None
    return resume, resumed, fp, what


def load_model(model_args, lora_args, training_args):
    """(the model to train, its attention kernel, packing on or off): the base model with the chosen attention
    kernel, checked for packed records when packing, then LoRA or full tuning with gradient checkpointing."""
    if training_args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        deepspeed_safe_arch_list()
    set_seed(training_args.seed)  # a new adapter's random init depends on the seed only, not on what ran before
    model_args.attn_implementation, why = choose_attn_implementation(model_args.attn_implementation)
    model = load_base_model(model_args)
    packing = use_packing(True if training_args.max_tokens_per_batch else training_args.packing,
                          model_args.attn_implementation)
    if packing:
        check_packing_isolated(model)
    model = prepare_for_training(model, lora_args, training_args.gradient_checkpointing,
                                 training_args.gradient_checkpointing_fraction,
                                 training_args.gradient_checkpointing_kwargs)
    training_args.gradient_checkpointing = False  # enabled above (the Trainer would enable every layer again)
    logger.info("attention kernel: %s (%s); packing %s", model_args.attn_implementation, why,
                "on" if packing else "off")
    return model, packing


def token_budget(features: list, training_args) -> dict | None:
    """--max_tokens_per_batch: the records of an optimizer step and the micro batches they are split into (G);
    TLRecTrainer then accumulates G micro batches (its gradient_accumulation_steps becomes G)."""
    budget = training_args.max_tokens_per_batch
    if not budget:
        return None
    processes = training_args.world_size
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * processes
    lengths = [len(f["input_ids"]) for f in features]
    micro = micro_batches_per_step(lengths, per_step, budget, processes)
    logger.info("--max_tokens_per_batch %d: %d records per optimizer step in %d micro batch(es) per process of at "
                "most %d tokens", budget, per_step, micro, budget)
    return {"records_per_step": per_step, "micro_batches": micro, "lengths": lengths,
            "sampler_batch": training_args.train_batch_size * training_args.gradient_accumulation_steps}


def build_trainer(model, packing: bool, budget: dict | None, data: TuningData, training_args, output_dir: Path,
                  resume, fp: str, what: dict):
    """(trainer, SIGTERM handler, start-model scorer or None) with the callbacks of the run."""
    sigterm = SaveOnSigterm()
    callbacks = [sigterm, RecordFingerprint({"fingerprint": fp, "what": what})]
    start_scores = None
    if data.effects and resume is None:  # the start model's scores, before any step
        start_scores = ScoreStartModel(data.effects, output_dir / EFFECT_BEFORE)
        callbacks.append(start_scores)
    if training_args.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(training_args.early_stopping_patience))
    flash = getattr(model.config, "_attn_implementation", "") in PACKING_KERNELS
    trainer = TLRecTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train_features,
        eval_dataset=data.val_features,
        data_collator=TuningCollator(data.tokenizer.pad_token_id),
        processing_class=data.tokenizer,
        compute_metrics=compute_auc if data.val_features is not None else None,
        callbacks=callbacks,
        answer_tokens=data.answer,
        stages=data.stages,
        curriculum=data.curriculum,
        packed_collator=PackedCollator(flash_kwargs=flash) if packing else None,
        budget=budget,
    )
    if start_scores is not None:
        start_scores.trainer = trainer
    return trainer, sigterm, start_scores


def run_summary(model_args, lora_args, data_args, training_args, data: TuningData, trainer, result, extra: dict):
    """The tuning_summary.json of a finished run."""
    return {
        "finetune": lora_args.finetune,
        "base_model": model_args.base_model,
        "init_adapter": lora_args.init_adapter,
        "train_files": list(data_args.train_files),
        "train_records": len(data.train_records),
        "heldout_records": len(data.heldout),
        "k_shot": data_args.k_shot,
        "k_shot_seed": data.k_shot_seed if data_args.k_shot else None,
        "seed": training_args.seed,
        "stages": sorted({r["stage"] for r in data.train_records if "stage" in r}) if data.staged else None,
        "truncation": data_args.truncation,
        "val_file": data_args.val_file,
        "val_records": len(data.val_records) if data.val_records is not None else 0,
        "max_length": data_args.max_length,
        "prompt_template": data.template.name,
        "truncated_train_records": data.train_truncations,
        "curriculum": data_args.curriculum if data.staged else None,
        "records_by_kind": data.kinds,
        "attn_implementation": model_args.attn_implementation,
        "packing": trainer.packed_collator is not None,
        "micro_batches_per_step": trainer.budget["micro_batches"] if trainer.budget else None,
        **extra,
        "global_step": trainer.state.global_step,
        "train_loss": result.training_loss,
        "best_metric": trainer.state.best_metric,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "log_history": trainer.state.log_history,
    }


def save_run(trainer, data: TuningData, output_dir: Path, summary: dict) -> None:
    """The final model staged beside output_dir, moved in; the summary marker written last."""
    staging = output_dir / ".final-staging"
    trainer.save_model(str(staging))
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        data.tokenizer.save_pretrained(str(staging))
        save_template(staging, data.template)  # what run_eval and later phases use
        move_contents(staging, output_dir)
        atomic_write_json(output_dir / FINISHED_MARKER, json.loads(json.dumps(summary, default=str)))


def phase_effect(trainer, data: TuningData, start_scores, output_dir: Path) -> dict:
    if not data.effects:
        return {}
    before = start_scores.scores if start_scores is not None else None
    if before is None and (output_dir / EFFECT_BEFORE).is_file():  # resumed: scored by the first run
        before = json.loads((output_dir / EFFECT_BEFORE).read_text())
    return effect_summary(data.effects, before, score_effect(trainer, data.effects))


def _tune(model_args, lora_args, data_args, training_args, held) -> int:
    started = time.time()
    output_dir = Path(training_args.output_dir)
    check_can_start(output_dir, data_args, training_args)
    data = load_data(model_args, lora_args, data_args, training_args)
    budget = token_budget(data.train_features, training_args)
    resume, resumed, fp, what = check_resume_point(model_args, lora_args, data_args, training_args, output_dir)
    model, packing = load_model(model_args, lora_args, training_args)
    held.enter_context(output_dir_lock(output_dir))  # every check passed: from here on this run writes
    trainer, sigterm, start_scores = build_trainer(model, packing, budget, data, training_args, output_dir, resume, fp,
                                                   what)
    if resume:
        logger.info("resuming from %s", resume)
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    finally:
        sigterm.restore()
    if sigterm.received:
        logger.warning("stopped by SIGTERM at step %d; checkpoint saved in %s: rerun the same command to resume",
                       trainer.state.global_step, output_dir)
        return EXIT_INTERRUPTED
    effect = phase_effect(trainer, data, start_scores, output_dir)
    extra = {"fingerprint": fp, "resumed_from": resumed, "effect": effect}
    summary = run_summary(model_args, lora_args, data_args, training_args, data, trainer, result, extra)
    summary["wall_time_s"] = round(time.time() - started, 1)
    save_run(trainer, data, output_dir, summary)
    if trainer.is_world_process_zero():
        logger.info("saved %s to %s (train loss %.4f)", "adapter" if lora_args.finetune == "lora" else "model",
                    output_dir, result.training_loss)
    return 0
