"""run_pipeline end to end on real data (Netflix source, MovieLens-100K target) with a tiny LLaMA built by the
pipeline and the heuristic teacher: an interrupted phase resumes from its checkpoint, every phase's output
exists and loads, adapters chain as each method defines it, and a rerun skips every finished phase."""

import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    PIPELINE_START,
    REPO,
    assert_one_line_error,
    read_metrics,
    read_predictions,
    read_results,
    run_entry,
)

import run_pipeline
from tlrec_utils.cot.registry import TEACHERS
from tlrec_utils.errors import InputError
from tlrec_utils.evaluation.metrics import auc
from tlrec_utils.experiments import pipeline as pipeline_module
from tlrec_utils.experiments.pipeline import (
    PHASE_DONE,
    PhaseFailed,
    PhaseInterrupted,
    PipelineConfig,
    format_effects,
    format_table,
    method_lines,
    pipeline_phases,
    run_dir_lock,
)
from tlrec_utils.experiments.pipeline import (
    run_pipeline as run,
)
from tlrec_utils.experiments.pipeline_config import METHODS


def small_config(run_dir, data_dir, **overrides):
    values = dict(
        run_dir=str(run_dir), data_dir=str(data_dir), **PIPELINE_START,
        cot_epochs=1, source_records=128, source_epochs=1, k_shots=[16], seeds=[3], kshot_epochs=1,
        methods=["tlrec", "tallrec"], tuning={"learning_rate": 1e-3, "per_device_train_batch_size": 8,
                                              "max_length": 512},
        test_limit=20, eval={"num_negatives": 5, "batch_size": 16},
        tuning_args=["--save_steps", "1", "--logging_steps", "1"],
    )  # fmt: skip
    values.update(overrides)
    return PipelineConfig(**values)


def sigterm_when(path_glob_dir: Path, pattern: str, stop: threading.Event):
    """SIGTERM this process (like SLURM preemption) once a checkpoint appears and the trainer's handler is in."""
    while not stop.is_set():
        if path_glob_dir.is_dir() and any(path_glob_dir.glob(pattern)):
            if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGTERM)
                return
        time.sleep(0.01)


def phase_markers(run_dir: Path):
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob(PHASE_DONE)}


