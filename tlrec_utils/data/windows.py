"""Sliding windows over users' rating sequences and the in-order split (the TALLRec/TLRec procedure).

Ratings are taken in file order and grouped by user in order of first appearance; each user's ratings are
sorted by timestamp (stable: ties keep file order); a window of `history_len` past interactions slides over
each sequence (history = the previous `history_len` items, target = the next); all users' windows are
concatenated, the last `max_windows` kept and split in order (train, valid, test). Everything works on
numpy arrays of row indices, so it scales to the full Netflix data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError


def parse_split_ratio(text: str) -> tuple[int, int, int]:
    """'8:1:1' -> (8, 1, 1); InputError for anything else (three non-negative integers, positive sum)."""
    parts = str(text).split(":")
    try:
        ratio = tuple(int(p) for p in parts)
    except ValueError:
        ratio = ()
    if len(ratio) != 3 or min(ratio) < 0 or sum(ratio) == 0:
        raise InputError(f"--split_ratio {text!r}: expected three non-negative integers like 8:1:1")
    return ratio


def split_sizes(n: int, ratio: tuple[int, int, int]) -> tuple[int, int, int]:
    """Sizes of the in-order train/valid/test parts: floor of the cumulative shares (10,000 at 8:1:1 ->
    8,000/1,000/1,000)."""
    total = sum(ratio)
    cut1 = n * ratio[0] // total
    cut2 = n * (ratio[0] + ratio[1]) // total
    return cut1, cut2 - cut1, n - cut2


def sliding_windows(users, order_key, history_len: int, max_windows: int | None):
    """Row indices of every window: (history_rows [W, history_len], target_rows [W]), in output order.

    `users`: one user id per rating row (file order); `order_key`: what sorts a user's ratings (timestamps,
    or row numbers / a seeded permutation where there are none)."""
    if history_len < 1:
        raise InputError(f"--history_len must be at least 1, got {history_len}")
    user_codes, _ = pd.factorize(np.asarray(users), sort=False)  # codes in order of first appearance
    by_time = np.argsort(np.asarray(order_key), kind="stable")
    order = by_time[np.argsort(user_codes[by_time], kind="stable")]
    sorted_users = user_codes[order]
    n = len(order)
    block_start = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1] if n else np.zeros(0, dtype=np.int64)
    block_len = np.diff(np.r_[block_start, n])
    position = np.arange(n) - np.repeat(block_start, block_len)  # index of a rating in its user's sequence
    targets = np.flatnonzero(position >= history_len)
    if max_windows:
        targets = targets[-max_windows:]
    history = order[targets[:, None] - history_len + np.arange(history_len)[None, :]]
    return history, order[targets]


def negative_sampler(users, items, pool, n: int, seed: int):
    """For implicit feedback: a function user -> `n` distinct items of `pool` (in pool order, e.g. the rated
    catalog) that the user never interacted with (`users`/`items`: one pair per interaction row), drawn uniformly
    by one `numpy.random.default_rng(seed)` in call order, so the same windows get the same negatives."""
    rng = np.random.default_rng(seed)
    pool = [str(i) for i in pool]
    seen = pd.Series(np.asarray(items, dtype=object).astype(str)).groupby(np.asarray(users), sort=False).agg(set)

    def draw(user) -> list[str]:
        own = seen.get(user, set())
        if len(pool) - len(own) < n:
            raise InputError(f"user {user}: fewer than --negatives={n} items it never interacted with to draw from")
        out: list[str] = []
        while len(out) < n:
            item = pool[int(rng.integers(len(pool)))]
            if item not in own and item not in out:
                out.append(item)
        return out

    return draw
