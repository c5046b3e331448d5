"""Answer scores from one forward pass per prompt, packed shared-prefix ranking, and the authors' generate method.

Every scorer returns *answer statistics* per prompt, read at the first response position (the last position
of the scoring prompt, tokenization.RecordEncoder.prompt_ids): the "No" logit, the "Yes" logit and the
log-sum-exp of the full-vocabulary logits. P(Yes) comes from them by a score function (SCORE_FNS):

- `two_logit` (default): softmax over the two answer logits, P(Yes) = sigmoid(l_yes - l_no).
- `authors`: the authors' evaluate.py (ljy2222/TLRec evaluate.py @561abcf, SAI990323/TALLRec evaluate.py
  @d99021c): the full-vocabulary softmax of the first generated step, then a second softmax over the two
  probabilities p(Yes), p(No): sigmoid(p_yes - p_no). Monotone in p_yes - p_no, not in the log ratio, so
  it can rank records differently.

Batches are sorted by length and left padded, with explicit position ids, so a prompt's score does not
depend on its batch.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import torch
from scipy.special import expit
from tqdm.auto import tqdm

from ..model.tokenization import AnswerTokens, common_prefix_length

SCORE_FNS = ("two_logit", "authors")
# models whose attention takes a custom 4D mask and explicit position ids (transformers' masking_utils):
# ranking packs each user's candidates into one sequence; any other model uses the KV-cache path
PACKABLE_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3"}


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _forward_params(model) -> set[str]:
    """Keyword arguments the underlying model's forward takes (through DDP/DeepSpeed and PEFT wrappers)."""
    return set(inspect.signature(_unwrap(model).forward).parameters)


def left_pad(seqs: list[list[int]], pad_id: int):
    """(input_ids, attention_mask, position_ids) for left-padded `seqs`."""
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if s:
            input_ids[row, width - len(s):] = torch.tensor(s, dtype=torch.long)
            attention_mask[row, width - len(s):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def answer_logits(model, input_ids, attention_mask, position_ids=None, past_key_values=None, params=None):
    """Next-token logits at the last position (the answer position): shape (batch, vocab)."""
    params = params if params is not None else _forward_params(model)
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None and "position_ids" in params:
        kwargs["position_ids"] = position_ids
    if past_key_values is not None:
        # transformers >= 5.2x names it `cache`; older versions and other models `past_key_values`
        kwargs["cache" if "cache" in params else "past_key_values"] = past_key_values
        kwargs["use_cache"] = True
    else:
        kwargs["use_cache"] = False
    if "logits_to_keep" in params:
        kwargs["logits_to_keep"] = 1  # only the answer position reaches the LM head
    return model(**kwargs).logits[:, -1, :]


def answer_stats(logits: torch.Tensor, answer: AnswerTokens) -> np.ndarray:
    """(n, 3) float64: the No logit, the Yes logit, log-sum-exp over the vocabulary (float32 arithmetic)."""
    logits = logits.float()
    stats = torch.stack([logits[..., answer.no_id], logits[..., answer.yes_id], torch.logsumexp(logits, dim=-1)], -1)
    return stats.cpu().numpy().astype(np.float64)


def p_yes_from_stats(stats: np.ndarray, score_fn: str = "two_logit") -> np.ndarray:
    """P(Yes) of each prompt under a score function (see the module docstring)."""
    stats = np.asarray(stats, dtype=np.float64).reshape(-1, 3)
    no, yes, lse = stats[:, 0], stats[:, 1], stats[:, 2]
    if score_fn == "two_logit":
        return expit(yes - no)
    if score_fn == "authors":
        return expit(np.exp(yes - lse) - np.exp(no - lse))
    raise ValueError(f"unknown score function {score_fn!r} (choose from {', '.join(SCORE_FNS)})")


def length_sorted_batches(lengths, batch_size: int):
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def prompt_answer_stats(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int, batch_size: int = 16,
                        progress: bool = True, desc: str = "scoring") -> np.ndarray:
    """Answer statistics (n, 3) of each encoded prompt: one forward pass each, length-sorted left-padded batches."""
    device = next(model.parameters()).device
    params = _forward_params(model)
    out = np.zeros((len(encodings), 3), dtype=np.float64)
    batches = length_sorted_batches([len(e) for e in encodings], batch_size)
    for idx in tqdm(batches, desc=desc, disable=not progress):
        ids, mask, pos = (t.to(device) for t in left_pad([encodings[i] for i in idx], pad_id))
        out[idx] = answer_stats(answer_logits(model, ids, mask, pos, params=params), answer)
    return out


def score_prompts(model, encodings, answer, pad_id, batch_size: int = 16, progress: bool = True,
                  desc: str = "scoring", score_fn: str = "two_logit") -> np.ndarray:
    """P(Yes) of each encoded prompt (see prompt_answer_stats)."""
    return p_yes_from_stats(prompt_answer_stats(model, encodings, answer, pad_id, batch_size, progress, desc), score_fn)


def shared_prefix_length(encodings: list[list[int]]) -> int:
    """Tokens every encoding shares, leaving each at least its answer position."""
    n = min(len(e) for e in encodings) - 1
    for e in encodings[1:]:
        n = min(n, common_prefix_length(encodings[0], e))
    return n


@torch.inference_mode()
def shared_prefix_stats(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int,
                        batch_size: int = 64) -> np.ndarray:
    """Answer statistics of prompts sharing a prefix, KV-cache version (any model): the prefix runs once into
    a cache, the suffixes run as batches on top of copies of it. Same numbers as `prompt_answer_stats`."""
    device = next(model.parameters()).device
    params = _forward_params(model)
    prefix_len = shared_prefix_length(encodings)
    if prefix_len < 1:
        return prompt_answer_stats(model, encodings, answer, pad_id, batch_size, progress=False)
    prefix = torch.tensor([encodings[0][:prefix_len]], device=device)
    prefix_out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    prefix_cache = getattr(prefix_out, "cache", None)
    if prefix_cache is None:
        prefix_cache = prefix_out.past_key_values
    out = np.zeros((len(encodings), 3), dtype=np.float64)
    for start in range(0, len(encodings), batch_size):
        chunk = encodings[start:start + batch_size]
        ids, mask, pos = left_pad([e[prefix_len:] for e in chunk], pad_id)
        ids, mask, pos = ids.to(device), mask.to(device), (pos + prefix_len).to(device)
        # suffixes are left padded *after* the prefix: the mask hides the gap, position ids skip it
        full_mask = torch.cat([torch.ones((len(chunk), prefix_len), dtype=mask.dtype, device=device), mask], dim=1)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(chunk))
        logits = answer_logits(model, ids, full_mask, pos, past_key_values=cache, params=params)
        out[start:start + len(chunk)] = answer_stats(logits, answer)
    return out


