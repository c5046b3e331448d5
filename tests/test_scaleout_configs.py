"""Scale-out files: DeepSpeed configs through transformers' and DeepSpeed's own config processing, accelerate YAMLs
through accelerate's loader and launch validation, SLURM templates rendered with stand-ins for srun/accelerate/
scontrol on PATH (they record their arguments; the rendered accelerate commands are then parsed by accelerate's
real launch parser), and the preemption signal forwarded to the training process."""

import gc
import json
import os
import shlex
import signal
import subprocess
import time

import pytest
from helpers import REPO

DS_CONFIGS = {"zero2.json": (2, False), "zero3.json": (3, False), "zero3_offload.json": (3, True)}
SLURM_SCRIPTS = ["slurm/single_node.sbatch", "slurm/multi_node.sbatch", "slurm/preemptible.sh"]


def find_auto(obj, path=""):
    if obj == "auto":
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in find_auto(v, f"{path}.{k}".lstrip("."))]
    return []


@pytest.mark.parametrize("name", sorted(DS_CONFIGS))
def test_deepspeed_config_autos_filled_by_training_arguments(name, tiny_llama, tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoModelForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    stage, offload = DS_CONFIGS[name]
    raw = json.loads((REPO / "ds_configs" / name).read_text())
    assert find_auto(raw), "the config should leave batch sizes, lr, precision to TrainingArguments"
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)  # before ZeRO-3 args exist (they switch on zero.Init)
    try:
        args = TrainingArguments(
            output_dir=str(tmp_path), deepspeed=str(REPO / "ds_configs" / name), use_cpu=True, report_to=[],
            per_device_train_batch_size=4, gradient_accumulation_steps=8, learning_rate=3e-4, weight_decay=0.01,
            max_grad_norm=0.5, adam_beta2=0.95, bf16=True,
        )  # fmt: skip
        ds = args.hf_deepspeed_config
        ds.trainer_config_finalize(args, model, num_training_steps=100)
        cfg = ds.config
        assert find_auto(cfg) == []
        assert args.deepspeed_plugin.zero_stage == stage
        assert cfg["train_micro_batch_size_per_gpu"] == 4 and cfg["gradient_accumulation_steps"] == 8
        assert cfg["train_batch_size"] == 4 * 8 * args.world_size
        assert cfg["optimizer"]["params"] == {"lr": 3e-4, "betas": [0.9, 0.95], "eps": 1e-8, "weight_decay": 0.01}
        assert cfg["gradient_clipping"] == 0.5
        assert cfg["bf16"]["enabled"] is True and cfg["fp16"]["enabled"] is False
        hidden = model.config.hidden_size
        assert cfg["zero_optimization"]["reduce_bucket_size"] == hidden * hidden
        # DeepSpeed's own parser: batch-size arithmetic, precision, ZeRO section schema.
        parsed = DeepSpeedConfig(json.loads(json.dumps(cfg)))
        assert parsed.zero_optimization_stage == stage
        assert parsed.train_batch_size == 32 and parsed.bfloat16_config.enabled
        assert (parsed.zero_config.offload_optimizer is not None) == offload
        if stage == 3:
            assert parsed.zero_config.gather_16bit_weights_on_model_save  # adapters/models save as plain files
        # fp16 instead of bf16 flips the auto precision the other way.
        args16 = TrainingArguments(
            output_dir=str(tmp_path), deepspeed=str(REPO / "ds_configs" / name), use_cpu=True, report_to=[], fp16=True
        )
        assert args16.hf_deepspeed_config.config["fp16"]["enabled"] is True
        assert args16.hf_deepspeed_config.config["bf16"]["enabled"] is False
    finally:
        unset_hf_deepspeed_config()
        args = args16 = None
        gc.collect()


