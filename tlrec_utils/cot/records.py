"""CoT instruction records: the three per user who hit, built from the run's responses, and reading CoT files
(our cot_train.json, or the TLRec authors' released stage123.json) for curriculum tuning, and the pipeline's CoT
phase when its records come from a file: `python -m tlrec_utils.cot.records cot_records --cot_file F --output_dir D`."""

from __future__ import annotations

from pathlib import Path

from .. import prompts
from ..data.records import read_json_list
from ..errors import InputError, where
from ..fileio import atomic_write_json, sha256_file
from .replies import line_hits


def cot_records(responses: list[dict], kind: str, hit_match: str = "title_in_answer") -> list[dict]:
    """Three instruction records per user who hit under `hit_match`, in train-record order (identical however
    the run went)."""
    out = []
    for line in sorted(responses, key=lambda r: r["record_index"]):
        if not line_hits(line)[hit_match]:
            continue
        for stage in (1, 2, 3):
            rec = prompts.cot_record(line["context"], line["answers"], stage, kind)
            rec.update(user_id=line["user_id"], cot_key=line["key"])
            out.append(rec)
    return out


def is_cot_file(records: list[dict]) -> bool:
    """A CoT file: its first record has a `stage` or one of the three CoT stage instructions."""
    if not records:
        return False
    first = records[0]
    return "stage" in first or first.get("instruction") in prompts.COT_INSTRUCTION_STAGES


def not_cot_message(path, record: dict) -> str:
    """Why the first record of a file is not a CoT record: its instruction is none of the three stages'."""
    instruction = str(record.get("instruction", ""))
    shown = repr(instruction[:60]) + ("..." if len(instruction) > 60 else "")
    return (f"{where(path, record=0)}: not a CoT record: no 'stage' field, and its instruction {shown} is not one "
            "of the three CoT stage instructions of the TLRec authors' preprocess_data.py (a file of their format "
            "must use them verbatim; or give every record a 'stage': 1, 2 or 3)")


def looks_like_cot(records: list[dict]) -> bool:
    """A file meant as CoT data whose stage cannot be told: its first record's output is free text (more than a
    few words), not a Yes/No answer or a typo of one."""
    if not records or is_cot_file(records):
        return False
    output = records[0].get("output")
    return isinstance(output, str) and len(output.split()) > 3 and prompts.label_of(output) is None


def cot_records_from(raw: list[dict], path) -> list[dict]:
    """Validated CoT records with an integer `stage`: our cot_train.json (a `stage` field) or the TLRec authors'
    released `cot_data/stage123.json` (instruction/input/output only: the stage is the one whose instruction the
    record carries, prompts.COT_INSTRUCTION_STAGES)."""
    out = []
    for i, rec in enumerate(raw):
        if not isinstance(rec.get("instruction"), str):
            raise InputError(f"{where(path, record=i)}: missing or non-string 'instruction'")
        rec = dict(rec)
        rec.setdefault("input", "")
        if not isinstance(rec["input"], str):
            raise InputError(f"{where(path, record=i)}: non-string 'input'")
        if not isinstance(rec.get("output"), str) or not rec["output"].strip():
            raise InputError(f"{where(path, record=i)}: missing or empty 'output'")
        if "stage" in rec:
            try:
                rec["stage"] = int(rec["stage"])
            except (TypeError, ValueError):
                raise InputError(f"{where(path, record=i)}: stage {rec['stage']!r} is not an integer") from None
        else:
            known = prompts.COT_INSTRUCTION_STAGES.get(rec["instruction"])
            if known is None:
                raise InputError(f"{where(path, record=i)}: unknown CoT instruction {rec['instruction'][:60]!r}... "
                                 "(not one of the three stage instructions of the TLRec authors' preprocess_data.py)")
            rec["stage"], rec["kind"] = known
        out.append(rec)
    return out


def load_cot_records(path) -> list[dict]:
    """CoT records of a file (see cot_records_from); an InputError when it holds none or is not CoT data."""
    raw = read_json_list(path)
    if not raw:
        raise InputError(f"{path}: no records")
    if not is_cot_file(raw):
        raise InputError(not_cot_message(path, raw[0]))
    return cot_records_from(raw, path)


def write_cot_records(cot_files, output_dir) -> dict:
    """CoT records from one file or several (the authors' released stage123.json, earlier cot_train.json files:
    one per source domain), validated, stages recovered, written in the order given as OUTPUT_DIR/cot_train.json
    (+ cot_records.json: what was read, per file). `cot_files`: a path, or {source name: path} (each record then
    carries its `source`)."""
    named = cot_files if isinstance(cot_files, dict) else {None: cot_files}
    records, files = [], []
    for name, cot_file in named.items():
        path = Path(cot_file)
        if not path.is_file():
            raise InputError(f"{path}: CoT file not found (cot_file{'' if name is None else ' of source ' + name})")
        part = load_cot_records(path)
        if name is not None:
            part = [{**rec, "source": name} for rec in part]
        records += part
        files.append({"source": name, "cot_file": str(path), "sha256": sha256_file(path), "cot_records": len(part),
                      "records_per_stage": _per_stage(part)})
    atomic_write_json(Path(output_dir) / "cot_train.json", records, indent=1)
    info = {"cot_records": len(records), "records_per_stage": _per_stage(records)}
    if name is None:  # one file: what was read, as before there were several sources
        info.update({k: v for k, v in files[0].items() if k != "source"})
    else:
        info["per_source"] = {f["source"]: f for f in files}
    atomic_write_json(Path(output_dir) / "cot_records.json", info)
    return info


def _per_stage(records: list[dict]) -> dict:
    return {s: sum(r["stage"] == s for r in records) for s in sorted({r["stage"] for r in records})}


def main(argv=None):
    """`python -m tlrec_utils.cot.records cot_records --cot_file F --output_dir D`: the pipeline's CoT phase
    when the CoT records come from a file (teacher: published, cot_file); with several source domains
    `--cot_file NAME=F ...`, each source's records in the order given."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("command", choices=["cot_records"])
    parser.add_argument("--cot_file", required=True, nargs="+", metavar="[NAME=]FILE")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    if len(args.cot_file) == 1 and "=" not in args.cot_file[0]:
        return write_cot_records(args.cot_file[0], args.output_dir)
    named = {}
    for value in args.cot_file:
        name, sep, path = value.partition("=")
        if not sep or not name or not path or name in named:
            raise InputError(f"--cot_file {value}: with several files give each as NAME=FILE, each name once")
        named[name] = path
    return write_cot_records(named, args.output_dir)


if __name__ == "__main__":
    from ..errors import cli_entry

    cli_entry(main)()
