"""The metrics (tlrec_utils/evaluation/metrics.py) equal scikit-learn's definitions, ties included, and run_eval's timed
path does not import scikit-learn (issue 21: its import cost more than scoring the test split)."""

import math
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
from helpers import REPO
from sklearn.metrics import ndcg_score, roc_auc_score

from tlrec_utils.evaluation import metrics as M


@pytest.mark.parametrize("n,levels", [(2, 2), (7, 3), (50, 4), (400, 10), (1000, 0)])
def test_auc_equals_sklearn_with_ties(n, levels):
    rng = np.random.default_rng(n)
    for _ in range(30):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        # few score levels: many ties, within and across the classes (levels 0: continuous scores)
        scores = rng.integers(0, levels, n) / max(levels, 1) if levels else rng.random(n)
        assert M.auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert M.auc(labels.astype(bool), scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert M.auc([0, 1, 0, 1], [0.5] * 4) == 0.5  # a constant predictor: chance
    assert M.auc([1, 0], [0.9, 0.1]) == 1.0 and M.auc([1, 0], [0.1, 0.9]) == 0.0


def test_auc_undefined_or_invalid():
    assert np.isnan(M.auc([], [])) and np.isnan(M.auc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        M.auc([0, 1], [0.1, float("nan")])


def test_sampled_ndcg_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for k in (1, 3, 10, 60):
        for levels in (2, 5, 0):
            for _ in range(40):
                scores = rng.integers(0, levels, 51) / levels if levels else rng.random(51)
                relevance = np.zeros(51)
                relevance[0] = 1
                want = ndcg_score(relevance[None], scores[None], k=k, ignore_ties=False)
                assert M.sampled_ndcg(scores[0], scores[1:], k) == pytest.approx(want, abs=1e-12)
    assert M.sampled_ndcg(0.5, [0.5] * 9, k=10) == pytest.approx(np.mean(1 / np.log2(np.arange(10) + 2)))


def test_user_ndcg_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 40, 300).tolist()
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 4, 300) / 4
    for k in (2, 10):
        by_user = defaultdict(list)
        for u, y, s in zip(users, labels, scores):
            by_user[u].append((y, s))
        want = [ndcg_score([[y for y, _ in rows]], [[s for _, s in rows]], k=k, ignore_ties=False)
                for rows in by_user.values() if len(rows) >= 2 and sum(y for y, _ in rows) > 0]
        value, n_users = M.user_ndcg(users, labels, scores, k)
        assert n_users == len(want) > 20 and value == pytest.approx(np.mean(want), abs=1e-12)


def test_exact_values_with_ties():
    """Values worked out by hand (not by another implementation), ties averaged, never the optimistic rank."""
    # a target tied with all 50 negatives sits at each of the 51 places with chance 1/51:
    # (1/log2(2) + ... + 1/log2(11)) / 51
    assert M.sampled_ndcg(0.5, [0.5] * 50, k=10) == pytest.approx(0.0890894, abs=5e-8)
    assert M.sampled_ndcg(0.5, [0.5] * 50, k=10) == pytest.approx(sum(1 / math.log2(i + 1) for i in range(1, 11)) / 51)
    assert M.sampled_ndcg(0.9, [0.5] * 50) == 1.0 and M.sampled_ndcg(0.1, [0.5] * 50) == 0.0
    # one negative above, two tied: places 2, 3 or 4
    assert M.sampled_ndcg(0.5, [0.7, 0.5, 0.5, 0.1]) == pytest.approx((1 / math.log2(3) + 0.5 + 1 / math.log2(5)) / 3)
    # tied at places 10 and 11 (nine above): half of place 10's gain
    assert M.sampled_ndcg(0.5, [0.9] * 9 + [0.5] + [0.1] * 40) == pytest.approx(0.5 / math.log2(11))
    assert M.mean_sampled_ndcg([(0.5, [0.5] * 50), (0.9, [0.5] * 50)]) == pytest.approx((0.0890894 + 1) / 2, abs=5e-8)
    assert M.auc([1, 0], [0.5, 0.5]) == 0.5
    assert M.auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)  # 3 wins and a tie of 4 pairs
    # one user, liked and not liked tied: the liked one's gain is shared by places 1 and 2
    value, users = M.user_ndcg(["u", "u"], [1, 0], [0.5, 0.5])
    assert users == 1 and value == pytest.approx((1 + 1 / math.log2(3)) / 2)
    value, users = M.user_ndcg(["u", "u", "v", "v"], [0, 1, 0, 0], [0.9, 0.1, 0.3, 0.4])  # v: no like, not counted
    assert users == 1 and value == pytest.approx(1 / math.log2(3))


def test_the_evaluation_path_does_not_import_sklearn():
    code = ("import sys; from tlrec_utils.evaluation import evaluate, metrics as M; "
            "M.auc([0, 1, 1], [0.2, 0.2, 0.9]); M.user_ndcg([1, 1, 2], [1, 0, 1], [0.3, 0.3, 0.1]); "
            "M.mean_sampled_ndcg([(0.5, [0.5, 0.1])]); print('sklearn' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
