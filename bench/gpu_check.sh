#!/usr/bin/env bash
# GPU proof script (one H100/H200, at most ~8 minutes; torch, transformers, peft and accelerate installed there;
# nothing is downloaded). Prints one table and PASS/FAIL/SKIP lines; exits non-zero if any check failed.
#
#   bash bench/gpu_check.sh [WORK_DIR]       # a CUDA machine
#   CPU_CHECK=1 bash bench/gpu_check.sh      # no GPU: a tiny model on the CPU (wiring only; tests/test_gpu_check.py)
#
# Quick tiny-model checks first, so that a run cut off still says whether the GPU-only code paths work:
# 1. The scale-out files on a tiny LLaMA: ZeRO-2 and ZeRO-3 LoRA steps under `accelerate launch` in bf16 with
#    ds_configs/*.json (skipped when deepspeed is missing), a 4-bit (NF4) LoRA tuning and evaluation (skipped
#    when bitsandbytes is missing). CPU_CHECK=1: ZeRO-2 in fp32 on one CPU process.
# 2. The paper recipe's GPU-only settings (fp16, 8-bit base model, accelerate launch): one TLRec cell of
#    paper_movie.yaml on the tiny LLaMA (needs $TLREC_DATA_DIR and bitsandbytes; skipped with CPU_CHECK=1).
# 3. bench/gpu_check.py on a LLaMA-7B-shaped model with random bf16 weights built on the GPU and a tokenizer
#    trained here: LoRA training real tokens/s, peak memory and MFU (4N convention, the card's peak printed) for
#    r=8 on q,v, max length 512: padded micro batch 4 with and without gradient checkpointing, packed, packed micro
#    batches of <= 8192 / 16384 tokens (checkpointing all / half the layers), with sdpa and, where installed,
#    flash_attention_2 (figures written to bench/measured_throughput.json for the dry run); full-prompt scoring vs --eval_mode generate on the same 256 prompts,
#    shared-prefix ranking (packed, KV cache) vs full prompts, each next to the documented figure.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
failed=0
has() { python -c "import $1" > /dev/null 2>&1; }

if [[ "${CPU_CHECK:-0}" == 1 ]]; then
    TABLE_FLAGS=(--cpu --prompts 64 --rank_targets 4); NPROC=1; PRECISION=(--use_cpu); STAGES=(2)
else
    TABLE_FLAGS=(); NPROC=$(python -c "import torch; print(torch.cuda.device_count())"); PRECISION=(--bf16)
    STAGES=(2 3)
fi

# 1. scale-out files on a tiny LLaMA
python - "$WORK" <<'PY' || exit 1
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from helpers import synthetic_records
from tlrec_utils.model.tiny_llm import build_tiny_llama
work = Path(sys.argv[1])
records, _ = synthetic_records()
(work / "train.json").write_text(json.dumps(records[:160]))
(work / "test.json").write_text(json.dumps(records[160:]))
build_tiny_llama([work / "train.json"], work / "model", vocab_size=1000)
PY
COMMON=(--base_model "$WORK/model" --train_files "$WORK/train.json" --max_steps 3 --per_device_train_batch_size 4
        --learning_rate 1e-3 --max_length 256 --save_strategy no --logging_steps 1 --report_to none)
report() {  # name, output dir, exit status
    if [[ $3 == 0 && -f "$2/tuning_summary.json" ]]; then
        python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f'PASS {sys.argv[2]}: {s[\"global_step\"]} steps, train loss {s[\"train_loss\"]:.4f}')" "$2/tuning_summary.json" "$1"
    else
        echo "FAIL $1 (exit $3; log $2.log)"; failed=1
    fi
}

if has deepspeed; then
    for stage in "${STAGES[@]}"; do
        out="$WORK/zero$stage"
        accelerate launch --num_processes "$NPROC" --use_deepspeed --zero_stage "$stage" run_tuning.py "${COMMON[@]}" \
            "${PRECISION[@]}" --deepspeed "ds_configs/zero$stage.json" --output_dir "$out" > "$out.log" 2>&1
        report "ZeRO-$stage x $NPROC process(es) ${PRECISION[*]}" "$out" $?
    done
else
    echo "SKIP ZeRO-2/ZeRO-3 checks: deepspeed is not installed (pip install deepspeed)"
