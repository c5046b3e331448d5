"""User-filtering candidate sets: the sparse chunked computation against a dense brute force."""

import numpy as np
import pytest

from tlrec_utils.cot.candidates import build_interactions, topk_per_row, user_filtering_candidates


def random_windows(seed, n_users=70, n_items=25, n_people=20):
    rng = np.random.default_rng(seed)
    histories = []
    for _ in range(n_users):
        length = int(rng.integers(3, 10))
        # a few popular items make many ties and several similarity levels
        histories.append([f"i{int(x)}" for x in rng.choice(n_items, size=length, p=_popularity(n_items))])
    histories.append(["lonely-a", "lonely-b"])  # shares nothing: no neighbours, no candidates
    user_ids = [f"p{int(rng.integers(n_people))}" for _ in histories]
    return histories, user_ids


def _popularity(n):
    p = 1.0 / np.arange(1, n + 1)
    return p / p.sum()


def brute_force(histories, user_ids, neighbor_num, candidate_num, allow_same_user):
    items = sorted({i for h in histories for i in h})
    dense = np.zeros((len(histories), len(items)), dtype=np.int64)
    for u, h in enumerate(histories):
        for i in h:
            dense[u, items.index(i)] = 1
    sims = dense @ dense.T
    out = []
    for u in range(len(histories)):
        allowed = [
            v
            for v in range(len(histories))
            if v != u and sims[u, v] > 0 and (allow_same_user or user_ids[v] != user_ids[u])
        ]
        nbrs = sorted(allowed, key=lambda v: (-sims[u, v], v))[:neighbor_num]
        mass = sum(sims[u, v] for v in nbrs)
        score = sum(sims[u, v] * dense[v] for v in nbrs) if nbrs else np.zeros(len(items), dtype=np.int64)
        cands = [j for j in range(len(items)) if score[j] > 0 and not dense[u, j]]
        cands = sorted(cands, key=lambda j: (-score[j], j))[:candidate_num]
        out.append((nbrs, [items[j] for j in cands], [score[j] / mass for j in cands]))
    return out


@pytest.mark.parametrize("allow_same_user", [False, True])
@pytest.mark.parametrize("seed,neighbor_num,candidate_num,chunk_size", [(0, 12, 19, 2000), (1, 3, 5, 7), (2, 1, 2, 1)])
def test_matches_dense_brute_force(seed, neighbor_num, candidate_num, chunk_size, allow_same_user):
    histories, user_ids = random_windows(seed)
    inter = build_interactions(histories, user_ids)
    got = user_filtering_candidates(
        inter,
        neighbor_num=neighbor_num,
        candidate_num=candidate_num,
        allow_same_user=allow_same_user,
        chunk_size=chunk_size,
    )
    expected = brute_force(histories, user_ids, neighbor_num, candidate_num, allow_same_user)
    for u, (nbrs, cands, weights) in enumerate(expected):
        assert [int(v) for v in got.neighbors[u] if v >= 0] == nbrs, u
        assert [inter.item_ids[c] for c in got.item_list(u)] == cands, u
        np.testing.assert_allclose(got.weights[u][: len(cands)], weights, rtol=1e-6)
        same = sum(user_ids[v] == user_ids[u] for v in nbrs)
        assert got.same_user_neighbors[u] == same
        if not allow_same_user:
            assert same == 0
    assert got.item_list(len(histories) - 1) == []  # the lonely window


def test_query_subset_equals_full_rows():
    histories, user_ids = random_windows(3)
    inter = build_interactions(histories, user_ids)
    full = user_filtering_candidates(inter, chunk_size=9)
    rows = [5, 0, 40, 17]
    part = user_filtering_candidates(inter, query_rows=rows, chunk_size=3)
    np.testing.assert_array_equal(part.items, full.items[rows])
    np.testing.assert_array_equal(part.neighbors, full.neighbors[rows])


def test_topk_per_row_orders_by_value_then_column():
    # rows: [c0=2, c2=5, c3=2], [], [c1=1]
    indptr = np.array([0, 3, 3, 4])
    indices = np.array([3, 2, 0, 1])
    data = np.array([2, 5, 2, 1])
    row, col, value = topk_per_row(indptr, indices, data, k=2, n_cols=4)
    assert row.tolist() == [0, 0, 2]
    assert col.tolist() == [2, 0, 1]
    assert value.tolist() == [5, 2, 1]


def test_netflix_same_user_neighbours_leak_the_target(data_dir):
    """On the shared Netflix subset, letting a user's own windows be neighbours puts the true next item in
    the candidate set far more often than real user-filtering (the leak the issue describes)."""
    import ast
    import csv

    rows = [r for r in csv.DictReader(open(data_dir / "netflix" / "train.csv")) if r["rating"] == "1"]
    histories = [ast.literal_eval(r["history_movie_id"]) for r in rows]
    inter = build_interactions(histories, [r["user_id"] for r in rows])
    code = {item: c for c, item in enumerate(inter.item_ids)}
    rates = {}
    for allow in (True, False):
        cands = user_filtering_candidates(inter, allow_same_user=allow)
        rates[allow] = np.mean([code.get(r["movie_id"], -2) in cands.items[u] for u, r in enumerate(rows)])
    assert rates[True] > 2 * rates[False] > 0.2
