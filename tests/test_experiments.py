"""The experiment grid: cells run, rerun skips finished cells, report written; SLURM array script."""

import csv
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import REPO, read_metrics, read_results, synthetic_records

import run_experiments
from tlrec_utils.errors import InputError, cli_entry
from tlrec_utils.experiments import cells as C
from tlrec_utils.experiments import command_line
from tlrec_utils.experiments import grid_config as G
from tlrec_utils.experiments import local as L


@pytest.fixture()
def grid_config(tmp_path):
    target, catalog = synthetic_records(n=300, seed=0)
    source, _ = synthetic_records(n=200, seed=1)
    data = tmp_path / "data"
    data.mkdir()
    for name, recs in [("train", target[:200]), ("valid", target[200:250]), ("test", target[250:]),
                       ("source_train", source)]:
        (data / f"{name}.json").write_text(json.dumps(recs))
    (data / "items.json").write_text(json.dumps(catalog))
    config = {
        "name": "tiny-grid",
        "output_dir": str(tmp_path / "grid"),
        "target": {k: str(data / f"{k}.json") for k in ("train", "valid", "test")}
        | {"items": str(data / "items.json")},
        "source": {"train": str(data / "source_train.json")},
        "settings": ["zero-shot", 16, 64],
        "seeds": [0, 1],
        "ours": "LogReg",
        "methods": [
            {"name": "LogReg", "baseline": "heuristic-logreg"},
            {"name": "Popularity", "baseline": "item-popularity"},
            {"name": "User share", "baseline": "user-like-share"},
        ],
        "ablations": [{"name": "Like-rate", "baseline": "item-like-rate"},
                      {"name": "Pop again", "same_as": "Popularity"}],
        # a setup step (run once before the cells): here a K-shot file, as a data preparation step would
        "setup": [{"script": "run_prepare_data.py", "args": {"k_shot": 16, "seed": 0, "output_dir": str(data)},
                   "creates": str(data / "train_k16_seed0.json")}],
        "slurm": {"partition": "gpu", "time": "02:00:00", "max_parallel": 4, "setup": ["module load cuda"]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, config


def test_grid_runs_every_cell_once_and_reports(grid_config, capsys):
    path, config = grid_config
    assert run_experiments.main(["--config", str(path)]) == 0
    cfg = G.load_config(path)
    cells = C.build_cells(cfg)
    assert len(cells) == (3 + 1) * 3 * 2
    for cell in cells:
        metrics = read_metrics(C.cell_dir(cfg, cell))
        assert metrics["settings"]["seed"] == cell.seed
        expected_k = None if cell.setting == "zero-shot" else int(cell.setting[1:])
        assert metrics["settings"]["k_shot"] == expected_k
        expected_train = config["source"]["train"] if expected_k is None else config["target"]["train"]
        assert metrics["settings"]["train_file"] == expected_train
    table = (tmp := (C.runs_dir(cfg).parent / "results")) / "table1.md"
    lines = table.read_text().splitlines()
    assert lines[0] == ("| Method | Zero-shot AUC | Zero-shot NDCG@10 | K=16 AUC | K=16 NDCG@10 "
                        "| K=64 AUC | K=64 NDCG@10 |")
    assert [line.split(" | ")[0] for line in lines[2:5]] == ["| LogReg", "| Popularity", "| User share"]
    # table1.csv holds each method's mean over the seeds of the cells' own metrics.json
    table_rows = {(r["method"], r["setting"], r["metric"]): r for r in csv.DictReader((tmp / "table1.csv").open())}
    for method in ("LogReg", "Popularity", "User share"):
        for setting in ("zero-shot", "k16", "k64"):
            aucs = [read_metrics(C.cell_dir(cfg, c))["auc"] for c in cells if (c.name, c.setting) == (method, setting)]
            row = table_rows[(method, setting, "auc")]
            assert len(aucs) == int(row["n"]) == 2 and float(row["mean"]) == pytest.approx(sum(aucs) / 2)
    from matplotlib import image

    figure = image.imread(tmp / "ablation.png")  # a real PNG that decodes, not an empty file
    assert figure.ndim == 3 and min(figure.shape[:2]) > 100 and figure.std() > 0
    assert not any("Pop_again" in c.path for c in cells)  # `same_as` reuses Popularity's cells
    assert "| LogReg |" in capsys.readouterr().out

    # rerun: nothing is recomputed
    setup_file = config["setup"][0]["creates"]
    mtimes = {c.path: os.stat(C.cell_dir(cfg, c) / "metrics.json").st_mtime_ns for c in cells}
    mtimes[setup_file] = os.stat(setup_file).st_mtime_ns
    assert run_experiments.main(["--config", str(path)]) == 0
    assert mtimes == {c.path: os.stat(C.cell_dir(cfg, c) / "metrics.json").st_mtime_ns for c in cells} | {
        setup_file: os.stat(setup_file).st_mtime_ns}


def test_k_shot_cells_pass_k_and_seed(grid_config):
    """A K-shot cell passes its K and its seed (the K-shot sample is drawn by seed inside the run)."""
    path, config = grid_config
    cfg = G.load_config(path)
    k16 = [c for c in C.build_cells(cfg) if c.setting == "k16" and c.name == "LogReg"]
    assert [c.seed for c in k16] == [0, 1]
    argv = C.cell_argv(cfg, k16[1])
    assert argv[argv.index("--k_shot") + 1] == "16" and argv[argv.index("--seed") + 1] == "1"


def test_slurm_array_over_unfinished_cells(grid_config, fake_sbatch):
    path, config = grid_config
    cfg = G.load_config(path)
    cells = C.build_cells(cfg)
    L.run_cell(cfg, cells[0])  # one cell already done: not part of the array
    assert run_experiments.main(["--config", str(path), "--launcher", "slurm"]) == 0
    script = C.runs_dir(cfg).parent.resolve() / "slurm" / "grid.sbatch"
    array_call, report_call = fake_sbatch.read_text().splitlines()  # the baseline array, then the report
    assert array_call.split() == ["--parsable", str(script)]
    assert report_call.split()[:2] == ["--parsable", "--dependency=afterany:1001"]
    text = script.read_text()
    assert f"#SBATCH --array=0-{len(cells) - 2}%4" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --time=02:00:00" in text and "module load cuda" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    listed = json.loads((script.parent / "cells.json").read_text())
    assert listed == [c.path for c in cells[1:]]
    # what array task 3 runs: the 4th unfinished cell
    assert "--cell_index \"$SLURM_ARRAY_TASK_ID\"" in text
    assert run_experiments.main(["--config", str(path), "--cells_file", str(script.parent / "cells.json"),
                                 "--cell_index", "3"]) == 0
    assert C.is_finished(cfg, cells[4]) and not C.is_finished(cfg, cells[3])


def test_slurm_without_sbatch_writes_the_script_and_says_so(grid_config, monkeypatch, tmp_path):
    path, config = grid_config
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="sbatch not found"):
        run_experiments.main(["--config", str(path), "--launcher", "slurm"])
    assert (C.runs_dir(G.load_config(path)).parent / "slurm" / "grid.sbatch").is_file()


def test_bad_config_is_input_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: x\nmethods: []\n")
    with pytest.raises(InputError, match="missing 'target'"):
        run_experiments.main(["--config", str(bad)])
    bad.write_text(yaml.safe_dump({"output_dir": "x", "target": {}, "settings": ["few"],
                                   "methods": [{"name": "a", "baseline": "sasrec"}]}))
    with pytest.raises(InputError, match="neither zero-shot nor a K"):
        run_experiments.main(["--config", str(bad)])


def test_pipeline_cells_one_run_with_flags_run_pipeline_accepts(grid_config):
    """TLRec and TALLRec come from one run_pipeline run_dir for all seeds (shared phases run once); an ablation
    and a backbone are runs of their own; the flags parse with run_pipeline's own parser."""
    import run_pipeline

    path, config = grid_config
    config = G.grid_config({**config, "pipeline": {"data_dir": "/data", "test_limit": 20},
              "pipeline_runs": {"main": {"methods": ["tlrec", "tallrec"], "tuning": {"learning_rate": 2e-4}},
                                "wo_curriculum": {"methods": ["wo_curriculum"]}},
              "methods": config["methods"][:1] + [{"name": "TLRec", "pipeline": "main", "variant": "tlrec"},
                                                  {"name": "TALLRec", "pipeline": "main", "variant": "tallrec"}],
              "ablations": [{"name": "w/o curriculum", "pipeline": "wo_curriculum", "variant": "wo_curriculum"}],
              "backbones": [{"name": "tiny-gpt2", "methods": ["TLRec"], "pipeline": {"base_model": "/models/gpt2"}}],
              "backbone_settings": [64]}, str(path))
    cells = C.build_cells(config)
    pipeline = [c for c in cells if c.script == "run_pipeline.py"]
    assert [(c.group, c.name, c.backbone, c.path) for c in pipeline] == [
        ("main", "pipeline-main", None, "main/pipeline-main"),
        ("ablation", "pipeline-wo_curriculum", None, "ablation/pipeline-wo_curriculum"),
        ("backbone", "pipeline-main", "tiny-gpt2", "backbone/tiny-gpt2/pipeline-main"),
    ]
    main = pipeline[0]
    # the zero-shot model does not depend on the K-shot seed: reported once
    assert {(o["method"], o["setting"], o["seed"]): o["metrics"] for o in main.outputs} == {
        (m, s, seed): f"{v}/eval/{d}/metrics.json"
        for m, v in (("TLRec", "tlrec"), ("TALLRec", "tallrec"))
        for s, seed, d in (("zero-shot", 0, "zero_shot"), ("k16", 0, "k16_seed0"), ("k16", 1, "k16_seed1"),
                           ("k64", 0, "k64_seed0"), ("k64", 1, "k64_seed1"))
    }
    parsed = run_pipeline.parse_args(C.cell_argv(config, main))
    assert (parsed.run_dir, parsed.seeds, parsed.k_shots) == (str(C.cell_dir(config, main)), [0, 1], [16, 64])
    assert parsed.methods == ["tlrec", "tallrec"] and parsed.data_dir == "/data" and parsed.test_limit == 20
    assert parsed.tuning == {"learning_rate": 2e-4}
    ablation = run_pipeline.parse_args(C.cell_argv(config, pipeline[1]))
    assert ablation.methods == ["wo_curriculum"]
    backbone = run_pipeline.parse_args(C.cell_argv(config, pipeline[2]))
    assert backbone.base_model == "/models/gpt2" and backbone.k_shots == [64]
    assert {o["method"] for o in pipeline[2].outputs} == {"TLRec"}


def test_sigterm_stops_the_grid_and_a_rerun_resumes(grid_config, tmp_path):
    """SIGTERM (SLURM preemption, a timeout) stops the whole grid with status 143, not just one cell; the
    rerun finishes the rest."""
    import signal
    import sys
    import time

    path, config = grid_config
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "run_experiments.py", "--config", str(path)], stdout=f, stderr=f,
                                cwd=REPO)
        cfg = G.load_config(path)
        cells = C.build_cells(cfg)
        deadline = time.time() + 60
        while not any(C.is_finished(cfg, c) for c in cells) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    done = sum(C.is_finished(cfg, c) for c in cells)
    assert status == 143 and 0 < done < len(cells), log.read_text()[-2000:]
    assert run_experiments.main(["--config", str(path)]) == 0
    assert all(C.is_finished(cfg, c) for c in cells)


