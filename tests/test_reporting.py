"""Aggregation of a grid of metrics files into Table 1 (Markdown/CSV), t-test stars, and the figures."""

import csv
import io
import json
import math

import numpy as np
import pytest
from scipy import stats

from tlrec_utils.experiments import reporting


def pooled_t_test_p(a, b):
    """Two-sided Student t-test with pooled variance, from the textbook formula."""
    na, nb = len(a), len(b)
    va, vb = np.var(a, ddof=1), np.var(b, ddof=1)
    pooled = ((na - 1) * va + (nb - 1) * vb) / (na + nb - 2)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(pooled * (1 / na + 1 / nb))
    return 2 * stats.t.sf(abs(t), na + nb - 2)


def row(method, setting, seed, auc, ndcg, group="main", backbone=None):
    return {"method": method, "setting": setting, "seed": seed, "group": group, "backbone": backbone,
            "metrics": {"auc": auc, "ndcg@10": ndcg}}


def test_star_only_where_significant_and_better():
    # k16: TLRec clearly above SASRec (p ~ 0.005); k64: above but noisy (p ~ 0.3); zero-shot: below
    rows = [
        row("SASRec", "k16", 0, 0.60, 0.1), row("SASRec", "k16", 1, 0.62, 0.1),
        row("TLRec", "k16", 0, 0.80, 0.2), row("TLRec", "k16", 1, 0.82, 0.2),
        row("SASRec", "k64", 0, 0.60, 0.1), row("SASRec", "k64", 1, 0.70, 0.1),
        row("TLRec", "k64", 0, 0.66, 0.2), row("TLRec", "k64", 1, 0.74, 0.2),
        row("SASRec", "zero-shot", 0, 0.80, 0.1), row("SASRec", "zero-shot", 1, 0.82, 0.1),
        row("TLRec", "zero-shot", 0, 0.60, 0.2), row("TLRec", "zero-shot", 1, 0.62, 0.2),
    ]
    entries, _, _ = reporting.summarise(rows, metrics=("auc",))
    ours = {e["setting"]: e for e in entries if e["method"] == "TLRec"}
    for setting, a, b in [("k16", [0.80, 0.82], [0.60, 0.62]), ("k64", [0.66, 0.74], [0.60, 0.70]),
                          ("zero-shot", [0.60, 0.62], [0.80, 0.82])]:
        assert ours[setting]["p_value"] == pytest.approx(pooled_t_test_p(a, b))
        assert ours[setting]["vs"] == "SASRec"
    assert ours["k16"]["star"] and ours["k16"]["p_value"] < 0.05
    assert not ours["k64"]["star"] and ours["k64"]["p_value"] > 0.05
    assert not ours["zero-shot"]["star"] and ours["zero-shot"]["p_value"] < 0.05  # significant, but worse
    # one seed: no test at all
    single = [row("SASRec", "k16", 0, 0.6, 0.1), row("TLRec", "k16", 0, 0.9, 0.2)]
    e = [x for x in reporting.summarise(single, ("auc",))[0] if x["method"] == "TLRec"][0]
    assert e["p_value"] is None and not e["star"]


def write_grid(root, rows):
    """A grid directory as run_experiments lays it out: cell.json + metrics.json per cell."""
    for r in rows:
        cell = root / r["group"] / (r["backbone"] or "") / r["method"] / r["setting"] / f"seed{r['seed']}"
        (cell / "eval").mkdir(parents=True)
        (cell / "cell.json").write_text(json.dumps({k: r[k] for k in ("method", "setting", "seed", "group", "backbone")}
                                                   | {"metrics": "eval/metrics.json"}))
        (cell / "eval" / "metrics.json").write_text(json.dumps(r["metrics"] | {"counts": {"records": 10}}))


GRID = [
    row("SASRec", "zero-shot", 0, 0.50, 0.10), row("SASRec", "zero-shot", 1, 0.52, 0.12),
    row("TALLRec", "zero-shot", 0, 0.55, 0.20), row("TALLRec", "zero-shot", 1, 0.57, 0.22),
    row("TLRec", "zero-shot", 0, 0.70, 0.15), row("TLRec", "zero-shot", 1, 0.72, 0.17),
    row("SASRec", "k16", 0, 0.60, 0.30), row("SASRec", "k16", 1, 0.60, 0.30),
    row("TALLRec", "k16", 0, 0.65, 0.25),
    row("TLRec", "k16", 0, 0.67, 0.20), row("TLRec", "k16", 1, 0.65, 0.24),
    row("TLRec w/o CoT", "k16", 0, 0.61, 0.2, group="ablation"),
    row("TLRec w/o CoT", "k16", 1, 0.63, 0.2, group="ablation"),
    row("TLRec", "k16", 0, 0.66, 0.2, group="backbone", backbone="tiny-llama"),
    row("TLRec", "k16", 0, 0.62, 0.2, group="backbone", backbone="tiny-gpt2"),
]

