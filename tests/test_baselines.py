"""Baselines: each learns the planted signal of synthetic data (a floor derived from the generating
probabilities); outputs match run_eval's."""

import json
import math
import random

import numpy as np
import pytest
from helpers import GENRES, assert_one_line_error, read_metrics, read_predictions, run_entry

from tlrec_utils.baselines import BASELINES, make_model
from tlrec_utils.baselines.evaluate import evaluate
from tlrec_utils.data.records import build_record
from tlrec_utils.evaluation.metrics import auc, mean_sampled_ndcg


def planted_records(n_train=1500, n_test=400, n_items=150, n_users=60, seed=0):
    """Labels drawn from sigmoid(user bias + item quality + 2.5 [target genre = user genre] - 1.5);
    better items are also drawn more often. So every heuristic has a signal (user like-share ~ user bias,
    item like-rate ~ quality, popularity ~ quality) and sequential models can also learn the genre match.
    Also returns, for each test record, the generating probability of its label as known from the user alone
    ("user": averaged over the items as they are drawn), the item alone ("item": averaged over the users) and
    both ("full"): scoring by it is the best any model seeing that much can do."""
    rng = random.Random(seed)
    quality = [rng.gauss(0, 1) for _ in range(n_items)]
    titles = {str(i): f"{GENRES[i % 6]} {rng.choice(['Night', 'Star', 'River', 'Iron'])} {i}" for i in range(n_items)}
    weights = [math.exp(0.8 * q) for q in quality]
    users = [(GENRES[u % 6], rng.gauss(0, 1)) for u in range(n_users)]

    def probability(u, i):
        fav, bias = users[u]
        return 1 / (1 + math.exp(-(bias + quality[i] + 2.5 * (GENRES[i % 6] == fav) - 1.5)))

    def like(u, i):
        return rng.random() < probability(u, i)

    by_user = [sum(w * probability(u, i) for i, w in enumerate(weights)) / sum(weights) for u in range(n_users)]
    by_item = [sum(probability(u, i) for u in range(n_users)) / n_users for i in range(n_items)]
    records, oracle = [], []
    for r in range(n_train + n_test):
        u = r % n_users
        items = []
        while len(items) < 11:
            i = rng.choices(range(n_items), weights)[0]
            if i not in items:
                items.append(i)
        history = [{"item_id": str(i), "title": titles[str(i)], "liked": like(u, i)} for i in items[:10]]
        t = items[10]
        records.append(
            build_record(f"u{u}", history, {"item_id": str(t), "title": titles[str(t)]}, int(like(u, t)), "movie")
        )
        oracle.append({"full": probability(u, t), "user": by_user[u], "item": by_item[t]})
    return records[:n_train], records[n_train:], titles, oracle[n_train:]


# what each baseline sees of the generator: the user's past likes, the item's, or everything (sequence + text)
BASELINE_VIEW = {"user-like-share": "user", "item-like-rate": "item", "item-popularity": "item"}
FLOOR_FRACTION = 0.4  # of the way from chance (AUC 0.5) to the best AUC possible from the baseline's view


