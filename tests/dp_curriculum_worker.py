"""Worker for tests/test_curriculum.py: a real data-parallel HF Trainer run under `torchrun --nproc_per_node 2`.

Trains a tiny model for a few steps with the project's TLRecTrainer on records with a `stage` field, and writes
`OUT/rank{R}.json`: the record ids of every training micro-batch this process fed to the model (read from the
model's actual inputs by a forward hook), plus the world size and the number of optimizer steps. With VAL_FILE
(Yes/No records), the trained model is then validated on it as run_tuning's --val_file does (answer-token AUC,
each process scoring a shard) and saved to OUT/model, so a one-process run_eval can score the same weights.

    torchrun --nproc_per_node 2 tests/dp_curriculum_worker.py MODEL_DIR OUT_DIR MODE [VAL_FILE]
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, TrainingArguments  # noqa: E402

from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator  # noqa: E402

# The test imports these to compute the expected order.
N_PER_STAGE = 8
PER_DEVICE_BATCH = 2
GRAD_ACCUM = 2
EPOCHS = 2
SEED = 7


def make_records(vocab_size: int):
    """3 x N_PER_STAGE token sequences, unique, of varied length, listed with stages interleaved (3,1,2,3,1,...)
    so that only the sampler can put them in curriculum order."""
    g = torch.Generator().manual_seed(0)
    records, seen = [], set()
    for i in range(3 * N_PER_STAGE):
        length = 4 + (i * 5) % 9
        ids = torch.randint(10, vocab_size, (length,), generator=g).tolist()
        assert tuple(ids) not in seen
        seen.add(tuple(ids))
        records.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids, "stage": 3 - i % 3})
    return records


def validation_setup(model_dir, val_file):
    """What run_tuning builds for --val_file: scoring prompts with labels, the answer tokens, AUC as the metric."""
    from tlrec_utils.data.records import load_records
    from tlrec_utils.model.loading import load_tokenizer
    from tlrec_utils.model.tokenization import RecordEncoder, derive_answer_tokens
    from tlrec_utils.prompts import get_template
    from tlrec_utils.tuning.training import compute_auc, validation_dataset

    tokenizer = load_tokenizer(model_dir)
    template = get_template("tallrec")
    answer = derive_answer_tokens(tokenizer, template)
    encoder = RecordEncoder(tokenizer, 512, answer, template=template)
    return tokenizer, dict(eval_dataset=validation_dataset(load_records(val_file), encoder, val_file),
                           compute_metrics=compute_auc, answer_tokens=answer)


def main(model_dir, out_dir, mode, val_file=None):
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer, validation = validation_setup(model_dir, val_file) if val_file else (None, {})
    records = make_records(model.config.vocab_size)
    by_tokens = {tuple(r["input_ids"]): i for i, r in enumerate(records)}
    seen = []

    def record_batch(module, args, kwargs):
        if module.training:
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            seen.append([by_tokens[tuple(row[m.bool()].tolist())] for row, m in zip(ids, mask)])

    model.model.register_forward_pre_hook(record_batch, with_kwargs=True)
    train = [{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in records]
    args = TrainingArguments(
        output_dir=out_dir,
        per_device_train_batch_size=PER_DEVICE_BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        num_train_epochs=EPOCHS,
        seed=SEED,
        use_cpu=True,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        learning_rate=1e-3,
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None,
        disable_tqdm=True,
        train_sampling_strategy="group_by_length",
        per_device_eval_batch_size=4,  # an odd number of validation records: the last batch is padded
    )
    # The project's Trainer subclass, exactly as run_tuning builds it for CoT records (length grouping on).
    trainer = TLRecTrainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=TuningCollator(pad_id=0),
        stages=[r["stage"] for r in records],
        curriculum=mode,
        **validation,
    )
    trainer.train()
    log = {
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "micro_batches": seen,
        "stages": [r["stage"] for r in records],
        "lengths": [len(r["input_ids"]) for r in records],
    }
    if val_file:
        log["eval_auc"] = trainer.evaluate()["eval_auc"]
        trainer.save_model(str(Path(out_dir, "model")))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(Path(out_dir, "model")))
    rank = int(os.environ.get("RANK", 0))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(log))
    # Tear the process group down together: a rank that exits while the other still talks to it through gloo
    # can abort (SIGABRT) at interpreter exit.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
