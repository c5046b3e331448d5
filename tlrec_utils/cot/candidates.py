"""Candidate sets by user-filtering (NIR, Wang & Lim 2023), as used for TLRec's CoT data.

For a user u (a window of watched items):
- similarity sim(u, v) = number of watched items u and v share;
- neighbours = the `neighbor_num` users with the largest similarity (ties: earlier record first), never u
  itself and, by default, no other window of the same `user_id` (a real user's later windows contain the
  ground truth, so letting them act as neighbours leaks it; `allow_same_user=True` is the authors' behaviour);
- every item a neighbour watched gets the neighbour's share of the similarity mass, sim(u, v) / sum of
  the neighbours' sims, summed over neighbours; items u already watched are dropped; the `candidate_num`
  items with the largest weight are the candidate set (ties: smaller item code first).

Everything is sparse and chunked (a block of users times all users at a time, top-k per row), so the
full Netflix Prize scale (480k users) fits in memory; the authors' dense user x user product does not.
Ranking uses integer similarity sums, so results are exact and identical to a dense brute force.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


@dataclass
class Interactions:
    matrix: sp.csr_matrix  # users x items, 1 = watched
    item_ids: list[str]  # item code -> item id
    user_codes: np.ndarray  # user row -> code of its user_id (windows of one user share a code)


@dataclass
class CandidateSets:
    """Per query user (row of `query_rows`): arrays padded with -1 (items/neighbours) and 0 (weights)."""

    query_rows: np.ndarray
    items: np.ndarray  # (n_query, candidate_num) item codes, best first
    weights: np.ndarray  # (n_query, candidate_num) share of the similarity mass
    neighbors: np.ndarray  # (n_query, neighbor_num) user rows, most similar first
    similarities: np.ndarray  # (n_query, neighbor_num) shared-item counts
    same_user_neighbors: np.ndarray  # (n_query,) neighbours that are other windows of the same user_id

    def item_list(self, i: int) -> list[int]:
        return [int(c) for c in self.items[i] if c >= 0]


def build_interactions(histories: list[list[str]], user_ids: list[str]) -> Interactions:
    """Users x items binary matrix from each user's watched item ids (item codes in sorted id order)."""
    item_ids = sorted({str(i) for h in histories for i in h})
    code = {item: c for c, item in enumerate(item_ids)}
    indptr = np.zeros(len(histories) + 1, dtype=np.int64)
    np.cumsum([len(h) for h in histories], out=indptr[1:])
    indices = np.fromiter((code[str(i)] for h in histories for i in h), dtype=np.int32, count=int(indptr[-1]))
    _, user_codes = np.unique(np.asarray([str(u) for u in user_ids]), return_inverse=True)
    return Interactions(_binary_csr(indptr, indices, len(histories), len(item_ids)), item_ids, user_codes)


def _binary_csr(indptr, indices, n_rows, n_cols) -> sp.csr_matrix:
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.int32), indices, indptr), shape=(n_rows, n_cols))
    matrix.sum_duplicates()  # an item watched twice in one window counts once
    matrix.data[:] = 1
    return matrix


def topk_per_row(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, k: int, n_cols: int):
    """Top-k positive entries of each row of a CSR block by (value desc, column asc); values are ints >= 0.

    Returns (row, col, value) arrays ordered by row, then rank. One int64 sort of the whole block (the row
    is the key's leading part, so each row's entries stay in their own slice) instead of a loop over rows;
    only the kept entries are decoded."""
    n_rows = len(indptr) - 1
    if len(data) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    max_value = int(data.max())
    span = (max_value + 1) * n_cols
    if n_rows * span >= 2**63:
        raise ValueError("block too large for an int64 sort key: use a smaller chunk_size")
    key = max_value - data.astype(np.int64)
    key *= n_cols
    key += indices
    key += np.repeat(np.arange(n_rows, dtype=np.int64) * span, np.diff(indptr))
    key.sort()
    take = indptr[:-1, None] + np.arange(k)
    take = take[take < indptr[1:, None]]
    kept = key[take]
    row = kept // span
    rest = kept - row * span
    value = max_value - rest // n_cols
    col = rest % n_cols
    positive = value > 0
    return row[positive], col[positive], value[positive]