def test_pipeline_interrupt_resume_outputs_and_rerun_skip(data_dir, pipeline_start, tmp_path, caplog):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tlrec_utils.data.records import load_records

    caplog.set_level(logging.INFO)
    run_dir = pipeline_start(tmp_path / "run")  # data, CoT records and tiny model as this run makes them
    cfg = small_config(run_dir, data_dir)
    source_tuning = run_dir / "tlrec" / "source_tuning"

    # 1) preempted in the middle of source rec-tuning
    stop = threading.Event()
    watcher = threading.Thread(target=sigterm_when, args=(source_tuning, "checkpoint-*", stop), daemon=True)
    watcher.start()
    try:
        with pytest.raises(PhaseInterrupted, match="source rec-tuning"):
            run(cfg)
    finally:
        stop.set()
        watcher.join()
    assert not (source_tuning / PHASE_DONE).exists()
    checkpoints = sorted(source_tuning.glob("checkpoint-*"))
    assert checkpoints
    stopped_at = int(checkpoints[-1].name.split("-")[1])
    assert (run_dir / "tlrec" / "cot_tuning" / PHASE_DONE).is_file()
    before = phase_markers(run_dir)

    # 2) the rerun skips what finished and resumes the interrupted phase from its checkpoint
    caplog.clear()
    results = run(cfg)
    assert any("resuming from" in r.getMessage() and "checkpoint-" in r.getMessage() for r in caplog.records)
    after = phase_markers(run_dir)
    assert all(after[k] == v for k, v in before.items())  # finished phases untouched
    summary = json.loads((source_tuning / "tuning_summary.json").read_text())
    assert summary["global_step"] == 128 // 8 > stopped_at

    # every phase's output exists and loads
    for which in ("source", "target"):
        for split in ("train", "valid", "test"):
            assert load_records(run_dir / "data" / which / f"{split}.json")
    cot = json.loads((run_dir / "cot" / "cot_train.json").read_text())
    assert {r["stage"] for r in cot} == {1, 2, 3}
    base = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    chain = {  # phase -> the adapter it continued
        "tlrec/cot_tuning": None,
        "tlrec/source_tuning": "tlrec/cot_tuning",
        "tlrec/k16_seed3": "tlrec/source_tuning",
        "tallrec/k16_seed3": None,  # TALLRec: K-shot rec-tuning of the start model, nothing else
    }
    for phase, parent in chain.items():
        s = json.loads((run_dir / phase / "tuning_summary.json").read_text())
        assert s["init_adapter"] == (str(run_dir / parent) if parent else None)
        assert (run_dir / phase / PHASE_DONE).is_file()
        assert (run_dir / phase / "command.txt").read_text().split()[1].endswith("run_tuning.py")
    cot_summary = json.loads((run_dir / "tlrec/cot_tuning/tuning_summary.json").read_text())
    assert cot_summary["curriculum"] == "ordered"
    # the CoT phase runs at the model's limit (2048 for the tiny LLaMA): no CoT record is cut
    assert cot_summary["max_length"] == 2048
    assert json.loads((run_dir / "tlrec/cot_tuning" / PHASE_DONE).read_text())["truncated_records"] == 0
    assert json.loads((run_dir / "tlrec/k16_seed3/tuning_summary.json").read_text())["k_shot"] == 16
    model = PeftModel.from_pretrained(base, str(run_dir / "tlrec" / "k16_seed3"))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert not (run_dir / "tallrec" / "cot_tuning").exists() and not (run_dir / "tallrec" / "source_tuning").exists()
    # TALLRec's zero-shot cell is the start model itself
    zero = read_metrics(run_dir / "tallrec/eval/zero_shot")
    assert zero["settings"]["base_model"] == str(run_dir / "model") and zero["settings"]["adapter"] is None

    assert set(results["variants"]) == {"tlrec", "tallrec"}
    evaluated_adapter = {  # (method, setting) -> the adapter its evaluation must score with
        ("tlrec", "zero_shot"): "tlrec/source_tuning", ("tlrec", "k16_seed3"): "tlrec/k16_seed3",
        ("tallrec", "zero_shot"): None, ("tallrec", "k16_seed3"): "tallrec/k16_seed3",
    }  # fmt: skip
    scores = {}
    for variant, settings in results["variants"].items():
        assert set(settings) == {"zero_shot", "k16_seed3"}
        for setting, metrics in settings.items():
            on_disk = read_metrics(run_dir / variant / "eval" / setting)
            assert on_disk == metrics and "ndcg@10" in metrics
            adapter = evaluated_adapter[variant, setting]
            assert metrics["settings"]["base_model"] == str(run_dir / "model")
            assert metrics["settings"]["adapter"] == (str(run_dir / adapter) if adapter else None)
            preds = read_predictions(run_dir / variant / "eval" / setting)
            assert len(preds) == 20
            assert metrics["auc"] == pytest.approx(auc([p["label"] for p in preds], [p["p_yes"] for p in preds]))
            scores[variant, setting] = tuple(p["p_yes"] for p in preds)
    assert len(set(scores.values())) == len(scores)  # each setting scored by its own model: no two alike
    assert read_results(run_dir)["variants"] == results["variants"]
    # each tuning phase moved its held-out figure: the same records scored by its start model and its trained model
    effects = results["phases"]
    assert set(effects) == {"tlrec/cot_tuning", "tlrec/source_tuning", "tlrec/k16_seed3", "tallrec/k16_seed3"}
    assert effects["tlrec/cot_tuning"]["held_out"] == "held-out CoT loss"
    assert effects["tlrec/cot_tuning"]["after"] < effects["tlrec/cot_tuning"]["before"]  # it learned the CoT text
    assert effects["tlrec/source_tuning"]["held_out"] == "source valid AUC"
    assert effects["tallrec/k16_seed3"]["held_out"] == "target valid AUC"
    assert not any(e["unchanged"] for e in effects.values()) and results["warnings"] == []
    for key in effects:
        summary = json.loads((run_dir / key / "tuning_summary.json").read_text())["effect"]
        expected = {"cot_tuning": {"source", "target", "heldout"}, "source_tuning": {"source", "target"}}
        assert set(summary) == expected.get(key.split("/")[1], {"target"})  # K-shot: the target records only
        # the first effect_records (128) of each valid split: the Movie one has 30 here (300 windows)
        assert summary["target"]["records"] == 30 and summary.get("source", {"records": 128})["records"] == 128
        assert json.loads((run_dir / key / PHASE_DONE).read_text())["effect"] == summary
    # the chain, figure by figure: a phase starts where the one it continues ended (on the same records), and
    # every phase from the start model starts alike; the interrupted source phase kept its start figures
    for key, parent in chain.items():
        mine = json.loads((run_dir / key / "tuning_summary.json").read_text())["effect"]["target"]["before"]
        ref = (json.loads((run_dir / parent / "tuning_summary.json").read_text())["effect"]["target"]["after"]
               if parent else json.loads((run_dir / "tlrec/cot_tuning/tuning_summary.json").read_text())
               ["effect"]["target"]["before"])
        assert mine == pytest.approx(ref, abs=1e-6)
    table = format_table(results)
    assert table.count("\n") == 3 and "tlrec AUC" in table and "tallrec NDCG@10" in table

    # 3) a third run does nothing but read the markers
    caplog.clear()
    again = run(cfg)
    assert again["variants"] == results["variants"]
    assert phase_markers(run_dir) == after
    (reused,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reused ")]
    assert reused.startswith(f"reused {len(after)} phase(s), fingerprints match: ")
    assert not [r for r in caplog.records if r.getMessage().startswith(("rerun ", "running"))]
    assert len(again["provenance"]) == len(after)
    assert {entry["status"] for entry in again["provenance"].values()} == {"reused"}
    # the resumed source rec-tuning says so, and its phase was this run's (same fingerprint)
    assert results["provenance"]["tlrec/source_tuning"]["status"] == "resumed"
    resumed_from = json.loads((source_tuning / "tuning_summary.json").read_text())["resumed_from"]
    assert resumed_from["same_run"] is True and resumed_from["forced"] is False


def test_a_phase_that_changes_nothing_warns_and_a_broken_chain_stops_the_run(data_dir, pipeline_start, tmp_path,
                                                                              monkeypatch, caplog):
    """A K-shot phase at learning rate 0 (its LoRA adapter stays zero) scores its held-out records exactly as its
    start model: a warning naming the phase. A K-shot phase fed the start model instead of the source rec-tuned
    one (a chain that dropped a phase) is caught by its start figures and stops the run."""
    run_dir = pipeline_start(tmp_path / "chain", "data/source", "data/target")  # its model has seen no CoT
    cfg = small_config(run_dir, data_dir, methods=["wo_cot"], source_records=64, eval={"metrics": "auc"},
                       tuning_args=[], kshot_tuning={"learning_rate": 0.0})
    caplog.set_level(logging.WARNING)
    results = run(cfg)
    source = results["phases"]["wo_cot/source_tuning"]
    assert not source["unchanged"] and source["after"] != source["before"]
    assert results["phases"]["wo_cot/k16_seed3"]["unchanged"]
    (warning,) = results["warnings"]
    assert warning.startswith("wo_cot: 16-shot target rec-tuning (seed 3): ") and "changed nothing" in warning
    assert any(warning in r.getMessage() for r in caplog.records)
    assert format_effects(results).count("(unchanged)") == 1
    lines = method_lines(results)
    assert len(lines) == 1 and lines[0].startswith("wo_cot: source valid AUC ") and "zero-shot test AUC" in lines[0]

    # the K-shot phase rerun from the start model instead of wo_cot/source_tuning
    planned = pipeline_module.pipeline_phases

    def dropped_source_phase(cfg):
        phases = planned(cfg)
        for phase in phases:
            if phase.key == "wo_cot/k16_seed3":
                i = phase.argv.index("--init_adapter")
                del phase.argv[i:i + 2]
        return phases

    monkeypatch.setattr(pipeline_module, "pipeline_phases", dropped_source_phase)
    import shutil

    shutil.rmtree(run_dir / "wo_cot" / "k16_seed3")
    with pytest.raises(PhaseFailed, match="'wo_cot: 16-shot target rec-tuning \\(seed 3\\)' did not start from the "
                                          "model wo_cot/source_tuning ended with"):
        run(cfg)


def test_ablation_methods_share_phases_and_cut_cot(data_dir, pipeline_start, tmp_path):
    """w/o rec-tuning continues tlrec's CoT adapter (one shared phase) straight into K-shot; w/o curriculum
    shuffles the CoT records; a short cot_max_length cuts CoT records and the phase summary counts them."""
    run_dir = pipeline_start(tmp_path / "abl")
    cfg = small_config(run_dir, data_dir, methods=["wo_rec_tuning", "wo_curriculum"], source_records=32,
                       cot_max_length=400, eval={"metrics": "auc"}, tuning_args=[])
    results = run(cfg)
    assert list(results["variants"]) == ["wo_rec_tuning", "wo_curriculum"]
    assert not (run_dir / "wo_rec_tuning" / "source_tuning").exists()
    cot = json.loads((run_dir / "wo_rec_tuning" / "cot_tuning" / "tuning_summary.json").read_text())
    assert cot["curriculum"] == "ordered" and cot["max_length"] == 400
    done = json.loads((run_dir / "wo_rec_tuning" / "cot_tuning" / PHASE_DONE).read_text())
    assert done["truncated_records"] == sum(cot["truncated_train_records"].values()) > 0
    few = json.loads((run_dir / "wo_rec_tuning" / "k16_seed3" / "tuning_summary.json").read_text())
    assert few["init_adapter"] == str(run_dir / "wo_rec_tuning" / "cot_tuning")
    zero = read_metrics(run_dir / "wo_rec_tuning" / "eval" / "zero_shot")
    assert zero["settings"]["adapter"] == str(run_dir / "wo_rec_tuning" / "cot_tuning")
    shuffled = json.loads((run_dir / "wo_curriculum" / "cot_tuning" / "tuning_summary.json").read_text())
    assert shuffled["curriculum"] == "shuffled"
    source = json.loads((run_dir / "wo_curriculum" / "source_tuning" / "tuning_summary.json").read_text())
    assert source["init_adapter"] == str(run_dir / "wo_curriculum" / "cot_tuning")


def _argv_value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def test_plan_of_every_method_with_start_adapter_and_validation(tmp_path, small_data_dir):
    """pipeline_phases: each method's chain as the paper defines it, all starting from the start adapter;
    phases two methods share appear once; validation flags follow the authors' recipe."""
    adapter = tmp_path / "alpaca-lora"
    adapter.mkdir()
    cfg = PipelineConfig(run_dir=str(tmp_path / "r"), data_dir=str(small_data_dir), base_model="/models/llama-7b",
                         start_adapter=str(adapter), methods=list(METHODS), k_shots=[16, 256],
                         validate=True, tuning={"max_val_records": 100})
    phases = {p.key: p for p in pipeline_phases(cfg)}
    run_dir = tmp_path / "r"

    def init(key):
        return _argv_value(phases[key].argv, "--init_adapter")

    assert init("tlrec/cot_tuning") == str(adapter)
    assert init("tlrec/source_tuning") == str(run_dir / "tlrec/cot_tuning")
    assert init("tlrec/k16_seed0") == str(run_dir / "tlrec/source_tuning")
    assert init("tallrec/k16_seed0") == str(adapter)
    assert _argv_value(phases["tallrec/eval/zero_shot"].argv, "--adapter") == str(adapter)
    assert init("wo_cot/source_tuning") == str(adapter)
    assert init("wo_cot/k16_seed0") == str(run_dir / "wo_cot/source_tuning")
    assert _argv_value(phases["wo_curriculum/cot_tuning"].argv, "--curriculum") == "shuffled"
    assert "wo_rec_tuning/cot_tuning" not in phases  # shared with tlrec
    assert init("wo_rec_tuning/k16_seed0") == str(run_dir / "tlrec/cot_tuning")
    assert phases["wo_rec_tuning/k16_seed0"].after[-1] == "tlrec/cot_tuning"
    assert _argv_value(phases["tlrec/cot_tuning"].argv, "--max_length") == "2048"  # no model config: the cap
    few = phases["tlrec/k256_seed0"].argv
    assert _argv_value(few, "--val_file") == str(run_dir / "data/target/valid.json")
    assert (_argv_value(few, "--eval_steps"), _argv_value(few, "--metric_for_best_model")) == ("10", "loss")
    assert _argv_value(few, "--load_best_model_at_end") == "true" and _argv_value(few, "--max_val_records") == "100"
    assert _argv_value(phases["tlrec/k16_seed0"].argv, "--eval_steps") == "10"
    assert "cot" in phases and "model" not in phases  # a base model is given: no tiny model


def test_cli_config_file_mappings_and_overrides(tmp_path):
    cfg = run_pipeline.parse_args([
        "--config", str(REPO / "configs/experiments/quickstart.yaml"), "--run_dir", str(tmp_path), "--k_shots", "16",
        "--tuning", "learning_rate=1e-4", "lora_r=16", "--eval", '{"batch_size": 8}',
        "--tuning_args", "--bf16", "--logging_steps", "5",
    ])  # fmt: skip
    assert cfg.run_dir == str(tmp_path) and cfg.k_shots == [16]
    assert cfg.teacher == "heuristic" and cfg.methods == ["tlrec", "tallrec", "wo_cot"]  # from the file
    assert cfg.tuning == {"finetune": "full", "learning_rate": 1e-4, "per_device_train_batch_size": 16,
                          "max_length": 384, "lora_r": 16}
    assert cfg.eval == {"metrics": "auc", "batch_size": 8} and cfg.source_tuning == {"per_device_train_batch_size": 8}
    assert cfg.tuning_args == ["--bf16", "--logging_steps", "5"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nk_shot: 3\n")
    with pytest.raises(InputError, match="unknown setting"):
        run_pipeline.parse_args(["--config", str(bad)])
    with pytest.raises(InputError, match="methods"):
        run(PipelineConfig(run_dir=str(tmp_path / "r"), methods=["tlrec", "tallrec_v2"]))
    with pytest.raises(InputError, match="lora_rank: not a run_tuning.py setting"):
        run(PipelineConfig(run_dir=str(tmp_path / "r"), tuning={"lora_rank": 4}))
    with pytest.raises(InputError, match="num_train_epochs: set by the pipeline"):
        run(PipelineConfig(run_dir=str(tmp_path / "r"), kshot_tuning={"num_train_epochs": 4}))
    with pytest.raises(InputError, match="start_adapter needs LoRA"):
        run(PipelineConfig(run_dir=str(tmp_path / "r"), start_adapter=str(tmp_path), tuning={"finetune": "full"}))


@pytest.mark.parametrize("name,value,choices", [("launcher", "slurm", "inprocess, accelerate"),
                                                ("teacher", "gpt", ", ".join(TEACHERS)),
                                                ("on_change", "ask", "rerun, error"),
                                                ("source_target_style", "quote", "wrap, item"),
                                                ("cot_curriculum", "random", "ordered, shuffled, stagewise, trainer")])
def test_a_config_built_in_python_is_checked_against_the_fields_choices(tmp_path, name, value, choices):
    """What a flag or a config file outside a field's choices gets refused with, a PipelineConfig made in Python
    gets too, in the same words as a config file's value, before anything is planned or written."""
    with pytest.raises(InputError, match=rf"^--{name}: '{value}' is not one of {choices}$"):
        pipeline_phases(PipelineConfig(run_dir=str(tmp_path / "r"), **{name: value}), check_data=False)
    assert not (tmp_path / "r").exists()
    config = tmp_path / "p.yaml"
    config.write_text(f"run_dir: {tmp_path / 'r'}\n{name}: {value}\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(config))}: {name}: '{value}' is not one of {choices}$"):
        run_pipeline.parse_args(["--config", str(config)])


def test_second_run_on_the_same_run_dir_stops_with_the_holder(tmp_path, small_data_dir, capsys):
    import socket

    run_dir = tmp_path / "locked"
    with run_dir_lock(run_dir):  # the holder: this process (flock locks conflict across open files, here too)
        proc = run_entry("run_pipeline", ["--run_dir", run_dir, "--data_dir", small_data_dir], capsys)
    assert_one_line_error(proc, f"pid {os.getpid()} on host {socket.gethostname()}", str(run_dir))
    assert not (run_dir / "data").exists()


def test_start_adapter_and_validation_keep_the_best_checkpoint(data_dir, pipeline_start, tmp_path, tiny_llama,
                                                                synthetic):
    """Every method starts from the start adapter (TALLRec's zero-shot cell is that model); with `validate`
    each tuning phase evaluates on the target valid split every eval_steps and keeps the checkpoint with the
    lowest validation loss (the authors' rec_tuning.py)."""
    import run_tuning

    start = tmp_path / "start-lora"
    assert run_tuning.main(["--base_model", str(tiny_llama), "--train_files", str(synthetic[2]), "--output_dir",
                            str(start), "--max_steps", "1", "--per_device_train_batch_size", "4"]) == 0
    run_dir = pipeline_start(tmp_path / "val", "data/source", "data/target")
    cfg = small_config(run_dir, data_dir, base_model=str(tiny_llama), start_adapter=str(start), methods=["tallrec"],
                       kshot_epochs=3, validate=True, eval={"metrics": "auc"}, tuning_args=[],
                       tuning={"per_device_train_batch_size": 8, "max_val_records": 24, "eval_steps": 2,
                               "learning_rate": 1e-3})
    results = run(cfg)
    few = json.loads((run_dir / "tallrec/k16_seed3/tuning_summary.json").read_text())
    assert few["init_adapter"] == str(start) and few["val_records"] == 24
    evals = [h for h in few["log_history"] if "eval_loss" in h]
    assert [h["step"] for h in evals] == [2, 4, 6] and all("eval_auc" in h for h in evals)
    best = min(evals, key=lambda h: h["eval_loss"])
    assert few["best_metric"] == pytest.approx(best["eval_loss"])
    assert few["best_checkpoint"].endswith(f"checkpoint-{best['step']}")
    zero = results["variants"]["tallrec"]["zero_shot"]
    assert zero["settings"]["adapter"] == str(start) and zero["settings"]["base_model"] == str(tiny_llama)


def test_published_cot_data_and_prompt_template_pass_through_every_phase(data_dir, pipeline_start, tmp_path):
    """teacher: published reads CoT records in the TLRec authors' stage123.json format (a made-up fixture);
    prompt_template reaches every tuning and evaluation phase."""
    from tlrec_utils import prompts

    run_dir = pipeline_start(tmp_path / "pub", "data/source", "data/target")
    fixture = REPO / "tests" / "data" / "stage123_fixture.json"
    cfg = small_config(run_dir, data_dir, teacher="published", cot_file=str(fixture), prompt_template="alpaca",
                       methods=["wo_rec_tuning"], eval={"metrics": "auc"}, tuning_args=[])
    run(cfg)
    cot = json.loads((run_dir / "cot" / "cot_train.json").read_text())
    assert [r["stage"] for r in cot] == [3, 3, 1, 1, 2, 2]
    assert json.loads((run_dir / "cot" / PHASE_DONE).read_text())["records_per_stage"] == {"1": 2, "2": 2, "3": 2}
    for phase in ("cot_tuning", "k16_seed3"):
        assert prompts.load_saved_template(run_dir / "wo_rec_tuning" / phase).name == "alpaca"
    for setting in ("zero_shot", "k16_seed3"):
        metrics = read_metrics(run_dir / "wo_rec_tuning" / "eval" / setting)
        assert metrics["settings"]["prompt_template"] == "alpaca"
    with pytest.raises(InputError, match="none.json: CoT file not found"):
        run(small_config(tmp_path / "missing", data_dir, teacher="published", cot_file=str(tmp_path / "none.json")))
    if not (data_dir / "tlrec-cot" / "stage123.json").is_file():  # the default place: fetched with --download
        with pytest.raises(InputError, match="tlrec-cot/stage123.json: file not found; pass --download"):
            run(small_config(tmp_path / "default", data_dir, teacher="published"))
