"""Evaluate a base model (optionally with a LoRA adapter) on Yes/No records: AUC and NDCG@10.

    python run_eval.py --base_model models/tiny-llama --adapter runs/movie-lora \
        --test_file prepared/ml-100k/test.json --output_dir runs/movie-lora/eval

Writes metrics.json (auc, ndcg@10 sampled, ndcg@10_user, counts, settings) and predictions.jsonl.
"""

from tlrec_utils.errors import cli_entry


@cli_entry
def main(argv=None):
    from tlrec_utils.arguments import EvalArguments, ModelArguments, parse_args
    from tlrec_utils.evaluation import evaluate, load_catalog, load_test_records, summary_line, write_outputs
    from tlrec_utils.modeling import load_for_inference
    from tlrec_utils.prompts import resolve_template

    model_args, eval_args = parse_args((ModelArguments, EvalArguments), argv)
    records = load_test_records(eval_args.test_file, eval_args.limit)
    wanted = eval_args.metrics.split(",")  # validated and stripped by EvalArguments
    catalog = load_catalog(eval_args.items_file, records) if "ndcg" in wanted else None
    template = resolve_template(eval_args.prompt_template, [eval_args.adapter, model_args.base_model])
    model, tokenizer = load_for_inference(model_args, eval_args.adapter, eval_args.device)
    metrics, predictions = evaluate(model, tokenizer, records, eval_args, catalog, source=eval_args.test_file,
                                    template=template)
    metrics["settings"].update(base_model=model_args.base_model, adapter=eval_args.adapter,
                               test_file=eval_args.test_file, items_file=eval_args.items_file)
    write_outputs(eval_args.output_dir, metrics, predictions)
    print(summary_line(metrics, eval_args.ndcg_k))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
