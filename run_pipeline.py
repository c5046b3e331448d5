"""The whole TLRec method end to end: data, CoT data, CoT curriculum tuning, source rec-tuning (zero-shot),
K-shot target rec-tuning, evaluation; prints AUC and NDCG@10 per setting against the same without CoT.

    python run_pipeline.py --config configs/experiments/quickstart.yaml --run_dir runs/quickstart
    python run_pipeline.py --run_dir runs/llama7b --base_model huggyllama/llama-7b --teacher openai \
        --tuning_args --bf16                       # every PipelineConfig field is a flag (see tlrec_utils/pipeline.py)

Rerunning the same command skips finished phases and resumes an interrupted one. Layout: see tlrec_utils/pipeline.py.
"""

import sys

from tlrec_utils.errors import InputError, cli_entry


def parse_args(argv=None):
    """PipelineConfig from flags; `--config FILE.yaml|json` supplies defaults that flags override."""
    import json
    from pathlib import Path

    import yaml
    from transformers import HfArgumentParser

    from tlrec_utils.pipeline import PipelineConfig, config_fields

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(PipelineConfig, description=__doc__)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise InputError("--config needs a file")
        path = Path(argv[i + 1])
        del argv[i : i + 2]
        if not path.is_file():
            raise InputError(f"{path}: config file not found")
        try:
            values = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"{path}: not valid {path.suffix[1:].upper()} ({str(exc).splitlines()[0]})") from None
        unknown = sorted(set(values or {}) - set(config_fields()))
        if unknown:
            raise InputError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        parser.set_defaults(**(values or {}))
        for action in parser._actions:  # a value from the file satisfies a required flag
            if action.dest in (values or {}):
                action.required = False
    # --tuning_args takes the rest of the line (it holds run_tuning flags)
    tuning_args = []
    if "--tuning_args" in argv:
        i = argv.index("--tuning_args")
        argv, tuning_args = argv[:i], argv[i + 1 :]
    (cfg,) = parser.parse_args_into_dataclasses(args=argv)
    if tuning_args:
        cfg.tuning_args = list(cfg.tuning_args) + tuning_args
    return cfg


@cli_entry
def main(argv=None):
    from tlrec_utils.pipeline import PhaseInterrupted, format_table, run_pipeline

    cfg = parse_args(argv)
    try:
        results = run_pipeline(cfg)
    except PhaseInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 143
    print(format_table(results, cfg.ndcg_k))
    print(f"wall time {results['wall_time_s']:.0f} s; results in {cfg.run_dir}/results.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
