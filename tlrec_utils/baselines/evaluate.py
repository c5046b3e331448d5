"""Score a fitted baseline on test records: AUC, sampled NDCG@k (the target among the same seeded
negatives as run_eval), per-user NDCG@k; write metrics.json and predictions.jsonl like run_eval."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..errors import InputError
from ..fileio import atomic_write_json, staged_output_dir
from ..negatives import sample_negatives

logger = logging.getLogger(__name__)


def evaluate(model, test_records, catalog: dict, num_negatives: int = 50, ndcg_k: int = 10, negatives_seed: int = 0):
    """(metrics dict, per-record scores). `catalog`: item_id -> title (negatives come from its keys)."""
    labels = [int(r["label"]) for r in test_records]
    scores = np.asarray(model.predict(test_records), dtype=np.float64)
    try:
        negatives = sample_negatives(test_records, catalog.keys(), num_negatives=num_negatives, seed=negatives_seed)
    except ValueError as exc:
        raise InputError(f"catalog too small for {num_negatives} negatives: {exc}") from None
    ranked = [i for i, neg in enumerate(negatives) if neg is not None]
    swapped = [
        {**test_records[i], "target": {"item_id": item, "title": catalog[item]}, "label": 0}
        for i in ranked
        for item in negatives[i]
    ]
    neg_scores = np.asarray(model.predict(swapped), dtype=np.float64).reshape(len(ranked), num_negatives)
    rankings = [(scores[i], neg_scores[j]) for j, i in enumerate(ranked)]
    user_value, user_count = M.user_ndcg([r["user_id"] for r in test_records], labels, scores, k=ndcg_k)
    result = {
        "auc": M.auc(labels, scores),
        f"ndcg@{ndcg_k}": M.mean_sampled_ndcg(rankings, k=ndcg_k),
        f"ndcg@{ndcg_k}_user": user_value,
        "num_records": len(test_records),
        "num_ranked": len(ranked),
        "num_users_ndcg": user_count,
    }
    return {k: M.json_safe(v) for k, v in result.items()}, scores


def write_outputs(output_dir, metrics: dict, settings: dict, test_records, scores) -> None:
    """metrics.json (metrics + `settings`) and predictions.jsonl, all or nothing."""
    with staged_output_dir(output_dir) as stage:
        with open(Path(stage) / "predictions.jsonl", "w", encoding="utf-8") as f:
            for i, (rec, s) in enumerate(zip(test_records, scores)):
                row = {"index": i, "user_id": rec["user_id"], "target_item_id": rec["target"]["item_id"]}
                f.write(json.dumps({**row, "label": int(rec["label"]), "p_yes": float(s)}) + "\n")
        atomic_write_json(Path(stage) / "metrics.json", {**metrics, "settings": settings})
