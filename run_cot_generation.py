"""Build TLRec's CoT instruction data from a prepared source domain (see tlrec_utils/cot/generation.py).

    export OPENAI_API_KEY=...        # only from the environment; never logged or written
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/netflix --model gpt-4 --max_cost 50
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/local \\
        --base_url http://localhost:8000/v1 --model meta-llama/Meta-Llama-3-8B-Instruct --concurrency 32
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/demo --teacher heuristic  # offline, no LLM
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/batch --model gpt-4 --mode batch  # 50% price
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/llama --model M --mode files  # vllm run-batch

Rerunning into the same --output_dir resumes: answered users and stages are never asked again.
The flags can come from a .json/.yaml file given first (flags after it override it).
"""

import sys

from tlrec_utils.errors import cli_entry, exit_status


@cli_entry
def main(argv=None):
    from tlrec_utils.arguments import parse_args
    from tlrec_utils.cot.generation import CotConfig, run
    from tlrec_utils.validation import check_input_dir, check_output_dir

    (cfg,) = parse_args((CotConfig,), argv, description=__doc__)
    check_input_dir(cfg.data_dir, "--data_dir")
    if not cfg.dry_run:
        check_output_dir(cfg.output_dir, "--output_dir")
    return run(cfg)


if __name__ == "__main__":
    raise SystemExit(exit_status(main(sys.argv[1:])))
