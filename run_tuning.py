"""LoRA (or full) rec-tuning and CoT curriculum tuning of any causal LM with HF Trainer.

    python run_tuning.py --base_model models/tiny-llama --train_files prepared/ml-100k/train.json \
        --val_file prepared/ml-100k/valid.json --output_dir runs/movie-lora

Every TrainingArguments flag works (--deepspeed, --bf16, --eval_strategy, ...), and `accelerate launch
run_tuning.py ...` runs it on several GPUs. A single .json/.yaml file can replace the flags.
"""

from tlrec_utils.errors import cli_entry


@cli_entry
def main(argv=None):
    from tlrec_utils.arguments import parse_tuning_args

    model_args, lora_args, data_args, training_args = parse_tuning_args(argv)
    from tlrec_utils.tuning.training import tune

    return tune(model_args, lora_args, data_args, training_args)


if __name__ == "__main__":
    raise SystemExit(main())