def test_accelerate_yamls_load_and_pass_launch_validation():
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import DistributedType

    expected = {
        "single_gpu.yaml": (DistributedType.NO, 1, 1),
        "multi_gpu.yaml": (DistributedType.MULTI_GPU, 8, 1),
        "deepspeed_zero3_multinode.yaml": (DistributedType.DEEPSPEED, 16, 2),
    }
    for name, (dist_type, nproc, nmachines) in expected.items():
        path = REPO / "configs" / "accelerate" / name
        cfg = load_config_from_file(str(path))
        assert (cfg.distributed_type, cfg.num_processes, cfg.num_machines) == (dist_type, nproc, nmachines)
        args = launch_command_parser().parse_args(["--config_file", str(path), "run_tuning.py", "--bf16"])
        args = _validate_launch_command(args)[0]
        assert args.num_processes == nproc and args.num_machines == nmachines
        assert args.training_script_args == ["--bf16"]
        if dist_type == DistributedType.DEEPSPEED:
            assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard"
            assert (REPO / args.deepspeed_config_file).is_file()  # relative to the repo root, where jobs launch
            assert json.loads((REPO / args.deepspeed_config_file).read_text())["zero_optimization"]["stage"] == 3
        else:
            assert args.multi_gpu == (dist_type == DistributedType.MULTI_GPU)


@pytest.mark.parametrize("script", SLURM_SCRIPTS)
def test_slurm_scripts_are_valid_bash(script):
    proc = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


FAKE_SRUN = """#!/bin/bash
# stand-in for srun: record options, run the command once per node with that node's SLURM_NODEID
while [[ "$1" == --* ]]; do printf 'srun %q\\n' "$1" >> "$FAKE_LOG"; shift; done
for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node SLURM_PROCID=$node "$@"; done
"""
FAKE_ACCELERATE = """#!/bin/bash
# stand-in for accelerate: record the argv; with FAKE_BLOCK=1 behave like a trainer waiting for SIGTERM
# (`command kill`: a test's slowed-down `kill` function is for the batch shell only)
{ printf 'accelerate'; printf ' %q' "$@"; printf '\\n'; } >> "$FAKE_LOG"
if [[ "${FAKE_BLOCK:-0}" == 1 ]]; then
    sleep 60 &
    checkpoint_and_exit() {
        command kill $!
        sleep "${FAKE_CHECKPOINT_S:-0}"
        echo "trainer got SIGTERM: checkpoint saved" >> "$FAKE_LOG"
        exit "${FAKE_EXIT:-0}"
    }
    trap checkpoint_and_exit TERM
    echo started >> "$FAKE_LOG"
    wait $!
fi
"""
FAKE_SCONTROL = """#!/bin/bash
if [[ "$1 $2" == "show hostnames" ]]; then printf 'gpu-node-07\\ngpu-node-08\\n'; exit 0; fi
{ printf 'scontrol'; printf ' %q' "$@"; printf '\\n'; } >> "$FAKE_LOG"
"""


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"srun": FAKE_SRUN, "accelerate": FAKE_ACCELERATE, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        FAKE_LOG=str(log),
        SLURM_SUBMIT_DIR=str(REPO),
        SLURM_JOB_ID="4242",
        SLURM_NNODES="2",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_GPUS_ON_NODE="8",
    )
    return env, log


def accelerate_calls(log):
    return [shlex.split(line)[1:] for line in log.read_text().splitlines() if line.startswith("accelerate ")]


def parse_launch(argv):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    return _validate_launch_command(launch_command_parser().parse_args(argv[1:]))[0]  # argv[0] == "launch"


TRAIN_CMD = ["run_tuning.py", "--base_model", "/models/llama 7b", "--output_dir", "runs/x", "--bf16"]


