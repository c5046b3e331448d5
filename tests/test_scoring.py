"""P(Yes) at the answer position: batch-independent, equal to a brute-force forward pass, equal with the
shared-prefix KV cache, and equal to the authors' generate-then-read-first-step method."""

import numpy as np
import pytest
import torch
from helpers import read_metrics, read_predictions
from transformers import AutoModelForCausalLM, AutoTokenizer

from tlrec_utils import prompts
from tlrec_utils.data.records import build_record
from tlrec_utils.evaluation import scoring
from tlrec_utils.evaluation.scoring import (
    can_pack,
    candidate_group_stats,
    p_yes_from_stats,
    score_by_generation,
    score_prompts,
    score_shared_prefix,
    shared_prefix_length,
)
from tlrec_utils.model.tokenization import RecordEncoder, derive_answer_tokens, rerender


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_llama_sp"])
def model_and_tok(request):
    path = request.getfixturevalue(request.param)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    # a random tiny model is nearly uniform: larger answer rows make score differences visible
    answer = derive_answer_tokens(tok)
    with torch.no_grad():
        model.lm_head.weight[[answer.yes_id, answer.no_id]] = torch.randn(2, model.config.hidden_size) * 0.1
    return model, tok


def _brute_force_p_yes(model, tokenizer, record, answer):
    """Unpadded forward pass of prompt+"Yes." and read the position where Yes/No diverge."""
    prompt = prompts.record_prompt(record)
    ids = tokenizer(prompt + prompts.YES).input_ids
    other = tokenizer(prompt + prompts.NO).input_ids
    pos = next(i for i, (a, b) in enumerate(zip(ids, other)) if a != b)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, pos - 1]
    return torch.softmax(logits[[answer.no_id, answer.yes_id]], -1)[1].item()


def test_scores_match_brute_force_and_do_not_depend_on_the_batch(model_and_tok, synthetic):
    model, tok = model_and_tok
    records = synthetic[0][:12]
    answer = derive_answer_tokens(tok)
    enc = RecordEncoder(tok, 4096, answer)
    # different lengths in one batch: left padding must not change a prompt's score
    encodings = [enc.prompt_ids(rerender(r, history=r["history"][i % 7:])) for i, r in enumerate(records)]
    batched = score_prompts(model, encodings, answer, tok.pad_token_id, batch_size=5, progress=False)
    single = score_prompts(model, encodings, answer, tok.pad_token_id, batch_size=1, progress=False)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    brute = [_brute_force_p_yes(model, tok, rerender(r, history=r["history"][i % 7:]), answer)
             for i, r in enumerate(records)]
    np.testing.assert_allclose(batched, brute, atol=1e-5)
    assert np.ptp(batched) > 1e-3  # not a constant


def test_shared_prefix_equals_full_prompts(model_and_tok, synthetic):
    model, tok = model_and_tok
    records, catalog, _ = synthetic
    answer = derive_answer_tokens(tok)
    enc = RecordEncoder(tok, 4096, answer)
    rec = records[0]
    # 51 candidates with titles of different token lengths (padded suffix batches)
    ids = list(catalog)[:50]
    cands = [rec] + [rerender(rec, target={"item_id": i, "title": catalog[i] + " extra" * (int(i) % 4)}) for i in ids]
    encodings = [enc.prompt_ids(c) for c in cands]
    assert len({len(e) for e in encodings}) > 1
    full = score_prompts(model, encodings, answer, tok.pad_token_id, batch_size=16, progress=False)
    for chunk in (64, 7):
        cached = score_shared_prefix(model, encodings, answer, tok.pad_token_id, batch_size=chunk)
        np.testing.assert_allclose(cached, full, atol=1e-4)


def test_generate_mode_reads_the_same_first_step(model_and_tok, synthetic):
    model, tok = model_and_tok
    answer = derive_answer_tokens(tok)
    enc = RecordEncoder(tok, 4096, answer)
    encodings = [enc.prompt_ids(r) for r in synthetic[0][:6]]
    gen, n_new = score_by_generation(model, encodings, answer, tok.pad_token_id, tok.eos_token_id,
                                     batch_size=4, max_new_tokens=3, progress=False)
    full = score_prompts(model, encodings, answer, tok.pad_token_id, batch_size=4, progress=False)
    np.testing.assert_allclose(gen, full, atol=1e-4)
    assert (n_new >= 1).all()


def test_titles_with_yes_and_no_do_not_move_the_answer_position(model_and_tok):
    model, tok = model_and_tok
    answer = derive_answer_tokens(tok)
    history = [{"item_id": "1", "title": "No. 1 Ladies' Detective Agency (2008)", "liked": True},
               {"item_id": "2", "title": "Yes Man (2008)", "liked": False}]
    rec = build_record("u", history, {"item_id": "3", "title": "Yes Man (2008)"}, 1, "movie")
    ids = RecordEncoder(tok, 4096, answer).prompt_ids(rec)
    p = score_prompts(model, [ids], answer, tok.pad_token_id, progress=False)[0]
    assert p == pytest.approx(_brute_force_p_yes(model, tok, rec, answer), abs=1e-5)


