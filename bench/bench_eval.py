"""Evaluation speed on the Movie test split, as ratios measured in one run:

1. run_eval's scoring (encoding + forward passes) vs the same model's plain forward pass over the same
   batches (goal: overhead at most 20%);
2. vs the authors' generate-then-read-first-step method: an untuned model (generates up to 128 tokens)
   and a tuned one (stops after a few) (goals: at least 10x and at least 2x);
3. shared-prefix ranking vs 51 full prompts (goal: at least 3x), both ways: the history into a KV cache copied
   for the 51 suffixes (any model), and packed (each user's history + its 51 suffixes in one sequence under a
   4D mask, several users a pass; llama-family models);
4. the whole sampled-NDCG evaluation as run_eval runs it (candidates, encoding, scoring) per liked target.

    python bench/bench_eval.py [--prepared DIR] [--base_model DIR] [--tuned_model DIR] [--skip_generate]

Without --tuned_model the tiny model is fully fine-tuned for a few steps first (so it answers and stops).
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_common import movie_split_and_model


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prepared")
    ap.add_argument("--base_model")
    ap.add_argument("--tuned_model", help="a fully fine-tuned model dir (run_tuning.py --finetune full)")
    ap.add_argument("--records", type=int, default=512, help="test records for throughput")
    ap.add_argument("--generate_records", type=int, default=64)
    ap.add_argument("--rank_records", type=int, default=20)
    ap.add_argument("--ndcg_records", type=int, default=300, help="test records of the whole evaluation [4]")
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_length", type=int, default=512)
    ap.add_argument("--skip_generate", action="store_true", help="skip [2] (and the tuning it needs)")
    ap.add_argument("--work_dir")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM

    import run_tuning
    from tlrec_utils.arguments import EvalArguments
    from tlrec_utils.data.records import load_records
    from tlrec_utils.evaluation.evaluate import evaluate, load_catalog, ranking_candidates
    from tlrec_utils.evaluation.scoring import (
        candidate_group_stats,
        left_pad,
        length_sorted_batches,
        score_by_generation,
        score_prompts,
        score_shared_prefix,
    )
    from tlrec_utils.model.loading import load_tokenizer
    from tlrec_utils.model.tokenization import RecordEncoder, derive_answer_tokens

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_eval_"))
    prepared, model_dir = movie_split_and_model(work, args.prepared, args.base_model)
    all_records = load_records(prepared / "test.json")
    records = all_records[: args.records]
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    answer = derive_answer_tokens(tokenizer)
    pad = tokenizer.pad_token_id
    print(f"model {model_dir} ({sum(p.numel() for p in model.parameters())} parameters), "
          f"{torch.get_num_threads()} threads, {len(records)} Movie test records")

    # 1. scoring vs plain forward over the same batches
    def run_scoring():
        enc = RecordEncoder(tokenizer, args.max_length, answer)
        encodings = enc.prompt_ids_many(records, ["test"] * len(records))
        return encodings, score_prompts(model, encodings, answer, pad, args.batch_size, progress=False)

    t_score, (encodings, _) = timed(run_scoring, repeat=2)
    batches = [left_pad([encodings[i] for i in idx], pad) for idx in length_sorted_batches(
        [len(e) for e in encodings], args.batch_size)]

    def plain_forward():
        with torch.inference_mode():
            for ids, mask, _ in batches:
                model(input_ids=ids, attention_mask=mask)

    t_plain, _ = timed(plain_forward, repeat=2)
    print(f"[1] scoring incl. encoding: {t_score:.2f} s ({len(records) / t_score:.0f} records/s); plain forward "
          f"of the same batches: {t_plain:.2f} s -> overhead {100 * (t_score / t_plain - 1):+.1f}% (goal <= 20%)")

    # 2. generate mode, untuned and tuned
    if not args.skip_generate:
        sub = encodings[: args.generate_records]
        t_s, _ = timed(lambda: score_prompts(model, sub, answer, pad, args.batch_size, progress=False), repeat=2)
        t_g, (_, n_new) = timed(lambda: score_by_generation(model, sub, answer, pad, tokenizer.eos_token_id,
                                                            args.batch_size, 128, progress=False))
        print(f"[2] untuned, {len(sub)} records: score {t_s:.2f} s, generate {t_g:.2f} s "
              f"(mean {n_new.mean():.0f} new tokens) -> {t_g / t_s:.1f}x faster (goal >= 10x)")
        tuned_dir = args.tuned_model
        if tuned_dir is None:
            tuned_dir = work / "tuned"
            if not (tuned_dir / "config.json").is_file():
                run_tuning.main(["--base_model", str(model_dir), "--train_files", str(prepared / "train.json"),
                                 "--output_dir", str(tuned_dir), "--finetune", "full", "--max_steps", "150",
                                 "--learning_rate", "1e-3", "--per_device_train_batch_size", "16", "--max_length",
                                 "256", "--save_strategy", "no", "--disable_tqdm", "true", "--overwrite_output_dir"])
        tuned = AutoModelForCausalLM.from_pretrained(tuned_dir).eval()
        t_s, _ = timed(lambda: score_prompts(tuned, sub, answer, pad, args.batch_size, progress=False), repeat=2)
        t_g, (_, n_new) = timed(lambda: score_by_generation(tuned, sub, answer, pad, tokenizer.eos_token_id,
                                                            args.batch_size, 128, progress=False))
        print(f"[2] tuned,   {len(sub)} records: score {t_s:.2f} s, generate {t_g:.2f} s "
              f"(mean {n_new.mean():.1f} new tokens) -> {t_g / t_s:.1f}x faster (goal >= 2x)")

    # 3. shared-prefix ranking vs 51 full prompts
    catalog = load_catalog(prepared / "items.json", all_records)
    cands = ranking_candidates(records, catalog, 50, seed=0)[: args.rank_records]
    enc = RecordEncoder(tokenizer, args.max_length, answer)
    groups = [[enc.prompt_ids(c) for c in cs] for _, cs in cands]
    t_full, _ = timed(lambda: [score_prompts(model, g, answer, pad, 51, progress=False) for g in groups], repeat=2)
    t_cache, _ = timed(lambda: [score_shared_prefix(model, g, answer, pad, 64) for g in groups], repeat=2)
    t_pack, _ = timed(lambda: candidate_group_stats(model, groups, answer, pad, progress=False), repeat=2)
    print(f"[3] ranking {len(groups)} targets among 50 negatives: full prompts {t_full:.2f} s; shared prefix: "
          f"KV cache {t_cache:.2f} s ({t_full / t_cache:.1f}x), packed {t_pack:.2f} s ({t_full / t_pack:.1f}x) "
          "(goal >= 3x)")

    # 4. the whole sampled-NDCG evaluation, as run_eval runs it
    sub = all_records[: args.ndcg_records]
    eval_args = EvalArguments(test_file=str(prepared / "test.json"), output_dir=str(work / "eval"), metrics="ndcg",
                              batch_size=args.batch_size, max_length=args.max_length)
    t_eval, (metrics, _) = timed(lambda: evaluate(model, tokenizer, sub, eval_args, catalog))
    n = metrics["counts"]["ranked"]
    print(f"[4] sampled NDCG@10 of {len(sub)} test records ({n} liked targets x 51 candidates): {t_eval:.1f} s "
          f"= {1000 * t_eval / n:.0f} ms per target")


if __name__ == "__main__":
    main()