@pytest.fixture(scope="module")
def planted():
    return planted_records()


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, planted):
    """A tiny random BERT with a tokenizer trained on the item titles, saved like any HF encoder."""
    import torch
    from transformers import BertConfig, BertModel

    from tlrec_utils.model.tiny_llm import train_tokenizer

    out = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = train_tokenizer(list(planted[2].values()), vocab_size=300)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_learns_the_planted_signal(name, planted, tiny_bert):
    """AUC on held-out records at least FLOOR_FRACTION of the way from 0.5 to the Bayes-optimal AUC of what the
    baseline sees (the generating probability scored against the same test labels); the answer prior alone
    (a constant score, the training like-rate) gets 0.5, far below."""
    train, test, titles, oracle = planted
    labels = [r["label"] for r in test]
    best_possible = auc(labels, [o[BASELINE_VIEW.get(name, "full")] for o in oracle])
    floor = 0.5 + FLOOR_FRACTION * (best_possible - 0.5)
    prior = sum(r["label"] for r in train) / len(train)
    assert auc(labels, [prior] * len(test)) == 0.5 < floor - 0.05  # 400 records: chance AUC has std ~0.03
    model = make_model(name, seed=0, text_encoder=tiny_bert, epochs=15)
    model.fit(train[:1200], train[1200:])
    metrics, predictions = evaluate(model, test, titles, num_negatives=50, ndcg_k=10)
    assert len(predictions) == len(test) and all(np.isfinite(p["p_yes"]) for p in predictions)
    assert metrics["auc"] >= floor, (metrics["auc"], floor, best_possible)
    assert metrics["counts"]["ranked"] == sum(r["label"] for r in test)
    # the sampled NDCG in metrics.json is the one of the written ranking scores (target first)
    rankings = [(p["ranking_p_yes"][0], p["ranking_p_yes"][1:]) for p in predictions if "ranking_p_yes" in p]
    assert metrics["ndcg@10"] == pytest.approx(mean_sampled_ndcg(rankings, 10))
    # sampled NDCG@10 of random scores among 51 items is about 0.075
    if name not in ("user-like-share",):  # the user's share is the same for the target and its negatives
        assert metrics["ndcg@10"] > 0.1, metrics


def test_dro_term_changes_training_but_not_data(planted):
    """DROS differs from SASRec only by the loss: same seed, different predictions; alpha=0 gives SASRec's."""
    train, test = planted[:2]
    kw = dict(seed=1, epochs=2, min_steps=1)
    sasrec = make_model("sasrec", **kw).fit(train[:300]).predict(test[:50])
    dros = make_model("dros", **kw).fit(train[:300]).predict(test[:50])
    dros_zero = make_model("dros", dro_alpha=0.0, **kw).fit(train[:300]).predict(test[:50])
    assert not np.allclose(sasrec, dros)
    np.testing.assert_allclose(sasrec, dros_zero, atol=1e-6)


def test_heuristic_scores_by_hand():
    hist = [{"item_id": "a", "title": "A", "liked": True}, {"item_id": "b", "title": "B", "liked": False}]
    train = [
        build_record("u1", hist, {"item_id": "a", "title": "A"}, 1, "movie"),
        build_record("u2", hist[:1], {"item_id": "b", "title": "B"}, 1, "movie"),
    ]
    test = [build_record("u3", hist, {"item_id": "b", "title": "B"}, 0, "movie")]
    # interactions: a liked 3 of 3, b liked 1 of 2; global rate 4/5; prior 5
    assert make_model("user-like-share").fit(train).predict(test)[0] == pytest.approx(0.5)
    assert make_model("item-like-rate").fit(train).predict(test)[0] == pytest.approx((1 + 5 * 0.8) / (2 + 5))
    assert make_model("item-popularity").fit(train).predict(test)[0] == pytest.approx(2 / 3)


def test_run_baselines_cli_writes_run_eval_outputs(tmp_path, planted):
    import run_baselines

    train, test, titles = planted[:3]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "test.json").write_text(json.dumps(test[:100]))
    (tmp_path / "items.json").write_text(json.dumps(titles))
    out = tmp_path / "run"
    run_baselines.main([
        "--model", "heuristic-logreg", "--train_file", str(tmp_path / "train.json"),
        "--test_file", str(tmp_path / "test.json"), "--items_file", str(tmp_path / "items.json"),
        "--k_shot", "64", "--seed", "3", "--output_dir", str(out),
    ])
    metrics = read_metrics(out)
    assert {"auc", "ndcg@10", "ndcg@10_user", "counts", "settings"} <= set(metrics)
    assert metrics["counts"]["records"] == 100
    assert metrics["settings"]["k_shot"] == 64 and metrics["settings"]["num_train_records"] == 64
    preds = read_predictions(out)
    assert len(preds) == 100 and all(0 <= p["p_yes"] <= 1 for p in preds)
    # the AUC in metrics.json is the AUC of the written predictions
    assert metrics["auc"] == pytest.approx(auc([p["label"] for p in preds], [p["p_yes"] for p in preds]))


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "train.json").write_text(json.dumps([{"instruction": "x", "input": "y", "output": "Maybe."}]))
    argv = ["--model", "item-popularity", "--train_file", tmp_path / "train.json", "--test_file",
            tmp_path / "train.json", "--output_dir", tmp_path / "out"]
    proc = run_entry("run_baselines", argv, capsys)
    assert_one_line_error(proc, "train.json record 0", "'Maybe.'")
    assert not (tmp_path / "out").exists()


