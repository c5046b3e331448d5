"""bench/gpu_check.sh in its CPU mode (CPU_CHECK=1): the GPU proof script's wiring on a tiny model."""

import os
import subprocess

from helpers import REPO


def test_gpu_check_cpu_mode(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=900, check=False, env={**os.environ, "CPU_CHECK": "1"})
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert "PASS gpu_check table" in out
    rows = ["padded, micro batch 4, sdpa", "padded, micro batch 4, checkpointing, sdpa", "packed, micro batch 4, sdpa",
            "packed, <= 1024 tokens, sdpa", "packed, <= 2048 tokens, checkpointing 1/2 layers, sdpa"]
    for row in [f"LoRA r=8 q,v, {r}" for r in rows] + ["scoring, 64 prompts", "--eval_mode generate",
                                                      "packed shared prefix", "KV-cache shared prefix"]:
        assert row in out
    assert "FAIL" not in out
    assert "PASS ZeRO-2" in out  # deepspeed is a requirement (requirements.txt): its check never skips
