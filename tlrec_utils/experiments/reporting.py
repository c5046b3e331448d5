"""Aggregate a grid of runs (metrics.json per cell) into the paper's Table 1 (Markdown + CSV) and the shapes
of its Figure 2 (ablations) and Figure 3 (backbones) as PNG.

A row is one finished cell: {"method", "setting", "seed", "group", "backbone", "metrics": {...}}, where
`setting` is "zero-shot" or "k16"/"k64"/"k256", `group` is "main" (Table 1), "ablation" or "backbone".
`collect_rows` (below) builds them from a grid directory; any list of such dicts works.

Table cells are mean ± sample std over seeds (std omitted with one seed); per column the best mean is in
bold and the second underlined; `*` marks the method under study (`ours`) where it beats the best other
method of the column by a two-sided Student t-test (scipy.stats.ttest_ind, equal variances) with p < 0.05.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..evaluation.metrics import NDCG_K, NDCG_KEY, ndcg_key
from ..fileio import atomic_write_text

METRIC_LABELS = {"auc": "AUC", "auc_authors": "AUC (authors)", NDCG_KEY: f"NDCG@{NDCG_K}",
                 ndcg_key(per_user=True): f"NDCG@{NDCG_K} (user)"}
# what each AUC of a table is: the report says which one(s) a table shows
AUC_MEANINGS = {
    "auc": "two-logit (softmax over the Yes/No logits at the answer position; run_eval --score_fn two_logit)",
    "auc_authors": "the authors' score (their evaluate.py: softmax over the vocabulary, then over p(Yes), p(No); "
                   "run_eval --score_fn authors), the AUC of the paper's Table 1",
}
DEFAULT_METRICS = ("auc", NDCG_KEY)  # Table 1's columns
P_THRESHOLD = 0.05


def setting_label(setting: str) -> str:
    if setting == "zero-shot":
        return "Zero-shot"
    if setting.startswith("k") and setting[1:].isdigit():
        return f"K={setting[1:]}"
    return setting


def setting_order(setting: str) -> tuple:
    return (0, 0) if setting == "zero-shot" else (1, int(setting[1:])) if setting[1:].isdigit() else (2, setting)


def values_by_cell(rows, metric: str) -> dict:
    """{(method, setting): [metric value per seed]} (missing or null values skipped)."""
    out = defaultdict(list)
    for row in sorted(rows, key=lambda r: r["seed"]):
        value = row["metrics"].get(metric)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[(row["method"], row["setting"])].append(float(value))
    return out


def significance(ours: list[float], best_other: list[float]) -> float | None:
    """Two-sided p-value of scipy's ttest_ind; None when it is undefined (under two values a side, or no
    variance at all)."""
    import warnings

    from scipy.stats import ttest_ind

    if len(ours) < 2 or len(best_other) < 2:
        return None
    with warnings.catch_warnings():  # identical values on one side: scipy warns, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(ttest_ind(ours, best_other).pvalue)
    return None if math.isnan(p) else p


def summarise(rows, metrics=DEFAULT_METRICS, ours: str = "TLRec", methods=None, settings=None):
    """One entry per (method, setting, metric): mean, std, n, rank in its column (1 = best), and for
    `ours`: the best other method, its p-value and whether it is starred."""
    methods = methods or list(dict.fromkeys(r["method"] for r in rows))
    settings = settings or sorted({r["setting"] for r in rows}, key=setting_order)
    entries = []
    for metric in metrics:
        values = values_by_cell(rows, metric)
        for setting in settings:
            column = {m: values[(m, setting)] for m in methods if values.get((m, setting))}
            means = {m: float(np.mean(v)) for m, v in column.items()}
            ranking = sorted(means, key=lambda m: -means[m])
            for method in methods:
                if method not in column:
                    continue
                v = column[method]
                entry = {
                    "method": method, "setting": setting, "metric": metric, "mean": means[method],
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else None, "n": len(v),
                    "rank": ranking.index(method) + 1, "vs": None, "p_value": None, "star": False,
                }
                others = [m for m in ranking if m != ours]
                if method == ours and others:
                    best = others[0]
                    p = significance(v, column[best])
                    star = bool(p is not None and p < P_THRESHOLD and means[ours] > means[best])
                    entry.update(vs=best, p_value=p, star=star)
                entries.append(entry)
    return entries, methods, settings


def format_cell(entry: dict | None, digits: int = 4) -> str:
    if entry is None:
        return "–"
    text = f"{entry['mean']:.{digits}f}"
    if entry["std"] is not None:
        text += f" ± {entry['std']:.{digits}f}"
    if entry["rank"] == 1:
        text = f"**{text}**"
    elif entry["rank"] == 2:
        text = f"<u>{text}</u>"
    if entry["star"]:
        text += "\\*"
    return text


def table_markdown(rows, metrics=DEFAULT_METRICS, ours: str = "TLRec", methods=None, settings=None,
                   title: str | None = None, digits: int = 4) -> str:
    entries, methods, settings = summarise(rows, metrics, ours, methods, settings)
    index = {(e["method"], e["setting"], e["metric"]): e for e in entries}
    columns = [(s, m) for s in settings for m in metrics]
    header = ["Method"] + [f"{setting_label(s)} {METRIC_LABELS.get(m, m)}" for s, m in columns]
    lines = [f"### {title}", ""] if title else []
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + [":---:"] * len(columns)) + "|")
    for method in methods:
        cells = [format_cell(index.get((method, s, m)), digits) for s, m in columns]
        lines.append("| " + " | ".join([method] + cells) + " |")
    n_seeds = sorted({e["n"] for e in entries}) or [0]
    spread = f"Mean ± std over {n_seeds[-1]} seed{'' if n_seeds[-1] == 1 else 's'}"
    if len(n_seeds) > 1:  # e.g. an LLM method's zero-shot model, the same for every seed
        spread += f" ({', '.join(map(str, n_seeds[:-1]))} where a cell shows no ±)"
    lines += [
        "",
        f"{spread}. Bold: best; underlined: second; "
        f"\\*: {ours} beats the best other method, two-sided t-test p < {P_THRESHOLD}.",
    ]
    lines += [f"{METRIC_LABELS.get(m, m)}: {AUC_MEANINGS[m]}." for m in metrics if m in AUC_MEANINGS]
    return "\n".join(lines) + "\n"


def table_csv(rows, metrics=DEFAULT_METRICS, ours: str = "TLRec", methods=None, settings=None) -> str:
    entries, _, _ = summarise(rows, metrics, ours, methods, settings)
    buf = io.StringIO()
    fields = ["method", "setting", "metric", "mean", "std", "n", "rank", "vs", "p_value", "star"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for e in entries:
        writer.writerow({k: ("" if e[k] is None else e[k]) for k in fields})
    return buf.getvalue()


# what a scorer that ignores its input gets, per metric (AUC of a constant or random score)
CHANCE_LEVEL = {"auc": 0.5, "auc_authors": 0.5}


def bar_chart_figure(rows, x_key: str, bar_key: str, metric: str, title: str, x_order=None, bar_order=None,
                     x_label=lambda x: x):
    """The matplotlib figure of `grouped_bar_chart` (not saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = defaultdict(list)
    for row in rows:
        value = row["metrics"].get(metric)
        if value is not None:
            cells[(row[x_key], row[bar_key])].append(float(value))
    xs = x_order or list(dict.fromkeys(r[x_key] for r in rows))
    bars = bar_order or list(dict.fromkeys(r[bar_key] for r in rows))
    width = 0.8 / max(len(bars), 1)
    fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(xs) + 1) + 2, 3.5))
    for j, bar in enumerate(bars):
        means = [np.mean(cells[(x, bar)]) if cells.get((x, bar)) else np.nan for x in xs]
        stds = [np.std(cells[(x, bar)], ddof=1) if len(cells.get((x, bar), [])) > 1 else 0 for x in xs]
        ax.bar(np.arange(len(xs)) + (j - (len(bars) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=bar)
    ax.set_xticks(np.arange(len(xs)), [x_label(x) for x in xs])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(title)
    finite = [float(r["metrics"][metric]) for r in rows if r["metrics"].get(metric) is not None]
    chance = CHANCE_LEVEL.get(metric)
    if chance is not None:  # a bar is only worth reading against what a random scorer gets
        ax.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:g})")
        finite.append(chance)
    if finite:  # zoom on the differences, as the paper's figures do
        ax.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.05))
    # legend beside the axes, never over the bars
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    return fig