def test_override_to_an_empty_list_reaches_run_pipeline_as_its_default():
    """`--override source_prepare_args=[]` (book_tiny.yaml's pipeline config sets it) and published records picked
    file by file: the pipeline cell's flags parse, the list is empty and the split files are the overridden ones."""
    import run_pipeline

    config = G.load_config(REPO / "configs/experiments/book_tiny.yaml", [
        "setup=[]", "source_prepare_args=[]",
        "source_files={train: amazon-book/valid.json, valid: amazon-book/test.json, test: amazon-book/test.json}"])
    cell = next(c for c in C.build_cells(config) if c.script == "run_pipeline.py")
    parsed = run_pipeline.parse_args(C.cell_argv(config, cell))
    assert parsed.source_prepare_args == [] and parsed.source_files["train"] == "amazon-book/valid.json"
    assert parsed.methods == ["tlrec", "tallrec", "wo_cot", "wo_curriculum", "wo_rec_tuning"]
    assert command_line.flags({"a": [], "b": [1, 2], "c": None}) == ["--b", "1", "2"]


def test_duplicate_method_names_and_seed_counts_are_config_errors(grid_config, tmp_path, capsys):
    """Issue 19 cases 2 and 7: two methods named alike would be averaged as seeds of one; `seeds: 3` meant a
    count in a grid and one seed in a pipeline config. Both are one line, exit 2, in every config."""
    path, config = grid_config
    cases = [
        ({**config, "methods": config["methods"] + [{"name": "LogReg", "baseline": "sasrec"}]},
         "methods: the name 'LogReg' is given twice"),
        ({**config, "seeds": 3}, "seeds: a list of seeds is needed, got the number 3; write [3] for seed 3 only, "
                                 "or [0, 1, 2] for 3 seeds"),
    ]
    for values, message in cases:
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(SystemExit) as exc:
            cli_entry(run_experiments.main)(["--config", str(path)])
        assert exc.value.code == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and message in line
    import run_pipeline

    pipeline_file = tmp_path / "pl.yaml"
    pipeline_file.write_text("seeds: 3\n")
    with pytest.raises(SystemExit) as exc:
        run_pipeline.main(["--config", str(pipeline_file), "--run_dir", str(tmp_path / "r")])
    assert exc.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"{pipeline_file}: seeds: a list of seeds is needed, got the number 3" in line
    assert not (tmp_path / "r").exists() and not Path(config["output_dir"]).exists()


