"""No-LLM reference baselines the paper lacks: simple statistics of the train file, and a logistic
regression on them. They show how much of a method's score any recommender gets for free.

Interactions counted from train records = every target (with its label) and every history item (with its
liked flag). A window dataset repeats each interaction in up to 10 windows; that rescales counts for all
items alike, so rates and popularity ranks are unaffected.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

# pseudo-count pulling the like-rate of rarely seen items toward the global rate
LIKE_RATE_PRIOR = 5.0


def user_like_share(record: dict) -> float:
    """Share of liked items in the record's own history (0.5 for an empty history)."""
    history = record.get("history") or []
    if not history:
        return 0.5
    return sum(bool(h["liked"]) for h in history) / len(history)


class InteractionStats:
    """Per-item like and interaction counts from train records."""

    def __init__(self, records: list[dict]):
        self.likes: Counter = Counter()
        self.total: Counter = Counter()
        for rec in records:
            for h in rec["history"]:
                self.total[h["item_id"]] += 1
                self.likes[h["item_id"]] += int(bool(h["liked"]))
            self.total[rec["target"]["item_id"]] += 1
            self.likes[rec["target"]["item_id"]] += int(rec["label"])
        n = sum(self.total.values())
        self.global_rate = sum(self.likes.values()) / n if n else 0.5
        self.max_count = max(self.total.values(), default=0)

    def like_rate(self, item_id: str, exclude_label: int | None = None) -> float:
        """Smoothed like-rate; `exclude_label` removes one interaction with that label (the record's own
        target, so a train record's feature never contains its own label)."""
        likes, total = self.likes[item_id], self.total[item_id]
        if exclude_label is not None:
            likes, total = likes - int(exclude_label), total - 1
        return (likes + LIKE_RATE_PRIOR * self.global_rate) / (total + LIKE_RATE_PRIOR)

    def popularity(self, item_id: str, exclude: bool = False) -> float:
        """Interaction count scaled to [0, 1] by the most popular item's count."""
        count = self.total[item_id] - int(exclude)
        return count / self.max_count if self.max_count else 0.0


class UserLikeShare:
    """Score = the user's share of liked history items (no training)."""

    def fit(self, train_records, valid_records=None):
        return self

    def predict(self, records):
        return np.array([user_like_share(r) for r in records])


class _TargetItemStatistic:
    """Score = a statistic (`score`) of the target item in train."""

    def fit(self, train_records, valid_records=None):
        self.stats = InteractionStats(train_records)
        return self

    def predict(self, records):
        return np.array([self.score(r["target"]["item_id"]) for r in records])


class ItemLikeRate(_TargetItemStatistic):
    """Score = the target item's smoothed like-rate in train."""

    def score(self, item_id: str) -> float:
        return self.stats.like_rate(item_id)


class ItemPopularity(_TargetItemStatistic):
    """Score = the target item's interaction count in train (scaled to [0, 1])."""

    def score(self, item_id: str) -> float:
        return self.stats.popularity(item_id)


class HeuristicLogReg:
    """Logistic regression (scikit-learn) on user like-share, item like-rate and log item popularity.

    Train features leave the record's own target out of its item statistics (no label leak)."""

    def fit(self, train_records, valid_records=None):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.stats = InteractionStats(train_records)
        labels = np.array([r["label"] for r in train_records])
        self.constant = None
        if len(np.unique(labels)) < 2:  # e.g. a tiny K-shot sample with one class: nothing to fit
            self.constant = float(labels.mean()) if labels.size else 0.5
            return self
        features = self._features(train_records, leave_out=True)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        self.model.fit(features, labels)
        return self

    def _features(self, records, leave_out=False):
        rows = []
        for r in records:
            item = r["target"]["item_id"]
            own = int(r["label"]) if leave_out else None
            count = self.stats.total[item] - int(leave_out)
            rows.append([user_like_share(r), self.stats.like_rate(item, exclude_label=own), np.log1p(count)])
        return np.array(rows, dtype=np.float64)

    def predict(self, records):
        if self.constant is not None:
            return np.full(len(records), self.constant)
        return self.model.predict_proba(self._features(records))[:, 1]
