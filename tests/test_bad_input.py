"""Bad input across the seven entry scripts, one table row each (issue 12 and the README's promises).

Every row asserts: the exit status (2 for a user's mistake), exactly one line on stderr naming the
flag/file/record and the problem, no traceback, and no new file or folder under any directory the run could
write to. Rows run in this process through the scripts' own `errors.cli_entry` guard (a row costs no
interpreter start and no torch import); one row per script (`SUBPROCESS_ROWS`) runs the real command line in
a subprocess. The data are written by the tests (MovieLens-100K's raw files in the published format, prepared
once for the module) and one tiny model serves all rows: the table needs no $TLREC_DATA_DIR.

A new row: (id, script, argv builder (ctx, row dir) -> argv, fragments of the one stderr line[, setup]).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from helpers import REPO, assert_one_line_error, free_port, run_entry, snapshot

SECRET = "sk-test-bad-input-0123456789abcdef"


# ---- shared inputs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ctx(tmp_path_factory, tiny_llama, synthetic, small_data_dir):
    """Prepared ml-100k (300 windows of the generated raw files), the tiny LLaMA, a LoRA adapter made for it,
    and a second tiny LLaMA of another size (the wrong base for that adapter)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset
    from tlrec_utils.model.tiny_llm import build_tiny_llama

    base = tmp_path_factory.mktemp("bad_input")
    prepared = base / "ml100k"
    prepare_dataset(PrepareConfig(dataset="ml-100k", raw_dir=str(small_data_dir / "ml-100k"),
                                  output_dir=str(prepared), max_windows=300))
    adapter = base / "adapter"
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    lora.save_pretrained(str(adapter))
    other = build_tiny_llama([synthetic[2]], base / "other_model", hidden_size=32, vocab_size=1000)
    return SimpleNamespace(base=base, prepared=prepared, model=Path(tiny_llama), adapter=adapter,
                           other_model=Path(other), data=small_data_dir)


def tree(*roots) -> set[str]:
    return set(snapshot(*roots))


