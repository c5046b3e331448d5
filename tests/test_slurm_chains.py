"""run_experiments.py --slurm: the grid as chains of dependent jobs, one per pipeline phase, through a fake
`sbatch` on PATH (tests/fake_sbatch: records its arguments, prints a job id)."""

import json
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

import run_experiments


@pytest.fixture(autouse=True)
def in_the_clone(monkeypatch):
    monkeypatch.chdir(REPO)  # the config named relative to the clone, as its users name it


def grid_argv(out):
    argv = ["--config", "configs/experiments/paper_movie.yaml", "--slurm"]
    for o in (f"output_dir={out}", "seeds=[0]", "settings=[zero-shot, 16]", "ablations=[]",
              "pipeline_runs.main.methods=[tlrec, tallrec]",
              ("methods=[{name: SASRec, baseline: sasrec}, {name: TALLRec, pipeline: main, variant: tallrec}, "
               "{name: TLRec, pipeline: main, variant: tlrec}]"),
              "setup=[]", "teacher=heuristic"):
        argv += ["--override", o]
    return argv


def calls(log):
    """[(job id, dependency ids, script)] in submission order."""
    out = []
    for n, line in enumerate(log.read_text().splitlines()):
        args = shlex.split(line)
        deps = [a.split(":", 1)[1].split(":") for a in args if a.startswith("--dependency=")]
        out.append((str(1001 + n), deps[0] if deps else [], Path(args[-1])))
    return out


def job_key(script: Path) -> str:
    text = script.read_text()
    if "--run_phase" in text:
        return shlex.split(text.strip().splitlines()[-1])[-1]
    return "report" if "--report_only" in text else "baselines"


def test_dependency_chains_shared_phases_once_and_resubmission(data_dir, fake_sbatch, tmp_path):
    out = tmp_path / "grid"
    assert run_experiments.main(grid_argv(out)) == 0
    submitted = calls(fake_sbatch)
    by_key = {job_key(script): (job_id, deps) for job_id, deps, script in submitted}
    # one job per phase: the shared phases (data, CoT, the source rec-tuning) once for both methods
    assert len(by_key) == len(submitted)
    assert {"data/source", "data/target", "cot", "tlrec/cot_tuning", "tlrec/source_tuning", "tlrec/k16_seed0",
            "tlrec/eval/k16_seed0", "tallrec/k16_seed0", "tallrec/eval/zero_shot", "baselines", "report"} <= set(by_key)
    ids = {key: job_id for key, (job_id, _) in by_key.items()}
    assert by_key["data/source"][1] == [] and by_key["baselines"][1] == []
    assert set(by_key["cot"][1]) == {ids["data/source"]}
    assert set(by_key["tlrec/cot_tuning"][1]) == {ids["data/source"], ids["data/target"], ids["cot"]}
    assert ids["tlrec/source_tuning"] in by_key["tlrec/k16_seed0"][1]
    assert by_key["tlrec/eval/k16_seed0"][1] == [ids["tlrec/k16_seed0"]]
    assert "--dependency=afterany:" in fake_sbatch.read_text().splitlines()[-1]  # the report waits for all
    assert set(by_key["report"][1]) == set(ids.values()) - {ids["report"]}
    for _, _, script in submitted:  # every rendered script is valid bash, requeues and forwards SIGTERM
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
        text = script.read_text()
        assert "#SBATCH --requeue" in text or "--array" in text
    phase_script = next(s for _, _, s in submitted if job_key(s) == "tlrec/k16_seed0").read_text()
    assert "source slurm/preemptible.sh" in phase_script and "run_preemptible python run_experiments.py" in phase_script
    command = shlex.split(phase_script.strip().splitlines()[-1])
    flags = [a for a in command if a.startswith("--")]
    assert len(flags) == len(set(flags)) and command.count("--override") == 1  # each flag once, every override
    assert json.loads((out / "slurm" / "submitted.json").read_text())["main/pipeline-main:cot"] == ids["cot"]

    # a job runs its phase (here the target data), then a rerun submits only what is left
    def job_command(key):
        return shlex.split(next(s for _, _, s in submitted if job_key(s) == key).read_text()
                           .strip().splitlines()[-1])[1:]

    command = job_command("data/target")
    assert command[:2] == ["python", "run_experiments.py"]
    assert run_experiments.main(command[2:]) == 0
    cell = out / "runs" / "main" / "pipeline-main"
    assert (cell / "data" / "target" / "phase_done.json").is_file()
    assert run_experiments.main(command[2:]) == 0  # a requeued job: the finished phase is skipped
    # the source data's job finishes too (a bare marker would not do: a finished phase carries its fingerprint)
    assert run_experiments.main(job_command("data/source")[2:]) == 0
    fake_sbatch.unlink()
    assert run_experiments.main(grid_argv(out)) == 0
    again = {job_key(script): deps for _, deps, script in calls(fake_sbatch)}
    assert set(again) == set(by_key) - {"data/source", "data/target"}
    assert again["cot"] == [] and set(again["tlrec/cot_tuning"]) == {"1001"}  # only the CoT job is left before it


def test_slurm_dry_run_writes_the_plan_and_submits_nothing(small_data_dir, fake_sbatch, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.setenv("TLREC_DATA_DIR", str(small_data_dir))  # a plan reads no data: files of the real layout do
    out = tmp_path / "grid"
    assert run_experiments.main(grid_argv(out) + ["--dry_run"]) == 0
    printed = capsys.readouterr().out
    assert not fake_sbatch.exists()
    scripts = sorted((out / "slurm" / "jobs").glob("*.sbatch"))
    assert len(scripts) >= 12 and f"{len(scripts) + 1} jobs written" in printed  # + the baseline array
    assert "job <3>  main/pipeline-main:tlrec/cot_tuning  after <0> <1> <2>" in printed