def test_report_tables_only_the_cells_of_this_config(grid_config):
    """Issue 19 case 3: a rerun with fewer methods (even none) tables only what this config runs; the cells left
    on disk are listed as stale in results.json, never tabled; a cell whose settings changed is rerun."""
    path, config = grid_config
    config = {**config, "settings": ["zero-shot", 16], "seeds": [0], "ablations": [], "setup": []}
    path.write_text(yaml.safe_dump(config))
    assert run_experiments.main(["--config", str(path)]) == 0
    results = C.runs_dir(G.load_config(path)).parent / "results"
    assert {r["method"] for r in read_results(results)["rows"]} == {
        "LogReg", "Popularity", "User share"}

    path.write_text(yaml.safe_dump({**config, "methods": config["methods"][:1]}))
    assert run_experiments.main(["--config", str(path)]) == 0
    table = (results / "table1.md").read_text()
    assert "| LogReg |" in table and "Popularity" not in table and "User share" not in table
    report = read_results(results)
    assert {r["method"] for r in report["rows"]} == {"LogReg"}
    assert sorted(report["stale"]) == sorted(f"main/{m}/{s}/seed0 (not a cell of this config)"
                                             for m in ("Popularity", "User_share") for s in ("zero-shot", "k16"))
    test_file = config["target"]["test"]
    assert report["test_file"]["path"] == test_file and table.rstrip().endswith(
        f"Every row is scored on the test records of {test_file} ({report['test_file']['fingerprint']}).")

    # LogReg with other options: its old results are stale, the cell reruns
    changed = {**config, "methods": [{**config["methods"][0], "options": {"test_limit": 20}}]}
    path.write_text(yaml.safe_dump(changed))
    cfg = G.load_config(path)
    cells = C.build_cells(cfg)
    assert not any(C.is_finished(cfg, c) for c in cells)
    assert any("made from other settings" in s for s in C.stale_cells(cfg, cells))
    with pytest.raises(InputError, match="--on_change error: cell main/LogReg/zero-shot/seed0 holds results made"):
        run_experiments.main(["--config", str(path), "--on_change", "error"])
    assert run_experiments.main(["--config", str(path)]) == 0
    report = read_results(results)
    assert [r["metrics"]["counts"]["records"] for r in report["rows"]] == [20, 20]

    path.write_text(yaml.safe_dump({**config, "methods": []}))
    assert run_experiments.main(["--config", str(path)]) == 0
    assert not (results / "table1.md").exists() and read_results(results)["rows"] == []


