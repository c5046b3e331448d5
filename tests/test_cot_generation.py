"""run_cot_generation against a real HTTP server on 127.0.0.1 speaking the OpenAI chat-completions protocol; --mode
batch against its loopback fake of the OpenAI Batch API (/v1/files, /v1/batches) and --mode files with a fake offline
runner: the live client's bytes, retries of failed requests, resume after kill -9 without a request submitted twice,
and the one-line failures."""

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, assert_one_line_error, run_entry
from openai_stub_server import StubOpenAI

from run_cot_generation import main
from tlrec_utils.cot.replies import parse_recommendations
from tlrec_utils.data.records import build_record, save_records

SECRET = "sk-test-SECRET-7f3a9c"
TITLES = [f"Film {chr(65 + i % 26)}{i} ({1960 + i})" for i in range(36)] + [
    "Star Wars: Episode V - The Empire Strikes Back (1980)",  # ' - ' inside a title
    "Singin' in the Rain (1952)",
    "Amélie (2001)",
    "Alien: Collector's Edition (1979)",
]


def write_source_domain(directory: Path, people: int = 10, windows_per_person: int = 4, seed: int = 0) -> Path:
    """Prepared-format train.json: each person's sliding windows over one random sequence."""
    rng = random.Random(seed)
    records = []
    for p in range(people):
        sequence = rng.sample(range(len(TITLES)), 10 + windows_per_person)
        liked = [rng.random() < 0.8 for _ in sequence]
        for w in range(windows_per_person):
            hist = [{"item_id": str(i), "title": TITLES[i], "liked": liked[w + k]}
                    for k, i in enumerate(sequence[w : w + 10])]
            t = sequence[w + 10]
            records.append(
                build_record(f"p{p}", hist, {"item_id": str(t), "title": TITLES[t]}, int(liked[w + 10]), "movie")
            )
    directory.mkdir(parents=True, exist_ok=True)
    save_records(directory / "train.json", records)
    return directory


def n_liked(data: Path) -> int:
    return sum(r["label"] for r in json.loads((data / "train.json").read_text()))


def args(data, out, server, *extra):
    return [
        "--data_dir", str(data), "--output_dir", str(out), "--base_url", server.base_url, "--model", "stub",
        "--ensure_target", "--concurrency", "4", "--retry_base_delay", "0.01", "--request_timeout", "10",
        "--no-progress", *extra,
    ]  # fmt: skip


def read_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_secret_nowhere(*texts_or_dirs):
    for item in texts_or_dirs:
        if isinstance(item, Path) and item.is_dir():
            for f in item.rglob("*"):
                if f.is_file():
                    assert SECRET not in f.read_text(errors="replace"), f
        else:
            assert SECRET not in str(item)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return write_source_domain(tmp_path_factory.mktemp("source"))


@pytest.fixture()
def secret_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    """An uninterrupted run without faults: what every other run must reproduce."""
    out = tmp_path_factory.mktemp("reference")
    os.environ["OPENAI_API_KEY"] = SECRET
    try:
        with StubOpenAI() as server:
            main(args(source, out, server))
    finally:
        del os.environ["OPENAI_API_KEY"]
    return out


