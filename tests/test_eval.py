"""run_eval.py: metrics recomputed by hand from its own predictions, ranking candidates, generate mode,
published-format records, bad input."""

import json
import math
from collections import defaultdict

import pytest
from helpers import free_port, read_metrics, read_predictions

import run_eval
import run_tuning
from tlrec_utils.evaluation.metrics import auc, mean_sampled_ndcg


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_llama, synthetic):
    records, catalog, _ = synthetic
    d = tmp_path_factory.mktemp("eval")
    (d / "train.json").write_text(json.dumps(records[:120]))
    (d / "test.json").write_text(json.dumps(records[120:200]))  # 40 users with 2 records each
    (d / "items.json").write_text(json.dumps(catalog))
    # a briefly tuned adapter so scores are spread (no ties in the hand computations)
    assert run_tuning.main(["--base_model", str(tiny_llama), "--train_files", str(d / "train.json"),
                            "--output_dir", str(d / "lora"), "--max_steps", "6", "--learning_rate", "1e-2",
                            "--max_length", "160", "--use_cpu", "--report_to", "none"]) == 0
    out = d / "ev"
    assert run_eval.main(["--base_model", str(tiny_llama), "--adapter", str(d / "lora"), "--test_file",
                          str(d / "test.json"), "--items_file", str(d / "items.json"), "--output_dir", str(out),
                          "--batch_size", "7"]) == 0
    metrics = read_metrics(out)
    preds = read_predictions(out)
    return d, records[120:200], metrics, preds


def test_auc_by_pair_counting(setup):
    _, records, metrics, preds = setup
    pos = [p["p_yes"] for p in preds if p["label"] == 1]
    neg = [p["p_yes"] for p in preds if p["label"] == 0]
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    assert metrics["auc"] == pytest.approx(wins / (len(pos) * len(neg)), abs=1e-12)
    assert [p["label"] for p in preds] == [r["label"] for r in records]


def _dcg(scores, gains, k=10):
    """DCG@k by hand, tied scores sharing the mean gain of their group over the group's places (never the
    optimistic or the pessimistic place)."""
    total, place = 0.0, 0
    for value in sorted(set(scores), reverse=True):
        group = [g for s, g in zip(scores, gains) if s == value]
        total += sum(group) / len(group) * sum(1 / math.log2(p + 2) for p in range(place, min(place + len(group), k)))
        place += len(group)
    return total


def test_user_ndcg_by_hand(setup):
    _, _, metrics, preds = setup
    by_user = defaultdict(list)
    for p in preds:
        by_user[p["user_id"]].append((p["p_yes"], p["label"]))
    values = []
    for rows in by_user.values():
        labels = [y for _, y in rows]
        if len(rows) < 2 or sum(labels) == 0:
            continue
        ideal = _dcg(range(len(labels), 0, -1), sorted(labels, reverse=True))
        values.append(_dcg([s for s, _ in rows], labels) / ideal)
    assert values and metrics["counts"]["users_ranked"] == len(values)
    assert metrics["ndcg@10_user"] == pytest.approx(sum(values) / len(values), abs=1e-12)


def test_sampled_ndcg_by_hand(setup):
    _, records, metrics, preds = setup
    ranked = [p for p in preds if "ranking_p_yes" in p]
    assert len(ranked) == sum(r["label"] for r in records) == metrics["counts"]["ranked"]
    values = []
    for p in ranked:
        rec = records[p["index"]]
        ids, scores = p["ranking_item_ids"], p["ranking_p_yes"]
        assert len(ids) == 51 and len(set(ids)) == 51 and ids[0] == rec["target"]["item_id"]
        assert not set(ids[1:]) & {h["item_id"] for h in rec["history"]}
        # the target's score in the shared-prefix pass equals its full-prompt score
        assert scores[0] == pytest.approx(p["p_yes"], abs=1e-4)
        values.append(_dcg(scores, [1] + [0] * 50))
    assert metrics["ndcg@10"] == pytest.approx(sum(values) / len(values), abs=1e-12)
    assert set(metrics) >= {"auc", "ndcg@10", "ndcg@10_user", "counts", "settings"}


