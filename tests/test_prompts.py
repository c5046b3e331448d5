"""Prompt bytes compared with the released code, byte for byte.

The expected strings below are copied from the released files (data, not code):
- SAI990323/TALLRec commit c1db29ce6501bce32cc8c3e343c4eb14155beeb1: finetune_rec.py `generate_prompt`,
  evaluate.py `generate_prompt`;
- ljy2222/TLRec commit 534c6c97ea67dcde1230f102c65d4ef141cd3435: utils.py `generate_prompt` (training) and
  `generate_prompt_eval` (evaluation).
"""

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from tlrec_utils import prompts
from tlrec_utils.errors import InputError
from tlrec_utils.model.tokenization import RecordEncoder, derive_answer_tokens

# first lines of the f-strings (TALLRec finetune_rec.py lines 304/315, evaluate.py lines 204/215)
TALLREC_INPUT_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.  # noqa: E501"
)
TALLREC_NO_INPUT_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "  # noqa: E501"
)
# TLRec utils.py: generate_prompt's no-input first line ends in "request. " (trailing space),
# generate_prompt_eval's in "request."
TLREC_NO_INPUT_TRAIN_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request. "
)
TLREC_NO_INPUT_EVAL_HEADER = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# the rest of the f-string after the first line, up to where the output follows (both repositories)
BODY_INPUT = "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
BODY_NO_INPUT = "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
# alpaca-lora templates/alpaca.json
ALPACA_INPUT_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


def test_tallrec_template_is_the_released_bytes():
    t = prompts.get_template("tallrec")
    assert prompts.get_template() is t  # the default
    assert t.with_input == TALLREC_INPUT_HEADER + BODY_INPUT
    assert t.no_input_train == t.no_input_eval == TALLREC_NO_INPUT_HEADER + BODY_NO_INPUT
    assert prompts.generate_prompt("Do X.", "Some input.") == (
        TALLREC_INPUT_HEADER + "\n\n### Instruction:\nDo X.\n\n### Input:\nSome input.\n\n### Response:\n"
    )


def test_tlrec_template_differs_between_training_and_evaluation_without_input():
    t = prompts.get_template("tlrec")
    assert t.with_input == TALLREC_INPUT_HEADER + BODY_INPUT
    assert t.no_input_train == TLREC_NO_INPUT_TRAIN_HEADER + BODY_NO_INPUT
    assert t.no_input_eval == TLREC_NO_INPUT_EVAL_HEADER + BODY_NO_INPUT
    assert t.render("Do X.", "", training=True).startswith(TLREC_NO_INPUT_TRAIN_HEADER + "\n\n")
    assert t.render("Do X.", None).startswith(TLREC_NO_INPUT_EVAL_HEADER + "\n\n")


def test_alpaca_template_is_clean():
    t = prompts.get_template("alpaca")
    assert t.with_input == ALPACA_INPUT_HEADER + BODY_INPUT
    assert "noqa" not in "".join(t.texts())
    assert t.no_input_train == t.no_input_eval == TLREC_NO_INPUT_EVAL_HEADER + BODY_NO_INPUT


def test_unknown_template_is_an_input_error():
    with pytest.raises(InputError, match="--prompt_template: unknown template 'vicuna'"):
        prompts.get_template("vicuna")


def test_encoder_trains_on_the_training_variant_and_scores_the_evaluation_variant(tiny_llama):
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    template = prompts.get_template("tlrec")
    record = {"instruction": "Say yes.", "input": "", "output": "Yes."}
    encoder = RecordEncoder(tok, 4096, derive_answer_tokens(tok, template), template=template)
    train = encoder.training_features(record)
    n_prompt = sum(1 for label in train["labels"] if label == -100)
    special = (tok.bos_token_id, tok.eos_token_id)
    text = tok.decode([i for i in train["input_ids"][:n_prompt] if i not in special])
    assert text == TLREC_NO_INPUT_TRAIN_HEADER + "\n\n### Instruction:\nSay yes.\n\n### Response:\n"
    scored = tok.decode([i for i in encoder.prompt_ids(record) if i not in special])
    assert scored == TLREC_NO_INPUT_EVAL_HEADER + "\n\n### Instruction:\nSay yes.\n\n### Response:\n"


def test_saved_template_round_trips_and_explicit_choice_warns(tmp_path, caplog):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    prompts.save_template(adapter, prompts.get_template("alpaca"))
    assert prompts.load_saved_template(adapter) == prompts.get_template("alpaca")
    assert prompts.resolve_template(None, [None, adapter]).name == "alpaca"
    assert prompts.resolve_template(None, [tmp_path / "nothing"]).name == "tallrec"
    with caplog.at_level("WARNING"):
        assert prompts.resolve_template("tallrec", [adapter]).name == "tallrec"
    assert "--prompt_template tallrec differs from the template 'alpaca'" in caplog.text
    (adapter / prompts.TEMPLATE_FILE).write_text('{"name": "x"}')
    with pytest.raises(InputError, match="tlrec_prompt.json: not a saved prompt template"):
        prompts.load_saved_template(adapter)


