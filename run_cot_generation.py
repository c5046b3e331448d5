"""Build TLRec's CoT instruction data from a prepared source domain (see tlrec_utils/cot.py).

    export OPENAI_API_KEY=...        # only from the environment; never logged or written
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/netflix --model gpt-4 --max_cost 50
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/local \\
        --base_url http://localhost:8000/v1 --model meta-llama/Meta-Llama-3-8B-Instruct --concurrency 32
    python run_cot_generation.py --data_dir data/netflix --output_dir cot/demo --teacher heuristic  # offline, no LLM

Rerunning into the same --output_dir resumes: answered users and stages are never asked again.
"""

import argparse
import dataclasses
import sys

from tlrec_utils.cot import CotConfig, run
from tlrec_utils.errors import cli_entry, exit_status

HELP = {
    "data_dir": "prepared source domain (run_prepare_data.py output); its train.json is used",
    "output_dir": "responses.jsonl, progress.jsonl, cot_train.json, summary.json; rerun to resume",
    "teacher": "openai (any OpenAI-compatible server) or heuristic (offline, NOT an LLM)",
    "base_url": "OpenAI-compatible server, e.g. http://localhost:8000/v1 (vLLM) or http://localhost:11434/v1 (Ollama)",
    "concurrency": "requests in flight at once",
    "requests_per_minute": "spread request starts to at most this many per minute",
    "request_timeout": "seconds before a request counts as timed out (and is retried)",
    "retry_base_delay": "first retry delay in seconds; doubles each attempt, with jitter; Retry-After wins",
    "max_requests": "stop cleanly after this many requests (retries included)",
    "max_cost": "stop cleanly once the estimated spend reaches this (in-flight requests still finish)",
    "max_users": "only the first N liked windows",
    "allow_same_user_neighbors": "the authors' behaviour: a user's own other windows may be neighbours "
                                 "(leaks the target)",
    "ensure_target": "insert the true next item into candidate sets that miss it instead of skipping the user",
    "kind": "movie, book or auto (from the records' instruction)",
    "hit_match": "which users are kept: title_in_answer (the target's title appears in the Stage-3 answer, as the "
                 "authors) or recommended (the target is one of the parsed recommended candidates)",
    "system_prompt": "a system message sent with every request (the authors send none)",
    "context_style": "history (watched items oldest first, item texts as they are) or authors (generate_data.py: "
                     "the preference then unpreference items reversed; a book shows as its quoted title only)",
    "dry_run": "print the first user's prompts and a token/cost estimate; call nothing, write nothing",
    "progress": "progress bar",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(CotConfig):
        flag = f"--{f.name}"
        required = f.default is dataclasses.MISSING
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=HELP.get(f.name))
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        parser.add_argument(
            flag, type=kind, required=required, default=None if required else f.default, help=HELP.get(f.name)
        )
    return parser


@cli_entry
def main(argv=None):
    args = build_parser().parse_args(argv)
    from tlrec_utils.validation import check_input_dir, check_output_dir

    check_input_dir(args.data_dir, "--data_dir")
    if not args.dry_run:
        check_output_dir(args.output_dir, "--output_dir")
    return run(CotConfig(**vars(args)))


if __name__ == "__main__":
    raise SystemExit(exit_status(main(sys.argv[1:])))
