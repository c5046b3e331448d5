"""Baselines scored exactly like run_eval (same splits, metrics, sampled negatives).

The table of them (name -> factory, what it is, its settings): `registry.BASELINES` (as Markdown:
`registry.markdown_table()`). TALLRec (rec-tuning with no source data and no CoT) is run by the
pipeline, not here.
"""

from .registry import BASELINES, make_model

__all__ = ["BASELINES", "make_model"]
