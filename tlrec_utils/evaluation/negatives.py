"""Seeded negative sampling for the sampled NDCG@10, shared by run_eval and the baselines.

A record's negatives depend only on (seed, record index, catalog, the record's history and target), so
every method evaluated on the same test file ranks the target among exactly the same items.
"""

from __future__ import annotations

import numpy as np

from .metrics import NUM_NEGATIVES


class CatalogTooSmall(ValueError):
    """A record's catalog minus its history and target holds fewer items than the negatives asked for."""

    def __init__(self, index: int, available: int, wanted: int):
        self.index, self.available, self.wanted = index, available, wanted
        super().__init__(f"record {index}: the catalog has {available} items outside its history and target, "
                         f"fewer than --num_negatives {wanted}")


def sample_negatives(records: list[dict], catalog_ids, num_negatives: int = NUM_NEGATIVES, seed: int = 0):
    """For each record whose target is liked: `num_negatives` item ids drawn without replacement from the
    catalog minus the record's history and target; None for disliked targets (not ranked).

    Records need structured fields (`history`, `target`, `label`). Raises CatalogTooSmall (a ValueError)
    when the catalog is too small for a record.
    """
    catalog = np.array(sorted(set(map(str, catalog_ids))))
    catalog_set = set(catalog.tolist())
    out = []
    for index, rec in enumerate(records):
        if not rec.get("label"):
            out.append(None)
            continue
        excluded = {str(h["item_id"]) for h in rec["history"]} | {str(rec["target"]["item_id"])}
        available = len(catalog_set - excluded)
        if available < num_negatives:
            raise CatalogTooSmall(index, available, num_negatives)
        rng = np.random.default_rng([seed, index])
        chosen: list[str] = []
        # rejection sampling: the exclusion set (11 items) is tiny next to any real catalog
        while len(chosen) < num_negatives:
            need = num_negatives - len(chosen)
            for item in rng.choice(catalog, size=need * 2, replace=False if need * 2 <= len(catalog) else True):
                if item not in excluded and item not in chosen:
                    chosen.append(str(item))
                    if len(chosen) == num_negatives:
                        break
        out.append(chosen)
    return out
