"""The paper's GPU configs (configs/experiments/paper_*.yaml): each parses and dry-runs (every phase's command,
`accelerate launch` lines, a GPU-hours estimate, nothing written); the recipe values reach the phase commands;
one cell of paper_movie.yaml runs end to end on the CPU with the tiny LLaMA as base model (wiring, not numbers)."""

import json
import shlex
from pathlib import Path

import pytest

import run_experiments

REPO = Path(__file__).resolve().parent.parent
CONFIGS = ["paper_movie", "paper_book", "paper_backbones"]


def _last(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag][-1]


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_config_dry_run(name, data_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # another working directory: the file's paths are read from its folder
    output_dir = REPO / "runs" / "experiments" / name
    existed = output_dir.exists()
    assert run_experiments.main(["--config", str(REPO / f"configs/experiments/{name}.yaml"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert output_dir.exists() == existed and not list(tmp_path.iterdir())  # nothing written
    assert f"--output_dir {output_dir}/runs/" in out  # output_dir: ../../runs/... of the file
    if name != "paper_backbones":  # start_adapter: ../../models/... of paper_recipe.yaml, the file it names
        assert f"--init_adapter {REPO / 'models' / 'alpaca-lora-7B'} " in out
    phases = [line.split("]  ", 1) for line in out.splitlines() if line.startswith("  todo  [")]
    commands = {}
    for key, cmd in phases:  # the first cell's phases (backbones: the main rows)
        commands.setdefault(key.split("[", 1)[1], shlex.split(cmd))
    assert len(phases) >= 100
    assert all(c[:2] == ["accelerate", "launch"] for k, c in commands.items() if "eval/" in k or "_seed" in k)
    kshot = next(c for k, c in commands.items() if k.endswith("tlrec/k64_seed0"))
    # the authors' K-shot recipe (rec_tuning.py / few_shot.sh) overrides the CoT/source one (ins_tuning.py)
    assert (_last(kshot, "--learning_rate"), _last(kshot, "--num_train_epochs"), _last(kshot, "--max_length"),
            _last(kshot, "--k_shot")) == ("0.0001", "30.0", "256", "64")
    assert _last(kshot, "--per_device_train_batch_size") == "4"
    assert _last(kshot, "--gradient_accumulation_steps") == "32"
    assert _last(kshot, "--metric_for_best_model") == "loss" and _last(kshot, "--train_on_inputs") == "true"
    evals = [c for k, c in commands.items() if "/eval/" in k]
    assert evals and all(_last(c, "--score_fn") == "both" for c in evals)
    if name != "paper_backbones":
        cot = commands["tlrec/cot_tuning"]
        assert (_last(cot, "--learning_rate"), _last(cot, "--metric_for_best_model")) == ("0.0003", "auc")
        assert {"tallrec/k16_seed4", "wo_cot/k256_seed0", "wo_curriculum/cot_tuning",
                "wo_rec_tuning/k16_seed0"} <= set(commands)
    else:
        glm = [shlex.split(cmd) for key, cmd in phases if "ChatGLM-6B" in cmd and "run_tuning.py" in cmd]
        assert glm and all(_last(c, "--trust_remote_code") == "true" and _last(c, "--lora_target_modules") == "auto"
                           for c in glm)
    total = float(out.rsplit("->", 1)[1].split("GPU-hours")[0].replace(",", ""))
    assert total > 1


def test_override_without_value_is_input_error(monkeypatch):
    from tlrec_utils.errors import InputError

    monkeypatch.chdir(REPO)
    with pytest.raises(InputError, match="--override: expected KEY=VALUE, got 'seeds'"):
        run_experiments.main(["--config", "configs/experiments/paper_movie.yaml", "--dry_run", "--override", "seeds"])


def test_one_paper_movie_cell_end_to_end_on_cpu(data_dir, tiny_llama, tmp_path, monkeypatch):
    """The TLRec pipeline cell of paper_movie.yaml with the tiny LLaMA as base model and CPU-sized overrides: every
    phase of the authors' recipe (validation, best checkpoint, K-shot, both score functions) runs."""
    monkeypatch.chdir(REPO)
    out = tmp_path / "grid"
    overrides = [
        f"output_dir={out}", "setup=[]", "settings=[zero-shot, 16]", "seeds=[0]", "test_limit=40",
        "pipeline_runs.main.methods=[tlrec]", "methods=[{name: TLRec, pipeline: main, variant: tlrec}]", "ablations=[]",
        f"base_model={tiny_llama}", "start_adapter=null", "teacher=heuristic", "cot_max_users=40",
        "max_windows=400", "launcher=inprocess", "num_processes=null", "cot_epochs=1", "source_epochs=1",
        "source_records=64", "kshot_epochs=2", "cot_max_length=512",
        ("tuning={torch_dtype: float32, fp16: false, per_device_train_batch_size: 8, gradient_accumulation_steps: 1, "
         "max_val_records: 32}"),
        "cot_tuning={load_in_8bit: false}", "source_tuning={load_in_8bit: false}",
        "kshot_tuning={load_in_8bit: false, gradient_accumulation_steps: 1}", "eval={num_negatives: 10}",
    ]
    argv = ["--config", "configs/experiments/paper_movie.yaml", "--only", "pipeline-main"]
    for o in overrides:
        argv += ["--override", o]
    assert run_experiments.main(argv) == 0
    cell = out / "runs" / "main" / "pipeline-main"
    info = json.loads((cell / "cell.json").read_text())
    assert {o["setting"] for o in info["outputs"]} == {"zero-shot", "k16"}
    metrics = json.loads((cell / "tlrec" / "eval" / "k16_seed0" / "metrics.json").read_text())
    assert {"auc", "auc_authors", "ndcg@10", "ndcg@10_authors"} <= set(metrics)
    kshot_cmd = shlex.split((cell / "tlrec" / "k16_seed0" / "command.txt").read_text())
    assert _last(kshot_cmd, "--learning_rate") == "0.0001" and _last(kshot_cmd, "--max_length") == "256"
    assert "--val_file" in kshot_cmd and _last(kshot_cmd, "--metric_for_best_model") == "loss"
    assert (out / "results" / "table1.md").is_file()
