"""P(Yes) from one forward pass per prompt, shared-prefix ranking, and the authors' generate method.

P(Yes) = softmax over the two answer-token logits at the first response position, which is the last
position of the scoring prompt (tokenization.RecordEncoder.prompt_ids). Batches are sorted by length and
left padded, with explicit position ids, so a prompt's score does not depend on its batch.
"""

from __future__ import annotations

import copy
import inspect

import numpy as np
import torch
from tqdm.auto import tqdm

from .tokenization import AnswerTokens, common_prefix_length


def _forward_params(model) -> set[str]:
    """Keyword arguments the underlying model's forward takes (through DDP/DeepSpeed and PEFT wrappers)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


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


def p_yes_from_logits(logits: torch.Tensor, answer: AnswerTokens) -> torch.Tensor:
    """softmax over the (No, Yes) logits -> P(Yes), in float32."""
    two = logits[..., [answer.no_id, answer.yes_id]].float()
    return torch.softmax(two, dim=-1)[..., 1]


def length_sorted_batches(lengths, batch_size: int):
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def score_prompts(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int, batch_size: int = 16,
                  progress: bool = True, desc: str = "scoring") -> np.ndarray:
    """P(Yes) for each encoded prompt: one forward pass each, length-sorted left-padded batches."""
    device = next(model.parameters()).device
    params = _forward_params(model)
    out = np.zeros(len(encodings), dtype=np.float64)
    batches = length_sorted_batches([len(e) for e in encodings], batch_size)
    for idx in tqdm(batches, desc=desc, disable=not progress):
        ids, mask, pos = (t.to(device) for t in left_pad([encodings[i] for i in idx], pad_id))
        logits = answer_logits(model, ids, mask, pos, params=params)
        out[idx] = p_yes_from_logits(logits, answer).cpu().numpy()
    return out


@torch.inference_mode()
def score_shared_prefix(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int,
                        batch_size: int = 64) -> np.ndarray:
    """P(Yes) of prompts sharing a prefix (one user's history with different targets): the prefix runs once
    into a KV cache, the suffixes run as batches on top of it. Same numbers as `score_prompts`."""
    device = next(model.parameters()).device
    params = _forward_params(model)
    prefix_len = min(len(e) for e in encodings) - 1  # every suffix keeps at least its answer position
    for e in encodings[1:]:
        prefix_len = min(prefix_len, common_prefix_length(encodings[0], e))
    if prefix_len < 1:
        return score_prompts(model, encodings, answer, pad_id, batch_size, progress=False)
    prefix = torch.tensor([encodings[0][:prefix_len]], device=device)
    prefix_out = model(input_ids=prefix, attention_mask=torch.ones_like(prefix), use_cache=True)
    prefix_cache = getattr(prefix_out, "cache", None)
    if prefix_cache is None:
        prefix_cache = prefix_out.past_key_values
    out = np.zeros(len(encodings), dtype=np.float64)
    for start in range(0, len(encodings), batch_size):
        chunk = encodings[start:start + batch_size]
        ids, mask, pos = left_pad([e[prefix_len:] for e in chunk], pad_id)
        ids, mask, pos = ids.to(device), mask.to(device), (pos + prefix_len).to(device)
        # suffixes are left padded *after* the prefix: the mask hides the gap, position ids skip it
        full_mask = torch.cat([torch.ones((len(chunk), prefix_len), dtype=mask.dtype, device=device), mask], dim=1)
        cache = copy.deepcopy(prefix_cache)
        cache.batch_repeat_interleave(len(chunk))
        logits = answer_logits(model, ids, full_mask, pos, past_key_values=cache, params=params)
        out[start:start + len(chunk)] = p_yes_from_logits(logits, answer).cpu().numpy()
    return out


@torch.inference_mode()
def score_by_generation(model, encodings: list[list[int]], answer: AnswerTokens, pad_id: int, eos_id: int | None,
                        batch_size: int = 16, max_new_tokens: int = 128, progress: bool = True):
    """The authors' method, for comparison: greedy generation, then P(Yes) from the first step's scores.

    Returns (p_yes, generated token counts)."""
    device = next(model.parameters()).device
    out = np.zeros(len(encodings), dtype=np.float64)
    n_generated = np.zeros(len(encodings), dtype=np.int64)
    for idx in tqdm(length_sorted_batches([len(e) for e in encodings], batch_size), desc="generating",
                    disable=not progress):
        ids, mask, _ = (t.to(device) for t in left_pad([encodings[i] for i in idx], pad_id))
        gen = model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
            output_scores=True, return_dict_in_generate=True, pad_token_id=pad_id, eos_token_id=eos_id,
        )
        out[idx] = p_yes_from_logits(gen.scores[0], answer).cpu().numpy()
        new = gen.sequences[:, ids.shape[1]:]
        n_generated[idx] = (new != pad_id).sum(-1).cpu().numpy() if pad_id != eos_id else new.shape[1]
    return out, n_generated
