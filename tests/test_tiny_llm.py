import subprocess
import sys

import torch
from helpers import assert_one_line_error
from transformers import AutoModelForCausalLM, AutoTokenizer

from tlrec_utils import prompts


def _check_loads_and_runs(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = prompts.record_prompt({"instruction": "Is this a test?", "input": "A test."})
    batch = tok([prompt + prompts.YES], return_tensors="pt")
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (1, batch.input_ids.shape[1], len(tok))
    assert torch.isfinite(out.logits).all()
    # the trained vocabulary covers the answers: no unknown tokens
    assert tok.unk_token_id not in tok(prompts.YES).input_ids
    assert tok.decode(tok(prompt).input_ids, skip_special_tokens=True) == prompt


def test_bytelevel_tiny_llama_loads_and_runs(tiny_llama):
    _check_loads_and_runs(tiny_llama)


def test_sentencepiece_tiny_llama_loads_and_runs(tiny_llama_sp):
    tok = AutoTokenizer.from_pretrained(tiny_llama_sp)
    assert tok("hello").input_ids[0] == tok.bos_token_id
    _check_loads_and_runs(tiny_llama_sp)


def test_cli_builds_model(tmp_path, synthetic):
    out = tmp_path / "m"
    subprocess.run(
        [sys.executable, "-m", "tlrec_utils.model.tiny_llm", "--data", str(synthetic[2]), "--output_dir", str(out),
         "--hidden_size", "32", "--num_layers", "1", "--vocab_size", "600", "--seed", "3"],
        check=True,
    )
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1


def test_cli_missing_data_file_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tlrec_utils.model.tiny_llm", "--data", str(tmp_path / "nope.json"),
         "--output_dir", str(tmp_path / "m")],
        capture_output=True, text=True,
    )
    assert_one_line_error(proc, "nope.json: file not found")
    assert not (tmp_path / "m").exists()


def test_sentencepiece_byte_fallback_round_trips_unseen_characters(tiny_llama_sp):
    tok = AutoTokenizer.from_pretrained(tiny_llama_sp)
    text = "Yes Man (2008) – Amélie 東京"  # characters the tokenizer never saw come back through byte tokens
    ids = tok(text).input_ids
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
