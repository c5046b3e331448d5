"""run_tuning.py on the tiny LLaMA: loss goes down, only the adapter changes, adapters reload exactly,
chain, resume after SIGTERM, full fine-tuning, CoT records with stages, and bad input."""

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, read_metrics, read_predictions, run_entry
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import run_eval
import run_tuning
from tlrec_utils.fileio import sha256_file
from tlrec_utils.model.tokenization import RecordEncoder
from tlrec_utils.tuning.training import TuningCollator

MAX_LEN = "112"  # shorter than most synthetic prompts: truncation in training and validation


def _common(model, out, *extra):
    return ["--base_model", str(model), "--output_dir", str(out), "--max_length", MAX_LEN,
            "--per_device_train_batch_size", "8", "--logging_steps", "1", "--use_cpu", "--seed", "0",
            "--dataloader_num_workers", "0", *map(str, extra)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, synthetic):
    records = synthetic[0]
    d = tmp_path_factory.mktemp("tuning_data")
    (d / "train.json").write_text(json.dumps(records[:160]))
    (d / "val.json").write_text(json.dumps(records[160:]))
    return d


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_llama, data):
    out = tmp_path_factory.mktemp("run") / "lora"
    base_hash = sha256_file(Path(tiny_llama) / "model.safetensors")
    rc = run_tuning.main(_common(
        tiny_llama, out, "--train_files", data / "train.json", "--val_file", data / "val.json",
        "--max_steps", 12, "--learning_rate", "1e-2", "--eval_strategy", "steps", "--eval_steps", 6,
        "--save_steps", 6, "--load_best_model_at_end", "--metric_for_best_model", "auc"))
    assert rc == 0
    return out, base_hash


def _loss(model, tokenizer, records):
    enc = RecordEncoder(tokenizer, int(MAX_LEN))
    batch = TuningCollator(tokenizer.pad_token_id)([enc.training_features(r) for r in records])
    with torch.no_grad():
        return model(**batch).loss.item()


def test_lora_training_changes_only_the_adapter(trained, tiny_llama, synthetic):
    from peft import PeftModel

    out, base_hash = trained
    assert sha256_file(Path(tiny_llama) / "model.safetensors") == base_hash
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert any(k for k, v in weights.items() if "lora_B" in k and v.abs().sum() > 0)  # not an empty adapter
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    before = _loss(base, tok, synthetic[0][:32])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    assert _loss(tuned, tok, synthetic[0][:32]) < before - 0.1
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["truncated_train_records"]["history"] > 0
    assert summary["global_step"] == 12


LEARNING_FLOOR = 0.4  # of the way from chance (AUC 0.5) to the Bayes-optimal AUC on the held-out records


def test_tuning_learns_the_planted_signal_on_held_out_records(tiny_llama, tmp_path):
    """Labels drawn with known probabilities (the target's genre, the user's favourite genre): the tuned model's
    AUC on held-out records reaches LEARNING_FLOOR of the way from 0.5 to the Bayes-optimal AUC (scoring by the
    generating probability itself). Learning the answer format and the Yes/No prior does not: the same
    training on the same records with their labels shuffled (the prior kept, the signal gone) stays below."""
    import random

    from helpers import planted_probability_records

    from tlrec_utils.evaluation.metrics import auc
    from tlrec_utils.prompts import answer

    train, _ = planted_probability_records(320, seed=1)
    held_out, probability = planted_probability_records(200, seed=2)
    labels = [r["label"] for r in held_out]
    bayes_optimal = auc(labels, probability)
    floor = 0.5 + LEARNING_FLOOR * (bayes_optimal - 0.5)
    prior = sum(r["label"] for r in train) / len(train)
    assert auc(labels, [prior] * len(labels)) == 0.5  # a model of the prior alone does not rank at all
    shuffled_labels = [r["label"] for r in train]
    random.Random(0).shuffle(shuffled_labels)
    shuffled = [{**r, "label": y, "output": answer(y)} for r, y in zip(train, shuffled_labels)]
    (tmp_path / "held_out.json").write_text(json.dumps(held_out))

    def held_out_auc(name, records):
        (tmp_path / f"{name}.json").write_text(json.dumps(records))
        # full fine-tuning: the tiny random model's frozen output layer is too small in scale for LoRA alone
        assert run_tuning.main(_common(tiny_llama, tmp_path / name, "--train_files", tmp_path / f"{name}.json",
                                       "--finetune", "full", "--max_steps", 160, "--learning_rate", "2e-3",
                                       "--per_device_train_batch_size", 16, "--max_length", 256,
                                       "--logging_steps", 20)) == 0
        assert run_eval.main(["--base_model", str(tmp_path / name), "--test_file", str(tmp_path / "held_out.json"),
                              "--output_dir", str(tmp_path / f"{name}_eval"), "--metrics", "auc",
                              "--max_length", "256"]) == 0
        return read_metrics(tmp_path / f"{name}_eval")["auc"]

    learned, prior_only = held_out_auc("planted", train), held_out_auc("shuffled", shuffled)
    assert learned >= floor, (learned, floor, bayes_optimal)
    assert prior_only < floor, (prior_only, floor)


