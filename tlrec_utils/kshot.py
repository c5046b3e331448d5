"""K-shot samples: K records drawn reproducibly from a train pool (shared by run_prepare_data and run_tuning)."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def sample_k_shot(records: list[dict], k: int, seed: int, source: str = "train pool") -> list[dict]:
    """K records drawn without replacement with `numpy.random.default_rng(seed)`, in drawn order.

    The same (records, k, seed) always gives the same sample, on every machine."""
    if k < 1:
        raise InputError(f"{source}: K must be at least 1, got {k}")
    if k > len(records):
        raise InputError(f"{source}: K={k} is larger than the pool of {len(records)} records")
    idx = np.random.default_rng(seed).choice(len(records), size=k, replace=False)
    return [records[i] for i in idx]


def k_shot_filename(k: int, seed: int) -> str:
    return f"train_k{k}_seed{seed}.json"