def grouped_bar_chart(rows, x_key: str, bar_key: str, metric: str, path, title: str, x_order=None, bar_order=None,
                      x_label=lambda x: x):
    """Bars of mean metric with std error bars: one group per `x_key` value, one bar per `bar_key` value; a
    dashed chance line for AUC; the legend outside the axes. Written to `path` (PNG) atomically."""
    import matplotlib.pyplot as plt

    fig = bar_chart_figure(rows, x_key, bar_key, metric, title, x_order, bar_order, x_label)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_report(rows, output_dir, metrics=DEFAULT_METRICS, ours: str = "TLRec", methods=None, settings=None,
                 title: str | None = None, figure_metric: str | None = None, ablation_order=None,
                 backbone_order=None, footer: str | None = None) -> dict:
    """results/table1.md, table1.csv, ablation.png and backbones.png (figures only when the grid has
    ablation / backbone rows); `footer`: a last line of table1.md. The figures show `figure_metric`, default the
    table's first AUC. Returns {name: path}."""
    output_dir = Path(output_dir)
    figure_metric = figure_metric or next((m for m in metrics if m in AUC_MEANINGS), "auc")
    main = [r for r in rows if r.get("group", "main") == "main"]
    written = {}
    if main:
        written["table1.md"] = output_dir / "table1.md"
        text = table_markdown(main, metrics, ours, methods, settings, title)
        atomic_write_text(written["table1.md"], text + (f"\n{footer}\n" if footer else ""))
        written["table1.csv"] = output_dir / "table1.csv"
        atomic_write_text(written["table1.csv"], table_csv(main, metrics, ours, methods, settings))
    ablation = [r for r in rows
                if r.get("group") == "ablation" or (r.get("group", "main") == "main" and r["method"] == ours)]
    if any(r.get("group") == "ablation" for r in rows):
        order = sorted({r["setting"] for r in ablation}, key=setting_order)
        written["ablation.png"] = grouped_bar_chart(
            ablation, "setting", "method", figure_metric, output_dir / "ablation.png",
            f"Ablations ({METRIC_LABELS.get(figure_metric, figure_metric)})", x_order=order, x_label=setting_label,
            bar_order=ablation_order,
        )
    backbone = [r for r in rows if r.get("group") == "backbone"]
    if backbone:
        written["backbones.png"] = grouped_bar_chart(
            backbone, "backbone", "method", figure_metric, output_dir / "backbones.png",
            f"Backbones ({METRIC_LABELS.get(figure_metric, figure_metric)})", x_order=backbone_order,
        )
    return written


