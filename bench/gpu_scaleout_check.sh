#!/usr/bin/env bash
# GPU check of the scale-out files: a ZeRO-2 and a ZeRO-3 LoRA training run (3 steps) of a tiny LLaMA under
# `accelerate launch` in bf16 with ds_configs/*.json, and a 4-bit (bitsandbytes NF4) load, tuning and evaluation.
# Prints one line per check and exits non-zero if any failed.
#
#   bash bench/gpu_scaleout_check.sh [WORK_DIR]        # a CUDA machine, all its GPUs; about 2-3 minutes
#   CPU_CHECK=1 bash bench/gpu_scaleout_check.sh       # no GPU: ZeRO-2 in fp32 on one CPU process only
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1

python - "$WORK" <<'PY' || exit 1
import json, sys
from pathlib import Path
sys.path.insert(0, "tests")
from helpers import synthetic_records
from tlrec_utils.tiny_llm import build_tiny_llama
work = Path(sys.argv[1])
records, _ = synthetic_records()
(work / "train.json").write_text(json.dumps(records[:160]))
(work / "test.json").write_text(json.dumps(records[160:]))
build_tiny_llama([work / "train.json"], work / "model", vocab_size=1000)
PY

if [[ "${CPU_CHECK:-0}" == 1 ]]; then
    NPROC=1; PRECISION=(--use_cpu); STAGES=(2)
else
    NPROC=$(python -c "import torch; print(torch.cuda.device_count())")
    PRECISION=(--bf16); STAGES=(2 3)
fi
COMMON=(--base_model "$WORK/model" --train_files "$WORK/train.json" --max_steps 3 --per_device_train_batch_size 4
        --learning_rate 1e-3 --max_length 256 --save_strategy no --logging_steps 1 --report_to none)
failed=0
report() {  # name, output dir, exit status
    if [[ $3 == 0 && -f "$2/tuning_summary.json" ]]; then
        python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f'PASS {sys.argv[2]}: {s[\"global_step\"]} steps, train loss {s[\"train_loss\"]:.4f}')" "$2/tuning_summary.json" "$1"
    else
        echo "FAIL $1 (exit $3)"; failed=1
    fi
}

for stage in "${STAGES[@]}"; do
    out="$WORK/zero$stage"
    accelerate launch --num_processes "$NPROC" --use_deepspeed --zero_stage "$stage" run_tuning.py "${COMMON[@]}" \
        "${PRECISION[@]}" --deepspeed "ds_configs/zero$stage.json" --output_dir "$out" > "$out.log" 2>&1
    report "ZeRO-$stage x $NPROC process(es) ${PRECISION[*]}" "$out" $?
done

if [[ "${CPU_CHECK:-0}" != 1 ]]; then
    out="$WORK/4bit"
    python run_tuning.py "${COMMON[@]}" --load_in_4bit --output_dir "$out" > "$out.log" 2>&1
    report "4-bit LoRA tuning" "$out" $?
    if python run_eval.py --base_model "$WORK/model" --adapter "$out" --load_in_4bit --test_file "$WORK/test.json" \
        --output_dir "$out/eval" --metrics auc > "$out/eval.log" 2>&1; then
        echo "PASS 4-bit evaluation: $(tail -n 1 "$out/eval.log")"
    else
        echo "FAIL 4-bit evaluation (see $out/eval.log)"; failed=1
    fi
fi
echo "logs in $WORK"
exit $failed