def test_one_test_set_per_grid(grid_config, small_data_dir, tiny_llama, tmp_path):
    """Issue 19 case 4: a pipeline cell's prepared test set differs from the grid's `target:` files: the grid
    refuses with one line before running any cell; pointing `target:` at the same records reports it once."""
    path, config = grid_config
    config = {**config, "settings": ["zero-shot", 16], "seeds": [0], "ablations": [], "setup": [],
              "pipeline": {"data_dir": str(small_data_dir), "base_model": str(tiny_llama), "max_windows": 300},
              "pipeline_runs": {"main": {"methods": ["tallrec"]}},
              "methods": config["methods"][:1] + [{"name": "TALLRec", "pipeline": "main", "variant": "tallrec"}]}
    path.write_text(yaml.safe_dump(config))
    assert run_experiments.main(["--config", str(path), "--run_phase", "main/pipeline-main", "data/target"]) == 0
    with pytest.raises(InputError, match=r"target.test .* differs from .*pipeline-main/data/target/test.json"):
        run_experiments.main(["--config", str(path)])
    assert not (C.runs_dir(G.load_config(path)) / "main" / "LogReg").exists()  # nothing ran
    prepared = C.runs_dir(G.load_config(path)).resolve() / "main" / "pipeline-main" / "data" / "target"
    # the same records as published (prompt and answer only, in order) are the same test set; one changed is not
    records = json.loads((prepared / "test.json").read_text())
    published = [{k: r[k] for k in ("instruction", "input", "output")} for r in records]
    (tmp_path / "published.json").write_text(json.dumps(published))
    assert C.same_test_records(prepared / "test.json", tmp_path / "published.json")
    published[-1]["output"] = "No." if published[-1]["output"] == "Yes." else "Yes."
    (tmp_path / "changed.json").write_text(json.dumps(published))
    assert not C.same_test_records(prepared / "test.json", tmp_path / "changed.json")
    config["target"] = {split: str(prepared / f"{split}.json") for split in ("train", "valid", "test", "items")}
    path.write_text(yaml.safe_dump(config))
    assert run_experiments.main(["--config", str(path), "--report_only"]) == 0
    report = json.loads((C.runs_dir(G.load_config(path)).parent / "results" / "results.json").read_text())
    assert report["test_file"]["path"] == str(prepared / "test.json")
