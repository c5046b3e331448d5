"""Padding-free training batches (`--packing`) and micro batches sized by tokens (`--max_tokens_per_batch`).

Packing: a micro batch's records are concatenated into one row of shape [1, total tokens] by HF's
`DataCollatorWithFlattening` (the "padding_free" collator): position ids restart at 0 for every record, and the
first label of every record is -100, so no token predicts across a boundary. The attention stays inside each
record because transformers (5.x) reads the restarting position ids: `flash_attention_2` runs its varlen kernel
(with the collator's `cu_seq_lens_*`), `sdpa` and `eager` get a block-diagonal causal mask
(masking_utils.find_packed_sequence_indices). That mask is only built when the forward has no KV cache, so the
collator passes `use_cache=False` (LLaMA's config has use_cache=True, and a training forward without gradient
checkpointing would otherwise build a cache and let records attend to each other). The loss is the padded batch's:
the same label tokens (response only, or every token with --train_on_inputs; EOS as encoded), summed and divided
by the Trainer's `num_items_in_batch`. `check_packing_isolated` proves the isolation on the model itself before
training (a model whose own code ignores position ids, e.g. one loaded with --trust_remote_code, is refused).

Token budget: the records of an optimizer step stay the recipe's (per_device_train_batch_size x
gradient_accumulation_steps x processes consecutive records of the training sampler's order: length grouping and
the CoT curriculum as without a budget); they are split into a fixed number G of micro batches per process, never
more than the budget tokens each. G is what the step holding the longest records of the whole data needs, so the
Trainer runs G accumulation steps (its `gradient_accumulation_steps`, and DeepSpeed's, become G) and every step
fits. The summed gradient of an optimizer step is that of the padded path: HF Trainer divides each micro batch's
summed token loss by the label tokens of the whole step (`num_items_in_batch`, gathered over processes).
"""

from __future__ import annotations

import heapq
import logging
import math

from torch.utils.data import Sampler

from ..errors import InputError

logger = logging.getLogger(__name__)

# attention kernels whose transformers implementation skips the other records' tokens (varlen kernels); with
# sdpa/eager packing is exact but each packed row's attention is computed as one (masked) square
PACKING_KERNELS = ("flash_attention_2", "flash_attention_3")


def use_packing(flag: bool | None, attn_implementation: str) -> bool:
    """--packing: True/False as given; unset (None): on where the attention kernel skips the other records."""
    if flag is None:
        return attn_implementation in PACKING_KERNELS
    return bool(flag)


class PackedCollator:
    """Training features -> one padding-free row (HF's DataCollatorWithFlattening), `use_cache=False`;
    `flash_kwargs`: also the cumulative record lengths flash-attention's varlen kernel reads."""

    def __init__(self, flash_kwargs: bool = False):
        from transformers import DataCollatorWithFlattening

        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=flash_kwargs)

    def __call__(self, features):
        batch = self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        batch["use_cache"] = False
        return batch


def check_packing_isolated(model) -> None:
    """Two short records packed in one row give the second record the logits it has alone; else an InputError
    (the model's attention ignores position ids and would let packed records attend to each other)."""
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    device = model.get_input_embeddings().weight.device
    first = torch.arange(3, 9, device=device) % vocab
    second = torch.arange(11, 16, device=device) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=second[None], use_cache=False).logits[0].float()
            positions = torch.cat([torch.arange(len(first)), torch.arange(len(second))]).to(device)
            packed = model(input_ids=torch.cat([first, second])[None], position_ids=positions[None],
                           use_cache=False).logits[0, len(first):].float()
    finally:
        model.train(was_training)
    scale = alone.abs().max().clamp_min(1.0)
    if not torch.allclose(packed, alone, atol=2e-2 * float(scale), rtol=0):
        raise InputError(f"--packing: {type(model).__name__} ({model.config.model_type}) lets packed records attend "
                         "to each other (its attention ignores the restarting position ids); run without --packing")


def micro_batches_per_step(lengths, records_per_step: int, budget: int, processes: int = 1) -> int:
    """G: micro batches per process and optimizer step such that any `records_per_step` records of `lengths`,
    split by `split_step`, fit `budget` tokens each. Greedy least-loaded splitting into m bins keeps every bin
    under (tokens of the step) / m + longest record, so m = ceil(tokens of the longest step / (budget - longest))."""
    longest = max(lengths)
    if budget < longest:
        raise InputError(f"--max_tokens_per_batch {budget}: below the longest training record ({longest} tokens; "
                         "raise it to at least --max_length)")
    worst = sum(heapq.nlargest(records_per_step, lengths))
    bins = records_per_step if budget == longest else math.ceil(worst / (budget - longest))
    return max(1, min(math.ceil(bins / processes), records_per_step // processes))


def split_step(indices: list[int], lengths, bins: int) -> list[list[int]]:
    """The records of one step in `bins` micro batches balanced by tokens (longest first into the lightest bin;
    ties to the first bin), each keeping the step's order."""
    load = [(0, b) for b in range(bins)]
    members: list[list[int]] = [[] for _ in range(bins)]
    for pos in sorted(range(len(indices)), key=lambda p: -lengths[indices[p]]):
        tokens, b = heapq.heappop(load)
        members[b].append(pos)
        heapq.heappush(load, (tokens + lengths[indices[pos]], b))
    return [[indices[p] for p in sorted(m)] for m in members]


class TokenBudgetBatchSampler(Sampler):
    """Micro batches of the order of `sampler` (its `set_epoch` forwarded): each optimizer step's
    `records_per_step` consecutive indices split into `micro_batches` x `processes` micro batches (accelerate gives
    process p the micro batches p, p + processes, ...). The last, shorter step of an epoch gets fewer micro batches
    (at least one per process while it has a record per process)."""

    def __init__(self, sampler, lengths, records_per_step: int, micro_batches: int, processes: int = 1):
        self.sampler = sampler  # the name accelerate looks for (it swaps a RandomSampler for a seedable one)
        self.lengths = list(lengths)
        self.records_per_step = records_per_step
        self.micro_batches = micro_batches
        self.processes = processes

    def _bins(self, n_records: int) -> int:
        if n_records >= self.records_per_step:
            return self.micro_batches * self.processes
        per_process = max(1, min(self.micro_batches, n_records // self.processes))
        return min(per_process * self.processes, n_records)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        full, rest = divmod(len(self.sampler), self.records_per_step)
        return full * self._bins(self.records_per_step) + (self._bins(rest) if rest else 0)

    def __iter__(self):
        order = list(self.sampler)
        for start in range(0, len(order), self.records_per_step):
            step = order[start : start + self.records_per_step]
            yield from split_step(step, self.lengths, self._bins(len(step)))