def test_saved_adapter_reloads_to_the_validated_predictions(trained, tiny_llama, data, tmp_path):
    out, _ = trained
    summary = json.loads((out / "tuning_summary.json").read_text())
    evals = [h["eval_auc"] for h in summary["log_history"] if "eval_auc" in h]
    assert len(evals) == 2 and summary["best_metric"] == max(evals)
    runs = []
    for name in ("a", "b"):
        assert run_eval.main(["--base_model", str(tiny_llama), "--adapter", str(out), "--test_file",
                              str(data / "val.json"), "--output_dir", str(tmp_path / name), "--metrics", "auc",
                              "--max_length", MAX_LEN]) == 0
        metrics = read_metrics(tmp_path / name)
        preds = [p["p_yes"] for p in read_predictions(tmp_path / name)]
        runs.append((metrics, preds))
    assert runs[0][1] == runs[1][1]  # bit-identical on reload
    assert runs[0][0]["auc"] == pytest.approx(summary["best_metric"], abs=1e-9)  # the best model was saved
    assert run_eval.main(["--base_model", str(tiny_llama), "--test_file", str(data / "val.json"), "--output_dir",
                          str(tmp_path / "base"), "--metrics", "auc", "--max_length", MAX_LEN]) == 0
    base_preds = [p["p_yes"] for p in read_predictions(tmp_path / "base")]
    assert max(abs(a - b) for a, b in zip(base_preds, runs[0][1])) > 1e-3


def test_init_adapter_continues_the_adapter(trained, tiny_llama, data, tmp_path):
    out, _ = trained
    chained = tmp_path / "chained"
    # learning rate 0: the continued adapter must be exactly the initial one (a fresh LoRA has lora_B = 0)
    assert run_tuning.main(_common(tiny_llama, chained, "--train_files", data / "val.json", "--init_adapter", out,
                                   "--max_steps", 1, "--learning_rate", 0)) == 0
    first, second = load_file(out / "adapter_model.safetensors"), load_file(chained / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    moved = tmp_path / "moved"
    assert run_tuning.main(_common(tiny_llama, moved, "--train_files", data / "val.json", "--init_adapter", out,
                                   "--max_steps", 2, "--learning_rate", "1e-2")) == 0
    third = load_file(moved / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], third[k]) for k in first)


