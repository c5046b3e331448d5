"""A result says exactly what produced it (issue 19): pipeline phases carry fingerprints of their settings and
inputs; a rerun with other settings redoes exactly the affected phases and what follows them, and its
results.json equals a fresh run's; `--on_change error` refuses instead."""

import logging
from pathlib import Path

from helpers import assert_one_line_error, read_results, run_entry

from tlrec_utils.experiments.pipeline import PHASE_DONE, PipelineConfig
from tlrec_utils.experiments.pipeline import run_pipeline as run


def base_config(run_dir, data_dir, base_model, **overrides):
    values = dict(
        run_dir=str(run_dir), data_dir=str(data_dir), base_model=str(base_model), max_windows=300,
        source_records=32, k_shots=[16], seeds=[3], kshot_epochs=1, methods=["tallrec", "wo_cot"],
        tuning={"learning_rate": 1e-3, "per_device_train_batch_size": 8, "max_length": 256},
        test_limit=20, eval={"metrics": "auc", "num_negatives": 5, "batch_size": 16},
    )  # fmt: skip
    values.update(overrides)
    return PipelineConfig(**values)


def numbers(results: dict, run_dir: Path) -> dict:
    """Every value of results.json's metrics by its path, the run's own directory and timings left out."""
    out = {}

    def walk(node, path):
        if isinstance(node, dict):
            for key, value in node.items():
                if key != "wall_time_s":
                    walk(value, f"{path}/{key}")
        else:
            out[path] = node.replace(str(run_dir), "RUN") if isinstance(node, str) else node

    walk(results["variants"], "")
    return out


def statuses(results: dict) -> dict:
    return {key: entry["status"] for key, entry in results["provenance"].items()}


ALL = ["data/source", "data/target", "tallrec/eval/zero_shot", "tallrec/k16_seed3", "tallrec/eval/k16_seed3",
       "wo_cot/source_tuning", "wo_cot/eval/zero_shot", "wo_cot/k16_seed3", "wo_cot/eval/k16_seed3"]


def test_each_kind_of_change_reruns_exactly_the_affected_phases(data_dir, pipeline_start, tmp_path, tiny_llama,
                                                                tiny_llama_sp, caplog):
    caplog.set_level(logging.INFO)
    run_dir = tmp_path / "run"
    first = run(base_config(run_dir, data_dir, tiny_llama))
    assert list(first["provenance"]) == ALL and set(statuses(first).values()) == {"run"}

    changes = [  # (what changes, the phases it must redo)
        ("kshot tuning", {"kshot_tuning": {"learning_rate": 5e-3}},
         {"tallrec/k16_seed3", "tallrec/eval/k16_seed3", "wo_cot/k16_seed3", "wo_cot/eval/k16_seed3"}),
        ("eval", {"eval": {"metrics": "auc,ndcg", "num_negatives": 5, "batch_size": 16}},
         {k for k in ALL if "/eval/" in k}),
        ("source data", {"source_prepare_args": ["--history_len", "5"]},
         {"data/source"} | {k for k in ALL if k.startswith("wo_cot/")}),
        ("base model", {"base_model": str(tiny_llama_sp)}, set(ALL) - {"data/source", "data/target"}),
    ]
    settings = {}
    for what, change, redo in changes:
        settings.update(change)
        caplog.clear()
        options = dict(settings)
        model = options.pop("base_model", tiny_llama)
        resumed = run(base_config(run_dir, data_dir, model, **options))
        got = statuses(resumed)
        assert {k for k, s in got.items() if s == "rerun"} == redo, what
        assert {k for k, s in got.items() if s == "reused"} == set(ALL) - redo, what
        reused_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reused ")]
        rerun_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("rerun ")]
        assert len(reused_lines) == 1 and len(rerun_lines) == 1, what
        assert all(k in rerun_lines[0] for k in redo)
        on_disk = read_results(run_dir)
        assert on_disk["provenance"] == resumed["provenance"] and on_disk["fingerprint"] == resumed["fingerprint"]
        # a fresh run (its data prepared once for all the tests: the source data change redoes that phase)
        fresh_dir = pipeline_start(tmp_path / f"fresh-{len(settings)}", "data/source", "data/target")
        fresh = run(base_config(fresh_dir, data_dir, model, **options))
        got, want = numbers(resumed, run_dir), numbers(fresh, fresh_dir)
        assert {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)} == {}, what
        assert fresh["fingerprint"] == resumed["fingerprint"], what  # the same settings: the same fingerprint
    final = read_results(run_dir)
    assert "ndcg@10" in final["variants"]["wo_cot"]["zero_shot"]  # the eval change reached every evaluation
    assert final["config"]["base_model"] == str(tiny_llama_sp)


def test_on_change_error_refuses_before_anything_runs(data_dir, pipeline_start, tmp_path, tiny_llama, capsys):
    """Case 1 of issue 19 (resume with --test_limit changed): refused with one line, exit 2, nothing rerun;
    with the default the eval phases rerun and results.json holds the new test_limit's metrics."""
    run_dir = pipeline_start(tmp_path / "r", "data/source", "data/target")
    common = ["--run_dir", str(run_dir), "--data_dir", str(data_dir), "--base_model", str(tiny_llama),
              "--methods", "tallrec", "--k_shots", "16", "--kshot_epochs", "1", "--max_windows", "300",
              "--tuning", "max_length=256", "--eval", "metrics=auc", "num_negatives=5"]
    cfg = run(base_config(run_dir, data_dir, tiny_llama, methods=["tallrec"], seeds=[0], tuning={"max_length": 256},
                          eval={"metrics": "auc", "num_negatives": 5}, source_records=None))
    assert cfg["variants"]["tallrec"]["zero_shot"]["counts"]["records"] == 20
    markers = {p: p.stat().st_mtime_ns for p in run_dir.rglob(PHASE_DONE)}
    proc = run_entry("run_pipeline", [*common, "--test_limit", "30", "--on_change", "error"], capsys)
    line = assert_one_line_error(proc, "--limit 20 -> 30", "tallrec/eval/")
    assert line.startswith("error: --on_change error:")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob(PHASE_DONE)} == markers
    again = run(base_config(run_dir, data_dir, tiny_llama, methods=["tallrec"], seeds=[0], test_limit=30,
                            tuning={"max_length": 256}, eval={"metrics": "auc", "num_negatives": 5},
                            source_records=None))
    for setting in ("zero_shot", "k16_seed0"):
        assert again["variants"]["tallrec"][setting]["counts"]["records"] == 30
    assert statuses(again)["tallrec/k16_seed0"] == "reused"