def test_packed_ranking_equals_full_prompts(model_and_tok, synthetic, monkeypatch):
    """Several users' candidate groups packed into rows (4D mask, LM head at the answer positions only); groups
    wider than a row go through the KV-cache path. Same numbers either way."""
    model, tok = model_and_tok
    records, catalog, _ = synthetic
    answer = derive_answer_tokens(tok)
    enc = RecordEncoder(tok, 4096, answer)
    ids = list(catalog)
    groups = []
    for n, rec in enumerate(records[:5]):
        rec = rerender(rec, history=rec["history"][n:])  # prefixes of different lengths
        cands = [rec] + [rerender(rec, target={"item_id": i, "title": catalog[i] + " extra" * (int(i) % 3)})
                         for i in ids[n * 7:n * 7 + 6 + n]]
        groups.append([enc.prompt_ids(c) for c in cands])
    groups.append(groups[0][:1])  # a group of one prompt
    expected = [score_prompts(model, g, answer, tok.pad_token_id, batch_size=4, progress=False) for g in groups]
    assert can_pack(model)
    widths = sorted(len(g[0]) + sum(len(e) - shared_prefix_length(g) for e in g[1:]) for g in groups[:-1])
    kv_calls, real = [], scoring.shared_prefix_stats
    monkeypatch.setattr(scoring, "shared_prefix_stats", lambda *a, **k: kv_calls.append(1) or real(*a, **k))
    # every group in one row; one group per row; the widest groups too wide for a row (KV-cache path); all of them
    for max_row_tokens, kv_groups in ((100_000, 0), (widths[-1], 0), (widths[-2], 1), (1, len(groups) - 1)):
        kv_calls.clear()
        stats = candidate_group_stats(model, groups, answer, tok.pad_token_id, max_row_tokens=max_row_tokens,
                                      progress=False)
        assert len(kv_calls) == kv_groups, max_row_tokens
        for got, want in zip(stats, expected):
            np.testing.assert_allclose(p_yes_from_stats(got), want, atol=1e-5)
    # a model that cannot be packed: every group, the one-prompt group too, through the KV-cache path
    monkeypatch.setattr(scoring, "can_pack", lambda model: False)
    kv_calls.clear()
    stats = candidate_group_stats(model, groups, answer, tok.pad_token_id, progress=False)
    assert len(kv_calls) == len(groups)
    for got, want in zip(stats, expected):
        np.testing.assert_allclose(p_yes_from_stats(got), want, atol=1e-5)


def test_authors_score_fn_ranks_differently_checked_by_hand(tiny_llama, synthetic, tmp_path):
    """Two records whose order differs between the two score functions: the answer rows of the LM head are set
    so that record A (label 0) has the larger Yes-No logit gap but almost no probability on either answer,
    record B (label 1) a smaller gap with most of the probability on the answers. run_eval --score_fn both:
    auc = 0 (A above B), auc_authors = 1 (B above A); each P(Yes) recomputed here from the full logits."""
    import json

    import run_eval

    records = [next(r for r in synthetic[0] if r["label"] == label) for label in (0, 1)]
    (tmp_path / "test.json").write_text(json.dumps(records))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    answer = derive_answer_tokens(tok)
    enc = RecordEncoder(tok, 4096, answer)
    prompts_ids = [enc.prompt_ids(r) for r in records]
    with torch.no_grad():
        hidden = torch.stack([model.model(torch.tensor([ids])).last_hidden_state[0, -1] for ids in prompts_ids])
        sink = next(i for i in range(10, 100) if i not in (answer.yes_id, answer.no_id))
        # rows (Yes, No, sink) x records (A, B): target logits
        target = torch.tensor([[8.0, 12.0], [6.0, 11.5], [25.0, -5.0]])
        rows = torch.linalg.lstsq(hidden, target.T).solution.T  # rows @ hidden_r = target[:, r]
        model.lm_head.weight[[answer.yes_id, answer.no_id, sink]] = rows
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    assert run_eval.main(["--base_model", str(tmp_path / "model"), "--test_file", str(tmp_path / "test.json"),
                          "--output_dir", str(tmp_path / "ev"), "--metrics", "auc", "--score_fn", "both"]) == 0
    metrics = read_metrics(tmp_path / "ev")
    preds = read_predictions(tmp_path / "ev")
    for ids, pred in zip(prompts_ids, preds):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, -1].double()
        probs = torch.softmax(logits, -1)
        two_logit = torch.softmax(logits[[answer.no_id, answer.yes_id]], -1)[1].item()
        authors = torch.softmax(probs[[answer.yes_id, answer.no_id]], -1)[0].item()  # their [Yes, No] order
        assert pred["p_yes"] == pytest.approx(two_logit, abs=1e-5)
        assert pred["p_yes_authors"] == pytest.approx(authors, abs=1e-5)
    a, b = preds
    assert a["p_yes"] > b["p_yes"] and a["p_yes_authors"] < b["p_yes_authors"]
    assert metrics["auc"] == 0.0 and metrics["auc_authors"] == 1.0
    assert metrics["settings"]["score_fn"] == "both"
