"""Load data, draw the K-shot sample, fit a baseline, evaluate, write outputs (run_baselines.py)."""

from __future__ import annotations

import logging
import time

from ..data.kshot import sample_k_shot
from ..data.records import load_records
from ..errors import InputError, where
from ..evaluation.evaluate import load_catalog, summary_line, write_outputs
from ..evaluation.metrics import NDCG_K, NUM_NEGATIVES
from .evaluate import evaluate
from .registry import make_model

logger = logging.getLogger(__name__)


def load_structured(path) -> list[dict]:
    records = load_records(path)
    for i, rec in enumerate(records):
        if "history" not in rec or "target" not in rec:
            raise InputError(f"{where(path, record=i)}: no structured history/target (items could not be recovered)")
    return records


def run_baseline(
    model: str,
    train_file,
    test_file,
    output_dir,
    valid_file=None,
    items_file=None,
    k_shot: int | None = None,
    seed: int = 0,
    num_negatives: int = NUM_NEGATIVES,
    ndcg_k: int = NDCG_K,
    negatives_seed: int = 0,
    text_encoder=None,
    test_limit: int | None = None,
    **sequential_overrides,
) -> dict:
    train = load_structured(train_file)
    test = load_structured(test_file)
    for flag, path, records in (("--train_file", train_file, train), ("--test_file", test_file, test)):
        if not records:
            raise InputError(f"{flag} {path}: no records (an empty list); give a file of prepared records")
    if test_limit:  # the first N, as run_eval's --limit and the pipeline's test_limit take them
        test = test[:test_limit]
    valid = load_structured(valid_file) if valid_file else None
    if k_shot:
        train = sample_k_shot(train, k_shot, seed, source=str(train_file))
    catalog = load_catalog(items_file, train + (valid or []) + test)
    baseline = make_model(model, seed=seed, text_encoder=text_encoder, **sequential_overrides)
    start = time.time()
    baseline.fit(train, valid)
    fit_s = time.time() - start
    metrics, predictions = evaluate(baseline, test, catalog, num_negatives, ndcg_k, negatives_seed)
    settings = {
        "method": model,
        "train_file": str(train_file),
        "valid_file": str(valid_file) if valid_file else None,
        "test_file": str(test_file),
        "test_limit": test_limit,
        "items_file": str(items_file) if items_file else None,
        "k_shot": k_shot,
        "seed": seed,
        "num_negatives": num_negatives,
        "ndcg_k": ndcg_k,
        "negatives_seed": negatives_seed,
        "num_train_records": len(train),
        "fit_seconds": round(fit_s, 2),
    }
    if hasattr(baseline, "settings"):  # models with settings of their own (the sequential ones)
        settings.update(baseline.settings())
    metrics["settings"] = settings
    write_outputs(output_dir, metrics, predictions)
    logger.info("%s: %s -> %s", model, summary_line(metrics, ndcg_k), output_dir)
    return metrics
