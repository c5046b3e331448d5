"""Several source domains as one prepared folder: the pipeline's data/source when `source_datasets` names more
than one source (`python -m tlrec_utils.data.mix --sources NAME=DIR ... --output_dir D`).

Each source was prepared on its own (run_prepare_data, in its own wording: Netflix's records say "movie",
Amazon-Book's "book"). The mix:

- takes each source's train split whole, or N records of it (`--records NAME=N`), drawn as K-shot records are
  (kshot.sample_k_shot: the first N of one seeded permutation) and kept in their file order;
- interleaves the sources in proportion to their sizes (record i of a source of n records sits at (i + 0.5) / n
  of the way through; ties in the order the sources are given), so that any first part of a split, such as the
  first `effect_records` of valid.json, holds every source in its share; the Trainer shuffles train.json anyway;
- keeps valid and test whole, interleaved the same way;
- prefixes user and item ids with the source's name (`netflix:1234`) so that users and items of two sources
  never merge, and marks each record with its `source`;
- writes items.json (every source's catalog under the prefixed ids) and meta.json (per source: its folder, its
  records per split, the share drawn), through a staging folder: a failed run leaves nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from ..errors import InputError
from ..fileio import atomic_write_json, read_json_or_none, staged_output_dir
from .kshot import k_shot_indices
from .records import SPLITS, read_json_list, save_records

logger = logging.getLogger(__name__)

SEED = 0  # the draw of each source's share: one seeded permutation, as K-shot records are drawn


def interleave(parts: list[list[dict]]) -> list[dict]:
    """The records of every part, each part spread evenly over the result in its own order (stable)."""
    keyed = [((i + 0.5) / len(part), p, i) for p, part in enumerate(parts) for i in range(len(part))]
    return [parts[p][i] for _, p, i in sorted(keyed)]


def _prefixed(rec: dict, name: str) -> dict:
    out = {**rec, "source": name, "user_id": f"{name}:{rec.get('user_id')}"}
    if isinstance(rec.get("history"), list):
        out["history"] = [{**h, "item_id": f"{name}:{h.get('item_id')}"} for h in rec["history"]]
    if isinstance(rec.get("target"), dict):
        out["target"] = {**rec["target"], "item_id": f"{name}:{rec['target'].get('item_id')}"}
    return out


def draw(records: list[dict], n: int | None, name: str, seed: int = SEED) -> list[dict]:
    """`n` records of a source's train split (all when None), drawn with `seed`, in file order."""
    if n is None:
        return records
    if n > len(records):
        raise InputError(f"--records {name}={n}: the source {name} has only {len(records)} train records")
    return [records[i] for i in sorted(k_shot_indices(len(records), n, seed))]


def mix_sources(sources: dict[str, Path], output_dir, records: dict[str, int] | None = None, seed: int = SEED) -> dict:
    """Write the mixed folder (module docstring); returns its meta.json."""
    records = records or {}
    unknown = sorted(set(records) - set(sources))
    if unknown:
        raise InputError(f"--records {unknown[0]}: not one of the sources ({', '.join(sources)})")
    splits: dict[str, list[list[dict]]] = {s: [] for s in SPLITS}
    items: dict[str, str] = {}
    meta_sources = {}
    for name, folder in sources.items():
        folder = Path(folder)
        counts = {}
        for split in SPLITS:
            part = read_json_list(folder / f"{split}.json")
            available = len(part)
            if split == "train":
                part = draw(part, records.get(name), name, seed)
            splits[split].append([_prefixed(r, name) for r in part])
            counts[split] = len(part)
            if split == "train":
                counts["train_available"] = available
        catalog = json.loads((folder / "items.json").read_text(encoding="utf-8"))
        items.update({f"{name}:{item}": text for item, text in catalog.items()})
        source_meta = read_json_or_none(folder / "meta.json") or {}
        meta_sources[name] = {"folder": str(folder), "dataset": source_meta.get("dataset"),
                              "item_kind": source_meta.get("kind"), "counts": counts,
                              "drawn": records.get(name)}
    mixed = {split: interleave(parts) for split, parts in splits.items()}
    meta = {"dataset": "mix", "source_domains": meta_sources, "seed": seed,
            "order": "interleaved in proportion to each source's records, sources in the order given",
            "counts": {split: len(recs) for split, recs in mixed.items()}}
    with staged_output_dir(output_dir) as stage:
        for split, recs in mixed.items():
            save_records(stage / f"{split}.json", recs)
        atomic_write_json(stage / "items.json", items)
        atomic_write_json(stage / "meta.json", meta)
    logger.info("mixed %d source(s) into %s: %s", len(sources), output_dir,
                ", ".join(f"{n} {m['counts']['train']} train records" for n, m in meta_sources.items()))
    return meta


def _pairs(flag: str, values: list[str], number: bool = False) -> dict:
    out = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise InputError(f"{flag}: expected NAME={'N' if number else 'DIR'}, got {value!r}")
        if name in out:
            raise InputError(f"{flag}: {name} is given twice")
        if number:
            if not rest.isdigit() or int(rest) < 1:
                raise InputError(f"{flag} {value}: the share must be a whole number of records >= 1")
            rest = int(rest)
        out[name] = rest
    return out


def main(argv=None):
    """`python -m tlrec_utils.data.mix --sources NAME=DIR ... [--records NAME=N ...] --output_dir D`: several
    prepared source folders as one (the module docstring)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--sources", nargs="+", required=True, metavar="NAME=DIR")
    parser.add_argument("--records", nargs="*", default=[], metavar="NAME=N")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    sources = {name: Path(folder) for name, folder in _pairs("--sources", args.sources).items()}
    for name, folder in sources.items():
        missing = [f"{s}.json" for s in (*SPLITS, "items") if not (folder / f"{s}.json").is_file()]
        if missing:
            raise InputError(f"--sources {name}={folder}: not a prepared folder ({', '.join(missing)} missing)")
    return mix_sources(sources, args.output_dir, _pairs("--records", args.records, number=True), args.seed)


if __name__ == "__main__":
    from ..errors import cli_entry

    cli_entry(main)()