def test_end_to_end_with_faults_and_hit_filtering(source, tmp_path, secret_key, caplog, capsys, reference):
    caplog.set_level(logging.DEBUG)
    users = n_liked(source)
    faults = ["429", "500", "timeout", "malformed", "no_choices"]
    with StubOpenAI(timeout_sleep=3, retry_after="0.3") as server:
        server.faults.extend(faults)
        main(args(source, tmp_path, server, "--request_timeout", "1"))  # a slow machine still answers in 1 s
    # every user asked exactly three times, plus one retry per injected fault
    assert len(server.requests) == 3 * users + len(faults)
    assert all(r["authorization"] == f"Bearer {SECRET}" for r in server.requests)  # the key reached the server
    assert all([m["role"] for m in r["messages"]] == ["user"] for r in server.requests)  # no system message
    # Retry-After (0.3 s) wins over the 0.01 s backoff
    i = next(n for n, r in enumerate(server.requests) if r["fault"] == "429")
    retry = next(r for r in server.requests[i + 1 :] if r["prompt"] == server.requests[i]["prompt"])
    assert retry["time"] - server.requests[i]["time"] >= 0.29

    lines = read_lines(tmp_path / "responses.jsonl")
    assert len(lines) == len({line["key"] for line in lines}) == users
    answered = {r["prompt"] for r in server.requests if r["completion_tokens"]}
    for line in lines:
        assert set(line["prompts"]) <= answered
        titles = [c["title"] for c in line["candidates"]]
        assert len(titles) == 19 and line["target"]["title"] in titles  # --ensure_target
        # the stub recommends the first 10 candidates as shown (lines 1, 4, 7, 10 in upper and 2, 5, 8 in lower
        # case): parsed, the target is recommended iff it is among them; its exact title appears in the answer
        # only when written as is, lines 3, 6, 9 (the authors' rule, the default)
        assert line["recommended"] == titles[:10]
        recommended = line["target"]["title"] in titles[:10]
        in_answer = line["target"]["title"] in titles[2:10:3]
        assert line["hit_by_rule"] == {"title_in_answer": in_answer, "recommended": recommended}
        assert line["hit"] == in_answer
        # the authors' chained prompts: stage k = stage k-1's prompt + its answer + the next question
        for k in (1, 2):
            assert line["prompts"][k].startswith(line["prompts"][k - 1] + " " + line["answers"][k - 1] + "\nStep ")
        assert all(prompt.endswith("\nAnswer:") for prompt in line["prompts"])
    hits = [line for line in lines if line["hit"]]
    assert 0 < len(hits) < sum(line["hit_by_rule"]["recommended"] for line in lines) < users

    cot = json.loads((tmp_path / "cot_train.json").read_text())
    assert len(cot) == 3 * len(hits)
    assert [r["stage"] for r in cot] == [1, 2, 3] * len(hits)
    by_key = {line["key"]: line for line in lines}
    for rec in cot:
        line = by_key[rec["cot_key"]]
        assert line["hit"]
        assert rec["output"] == line["answers"][rec["stage"] - 1]
        assert rec["input"] + "\nAnswer:" == line["prompts"][rec["stage"] - 1]  # preprocess_data.py: [:-8]
        for earlier in line["answers"][: rec["stage"] - 1]:
            assert earlier.strip() in rec["input"]
        for later in line["answers"][rec["stage"] - 1 :]:
            assert later.strip() not in rec["input"]
        assert line["candidates"][0]["title"] in rec["input"]

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["users_completed"] == users and summary["users_hit"] == len(hits)
    assert summary["hit_rate"] == summary["hit_rate_title_in_answer"] == round(len(hits) / users, 4)
    n_recommended = sum(line["hit_by_rule"]["recommended"] for line in lines)
    assert summary["hit_rate_recommended"] == round(n_recommended / users, 4)
    assert summary["prompt_tokens"] == sum(r["prompt_tokens"] for r in server.requests)
    assert summary["completion_tokens"] == sum(r["completion_tokens"] for r in server.requests)
    expected_cost = summary["prompt_tokens"] / 1000 * 0.03 + summary["completion_tokens"] / 1000 * 0.06
    assert summary["estimated_cost"] == pytest.approx(expected_cost)
    assert summary["retries_this_run"] == len(faults)
    # faults change nothing in the results
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()
    out = capsys.readouterr()
    assert_secret_nowhere(tmp_path, caplog.text, out.out, out.err)


def test_auth_error_echoing_the_key_is_redacted(source, tmp_path, secret_key, caplog):
    caplog.set_level(logging.DEBUG)
    with StubOpenAI() as server:
        server.faults.append("401_echo")
        with pytest.raises(SystemExit) as exc:  # refused for authentication: a failure, not a finished run
            main(args(source, tmp_path, server, "--max_users", "2", "--concurrency", "1"))
    assert exc.value.code == 2
    assert len(server.requests) == 1  # a bad key fails every request: the run stops at once
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["users_failed_this_run"] == 1 and summary["users_completed"] == 0
    assert "HTTP 401" in summary["stopped"] and "***" in summary["stopped"]
    assert "HTTP 401" in caplog.text and "***" in caplog.text
    assert_secret_nowhere(tmp_path, caplog.text)


def test_server_down_stops_after_a_few_users(source, tmp_path, secret_key):
    with StubOpenAI() as server:
        url = server.base_url
    dead = args(source, tmp_path, server, "--concurrency", "1", "--max_retries", "1")
    with pytest.raises(SystemExit) as exc:  # nothing listens on that port any more: connection refused
        main(dead)
    assert exc.value.code == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "3 users failed in a row" in summary["stopped"]
    assert summary["users_failed_this_run"] == 3 and summary["users_completed"] == 0
    assert summary["users_remaining"] == n_liked(source) and url in dead


