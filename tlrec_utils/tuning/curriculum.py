"""Curriculum order for CoT instruction tuning: Stage 1 records, then Stage 2, then Stage 3, inside HF Trainer.

`build_curriculum_sampler(stages, mode, seed, lengths, num_epochs)` returns a torch `Sampler` that the Trainer
subclass in `training.py` hands to its DataLoader (`_get_train_sampler`). Modes (`--curriculum`):

- `ordered` (default, the paper): every epoch walks all Stage 1 records, then all Stage 2, then all Stage 3;
  records are shuffled within a stage, differently each epoch (seeded by `seed` and the epoch).
- `shuffled`: a plain seeded shuffle of all records each epoch (the paper's "w/o curriculum" ablation).
- `trainer`: no sampler from here: training.py leaves the order to the Trainer (the authors' ins_tuning.py).
- `stagewise`: all epochs of Stage 1, then all epochs of Stage 2, then of Stage 3. HF Trainer still runs
  `num_train_epochs` epochs of N records each: the sampler lays out the whole schedule (num_epochs x N indices)
  and epoch e yields its e-th slice of N. So epoch boundaries no longer coincide with stage boundaries, but the
  learning-rate schedule, step counts, checkpoints and resumption work unchanged. Pass the integer number of
  epochs the Trainer runs (`math.ceil(num_train_epochs)`); with a fractional `num_train_epochs` the Trainer stops
  part-way through the last slice, i.e. inside the last stage.

Why the order survives HF Trainer and accelerate:
- The Trainer calls `set_epoch(epoch)` on this sampler before each epoch (through accelerate's DataLoaderShard),
  and `skip_first_batches` on resume: the order depends only on (seed, epoch), never on global RNG state, so
  every process computes the same order and a resumed run replays it.
- The DataLoader cuts the order into consecutive per-device batches. Gradient accumulation consumes them in
  order. With P data-parallel processes accelerate's `BatchSamplerShard` gives process p the batches p, p+P,
  p+2P, ...: the global batch of optimizer step s is exactly the s-th contiguous block of
  per_device_batch x P x grad_accum indices of this order. (tests/test_curriculum.py checks this with a real
  2-process torchrun run.) A batch may straddle a stage boundary, as with any sequential sampler.
- Length grouping (when `lengths` is given) happens within a stage only: the stage's shuffled indices are cut
  into mega-batches of `megabatch_size` records and each is sorted by length (longest first), as HF's
  `LengthGroupedSampler` does; no record ever moves to another stage's span.
"""

from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Sampler

from ..arguments import CURRICULUM_MODES
from ..errors import InputError

DEFAULT_MEGABATCH_SIZE = 64


def check_mode(mode: str) -> None:
    if mode not in CURRICULUM_MODES:
        raise InputError(f"--curriculum must be one of {', '.join(CURRICULUM_MODES)}, got {mode!r}")


def _shuffled(indices: np.ndarray, seed: int, epoch: int, salt: int, lengths, megabatch_size: int) -> list[int]:
    """`indices` permuted by (seed, epoch, salt); with `lengths`, sorted by length inside each mega-batch."""
    rng = np.random.default_rng([seed, epoch, salt])
    order = indices[rng.permutation(len(indices))]
    if lengths is None:
        return order.tolist()
    out = []
    for start in range(0, len(order), megabatch_size):
        mega = order[start : start + megabatch_size].tolist()
        out.extend(sorted(mega, key=lambda i: -lengths[i]))  # stable: ties keep the shuffled order
    return out


def stage_groups(stages) -> list[tuple[object, np.ndarray]]:
    """(stage value, indices of its records) for each distinct stage, in ascending stage order."""
    values = list(stages)
    for i, value in enumerate(values):
        if value is None:
            raise InputError(f"training record {i}: no 'stage' (curriculum needs 1, 2 or 3 on every record)")
    order = sorted(set(values))
    arr = np.asarray([order.index(v) for v in values], dtype=np.int64)
    return [(v, np.flatnonzero(arr == k)) for k, v in enumerate(order)]


def curriculum_order(
    stages,
    mode: str = "ordered",
    seed: int = 0,
    epoch: int = 0,
    lengths=None,
    num_epochs: int = 1,
    megabatch_size: int = DEFAULT_MEGABATCH_SIZE,
) -> list[int]:
    """The record indices the Trainer sees in epoch `epoch` (0-based): a permutation of range(len(stages))."""
    check_mode(mode)
    groups = stage_groups(stages)
    n = len(stages)
    if lengths is not None and len(lengths) != n:
        raise ValueError(f"{len(lengths)} lengths for {n} records")
    if mode == "shuffled":
        return _shuffled(np.arange(n), seed, epoch, 0, lengths, megabatch_size)
    if mode == "ordered":
        return [
            i for k, (_, idx) in enumerate(groups) for i in _shuffled(idx, seed, epoch, k + 1, lengths, megabatch_size)
        ]
    # stagewise: the whole schedule is num_epochs passes over stage 1, then over stage 2, ...; epoch e is slice e.
    num_epochs = max(1, math.ceil(num_epochs))
    epoch = epoch % num_epochs  # the Trainer never asks beyond num_epochs; a larger epoch wraps instead of failing
    schedule = []
    for k, (_, idx) in enumerate(groups):
        for e in range(num_epochs):
            schedule.extend(_shuffled(idx, seed, e, k + 1, lengths, megabatch_size))
            if len(schedule) >= (epoch + 1) * n:
                return schedule[epoch * n : (epoch + 1) * n]
    return schedule[epoch * n : (epoch + 1) * n]


class CurriculumSampler(Sampler):
    """Yields `curriculum_order(...)` for the epoch last set by `set_epoch` (the Trainer sets it every epoch)."""

    def __init__(
        self, stages, mode="ordered", seed=0, lengths=None, num_epochs=1, megabatch_size=DEFAULT_MEGABATCH_SIZE
    ):
        check_mode(mode)
        self.stages = list(stages)
        stage_groups(self.stages)  # validate now, not at the first batch
        self.mode = mode
        self.seed = int(seed)
        self.lengths = None if lengths is None else list(lengths)
        self.num_epochs = num_epochs
        self.megabatch_size = int(megabatch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self):
        yield from curriculum_order(
            self.stages, self.mode, self.seed, self.epoch, self.lengths, self.num_epochs, self.megabatch_size
        )


def build_curriculum_sampler(
    stages, mode: str = "ordered", seed: int = 0, lengths=None, num_epochs=1, megabatch_size=DEFAULT_MEGABATCH_SIZE
) -> CurriculumSampler:
    """The training sampler for `--curriculum MODE`: `stages[i]` is record i's stage (1, 2, 3), `lengths[i]`
    its token length (optional: length grouping within a stage), `num_epochs` the epochs the Trainer runs."""
    return CurriculumSampler(stages, mode, seed, lengths, num_epochs, megabatch_size)
