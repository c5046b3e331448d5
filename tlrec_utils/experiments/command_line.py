"""Options mappings to script command lines, shared by the pipeline's phases and the grid's cells (kept apart from
`arguments`, which imports transformers: building a command line stays cheap)."""

from __future__ import annotations

import json


def flags(options: dict, explicit_bools: bool = False) -> list[str]:
    """{key: value} -> ['--key', 'value', ...]; None -> omitted, lists -> several values (an empty list ->
    omitted: the script's default, as a list flag takes at least one value); booleans: a bare flag / omitted
    (argparse store_true), or `--key true|false` with `explicit_bools` (HfArgumentParser)."""
    out = []
    for key, value in options.items():
        if value is None or (value is False and not explicit_bools) or (isinstance(value, list) and not value):
            continue
        out.append(f"--{key}")
        if isinstance(value, dict):  # run_pipeline's mappings (--tuning, --eval, ...) take JSON
            out.append(json.dumps(value))
            continue
        if isinstance(value, bool):
            if explicit_bools:
                out.append(str(value).lower())
            continue
        if isinstance(value, list):  # a list of mappings (--source_datasets): one JSON mapping a value
            out.extend(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)
            continue
        out.append(str(value))
    return out