def test_generate_mode_gives_the_same_scores(setup, tiny_llama, tmp_path):
    d, _, _, preds = setup
    assert run_eval.main(["--base_model", str(tiny_llama), "--adapter", str(d / "lora"), "--test_file",
                          str(d / "test.json"), "--output_dir", str(tmp_path), "--metrics", "auc",
                          "--eval_mode", "generate", "--max_new_tokens", "3", "--limit", "20"]) == 0
    gen = [p["p_yes"] for p in read_predictions(tmp_path)]
    assert gen == pytest.approx([p["p_yes"] for p in preds[:20]], abs=1e-4)
    assert read_metrics(tmp_path)["counts"]["generated_tokens"] >= 20


def test_published_records_without_structure(data_dir, tiny_llama, tmp_path):
    """The authors' released test file (text only): scored, and ranked after recovering the items."""
    from tlrec_utils.data.record_parsing import parse_rec_input
    from tlrec_utils.evaluation.metrics import auc

    published = json.loads((data_dir / "netflix" / "test.json").read_text())[:24]
    assert run_eval.main(["--base_model", str(tiny_llama), "--test_file", str(data_dir / "netflix" / "test.json"),
                          "--output_dir", str(tmp_path), "--limit", "24", "--num_negatives", "20"]) == 0
    metrics = read_metrics(tmp_path)
    preds = read_predictions(tmp_path)
    labels = [int(r["output"] == "Yes.") for r in published]
    assert metrics["counts"]["records"] == 24 and [p["label"] for p in preds] == labels
    assert metrics["auc"] == pytest.approx(auc(labels, [p["p_yes"] for p in preds]), abs=1e-12)
    # every liked record is ranked: its target and history recovered from the text alone
    assert metrics["counts"]["ranked"] == sum(labels) > 0 and metrics["counts"]["liked_without_structure"] == 0
    catalog = {}
    for r in published:
        parsed = parse_rec_input(r["input"])
        catalog.update({h["item_id"]: h["title"] for h in [*parsed["history"], parsed["target"]]})
    for p, r in zip(preds, published):
        if "ranking_item_ids" not in p:
            continue
        parsed = parse_rec_input(r["input"])
        ids = p["ranking_item_ids"]
        assert len(ids) == 21 and ids[0] == parsed["target"]["item_id"] and set(ids) <= set(catalog)
        assert not set(ids[1:]) & {h["item_id"] for h in parsed["history"]}
        # the target's prompt rebuilt from the recovered items scores as the published text does
        assert p["ranking_p_yes"][0] == pytest.approx(p["p_yes"], abs=1e-4)


def test_bad_eval_input(tiny_llama, tmp_path, capsys):
    for argv, expected in [
        (["--test_file", str(tmp_path / "missing.json")], "missing.json: file not found"),
        (["--test_file", str(tmp_path / "t.json"), "--metrics", "auc,recall"], "--metrics: unknown recall"),
        (["--test_file", str(tmp_path / "t.json"), "--adapter", str(tmp_path)], "not a LoRA adapter directory"),
    ]:
        (tmp_path / "t.json").write_text(json.dumps([{"instruction": "i", "input": "x", "output": "Yes."}]))
        with pytest.raises(SystemExit) as exc:
            run_eval.main(["--base_model", str(tiny_llama), "--output_dir", str(tmp_path / "out"), *argv])
        assert exc.value.code == 2
        assert expected in capsys.readouterr().err
        assert not (tmp_path / "out").exists()