def collect_rows(root) -> list[dict]:
    """Rows of every finished result under `root`. A cell is a directory holding `cell.json`: {group,
    backbone, outputs: [{method, setting, seed, metrics}]} (metrics: path of a metrics.json relative to the cell),
    or the single-output form {method, setting, seed, group, backbone, metrics}. Results whose metrics.json
    does not exist yet are skipped."""
    import json
    import logging

    rows, pending = [], 0
    for cell_file in sorted(Path(root).rglob("cell.json")):
        cell = json.loads(cell_file.read_text(encoding="utf-8"))
        outputs = cell.get("outputs") or [{k: cell.get(k) for k in ("method", "setting")}
                                          | {"metrics": cell.get("metrics", "metrics.json")}]
        for out in outputs:
            metrics_path = cell_file.parent / out["metrics"]
            if not metrics_path.is_file():
                pending += 1
                continue
            row = {"group": out.get("group") or cell.get("group") or "main", "backbone": cell.get("backbone"),
                   "seed": out.get("seed", cell.get("seed")),
                   "method": out["method"], "setting": out["setting"]}
            row["metrics"] = json.loads(metrics_path.read_text(encoding="utf-8"))
            rows.append(row)
    if pending:
        logging.getLogger(__name__).warning("%s: %d result(s) not finished, left out of the report", root, pending)
    return rows