# ---- CoT wording: ljy2222/TLRec commit 534c6c97ea67dcde1230f102c65d4ef141cd3435 -----------------------------
# cot_data/generate_data.py: the context (`input`) strings and instruction_1/2/3 (the questions), movie and book
AUTHORS_CONTEXT = {
    "movie": "Candidate Set (candidate movies): {}\nThe movies that the user has watched (watched movies): {}\n",
    "book": "Candidate Set (candidate books): {}\nThe books that the user has watched (watched books): {}\n",
}
AUTHORS_QUESTIONS_MOVIE = (
    "Step 1: What features are most important to the user when selecting movies (Summarize the user's preferences "
    "briefly)?",
    "Step 2: Selecting the most featured movies (at most 5 movies) from the watched movies according to the user's "
    "preferences in descending order (Format: [no. a watched movie]).",
    "Step 3: Can you recommend 10 movies from the Candidate Set similar to the selected movies the user has watched "
    "(Format: [no. a watched movie - a candidate movie])?",
)
# cot_data/preprocess_data.py: the instruction of the stage 1, 2, 3 records (movie)
AUTHORS_INSTRUCTIONS_MOVIE = (
    "Given the candidate set and the user's watched movies, summarize the user's preferences briefly.",
    "Given the candidate set, the user's watched movies and the user's preferences, select the most featured movies "
    "(at most 5 movies) from the watched movies according to the user's preferences in descending order (Format: "
    "[no. a watched movie]).",
    "Given the candidate set, the user's watched movies, the user's preferences and the most featured movies, "
    "recommend 10 movies from the candidate set similar to the selected movies the user has watched (Format: [no. a "
    "watched movie - a candidate movie])",
)
FIXTURE = Path(__file__).parent / "data" / "stage123_fixture.json"  # made-up records in stage123.json's format


def test_cot_questions_context_and_instructions_are_the_authors_bytes():
    for kind in ("movie", "book"):
        assert prompts.cot_context(["A (1990)"], ["B (1991)", "C (1992)"], kind) == AUTHORS_CONTEXT[kind].format(
            '"A (1990)"', '"B (1991)", "C (1992)"')
        book = [q.replace("movie", kind) for q in AUTHORS_QUESTIONS_MOVIE]
        assert [prompts.cot_question(s, kind) for s in (1, 2, 3)] == book
        assert [prompts.cot_stage_instruction(s, kind) for s in (1, 2, 3)] == [
            i.replace("movie", kind) for i in AUTHORS_INSTRUCTIONS_MOVIE]
    assert len(prompts.COT_INSTRUCTION_STAGES) == 6


def test_cot_teacher_prompts_and_records_chain_as_the_authors_temp_1_2_3():
    context = prompts.cot_context(["A (1990)", "D (1993)"], ["B (1991)"], "movie")
    q1, q2, q3 = AUTHORS_QUESTIONS_MOVIE
    # temp_1/2/3 of generate_data.py
    assert prompts.cot_teacher_prompt(context, [], "movie") == context + q1 + "\nAnswer:"
    assert prompts.cot_teacher_prompt(context, ["p1"], "movie") == context + q1 + "\nAnswer: p1\n" + q2 + "\nAnswer:"
    third = context + q1 + "\nAnswer: p1\n" + q2 + "\nAnswer: p2\n" + q3 + "\nAnswer:"
    assert prompts.cot_teacher_prompt(context, ["p1", "p2"], "movie") == third
    # preprocess_data.py: input = the prompt without its last 8 characters ("\nAnswer:")
    record = prompts.cot_record(context, ["p1", "p2", "p3"], 3, "movie")
    assert record == {"instruction": AUTHORS_INSTRUCTIONS_MOVIE[2], "input": third[:-8], "output": "p3", "stage": 3}


def test_published_cot_file_stages_from_instructions(tmp_path):
    from tlrec_utils.cot.records import load_cot_records

    records = load_cot_records(FIXTURE)
    raw = json.loads(FIXTURE.read_text())
    assert [r["stage"] for r in records] == [3, 3, 1, 1, 2, 2]
    assert all(r["kind"] == "movie" for r in records)
    assert [{k: r[k] for k in ("instruction", "input", "output")} for r in records] == raw  # text untouched
    # each record's input is the stage's teacher prompt without "\nAnswer:" (as our own records are)
    for r in records:
        assert r["input"].endswith(AUTHORS_QUESTIONS_MOVIE[r["stage"] - 1])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw[:2] + [{**raw[2], "instruction": "Summarize the user."}]))
    with pytest.raises(InputError, match=r"bad.json record 2: unknown CoT instruction 'Summarize the user.'"):
        load_cot_records(bad)


def test_cot_records_module_writes_the_pipeline_cot_phase_and_refuses_a_missing_file(tmp_path):
    """`python -m tlrec_utils.cot.records cot_records` (the pipeline's CoT phase when the records come from a
    file): cot_train.json with the stages recovered, cot_records.json saying what was read; a missing file is one
    line, exit 2, nothing written."""
    import subprocess
    import sys

    from helpers import REPO, assert_one_line_error

    from tlrec_utils.fileio import sha256_file

    out = tmp_path / "cot"
    command = [sys.executable, "-m", "tlrec_utils.cot.records", "cot_records", "--output_dir", str(out)]
    proc = subprocess.run(command + ["--cot_file", str(FIXTURE)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [r["stage"] for r in json.loads((out / "cot_train.json").read_text())] == [3, 3, 1, 1, 2, 2]
    assert json.loads((out / "cot_records.json").read_text()) == {
        "cot_file": str(FIXTURE), "sha256": sha256_file(FIXTURE), "cot_records": 6,
        "records_per_stage": {"1": 2, "2": 2, "3": 2}}
    missing = tmp_path / "gone.json"
    proc = subprocess.run(command[:-1] + [str(tmp_path / "other"), "--cot_file", str(missing)], cwd=REPO,
                          capture_output=True, text=True)
    assert_one_line_error(proc, str(missing), "CoT file not found")
    assert not (tmp_path / "other").exists()