EXPECTED_TABLE = """\
| Method | Zero-shot AUC | Zero-shot NDCG@10 | K=16 AUC | K=16 NDCG@10 |
|---|:---:|:---:|:---:|:---:|
| SASRec | 0.5100 ± 0.0141 | 0.1100 ± 0.0141 | 0.6000 ± 0.0000 | **0.3000 ± 0.0000** |
| TALLRec | <u>0.5600 ± 0.0141</u> | **0.2100 ± 0.0141** | <u>0.6500</u> | <u>0.2500</u> |
| TLRec | **0.7100 ± 0.0141**\\* | <u>0.1600 ± 0.0141</u> | **0.6600 ± 0.0141** | 0.2200 ± 0.0283 |

Mean ± std over 2 seeds (1 where a cell shows no ±). Bold: best; underlined: second; \\*: TLRec beats the best other method, two-sided t-test p < 0.05.
AUC: two-logit (softmax over the Yes/No logits at the answer position; run_eval --score_fn two_logit).
"""  # noqa: E501 (the expected table line)


def test_grid_to_exact_markdown_csv_and_figures(tmp_path):
    write_grid(tmp_path / "runs", GRID)
    # an unfinished cell (no metrics.json yet) is left out
    (tmp_path / "runs" / "main" / "DROS" / "k16" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "main" / "DROS" / "k16" / "seed0" / "cell.json").write_text(
        json.dumps({"method": "DROS", "setting": "k16", "seed": 0, "group": "main", "backbone": None}))
    rows = reporting.collect_rows(tmp_path / "runs")
    assert len(rows) == len(GRID)
    written = reporting.write_report(rows, tmp_path / "results", methods=["SASRec", "TALLRec", "TLRec"])
    # zero-shot AUC: TLRec vs TALLRec p ~ 0.009 -> star; K=16 AUC: TLRec best, but TALLRec has one seed -> no test
    assert (tmp_path / "results" / "table1.md").read_text() == EXPECTED_TABLE
    table = list(csv.DictReader(io.StringIO((tmp_path / "results" / "table1.csv").read_text())))
    ours_zero = [t for t in table if t["method"] == "TLRec" and t["setting"] == "zero-shot" and t["metric"] == "auc"][0]
    assert ours_zero["vs"] == "TALLRec" and ours_zero["star"] == "True"
    assert float(ours_zero["p_value"]) == pytest.approx(pooled_t_test_p([0.70, 0.72], [0.55, 0.57]))
    assert len(table) == 3 * 2 * 2
    for name in ("ablation.png", "backbones.png"):
        data = written[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_ablation_chart_draws_the_chance_line_and_keeps_the_legend_off_the_bars():
    rows = [{"group": "ablation", "method": m, "setting": s, "seed": seed, "backbone": None,
             "metrics": {"auc": auc + 0.01 * seed, "ndcg@10": 0.1}}
            for m, base in (("TLRec", 0.62), ("w/o CoT", 0.58), ("w/o curriculum", 0.55))
            for s, auc in (("zero-shot", base), ("k16", base + 0.05)) for seed in (0, 1)]
    fig = reporting.bar_chart_figure(rows, "setting", "method", "auc", "Ablations")
    ax = fig.axes[0]
    chance = [line for line in ax.get_lines() if list(line.get_ydata()) == [0.5, 0.5]]
    assert len(chance) == 1 and chance[0].get_linestyle() == "--"
    low, high = ax.get_ylim()
    assert low < 0.5 < high  # the chance line is inside the zoomed axis even when every bar is above it
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend_box = ax.get_legend().get_window_extent(renderer)
    bars_box = ax.get_window_extent(renderer)
    assert legend_box.x0 >= bars_box.x1  # legend right of the plotting area: covers no bar
    assert legend_box.x1 <= fig.bbox.x1 + 1  # and not cut off by the figure edge
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["chance (0.5)", "TLRec", "w/o CoT", "w/o curriculum"]
    # NDCG has no chance line here (its random level depends on the number of candidates)
    fig2 = reporting.bar_chart_figure(rows, "setting", "method", "ndcg@10", "Ablations")
    assert not [line for line in fig2.axes[0].get_lines() if list(line.get_ydata()) == [0.5, 0.5]]
