"""The paper's methods end to end: data, CoT data, CoT curriculum tuning, source rec-tuning (zero-shot), K-shot
target rec-tuning, evaluation; prints AUC and NDCG@10 per setting for every method (tlrec, tallrec, ablations).

    python run_pipeline.py --config configs/experiments/quickstart.yaml --run_dir runs/quickstart
    python run_pipeline.py --run_dir runs/llama7b --base_model huggyllama/llama-7b --start_adapter alpaca-lora \
        --teacher openai --methods tlrec tallrec --tuning bf16=true --launcher accelerate \
        --accelerate_config configs/accelerate/multi_gpu.yaml    # every PipelineConfig field is a flag
    python run_pipeline.py configs/experiments/quickstart.yaml --run_dir runs/qs --k_shots 16   # file, then flags

Rerunning the same command skips finished phases and resumes an interrupted one; a rerun with other settings
redoes exactly the phases they change and what follows them (--on_change error refuses instead).
Layout: see tlrec_utils/experiments/pipeline.py.
"""

import sys

from tlrec_utils.errors import cli_entry


def parse_args(argv=None):
    from tlrec_utils.experiments.pipeline_config import parse_pipeline_args

    return parse_pipeline_args(argv, description=__doc__)


@cli_entry
def main(argv=None):
    from tlrec_utils.errors import EXIT_INTERRUPTED
    from tlrec_utils.experiments.pipeline import (
        PhaseFailed,
        PhaseInterrupted,
        format_effects,
        format_sources,
        format_table,
        method_lines,
        run_pipeline,
    )
    from tlrec_utils.experiments.pipeline_config import setting

    cfg = parse_args(argv)
    from tlrec_utils.validation import check_output_dir

    check_output_dir(cfg.run_dir, "--run_dir")
    try:
        results = run_pipeline(cfg)
    except PhaseInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except PhaseFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_table(results, setting(cfg, "eval", "ndcg_k")))
    users = ", ".join(m for m, names in results["method_sources"].items() if names) or "no method"
    print(f"\nSource domains (used by {users}):\n{format_sources(results)}")
    if results["phases"]:
        print("\nEach tuning phase on held-out records (first the start model, then the trained one):\n")
        print(format_effects(results))
    print("\nWhat this run shows (AUC with its 95% interval):")
    for line in method_lines(results):
        print(f"- {line}")
    for warning in results["warnings"]:
        print(f"warning: {warning}")
    print(f"wall time {results['wall_time_s']:.0f} s; results in {cfg.run_dir}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
