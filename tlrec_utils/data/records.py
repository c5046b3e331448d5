"""Instruction records: building, loading, validating and saving.

A record is a dict in the TALLRec/Alpaca format (`instruction`, `input`, `output` = "Yes."/"No.") plus
structured fields, so nothing downstream ever parses items back out of prompt text:

    user_id: str
    history: [{"item_id": str, "title": str, "liked": bool}, ...]   (oldest first)
    target:  {"item_id": str, "title": str}
    label:   0 | 1
    timestamp: int | str | None   (of the target interaction)

`title` is the item's display text ("Toy Story (1995)", or '"Title" written by Author' for books).
Published TALLRec/TLRec files carry only the three text keys; `load_records` recovers the structured
fields from the text (see `parse_rec_input`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import prompts
from ..errors import InputError, where
from ..fileio import atomic_write_json

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")  # the record files of a prepared folder: SPLIT.json


def build_record(
    user_id,
    history: list[dict],
    target: dict,
    label: int,
    kind: str,
    timestamp=None,
    target_style: str = "wrap",
) -> dict:
    """A complete record from structured fields; the text is rendered by `prompts`."""
    liked = [h["title"] for h in history if h["liked"]]
    disliked = [h["title"] for h in history if not h["liked"]]
    return {
        "instruction": prompts.rec_instruction(kind),
        "input": prompts.rec_input(liked, disliked, target["title"], kind, target_style=target_style),
        "output": prompts.answer(label),
        "user_id": str(user_id),
        "history": [
            {"item_id": str(h["item_id"]), "title": h["title"], "liked": bool(h["liked"])} for h in history
        ],
        "target": {"item_id": str(target["item_id"]), "title": target["title"]},
        "label": int(label),
        "timestamp": timestamp,
    }


def save_records(path, records: list[dict]) -> None:
    atomic_write_json(path, records, indent=1)


def read_json_list(path) -> list[dict]:
    """A JSON file holding a list of objects, or an InputError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records, got a JSON {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise InputError(f"{where(path, record=i)}: expected a JSON object, got {type(rec).__name__}")
    return data


def load_records(path, require_label: bool = True, parse_text: bool = True, catalog=None) -> list[dict]:
    """Load and validate a records file (ours or a published TALLRec/TLRec one).

    - every record needs `instruction` and `input` strings;
    - with `require_label`, `output` must be "Yes." or "No." (the label is derived from it);
    - with `parse_text`, records without structured fields get them recovered from the text;
      records that cannot be parsed are reported (count and first examples) and keep no structure.
    """
    records = read_json_list(path)
    unparsed = []
    for i, rec in enumerate(records):
        for key in ("instruction", "input"):
            if not isinstance(rec.get(key), str):
                raise InputError(f"{where(path, record=i)}: missing or non-string '{key}'")
        if require_label:
            if "output" not in rec:
                raise InputError(f"{where(path, record=i)}: no 'output' (expected \"Yes.\" or \"No.\")")
            label = prompts.label_of(rec["output"]) if isinstance(rec["output"], str) else None
            if label is None:
                raise InputError(
                    f"{where(path, record=i)}: output {rec['output']!r} is not \"Yes.\" or \"No.\""
                )
            if rec.get("label") is not None and label_value(rec["label"]) != label:
                if label_value(rec["label"]) is None:
                    raise InputError(f"{where(path, record=i)}: label {rec['label']!r} is not 0 or 1")
                raise InputError(
                    f"{where(path, record=i)}: label {rec['label']!r} disagrees with output {rec['output']!r}"
                )
            rec["label"] = label
        check_structured_fields(rec, where(path, record=i))
        if parse_text and "history" not in rec:
            parsed = parse_rec_input(rec["input"], catalog=catalog)
            if parsed is None:
                unparsed.append(i)
            else:
                rec.update(parsed)
    if unparsed:
        logger.warning(
            "%s: could not recover items from the text of %d record(s) (first: %s); they keep no structured fields",
            path,
            len(unparsed),
            ", ".join(map(str, unparsed[:5])),
        )
    return records


def label_value(value) -> int | None:
    """0 or 1 from a record's label (0, 1, true, false, 0.0, 1.0); None for anything else (NaN, "abc")."""
    if isinstance(value, bool) or (isinstance(value, (int, float)) and value in (0, 1)):
        return int(value)
    return None


def _check_item(item, loc: str, what: str) -> None:
    if not isinstance(item, dict):
        raise InputError(f"{loc}: {what} is not an object with 'item_id' and 'title' (got {item!r:.60})")
    if not isinstance(item.get("title"), str):
        raise InputError(f"{loc}: {what} has no string 'title'")
    if not isinstance(item.get("item_id"), (str, int)) or isinstance(item.get("item_id"), bool):
        raise InputError(f"{loc}: {what} has no 'item_id' (string or integer)")


def check_structured_fields(rec: dict, loc: str) -> None:
    """Types of the structured fields a record carries (see the module docstring); absent ones are fine."""
    if "label" in rec and rec["label"] is not None and label_value(rec["label"]) is None:
        raise InputError(f"{loc}: label {rec['label']!r} is not 0 or 1")
    if rec.get("history") is not None:
        if not isinstance(rec["history"], list):
            raise InputError(f"{loc}: history must be a list of items, got {type(rec['history']).__name__}")
        for j, item in enumerate(rec["history"]):
            _check_item(item, loc, f"history item {j}")
            if "liked" in item and not isinstance(item["liked"], bool) and item["liked"] not in (0, 1):
                raise InputError(f"{loc}: history item {j}: liked {item['liked']!r} is not true or false")
    if rec.get("target") is not None:
        _check_item(rec["target"], loc, "target")
    if rec.get("user_id") is not None and not isinstance(rec["user_id"], (str, int)):
        raise InputError(f"{loc}: user_id must be a string or an integer, got {rec['user_id']!r:.60}")


def parse_rec_input(text: str, catalog=None) -> dict | None:
    """Recover `history` (liked first, then disliked: the text does not keep the interleaving) and
    `target` from a rec-tuning input; None when the text is not in the rec-tuning format or ambiguous.

    Item ids are unknown in published files: they are the item texts (or the catalog's id when given)."""
    from .record_parsing import parse_rec_input as _parse

    return _parse(text, catalog=catalog)