def test_template_saved_with_the_adapter_is_what_eval_and_later_phases_use(trained, tiny_llama, data, tmp_path,
                                                                            caplog):
    from tlrec_utils import prompts

    out, _ = trained
    assert prompts.load_saved_template(out) == prompts.get_template("tallrec")  # the default, saved
    assert json.loads((out / "tuning_summary.json").read_text())["prompt_template"] == "tallrec"
    # a phase trained with alpaca: the next phase (no flag) and run_eval (no flag) keep alpaca
    first = tmp_path / "alpaca"
    assert run_tuning.main(_common(tiny_llama, first, "--train_files", data / "val.json", "--max_steps", 1,
                                   "--prompt_template", "alpaca")) == 0
    second = tmp_path / "next"
    assert run_tuning.main(_common(tiny_llama, second, "--train_files", data / "val.json", "--max_steps", 1,
                                   "--init_adapter", first)) == 0
    assert prompts.load_saved_template(second).name == "alpaca"

    def evaluate(name, *extra):
        assert run_eval.main(["--base_model", str(tiny_llama), "--adapter", str(second), "--test_file",
                              str(data / "val.json"), "--output_dir", str(tmp_path / name), "--metrics", "auc",
                              "--limit", "16", *extra]) == 0
        preds = [p["p_yes"] for p in read_predictions(tmp_path / name)]
        return read_metrics(tmp_path / name)["settings"]["prompt_template"], preds

    saved, saved_preds = evaluate("saved")
    assert saved == "alpaca"
    with caplog.at_level("WARNING"):
        told, told_preds = evaluate("told", "--prompt_template", "tallrec")
    assert told == "tallrec" and "--prompt_template tallrec differs from the template 'alpaca'" in caplog.text
    assert told_preds != saved_preds  # other prompt bytes, other scores


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(tiny_llama, data, tmp_path):
    out = tmp_path / "preempted"

    def preempt():  # like SLURM: SIGTERM while training runs (after the first checkpoint exists)
        deadline = time.time() + 60
        while not (out / "checkpoint-2").is_dir() and time.time() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    rc = run_tuning.main(_common(tiny_llama, out, "--train_files", data / "train.json", "--max_steps", 100000,
                                 "--save_steps", 2))
    assert rc == 143
    assert not (out / "tuning_summary.json").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    stopped_at = checkpoints[-1]
    assert stopped_at >= 2 and (out / f"checkpoint-{stopped_at}" / "trainer_state.json").is_file()
    # fewer max_steps change the learning-rate schedule: another run's settings, resumed only when forced
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", data / "train.json",
                                   "--max_steps", stopped_at + 2, "--save_steps", 2, "--force_resume")) == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["global_step"] == stopped_at + 2
    assert summary["resumed_from"] == {"checkpoint": str(out / f"checkpoint-{stopped_at}"), "same_run": False,
                                       "forced": True}
    # only the two new steps ran: the losses logged before the interruption come from the checkpoint
    assert [h["step"] for h in summary["log_history"] if "loss" in h] == list(range(1, stopped_at + 3))


def test_resume_from_checkpoint_dir_continues_another_runs_checkpoint(trained, tiny_llama, data, tmp_path, capsys):
    """--resume_from_checkpoint DIR in a new output_dir: the state of DIR (weights, optimizer, step, history)
    goes on. The other seed shows it: a fresh run with it would log other losses from step 1."""
    out, _ = trained
    original = json.loads((out / "tuning_summary.json").read_text())["log_history"]
    resumed = tmp_path / "resumed"
    argv = _common(tiny_llama, resumed, "--train_files", data / "train.json", "--max_steps", 7,
                   "--learning_rate", "1e-2", "--seed", 1, "--resume_from_checkpoint", out / "checkpoint-6")
    # issue 19 case 5: another run's checkpoint is refused unless forced, and the summary records the resume
    msg = _one_line_error(capsys, argv)
    assert f"--resume_from_checkpoint {out / 'checkpoint-6'}: not a checkpoint of this run (" in msg
    assert "max_steps" in msg and "seed" in msg and msg.endswith("pass --force_resume to continue it anyway")
    assert not resumed.exists() or not any(resumed.glob("checkpoint-*"))
    assert run_tuning.main(argv + ["--force_resume"]) == 0
    summary = json.loads((resumed / "tuning_summary.json").read_text())
    assert summary["global_step"] == 7
    assert summary["resumed_from"] == {"checkpoint": str(out / "checkpoint-6"), "same_run": False, "forced": True}
    history = summary["log_history"]
    assert [h for h in history if h["step"] <= 6] == [h for h in original if h["step"] <= 6]
    assert any("eval_auc" in h for h in history)  # validated at step 6 by the run that wrote the checkpoint
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 8))
    assert not any(torch.equal(a, b) for a, b in zip(load_file(out / "checkpoint-6" / "adapter_model.safetensors")
                                                     .values(),
                                                     load_file(resumed / "adapter_model.safetensors").values())
                   if a.abs().sum() > 0)  # the seventh step moved the weights it started from
    msg = _one_line_error(capsys, _common(tiny_llama, tmp_path / "nowhere", "--train_files", data / "val.json",
                                          "--resume_from_checkpoint", tmp_path / "no-checkpoint"))
    assert f"--resume_from_checkpoint {tmp_path / 'no-checkpoint'}: directory not found" in msg