def env(ctx, **extra):
    e = dict(os.environ, PYTHONWARNINGS="ignore", TLREC_LOG_LEVEL="WARNING", XDG_CACHE_HOME=str(ctx.base / "cache"),
             TLREC_DATA_DIR=str(ctx.data), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    e.pop("TLREC_DEBUG", None)
    e.update(extra)
    return e


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def records_with(ctx, n=3, **changes):
    """The first n prepared test records, record 1 changed."""
    records = json.loads((ctx.prepared / "test.json").read_text())[:n]
    records[1].update(changes)
    return records


def one_class_val(ctx, t):
    records = [r for r in json.loads((ctx.prepared / "valid.json").read_text()) if r["label"] == 1][:5]
    return write(t / "val.json", records)


def eval_args(ctx, t, *extra):
    return ["--base_model", str(ctx.model), "--test_file", str(ctx.prepared / "test.json"),
            "--output_dir", str(t / "out"), *extra]


def tune_args(ctx, t, *extra, train=None):
    return ["--base_model", str(ctx.model), "--train_files", str(train or ctx.prepared / "train.json"),
            "--output_dir", str(t / "out"), "--max_steps", "1", *extra]


def baseline_args(ctx, t, *extra):
    return ["--model", "item-popularity", "--train_file", str(ctx.prepared / "train.json"),
            "--test_file", str(ctx.prepared / "test.json"), "--output_dir", str(t / "out"), *extra]


def grid(ctx, t, **changes):
    config = {"output_dir": str(t / "grid"), "target": {"train": str(ctx.prepared / "train.json"),
                                                        "test": str(ctx.prepared / "test.json")},
              "settings": [16], "seeds": [0], "methods": [{"name": "Pop", "baseline": "item-popularity"}]}
    config.update(changes)
    return ["--config", str(write(t / "grid.yaml", yaml.safe_dump(config)))]


def mismatched_checkpoint(ctx, t):
    """A rerun into an output dir whose checkpoint was trained on another base model."""
    shutil.copytree(ctx.adapter, t / "out" / "checkpoint-1")
    return ["--base_model", str(ctx.other_model), *tune_args(ctx, t)[2:]]


def truncated_model(ctx, t):
    copy = t / "model"
    shutil.copytree(ctx.model, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def windows_csv(ctx, t):
    raw = t / "raw"
    write(raw / "item_mapping.csv", "movie_id,movie_name\n1,A (1990)\n2,B (1991)\n")
    header = "user_id,history_movie_id,history_rating,movie_id,rating,timestamp\n"
    write(raw / "train.csv", header + '1,"[1]","[1]",2,1,5\n2,"' + "x" * 200_000 + '","[1]",2,1,5\n')
    write(raw / "valid.csv", header)
    write(raw / "test.csv", header)
    return raw


QUICKSTART = REPO / "configs" / "experiments" / "quickstart.yaml"


def dry_grid(ctx, t, **changes):
    """A grid with a pipeline run (the quickstart's settings) and a baseline, checked with --dry_run."""
    config = {"output_dir": str(t / "grid"), "target": {"train": str(ctx.prepared / "train.json"),
                                                        "test": str(ctx.prepared / "test.json")},
              "source": {"train": str(ctx.prepared / "valid.json")}, "settings": ["zero-shot", 16], "seeds": [0],
              "pipeline": {"config": str(QUICKSTART)}, "pipeline_runs": {"main": {"methods": ["tlrec", "tallrec"]}},
              "methods": [{"name": "TLRec", "pipeline": "main", "variant": "tlrec"},
                          {"name": "Pop", "baseline": "item-popularity"}]}
    for key, value in changes.items():
        if key.startswith("pipeline."):
            config["pipeline"][key.split(".", 1)[1]] = value
        else:
            config[key] = value
    return ["--config", str(write(t / "grid.yaml", yaml.safe_dump(config))), "--dry_run"]


def pipeline_config(ctx, t, text: str, *extra):
    return ["--config", str(write(t / "p.yaml", text)), "--run_dir", str(t / "run"), *extra]


def finished_data_phase(ctx, t, marker: str | None, drop: str | None = None):
    """A run directory whose data/source phase is marked done: `marker` is phase_done.json's text, `drop` a file
    of the phase's output removed afterwards (deleted by hand)."""
    phase = t / "run" / "data" / "source"
    shutil.copytree(ctx.prepared, phase)
    write(phase / "phase_done.json", marker)
    if drop:
        (phase / drop).unlink()
    return ["--run_dir", str(t / "run"), "--methods", "tallrec", "--k_shots", "16"]


def authors_cot_file(ctx, t):
    """The TLRec authors' stage123.json format, its first instruction not one of the three stages'."""
    record = {"instruction": "Explain the user's taste in three steps.", "input": "",
              "output": "The user likes dramas from the nineties, so they would enjoy more of them."}
    return tune_args(ctx, t, train=write(t / "stage123.json", [record, record]))


def interaction_tables(t: Path) -> dict[str, Path]:
    """Small tables for --dataset interactions and amazon-2023 rows: good ones and one bad one each."""
    files = {
        "ratings.csv": "user_id,item_id,stars,when\nu1,b1,5,2020-01-01\nu1,b2,1,2020-01-02\nu2,b1,4,2020-01-03\n",
        "headerless.tsv": "u1\tb1\t5\t1\nu1\tb2\t1\t2\n",
        "bad_time.csv": "user_id,item_id,stars,when\nu1,b1,5,yesterday\nu1,b2,1,2020-01-02\nu2,b1,4,2020-01-03\n",
        "items.csv": "item_id,title\nb1,Dune\nb2,\n",
        "items_ok.csv": "item_id,title\nb1,Dune\nb2,Emma\n",
    }
    for name, text in files.items():
        write(t / name, text)
    # Amazon Reviews 2023 file names holding the 2018 release's schema (reviewerID, asin, overall, unixReviewTime)
    write(t / "amazon" / "Books.jsonl", json.dumps({"reviewerID": "A1", "asin": "B1", "overall": 5.0,
                                                    "unixReviewTime": 1}) + "\n")
    write(t / "amazon" / "meta_Books.jsonl", json.dumps({"parent_asin": "B1", "title": "A Book"}) + "\n")
    return {**{n: t / n for n in files}, "amazon": t / "amazon"}


def interactions_args(t, ratings="ratings.csv", items="items_ok.csv", *extra):
    files = interaction_tables(t)
    return ["--dataset", "interactions", "--interactions_file", files[ratings], "--items_file", files[items],
            "--rating_column", "stars", "--like_threshold", "3", "--timestamp_column", "when", "--history_len", "1",
            "--output_dir", t / "out", *extra]


def no_accelerate_on_path(monkeypatch, t):
    (t / "bin").mkdir()
    monkeypatch.setenv("PATH", str(t / "bin"))


# ---- the table ---------------------------------------------------------------------------------------------
# (id, script, argv builder (ctx, row dir) -> argv, fragments of the one stderr line[, setup(monkeypatch, dir)]).
# Exit status 2.

ROWS = [
    # 1. comma lists: stripped; an unknown entry is named
    ("eval-metrics-unknown", "run_eval", lambda c, t: eval_args(c, t, "--metrics", "auc, recall"),
     ["--metrics", "unknown recall"]),
    # 2. numeric ranges
    ("eval-limit-negative", "run_eval", lambda c, t: eval_args(c, t, "--limit", "-5"),
     ["--limit must be >= 1, got -5"]),
    ("eval-num-negatives-0", "run_eval", lambda c, t: eval_args(c, t, "--num_negatives", "0"), ["--num_negatives"]),
    ("eval-batch-size-0", "run_eval", lambda c, t: eval_args(c, t, "--batch_size", "0"), ["--batch_size"]),
    ("eval-ndcg-k-0", "run_eval", lambda c, t: eval_args(c, t, "--ndcg_k", "0"), ["--ndcg_k"]),
    ("eval-max-new-tokens-0", "run_eval", lambda c, t: eval_args(c, t, "--max_new_tokens", "0"),
     ["--max_new_tokens"]),
    ("eval-limit-not-int", "run_eval", lambda c, t: eval_args(c, t, "--limit", "x"), ["--limit", "invalid int"]),
    ("baselines-num-negatives-0", "run_baselines", lambda c, t: baseline_args(c, t, "--num_negatives", "0"),
     ["--num_negatives must be >= 1"]),
    ("baselines-dim-0", "run_baselines", lambda c, t: baseline_args(c, t, "--dim", "0"), ["--dim must be >= 1"]),
    ("baselines-unknown-model", "run_baselines",
     lambda c, t: ["--model", "nope", *baseline_args(c, t)[2:]], ["--model", "unknown baseline 'nope'"]),
    ("prepare-history-len-0", "run_prepare_data",
     lambda c, t: ["--dataset", "ml-100k", "--raw_dir", str(c.data / "ml-100k"), "--output_dir", str(t / "out"),
                   "--history_len", "0"], ["--history_len"]),
    ("tuning-lora-r-0", "run_tuning", lambda c, t: tune_args(c, t, "--lora_r", "0"), ["--lora_r must be >= 1"]),
    ("cot-concurrency-0", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--teacher", "heuristic",
                   "--concurrency", "0"], ["--concurrency"]),
    ("pipeline-max-windows-negative", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--max_windows", "-1"], ["--max_windows must be >= 0"]),
    ("eval-device-cuda", "run_eval", lambda c, t: eval_args(c, t, "--device", "cuda"), ["--device cuda", "no CUDA"]),
    # 3. run_experiments config: unknown keys, types, baselines, all up front
    ("grid-unknown-key", "run_experiments", lambda c, t: grid(c, t, seedz=1), ["grid.yaml", "unknown key 'seedz'"]),
    ("grid-seeds-abc", "run_experiments", lambda c, t: grid(c, t, seeds="abc"), ["grid.yaml", "seeds", "'abc'"]),
    ("grid-unknown-baseline", "run_experiments",
     lambda c, t: grid(c, t, methods=[{"name": "X", "baseline": "sasrecc"}]), ["grid.yaml", "unknown baseline"]),
    ("grid-pipeline-typo", "run_experiments",
     lambda c, t: grid(c, t, pipeline={"kshot_epoch": 2}), ["grid.yaml", "pipeline", "kshot_epoch"]),
    ("grid-non-utf8", "run_experiments",
     lambda c, t: ["--config", str(write(t / "grid.yaml", b"output_dir: \xff\xfe\n"))], ["grid.yaml", "not UTF-8"]),
    ("grid-output-dir-is-file", "run_experiments",
     lambda c, t: grid(c, t, output_dir=str(write(t / "taken", "x"))), ["output_dir", "not a directory"]),
    # 4. CoT generation that obtains nothing, or is refused (the 401 row runs against a live stub: see below)
    ("cot-connection-refused", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--model", "m",
                   "--base_url", f"http://127.0.0.1:{free_port()}/v1", "--max_users", "2", "--max_retries", "0",
                   "--ensure_target", "--no-progress"], ["--base_url", "cannot connect", "server is running"]),
    ("cot-no-key", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--no-progress"],
     ["OPENAI_API_KEY is not set"]),
    # 6. an output path that is a file, under a file, or empty
    ("prepare-output-is-file", "run_prepare_data",
     lambda c, t: ["--dataset", "ml-100k", "--raw_dir", str(c.data / "ml-100k"), "--output_dir",
                   str(write(t / "out", "x"))], ["--output_dir", "not a directory"]),
    ("eval-output-is-file", "run_eval",
     lambda c, t: eval_args(c, t)[:-1] + [str(write(t / "out", "x"))], ["--output_dir", "not a directory"]),
    ("tuning-output-is-file", "run_tuning",
     lambda c, t: (write(t / "out", "x"), tune_args(c, t))[1], ["--output_dir", "not a directory"]),
    ("cot-output-is-file", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(write(t / "out", "x")), "--teacher",
                   "heuristic"], ["--output_dir", "not a directory"]),
    ("pipeline-run-dir-is-file", "run_pipeline",
     lambda c, t: ["--run_dir", str(write(t / "run", "x"))], ["--run_dir", "not a directory"]),
    ("baselines-output-is-file", "run_baselines",
     lambda c, t: baseline_args(c, t)[:-1] + [str(write(t / "out", "x"))], ["--output_dir", "not a directory"]),
    ("eval-output-under-a-file", "run_eval",
     lambda c, t: eval_args(c, t)[:-1] + [str(write(t / "f", "x") / "sub" / "out")], ["--output_dir", "is a file"]),
    ("prepare-output-empty", "run_prepare_data",
     lambda c, t: ["--dataset", "ml-100k", "--raw_dir", str(c.data / "ml-100k"), "--output_dir", ""],
     ["--output_dir: empty path"]),
    ("eval-output-empty", "run_eval", lambda c, t: eval_args(c, t)[:-1] + [""], ["--output_dir: empty path"]),
    ("tuning-output-empty", "run_tuning", lambda c, t: tune_args(c, t)[:4] + ["--output_dir", ""],
     ["--output_dir: empty path"]),
    ("pipeline-run-dir-empty", "run_pipeline", lambda c, t: ["--run_dir", ""], ["--run_dir: empty path"]),
    # 7. an adapter / --init_adapter / checkpoint made for another base model
    ("eval-adapter-other-base", "run_eval",
     lambda c, t: ["--base_model", str(c.other_model), "--adapter", str(c.adapter),
                   *eval_args(c, t, "--metrics", "auc")[2:]],
     ["--adapter", "made for base model", "not for --base_model", "other_model"]),
    ("tuning-init-adapter-other-base", "run_tuning",
     lambda c, t: ["--base_model", str(c.other_model), *tune_args(c, t, "--init_adapter", str(c.adapter))[2:]],
     ["--init_adapter", "made for base model", "other_model"]),
    ("tuning-checkpoint-other-base", "run_tuning", mismatched_checkpoint,
     ["checkpoint", "checkpoint-1", "made for base model", "other_model"]),
    ("eval-adapter-not-adapter", "run_eval",
     lambda c, t: eval_args(c, t, "--adapter", str(c.prepared)), ["--adapter", "no adapter_config.json"]),
    # 8. config files of run_tuning / run_eval / run_pipeline
    ("eval-config-yaml-list", "run_eval", lambda c, t: [str(write(t / "c.yaml", "- a\n- b\n"))],
     ["c.yaml", "expected a mapping"]),
    ("eval-config-empty", "run_eval", lambda c, t: [str(write(t / "c.yaml", ""))],
     ["c.yaml", "missing required setting(s) base_model"]),
    ("tuning-config-syntax-error", "run_tuning", lambda c, t: [str(write(t / "c.yaml", "a: [1\n"))],
     ["c.yaml", "not valid YAML"]),
    ("tuning-config-unknown-key", "run_tuning",
     lambda c, t: [str(write(t / "c.json", {"base_model": str(c.model), "train_files": ["x"], "lora_rr": 2}))],
     ["c.json", "unknown setting(s) lora_rr"]),
    ("eval-config-wrong-type", "run_eval",
     lambda c, t: [str(write(t / "c.json", {"base_model": str(c.model), "test_file": "t", "output_dir": "o",
                                            "num_negatives": "many"}))], ["c.json", "num_negatives", "'many'"]),
    ("pipeline-config-non-utf8", "run_pipeline",
     lambda c, t: ["--config", str(write(t / "p.yaml", b"teacher: \xff\n")), "--run_dir", str(t / "run")],
     ["p.yaml", "not UTF-8"]),
    ("pipeline-config-seeds-abc", "run_pipeline",
     lambda c, t: ["--config", str(write(t / "p.yaml", "seeds: abc\n")), "--run_dir", str(t / "run")],
     ["p.yaml", "seeds", "'abc'"]),
    ("pipeline-config-missing", "run_pipeline",
     lambda c, t: ["--config", str(t / "none.yaml"), "--run_dir", str(t / "run")], ["none.yaml", "not found"]),
    # 9. record fields of the wrong type
    ("eval-label-abc", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(write(t / "t.json", records_with(c, label="abc")))] + eval_args(c, t)[4:],
     ["t.json record 1", "label 'abc'"]),
    ("eval-label-nan", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(write(t / "t.json", json.dumps(records_with(c, label=float("nan")))))]
     + eval_args(c, t)[4:], ["t.json record 1", "label nan"]),
    ("eval-history-string", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(write(t / "t.json", records_with(c, history="x")))] + eval_args(c, t)[4:],
     ["t.json record 1", "history must be a list"]),
    ("tuning-history-item-without-title", "run_tuning",
     lambda c, t: tune_args(c, t, train=write(t / "tr.json",
                                              records_with(c, history=[{"item_id": "1", "liked": True}]))),
     ["tr.json record 1", "history item 0", "title"]),
    ("eval-output-not-yes-no", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(write(t / "t.json", records_with(c, output="Maybe.")))]
     + eval_args(c, t)[4:], ["t.json record 1", "'Maybe.'"]),
    ("eval-test-file-missing", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(t / "missing.json")] + eval_args(c, t)[4:],
     ["--test_file", "missing.json", "file not found"]),
    ("eval-test-file-not-json", "run_eval",
     lambda c, t: eval_args(c, t)[:3] + [str(write(t / "t.json", "[{"))] + eval_args(c, t)[4:],
     ["t.json line 1", "not valid JSON"]),
    # 11. files that cannot be read, a missing GPU, csv fields over the limit
    ("eval-items-file-not-utf8", "run_eval",
     lambda c, t: eval_args(c, t, "--items_file", str(write(t / "items.json", b'{"1": "\xff"}'))),
     ["items.json", "not UTF-8"]),
    ("eval-truncated-safetensors", "run_eval",
     lambda c, t: ["--base_model", str(truncated_model(c, t)), *eval_args(c, t)[2:]],
     ["model.safetensors", "truncated"]),
    ("prepare-windows-csv-huge-field", "run_prepare_data",
     lambda c, t: ["--dataset", "windows-csv", "--raw_dir", str(windows_csv(c, t)), "--output_dir", str(t / "out")],
     ["train.csv line", "field larger than field limit"]),
    # 13. messages that used to mislead
    ("eval-catalog-too-small-no-items-file", "run_eval",
     lambda c, t: eval_args(c, t, "--num_negatives", "100000"),
     ["test.json record", "items seen in the test file (no --items_file)", "--num_negatives 100000"]),
    ("eval-items-file-too-small", "run_eval",
     lambda c, t: eval_args(c, t, "--items_file", str(write(t / "items.json", {"1": "A", "2": "B"}))),
     ["test.json record", "--items_file", "items.json has 2 items", "--num_negatives 50"]),
    ("tuning-max-length-too-small", "run_tuning", lambda c, t: tune_args(c, t, "--max_length", "8"),
     ["raise --max_length to at least"]),
    ("pipeline-data-dir-missing", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--data_dir", str(t / "nodata")],
     ["--data_dir", "nodata", "not found"]),
    ("tuning-one-class-val-auc", "run_tuning",
     lambda c, t: tune_args(c, t, "--val_file", str(one_class_val(c, t)), "--metric_for_best_model", "auc"),
     ["--val_file", "val.json", "all 5 validation records are Yes", "AUC needs both classes"]),
    # promised by the README before issue 12
    # --dataset interactions and amazon-2023: columns, schema, noun (issue 24)
    ("prepare-interactions-wrong-column", "run_prepare_data",
     lambda c, t: interactions_args(t, "ratings.csv", "items_ok.csv", "--user_column", "usr"),
     ["--user_column 'usr'", "ratings.csv has no such column (its columns: user_id, item_id, stars, when)"]),
    ("prepare-interactions-file-without-the-named-columns", "run_prepare_data",
     lambda c, t: interactions_args(t, "headerless.tsv"),
     ["--user_column 'user_id'", "headerless.tsv has no such column", "needs --interactions_names"]),
    ("prepare-interactions-unparsable-timestamps", "run_prepare_data",
     lambda c, t: interactions_args(t, "bad_time.csv"),
     ["bad_time.csv row 1: timestamp 'yesterday' (column 'when') is not a number or a date"]),
    ("prepare-interactions-items-without-titles", "run_prepare_data",
     lambda c, t: interactions_args(t, "ratings.csv", "items.csv"),
     ["items.csv row 2: item 'b2' has no title (column 'title')"]),
    ("prepare-interactions-rating-without-threshold", "run_prepare_data",
     lambda c, t: [a for a in interactions_args(t) if a not in ("--like_threshold", "3")],
     ["--like_threshold is required with --rating_column"]),
    ("prepare-unknown-item-noun", "run_prepare_data",
     lambda c, t: interactions_args(t, "ratings.csv", "items_ok.csv", "--item_kind", "moive"),
     ["--item_kind 'moive': unknown item kind", "NOUN/PLURAL/VERB"]),
    ("prepare-amazon-2023-without-category", "run_prepare_data",
     lambda c, t: ["--dataset", "amazon-2023", "--raw_dir", interaction_tables(t)["amazon"], "--output_dir", t / "out"],
     ["--category is required for --dataset amazon-2023"]),
    ("prepare-amazon-2023-other-schema", "run_prepare_data",
     lambda c, t: ["--dataset", "amazon-2023", "--raw_dir", interaction_tables(t)["amazon"], "--category", "Books",
                   "--output_dir", t / "out"],
     ["column 'user_id'", "Books.jsonl has no such column (its columns: reviewerID, asin, overall, unixReviewTime)"]),
    ("cot-unknown-item-noun", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--teacher", "heuristic",
                   "--kind", "game/"], ["--kind 'game/'", "non-empty words"]),
    ("pipeline-unknown-item-noun", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--item_kind", "a/b/c/d"],
     ["--item_kind 'a/b/c/d': unknown item kind"]),
    # several sources at once (issue 24): each entry's keys, name, dataset, wording, share; one way to give sources
    ("pipeline-sources-unknown-key", "run_pipeline",
     lambda c, t: ["--config", str(write(t / "p.yaml", "source_datasets: [{name: a, dataset: ml-100k, recordz: 5}]")),
                   "--run_dir", str(t / "run")], ["p.yaml: source_datasets[0]: unknown key 'recordz'"]),
    ("pipeline-sources-name-twice", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "{name: a, dataset: ml-100k}",
                   "{name: a, dataset: windows-csv}"], ["--source_datasets[1] (a): the name 'a' is given twice"]),
    ("pipeline-sources-without-name", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "{dataset: windows-csv}"],
     ["--source_datasets[0]: missing 'name'"]),
    ("pipeline-sources-name-not-a-folder", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "{name: a/b, dataset: windows-csv}"],
     ["--source_datasets[0] (a/b): name 'a/b'", "names folders"]),
    ("pipeline-sources-without-dataset", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "{name: a}"],
     ["--source_datasets[0] (a): give its dataset"]),
    ("pipeline-sources-unknown-noun", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets",
                   '{name: a, dataset: windows-csv, item_kind: "game/"}'],
     ["--source_datasets[0] (a): item_kind 'game/'", "non-empty words"]),
    ("pipeline-sources-share-0", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "{name: a, dataset: windows-csv, records: 0}"],
     ["--source_datasets[0] (a): records must be >= 1, got 0"]),
    ("pipeline-sources-and-single-source", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_subdir", "x", "--source_datasets",
                   "{name: a, dataset: windows-csv}"], ["--source_datasets and --source_subdir"]),
    ("pipeline-sources-not-a-mapping", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--source_datasets", "netflix"],
     ["--source_datasets: expected one YAML/JSON mapping a value", "got 'netflix'"]),
    ("pipeline-sources-published-teacher-without-cot-file", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--teacher", "published", "--source_datasets",
                   "{name: a, dataset: windows-csv}"], ["--source_datasets[0] (a)", "give this source its cot_file"]),
    ("prepare-unknown-dataset", "run_prepare_data",
     lambda c, t: ["--dataset", "nope", "--raw_dir", str(t), "--output_dir", str(t / "out")], ["--dataset", "nope"]),
    ("prepare-k-larger-than-pool", "run_prepare_data",
     lambda c, t: ["--output_dir", str(c.prepared), "--k_shot", "100000"], ["train.json", "K=100000", "larger"]),
    ("tuning-train-file-missing", "run_tuning", lambda c, t: tune_args(c, t, train=t / "nope.json"),
     ["--train_files", "nope.json", "file not found"]),
    ("tuning-unknown-flag", "run_tuning", lambda c, t: tune_args(c, t, "--lora_rank", "4"),
     ["unrecognized arguments: --lora_rank 4"]),
    ("eval-base-model-missing", "run_eval", lambda c, t: ["--base_model", str(t / "nomodel"), *eval_args(c, t)[2:]],
     ["--base_model", "nomodel", "directory not found"]),
    # issue 21: timeouts must be positive; a failed download leaves no folder in the data directory
    ("cot-request-timeout-0", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--request_timeout", "0"],
     ["--request_timeout must be > 0, got 0"]),
    ("prepare-download-stall-0", "run_prepare_data",
     lambda c, t: ["--dataset", "windows-csv", "--data_dir", str(t / "data"), "--output_dir", str(t / "out"),
                   "--download", "--download_stall_s", "0"],
     ["--download_stall_s must be a positive number of seconds, got 0"]),
    ("prepare-download-deadline-negative", "run_prepare_data",
     lambda c, t: ["--dataset", "windows-csv", "--data_dir", str(t / "data"), "--output_dir", str(t / "out"),
                   "--download", "--download_deadline_s", "-5"],
     ["--download_deadline_s must be a positive number of seconds, got -5"]),
    ("prepare-download-offline-no-empty-folder", "run_prepare_data",
     lambda c, t: ["--dataset", "windows-csv", "--data_dir", str(t / "data"), "--output_dir", str(t / "out"),
                   "--download", "--mirror", f"http://127.0.0.1:{free_port()}"],
     ["train.csv: cannot download", "download it by hand to"]),
    # issue 21: every mistake caught before any work; the configs `run_experiments.py --dry_run` accepted while
    # the real run rejected them
    ("dry-tuning-learning-rate-fast", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.tuning": {"learning_rate": "fast"}}),
     ["grid.yaml: pipeline.tuning.learning_rate: expected a number, got 'fast'"]),
    ("dry-eval-num-negatives-negative", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.eval": {"num_negatives": -3}}),
     ["grid.yaml: pipeline.eval.num_negatives must be >= 1, got -3"]),
    ("dry-eval-metrics-unknown", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.eval": {"metrics": "auc,foo"}}),
     ["grid.yaml: pipeline.eval.metrics: unknown foo (choose from auc, ndcg)"]),
    ("dry-tuning-unknown-key", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.tuning": {"lora_rank": 4}}),
     ["grid.yaml: pipeline.tuning.lora_rank: not a run_tuning.py setting"]),
    ("dry-tuning-args-unknown-flag", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.tuning_args": ["--lora_rank", "4"]}),
     ["grid.yaml: pipeline.tuning_args: unrecognized arguments --lora_rank 4"]),
    ("dry-kshot-tuning-learning-rate-fast", "run_experiments",
     lambda c, t: dry_grid(c, t, pipeline_runs={"main": {"methods": ["tlrec", "tallrec"],
                                                         "kshot_tuning": {"learning_rate": "fast"}}}),
     ["grid.yaml: pipeline_runs.main.kshot_tuning.learning_rate: expected a number, got 'fast'"]),
    ("dry-variant-not-in-the-run", "run_experiments",
     lambda c, t: dry_grid(c, t, methods=[{"name": "w/o CoT", "pipeline": "main", "variant": "wo_cot"}]),
     ["grid.yaml: method 'w/o CoT': variant 'wo_cot' is not a method of pipeline run 'main'",
      "add it to pipeline_runs.main.methods"]),
    ("dry-variant-unknown", "run_experiments",
     lambda c, t: dry_grid(c, t, methods=[{"name": "X", "pipeline": "main", "variant": "tlrecc"}]),
     ["grid.yaml: methods: method 'X': unknown variant 'tlrecc'"]),
    ("dry-seeds-negative", "run_experiments", lambda c, t: dry_grid(c, t, seeds=[-1]),
     ["grid.yaml: seeds must be >= 0", "got -1"]),
    ("dry-source-files-number", "run_experiments",
     lambda c, t: dry_grid(c, t, **{"pipeline.source_files": {"train": 5, "valid": "v.json", "test": "t.json"}}),
     ["grid.yaml: pipeline.source_files.train: expected a file path", "got 5"]),
    ("dry-settings-k0", "run_experiments", lambda c, t: dry_grid(c, t, settings=["zero-shot", "k0"]),
     ["grid.yaml: settings: 'k0': K must be >= 1, got 0", "zero-shot"]),
    ("dry-setup-script-missing", "run_experiments",
     lambda c, t: dry_grid(c, t, setup=[{"script": "run_prepare.py", "creates": str(t / "x")}]),
     ["grid.yaml: setup entry 0: script 'run_prepare.py' not found", "run_prepare_data.py"]),
    ("dry-setup-args-unknown", "run_experiments",
     lambda c, t: dry_grid(c, t, setup=[{"script": "run_prepare_data.py", "args": {"datasett": "ml-100k"},
                                         "creates": str(t / "x")}]),
     ["grid.yaml: setup entry 0: args: unknown setting(s) datasett (did you mean dataset?)"]),
    ("dry-baseline-options", "run_experiments",
     lambda c, t: dry_grid(c, t, methods=[{"name": "SASRec", "baseline": "sasrec", "options": {"epochs": 0}}]),
     ["grid.yaml: methods: 'SASRec': options.epochs must be >= 1, got 0"]),
    ("dry-nested-pipeline-config", "run_experiments",
     lambda c, t: dry_grid(c, t, pipeline={"config": str(write(t / "recipe.yaml", "tuning: {warmup_steps: -2}\n"))}),
     ["recipe.yaml: tuning.warmup_steps must be >= 0, got -2"]),
    # internal errors (exit 1) that are the user's mistakes
    ("prepare-download-data-dir-is-file", "run_prepare_data",
     lambda c, t: ["--dataset", "ml-100k", "--download", "--data_dir", str(write(t / "data", "x")),
                   "--output_dir", str(t / "out")], ["--data_dir", "data: exists and is not a directory"]),
    ("pipeline-download-data-dir-is-file", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--download", "--data_dir", str(write(t / "data", "x"))],
     ["--data_dir", "is a file, not a directory"]),
    ("cot-max-retries-negative", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--teacher", "heuristic",
                   "--max_retries", "-1"], ["--max_retries must be >= 0, got -1"]),
    ("cot-batch-file-over-the-api-limit", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--mode", "batch",
                   "--batch_file_requests", "50001"], ["--batch_file_requests must be >= 1 and <= 50000, got 50001"]),
    ("cot-batch-mode-heuristic", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--teacher", "heuristic",
                   "--mode", "files"], ["--mode files: the heuristic teacher is asked live only"]),
    ("pipeline-phase-done-empty", "run_pipeline", lambda c, t: finished_data_phase(c, t, ""),
     ["data/source/phase_done.json: unreadable (empty)", "delete", "rerun"]),
    ("pipeline-phase-done-corrupt", "run_pipeline", lambda c, t: finished_data_phase(c, t, '{"phase": "prep'),
     ["data/source/phase_done.json: unreadable", "delete", "rerun"]),
    ("pipeline-phase-files-deleted", "run_pipeline",
     lambda c, t: finished_data_phase(c, t, '{"phase": "prepare source"}', drop="train.json"),
     ["phase_done.json: the phase is marked complete but train.json is gone", "the phase is incomplete",
      "rerun to run phase 'prepare source' again"]),
    ("pipeline-seeds-negative", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--seeds", "-1", "--methods", "tallrec"],
     ["--seeds must be >= 0", "got -1"]),
    ("tuning-seed-negative", "run_tuning", lambda c, t: tune_args(c, t, "--seed", "-1"), ["--seed must be >= 0"]),
    ("eval-seed-negative", "run_eval", lambda c, t: eval_args(c, t, "--seed", "-1"), ["--seed must be >= 0"]),
    ("pipeline-config-source-files-number", "run_pipeline",
     lambda c, t: pipeline_config(c, t, "source_files: {train: 5, valid: v.json, test: t.json}\n"),
     ["p.yaml: source_files.train: expected a file path", "got 5"]),
    ("pipeline-config-tuning-learning-rate", "run_pipeline",
     lambda c, t: pipeline_config(c, t, "tuning: {learning_rate: fast}\n"),
     ["p.yaml: tuning.learning_rate: expected a number, got 'fast'"]),
    ("pipeline-tuning-flag-num-negatives", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--eval", "num_negatives=-3"],
     ["--eval.num_negatives must be >= 1, got -3"]),
    ("pipeline-accelerate-not-on-path", "run_pipeline",
     lambda c, t: ["--run_dir", str(t / "run"), "--launcher", "accelerate", "--methods", "tallrec"],
     ["--launcher accelerate", "`accelerate` command is not on PATH"], no_accelerate_on_path),
    ("eval-config-num-negatives", "run_eval",
     lambda c, t: [str(write(t / "c.yaml", yaml.safe_dump({"base_model": str(c.model), "num_negatives": -3,
                                                           "test_file": str(c.prepared / "test.json"),
                                                           "output_dir": str(t / "out")})))],
     ["c.yaml: num_negatives must be >= 1, got -3"]),
    ("baselines-sasrec-empty-train", "run_baselines",
     lambda c, t: ["--model", "sasrec", "--train_file", str(write(t / "train.json", [])), "--test_file",
                   str(c.prepared / "test.json"), "--output_dir", str(t / "out")],
     ["--train_file", "train.json: no records"]),
    # lines that used to point elsewhere
    ("tuning-authors-cot-unknown-instruction", "run_tuning", authors_cot_file,
     ["stage123.json record 0: not a CoT record", "Explain the user's taste", "three CoT stage instructions"]),
    ("cot-no-user-to-ask", "run_cot_generation",
     lambda c, t: ["--data_dir", str(c.prepared), "--output_dir", str(t / "out"), "--teacher", "heuristic",
                   "--max_users", "1", "--neighbor_num", "1", "--candidate_num", "10", "--no-progress"],
     ["train.json: no CoT user within --max_users 1", "raise --max_users", "--ensure_target"]),
]