def test_two_processes_give_the_one_process_results(setup, tiny_llama, tmp_path):
    """accelerate launch with 2 processes (gloo on CPU): each scores a shard, rank 0 writes the same predictions
    (same order, float tolerance) and metrics as the one-process run of the fixture."""
    import os
    import subprocess
    import sys

    d, _, metrics, preds = setup
    out = tmp_path / "ev2"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "run_eval.py", "--base_model", str(tiny_llama),
           "--adapter", str(d / "lora"), "--test_file", str(d / "test.json"), "--items_file",
           str(d / "items.json"), "--output_dir", str(out), "--batch_size", "7", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=run_eval.__file__.rsplit("/", 1)[0], capture_output=True, text=True, check=False,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics2 = read_metrics(out)
    preds2 = read_predictions(out)
    assert metrics2["settings"]["num_processes"] == 2 and metrics["settings"]["num_processes"] == 1
    assert [p["index"] for p in preds2] == [p["index"] for p in preds] == list(range(len(preds)))
    for one, two in zip(preds, preds2):
        assert set(one) == set(two)
        assert two["p_yes"] == pytest.approx(one["p_yes"], abs=1e-5)
        assert two.get("ranking_item_ids") == one.get("ranking_item_ids")
        assert two.get("ranking_p_yes", []) == pytest.approx(one.get("ranking_p_yes", []), abs=1e-5)
    for key in ("auc", "ndcg@10", "ndcg@10_user"):
        assert metrics2[key] == pytest.approx(metrics[key], abs=1e-9)
    assert metrics2["counts"] == metrics["counts"]


def test_records_without_user_ids_get_a_null_user_ndcg_with_the_reason(data_dir, tiny_llama, tmp_path):
    """TALLRec's Book records (no user ids) prepared as the `records` dataset: per-user NDCG is null, not an error."""
    from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset

    raw = tmp_path / "book"
    raw.mkdir()
    for split, name in (("train", "valid"), ("valid", "valid"), ("test", "test")):
        (raw / f"{split}.json").write_bytes((data_dir / "book" / f"{name}.json").read_bytes())
    prepare_dataset(PrepareConfig("records", str(raw), str(tmp_path / "prepared")))
    assert run_eval.main(["--base_model", str(tiny_llama), "--test_file", str(tmp_path / "prepared" / "test.json"),
                          "--items_file", str(tmp_path / "prepared" / "items.json"), "--output_dir",
                          str(tmp_path / "eval"), "--limit", "16", "--num_negatives", "5"]) == 0
    metrics, preds = read_metrics(tmp_path / "eval"), read_predictions(tmp_path / "eval")
    assert metrics["ndcg@10_user"] is None and metrics["counts"]["ranked"] > 0
    # the AUC and NDCG are those of the written scores: every record scored, every liked one ranked
    assert len(preds) == 16 and metrics["auc"] == pytest.approx(auc([p["label"] for p in preds],
                                                                    [p["p_yes"] for p in preds]), abs=1e-12)
    rankings = [(p["ranking_p_yes"][0], p["ranking_p_yes"][1:]) for p in preds if "ranking_p_yes" in p]
    assert len(rankings) == metrics["counts"]["ranked"] == sum(p["label"] for p in preds)
    assert metrics["ndcg@10"] == pytest.approx(mean_sampled_ndcg(rankings), abs=1e-12)
    assert metrics["notes"]["ndcg@10_user"] == "not computed: 16 of 16 records carry no user_id"


def test_encodings_are_memoised_across_models_and_give_the_same_results(setup, tiny_llama, tmp_path, monkeypatch):
    """A pipeline evaluates many models on one test split: the second model reuses the first one's prompt and
    ranking encodings (no tokenization at all), with results identical to a cold run; other records miss."""
    from tlrec_utils.evaluation import evaluate as evaluation
    from tlrec_utils.model.tokenization import RecordEncoder

    d = setup[0]
    calls = []
    real = RecordEncoder.prompt_ids_many
    monkeypatch.setattr(RecordEncoder, "prompt_ids_many",
                        lambda self, records, sources: calls.append(len(records)) or real(self, records, sources))

    def run(out, test_file="test.json", adapter=True):
        argv = ["--base_model", str(tiny_llama), "--test_file", str(d / test_file), "--items_file",
                str(d / "items.json"), "--output_dir", str(tmp_path / out), "--batch_size", "7"]
        assert run_eval.main(argv + (["--adapter", str(d / "lora")] if adapter else [])) == 0
        metrics = read_metrics(tmp_path / out)
        preds = read_predictions(tmp_path / out)
        return {k: v for k, v in metrics.items() if k != "wall_time_s"}, preds

    evaluation._ENCODING_MEMO.clear()
    base_metrics, _ = run("base", adapter=False)
    cold_calls = len(calls)
    assert cold_calls > 1  # the AUC prompts and one call per ranking group
    warm_metrics, warm_preds = run("warm")
    assert len(calls) == cold_calls  # nothing tokenized for the second model
    assert warm_metrics["auc"] != base_metrics["auc"]  # a different model was scored
    evaluation._ENCODING_MEMO.clear()
    cold_metrics, cold_preds = run("cold")
    assert len(calls) == 2 * cold_calls
    assert warm_metrics == cold_metrics and warm_preds == cold_preds
    # other records are a different key: tokenized again
    records = json.loads((d / "test.json").read_text())
    (tmp_path / "fewer.json").write_text(json.dumps(records[:-2]))
    run("fewer", test_file=str(tmp_path / "fewer.json"))
    assert len(calls) > 2 * cold_calls


