"""Padding-free packing and token-budget micro batches (tlrec_utils/tuning/packing.py) on real tiny models: the
packed batch's loss and LoRA gradients are the padded batch's, no record attends across its boundary, and a
token-budget run takes the same optimizer steps (summed gradients) as the padded run."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, TrainerCallback

import run_tuning
from tlrec_utils.arguments import LoraArguments, TuningTrainingArguments
from tlrec_utils.errors import InputError
from tlrec_utils.model.loading import prepare_for_training
from tlrec_utils.model.tokenization import RecordEncoder, rerender
from tlrec_utils.tuning.curriculum import build_curriculum_sampler
from tlrec_utils.tuning.packing import (
    PackedCollator,
    TokenBudgetBatchSampler,
    check_packing_isolated,
    micro_batches_per_step,
)
from tlrec_utils.tuning.training import TLRecTrainer, TuningCollator, token_budget, training_dataset

MAX_LEN = 512


def _model(kind, tiny_llama, attn="sdpa"):
    if kind == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_llama, attn_implementation=attn, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         attn_implementation=attn)
    torch.manual_seed(1)
    return Qwen2ForCausalLM(config)


def _lora(model, seed=0):
    """A LoRA model whose B matrices are random (a fresh adapter's B is zero, and so is the gradient of its A)."""
    lora = LoraArguments(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj")
    torch.manual_seed(seed)
    model = prepare_for_training(model, lora)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _features(tiny_llama, records, train_on_inputs=False):
    """Training features of `records` with histories of 1, 3, 5, ... items (the records differ in length)."""
    records = [rerender(r, history=r["history"][: 1 + 2 * (i % 5)]) for i, r in enumerate(records)]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    encoder = RecordEncoder(tokenizer, MAX_LEN, train_on_inputs=train_on_inputs)
    return tokenizer, [encoder.training_features(r) for r in records]


def _loss_and_grads(model, batch, num_items=None):
    model.zero_grad()
    kwargs = {} if num_items is None else {"num_items_in_batch": num_items}
    loss = model(**batch, **kwargs).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("kind,attn,train_on_inputs", [("llama", "sdpa", False), ("llama", "eager", True),
                                                       ("qwen2", "sdpa", False), ("qwen2", "sdpa", True)])
def test_packed_batch_has_the_padded_batchs_loss_and_lora_gradients(tiny_llama, synthetic, kind, attn,
                                                                    train_on_inputs):
    tokenizer, features = _features(tiny_llama, synthetic[0][:6], train_on_inputs)
    assert len({len(f["input_ids"]) for f in features}) > 1  # records of different lengths: the padded batch pads
    model = _lora(_model(kind, tiny_llama, attn))
    padded = TuningCollator(tokenizer.pad_token_id)(features)
    packed = PackedCollator()(features)
    assert packed["input_ids"].shape == (1, sum(len(f["input_ids"]) for f in features))
    assert int((padded["labels"][:, 1:] != -100).sum()) == int((packed["labels"] != -100).sum())
    for num_items in (None, 37):  # the mean over the batch's label tokens; HF Trainer's sum / num_items_in_batch
        loss_pad, grads_pad = _loss_and_grads(model, padded, num_items)
        loss_pack, grads_pack = _loss_and_grads(model, packed, num_items)
        assert torch.allclose(loss_pad, loss_pack, rtol=1e-5, atol=1e-6), (loss_pad, loss_pack)
        assert any("lora_A" in n for n in grads_pad) and any("lora_B" in n for n in grads_pad)
        for name, g in grads_pad.items():
            assert g.abs().max() > 0, name
            assert torch.allclose(g, grads_pack[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_a_packed_record_never_attends_across_its_boundary(tiny_llama, synthetic, kind):
    tokenizer, features = _features(tiny_llama, synthetic[0][:2])
    model = _model(kind, tiny_llama)  # config.use_cache is True: the collator must turn the cache off
    model.train()
    changed = [dict(features[0], input_ids=[(t + 7) % len(tokenizer) for t in features[0]["input_ids"]]),
               features[1]]
    n_a = len(features[0]["input_ids"])
    with torch.no_grad():
        b_logits = [model(**PackedCollator()(fs)).logits[0, n_a:] for fs in (features, changed)]
        assert torch.equal(b_logits[0], b_logits[1]) or torch.allclose(*b_logits, atol=1e-6)
        # the control: the same rows without restarting positions (one long sequence) do let B see A
        rows = [PackedCollator()(fs) for fs in (features, changed)]
        leaked = [model(input_ids=r["input_ids"], use_cache=False).logits[0, n_a:] for r in rows]
        assert not torch.allclose(*leaked, atol=1e-4)
    check_packing_isolated(model)


def test_token_budget_micro_batches_keep_each_steps_records_and_the_budget():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 120, (203,), generator=gen).tolist()
    stages = [1] * 70 + [2] * 70 + [3] * 63
    for processes in (1, 2):
        per_step, budget = 16 * processes, 400
        micro = micro_batches_per_step(lengths, per_step, budget, processes)
        sampler = build_curriculum_sampler(stages, "ordered", seed=3, lengths=lengths)
        batches = TokenBudgetBatchSampler(sampler, lengths, per_step, micro, processes)
        batches.set_epoch(1)
        order, got = list(sampler), list(batches)
        assert len(got) == len(batches)
        assert all(batch and sum(lengths[i] for i in batch) <= budget for batch in got)
        start = 0
        for step in range(0, len(order), per_step):
            step_records = order[step : step + per_step]
            n = micro * processes if len(step_records) == per_step else len(got) - start
            mine = got[start : start + n]
            assert sorted(i for b in mine for i in b) == sorted(step_records)  # the curriculum's step, no other
            # accelerate gives process p the micro batches p, p + P, ...: every process gets the same count
            assert n % processes == 0 or len(step_records) < processes
            start += n
        assert start == len(got)
    with pytest.raises(InputError, match="--max_tokens_per_batch 50: below the longest training record"):
        micro_batches_per_step(lengths, 16, 50)


class Grads(TrainerCallback):
    """The LoRA gradients the optimizer is about to apply, per optimizer step."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad})


def _run(tiny_llama, features, tokenizer, tmp_path, budget):
    args = TuningTrainingArguments(
        output_dir=str(tmp_path / f"budget{budget}"), per_device_train_batch_size=2, gradient_accumulation_steps=4,
        num_train_epochs=1, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=0, use_cpu=True, save_strategy="no", report_to="none", seed=0, dataloader_num_workers=0,
        disable_tqdm=True, logging_steps=1, max_tokens_per_batch=budget)
    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    plan = token_budget(features, args)
    grads = Grads()
    trainer = TLRecTrainer(model=model, args=args, train_dataset=features,
                           data_collator=TuningCollator(tokenizer.pad_token_id), callbacks=[grads],
                           packed_collator=PackedCollator() if budget else None, budget=plan)
    trainer.train()
    return grads.steps, plan, trainer


def test_token_budget_run_takes_the_padded_runs_optimizer_steps(tiny_llama, synthetic, tmp_path):
    tokenizer, features = _features(tiny_llama, synthetic[0][:20], train_on_inputs=False)
    padded, _, _ = _run(tiny_llama, features, tokenizer, tmp_path, None)
    longest = max(len(f["input_ids"]) for f in features)
    packed, plan, trainer = _run(tiny_llama, features, tokenizer, tmp_path, longest + 100)
    assert plan["records_per_step"] == 8 and plan["micro_batches"] != 4  # micro batches by tokens, not records
    assert trainer.args.gradient_accumulation_steps == plan["micro_batches"]
    assert len(padded) == len(packed) == 3  # 8 + 8 + 4 records
    for step, (a, b) in enumerate(zip(padded, packed)):
        for name, g in a.items():
            assert g.abs().max() > 0
            assert torch.allclose(g, b[name], rtol=1e-4, atol=1e-6), (step, name)


def test_run_tuning_packed_with_a_token_budget(tiny_llama, synthetic, tmp_path, caplog):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(synthetic[0][:24]))
    out = tmp_path / "run"
    caplog.set_level("INFO")
    rc = run_tuning.main(["--base_model", str(tiny_llama), "--train_files", str(path), "--output_dir", str(out),
                          "--max_length", str(MAX_LEN), "--per_device_train_batch_size", "4",
                          "--gradient_accumulation_steps", "2", "--max_tokens_per_batch", "400", "--use_cpu",
                          "--max_steps", "2", "--save_strategy", "no", "--dataloader_num_workers", "0"])
    assert rc == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["packing"] is True and summary["attn_implementation"] == "sdpa"
    assert summary["micro_batches_per_step"] >= 2 and summary["global_step"] == 2
    assert "attention kernel: sdpa (no CUDA GPU for flash_attention_2); packing on" in caplog.text


@pytest.mark.parametrize("flags,message", [
    (["--max_tokens_per_batch", "400", "--packing", "false"],
     "error: --max_tokens_per_batch: needs packed batches; drop --packing false"),
    (["--max_tokens_per_batch", "20"], "error: --max_tokens_per_batch 20: below the longest training record"),
    (["--use_liger_kernel"], "error: --use_liger_kernel: the liger-kernel package is not installed"),
])
def test_bad_packing_flags_are_one_line_and_exit_2(tiny_llama, synthetic, tmp_path, capsys, flags, message):
    if "--use_liger_kernel" in flags:
        import importlib.util

        if importlib.util.find_spec("liger_kernel") is not None:
            pytest.skip("liger-kernel is installed here")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(synthetic[0][:8]))
    with pytest.raises(SystemExit) as exit_:
        run_tuning.main(["--base_model", str(tiny_llama), "--train_files", str(path), "--output_dir",
                         str(tmp_path / "out"), "--max_length", str(MAX_LEN), "--use_cpu", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert not (tmp_path / "out" / "tuning_summary.json").exists()


@pytest.mark.parametrize("fraction,kwargs", [(1.0, None), (0.5, None), (1.0, {"use_reentrant": True})])
def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_llama, synthetic, fraction, kwargs):
    tokenizer, features = _features(tiny_llama, synthetic[0][:4])
    batch = TuningCollator(tokenizer.pad_token_id)(features)
    plain = _lora(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32))
    plain.train()
    _, reference = _loss_and_grads(plain, batch)
    lora = LoraArguments(lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules="q_proj,v_proj")
    model = prepare_for_training(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), lora,
                                 gradient_checkpointing=True, checkpoint_fraction=fraction, checkpoint_kwargs=kwargs)
    model.load_state_dict(plain.state_dict())
    model.train()
    layers = model.get_base_model().model.layers
    assert [layer.gradient_checkpointing for layer in layers] == ([True, False] if fraction == 0.5 else [True, True])
    # non-reentrant checkpointing needs no gradient w.r.t. the embeddings' output; re-entrant does
    assert bool(getattr(model.get_base_model(), "_require_grads_hooks", None)) == bool(kwargs)
    _, grads = _loss_and_grads(model, batch)
    for name, g in reference.items():
        assert torch.allclose(g, grads[name], rtol=1e-4, atol=1e-6), name


def test_training_features_dataset_is_what_packing_reads(tiny_llama, synthetic):
    tokenizer, _ = _features(tiny_llama, [])
    features = training_dataset(synthetic[0][:3], RecordEncoder(tokenizer, MAX_LEN), "synthetic")
    batch = PackedCollator(flash_kwargs=True)(features)
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["cu_seq_lens_q"].tolist() == [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert batch["max_length_q"] == max(lengths) and batch["use_cache"] is False
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]


def test_torch_compile_trains_the_packed_batches_to_the_same_loss(tiny_llama, synthetic, tmp_path):
    """--torch_compile (TrainingArguments; here with the aot_eager backend, which needs no C++ compiler) on packed
    token-budget batches: the same losses as without it."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(synthetic[0][:16]))
    losses = []
    for extra in ([], ["--torch_compile", "--torch_compile_backend", "aot_eager"]):
        out = tmp_path / f"run{len(losses)}"
        assert run_tuning.main(["--base_model", str(tiny_llama), "--train_files", str(path), "--output_dir", str(out),
                                "--max_length", str(MAX_LEN), "--per_device_train_batch_size", "4",
                                "--max_tokens_per_batch", "600", "--use_cpu", "--max_steps", "2", "--lora_dropout",
                                "0", "--save_strategy", "no", "--logging_steps", "1", "--dataloader_num_workers", "0",
                                *extra]) == 0
        summary = json.loads((out / "tuning_summary.json").read_text())
        losses.append([h["loss"] for h in summary["log_history"] if "loss" in h])
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_dry_run_estimate_reads_the_measured_row_of_the_cells_batches(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tlrec_utils.experiments import estimate

    figures = {"padded_sdpa": 10841.0, "padded_checkpointing_sdpa": 5997.0, "packed_budget_sdpa": 15000.0,
               "packed_budget_flash_attention_2": 21000.0}
    measured = tmp_path / "measured_throughput.json"
    measured.write_text(json.dumps({"card": "H200", "date": "2026-12-07", "train_tokens_per_s": figures}))
    monkeypatch.setattr(estimate, "MEASURED_FILE", measured)

    def cell(**tuning):
        return SimpleNamespace(tuning=tuning, cot_tuning=None, source_tuning=None, kshot_tuning=None)

    assert estimate.measured_train_figure(cell())[0] == 10841.0
    assert estimate.measured_train_figure(cell(gradient_checkpointing=True))[0] == 5997.0
    figure, what = estimate.measured_train_figure(cell(max_tokens_per_batch=16384))
    assert figure == 15000.0 and "on one H200 without gradient checkpointing, packed budget sdpa" in what
    flash = cell(max_tokens_per_batch=16384, attn_implementation="flash_attention_2")
    assert estimate.measured_train_figure(flash)[0] == 21000.0
    # a row the table did not measure (packed with checkpointing): the padded row with checkpointing
    assert estimate.measured_train_figure(cell(max_tokens_per_batch=16384, gradient_checkpointing=True))[0] == 5997.0