# one row per entry script runs its real command line (the script's `__main__`, the interpreter's exit status)
SUBPROCESS_ROWS = {"run_eval": "eval-limit-not-int", "run_tuning": "tuning-unknown-flag",
                   "run_baselines": "baselines-unknown-model", "run_prepare_data": "prepare-unknown-dataset",
                   "run_cot_generation": "cot-no-key", "run_pipeline": "pipeline-run-dir-is-file",
                   "run_experiments": "grid-non-utf8"}
# rows whose run reached the teacher: each failed user is logged (ERROR) before the one-line verdict
LOGS_BEFORE_THE_ERROR = {"cot-connection-refused"}


def as_the_command_line(ctx, monkeypatch, **env_extra):
    """This process's environment made the one `run` gives a subprocess (for rows run in this process)."""
    for key, value in env(ctx, **env_extra).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TLREC_DEBUG", raising=False)


def run(script, argv, ctx, prefix=(), **env_extra):
    """The real command line in a subprocess."""
    return subprocess.run([*prefix, sys.executable, f"{script}.py", *map(str, argv)], cwd=REPO, capture_output=True,
                          text=True, env=env(ctx, **env_extra), timeout=300)


def without_write_override() -> list[str]:
    """The command prefix that makes a process respect write permissions: none for a user; as root (how CI runs),
    setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root is refused a read-only folder as a user is."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): root writes anywhere")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input(ctx, tmp_path, monkeypatch, capsys, row):
    name, script, build, expected = row[:4]
    if name == "eval-device-cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    as_the_command_line(ctx, monkeypatch, OPENAI_API_KEY="")
    argv = build(ctx, tmp_path)
    if len(row) > 4:
        row[4](monkeypatch, tmp_path)
    watched = (tmp_path, ctx.prepared, ctx.model, ctx.other_model, ctx.adapter)
    before = tree(*watched)
    if SUBPROCESS_ROWS.get(script) == name:
        proc = run(script, argv, ctx, OPENAI_API_KEY="")
    else:
        proc = run_entry(script, argv, capsys)
    assert_one_line_error(proc, *expected, logs_ok=name in LOGS_BEFORE_THE_ERROR)
    assert tree(*watched) == before, sorted(tree(*watched) - before)


def test_one_subprocess_row_per_script():
    scripts = sorted(p.stem for p in REPO.glob("run_*.py"))
    assert sorted(SUBPROCESS_ROWS) == scripts
    assert all((name, script) in {(r[0], r[1]) for r in ROWS} for script, name in SUBPROCESS_ROWS.items())
    assert len({r[0] for r in ROWS}) == len(ROWS)  # ids are unique


def test_dry_run_accepts_the_grid_the_rows_above_break(ctx, tmp_path, monkeypatch, capsys):
    """The rows' base grid is a good one: its dry run exits 0 and prints every phase's command."""
    as_the_command_line(ctx, monkeypatch)
    before = tree(tmp_path)
    proc = run_entry("run_experiments", dry_grid(ctx, tmp_path), capsys)
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path) - before == {str(tmp_path / "grid.yaml")}


def test_download_into_a_data_dir_without_write_permission(ctx, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = run("run_prepare_data", ["--dataset", "ml-100k", "--download", "--data_dir", locked,
                                    "--output_dir", tmp_path / "out"], ctx, prefix=without_write_override())
    assert_one_line_error(proc, "--data_dir", "no permission to write in", "locked")
    assert not list(locked.iterdir())


# ---- rows that need a live peer or a signal ----------------------------------------------------------------


def test_cot_401_is_a_failure_with_the_key_masked(ctx, tmp_path, monkeypatch, capsys, caplog):
    from openai_stub_server import StubOpenAI

    as_the_command_line(ctx, monkeypatch, OPENAI_API_KEY=SECRET)
    before = tree(tmp_path)
    with StubOpenAI() as server:
        server.faults.append("401_echo")
        proc = run_entry("run_cot_generation", ["--data_dir", ctx.prepared, "--output_dir", tmp_path / "out",
                                                "--model", "m", "--base_url", server.base_url, "--max_users", "2",
                                                "--concurrency", "1", "--ensure_target", "--no-progress"], capsys)
    line = assert_one_line_error(proc, "refused the API key", "HTTP 401", "check OPENAI_API_KEY", logs_ok=True)
    assert SECRET not in proc.stderr + caplog.text and "***" in line
    assert tree(tmp_path) == before  # nothing obtained: no output directory left behind


def test_credentials_in_urls_are_masked_in_errors_and_outputs(ctx, tmp_path, monkeypatch, capsys, caplog):
    """user:password@ and secret query values of --mirror / --base_url: masked in the error line, the logs and
    summary.json; the rest of the URL stays readable."""
    as_the_command_line(ctx, monkeypatch, TLREC_LOG_LEVEL="INFO")
    caplog.set_level("INFO")
    mirror = f"http://bob:hunter2@127.0.0.1:{free_port()}/m?token=tok123&region=eu"
    before = tree(tmp_path)
    proc = run_entry("run_prepare_data", ["--dataset", "windows-csv", "--data_dir", tmp_path / "data",
                                          "--output_dir", tmp_path / "out", "--download", "--mirror", mirror], capsys)
    assert_one_line_error(proc, "error: http://***@127.0.0.1:", "/m?token=***&region=eu/raw.githubusercontent.com/",
                          "cannot download", logs_ok=True)
    assert "hunter2" not in proc.stderr + caplog.text and "tok123" not in proc.stderr + caplog.text
    assert tree(tmp_path) == before

    base_url = "https://alice:s3cret@llm.example/v1?api_key=KEY123"
    out = tmp_path / "cot"
    proc = run_entry("run_cot_generation", ["--data_dir", ctx.prepared, "--output_dir", out, "--teacher",
                                            "heuristic", "--base_url", base_url, "--max_users", "30",
                                            "--ensure_target", "--no-progress"], capsys)
    assert proc.returncode == 0, proc.stderr
    stored = "".join(p.read_text() for p in out.iterdir() if p.is_file())
    said = stored + proc.stderr + caplog.text
    assert "s3cret" not in said and "KEY123" not in said and "users hit" in caplog.text  # the logs were read
    settings = json.loads((out / "summary.json").read_text())["settings"]
    assert settings["base_url"] == "https://***@llm.example/v1?api_key=***"


def test_logs_and_crash_logs_mask_credentials(tmp_path, monkeypatch, capsys):
    import logging

    from tlrec_utils import errors

    assert errors.mask_secrets("see https://u:p@h.example:8080/x?sig=abc&author=Ann&Token=t9#f, a@b.c") == (
        "see https://***@h.example:8080/x?sig=***&author=Ann&Token=***#f, a@b.c")
    assert errors.mask_secrets_in({"a": ["ftp://me@h/"], "b": 3}) == {"a": ["ftp://***@h/"], "b": 3}
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "fetching %s", ("https://u:pw@h/f",), None)
    assert errors._MaskingFormatter("%(message)s").format(record) == "fetching https://***@h/f"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TLREC_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["run_x.py", "--mirror", "https://u:pw@h/"])

    @errors.cli_entry
    def broken(argv=None):
        raise RuntimeError("cannot reach https://u:pw@h/")

    with pytest.raises(SystemExit):
        broken([])
    err = capsys.readouterr().err
    log = Path(err.split("traceback and command line in ")[1].strip())
    assert "pw@" not in err + log.read_text() and "https://***@h/" in log.read_text()


def test_a_pipeline_that_fails_leaves_no_lock(ctx, tmp_path, monkeypatch, capsys):
    """The data phase fails (nothing to download from): one line, exit 2, no .pipeline.lock in the run dir and
    no folder in the data directory."""
    as_the_command_line(ctx, monkeypatch)
    (tmp_path / "data").mkdir()
    proc = run_entry("run_pipeline", ["--run_dir", tmp_path / "run", "--data_dir", tmp_path / "data", "--download",
                                      "--mirror", f"http://127.0.0.1:{free_port()}"], capsys)
    assert_one_line_error(proc, "cannot download", logs_ok=True)
    assert not list(tmp_path.rglob(".pipeline.lock")) and list((tmp_path / "data").iterdir()) == []


def test_ctrl_c_is_one_line_exit_130(ctx, tmp_path):
    """A teacher that never answers; Ctrl-C while the request hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    before = tree(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "run_cot_generation.py", "--data_dir", str(ctx.prepared), "--output_dir",
         str(tmp_path / "out"), "--model", "m", "--base_url", f"http://127.0.0.1:{listener.getsockname()[1]}/v1",
         "--max_users", "1", "--ensure_target", "--no-progress"],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env=env(ctx, OPENAI_API_KEY=SECRET),
        # Ctrl-C as a terminal delivers it: an earlier test in this pytest process can leave SIGINT ignored,
        # and an ignored signal is inherited across exec (Python then never raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        ready, _, _ = select.select([listener], [], [], 120)  # the request is in flight
        assert ready, "run_cot_generation never connected"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        listener.close()
    assert_one_line_error(SimpleNamespace(stderr=err, returncode=proc.returncode), "interrupted (Ctrl-C)", status=130)
    assert tree(tmp_path) == before