def score_shared_prefix(model, encodings, answer, pad_id, batch_size: int = 64, score_fn: str = "two_logit"):
    """P(Yes) of prompts sharing a prefix (KV-cache version, see shared_prefix_stats)."""
    return p_yes_from_stats(shared_prefix_stats(model, encodings, answer, pad_id, batch_size), score_fn)


def can_pack(model) -> bool:
    base = _unwrap(model)
    return (getattr(base.config, "model_type", None) in PACKABLE_MODEL_TYPES
            and type(base).__module__.startswith("transformers.models.")
            and {"position_ids", "logits_to_keep"} <= _forward_params(model))


def _pack_rows(layouts, max_row_tokens: int):
    """Greedy rows of whole groups (longest first), each row at most `max_row_tokens` (or one group)."""
    rows, row, width = [], [], 0
    for lay in sorted(layouts, key=lambda lay: -lay[3]):
        if row and width + lay[3] > max_row_tokens:
            rows.append(row)
            row, width = [], 0
        row.append(lay)
        width += lay[3]
    if row:
        rows.append(row)
    return rows


@torch.inference_mode()
def candidate_group_stats(model, groups: list[list[list[int]]], answer: AnswerTokens, pad_id: int,
                          max_row_tokens: int = 2048, batch_size: int = 64, progress: bool = True,
                          desc: str = "ranking") -> list[np.ndarray]:
    """Answer statistics of every prompt of every group (one user's history with different targets).

    Packed (llama-family models): a row holds whole groups, each as its shared prefix followed by all its
    suffixes; a 4D attention mask lets each suffix see its own prefix and itself only, position ids continue
    the prefix in every suffix, and the LM head runs at the answer positions only. One forward pass per row,
    no KV-cache copies, several users per pass. A group longer than `max_row_tokens` packed (long candidate
    texts: Book titles make ~95-token suffixes, 51 of them) and other models: `shared_prefix_stats`, whose cost
    grows linearly with the candidates where a packed row's attention grows quadratically (7x faster on
    BookCrossing groups, docs/measurements.md). Same numbers as scoring every prompt on its own."""
    packable = can_pack(model)
    bar = tqdm(total=len(groups), desc=desc, disable=not progress)
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    dtype = dtype if dtype.is_floating_point and dtype.itemsize >= 2 else torch.float32
    out: list[np.ndarray | None] = [None] * len(groups)
    layouts = []
    for gi, enc in enumerate(groups):
        prefix_len = shared_prefix_length(enc) if len(enc) > 1 else len(enc[0]) - 1
        if prefix_len < 1:  # nothing shared: each prompt on its own
            out[gi] = prompt_answer_stats(model, enc, answer, pad_id, batch_size, progress=False)
            bar.update()
            continue
        suffixes = [e[prefix_len:] for e in enc]
        width = prefix_len + sum(len(s) for s in suffixes)
        if not packable or (width > max_row_tokens and len(enc) > 1):
            out[gi] = shared_prefix_stats(model, enc, answer, pad_id, batch_size)
            bar.update()
            continue
        layouts.append((gi, enc[0][:prefix_len], suffixes, width))
    rows = _pack_rows(layouts, max_row_tokens)
    for row in rows:
        width = sum(lay[3] for lay in row)
        ids = torch.empty(width, dtype=torch.long)
        pos = torch.empty(width, dtype=torch.long)
        allowed = torch.zeros((width, width), dtype=torch.bool)
        keep = []
        start = 0
        for _, prefix, suffixes, _ in row:
            p = len(prefix)
            ids[start:start + p] = torch.tensor(prefix)
            pos[start:start + p] = torch.arange(p)
            allowed[start:start + p, start:start + p] = torch.ones((p, p), dtype=torch.bool).tril_()
            prefix_start, start = start, start + p
            for s in suffixes:
                n = len(s)
                ids[start:start + n] = torch.tensor(s)
                pos[start:start + n] = torch.arange(p, p + n)
                allowed[start:start + n, prefix_start:prefix_start + p] = True
                allowed[start:start + n, start:start + n] = torch.ones((n, n), dtype=torch.bool).tril_()
                start += n
                keep.append(start - 1)
        mask = torch.zeros((1, 1, width, width), dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        logits = model(input_ids=ids[None].to(device), attention_mask=mask.to(device),
                       position_ids=pos[None].to(device), use_cache=False,
                       logits_to_keep=torch.tensor(keep, device=device)).logits[0]
        stats = answer_stats(logits, answer)
        offset = 0
        for gi, _, suffixes, _ in row:
            out[gi] = stats[offset:offset + len(suffixes)]
            offset += len(suffixes)
        bar.update(len(row))
    bar.close()
    return out


@torch.inference_mode()
def generation_answer_stats(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int,
                            eos_id: int | None, batch_size: int = 16, max_new_tokens: int = 128,
                            progress: bool = True):
    """The authors' method: greedy generation, answer statistics from the first step's scores.

    Returns (stats (n, 3), generated token counts)."""
    device = next(model.parameters()).device
    out = np.zeros((len(encodings), 3), dtype=np.float64)
    n_generated = np.zeros(len(encodings), dtype=np.int64)
    for idx in tqdm(length_sorted_batches([len(e) for e in encodings], batch_size), desc="generating",
                    disable=not progress):
        ids, mask, _ = (t.to(device) for t in left_pad([encodings[i] for i in idx], pad_id))
        gen = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
            output_scores=True, return_dict_in_generate=True, pad_token_id=pad_id, eos_token_id=eos_id,
        )
        out[idx] = answer_stats(gen.scores[0], answer)
        new = gen.sequences[:, ids.shape[1]:]
        n_generated[idx] = (new != pad_id).sum(-1).cpu().numpy() if pad_id != eos_id else new.shape[1]
    return out, n_generated


def score_by_generation(model, encodings, answer, pad_id, eos_id, batch_size: int = 16, max_new_tokens: int = 128,
                        progress: bool = True, score_fn: str = "two_logit"):
    """P(Yes) by the authors' generate-then-read-first-step method. Returns (p_yes, generated token counts)."""
    stats, n_generated = generation_answer_stats(model, encodings, answer, pad_id, eos_id, batch_size,
                                                 max_new_tokens, progress)
    return p_yes_from_stats(stats, score_fn), n_generated
