"""Score a fitted baseline on test records exactly as run_eval scores an LLM (tlrec_utils.evaluation.evaluate):
AUC, sampled NDCG@k (each liked target among the same seeded negatives: evaluation.ranking_candidates),
per-user NDCG@k; the same metrics.json schema and predictions.jsonl, written by evaluation.write_outputs."""

from __future__ import annotations

import time

import numpy as np

from ..evaluation import metrics as M
from ..evaluation.evaluate import ranking_candidates


def evaluate(model, test_records, catalog: dict, num_negatives: int = M.NUM_NEGATIVES, ndcg_k: int = M.NDCG_K,
             negatives_seed: int = 0):
    """(metrics dict, predictions list) in run_eval's format. `catalog`: item_id -> title."""
    started = time.time()
    labels = [int(r["label"]) for r in test_records]
    scores = np.asarray(model.predict(test_records), dtype=np.float64)
    # run_eval's own candidate lists: the same records ranked, against the same seeded negatives
    candidates = ranking_candidates(test_records, catalog, num_negatives, negatives_seed)
    ranked = [i for i, _ in candidates]
    flat = [c for _, cands in candidates for c in cands]
    cand_scores = np.asarray(model.predict(flat), dtype=np.float64).reshape(len(ranked), num_negatives + 1)
    rankings = [(row[0], row[1:]) for row in cand_scores]
    user_value, users_ranked, reason = M.user_ndcg_or_reason([r.get("user_id") for r in test_records], labels,
                                                             scores, k=ndcg_k)
    result = {
        "auc": M.auc(labels, scores),
        M.ndcg_key(ndcg_k): M.mean_sampled_ndcg(rankings, k=ndcg_k),
        M.ndcg_key(ndcg_k, per_user=True): user_value,
        "counts": {"records": len(test_records), "liked": int(sum(labels)), "ranked": len(ranked),
                   "users_ranked": users_ranked},
        "wall_time_s": round(time.time() - started, 3),
    }
    if reason is not None:
        result["notes"] = {M.ndcg_key(ndcg_k, per_user=True): reason}
    predictions = [
        {"index": i, "user_id": r.get("user_id"), "item_id": r["target"]["item_id"], "label": int(r["label"]),
         "p_yes": float(s)}
        for i, (r, s) in enumerate(zip(test_records, scores))
    ]
    for j, i in enumerate(ranked):
        predictions[i]["ranking_p_yes"] = [float(x) for x in cand_scores[j]]
    return {k: M.json_safe(v) for k, v in result.items()}, predictions