def test_early_stopping_keeps_the_best_checkpoint_validated_on_max_val_records(tiny_llama, data, tmp_path):
    """--early_stopping_patience 2 with validation AUC on the first 8 records (--max_val_records) every step:
    training stops 2 evaluations after the best one, whose checkpoint survives --save_total_limit 1 and is
    the saved model (the steps after it moved the weights: lr 1e-2); run_eval on those 8 records reproduces
    the AUC the selection used."""
    out, patience, max_steps = tmp_path / "early", 2, 30
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", data / "train.json", "--val_file",
                                   data / "val.json", "--max_val_records", 8, "--max_steps", max_steps,
                                   "--learning_rate", "1e-2", "--eval_strategy", "steps", "--eval_steps", 1,
                                   "--save_steps", 1, "--save_total_limit", 1, "--load_best_model_at_end",
                                   "--metric_for_best_model", "auc", "--early_stopping_patience", patience)) == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["val_records"] == 8
    evals = [(h["step"], h["eval_auc"]) for h in summary["log_history"] if "eval_auc" in h]
    best_step, best, waited, stopped = None, None, 0, None  # the stopping rule replayed on the logged AUCs
    for step, value in evals:
        if best is None or value > best:
            best_step, best, waited = step, value, 0
        else:
            waited += 1
        if waited == patience:
            stopped = step
            break
    assert stopped is not None and summary["global_step"] == stopped < max_steps
    assert evals[-1][0] == stopped and summary["best_metric"] == best
    assert summary["best_checkpoint"] == str(out / f"checkpoint-{best_step}")
    assert (out / f"checkpoint-{best_step}").is_dir()  # kept through the rotation of later checkpoints
    final = load_file(out / "adapter_model.safetensors")
    kept = load_file(out / f"checkpoint-{best_step}" / "adapter_model.safetensors")
    assert all(torch.equal(final[k], kept[k]) for k in final)  # the saved model is the best, not the last
    assert run_eval.main(["--base_model", str(tiny_llama), "--adapter", str(out), "--test_file",
                          str(data / "val.json"), "--limit", "8", "--output_dir", str(tmp_path / "ev"),
                          "--metrics", "auc", "--max_length", MAX_LEN]) == 0
    assert read_metrics(tmp_path / "ev")["auc"] == pytest.approx(best, abs=1e-9)


def test_full_finetune_saves_a_model_run_eval_loads(tiny_llama, data, tmp_path):
    out = tmp_path / "full"
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", data / "val.json", "--finetune", "full",
                                   "--max_steps", 2, "--learning_rate", "1e-3")) == 0
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert not torch.equal(tuned.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)
    for model, name in ((out, "ev"), (tiny_llama, "base_ev")):
        assert run_eval.main(["--base_model", str(model), "--test_file", str(data / "val.json"), "--output_dir",
                              str(tmp_path / name), "--metrics", "auc", "--limit", "8"]) == 0
    # run_eval scored with the fine-tuned weights: its own model's predictions, not the base model's
    tuned_preds, base_preds = read_predictions(tmp_path / "ev"), read_predictions(tmp_path / "base_ev")
    assert read_metrics(tmp_path / "ev")["settings"]["base_model"] == str(out) and len(tuned_preds) == 8
    assert [p["label"] for p in tuned_preds] == [p["label"] for p in base_preds]
    assert all(abs(t["p_yes"] - b["p_yes"]) > 1e-6 for t, b in zip(tuned_preds, base_preds))