def test_max_requests_stops_cleanly_and_resume_finishes(source, tmp_path, secret_key, reference):
    users = n_liked(source)
    with StubOpenAI() as server:
        main(args(source, tmp_path, server, "--max_requests", "7", "--concurrency", "3"))
        assert len(server.requests) == 7
        summary = json.loads((tmp_path / "summary.json").read_text())
        assert "max_requests=7" in summary["stopped"]
        progress = read_lines(tmp_path / "progress.jsonl")
        assert len(progress) == 7
        complete = {k for k in {p["key"] for p in progress} if sum(p["key"] == k for p in progress) == 3}
        assert {line["key"] for line in read_lines(tmp_path / "responses.jsonl")} == complete
        json.loads((tmp_path / "cot_train.json").read_text())  # valid output even when stopped

        main(args(source, tmp_path, server))  # no cap: finish
        assert len(server.requests) == 3 * users  # nothing asked twice
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()


def test_max_cost_stops_at_the_cap(source, tmp_path, secret_key):
    price = ["--price_per_1k_input", "1", "--price_per_1k_output", "1"]
    with StubOpenAI() as server:
        main(args(source, tmp_path, server, "--max_cost", "0.5", "--concurrency", "1", *price))
    spent, sent_expected = 0.0, 0
    for r in server.requests:  # a request is sent only while the spend so far is under the cap
        sent_expected += 1
        spent += (r["prompt_tokens"] + r["completion_tokens"]) / 1000
        if spent >= 0.5:
            break
    assert len(server.requests) == sent_expected < 3 * n_liked(source)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "max_cost" in summary["stopped"]
    assert summary["estimated_cost"] == pytest.approx(spent)


def test_resume_after_kill_9(source, tmp_path, reference):
    users = n_liked(source)
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO)}
    with StubOpenAI(latency=0.1) as server:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run_cot_generation.py"), *args(source, tmp_path, server)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        progress = tmp_path / "progress.jsonl"
        deadline = time.monotonic() + 60
        while not (progress.exists() and progress.read_text().count("\n") >= 30):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        answered = read_lines(progress)  # every complete line written before the kill
        with open(progress, "a") as f:
            f.write('{"key": "0:p0:1", "sta')  # as if killed in the middle of a write
        before = len(server.requests)
        main(args(source, tmp_path, server))
        after = server.requests[before:]
    assert answered and {r["prompt"] for r in after}.isdisjoint(a["prompt"] for a in answered)
    assert len(after) == 3 * users - len(answered)
    lines = read_lines(tmp_path / "responses.jsonl")
    assert len(lines) == len({line["key"] for line in lines}) == users
    ref_lines = sorted(read_lines(reference / "responses.jsonl"), key=lambda line: line["key"])
    assert sorted(lines, key=lambda line: line["key"]) == ref_lines
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()
    assert_secret_nowhere(tmp_path, stderr.decode())


def test_dry_run_calls_nothing_and_writes_nothing(source, tmp_path, secret_key, capsys):
    out = tmp_path / "never"
    with StubOpenAI() as server:
        estimate = main(args(source, out, server, "--dry_run"))
    assert server.requests == [] and not out.exists()
    printed = capsys.readouterr().out
    assert "Stage 3 prompt" in printed and "<answer to step 2>" in printed
    assert estimate["requests"] == 3 * n_liked(source)
    assert estimate["cost_upper_bound"] > 0


def test_rerun_with_other_settings_is_refused(source, reference, secret_key):
    with StubOpenAI() as server, pytest.raises(SystemExit) as exc:
        main(args(source, reference, server, "--candidate_num", "10"))
    assert exc.value.code == 2 and server.requests == []


def test_system_prompt_and_recommended_hit_rule_on_request(source, tmp_path, secret_key):
    with StubOpenAI() as server:
        summary = main(args(source, tmp_path, server, "--max_users", "12", "--system_prompt", "You recommend films.",
                            "--hit_match", "recommended"))
    assert all(r["messages"][0] == {"role": "system", "content": "You recommend films."} for r in server.requests)
    lines = read_lines(tmp_path / "responses.jsonl")
    n_recommended = sum(line["hit_by_rule"]["recommended"] for line in lines)
    assert summary["hit_match"] == "recommended" and summary["users_hit"] == n_recommended > 0
    assert summary["hit_rate_title_in_answer"] < summary["hit_rate_recommended"]
    assert len(json.loads((tmp_path / "cot_train.json").read_text())) == 3 * n_recommended


