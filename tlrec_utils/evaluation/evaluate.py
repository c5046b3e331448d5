"""Evaluation of a (tuned) LLM recommender on Yes/No records: AUC, NDCG@K (sampled and per user).

- `auc` and `ndcg@K_user` come from P(Yes) of every test record (one pass).
- `ndcg@K` (sampled): each liked target ranked among `num_negatives` catalog items (tlrec_utils.evaluation.negatives),
  every candidate scored with the same prompt and the target swapped in; the 1 + N prompts share the
  history prefix, which runs once (scoring.candidate_group_stats).
- `--score_fn`: `two_logit` (default) keys as above; `authors` (their evaluate.py) adds `auc_authors`,
  `ndcg@K_authors`, `ndcg@K_user_authors`; `both` reports both from the same forward passes.
- Data parallel: under `accelerate launch --num_processes N` each process scores a contiguous shard of the
  records and of the ranking groups; rank 0 gathers them and alone returns the metrics and predictions
  (same order and values as one process, to float tolerance).
- Encodings (the prompts' token ids and the sampled ranking candidates) are memoised per process, keyed by
  the tokenizer's content, the template, the records, the catalog and the sampling settings: a pipeline or
  grid evaluating many models on one test split tokenizes its ~50 x liked-records ranking prompts once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..errors import InputError, where
from ..model.tokenization import RecordEncoder, derive_answer_tokens, render_settings, rerender
from . import metrics as M
from .negatives import CatalogTooSmall, sample_negatives
from .scoring import (
    SCORE_FNS,
    candidate_group_stats,
    generation_answer_stats,
    p_yes_from_stats,
    prompt_answer_stats,
)

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
    settings = {i: render_settings(r) for i, r in enumerate(records) if r.get("label")}
    usable = [i for i, st in settings.items() if st is not None]
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
        cands = [rec] + [rerender(rec, target={"item_id": n, "title": catalog[n]}, settings=settings[i]) for n in negs]
        out.append((i, cands))
    return out


def score_fns_of(spec: str) -> list[str]:
    """--score_fn two_logit | authors | both (EvalArguments' choices) -> the score functions to report."""
    return list(SCORE_FNS) if spec == "both" else [spec]


def key_suffix(score_fn: str) -> str:
    return "" if score_fn == "two_logit" else f"_{score_fn}"


def distributed_state(device: str | None = None):
    """accelerate's PartialState under a multi-process launch (`accelerate launch --multi_gpu`, torchrun), else
    None. Without CUDA (or with --device cpu) the processes talk through gloo on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def _shard(n: int, state) -> list[int]:
    """This process's contiguous share of range(n) (rank order = original order)."""
    if state is None:
        return list(range(n))
    return [int(i) for i in np.array_split(np.arange(n), state.num_processes)[state.process_index]]


# key -> (value, truncation counts); a few entries: one test split x its settings within a pipeline or grid
_ENCODING_MEMO: dict[str, tuple] = {}
_ENCODING_MEMO_SIZE = 4


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """Content hash of a fast tokenizer (vocabulary, merges, normalizer, special tokens); None otherwise."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def _memo_key(kind: str, fingerprint: str | None, template, max_length: int, payload) -> str | None:
    if fingerprint is None:
        return None
    text = json.dumps([kind, fingerprint, asdict(template), max_length, payload], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _memoised(key: str | None, encoder: RecordEncoder, compute):
    """compute() once per key; the encoder's truncation counts are restored with the value."""
    if key is not None and key in _ENCODING_MEMO:
        value, truncations = _ENCODING_MEMO[key]
        encoder.truncations.update(truncations)
        return value
    before = Counter(encoder.truncations)
    value = compute()
    if key is not None:
        while len(_ENCODING_MEMO) >= _ENCODING_MEMO_SIZE:
            _ENCODING_MEMO.pop(next(iter(_ENCODING_MEMO)))
        _ENCODING_MEMO[key] = (value, encoder.truncations - before)
    return value


def evaluate(model, tokenizer, records: list[dict], args, catalog=None, source: str = "test file", template=None,
             state=None):
    """(metrics dict, predictions list); (None, None) on every process but rank 0 when `state` (an accelerate
    PartialState of several processes) is given. `args`: arguments.EvalArguments (its `metrics` and `score_fn`
    checked there); `template`: prompts.PromptTemplate (default: `args.prompt_template` or tallrec; run_eval
    passes the one saved with the model). Each process scores its share (`score`), rank 0 gathers the payloads
    and assembles the metrics (`assemble`)."""
    from ..prompts import get_template

    template = template or get_template(getattr(args, "prompt_template", None))
    started = time.time()
    answer = derive_answer_tokens(tokenizer, template)
    encoders = (RecordEncoder(tokenizer, args.max_length, answer, template=template),
                RecordEncoder(tokenizer, args.max_length, answer, template=template))
    payload = score(model, records, args, encoders, catalog, source, state)
    if state is not None:
        from accelerate.utils import gather_object

        payloads = gather_object([payload])
        if not state.is_main_process:
            return None, None
    else:
        payloads = [payload]
    result, predictions = assemble(records, payloads, score_fns_of(getattr(args, "score_fn", "two_logit")),
                                   args.ndcg_k)
    # prompts cut to --max_length (by dropping the oldest history items, or in the middle), all processes
    encoder, rank_encoder = encoders
    encoder.truncations = Counter(result["counts"]["truncated"])
    encoder.report(source, len(records))
    if "ranked" in payload:
        rank_encoder.truncations = Counter(result["counts"]["truncated_ranking_prompts"])
        rank_encoder.report(f"{source} (ranking prompts)", sum(len(c) for _, c in payload["candidates"]))
    result["settings"] = {
        "eval_mode": args.eval_mode, "metrics": sorted(metric_names(args)), "num_negatives": args.num_negatives,
        "ndcg_k": args.ndcg_k, "seed": args.seed, "max_length": args.max_length, "batch_size": args.batch_size,
        "score_fn": getattr(args, "score_fn", "two_logit"),
        "num_processes": 1 if state is None else state.num_processes,
        "answer_token_ids": {"yes": answer.yes_id, "no": answer.no_id}, "prompt_template": template.name,
    }
    result["wall_time_s"] = round(time.time() - started, 3)
    return {key: M.json_safe(v) for key, v in result.items()}, predictions


def metric_names(args) -> set[str]:
    """The `--metrics` asked for (auc, ndcg), as EvalArguments.check_values checked and normalised them."""
    return {m.strip() for m in args.metrics.split(",") if m.strip()}


def score(model, records: list[dict], args, encoders: tuple, catalog=None, source: str = "test file",
          state=None) -> dict:
    """This process's share of the forward passes, as the payload `assemble` reads: `scored` (record indices,
    their answer statistics) for auc, `ranked` (ranking-group indices, each group's statistics) and `candidates`
    ((record index, [item ids ranked]) of every group, the same on every process) for ndcg, the truncation
    counts of both encoders (`encoders`: prompts, ranking prompts), and `generated_tokens` under --eval_mode
    generate."""
    encoder, rank_encoder = encoders
    tokenizer, answer = encoder.tokenizer, encoder.answer
    wanted = metric_names(args)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    main_process = state is None or state.is_main_process
    generated = 0

    def stats_of(encodings, desc):
        nonlocal generated
        if args.eval_mode == "generate":
            stats, n_gen = generation_answer_stats(model, encodings, answer, pad_id, eos_id, args.batch_size,
                                                   args.max_new_tokens, progress=main_process)
            generated += int(n_gen.sum())
            return stats
        return prompt_answer_stats(model, encodings, answer, pad_id, args.batch_size, progress=main_process,
                                   desc=desc)

    payload = {}
    fingerprint = _tokenizer_fingerprint(tokenizer)  # once: a large vocabulary is megabytes to hash
    template = encoder.template
    if "auc" in wanted:
        mine = _shard(len(records), state)
        key = _memo_key("prompts", fingerprint, template, args.max_length, [source, mine, records])
        encodings = _memoised(key, encoder, lambda: encoder.prompt_ids_many(
            [records[i] for i in mine], [where(source, record=i) for i in mine]))
        payload["scored"] = (mine, stats_of(encodings, "scoring") if mine else np.zeros((0, 3)))
    if "ndcg" in wanted:
        catalog = catalog if catalog is not None else load_catalog(None, records)
        n_processes = 1 if state is None else state.num_processes
        key = _memo_key("ranking", fingerprint, template, args.max_length,
                        [source, records, catalog, args.num_negatives, args.seed, n_processes,
                         0 if state is None else state.process_index])

        def candidates_and_groups():
            cands = ranking_candidates(records, catalog, args.num_negatives, args.seed, source,
                                       getattr(args, "items_file", None))  # the same on every rank
            return cands, [rank_encoder.prompt_ids_many(cands[g][1], [where(source, record=cands[g][0])]
                                                        * len(cands[g][1])) for g in _shard(len(cands), state)]

        cands_by_record, groups = _memoised(key, rank_encoder, candidates_and_groups)
        mine = _shard(len(cands_by_record), state)
        if args.eval_mode == "generate":
            flat = stats_of([e for g in groups for e in g], "ranking") if groups else np.zeros((0, 3))
            bounds = np.cumsum([0] + [len(g) for g in groups])
            group_stats = [flat[a:b] for a, b in pairwise(bounds)]
        else:
            group_stats = candidate_group_stats(model, groups, answer, pad_id, batch_size=max(args.batch_size, 64),
                                                progress=main_process)
        payload["ranked"] = (mine, group_stats)
        payload["candidates"] = [(i, [c["target"]["item_id"] for c in cands]) for i, cands in cands_by_record]
    payload.update(truncated=Counter(encoder.truncations), truncated_ranking=Counter(rank_encoder.truncations))
    if args.eval_mode == "generate":
        payload["generated_tokens"] = generated
    return payload


def assemble(records: list[dict], payloads: list[dict], score_fns=("two_logit",), k: int = M.NDCG_K):
    """(metrics, predictions) from every process's payload (`score`), without a model: AUC with its 95%
    interval and the per-user NDCG@k from the `scored` statistics, the sampled NDCG@k from the `ranked` groups
    (target first), for each score function (`score_fns`: scoring.SCORE_FNS; keys of the non-default one
    suffixed), with the counts (records, liked, ranked, truncated prompts, generated tokens)."""
    result = {"counts": {"records": len(records), "liked": int(sum(r["label"] for r in records))}}
    predictions = [
        {"index": i, "user_id": r.get("user_id"), "item_id": (r.get("target") or {}).get("item_id"),
         "label": r["label"]}
        for i, r in enumerate(records)
    ]
    if "scored" in payloads[0]:
        _assemble_auc(records, payloads, score_fns, k, result, predictions)
    if "ranked" in payloads[0]:
        _assemble_sampled_ndcg(payloads, score_fns, k, result, predictions)
    if "generated_tokens" in payloads[0]:
        result["counts"]["generated_tokens"] = sum(part["generated_tokens"] for part in payloads)
    result["counts"]["truncated"] = dict(sum((part["truncated"] for part in payloads), Counter()))
    if "ranked" in payloads[0]:
        result["counts"]["truncated_ranking_prompts"] = dict(sum((part["truncated_ranking"] for part in payloads),
                                                                 Counter()))
    return result, predictions


def _assemble_auc(records, payloads, score_fns, k, result, predictions) -> None:
    """AUC, its interval and the per-user NDCG of every record's P(Yes) (into `result` and `predictions`)."""
    stats = np.zeros((len(records), 3))
    for part in payloads:
        stats[part["scored"][0]] = part["scored"][1]
    labels = [r["label"] for r in records]
    users = [r.get("user_id") for r in records]
    for fn in score_fns:
        sfx, p_yes = key_suffix(fn), p_yes_from_stats(stats, fn)
        result[f"auc{sfx}"] = M.auc(labels, p_yes)
        result[f"auc_ci95{sfx}"] = list(M.auc_interval(labels, result[f"auc{sfx}"]))
        value, users_ranked, reason = M.user_ndcg_or_reason(users, labels, p_yes, k)
        user_key = M.ndcg_key(k, per_user=True) + sfx
        result[user_key] = value
        if reason is None:
            result["counts"]["users_ranked"] = users_ranked
        else:
            result.setdefault("notes", {})[user_key] = reason
        for pred, p in zip(predictions, p_yes):
            pred[f"p_yes{sfx}"] = float(p)


def _assemble_sampled_ndcg(payloads, score_fns, k, result, predictions) -> None:
    """The sampled NDCG of the ranking groups (each target first among its negatives)."""
    candidates = payloads[0]["candidates"]
    group_stats = [None] * len(candidates)
    for part in payloads:
        for g, st in zip(*part["ranked"]):
            group_stats[g] = st
    for i, item_ids in candidates:
        predictions[i]["ranking_item_ids"] = list(item_ids)
    for fn in score_fns:
        sfx, rankings = key_suffix(fn), []
        for (i, _), st in zip(candidates, group_stats):
            scores = p_yes_from_stats(st, fn)
            rankings.append((scores[0], scores[1:]))
            predictions[i][f"ranking_p_yes{sfx}"] = [float(s) for s in scores]
        result[M.ndcg_key(k) + sfx] = M.mean_sampled_ndcg(rankings, k)
    result["counts"]["ranked"] = len(candidates)
    result["counts"]["liked_without_structure"] = result["counts"]["liked"] - len(candidates)


def load_test_records(path, limit=None) -> list[dict]:
    from ..data.records import load_records

    records = load_records(path, require_label=True)
    if not records:
        raise InputError(f"{path}: no records")
    return records[:limit] if limit else records


def summary_line(metrics: dict, k: int = M.NDCG_K) -> str:
    def fmt(key):
        v = metrics.get(key)
        return "n/a" if v is None else f"{v:.4f}"

    line = ""
    sampled, per_user = M.ndcg_key(k), M.ndcg_key(k, per_user=True)
    for fn in SCORE_FNS:
        sfx = key_suffix(fn)
        if any(f"{m}{sfx}" in metrics for m in ("auc", sampled, per_user)):
            line += (f"{'' if not sfx else '[' + fn + '] '}AUC {fmt(f'auc{sfx}')}  NDCG@{k} {fmt(sampled + sfx)}  "
                     f"NDCG@{k}_user {fmt(per_user + sfx)}  ")
    return line + f"({metrics['counts']['records']} records, {metrics['wall_time_s']:.1f} s)"


def write_outputs(output_dir, metrics: dict, predictions: list[dict]) -> None:
    from ..fileio import atomic_write_json, atomic_write_text, staged_output_dir

    with staged_output_dir(output_dir) as stage:
        atomic_write_text(stage / "predictions.jsonl",
                          "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
        atomic_write_json(stage / "metrics.json", metrics)