def test_cot_records_with_stages_train_with_the_curriculum(tiny_llama, tmp_path, monkeypatch):
    """`stagewise`: every epoch of Stage 1, then of Stage 2, then of Stage 3, in the batches the model is fed
    (read back from the tokens the collator hands the model)."""
    cot = [{"instruction": f"Stage {s}: summarise the user's taste.", "input": "Liked: Dark Night 3 (1972).",
            "output": f"The user likes dark films ({s}).", "stage": s} for s in (3, 1, 2, 1, 3, 2)]
    path = tmp_path / "cot.json"
    path.write_text(json.dumps(cot))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    fed, collate = [], TuningCollator.__call__

    def seen(self, features):
        fed.append([int(re.search(r"Stage (\d)", tokenizer.decode(f["input_ids"])).group(1)) for f in features])
        return collate(self, features)

    monkeypatch.setattr(TuningCollator, "__call__", seen)
    out = tmp_path / "cot"
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", path, "--num_train_epochs", 2,
                                   "--per_device_train_batch_size", 2, "--curriculum", "stagewise")) == 0
    assert fed == [[1, 1], [1, 1], [2, 2], [2, 2], [3, 3], [3, 3]]
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["curriculum"] == "stagewise" and summary["train_records"] == 6 and summary["global_step"] == 6


def test_authors_published_cot_file_trains_with_stages_from_its_instructions(tiny_llama, tmp_path, capsys):
    fixture = Path(__file__).parent / "data" / "stage123_fixture.json"  # stage123.json's format, made-up text
    out = tmp_path / "published"
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", fixture, "--max_steps", 1,
                                   "--per_device_train_batch_size", 6)) == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["curriculum"] == "ordered" and summary["train_records"] == 6
    records = json.loads(fixture.read_text())
    records[4]["instruction"] = "Summarize the user's preferences."
    bad = tmp_path / "stage123.json"
    bad.write_text(json.dumps(records))
    error = _one_line_error(capsys, _common(tiny_llama, tmp_path / "bad", "--train_files", bad, "--max_steps", 1))
    assert f"{bad} record 4: unknown CoT instruction" in error


def test_authors_cot_recipe_stage3_records_in_the_trainers_order(tiny_llama, tmp_path, capsys):
    """The authors' CoT phase: only the Stage-3 records (cot_data/preprocess_data.py @534c6c9 writes only those to
    stage123.json), the Trainer's random order (ins_tuning.py @df4a416 group_by_length=False), the Trainer seed
    42 (no script passes one)."""
    fixture = Path(__file__).parent / "data" / "stage123_fixture.json"
    out = tmp_path / "stage3"
    argv = _common(tiny_llama, out, "--train_files", fixture, "--max_steps", 1, "--per_device_train_batch_size", 2,
                   "--stages", 3, "--curriculum", "trainer", "--train_sampling_strategy", "random", "--truncation",
                   "end")
    argv[argv.index("--seed") + 1] = "42"
    assert run_tuning.main(argv) == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    from tlrec_utils.prompts import COT_INSTRUCTION_STAGES

    stage3 = sum(COT_INSTRUCTION_STAGES[r["instruction"]][0] == 3 for r in json.loads(fixture.read_text()))
    assert (summary["train_records"], summary["stages"], summary["curriculum"], summary["seed"]) == (
        stage3, [3], "trainer", 42)
    error = _one_line_error(capsys, _common(tiny_llama, tmp_path / "none", "--train_files", fixture, "--max_steps", 1,
                                            "--stages", 3, "--k_shot", 100))
    assert "larger than the pool of 2 records" in error