# ---- the guard itself, the teacher's masking, and the silent wrong results that are now right -------------


def test_internal_error_is_one_line_with_a_crash_log(tmp_path, monkeypatch, capsys):
    from tlrec_utils import errors

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("TLREC_DEBUG", raising=False)

    @errors.cli_entry
    def broken(argv=None):
        return {}["missing"]

    with pytest.raises(SystemExit) as exc:
        broken([])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("internal error") and "KeyError" in err
    log = Path(err.split("traceback and command line in ")[1])
    assert log.parent == tmp_path / "tlrec" / "crashes"
    text = log.read_text()
    assert "command:" in text and "Traceback" in text and "broken" in text
    monkeypatch.setenv("TLREC_DEBUG", "1")  # developers get the exception itself
    with pytest.raises(KeyError):
        broken([])


def test_crash_log_only_in_the_crash_folder(tmp_path, monkeypatch, capsys):
    """A crash after the output directory was checked leaves nothing in it: the log is in the crash folder."""
    from tlrec_utils import errors
    from tlrec_utils.validation import check_output_dir

    monkeypatch.delenv("TLREC_DEBUG", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()

    @errors.cli_entry
    def broken(argv=None):
        check_output_dir(tmp_path / "out", "--output_dir")
        raise RuntimeError("boom")

    with pytest.raises(SystemExit):
        broken([])
    assert str(tmp_path / "cache" / "tlrec" / "crashes") in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "cache").rglob("tlrec-crash-*.log"))