def test_unknown_baseline_is_one_line_exit_2(tmp_path, capsys):
    proc = run_entry("run_baselines", ["--model", "nope", "--train_file", "x.json", "--test_file", "y.json",
                                       "--output_dir", tmp_path / "o"], capsys)
    assert_one_line_error(proc, "unknown baseline 'nope'", "sasrec")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", ["sasrec", "item-popularity"])
def test_published_book_records_without_user_ids(name, data_dir, tmp_path):
    """TALLRec's published Book records carry no user ids: the baselines train and score them, and the per-user
    NDCG is null with its reason (as run_eval reports it), not a crash."""
    import run_baselines

    records = json.loads((data_dir / "book" / "valid.json").read_text())
    (tmp_path / "train.json").write_text(json.dumps(records[:300]))
    (tmp_path / "test.json").write_text(json.dumps(records[300:420]))
    out = tmp_path / "run"
    run_baselines.main(["--model", name, "--train_file", str(tmp_path / "train.json"), "--test_file",
                        str(tmp_path / "test.json"), "--output_dir", str(out), "--epochs", "1"])
    metrics, preds = read_metrics(out), read_predictions(out)
    liked = sum(r["output"].startswith("Yes") for r in records[300:420])
    assert metrics["counts"]["records"] == 120 and metrics["counts"]["ranked"] == liked > 0
    assert metrics["ndcg@10_user"] is None and "no user_id" in metrics["notes"]["ndcg@10_user"]
    assert len(preds) == 120 and all(p["user_id"] is None for p in preds)
    # the AUC and NDCG are those of the written scores, with the published labels
    assert [p["label"] for p in preds] == [int(r["output"].startswith("Yes")) for r in records[300:420]]
    assert metrics["auc"] == pytest.approx(auc([p["label"] for p in preds], [p["p_yes"] for p in preds]))
    rankings = [(p["ranking_p_yes"][0], p["ranking_p_yes"][1:]) for p in preds if "ranking_p_yes" in p]
    assert len(rankings) == liked and metrics["ndcg@10"] == pytest.approx(mean_sampled_ndcg(rankings))


def test_text_embeddings_are_encoded_once_per_process(tiny_bert, planted, monkeypatch):
    """DROS-BERT in a grid: every setting and seed embeds the same catalog; each text is encoded once, and the
    cached rows equal a fresh encoding of the same texts."""
    from tlrec_utils.baselines import text_encoder

    titles = list(planted[2].values())[:40]
    text_encoder._EMBEDDINGS.clear()
    encoded = []
    real = text_encoder._encode
    monkeypatch.setattr(text_encoder, "_encode", lambda texts, *a: encoded.append(list(texts)) or real(texts, *a))
    first = text_encoder.encode_texts(titles[:30] + titles[:5], tiny_bert)
    second = text_encoder.encode_texts(titles[20:40], tiny_bert)
    assert encoded == [titles[:30], titles[30:40]]  # duplicates and known texts skipped
    assert first.shape == (35, 32) and np.array_equal(first[30:], first[:5])
    fresh = real(titles[20:40], tiny_bert, 64, 64)
    np.testing.assert_allclose(second, fresh, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(second, axis=1), 1.0, atol=1e-5)
    assert text_encoder.encode_texts([], tiny_bert).shape == (0, 32)