def test_end_truncation_is_the_authors_tokenize(tiny_llama):
    """--truncation end: the first max_length tokens of prompt + answer (+ EOS only when shorter), exactly the
    authors' `tokenizer(prompt, truncation=True, max_length=cutoff)` + EOS rule (ljy2222/TLRec utils.py @df4a416
    lines 49-61, rec_tuning.py @561abcf lines 97-117), labels = the ids with train_on_inputs."""
    from tlrec_utils import prompts

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    record = {"instruction": "Given the candidate set, summarise.", "input": "Watched: " + ", ".join(
        f"Film {i} ({1950 + i})" for i in range(40)), "output": "1. Film 3 - Film 7\n2. Film 5 - Film 9"}
    text = prompts.record_prompt(record, prompts.get_template("tlrec"), training=True) + record["output"]
    full = tokenizer(text).input_ids
    for cutoff in (len(full) - 7, len(full) + 3):
        encoder = RecordEncoder(tokenizer, cutoff, train_on_inputs=True, template=prompts.get_template("tlrec"),
                                truncation="end")
        features = encoder.training_features(record)
        authors = tokenizer(text, truncation=True, max_length=cutoff).input_ids
        if authors[-1] != tokenizer.eos_token_id and len(authors) < cutoff:
            authors = authors + [tokenizer.eos_token_id]
        assert features["input_ids"] == authors and features["labels"] == authors
    assert encoder.truncations["end"] == 0 and len(features["input_ids"]) == len(full) + 1


def _one_line_error(capsys, argv, entry="run_tuning"):
    return assert_one_line_error(run_entry(entry, argv, capsys), logs_ok=True)  # after transformers' loading bar


def test_bad_input_is_one_line_and_exit_2(tiny_llama, data, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"instruction": "x", "input": "y", "output": "Yes."},
                               {"instruction": "x", "input": "y"}]))
    msg = _one_line_error(capsys, _common(tiny_llama, tmp_path / "o", "--train_files", bad))
    assert "bad.json record 1" in msg and "output" in msg
    msg = _one_line_error(capsys, _common(tiny_llama, tmp_path / "o", "--train_files", data / "val.json",
                                          "--load_in_4bit"))
    assert "CUDA" in msg or "bitsandbytes" in msg
    msg = _one_line_error(capsys, _common(tmp_path / "no_model", tmp_path / "o", "--train_files", data / "val.json"))
    assert "no_model" in msg
    msg = _one_line_error(capsys, _common(tiny_llama, tmp_path / "o", "--train_files", data / "val.json",
                                          "--lora_target_modules", "q_proj,not_a_module"))
    assert "not_a_module" in msg
    assert not (tmp_path / "o").exists()
    msg = _one_line_error(capsys, ["--base_model", str(tiny_llama), "--test_file", str(bad), "--output_dir",
                                   str(tmp_path / "e")], entry="run_eval")
    assert "bad.json record 1" in msg and not (tmp_path / "e").exists()


def test_cli_missing_train_file(tiny_llama, tmp_path, capsys):
    line = _one_line_error(capsys, _common(tiny_llama, tmp_path / "o", "--train_files", tmp_path / "nope.json"))
    assert line == f"error: --train_files {tmp_path / 'nope.json'}: file not found"
    assert not (tmp_path / "o").exists()


def test_finished_output_is_not_overwritten_silently(trained, tiny_llama, data, capsys):
    out, _ = trained
    msg = _one_line_error(capsys, _common(tiny_llama, out, "--train_files", data / "val.json"))
    assert "--overwrite_output_dir" in msg


def test_auto_target_modules_by_architecture():
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    from tlrec_utils.errors import InputError
    from tlrec_utils.model.loading import resolve_target_modules

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=32))
    assert resolve_target_modules(gpt2, "auto") == ["c_attn"]
    neox = GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2,
                                            intermediate_size=32, vocab_size=50))
    assert resolve_target_modules(neox, "auto") == ["query_key_value"]
    assert resolve_target_modules(gpt2, "all-linear") == "all-linear"
    assert resolve_target_modules(gpt2, "c_attn, c_proj") == ["c_attn", "c_proj"]
    with pytest.raises(InputError, match="q_proj"):
        resolve_target_modules(gpt2, "q_proj")