fi

if [[ "${CPU_CHECK:-0}" != 1 ]]; then
    if has bitsandbytes; then
        out="$WORK/4bit"
        python run_tuning.py "${COMMON[@]}" --load_in_4bit --output_dir "$out" > "$out.log" 2>&1
        report "4-bit LoRA tuning" "$out" $?
        if python run_eval.py --base_model "$WORK/model" --adapter "$out" --load_in_4bit --test_file "$WORK/test.json" \
            --output_dir "$out/eval" --metrics auc > "$out/eval.log" 2>&1; then
            echo "PASS 4-bit evaluation: $(tail -n 1 "$out/eval.log")"
        else
            echo "FAIL 4-bit evaluation (see $out/eval.log)"; failed=1
        fi
    else
        echo "SKIP 4-bit checks: bitsandbytes is not installed (pip install bitsandbytes)"
    fi
fi

# 2. the paper recipe's GPU-only settings (paper_recipe.yaml: fp16 weights and training, the base model in 8 bit,
#    every phase under `accelerate launch`): the TLRec cell of paper_movie.yaml, zero-shot and K = 16, with the tiny
#    LLaMA as base model and CPU-test sizes (its CPU twin, in fp32 without 8 bit: tests/test_paper_configs.py).
#    Needs $TLREC_DATA_DIR (ml-100k/ and netflix/) and bitsandbytes.
if [[ "${CPU_CHECK:-0}" == 1 ]]; then
    echo "SKIP paper recipe cell: GPU only (its CPU twin is tests/test_paper_configs.py)"
elif [[ -z "${TLREC_DATA_DIR:-}" ]]; then
    echo "SKIP paper recipe cell: TLREC_DATA_DIR is not set (it needs ml-100k/ and netflix/)"
elif ! has bitsandbytes; then
    echo "SKIP paper recipe cell: bitsandbytes is not installed (the recipe loads the base model in 8 bit)"
else
    out="$WORK/paper_cell"
    overrides=(
        "output_dir=$out" "setup=[]" "settings=[zero-shot, 16]" "seeds=[0]" "test_limit=200"
        "pipeline_runs.main.methods=[tlrec]" "methods=[{name: TLRec, pipeline: main, variant: tlrec}]" "ablations=[]"
        "base_model=$WORK/model" "start_adapter=null" "teacher=heuristic" "cot_max_users=40" "max_windows=400"
        "cot_epochs=1" "source_epochs=1" "source_records=64" "kshot_epochs=2"
        "tuning={per_device_train_batch_size: 8, gradient_accumulation_steps: 1, max_val_records: 32}"
        "kshot_tuning={gradient_accumulation_steps: 1}" "eval={num_negatives: 10}"
    )
    args=(--config configs/experiments/paper_movie.yaml --only pipeline-main)
    for o in "${overrides[@]}"; do args+=(--override "$o"); done
    timeout 300 python run_experiments.py "${args[@]}" > "$out.log" 2>&1
    status=$?
    metrics="$out/runs/main/pipeline-main/tlrec/eval/k16_seed0/metrics.json"
    if [[ $status == 0 && -f "$metrics" ]]; then
        python -c "import json,sys; m=json.load(open(sys.argv[1])); print('PASS paper recipe cell (fp16, 8-bit base, accelerate launch): K=16 ' + ', '.join(f'{k} {m[k]:.4f}' for k in ('auc', 'auc_authors', 'ndcg@10')))" "$metrics"
    else
        echo "FAIL paper recipe cell (exit $status; log $out.log)"; tail -n 5 "$out.log"; failed=1
    fi
fi

# 3. the table, last (about 5-6 minutes on an H100, estimated; capped): extra flags for bench/gpu_check.py in
#    $GPU_CHECK_TABLE_ARGS (for example "--prompts 128 --rank_targets 8" for a shorter run)
timeout 420 python bench/gpu_check.py "${TABLE_FLAGS[@]}" ${GPU_CHECK_TABLE_ARGS:-} --work_dir "$WORK/table" 2>"$WORK/table.log"
status=$?
if [[ $status != 0 ]]; then
    echo "FAIL gpu_check table (exit $status; log $WORK/table.log)"; tail -n 5 "$WORK/table.log"; failed=1
fi

echo "logs in $WORK"
exit $failed
