"""Evaluation of a (tuned) LLM recommender on Yes/No records: AUC, NDCG@K (sampled and per user).

- `auc` and `ndcg@K_user` come from P(Yes) of every test record (one pass).
- `ndcg@K` (sampled): each liked target ranked among `num_negatives` catalog items (tlrec_utils.negatives),
  every candidate scored with the same prompt and the target swapped in; the 1 + N prompts share the
  history prefix, so it runs once (scoring.score_shared_prefix).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from . import metrics as M
from .errors import InputError, where
from .negatives import CatalogTooSmall, sample_negatives
from .scoring import score_by_generation, score_prompts, score_shared_prefix
from .tokenization import RecordEncoder, derive_answer_tokens, rerender

logger = logging.getLogger(__name__)


def load_catalog(items_file, records: list[dict]) -> dict[str, str]:
    """item_id -> title: from `items_file` (JSON {id: title} or [{item_id, title}, ...]), else every item
    seen in `records` (histories and targets)."""
    if items_file is None:
        catalog = {}
        for rec in records:
            for h in rec.get("history") or []:
                catalog[str(h["item_id"])] = h["title"]
            if isinstance(rec.get("target"), dict):
                catalog[str(rec["target"]["item_id"])] = rec["target"]["title"]
        logger.info("no --items_file: sampling negatives from the %d items seen in the test file", len(catalog))
        return catalog
    path = Path(items_file)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list):
        catalog = {}
        for i, item in enumerate(data):
            if not isinstance(item, dict) or "item_id" not in item or "title" not in item:
                raise InputError(f"{where(path, record=i)}: expected an object with 'item_id' and 'title'")
            catalog[str(item["item_id"])] = str(item["title"])
        return catalog
    raise InputError(f"{path}: expected a JSON object {{item_id: title}} or a list of {{item_id, title}}")


def ranking_candidates(records: list[dict], catalog: dict[str, str], num_negatives: int, seed: int,
                       source: str = "test file", catalog_name: str | None = None):
    """For each liked record with structure: (record index, [target record, negative records...])."""
    usable = [i for i, r in enumerate(records) if r.get("label") and rerender(r) is not None]
    subset = [records[i] for i in usable]
    try:
        negatives = sample_negatives(subset, catalog.keys(), num_negatives=num_negatives, seed=seed)
    except CatalogTooSmall as exc:  # exc.index counts the liked records only
        name = f"--items_file {catalog_name}" if catalog_name else "the items seen in the test file (no --items_file)"
        raise InputError(f"{where(source, record=usable[exc.index])}: {name} has {exc.available} items outside "
                         f"the record's history and target, fewer than --num_negatives {exc.wanted}") from None
    out = []
    for i, negs in zip(usable, negatives):
        rec = records[i]
        cands = [rec] + [rerender(rec, target={"item_id": n, "title": catalog[n]}) for n in negs]
        out.append((i, cands))
    return out


def evaluate(model, tokenizer, records: list[dict], args, catalog=None, source: str = "test file", template=None):
    """(metrics dict, predictions list). `args`: arguments.EvalArguments; `template`: prompts.PromptTemplate
    (default: `args.prompt_template` or tallrec; run_eval passes the one saved with the model)."""
    from .prompts import get_template

    template = template or get_template(getattr(args, "prompt_template", None))
    started = time.time()
    wanted = {m.strip() for m in args.metrics.split(",") if m.strip()}
    unknown = wanted - {"auc", "ndcg"}
    if unknown:
        raise InputError(f"--metrics: unknown {', '.join(sorted(unknown))} (choose from auc, ndcg)")
    answer = derive_answer_tokens(tokenizer, template)
    encoder = RecordEncoder(tokenizer, args.max_length, answer, template=template)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    k = args.ndcg_k
    result = {"counts": {"records": len(records), "liked": int(sum(r["label"] for r in records))}}
    predictions = [
        {"index": i, "user_id": r.get("user_id"), "item_id": (r.get("target") or {}).get("item_id"),
         "label": r["label"]}
        for i, r in enumerate(records)
    ]

    def score(encodings, desc, progress=True):
        if args.eval_mode == "generate":
            p, n_gen = score_by_generation(model, encodings, answer, pad_id, eos_id, args.batch_size,
                                           args.max_new_tokens, progress=progress)
            result["counts"]["generated_tokens"] = result["counts"].get("generated_tokens", 0) + int(n_gen.sum())
            return p
        return score_prompts(model, encodings, answer, pad_id, args.batch_size, progress=progress, desc=desc)

    if "auc" in wanted:
        encodings = [encoder.prompt_ids(r, where(source, record=i)) for i, r in enumerate(records)]
        p_yes = score(encodings, "scoring")
        labels = [r["label"] for r in records]
        result["auc"] = M.auc(labels, p_yes)
        users = [r.get("user_id") for r in records]
        no_user = sum(u is None for u in users)
        if not no_user:
            result[f"ndcg@{k}_user"], result["counts"]["users_ranked"] = M.user_ndcg(users, labels, p_yes, k)
        else:  # e.g. TALLRec's published Book records: no user ids, so no per-user ranking
            result[f"ndcg@{k}_user"] = None
            result.setdefault("notes", {})[f"ndcg@{k}_user"] = (
                f"not computed: {no_user} of {len(records)} records carry no user_id")
        for pred, p in zip(predictions, p_yes):
            pred["p_yes"] = float(p)

    if "ndcg" in wanted:
        catalog = catalog if catalog is not None else load_catalog(None, records)
        rankings = []
        cands_by_record = ranking_candidates(records, catalog, args.num_negatives, args.seed, source,
                                             getattr(args, "items_file", None))
        rank_encoder = RecordEncoder(tokenizer, args.max_length, answer, template=template)
        for i, cands in tqdm(cands_by_record, desc="ranking"):
            encodings = [rank_encoder.prompt_ids(c, where(source, record=i)) for c in cands]
            if args.eval_mode == "generate":
                scores = score(encodings, "ranking", progress=False)
            else:
                scores = score_shared_prefix(model, encodings, answer, pad_id, batch_size=max(args.batch_size, 64))
            rankings.append((scores[0], scores[1:]))
            predictions[i]["ranking_item_ids"] = [c["target"]["item_id"] for c in cands]
            predictions[i]["ranking_p_yes"] = [float(s) for s in scores]
        result[f"ndcg@{k}"] = M.mean_sampled_ndcg(rankings, k)
        result["counts"]["ranked"] = len(rankings)
        result["counts"]["liked_without_structure"] = result["counts"]["liked"] - len(rankings)

    # prompts cut to --max_length (by dropping the oldest history items, or in the middle)
    result["counts"]["truncated"] = dict(encoder.truncations)
    encoder.report(source, len(records))
    if "ndcg" in wanted:
        result["counts"]["truncated_ranking_prompts"] = dict(rank_encoder.truncations)
        rank_encoder.report(f"{source} (ranking prompts)", sum(len(c) for _, c in cands_by_record))
    result["settings"] = {
        "eval_mode": args.eval_mode, "metrics": sorted(wanted), "num_negatives": args.num_negatives,
        "ndcg_k": k, "seed": args.seed, "max_length": args.max_length, "batch_size": args.batch_size,
        "answer_token_ids": {"yes": answer.yes_id, "no": answer.no_id}, "prompt_template": template.name,
    }
    result["wall_time_s"] = round(time.time() - started, 3)
    return {key: M.json_safe(v) for key, v in result.items()}, predictions


def load_test_records(path, limit=None) -> list[dict]:
    from .records import load_records

    records = load_records(path, require_label=True)
    if not records:
        raise InputError(f"{path}: no records")
    return records[:limit] if limit else records


def summary_line(metrics: dict, k: int = 10) -> str:
    def fmt(key):
        v = metrics.get(key)
        return "n/a" if v is None else f"{v:.4f}"

    return (f"AUC {fmt('auc')}  NDCG@{k} {fmt(f'ndcg@{k}')}  NDCG@{k}_user {fmt(f'ndcg@{k}_user')}  "
            f"({metrics['counts']['records']} records, {metrics['wall_time_s']:.1f} s)")


def write_outputs(output_dir, metrics: dict, predictions: list[dict]) -> None:
    from .fileio import atomic_write_json, atomic_write_text, staged_output_dir

    with staged_output_dir(output_dir) as stage:
        atomic_write_text(stage / "predictions.jsonl",
                          "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
        atomic_write_json(stage / "metrics.json", metrics)
