"""P(Yes) at the answer position: batch-independent, equal to a brute-force forward pass, equal with the
shared-prefix KV cache, and equal to the authors' generate-then-read-first-step method."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tlrec_utils import prompts
from tlrec_utils.records import build_record
from tlrec_utils.scoring import score_by_generation, score_prompts, score_shared_prefix
from tlrec_utils.tokenization import RecordEncoder, derive_answer_tokens, rerender


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
