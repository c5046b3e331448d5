"""Answer tokens, training encoding (-100 on the prompt) and truncation inside the history."""

import pytest
from transformers import AutoTokenizer

from tlrec_utils import prompts
from tlrec_utils.data.records import build_record
from tlrec_utils.errors import InputError
from tlrec_utils.model.tokenization import IGNORE_INDEX, RecordEncoder, derive_answer_tokens


def _record(history_len=10, target_title="Yes Man (2008)", label=1):
    history = [
        {"item_id": str(i), "title": f"No. {i} Ladies' Detective Agency Part {i} ({1990 + i})", "liked": i % 2 == 0}
        for i in range(history_len)
    ]
    return build_record("u1", history, {"item_id": "t", "title": target_title}, label, "movie")


def _text(tok, ids):
    """Decoded text without BOS/EOS (not skip_special_tokens: the tiny sentencepiece-style tokenizer's
    byte-fallback tokens are registered as special and would be dropped)."""
    return tok.decode([i for i in ids if i not in (tok.bos_token_id, tok.eos_token_id)])


@pytest.fixture(params=["tiny_llama", "tiny_llama_sp"])
def tokenizer(request):
    return AutoTokenizer.from_pretrained(request.getfixturevalue(request.param))


def test_answer_tokens_are_where_yes_and_no_first_differ(tokenizer):
    answer = derive_answer_tokens(tokenizer)
    assert answer.yes_id != answer.no_id
    # independently: after the prompt's own tokens, the next token of "Yes."/"No." is the answer token
    rec = _record()
    prompt = prompts.record_prompt(rec)
    ids = RecordEncoder(tokenizer, 4096, answer).prompt_ids(rec)
    with_yes = tokenizer(prompt + prompts.YES).input_ids
    with_no = tokenizer(prompt + prompts.NO).input_ids
    assert with_yes[: len(ids)] == ids == with_no[: len(ids)]
    assert (with_yes[len(ids)], with_no[len(ids)]) == (answer.yes_id, answer.no_id)
    assert tokenizer.decode([answer.yes_id]).strip().startswith("Y")
    assert tokenizer.decode([answer.no_id]).strip().startswith("N")
    # the prompt mentions "Yes" and "No" in titles and instruction: the answer position is the end anyway
    assert _text(tokenizer, ids) == prompt


def test_sentencepiece_style_prepends_bos(tiny_llama_sp):
    tok = AutoTokenizer.from_pretrained(tiny_llama_sp)
    ids = RecordEncoder(tok, 4096, derive_answer_tokens(tok)).prompt_ids(_record())
    assert ids[0] == tok.bos_token_id


def test_indistinguishable_answers_are_an_input_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, ".": 2, "###": 3, "Response:": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>")
    with pytest.raises(InputError, match="cannot be scored"):
        derive_answer_tokens(tok)


def test_training_labels_mask_the_prompt_and_end_with_eos(tokenizer):
    rec = _record(label=0)
    enc = RecordEncoder(tokenizer, 4096).training_features(rec)
    ids, labels = enc["input_ids"], enc["labels"]
    assert len(ids) == len(labels)
    n_prompt = sum(1 for x in labels if x == IGNORE_INDEX)
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    assert _text(tokenizer, ids[n_prompt:]) == prompts.NO
    assert _text(tokenizer, ids[:n_prompt]) == prompts.record_prompt(rec)
    full = RecordEncoder(tokenizer, 4096, train_on_inputs=True).training_features(rec)
    assert full["labels"] == full["input_ids"] == ids


def test_long_prompts_lose_the_oldest_history_items_first(tokenizer):
    rec = _record(history_len=10)
    answer = derive_answer_tokens(tokenizer)
    full_len = len(RecordEncoder(tokenizer, 4096, answer).prompt_ids(rec))
    enc = RecordEncoder(tokenizer, full_len - 5, answer)
    ids = enc.prompt_ids(rec)
    assert len(ids) <= full_len - 5
    assert enc.truncations["history"] == 1
    text = _text(tokenizer, ids)
    # exactly the prompt of a suffix of the history: the oldest item went, the newest and the target stay
    assert "Part 0 " not in text and "Part 9 " in text and '"Yes Man (2008)"' in text
    kept = [h for h in rec["history"] if f"Part {h['item_id']} " in text]
    assert kept == rec["history"][10 - len(kept):]
    assert text.endswith(prompts.RESPONSE_SPLIT + "\n")
    # training: the same cut, and the response (label) is intact
    train = RecordEncoder(tokenizer, full_len - 5 + 3, answer).training_features(rec)
    n_prompt = train["labels"].count(IGNORE_INDEX)
    assert _text(tokenizer, train["input_ids"][n_prompt:]) == prompts.YES
    assert len(train["input_ids"]) <= full_len - 2


def test_records_without_structure_are_cut_in_the_middle(tokenizer):
    cot = {"instruction": "Summarise the preferences. " + "Filler words for a long history. " * 60,
           "input": "", "output": "The user likes dark comedies and westerns.", "stage": 1}
    enc = RecordEncoder(tokenizer, 80)
    feats = enc.training_features(cot)
    assert len(feats["input_ids"]) <= 80 and enc.truncations["middle"] == 1
    n_prompt = feats["labels"].count(IGNORE_INDEX)
    response = _text(tokenizer, feats["input_ids"][n_prompt:])
    assert response == cot["output"]
    prompt = _text(tokenizer, feats["input_ids"][:n_prompt])
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Response:\n")
    with pytest.raises(InputError, match="raise --max_length"):
        RecordEncoder(tokenizer, 12).training_features(cot, "cot.json record 0")
