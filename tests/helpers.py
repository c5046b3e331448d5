"""Small synthetic data for tests: records with a planted signal, written by the tests themselves."""

from __future__ import annotations

import math
import random

from tlrec_utils.data.records import build_record

GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Western"]


def synthetic_catalog(n_items: int = 120, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    words = ["Dark", "Love", "Night", "Star", "River", "Ghost", "Iron", "Summer", "City", "Storm", "Yes", "No"]
    catalog = {}
    for i in range(n_items):
        genre = GENRES[i % len(GENRES)]
        title = f"{genre} {rng.choice(words)} {rng.choice(words)} {i} ({1970 + i % 40})"
        catalog[str(i)] = title
    return catalog


def synthetic_records(n: int = 200, seed: int = 0, history_len: int = 10, n_users: int = 40, kind: str = "movie"):
    """Records whose label is predictable: users like one genre; the target is liked iff it is that genre."""
    rng = random.Random(seed)
    catalog = synthetic_catalog(seed=seed)
    items = list(catalog)
    records = []
    for r in range(n):
        user = r % n_users
        fav = GENRES[user % len(GENRES)]
        hist_ids = rng.sample(items, history_len + 1)
        target_id = hist_ids.pop()
        history = [
            {"item_id": i, "title": catalog[i], "liked": catalog[i].startswith(fav)} for i in hist_ids
        ]
        label = int(catalog[target_id].startswith(fav))
        records.append(
            build_record(
                user_id=f"u{user}",
                history=history,
                target={"item_id": target_id, "title": catalog[target_id]},
                label=label,
                kind=kind,
                timestamp=1000 + r,
            )
        )
    return records, catalog


GENRE_APPEAL = dict(zip(GENRES, (2.0, 1.2, 0.4, -0.4, -1.2, -2.0)))  # log-odds of a like, by the item's genre
FAVOURITE_BONUS = 1.5  # added log-odds when the item is of the user's favourite genre


def planted_probability_records(n: int, seed: int, history_len: int = 3, n_users: int = 40):
    """Records whose labels are drawn with known probabilities, P(like) = sigmoid(appeal of the item's genre
    + a bonus for the user's favourite genre), over the titles of `synthetic_catalog()` (which the tiny
    tokenizer knows). Returns (records, the probability each record's label was drawn with)."""
    rng = random.Random(seed)
    catalog = synthetic_catalog()
    items = list(catalog)
    records, probabilities = [], []
    for r in range(n):
        user = rng.randrange(n_users)
        favourite = GENRES[user % len(GENRES)]

        def probability(item_id, favourite=favourite):
            genre = catalog[item_id].split()[0]
            return 1 / (1 + math.exp(-GENRE_APPEAL[genre] - FAVOURITE_BONUS * (genre == favourite)))

        hist_ids = rng.sample(items, history_len + 1)
        target_id = hist_ids.pop()
        history = [{"item_id": i, "title": catalog[i], "liked": rng.random() < probability(i)} for i in hist_ids]
        p = probability(target_id)
        label = int(rng.random() < p)
        target = {"item_id": target_id, "title": catalog[target_id]}
        records.append(build_record(f"u{user}", history, target, label, "movie", timestamp=r))
        probabilities.append(p)
    return records, probabilities
