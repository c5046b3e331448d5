"""Baselines scored exactly like run_eval (same splits, metrics, sampled negatives).

| name              | what                                                                          |
|-------------------|-------------------------------------------------------------------------------|
| sasrec            | SASRec over item ids with liked/disliked flags, BCE on the target's label      |
| dros              | the same backbone + the DROS distributionally robust loss term                 |
| dros-bert         | DROS with item vectors projected from a frozen BERT-style text encoder         |
| user-like-share   | the user's share of liked history items (no training)                         |
| item-like-rate    | the target item's smoothed like-rate in train                                 |
| item-popularity   | the target item's interaction count in train                                  |
| heuristic-logreg  | logistic regression on the three statistics above                             |

TALLRec (rec-tuning with no source data and no CoT) is run by the pipeline, not here.
"""

from __future__ import annotations

from ..errors import InputError

SEQUENTIAL = ("sasrec", "dros", "dros-bert")
HEURISTIC = ("user-like-share", "item-like-rate", "item-popularity", "heuristic-logreg")
BASELINES = SEQUENTIAL + HEURISTIC


def make_model(name: str, seed: int = 0, text_encoder=None, **sequential_overrides):
    """A fresh, unfitted baseline with `fit(train, valid)` and `predict(records) -> scores`."""
    if name in HEURISTIC:
        from . import heuristics

        return {
            "user-like-share": heuristics.UserLikeShare,
            "item-like-rate": heuristics.ItemLikeRate,
            "item-popularity": heuristics.ItemPopularity,
            "heuristic-logreg": heuristics.HeuristicLogReg,
        }[name]()
    if name in SEQUENTIAL:
        from .sequential import SequentialConfig, SequentialRecommender

        cfg = SequentialConfig(seed=seed, dro=name != "sasrec", **sequential_overrides)
        encoder = None
        if name == "dros-bert":
            from .text_encoder import default_encoder_path

            encoder = text_encoder or default_encoder_path()
        return SequentialRecommender(cfg, text_encoder_path=encoder)
    raise InputError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
