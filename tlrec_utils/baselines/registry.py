"""The baselines run_baselines.py trains and the experiment grids name: one table, `BASELINES`, from which the
--model choices, help text and the docs' baseline table (`markdown_table()`) come.

A new baseline: its module (a class with `fit(train_records, valid_records) -> self` and
`predict(records) -> scores`, optionally `settings() -> dict` for metrics.json) and one line in `BASELINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

from ..errors import InputError
from . import heuristics
from .sequential import SequentialConfig, SequentialRecommender
from .text_encoder import default_encoder_path

# run_baselines' flags for the sequential models, with their defaults (SequentialConfig's)
SEQUENTIAL_HYPERPARAMETERS = {f.name: f.default for f in fields(SequentialConfig)
                              if f.name in ("epochs", "dim", "lr", "batch_size", "dro_alpha", "dro_beta", "dro_gamma")}


@dataclass(frozen=True)
class Baseline:
    factory: Callable  # (seed=, text_encoder=, **hyperparameters) -> an unfitted model
    what: str  # one line for the docs
    hyperparameters: dict = field(default_factory=dict)  # the settings it takes, with their defaults


def _statistic(model_class) -> Callable:
    """A model without settings: seed, text encoder and hyperparameters do not apply."""
    return lambda seed=0, text_encoder=None, **_: model_class()


def _sequential(dro: bool, text: bool = False) -> Callable:
    def make(seed=0, text_encoder=None, **hyperparameters):
        encoder = (text_encoder or default_encoder_path()) if text else None
        return SequentialRecommender(SequentialConfig(seed=seed, dro=dro, **hyperparameters), text_encoder_path=encoder)

    return make


_DRO = ("dro_alpha", "dro_beta", "dro_gamma")
_SASREC_HP = {k: v for k, v in SEQUENTIAL_HYPERPARAMETERS.items() if k not in _DRO}

BASELINES: dict[str, Baseline] = {
    "sasrec": Baseline(_sequential(dro=False),
                       "SASRec over item ids with liked/disliked flags, BCE on the target's label", _SASREC_HP),
    "dros": Baseline(_sequential(dro=True), "the same backbone + the DROS distributionally robust loss term",
                     SEQUENTIAL_HYPERPARAMETERS),
    "dros-bert": Baseline(_sequential(dro=True, text=True),
                          "DROS with item vectors projected from a frozen BERT-style text encoder (--text_encoder)",
                          SEQUENTIAL_HYPERPARAMETERS),
    "user-like-share": Baseline(_statistic(heuristics.UserLikeShare),
                                "the user's share of liked history items (no training)"),
    "item-like-rate": Baseline(_statistic(heuristics.ItemLikeRate), "the target item's smoothed like-rate in train"),
    "item-popularity": Baseline(_statistic(heuristics.ItemPopularity),
                                "the target item's interaction count in train"),
    "heuristic-logreg": Baseline(_statistic(heuristics.HeuristicLogReg),
                                 "logistic regression on the three statistics above"),
}


def make_model(name: str, seed: int = 0, text_encoder=None, **hyperparameters):
    """A fresh, unfitted baseline with `fit(train, valid)` and `predict(records) -> scores`."""
    if name not in BASELINES:
        raise InputError(f"unknown baseline {name!r} (choose from {', '.join(BASELINES)})")
    return BASELINES[name].factory(seed=seed, text_encoder=text_encoder, **hyperparameters)


def baseline_help() -> str:
    return "one of " + ", ".join(BASELINES)


def markdown_table() -> str:
    """The docs' baseline table."""
    rows = ["| --model | what | settings (default) |", "|---|---|---|"]
    for name, spec in BASELINES.items():
        settings = ", ".join(f"--{k} {v:g}" for k, v in spec.hyperparameters.items()) or "none"
        rows.append(f"| {name} | {spec.what} | {settings} |")
    return "\n".join(rows)