def test_metrics_list_with_spaces_keeps_ndcg_and_items_file(ctx, tmp_path):
    from tlrec_utils.arguments import EvalArguments, ModelArguments, parse_args

    _, args = parse_args((ModelArguments, EvalArguments),
                         ["--base_model", str(ctx.model), "--test_file", str(ctx.prepared / "test.json"),
                          "--output_dir", str(tmp_path / "o"), "--metrics", " auc , ndcg,", "--items_file",
                          str(ctx.prepared / "items.json")])
    assert args.metrics == "auc,ndcg" and args.items_file == str(ctx.prepared / "items.json")
    assert not (tmp_path / "o").exists()


def test_reprepare_removes_k_shot_files_of_the_old_train_split(ctx, tmp_path):
    import run_prepare_data

    out = tmp_path / "d"
    common = ["--dataset", "ml-100k", "--raw_dir", str(ctx.data / "ml-100k"), "--output_dir", str(out)]
    run_prepare_data.main(common + ["--max_windows", "200"])
    kshot = run_prepare_data.main(["--output_dir", str(out), "--k_shot", "5"])
    run_prepare_data.main(common + ["--max_windows", "200"])  # the same split: its K-shot file stays valid
    assert kshot.is_file()
    run_prepare_data.main(common + ["--max_windows", "150"])  # another split: the old sample is removed
    assert not kshot.exists() and (out / "train.json").is_file()


