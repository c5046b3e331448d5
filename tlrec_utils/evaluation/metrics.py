"""AUC and NDCG, shared by run_eval and every baseline so all methods are scored identically.

Ties are averaged (scikit-learn's `ndcg_score` with `ignore_ties=False`), so a constant predictor gets the
expected score of a random ordering instead of a lucky or unlucky one. The definitions are scikit-learn's
(`roc_auc_score`, `ndcg_score(ignore_ties=False)`; tests/test_metrics.py checks equality, ties included),
computed here with numpy alone: importing scikit-learn takes longer than scoring a test split (issue 21).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

# The ranking metric of the paper, used by run_eval, the baselines, the pipeline and the report: NDCG@10 of the
# target among 50 sampled negatives. The metric's key in metrics.json is `ndcg_key(k)` ("ndcg@10").
NDCG_K = 10
NUM_NEGATIVES = 50


def ndcg_key(k: int = NDCG_K, per_user: bool = False) -> str:
    """"ndcg@10" (sampled) or "ndcg@10_user" (per user): a metric's key in metrics.json and the report."""
    return f"ndcg@{k}_user" if per_user else f"ndcg@{k}"


NDCG_KEY = ndcg_key()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of `values`, tied values sharing their average rank (scipy.stats.rankdata's 'average')."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    first = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each run of equal values
    run = np.cumsum(first) - 1
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = ((starts + 1 + ends) / 2)[run]  # the mean of the 1-based ranks starts+1 .. ends
    return ranks


def auc(labels, scores) -> float:
    """ROC AUC (scikit-learn's `roc_auc_score`) as the Mann-Whitney statistic: the chance that a liked record
    scores above a disliked one, ties counting half; NaN when only one class is present (undefined)."""
    labels = np.asarray(labels)
    if labels.size == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError("AUC of scores that are NaN or infinite")
    positive = labels == labels.max()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = _average_ranks(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ndcg(relevance: np.ndarray, scores: np.ndarray, k: int) -> float:
    """scikit-learn's `ndcg_score(ignore_ties=False)` of one ranking: tied scores share the mean gain of their
    group at the group's positions; 0 when nothing is relevant."""
    if len(scores) < 2:
        raise ValueError("NDCG needs at least two scored items")
    discount = 1 / np.log2(np.arange(len(scores)) + 2)
    discount[k:] = 0
    ideal = float(np.sort(relevance)[::-1] @ discount)
    if ideal == 0:
        return 0.0
    values, group, counts = np.unique(-scores, return_inverse=True, return_counts=True)  # best score first
    mean_gain = np.bincount(group.ravel(), weights=relevance, minlength=len(values)) / counts
    cumulative = np.r_[0.0, np.cumsum(discount)]
    ends = np.cumsum(counts)
    return float(mean_gain @ (cumulative[ends] - cumulative[ends - counts]) / ideal)


def auc_interval(labels, value: float, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval (z = 1.96) of an AUC over independent records, from Hanley and McNeil's standard error
    (Radiology 143, 1982): var = (A(1-A) + (P-1)(Q1-A^2) + (N-1)(Q2-A^2)) / (P N), Q1 = A/(2-A), Q2 = 2A^2/(1+A),
    with P liked and N not-liked records; clipped to [0, 1]. NaN when the AUC is undefined."""
    labels = np.asarray(labels)
    n_pos = int((labels == 1).sum())
    n_neg = int(labels.size - n_pos)
    if not n_pos or not n_neg or math.isnan(value):
        return float("nan"), float("nan")
    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    var = (value * (1 - value) + (n_pos - 1) * (q1 - value * value) + (n_neg - 1) * (q2 - value * value)) / (
        n_pos * n_neg)
    half = z * math.sqrt(max(var, 0.0))
    return max(0.0, value - half), min(1.0, value + half)


def sampled_ndcg(target_score: float, negative_scores, k: int = NDCG_K) -> float:
    """NDCG@k of one relevant item ranked among sampled negatives (ties averaged)."""
    scores = np.concatenate([[target_score], np.asarray(negative_scores, dtype=np.float64)])
    relevance = np.zeros_like(scores)
    relevance[0] = 1.0
    return _ndcg(relevance, scores, k)


def mean_sampled_ndcg(rankings: list[tuple[float, list[float]]], k: int = NDCG_K) -> float:
    """Mean of `sampled_ndcg` over (target_score, negative_scores) pairs; NaN when empty."""
    if not rankings:
        return float("nan")
    return float(np.mean([sampled_ndcg(t, negs, k) for t, negs in rankings]))


def user_ndcg(user_ids, labels, scores, k: int = NDCG_K) -> tuple[float, int]:
    """NDCG@k of each user's own test records ranked by score with labels as relevance, averaged over
    users with at least two records and at least one like. Returns (mean, number of users)."""
    by_user = defaultdict(list)
    for u, y, s in zip(user_ids, labels, scores):
        by_user[u].append((float(y), float(s)))
    values = []
    for rows in by_user.values():
        if len(rows) < 2:
            continue
        y = np.array([r[0] for r in rows])
        if y.sum() <= 0:
            continue
        s = np.array([r[1] for r in rows])
        values.append(_ndcg(y, s, k))
    if not values:
        return float("nan"), 0
    return float(np.mean(values)), len(values)


def user_ndcg_or_reason(user_ids, labels, scores, k: int = NDCG_K) -> tuple[float | None, int | None, str | None]:
    """`user_ndcg`, or (None, None, reason) when some records carry no user id (e.g. TALLRec's published Book
    records): without users there is no per-user ranking. Returns (value, users ranked, reason)."""
    missing = sum(u is None for u in user_ids)
    if missing:
        return None, None, f"not computed: {missing} of {len(user_ids)} records carry no user_id"
    value, n_users = user_ndcg(user_ids, labels, scores, k)
    return value, n_users, None


def json_safe(value):
    """NaN -> None so metrics.json stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