def test_assemble_gathers_payloads_of_two_processes_without_a_model():
    """evaluate's metric assembly on hand-made payloads (answer statistics [no, yes, logsumexp] per prompt; two-logit
    P(Yes) = sigmoid(yes - no)), split over two processes as a data-parallel run gathers them."""
    from collections import Counter

    import numpy as np

    from tlrec_utils.evaluation.evaluate import assemble

    def stats(margins):  # yes - no margins -> statistics rows (logsumexp far above: authors' P(Yes) ~ 0.5)
        return np.array([[0.0, m, 50.0] for m in margins])

    records = [{"user_id": "a", "label": 1, "target": {"item_id": "t0"}},
               {"user_id": "a", "label": 0, "target": {"item_id": "t1"}},
               {"user_id": "b", "label": 1, "target": {"item_id": "t2"}},
               {"user_id": "b", "label": 0, "target": {"item_id": "t3"}}]
    candidates = [(0, ["t0", "n1", "n2"]), (2, ["t2", "n3", "n4"])]
    payloads = [
        {"scored": ([0, 1], stats([2.0, -1.0])), "ranked": ([0], [stats([0.0, 1.0, -1.0])]),
         "candidates": candidates, "truncated": Counter(history=1), "truncated_ranking": Counter()},
        {"scored": ([2, 3], stats([0.5, 1.0])), "ranked": ([1], [stats([3.0, 0.0, 0.0])]),
         "candidates": candidates, "truncated": Counter(history=2), "truncated_ranking": Counter(middle=1)},
    ]
    result, predictions = assemble(records, payloads, ["two_logit", "authors"], k=10)
    # AUC: positives 2.0, 0.5 against negatives -1.0, 1.0: 3 of 4 pairs ordered
    assert result["auc"] == pytest.approx(0.75)
    # per user: a ranks its like first (1), b ranks its like second (1 / log2(3))
    assert result["ndcg@10_user"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    # sampled: record 0's target second of three (1 / log2(3)), record 2's first (1)
    assert result["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert {"auc_authors", "auc_ci95_authors", "ndcg@10_authors", "ndcg@10_user_authors"} <= set(result)
    assert result["counts"] == {"records": 4, "liked": 2, "users_ranked": 2, "ranked": 2, "liked_without_structure": 0,
                                "truncated": {"history": 3}, "truncated_ranking_prompts": {"middle": 1}}
    sigmoid = [1 / (1 + math.exp(-m)) for m in (2.0, -1.0, 0.5, 1.0)]
    assert [p["p_yes"] for p in predictions] == pytest.approx(sigmoid)
    assert [p["item_id"] for p in predictions] == ["t0", "t1", "t2", "t3"]
    assert predictions[2]["ranking_item_ids"] == ["t2", "n3", "n4"] and "ranking_item_ids" not in predictions[1]
    assert predictions[0]["ranking_p_yes"] == pytest.approx([0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))])
    auc_only, _ = assemble(records, [{k: v for k, v in p.items() if k not in ("ranked", "candidates")}
                                     for p in payloads])
    assert "ndcg@10" not in auc_only and "ranked" not in auc_only["counts"] and auc_only["auc"] == result["auc"]