def test_config_file_instead_of_flags_and_k_shot(tiny_llama, data, tmp_path):
    config = {"base_model": str(tiny_llama), "train_files": [str(data / "train.json")],
              "output_dir": str(tmp_path / "k"),
              "k_shot": 16, "seed": 3, "max_steps": 1, "max_length": int(MAX_LEN), "use_cpu": True,
              "lora_r": 4, "lora_target_modules": "q_proj,k_proj", "gradient_checkpointing": True,
              "warmup_steps": 0, "learning_rate": 1e-2}
    path = tmp_path / "args.json"
    path.write_text(json.dumps(config))
    assert run_tuning.main([str(path)]) == 0
    summary = json.loads((tmp_path / "k" / "tuning_summary.json").read_text())
    assert summary["train_records"] == 16 and summary["k_shot"] == 16 and summary["seed"] == 3
    adapter = json.loads((tmp_path / "k" / "adapter_config.json").read_text())
    assert adapter["r"] == 4 and set(adapter["target_modules"]) == {"q_proj", "k_proj"}
    weights = load_file(tmp_path / "k" / "adapter_model.safetensors")
    assert all(v.abs().sum() > 0 for k, v in weights.items() if "lora_B" in k)  # gradients reached the adapter


def test_one_run_tuning_per_output_dir(tiny_llama, data, tmp_path, capsys):
    """Issue 19 case 5: a second run_tuning on an output_dir in use stops with one line naming the holder,
    before writing anything (the pipeline's and the CoT run's lock)."""
    from tlrec_utils.fileio import exclusive_lock
    from tlrec_utils.tuning.training import LOCK_FILE

    out = tmp_path / "busy"
    with exclusive_lock(out / LOCK_FILE, lambda holder: holder) as f:
        f.write("pid 4242 on host elsewhere\n")
        f.flush()
        msg = _one_line_error(capsys, _common(tiny_llama, out, "--train_files", data / "train.json", "--max_steps", 1))
        # looked at while the holder still has it: releasing the lock removes the file and the folder it made
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    assert f"{out} is in use by another run_tuning (pid 4242 on host elsewhere)" in msg
    assert not out.exists()


def test_curriculum_over_mixed_cot_and_yes_no_files(tiny_llama, data, tmp_path, capsys):
    """Issue 19 case 5: CoT and Yes/No files together, in either order: an ordering curriculum is refused with
    one line; `shuffled` trains on all records and the summary records the curriculum and both kinds."""
    cot = [{"instruction": f"Stage {s}: summarise the user's taste.", "input": "Liked: Dark Night 3 (1972).",
            "output": f"The user likes dark films ({s}).", "stage": s} for s in (3, 1, 2, 1, 3, 2)]
    cot_path = tmp_path / "cot.json"
    cot_path.write_text(json.dumps(cot))
    yes_no = data / "val.json"
    n_yes_no = len(json.loads(yes_no.read_text()))
    for files in ((yes_no, cot_path), (cot_path, yes_no)):
        msg = _one_line_error(capsys, _common(tiny_llama, tmp_path / "mixed", "--train_files", *files,
                                              "--max_steps", 1, "--curriculum", "stagewise"))
        assert f"6 CoT and {n_yes_no} Yes/No records mixed; --curriculum stagewise orders CoT stages only" in msg
    out = tmp_path / "shuffled"
    assert run_tuning.main(_common(tiny_llama, out, "--train_files", yes_no, cot_path, "--max_steps", 1,
                                   "--curriculum", "shuffled")) == 0
    summary = json.loads((out / "tuning_summary.json").read_text())
    assert summary["curriculum"] == "shuffled" and summary["records_by_kind"] == {"cot": 6, "yes_no": n_yes_no}
    assert summary["train_records"] == 6 + n_yes_no