def test_teacher_reply_repeating_the_key_is_stored_masked(ctx, tmp_path, monkeypatch):
    """A server that echoes the key inside a 200 reply: what is stored has it masked."""
    import asyncio

    from openai_stub_server import StubOpenAI

    from tlrec_utils.cot.teacher import OpenAITeacher

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with StubOpenAI() as server:
        teacher = OpenAITeacher(model="m", base_url=server.base_url, max_retries=0)
        prompt = f'Step 1:\nThe movies that the user has watched (watched movies): "{SECRET}", "B"'  # stub format

        async def ask():
            try:
                return await teacher.answer(None, 1, [{"role": "user", "content": prompt}])
            finally:
                await teacher.close()

        reply = asyncio.run(ask())
    assert SECRET not in reply.text and "***" in reply.text


def test_output_dir_without_write_permission(ctx, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    proc = run("run_prepare_data", ["--dataset", "ml-100k", "--raw_dir", ctx.data / "ml-100k", "--output_dir",
                                    locked / "out"], ctx, prefix=without_write_override())
    assert_one_line_error(proc, "--output_dir", "no permission to write in", "locked")
    assert not (locked / "out").exists()




# ---- the CoT batch modes (issue 25): a server without the Batch API, an expired batch, files-mode output that is not
# the round's (malformed, another run's, another stage's): one line, exit 2, nothing written ---------------------------


def cot_batch_args(ctx, out, server, mode, *extra):
    return ["--data_dir", ctx.prepared, "--output_dir", out, "--model", "m", "--base_url", server.base_url,
            "--mode", mode, "--poll_interval", "0.01", "--ensure_target", "--no-progress", *extra]


def test_cot_batch_mode_against_a_server_without_the_batch_api(ctx, tmp_path, monkeypatch, capsys):
    from openai_stub_server import StubOpenAI

    as_the_command_line(ctx, monkeypatch, OPENAI_API_KEY=SECRET)
    before = tree(tmp_path)
    with StubOpenAI(batch_api=False) as server:  # a live-only server (vLLM's, Ollama's): /v1/files is 404
        proc = run_entry("run_cot_generation", cot_batch_args(ctx, tmp_path / "out", server, "batch"), capsys)
    assert_one_line_error(proc, f"--base_url {server.base_url}: no OpenAI Batch API there", "files.create: HTTP 404",
                          "use --mode files", logs_ok=True)
    assert tree(tmp_path) == before  # nothing uploaded, no output directory left behind


def test_cot_batch_expired_with_no_retry_left(ctx, tmp_path, monkeypatch, capsys):
    from openai_stub_server import StubOpenAI

    as_the_command_line(ctx, monkeypatch, OPENAI_API_KEY=SECRET)
    out = tmp_path / "out"
    with StubOpenAI() as server:
        server.batch_plan.append("expired")  # one request, expired before it ran
        proc = run_entry("run_cot_generation", cot_batch_args(ctx, out, server, "batch", "--max_users", "1",
                                                              "--max_retries", "0"), capsys)
    assert_one_line_error(proc, "no user was answered (1 failed", "Stage 1: gave up after 1 attempts: batch_expired",
                          logs_ok=True)
    assert not (out / "cot_train.json").exists()
    assert json.loads((out / "batches.json").read_text())["rounds"][0]["parts"][0]["batch_id"] == "batch-0"  # kept


@pytest.mark.parametrize("case", ["malformed", "another_run", "another_stage"])
def test_cot_files_mode_output_that_is_not_the_rounds(case, ctx, tmp_path, monkeypatch, capsys):
    from openai_stub_server import StubOpenAI

    as_the_command_line(ctx, monkeypatch)
    run_dir, other = tmp_path / "run", tmp_path / "other"
    with StubOpenAI(batch_api=False) as server:  # a fake offline runner (vllm run-batch) answers the files
        for out in (run_dir, other):  # two runs waiting for Stage 1's output
            assert run_entry("run_cot_generation", cot_batch_args(ctx, out, server, "files", "--max_users", "3"),
                             capsys).returncode == 0
    stage1 = run_dir / "batches" / "stage1-round0.output.jsonl"
    if case == "malformed":
        target = stage1
        target.write_text('{"custom_id": "x", "response": {"status_code": 200, "bo\n')
        expected = [f"{target} line 1: not a JSON batch output line"]
    elif case == "another_run":
        target = stage1
        server.offline_run(other / "batches" / "stage1-round0.requests.jsonl", target)
        expected = [f"{target} line 1: custom_id", "belongs to another CoT run"]
    else:  # Stage 1's answers given as Stage 2's output
        server.offline_run(run_dir / "batches" / "stage1-round0.requests.jsonl", stage1)
        assert run_entry("run_cot_generation", cot_batch_args(ctx, run_dir, server, "files", "--max_users", "3"),
                         capsys).returncode == 0  # reads them, writes Stage 2's requests
        target = stage1.rename(run_dir / "batches" / "stage2-round0.output.jsonl")
        expected = [f"{target} line 1: custom_id", "answers Stage 1, but this file's requests ask Stage 2"]
    before = snapshot(run_dir)
    proc = run_entry("run_cot_generation", cot_batch_args(ctx, run_dir, server, "files", "--max_users", "3"), capsys)
    assert_one_line_error(proc, *expected, logs_ok=True)
    assert snapshot(run_dir) == before  # nothing recorded