def test_rerun_after_the_wording_changed_is_refused(source, reference, tmp_path, secret_key, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(reference, old)
    config = json.loads((old / "run_config.json").read_text())
    config["prompt_wording_sha256"] = "0" * 64  # as if written by a version with other prompt strings
    (old / "run_config.json").write_text(json.dumps(config))
    with StubOpenAI() as server, pytest.raises(SystemExit) as exc:
        main(args(source, old, server))
    assert exc.value.code == 2 and server.requests == []
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "answers to prompts worded differently" in err and "use a new --output_dir" in err


@pytest.fixture(scope="module")
def heuristic_run(source, tmp_path_factory):
    """A finished offline run (heuristic teacher) to rerun into."""
    out = tmp_path_factory.mktemp("heuristic")
    main(["--data_dir", str(source), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress"])
    return out


@pytest.mark.parametrize("change", ["question", "answer_format", "quoting"])
def test_rerun_after_a_prompt_string_or_the_answer_format_changed_is_refused(change, source, heuristic_run, tmp_path,
                                                                             monkeypatch, capsys):
    import shutil

    from tlrec_utils import prompts

    out = tmp_path / "out"
    shutil.copytree(heuristic_run, out)
    before = (out / "responses.jsonl").read_bytes()
    if change == "question":  # one word of the Stage-1 question
        monkeypatch.setattr(prompts, "COT_QUESTIONS", (prompts.COT_QUESTIONS[0].replace("briefly", "shortly"),
                                                       *prompts.COT_QUESTIONS[1:]))
    elif change == "answer_format":  # the Stage-3 answer format (what the questions ask for, what the parser reads)
        monkeypatch.setattr(prompts, "COT_PAIR_SEPARATOR", " -> ")
    else:  # how an item is written into the template: code, not a string
        monkeypatch.setattr(prompts, "quote_item", lambda text: f"<{text}>")
    with pytest.raises(SystemExit) as exc:
        main(["--data_dir", str(source), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "answers to prompts worded differently" in err[0] and "use a new --output_dir" in err[0]
    assert (out / "responses.jsonl").read_bytes() == before  # nothing asked, nothing mixed


def test_output_dir_of_0_1_0_resumes_while_its_strings_are_the_same(source, heuristic_run, tmp_path):
    import shutil

    from tlrec_utils import prompts

    out = tmp_path / "out"
    shutil.copytree(heuristic_run, out)
    config = json.loads((out / "run_config.json").read_text())
    current = config["prompt_wording_sha256"]
    config["prompt_wording_sha256"] = prompts.cot_wording_fingerprint_strings_only("movie")  # as 0.1.0 wrote it
    (out / "run_config.json").write_text(json.dumps(config))
    before = (out / "responses.jsonl").read_bytes()
    summary = main(["--data_dir", str(source), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress"])
    assert summary["users_remaining"] == 0 and (out / "responses.jsonl").read_bytes() == before  # none re-asked
    assert json.loads((out / "run_config.json").read_text())["prompt_wording_sha256"] == current != config[
        "prompt_wording_sha256"]


def test_second_run_into_a_locked_output_dir_stops_with_one_line(source, tmp_path, capsys):
    """While one generation holds the output directory, a second one into it stops before writing anything;
    once the first lets go, the same command runs."""
    from tlrec_utils.fileio import exclusive_lock

    out = tmp_path / "busy"
    argv = ["--data_dir", str(source), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress",
            "--ensure_target"]
    with exclusive_lock(out / ".lock", lambda holder: "held"), pytest.raises(SystemExit) as exc:  # as a run holds it
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err
    assert str(out) in errors[0] and "another run_cot_generation is writing here" in errors[0]
    assert not out.exists()  # nothing written by the refused run; the released lock left nothing either
    assert main(argv)["users_completed"] > 0


def test_rate_limiter_spaces_request_starts():
    from tlrec_utils.cot.teacher import RateLimiter

    async def starts():
        limiter = RateLimiter(per_minute=600)  # one start every 0.1 s
        times = []

        async def one():
            await limiter.wait()
            times.append(time.monotonic())

        await asyncio.gather(*(one() for _ in range(5)))
        return sorted(times)

    times = asyncio.run(starts())
    assert all(b - a >= 0.09 for a, b in zip(times, times[1:]))


def test_retry_after_header_forms():
    from email.utils import formatdate

    from tlrec_utils.cot.teacher import retry_after_seconds

    assert retry_after_seconds({"retry-after": "2.5"}) == 2.5
    assert retry_after_seconds({"retry-after-ms": "150"}) == 0.15
    assert 8 <= retry_after_seconds({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10
    assert retry_after_seconds({}) is None and retry_after_seconds({"retry-after": "soon"}) is None


def test_parse_recommendations_normalises_titles():
    candidates = [
        "Star Wars: Episode V - The Empire Strikes Back (1980)",
        "Singin' in the Rain (1952)",
        "Up (2009)",
        "Heat (1995)",
        "Ran (1985)",
    ]
    text = (
        "Sure:\n"
        "1. Alien (1979) - “STAR WARS: EPISODE V – THE EMPIRE STRIKES BACK (1980)”\n"
        "2) **Jaws (1975)** - 'singin'   in the rain (1952)'.\n"
        "3. Jaws (1975) - Heatwave (2009)\n"  # not a candidate, though a candidate's words start it
        "4. Up (2009)\n"
        "5. Jaws (1975) - Up (2009)\n"
        "6. Heat (1995), because you liked Jaws (1975)\n"
        "Ran (1985) is also good\n"  # not in the numbered list
    )
    assert parse_recommendations(text, candidates) == candidates[:4]
    assert parse_recommendations("1. Jaws (1975) - Heatwave (2009)", candidates) == []


def test_heuristic_teacher_on_netflix(data_dir, tmp_path):
    from tlrec_utils.data.prepare import PrepareConfig, prepare_dataset

    prepared = tmp_path / "netflix"
    prepare_dataset(PrepareConfig(dataset="windows-csv", raw_dir=str(data_dir / "netflix"), output_dir=str(prepared)))
    out = tmp_path / "cot"
    summary = main(["--data_dir", str(prepared), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress"])
    lines = read_lines(out / "responses.jsonl")
    assert summary["teacher"] == "heuristic (not an LLM)"
    assert all(line["teacher"] == summary["teacher"] for line in lines)
    assert (summary["users_completed"] == summary["users_seen"] - summary["skipped_target_not_in_candidates"]
            == len(lines))
    # the leak the issue describes: a user's own windows as neighbours put the target in the set far more often
    assert (summary["target_in_candidates_rate_with_same_user_neighbors"]
            > 2 * summary["target_in_candidates_rate_other_users_only"])
    cot = json.loads((out / "cot_train.json").read_text())
    assert len(cot) == 3 * summary["users_hit"] > 0
    hit_targets = {line["key"]: line["target"]["title"] for line in lines if line["hit"]}
    for rec in cot[2::3]:
        assert hit_targets[rec["cot_key"]] in rec["output"]
    # the heuristic teacher's answers parse the same under both hit rules
    assert all(line["hit_by_rule"]["title_in_answer"] == line["hit_by_rule"]["recommended"] for line in lines)
    assert summary["hit_rate_title_in_answer"] == summary["hit_rate_recommended"] == summary["hit_rate"]


def test_authors_context_style_for_books_with_the_heuristic_teacher(tmp_path):
    """--context_style authors: watched = preference then unpreference items, reversed; a book shows as its quoted
    title only (as generate_data.py extracts items from a record's text). Hits still parse under both rules."""
    rng = random.Random(1)
    books = [f'"Book {chr(65 + i % 26)}{i}" written by Author {i % 7}' for i in range(30)]
    records = []
    for p in range(12):
        seq = rng.sample(range(len(books)), 13)
        liked = [rng.random() < 0.7 for _ in seq]
        for w in range(3):
            hist = [{"item_id": str(i), "title": books[i], "liked": liked[w + k]} for k, i in enumerate(seq[w:w + 10])]
            t = seq[w + 10]
            records.append(build_record(f"p{p}", hist, {"item_id": str(t), "title": books[t]}, 1, "book"))
    data = tmp_path / "books"
    data.mkdir()
    save_records(data / "train.json", records)
    for style in ("history", "authors"):
        out = tmp_path / style
        summary = main(["--data_dir", str(data), "--output_dir", str(out), "--teacher", "heuristic", "--no-progress",
                        "--ensure_target", "--context_style", style])
        lines = read_lines(out / "responses.jsonl")
        first = lines[0]
        record = records[first["record_index"]]
        watched_line = first["prompts"][0].splitlines()[1]
        assert watched_line.startswith("The books that the user has watched (watched books): ")
        if style == "history":
            assert watched_line.endswith(", ".join(h["title"] for h in record["history"]))
        else:
            order = [h for h in record["history"] if h["liked"]] + [h for h in record["history"] if not h["liked"]]
            bare = [h["title"].split('"')[1] for h in reversed(order)]
            assert watched_line.endswith(", ".join(f'"{t}"' for t in bare))
            assert "written by" not in first["prompts"][2].split("\nStep 1")[0]  # context: titles only
            assert first["target_shown"] == record["target"]["title"].split('"')[1]
        assert all(line["hit_by_rule"]["title_in_answer"] == line["hit_by_rule"]["recommended"] for line in lines)
        assert summary["users_hit"] > 0


def test_a_finished_run_where_no_user_hit_is_an_error_that_keeps_the_answers(source, tmp_path, secret_key,
                                                                              monkeypatch, capsys):
    """Issue 21: every user asked, none of the Stage-3 answers names the true item: one line, exit 2, no empty
    cot_train.json for a tuning run to take, and the paid-for answers kept (a rerun asks only new users)."""
    import openai_stub_server

    scripted = openai_stub_server.scripted_answer

    def nothing_fits(prompt):  # Stages 1 and 2 as usual; Stage 3 names no candidate at all
        return "1. Nothing in the candidate set suits this user." if "Step 3:" in prompt else scripted(prompt)

    monkeypatch.setattr(openai_stub_server, "scripted_answer", nothing_fits)
    with StubOpenAI() as server:
        with pytest.raises(SystemExit) as exc:
            main(args(source, tmp_path, server, "--max_users", "3"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {tmp_path}: no CoT record written: none of the 3 answered")
    assert "raise --max_users" in err[0]
    assert not (tmp_path / "cot_train.json").exists()
    assert len(read_lines(tmp_path / "responses.jsonl")) == 3 and len(server.requests) == 9


# ------------------------------------------------------------------------------ --mode batch and --mode files


def cot_args(data, out, server, *extra):
    return args(data, out, server, "--poll_interval", "0.01", *extra)


def rounds(out) -> list[dict]:
    return json.loads((out / "batches.json").read_text())["rounds"]


def test_batch_mode_writes_the_live_bytes_through_failed_requests_an_expired_batch_and_split_files(
        source, reference, tmp_path, secret_key, capsys):
    users = n_liked(source)
    faults = ["error", "refusal", "no_choices", "error_object"]  # the first four requests the fake runs
    with StubOpenAI() as server:
        server.faults.extend(faults)
        server.batch_plan.extend(["completed", "expired"])  # Stage 1's second file expires half-way
        summary = main(cot_args(source, tmp_path, server, "--mode", "batch", "--batch_file_requests", "15"))
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()
    done = rounds(tmp_path)
    assert [(r["stage"], r["number"]) for r in done] == [(1, 0), (1, 1), (2, 0), (3, 0)]  # retries: same stage
    assert [len(r["parts"]) for r in done][0] == -(-users // 15)  # split at --batch_file_requests
    assert all(p["requests"] <= 15 for r in done for p in r["parts"])
    # the four failed and every expired request were asked again, once; nothing else twice
    expired = done[0]["parts"][1]["requests"] - done[0]["parts"][1]["requests"] // 2
    assert done[1]["parts"][0]["requests"] == len(faults) + expired == summary["retries_this_run"]
    assert sum(server.submitted.values()) == 3 * users + len(faults) + expired
    assert max(server.submitted.values()) == 2
    # request lines: {custom_id, method, url, body} with the live client's request body
    first = json.loads((tmp_path / "batches" / "stage1-round0-part0.requests.jsonl").read_text().splitlines()[0])
    assert set(first) == {"custom_id", "method", "url", "body"} and first["url"] == "/v1/chat/completions"
    assert first["body"] == {"model": "stub", "messages": first["body"]["messages"], "temperature": 0.2,
                             "max_tokens": 512, "seed": 0}
    assert all(f["purpose"] == "batch" for f in server.files.values() if "filename" in f)
    # the same answers and tokens as reference, at half the price
    live_summary = json.loads((reference / "summary.json").read_text())
    assert summary["prompt_tokens"] == live_summary["prompt_tokens"]
    assert summary["estimated_cost"] == pytest.approx(live_summary["estimated_cost"] / 2)
    assert summary["users_completed"] == users and summary["mode"] == "batch"
    out = capsys.readouterr()
    assert_secret_nowhere(tmp_path, out.out, out.err)


def run_files_mode(source, out, server, *extra) -> int:
    """Run --mode files until it finishes, answering each round with the fake offline runner; the rounds."""
    for n in range(10):
        main(cot_args(source, out, server, "--mode", "files", *extra))
        last = rounds(out)[-1]
        if last["collected"]:
            return n
        part = last["parts"][0]
        server.offline_run(out / "batches" / f"{part['name']}.requests.jsonl",
                           out / "batches" / f"{part['name']}.output.jsonl")
    raise AssertionError("files mode never finished")


def test_files_mode_stops_with_the_command_then_reads_the_output(source, reference, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local teacher needs no key
    with StubOpenAI(batch_api=False) as server:
        summary = main(cot_args(source, tmp_path, server, "--mode", "files"))
        printed = capsys.readouterr().out
        requests = tmp_path / "batches" / "stage1-round0.requests.jsonl"
        assert f"vllm run-batch -i {requests} -o {requests.with_name('stage1-round0.output.jsonl')} --model stub" \
            in printed
        assert "waiting for" in summary["stopped"] and not (tmp_path / "cot_train.json").exists()
        assert len(requests.read_text().splitlines()) == n_liked(source)
        assert server.requests == []  # nothing asked: the runner has the requests
        main(cot_args(source, tmp_path, server, "--mode", "files"))  # no output yet: the same message again
        assert len(rounds(tmp_path)) == 1
        server.faults.extend(["no_choices"])  # one malformed answer: asked again in a second Stage-1 round
        reruns = run_files_mode(source, tmp_path, server)
    assert reruns == 4 and [(r["stage"], r["number"]) for r in rounds(tmp_path)] == [(1, 0), (1, 1), (2, 0), (3, 0)]
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()


def wait_for(condition, proc, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def kill_9(proc):
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return stderr.decode()


def start(source, out, server, *extra):
    env = {**os.environ, "OPENAI_API_KEY": SECRET, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, str(REPO / "run_cot_generation.py"),
                             *cot_args(source, out, server, "--mode", "batch", *extra)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_mid_poll_and_between_rounds_then_resume_submits_nothing_twice(source, reference, tmp_path, secret_key):
    out = tmp_path / "out"
    with StubOpenAI(polls=10**9) as server:  # batches stay in progress until the test lets them finish
        proc = start(source, out, server, "--batch_file_requests", "20")

        def polled():
            return (out / "batches.json").exists() and all(p["batch_id"] for p in rounds(out)[0]["parts"]) and \
                server.calls["GET /batches/{id}"] >= 3

        wait_for(polled, proc, "never polled")
        stderr = kill_9(proc)  # killed while polling Stage 1's batches
        server.release()  # they finish now; Stage 2's will wait
        proc = start(source, out, server)
        wait_for(lambda: len(rounds(out)) == 2 and all(p["batch_id"] for p in rounds(out)[1]["parts"])
                 and server.calls["GET /batches/{id}"] >= 8, proc, "Stage 2 never submitted")
        assert len(read_lines(out / "progress.jsonl")) == n_liked(source)  # Stage 1 collected
        stderr += kill_9(proc)  # killed after Stage 1, with Stage 2's batch in flight
        server.release()
        server.polls = 1
        main(cot_args(source, out, server, "--mode", "batch"))
    assert max(server.submitted.values()) == 1 and sum(server.submitted.values()) == 3 * n_liked(source)
    assert server.calls["POST /batches"] == sum(len(r["parts"]) for r in rounds(out)) == 4  # 2 + 1 + 1 files
    assert (out / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()
    assert_secret_nowhere(out, stderr)


def test_a_batch_created_by_a_run_killed_before_it_recorded_the_id_is_found_not_created_again(
        source, reference, tmp_path, secret_key, monkeypatch):
    from openai.resources.batches import Batches

    create = Batches.create

    def create_then_die(self, **kwargs):  # the server made the batch; the run dies before writing its id
        create(self, **kwargs)
        raise KeyboardInterrupt

    with StubOpenAI() as server:
        monkeypatch.setattr(Batches, "create", create_then_die)
        with pytest.raises(SystemExit):  # Ctrl-C's exit
            main(cot_args(source, tmp_path, server, "--mode", "batch"))
        part = rounds(tmp_path)[0]["parts"][0]
        assert part["file_id"] and part["batch_id"] is None and server.calls["POST /batches"] == 1
        monkeypatch.setattr(Batches, "create", create)
        main(cot_args(source, tmp_path, server, "--mode", "batch"))
    assert server.calls["GET /batches"] == 1 and server.calls["POST /batches"] == 3  # found, then Stages 2 and 3
    assert max(server.submitted.values()) == 1
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_batch_failing_as_a_whole_is_one_line_and_a_rerun_goes_on(end, source, reference, tmp_path, secret_key,
                                                                    capsys):
    users = n_liked(source)
    with StubOpenAI() as server:
        server.batch_plan.extend(["completed", end])  # Stage 2's batch fails validation, or is cancelled half-way
        with pytest.raises(SystemExit) as exc:
            main(cot_args(source, tmp_path, server, "--mode", "batch"))
        err = capsys.readouterr().err.strip().splitlines()
        assert exc.value.code == 2 and len(err) == 1
        why = "invalid_request: the input file is invalid" if end == "failed" else "no reason given"
        assert err[0].startswith(f"error: {tmp_path}: batch batch-1 (stage2-round0, Stage 2) {end}: {why}")
        kept = read_lines(tmp_path / "progress.jsonl")  # what was paid for is kept: Stage 1, and a cancelled
        ran = 0 if end == "failed" else users // 2  # batch's answers before it stopped
        assert [e["stage"] for e in kept] == [1] * users + [2] * ran
        main(cot_args(source, tmp_path, server, "--mode", "batch"))
    assert [(r["stage"], r["number"]) for r in rounds(tmp_path)] == [(1, 0), (2, 0), (2, 1), (3, 0)]
    assert rounds(tmp_path)[2]["parts"][0]["requests"] == users - ran  # only what the batch did not answer
    assert sum(server.submitted.values()) == 4 * users - ran  # those the batch did not answer, once more
    assert (tmp_path / "cot_train.json").read_bytes() == (reference / "cot_train.json").read_bytes()


def test_a_request_failing_every_round_is_given_up_and_reported_per_user(source, tmp_path, secret_key, capsys):
    with StubOpenAI() as server:
        server.faults.extend(["error"] * 4)  # two users, two rounds each of HTTP 500
        with pytest.raises(SystemExit) as exc:
            main(cot_args(source, tmp_path, server, "--mode", "batch", "--max_users", "2", "--max_retries", "1"))
    assert exc.value.code == 2 and server.calls["POST /batches"] == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no user was answered (2 failed; first: " in err[0]
    assert "Stage 1: gave up after 2 attempts: HTTP 500: internal error" in err[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["users_failed_this_run"] == 2 and len(summary["first_errors"]) == 2
    assert not (tmp_path / "cot_train.json").exists()


def test_dry_run_gives_the_batch_price_and_the_number_of_files(source, tmp_path, secret_key):
    with StubOpenAI() as server:
        live = main(cot_args(source, tmp_path / "a", server, "--dry_run"))
        batch = main(cot_args(source, tmp_path / "b", server, "--dry_run", "--mode", "batch",
                              "--batch_file_requests", "10"))
    assert server.requests == [] and sum(server.calls.values()) == 0 and not tmp_path.joinpath("b").exists()
    assert batch["cost_upper_bound"] == pytest.approx(live["cost_upper_bound"] / 2, abs=1e-4)
    assert batch["live_cost_upper_bound"] == live["cost_upper_bound"]
    assert batch["batch_files_per_stage"] == [-(-n_liked(source) // 10)] * 3
    assert batch["batch_files"] == 3 * -(-n_liked(source) // 10)


def test_split_lines_keeps_both_limits():
    from tlrec_utils.cot.batch_files import split_lines

    lines = [b"x" * n + b"\n" for n in (5, 5, 5, 20, 1, 1)]
    parts = split_lines(lines, max_requests=2, max_bytes=25)
    assert parts == [lines[:2], lines[2:3], lines[3:5], lines[5:]]
    assert b"".join(b"".join(p) for p in parts) == b"".join(lines)


def test_a_round_still_open_must_be_finished_in_its_own_mode(source, tmp_path, secret_key, capsys):
    with StubOpenAI(batch_api=False) as server:
        main(cot_args(source, tmp_path, server, "--mode", "files"))  # Stage 1's requests wait for the runner
        for mode in ("live", "batch"):
            proc = run_entry("run_cot_generation", cot_args(source, tmp_path, server, "--mode", mode), capsys)
            assert_one_line_error(proc, "batches.json: a Stage-1 round of --mode files is still open",
                                  "rerun with --mode files", logs_ok=True)
    assert server.requests == [] and sum(server.calls.values()) == 0


def test_the_pipeline_asks_in_batch_mode_and_checks_the_teacher_against_the_table():
    from tlrec_utils.errors import InputError
    from tlrec_utils.experiments.phases import pipeline_phases
    from tlrec_utils.experiments.pipeline_config import PipelineConfig, check_values

    cfg = PipelineConfig(run_dir="runs/x", teacher="openai", teacher_mode="batch", methods=["tlrec"])
    (cot,) = [p for p in pipeline_phases(cfg, check_data=False) if p.kind == "cot"]
    assert cot.script == "run_cot_generation.py" and cot.argv[-2:] == ["--mode", "batch"]
    with pytest.raises(InputError, match="--teacher_mode batch: the heuristic teacher is asked live only"):
        check_values(PipelineConfig(run_dir="runs/x", teacher="heuristic", teacher_mode="batch"))
    with pytest.raises(InputError, match="--teacher: 'gpt' is not one of openai, heuristic, published"):
        check_values(PipelineConfig(run_dir="runs/x", teacher="gpt"))
