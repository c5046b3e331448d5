"""Evaluate a base model (optionally with a LoRA adapter) on Yes/No records: AUC and NDCG@10.

    python run_eval.py --base_model models/tiny-llama --adapter runs/movie-lora \
        --test_file prepared/ml-100k/test.json --output_dir runs/movie-lora/eval

Writes metrics.json (auc, ndcg@10 sampled, ndcg@10_user, counts, settings) and predictions.jsonl.
Data parallel: `accelerate launch --num_processes 8 run_eval.py ...` (each process scores a shard; rank 0 writes).
"""

from tlrec_utils.errors import cli_entry


@cli_entry
def main(argv=None):
    from tlrec_utils.arguments import EvalArguments, ModelArguments, parse_args

    model_args, eval_args = parse_args((ModelArguments, EvalArguments), argv)  # every flag checked here
    from tlrec_utils.errors import InputError
    from tlrec_utils.evaluation import evaluate as E
    from tlrec_utils.evaluation.evaluate import (
        distributed_state,
        evaluate,
        load_catalog,
        load_test_records,
        summary_line,
        write_outputs,
    )
    from tlrec_utils.model.loading import load_for_inference
    from tlrec_utils.prompts import resolve_template

    records = load_test_records(eval_args.test_file, eval_args.limit)
    wanted = eval_args.metrics.split(",")  # validated and stripped by EvalArguments
    catalog = load_catalog(eval_args.items_file, records) if "ndcg" in wanted else None
    if catalog is not None:  # a catalog too small for --num_negatives fails before the model loads
        E.ranking_candidates(records, catalog, eval_args.num_negatives, eval_args.seed, eval_args.test_file,
                             eval_args.items_file)
    template = resolve_template(eval_args.prompt_template, [eval_args.adapter, model_args.base_model])
    state = distributed_state(eval_args.device)  # several processes: each scores a shard, rank 0 writes
    device = eval_args.device
    if state is not None:
        if device == "auto":
            raise InputError("--device auto spreads one model over all GPUs: run it as one process, not under "
                             f"a launcher with {state.num_processes} processes")
        device = str(state.device)
    model, tokenizer = load_for_inference(model_args, eval_args.adapter, device)
    metrics, predictions = evaluate(model, tokenizer, records, eval_args, catalog, source=eval_args.test_file,
                                    template=template, state=state)
    if metrics is not None:  # rank 0 (or the only process)
        metrics["settings"].update(base_model=model_args.base_model, adapter=eval_args.adapter,
                                   test_file=eval_args.test_file, items_file=eval_args.items_file)
        write_outputs(eval_args.output_dir, metrics, predictions)
        print(summary_line(metrics, eval_args.ndcg_k))
    if state is not None:  # leave together: a rank exiting while another still talks through gloo aborts it
        state.wait_for_everyone()
        state.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
