"""run_pipeline end to end on real data (Netflix source, MovieLens-100K target) with a tiny LLaMA built by the
pipeline and the heuristic teacher: an interrupted phase resumes from its checkpoint, every phase's output
exists and loads, adapters chain, and a rerun skips every finished phase."""

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import run_pipeline
from tlrec_utils.errors import InputError
from tlrec_utils.pipeline import PHASE_DONE, PhaseInterrupted, PipelineConfig, format_table, run_pipeline as run

REPO = Path(__file__).resolve().parent.parent


def small_config(run_dir, data_dir, **overrides):
    values = dict(
        run_dir=str(run_dir), data_dir=str(data_dir), max_windows=300, cot_max_users=60, tiny_vocab_size=600,
        cot_epochs=1, source_records=128, source_epochs=1, k_shots=[16], seeds=[3], kshot_epochs=1,
        learning_rate=1e-3, per_device_train_batch_size=8, max_length=512, test_limit=20, num_negatives=5,
        eval_batch_size=16, tuning_args=["--save_steps", "1", "--logging_steps", "1"],
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


def test_pipeline_interrupt_resume_outputs_and_rerun_skip(data_dir, tmp_path, caplog):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tlrec_utils.records import load_records

    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
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
        "wo_cot/source_tuning": None,
        "wo_cot/k16_seed3": "wo_cot/source_tuning",
    }
    for phase, parent in chain.items():
        s = json.loads((run_dir / phase / "tuning_summary.json").read_text())
        assert s["init_adapter"] == (str(run_dir / parent) if parent else None)
        assert (run_dir / phase / PHASE_DONE).is_file()
    assert json.loads((run_dir / "tlrec/cot_tuning/tuning_summary.json").read_text())["curriculum"] == "ordered"
    assert json.loads((run_dir / "tlrec/k16_seed3/tuning_summary.json").read_text())["k_shot"] == 16
    model = PeftModel.from_pretrained(base, str(run_dir / "tlrec" / "k16_seed3"))
    assert any("lora_A" in n for n, _ in model.named_parameters())
    assert not (run_dir / "wo_cot" / "cot_tuning").exists()

    assert set(results["variants"]) == {"tlrec", "wo_cot"}
    for variant, settings in results["variants"].items():
        assert set(settings) == {"zero_shot", "k16_seed3"}
        for setting, metrics in settings.items():
            on_disk = json.loads((run_dir / variant / "eval" / setting / "metrics.json").read_text())
            assert on_disk == metrics and 0.0 <= metrics["auc"] <= 1.0 and "ndcg@10" in metrics
            preds = (run_dir / variant / "eval" / setting / "predictions.jsonl").read_text().splitlines()
            assert len(preds) == 20
    assert json.loads((run_dir / "results.json").read_text())["variants"] == results["variants"]
    table = format_table(results)
    assert table.count("\n") == 3 and "tlrec AUC" in table and "wo_cot NDCG@10" in table

    # 3) a third run does nothing but read the markers
    caplog.clear()
    again = run(cfg)
    assert again["variants"] == results["variants"]
    assert phase_markers(run_dir) == after
    skipped = [r for r in caplog.records if "complete, skipped" in r.getMessage()]
    assert len(skipped) == len(after)


def test_ablation_variants_and_layout(data_dir, tmp_path):
    """w/o rec-tuning and w/o curriculum: the K-shot phase continues the CoT adapter directly."""
    run_dir = tmp_path / "abl"
    cfg = small_config(run_dir, data_dir, use_rec_tuning=False, curriculum="shuffled", compare_without_cot=False,
                       eval_metrics="auc", tuning_args=[])
    results = run(cfg)
    (name,) = results["variants"]
    assert name == "tlrec_wo_rec_tuning_wo_curriculum"
    assert not (run_dir / name / "source_tuning").exists()
    cot = json.loads((run_dir / name / "cot_tuning" / "tuning_summary.json").read_text())
    assert cot["curriculum"] == "shuffled"
    few = json.loads((run_dir / name / "k16_seed3" / "tuning_summary.json").read_text())
    assert few["init_adapter"] == str(run_dir / name / "cot_tuning")
    zero = json.loads((run_dir / name / "eval" / "zero_shot" / "metrics.json").read_text())
    assert zero["settings"]["adapter"] == str(run_dir / name / "cot_tuning")


def test_cli_config_file_and_overrides(tmp_path):
    cfg = run_pipeline.parse_args([
        "--config", str(REPO / "configs/experiments/quickstart.yaml"), "--run_dir", str(tmp_path), "--k_shots", "16",
        "--tuning_args", "--bf16", "--logging_steps", "5",
    ])  # fmt: skip
    assert cfg.run_dir == str(tmp_path) and cfg.k_shots == [16]
    assert cfg.teacher == "heuristic" and cfg.finetune == "full"  # from the file
    assert cfg.tuning_args == ["--bf16", "--logging_steps", "5"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_dir: x\nk_shot: 3\n")
    with pytest.raises(InputError, match="unknown setting"):
        run_pipeline.parse_args(["--config", str(bad)])
    with pytest.raises(InputError, match="curriculum"):
        run(PipelineConfig(run_dir=str(tmp_path / "r"), curriculum="reverse"))


def test_published_cot_data_and_prompt_template_pass_through_every_phase(data_dir, tmp_path):
    """teacher: published reads CoT records in the TLRec authors' stage123.json format (a made-up fixture);
    prompt_template reaches every tuning and evaluation phase."""
    from tlrec_utils import prompts

    run_dir = tmp_path / "pub"
    fixture = REPO / "tests" / "data" / "stage123_fixture.json"
    cfg = small_config(run_dir, data_dir, teacher="published", cot_file=str(fixture), prompt_template="alpaca",
                       use_rec_tuning=False, compare_without_cot=False, eval_metrics="auc", tuning_args=[])
    run(cfg)
    cot = json.loads((run_dir / "cot" / "cot_train.json").read_text())
    assert [r["stage"] for r in cot] == [3, 3, 1, 1, 2, 2]
    assert json.loads((run_dir / "cot" / PHASE_DONE).read_text())["records_per_stage"] == {"1": 2, "2": 2, "3": 2}
    for phase in ("cot_tuning", "k16_seed3"):
        assert prompts.load_saved_template(run_dir / "tlrec_wo_rec_tuning" / phase).name == "alpaca"
    for setting in ("zero_shot", "k16_seed3"):
        metrics = json.loads((run_dir / "tlrec_wo_rec_tuning" / "eval" / setting / "metrics.json").read_text())
        assert metrics["settings"]["prompt_template"] == "alpaca"
    with pytest.raises(InputError, match="none.json: CoT file not found"):
        run(small_config(tmp_path / "missing", data_dir, teacher="published", cot_file=str(tmp_path / "none.json")))
    if not (data_dir / "tlrec-cot" / "stage123.json").is_file():  # the default place: fetched with --download
        with pytest.raises(InputError, match="tlrec-cot/stage123.json: file not found; pass --download"):
            run(small_config(tmp_path / "default", data_dir, teacher="published"))
