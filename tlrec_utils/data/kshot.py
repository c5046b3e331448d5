"""K-shot samples: K records drawn reproducibly from a train pool (shared by run_prepare_data, run_tuning and
run_baselines).

The draw is the TLRec authors' (ljy2222/TLRec rec_tuning.py, commits 561abcf lines 185-187 and df4a416 lines
44-46): `train.shuffle(seed=seed).select(range(K))` of HF `datasets`, whose `Dataset.shuffle` is
`np.random.default_rng(seed).permutation(len(self))` followed by `select` (huggingface/datasets
src/datasets/arrow_dataset.py, commit 1435bdae). So the K records are the first K of one seeded permutation of
the pool: for one seed the 16 records are the first 16 of the 64, which are the first 64 of the 256.
`datasets` is not a dependency: numpy gives the same permutation (tests/test_prepare_data.py pins indices
computed once with datasets 5.2.0).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError


def k_shot_indices(n: int, k: int, seed: int) -> list[int]:
    """Indices of the K records `Dataset.shuffle(seed).select(range(K))` picks from a pool of n, in that order."""
    return np.random.default_rng(seed).permutation(n)[:k].tolist()


def sample_k_shot(records: list[dict], k: int, seed: int, source: str = "train pool") -> list[dict]:
    """K records: the first K of `numpy.random.default_rng(seed).permutation(len(records))`, in that order
    (nested across K for one seed; identical to the authors' `shuffle(seed).select(range(K))`)."""
    if k < 1:
        raise InputError(f"{source}: K must be at least 1, got {k}")
    if k > len(records):
        raise InputError(f"{source}: K={k} is larger than the pool of {len(records)} records")
    return [records[i] for i in k_shot_indices(len(records), k, seed)]


def authors_order(records: list[dict], seed: int) -> list[dict]:
    """The drawn records in the order the authors hand them to the Trainer: their rec_tuning.py shuffles the K
    records once more with the same seed (`train_data["train"].shuffle(seed=seed)`, line 187 @561abcf, line 46
    @df4a416), i.e. `default_rng(seed).permutation(K)` of them."""
    return [records[i] for i in np.random.default_rng(seed).permutation(len(records)).tolist()]


def k_shot_filename(k: int, seed: int) -> str:
    return f"train_k{k}_seed{seed}.json"
