"""Curriculum sampler: order per epoch, inside HF Trainer with gradient accumulation, and under real 2-process
data parallelism (torchrun + gloo + accelerate + Trainer on CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dp_curriculum_worker as worker
import pytest
from helpers import free_port, read_metrics

from tlrec_utils.errors import InputError
from tlrec_utils.tuning.curriculum import build_curriculum_sampler, curriculum_order

STAGES = [3, 1, 2, 2, 1, 3, 1, 1, 2, 3, 3, 2, 1, 2, 3, 1, 2, 3, 1, 2, 3, 2, 1, 3, 3, 1, 2, 1, 2, 3]


def stage_runs(order, stages):
    return [stages[i] for i in order]


def is_sorted(xs):
    return all(a <= b for a, b in zip(xs, xs[1:]))


def test_ordered_walks_stages_in_order_every_epoch_shuffled_within():
    n = len(STAGES)
    epochs = [curriculum_order(STAGES, "ordered", seed=3, epoch=e) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(n))
        assert is_sorted(stage_runs(order, STAGES))
    assert len({tuple(order) for order in epochs}) == 3  # reshuffled each epoch: no two epochs alike
    stage1 = [i for i, s in enumerate(STAGES) if s == 1]
    assert epochs[0][: len(stage1)] != stage1  # shuffled within the stage, not in file order
    assert curriculum_order(STAGES, "ordered", seed=3, epoch=1) == epochs[1]  # deterministic
    assert curriculum_order(STAGES, "ordered", seed=4, epoch=1) != epochs[1]


def test_shuffled_ignores_stages():
    orders = [curriculum_order(STAGES, "shuffled", seed=0, epoch=e) for e in range(2)]
    for order in orders:
        assert sorted(order) == list(range(len(STAGES)))
        assert not is_sorted(stage_runs(order, STAGES))
    assert orders[0] != orders[1]


def test_stagewise_runs_all_epochs_of_each_stage_before_the_next():
    n, num_epochs = len(STAGES), 3
    schedule = [i for e in range(num_epochs) for i in curriculum_order(STAGES, "stagewise", 5, e, None, num_epochs)]
    assert len(schedule) == num_epochs * n
    assert is_sorted(stage_runs(schedule, STAGES))
    pos = 0
    for stage in (1, 2, 3):
        members = sorted(i for i, s in enumerate(STAGES) if s == stage)
        passes = [schedule[pos + k * len(members) : pos + (k + 1) * len(members)] for k in range(num_epochs)]
        for p in passes:
            assert sorted(p) == members  # each pass is one full epoch of that stage
        assert len({tuple(p) for p in passes}) == num_epochs  # each pass reshuffled
        pos += num_epochs * len(members)


def test_length_grouping_stays_inside_each_stage():
    lengths = [(7 * i) % 23 + 1 for i in range(len(STAGES))]
    order = curriculum_order(STAGES, "ordered", seed=1, epoch=0, lengths=lengths, megabatch_size=4)
    assert sorted(order) == list(range(len(STAGES)))
    assert is_sorted(stage_runs(order, STAGES))
    start = 0
    for stage in (1, 2, 3):
        span = order[start : start + STAGES.count(stage)]
        for m in range(0, len(span), 4):  # each mega-batch sorted longest first
            mega = [lengths[i] for i in span[m : m + 4]]
            assert mega == sorted(mega, reverse=True)
        start += len(span)


def test_bad_input_is_reported():
    with pytest.raises(InputError, match="record 2"):
        build_curriculum_sampler([1, 2, None])
    with pytest.raises(InputError, match="--curriculum"):
        build_curriculum_sampler([1, 2], mode="reverse")


def expected_micro_batches(log, mode, world_size):
    """What process p must see at micro-step m: the (m * world_size + p)-th per-device batch of the sampler's
    order, the epochs' orders concatenated (the dataset divides evenly, so no padding batches)."""
    full = [
        i
        for e in range(worker.EPOCHS)
        for i in curriculum_order(log["stages"], mode, worker.SEED, e, log["lengths"], worker.EPOCHS)
    ]
    b = worker.PER_DEVICE_BATCH
    batches = [full[k : k + b] for k in range(0, len(full), b)]
    return [batches[p::world_size] for p in range(world_size)], full


def check_run(logs, mode):
    world_size = len(logs)
    expected, full = expected_micro_batches(logs[0], mode, world_size)
    n = len(logs[0]["stages"])
    for p, log in enumerate(logs):
        assert log["world_size"] == world_size
        assert log["micro_batches"] == expected[p]
        assert log["global_step"] == worker.EPOCHS * n // (world_size * worker.PER_DEVICE_BATCH * worker.GRAD_ACCUM)
    # Reassemble the global order from what the processes saw: stage order holds across processes.
    stages = logs[0]["stages"]
    seen = [i for m in range(len(logs[0]["micro_batches"])) for log in logs for i in log["micro_batches"][m]]
    assert seen == full
    per_epoch = [seen[e * n : (e + 1) * n] for e in range(worker.EPOCHS)]
    if mode == "stagewise":
        assert is_sorted(stage_runs(seen, stages))
    else:
        for order in per_epoch:
            assert is_sorted(stage_runs(order, stages))


@pytest.mark.parametrize("mode", ["ordered", "stagewise"])
def test_trainer_keeps_order_with_gradient_accumulation(tiny_llama, tmp_path, mode):
    worker.main(str(tiny_llama), str(tmp_path), mode)
    check_run([json.loads((tmp_path / "rank0.json").read_text())], mode)


def test_two_process_data_parallel_sees_shards_in_global_order_and_validates_all_records(tiny_llama, synthetic,
                                                                                       tmp_path):
    """Two processes: training order as above; validation AUC on an odd number of records (each process scores
    a shard, the last batch padded) is the AUC one process gets from the same weights with run_eval."""
    import run_eval

    val_file = tmp_path / "val.json"
    val_file.write_text(json.dumps(synthetic[0][160:175]))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(Path(worker.__file__)), str(tiny_llama), str(tmp_path), "ordered",
        str(val_file),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert logs[0]["micro_batches"] != logs[1]["micro_batches"]  # each process got its own shard
    check_run(logs, "ordered")
    assert run_eval.main(["--base_model", str(tmp_path / "model"), "--test_file", str(val_file), "--output_dir",
                          str(tmp_path / "eval"), "--metrics", "auc"]) == 0
    one_process = read_metrics(tmp_path / "eval")
    assert one_process["counts"]["records"] == 15
    assert logs[0]["eval_auc"] == logs[1]["eval_auc"] == pytest.approx(one_process["auc"], abs=1e-9)