def _scatter(rows, values, n_rows, width, fill, dtype):
    out = np.full((n_rows, width), fill, dtype=dtype)
    if len(rows):
        row_start = np.searchsorted(rows, np.arange(n_rows))
        out[rows, np.arange(len(rows)) - row_start[rows]] = values
    return out


def user_filtering_candidates(
    interactions: Interactions,
    query_rows=None,
    neighbor_num: int = 12,
    candidate_num: int = 19,
    allow_same_user: bool = False,
    chunk_size: int = 2000,
    progress: bool = False,
    n_jobs: int | None = None,
) -> CandidateSets:
    """Candidate sets for `query_rows` (default: every user), all users acting as possible neighbours.

    `n_jobs` threads (default: the CPU cores, at most 8) work on blocks of `chunk_size` users."""
    n_jobs = n_jobs or min(8, os.cpu_count() or 1)
    matrix = interactions.matrix
    n_users, n_items = matrix.shape
    query_rows = np.arange(n_users) if query_rows is None else np.asarray(query_rows, dtype=np.int64)
    by_item = matrix.T.tocsr()  # items x users
    user_codes = interactions.user_codes
    n_query = len(query_rows)
    items = np.full((n_query, candidate_num), -1, dtype=np.int32)
    weights = np.zeros((n_query, candidate_num), dtype=np.float32)
    neighbors = np.full((n_query, neighbor_num), -1, dtype=np.int32)
    similarities = np.zeros((n_query, neighbor_num), dtype=np.int32)
    same_user = np.zeros(n_query, dtype=np.int32)

    def fill_block(start: int) -> None:  # writes its own rows of the output arrays only
        block_rows = query_rows[start : start + chunk_size]
        n_block = len(block_rows)
        own = matrix[block_rows]
        sims = own @ by_item  # block x users: shared watched items
        counts = np.diff(sims.indptr)
        if allow_same_user:
            drop = sims.indices == np.repeat(block_rows, counts)  # never the user itself
        else:  # no window of the same user_id, itself included
            drop = user_codes[sims.indices] == np.repeat(user_codes[block_rows], counts)
        sims.data[drop] = 0  # zeros rank last and are never kept
        nb_row, nb_col, nb_sim = topk_per_row(sims.indptr, sims.indices, sims.data, neighbor_num, n_users)
        block = slice(start, start + n_block)
        neighbors[block] = _scatter(nb_row, nb_col, n_block, neighbor_num, -1, np.int32)
        similarities[block] = _scatter(nb_row, nb_sim, n_block, neighbor_num, 0, np.int32)
        same_user[block] = np.bincount(
            nb_row, weights=user_codes[nb_col] == user_codes[block_rows[nb_row]], minlength=n_block
        )
        # item weight numerators: sum of the sims of the neighbours who watched the item
        neighbor_matrix = sp.csr_matrix((nb_sim, (nb_row, nb_col)), shape=(n_block, n_users))
        scores = (neighbor_matrix @ matrix).tocsr()
        scores = scores - scores.multiply(own)  # never recommend what the user already watched
        it_row, it_col, it_score = topk_per_row(scores.indptr, scores.indices, scores.data, candidate_num, n_items)
        mass = similarities[block].sum(axis=1)
        items[block] = _scatter(it_row, it_col, n_block, candidate_num, -1, np.int32)
        weights[block] = _scatter(
            it_row, it_score / np.maximum(mass[it_row], 1), n_block, candidate_num, 0, np.float32
        )

    starts = range(0, n_query, chunk_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(starts), desc="candidate sets", unit="chunk")
    # scipy's sparse products and numpy's sort release the GIL: threads use all cores, memory stays shared
    with ThreadPoolExecutor(max_workers=max(1, n_jobs)) as pool:
        for _ in pool.map(fill_block, starts):
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return CandidateSets(query_rows, items, weights, neighbors, similarities, same_user)
