"""run_pipeline with `launcher: accelerate`: every tuning and evaluation phase runs as `accelerate launch
--num_processes 2 run_tuning.py|run_eval.py ...` (gloo on CPU, --use_cpu) on the tiny model and a small slice of
the real data; SIGTERM reaches the launched child (checkpoint, exit 143) and a rerun resumes it; a failing child
is one line naming the phase and its log."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import PIPELINE_START, REPO, read_metrics, read_predictions, read_results

import run_pipeline
from tlrec_utils.evaluation.metrics import auc
from tlrec_utils.experiments.pipeline import PHASE_DONE, pipeline_phases

SLICE = {
    **PIPELINE_START, "cot_epochs": 1, "k_shots": [16],
    "seeds": [3], "kshot_epochs": 4, "methods": ["wo_rec_tuning"], "test_limit": 20,
    "tuning": {"learning_rate": 1e-3, "per_device_train_batch_size": 4, "max_length": 512, "save_steps": 1},
    "eval": {"metrics": "auc", "batch_size": 16},
}  # fmt: skip


def test_accelerate_launcher_two_processes_sigterm_resume_and_same_results_keys(data_dir, tmp_path):
    config = tmp_path / "slice.yaml"
    config.write_text(yaml.safe_dump({**SLICE, "data_dir": str(data_dir)}))
    launched = tmp_path / "launched"
    argv = ["--config", str(config), "--run_dir", str(launched), "--launcher", "accelerate", "--num_processes", "2",
            "--tuning_args", "--use_cpu"]
    kshot = launched / "wo_rec_tuning" / "k16_seed3"

    # 1) the whole pipeline in a subprocess; SIGTERM it (SLURM preemption) once the K-shot child has a checkpoint
    log = tmp_path / "pipeline.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "run_pipeline.py", *argv], cwd=REPO, stdout=f, stderr=f)
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not any(kshot.glob("checkpoint-*")):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=120)
    assert status == 143, log.read_text()[-3000:]
    assert "interrupted:" in log.read_text()
    assert any(kshot.glob("checkpoint-*")) and not (kshot / PHASE_DONE).exists()
    assert not (kshot / "tuning_summary.json").exists()  # the child stopped early, it did not finish
    child_log = (kshot / "log.txt").read_text()
    assert "SIGTERM received" in child_log

    # 2) the rerun skips the finished phases and the child resumes from its checkpoint
    assert run_pipeline.main(argv) == 0
    assert "resuming from" in (kshot / "log.txt").read_text()
    results = read_results(launched)
    cfg = run_pipeline.parse_args(argv)
    for phase in pipeline_phases(cfg):
        assert (phase.dir / PHASE_DONE).is_file()
        command = (phase.dir / "command.txt").read_text().strip()
        assert command == shlex.join(phase.command_line(cfg))
        if phase.kind in ("tuning", "eval"):
            assert command.startswith("accelerate launch --multi_gpu --num_processes 2 ")
            assert (phase.dir / "log.txt").is_file()
    summary = json.loads((kshot / "tuning_summary.json").read_text())
    assert summary["global_step"] == 16 * 4 // (4 * 2)  # 2 processes x 4 records per step, 4 epochs

    # 3) the same slice in-process: results.json has the same entries, the same test records were scored (in
    # 2 processes when launched, 1 in-process), and each launched AUC is the one of its own written scores
    inprocess = tmp_path / "inprocess"
    assert run_pipeline.main(["--config", str(config), "--run_dir", str(inprocess), "--tuning_args", "--use_cpu"]) == 0
    expected = read_results(inprocess)
    assert set(results) == set(expected) and set(results["variants"]) == set(expected["variants"]) == {"wo_rec_tuning"}
    for method, settings in expected["variants"].items():
        assert set(results["variants"][method]) == set(settings) == {"zero_shot", "k16_seed3"}
        for setting, metrics in settings.items():
            got = results["variants"][method][setting]
            assert set(got) == set(metrics) and got["counts"] == metrics["counts"]
            assert got["counts"]["records"] == SLICE["test_limit"]
            ours, theirs = launched / method / "eval" / setting, inprocess / method / "eval" / setting
            preds = read_predictions(ours)
            assert [(p["index"], p["label"]) for p in preds] == [(p["index"], p["label"])
                                                                 for p in read_predictions(theirs)]
            assert got["auc"] == pytest.approx(auc([p["label"] for p in preds], [p["p_yes"] for p in preds]))
            assert (read_metrics(ours)["settings"]["num_processes"],
                    read_metrics(theirs)["settings"]["num_processes"]) == (2, 1)


def test_failing_child_is_one_line_naming_the_phase_and_its_log(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "fail"
    missing = tmp_path / "no-such-model"
    missing.mkdir()  # a directory without a model: run_eval fails inside the launched child
    status = run_pipeline.main(["--run_dir", str(run_dir), "--data_dir", str(data_dir), "--max_windows", "300",
                                "--methods", "tallrec", "--k_shots", "16", "--base_model", str(missing),
                                "--launcher", "accelerate", "--num_processes", "1"])
    assert status == 1
    (line,) = [x for x in capsys.readouterr().err.strip().splitlines() if x.startswith("error:")]
    log = run_dir / "tallrec" / "eval" / "zero_shot" / "log.txt"
    assert "'tallrec: eval zero_shot' failed" in line and str(log) in line and log.is_file()
    assert not (run_dir / "tallrec" / "eval" / "zero_shot" / PHASE_DONE).exists()
    assert os.path.isfile(run_dir / "data" / "target" / PHASE_DONE)