def test_single_node_template_renders_accelerate_launch(fake_slurm):
    env, log = fake_slurm
    proc = subprocess.run(
        ["bash", str(REPO / "slurm/single_node.sbatch"), *TRAIN_CMD], env=env, capture_output=True, text=True, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    (call,) = accelerate_calls(log)
    args = parse_launch(call)
    assert args.config_file == "configs/accelerate/multi_gpu.yaml" and args.multi_gpu
    assert args.num_processes == 8 and args.num_machines == 1
    assert [args.training_script, *args.training_script_args] == TRAIN_CMD  # the path with a space stays one arg
    assert "scontrol" not in log.read_text()  # no preemption, no requeue


def test_multi_node_template_renders_one_launch_per_node(fake_slurm):
    env, log = fake_slurm
    proc = subprocess.run(
        ["bash", str(REPO / "slurm/multi_node.sbatch"), *TRAIN_CMD], env=env, capture_output=True, text=True, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    assert "srun --kill-on-bad-exit=1" in log.read_text()
    calls = accelerate_calls(log)
    assert len(calls) == 2  # one launcher per node
    for node, call in enumerate(calls):
        args = parse_launch(call)
        assert args.machine_rank == node
        assert args.num_machines == 2 and args.num_processes == 16
        assert args.main_process_ip == "gpu-node-07" and args.main_process_port == 29500
        assert args.use_deepspeed and args.deepspeed_config_file == "ds_configs/zero3.json"
        assert [args.training_script, *args.training_script_args] == TRAIN_CMD


def test_multi_node_template_needs_slurm(fake_slurm):
    env, _ = fake_slurm
    del env["SLURM_NNODES"]
    proc = subprocess.run(
        ["bash", str(REPO / "slurm/multi_node.sbatch"), *TRAIN_CMD], env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0 and "SLURM_NNODES" in proc.stderr


@pytest.mark.parametrize(
    "checkpoint_s,trainer_exit,slow_shell",
    [(0, 0, False), (0.5, 0, False), (0, 3, False), (0, 0, True), (0, 3, True)],
    ids=["quick-checkpoint", "slow-checkpoint", "trainer-fails", "trainer-exits-first", "trainer-fails-first"],
)
def test_preemption_signal_reaches_the_trainer_then_requeues(fake_slurm, checkpoint_s, trainer_exit, slow_shell):
    """The batch shell exits with the trainer's own status, however fast the trainer checkpoints. A trainer that
    exited before the shell looked again once made the job end 143 (seen in CI, under load); `slow_shell` forces
    that order: an exported `kill` function that lingers after signalling, as a busy node's batch shell does
    (it made the earlier script return 143 every time)."""
    env, log = fake_slurm
    env.update(FAKE_BLOCK="1", FAKE_CHECKPOINT_S=str(checkpoint_s), FAKE_EXIT=str(trainer_exit))
    if slow_shell:
        env["BASH_FUNC_kill%%"] = '() { builtin kill "$@"; local status=$?; sleep 0.3; return $status; }'
    for attempt in range(5):  # the race was timing-dependent: give it several chances to show
        log.unlink(missing_ok=True)
        proc = subprocess.Popen(
            ["bash", str(REPO / "slurm/single_node.sbatch"), *TRAIN_CMD], env=env, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 20
        while not (log.exists() and "started" in log.read_text()):
            assert time.time() < deadline and proc.poll() is None, "fake trainer never started"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)  # what `#SBATCH --signal=B:TERM@120` does to the batch shell
        _, stderr = proc.communicate(timeout=20)
        assert proc.returncode == trainer_exit, f"attempt {attempt}: {stderr}"
        lines = log.read_text().splitlines()
        assert "trainer got SIGTERM: checkpoint saved" in lines
        assert lines[-1] == "scontrol requeue 4242"  # requeued only after the trainer finished checkpointing
        assert "asking the trainer to checkpoint" in stderr


@pytest.mark.parametrize("value,plain", [("9.0a", "9.0"), ("8.0;9.0a+PTX", "8.0;9.0+PTX"), ("8.6 10.0f", "8.6 10.0")])
def test_arch_suffixes_that_stop_deepspeeds_op_builder_are_dropped(value, plain, monkeypatch, caplog):
    """Seen on an H100 image with TORCH_CUDA_ARCH_LIST=9.0a: DeepSpeed's JIT build of its fused optimizer fails
    parsing the list. run_tuning rewrites it to the plain archs before DeepSpeed starts, which DeepSpeed's own
    parser (the one that failed) then accepts; a list without suffixes is left alone."""
    from deepspeed.ops.op_builder.fused_adam import FusedAdamBuilder

    from tlrec_utils.tuning.training import deepspeed_safe_arch_list

    builder = FusedAdamBuilder()
    builder.jit_mode = True
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    with pytest.raises(ValueError, match="invalid literal for int"):
        builder.compute_capability_args()
    deepspeed_safe_arch_list()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == plain
    assert f"TORCH_CUDA_ARCH_LIST={value}" in caplog.text
    builder.compute_capability_args()  # no longer raises (it rewrites the variable in its own way: set it again)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", plain)
    caplog.clear()
    deepspeed_safe_arch_list()
    assert os.environ["TORCH_CUDA_ARCH_LIST"] == plain and not caplog.text
