"""CoT users and their candidate sets (paper Section 4.1): the prepared train records whose target is liked,
each with the candidates user filtering proposes (tlrec_utils.cot.candidates) in the order the teacher sees them,
and the context of its three prompts. Built lazily: the full Netflix Prize has millions of users."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np

from .. import prompts
from ..errors import InputError
from .candidates import build_interactions, user_filtering_candidates

logger = logging.getLogger(__name__)


@dataclass
class CotUser:
    key: str
    index: int  # record index in train.json
    user_id: str
    history: list[dict]
    target: dict
    candidates: list[dict]  # {item_id, title, weight}, in the order shown to the teacher
    context: str
    target_inserted: bool = False
    shown: dict = field(default_factory=dict)  # item text -> the text the teacher sees, where they differ

    def show(self, text: str) -> str:
        return self.shown.get(text, text)



def detect_kind(records: list[dict]) -> str:
    """The item noun of the first record's rec-tuning instruction (movie when it is not one)."""
    return (prompts.rec_noun(records[0]["instruction"]) if records else None) or "movie"


def user_key(index: int, record: dict) -> str:
    return f"{index}:{record['user_id']}:{record['target']['item_id']}"


class LazyUsers:
    """The CoT users in train order, each built when asked for: prompts for every user of the full Netflix
    Prize would not fit in memory at once."""

    def __init__(self, rows: list[int], keys: list[str], make):
        self.rows, self.keys, self._make = rows, keys, make

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, j: int) -> CotUser:
        return self._make(self.rows[j])

    def pending(self, done) -> list[int]:
        return [j for j, key in enumerate(self.keys) if key not in done]


def build_users(records: list[dict], cfg, kind: str):
    """CoT users (liked-target records whose true next item is a candidate, or inserted with
    --ensure_target) and candidate-set diagnostics. `cfg`: the run's cot.CotConfig."""
    liked = [i for i, r in enumerate(records) if r.get("label") == 1 and "history" in r]
    unstructured = sum(1 for r in records if "history" not in r)
    if not liked:
        raise InputError(f"{cfg.data_dir}/train.json: no record with a liked target and structured history")
    seen = liked[: cfg.max_users] if cfg.max_users is not None else liked
    no_user_id = [i for i in liked if records[i].get("user_id") in (None, "")]
    if no_user_id:  # published TALLRec files: windows of one person cannot be told apart
        logger.warning(
            "%d liked records have no user_id (e.g. record %d): each counts as its own user, so a person's "
            "other windows cannot be excluded from its neighbours",
            len(no_user_id), no_user_id[0],
        )  # fmt: skip
        for i in no_user_id:
            records[i]["user_id"] = f"record-{i}"
    # the neighbour pool: every liked window (the users); candidates only for the users seen
    interactions = build_interactions(
        [[h["item_id"] for h in records[i]["history"]] for i in liked], [records[i]["user_id"] for i in liked]
    )
    code = {item: c for c, item in enumerate(interactions.item_ids)}
    titles = {}
    for r in records:
        for h in r.get("history", []):
            titles.setdefault(h["item_id"], h["title"])
    chosen, diagnostics = candidate_sets(interactions, code, records, seen, cfg)
    target_codes = np.array([code.get(records[i]["target"]["item_id"], -2) for i in seen])
    in_set = (chosen.items == target_codes[:, None]).any(axis=1)
    kept = np.arange(len(seen)) if cfg.ensure_target else np.flatnonzero(in_set)

    def make_user(u: int) -> CotUser:
        i, rec = seen[u], records[seen[u]]
        cand = [
            {"item_id": interactions.item_ids[c], "title": titles[interactions.item_ids[c]], "weight": float(w)}
            for c, w in zip(chosen.items[u], chosen.weights[u])
            if c >= 0
        ]
        if not in_set[u]:  # only with --ensure_target
            if len(cand) >= cfg.candidate_num:
                cand = cand[: cfg.candidate_num - 1]  # drop the weakest
            cand.append({**rec["target"], "weight": 0.0})
        rng = np.random.default_rng([cfg.seed, i])
        cand = [cand[j] for j in rng.permutation(len(cand))]  # the teacher must not see the ranking
        watched, shown = shown_items(rec["history"], [c["title"] for c in cand] + [rec["target"]["title"]],
                                     cfg.context_style)
        return CotUser(
            key=user_key(i, rec),
            index=i,
            user_id=str(rec["user_id"]),
            history=rec["history"],
            target=rec["target"],
            candidates=cand,
            context=prompts.cot_context([shown.get(c["title"], c["title"]) for c in cand], watched, kind),
            target_inserted=not in_set[u],
            shown=shown,
        )

    users = LazyUsers([int(u) for u in kept], [user_key(seen[u], records[seen[u]]) for u in kept], make_user)
    stats = {
        "records": len(records),
        "records_without_structure": unstructured,
        "liked_windows": len(liked),
        "liked_windows_without_user_id": len(no_user_id),
        "users_seen": len(seen),
        "skipped_target_not_in_candidates": len(seen) - len(kept),
        "target_inserted": int((~in_set[kept]).sum()),
        **diagnostics,
    }
    return users, stats, interactions, code


def candidate_sets(interactions, code: dict, records: list[dict], seen: list[int], cfg):
    """The candidate sets of the users `seen` (records' indices), with and without a user's own other windows
    as neighbours: (the sets --allow_same_user_neighbors asks for, the target-in-candidates rates both ways)."""
    diagnostics = {}
    chosen = None
    for allow in (True, False):
        cands = user_filtering_candidates(
            interactions,
            query_rows=np.arange(len(seen)),
            neighbor_num=cfg.neighbor_num,
            candidate_num=cfg.candidate_num,
            allow_same_user=allow,
        )
        in_set = [code.get(records[i]["target"]["item_id"], -2) in cands.items[u] for u, i in enumerate(seen)]
        name = "with_same_user_neighbors" if allow else "other_users_only"
        diagnostics[f"target_in_candidates_rate_{name}"] = round(float(np.mean(in_set)), 4)
        if allow:  # how many of the 12 neighbours are the user's own other windows when allowed
            diagnostics["mean_same_user_neighbors_when_allowed"] = round(float(cands.same_user_neighbors.mean()), 3)
        if allow == cfg.allow_same_user_neighbors:
            chosen = cands
    return chosen, diagnostics


CONTEXT_STYLES = ("history", "authors")
FIRST_QUOTED = re.compile(r'^"(.*?)"')


def shown_items(history: list[dict], other_titles: list[str], style: str) -> tuple[list[str], dict[str, str]]:
    """(watched item texts in the order the teacher sees them, {item text: shown text} where they differ).

    history: the window's items oldest first, as they are. authors: as the authors' generate_data.py builds them
    from a record's text: the quoted item texts of the preference list, then of the unpreference list, reversed,
    each cut to its first quoted span (a book `"Title" written by Author` shows as `"Title"`)."""
    if style == "history":
        return [h["title"] for h in history], {}
    ordered = [h for h in history if h["liked"]] + [h for h in history if not h["liked"]]
    shown = {}
    for text in [h["title"] for h in history] + other_titles:
        m = FIRST_QUOTED.match(text)
        if m:
            shown[text] = m.group(1)
    return [shown.get(h["title"], h["title"]) for h in reversed(ordered)], shown
