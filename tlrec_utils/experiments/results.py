"""The grid's results/: Table 1 and the figures (reporting.py) from the cells whose results match the config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..fileio import atomic_write_json
from .cells import build_cells, cell_dir, cell_pipeline_config, check_one_test_set, current_outputs, stale_cells

logger = logging.getLogger(__name__)


def row_sources(config, cell, out: dict, pipeline_config=None) -> list[str]:
    """The source data a row learned from: a pipeline method's source domains (pipeline.method_sources; pass the
    cell's parsed `pipeline_config` to parse it once for all its outputs), a baseline's source train file in the
    zero-shot setting; none for target-only rows."""
    if cell.script == "run_pipeline.py":
        from .pipeline import method_sources

        pipeline_config = pipeline_config or cell_pipeline_config(config, cell)
        return method_sources(pipeline_config, out["metrics"].split("/")[0])
    return [config.source.train] if out["setting"] == "zero-shot" and config.source.train else []


def sources_line(rows: list[dict]) -> str | None:
    """`Source data: netflix (TLRec, w/o CoT); netflix + amazon-book (tlrec_multi); netflix/train.json, zero-shot
    (SASRec)`: the source data of Table 1's methods, methods grouped by what they learned from."""
    by_method: dict[str, list[str]] = {}
    for row in rows:
        if row.get("group", "main") != "main":
            continue
        names = by_method.setdefault(row["method"], [])
        names += [s for s in row.get("sources") or [] if s not in names]
    groups: dict[str, list[str]] = {}
    for method, names in by_method.items():
        if names:  # a baseline's file (zero-shot cells only) by its folder and name; full paths in results.json
            shown = " + ".join(f"{'/'.join(Path(n).parts[-2:])}, zero-shot" if "/" in n else n for n in names)
            groups.setdefault(shown, []).append(method)
    if not groups:
        return None
    return "Source data: " + "; ".join(f"{shown} ({', '.join(methods)})" for shown, methods in groups.items()) + "."


def report(config) -> dict:
    """results/: Table 1 and the figures from the cells of this config whose results match it (fingerprints),
    and results.json (every row with its cell, the stale results left out, the test file's hash)."""
    from ..provenance import path_fingerprint
    from .reporting import write_report

    cells = build_cells(config)
    check_one_test_set(config, cells)
    rows, pending = [], 0
    for cell in cells:
        pipeline_config = cell_pipeline_config(config, cell) if cell.script == "run_pipeline.py" else None
        for out, ok in zip(cell.outputs, current_outputs(config, cell)):
            if not ok:
                pending += 1
                continue
            metrics = json.loads((cell_dir(config, cell) / out["metrics"]).read_text(encoding="utf-8"))
            rows.append({"group": out.get("group") or cell.group, "backbone": cell.backbone, "seed": out["seed"],
                         "method": out["method"], "setting": out["setting"], "metrics": metrics, "cell": cell.path,
                         "sources": row_sources(config, cell, out, pipeline_config)})
    stale = stale_cells(config, cells)
    if pending:
        logger.warning("%d result(s) of this config not finished (or made from other settings): left out", pending)
    if stale:
        logger.warning("%d stale result(s) on disk, never tabled: %s", len(stale), "; ".join(stale))
    test_file = config.target.test
    test_hash = path_fingerprint(test_file) if test_file else None
    footer = f"Every row is scored on the test records of {test_file} ({test_hash})." if test_hash else None
    used = sources_line(rows)
    footer = "\n\n".join(filter(None, [used, footer])) or None  # the test file stays the last line
    out_dir = Path(config.output_dir) / "results"
    atomic_write_json(out_dir / "results.json", {"test_file": {"path": test_file, "fingerprint": test_hash},
                                                 "rows": rows, "pending": pending, "stale": stale})
    for ablation in config.ablations:
        if ablation.same_as is not None:
            rows += [{**r, "group": "ablation", "method": ablation.name}
                     for r in rows if r["group"] == "main" and r["method"] == ablation.same_as]
    written = write_report(
        rows, out_dir, metrics=tuple(config.metrics), ours=config.ours, footer=footer,
        methods=[m.name for m in config.methods], settings=config.settings, title=config.title,
        ablation_order=[config.ours] + [a.name for a in config.ablations],
        backbone_order=[b.name for b in config.backbones] or None,
    )
    for name in ("table1.md", "table1.csv", "ablation.png", "backbones.png"):  # an earlier report's, now empty
        if name not in written and (out_dir / name).is_file():
            (out_dir / name).unlink()
    return {"results.json": out_dir / "results.json", **written}
