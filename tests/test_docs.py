"""The documentation tells the truth about the code: every command shown in README.md and docs/*.md names an
existing script and only flags that script accepts, every config path named exists, the README's Install and
Tests commands are what CI runs, and the README's layout lists every module.

A script's accepted flags come from its own `--help` usage (run in-process once per script, so it works for
argparse and HfArgumentParser alike, and costs one import of each script)."""

import contextlib
import io
import re
import runpy
import shlex
import sys
from functools import cache

import pytest
from helpers import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LAUNCHERS = ("python", "accelerate", "torchrun", "bash", "sbatch")
# run_pipeline flags whose values are `key=value` settings of another script's flags
SETTING_FLAGS = {"--tuning": "run_tuning.py", "--cot_tuning": "run_tuning.py", "--source_tuning": "run_tuning.py",
                 "--kshot_tuning": "run_tuning.py", "--eval": "run_eval.py"}
CONFIG_PATH = re.compile(r"(?<![\w/.$<-])(?:configs|ds_configs|slurm|bench)/[\w./-]*\w/?")
FLAG = re.compile(r"--[A-Za-z][\w-]*")


# ------------------------------------------------------------------------------------------- reading the docs
def shown_commands(text: str) -> list[tuple[int, str, bool]]:
    """(line number, command, from a code block) for every command in fenced code blocks (continuation lines
    joined, comments dropped) and every inline code span that starts like a command."""
    commands, in_block, pending, start = [], False, "", 0
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()  # a shell comment
        if not pending:
            start = number
        pending = f"{pending} {line.removesuffix(chr(92))}" if pending else line.removesuffix(chr(92))
        if line.endswith("\\"):
            continue
        if pending.strip():
            commands.append((start, pending.strip(), True))
        pending = ""
    outside = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for match in re.finditer(r"`([^`\n]+(?:\n[^`\n]+)?)`", outside):
        span = " ".join(match.group(1).split())
        if strip_env(span.split()) and strip_env(span.split())[0] in LAUNCHERS:
            commands.append((outside.count("\n", 0, match.start()) + 1, span, False))
    return commands


def strip_env(tokens: list[str]) -> list[str]:
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    return tokens


def split_words(command: str) -> list[str]:
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes in an illustrative line
        words = command.split()
    return [w.strip("[]()") for w in words if w not in ("&", "|", "...")]


# ------------------------------------------------------------------------------------------ accepted flags
def usage_flags(usage: str) -> frozenset[str]:
    return frozenset(FLAG.findall(usage))


@cache
def script_flags(target: str) -> frozenset[str]:
    """Flags in the `--help` usage of a repository script (`run_x.py`, `bench/x.py`) or module (`-m pkg.mod`)."""
    out, argv, path = io.StringIO(), sys.argv, sys.path[:]
    sys.argv = [target, "--help"]
    sys.path[:0] = [str(REPO), str((REPO / target).parent)]  # as `python bench/x.py` would see its folder
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            if target.startswith("-m "):
                runpy.run_module(target[3:], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(REPO / target), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    text = out.getvalue()
    usage = text.split("\n\n", 1)[0]  # argparse: the usage block ends at the first blank line
    assert usage.startswith("usage:"), f"{target} --help printed no usage"
    return usage_flags(usage) | {"--help"} | flags_taken_before_the_parser(target)


def flags_taken_before_the_parser(target: str) -> frozenset[str]:
    """Flags a script removes from argv before its parser sees them (`if "--config" in argv:`), in the script or
    the tlrec_utils modules it imports: they are accepted but not in the usage."""
    script = REPO / (target[3:].replace(".", "/") + ".py" if target.startswith("-m ") else target)
    source = script.read_text()
    modules = set(re.findall(r"tlrec_utils\.([\w.]+)", source))
    modules |= {f"{package}.{name}".strip(".") for package, names in
                re.findall(r"from tlrec_utils\.?([\w.]*) import ([\w, ]+)", source) for name in names.split(", ")}
    for name in modules:
        module = REPO / "tlrec_utils" / (name.split(" as ")[0].replace(".", "/") + ".py")
        if module.is_file():
            source += module.read_text()
    return frozenset(re.findall(r"\"(--[\w-]+)\" in argv", source))


@cache
def launcher_flags(launcher: str) -> frozenset[str]:
    if launcher == "accelerate":
        from accelerate.commands.launch import launch_command_parser
        return usage_flags(launch_command_parser().format_usage())
    from torch.distributed.run import get_args_parser
    return usage_flags(get_args_parser().format_usage())


# --------------------------------------------------------------------------------------------- the checks
def check_flags(script: str, words: list[str]) -> list[str]:
    """Problems with the flags in `words` (everything after `script` on the command line)."""
    if not any(word.startswith("--") for word in words):
        return []  # nothing to check: no need to run the script's --help
    problems, accepted, setting_of = [], script_flags(script), None
    for i, word in enumerate(words):
        if word.startswith("--") and " " not in word:
            flag = word.split("=", 1)[0]
            if flag not in accepted:
                problems.append(f"{script} does not accept {flag}")
            if script == "run_pipeline.py" and flag == "--tuning_args":  # the rest of the line is run_tuning's
                return problems + check_flags("run_tuning.py", words[i + 1:])
            setting_of = SETTING_FLAGS.get(flag) if script == "run_pipeline.py" else None
        elif setting_of and re.fullmatch(r"\w+=.*", word):
            key = "--" + word.split("=", 1)[0]
            if key not in script_flags(setting_of):
                problems.append(f"{script}: {word!r} is no setting of {setting_of} ({key})")
    return problems


def check_command(command: str, in_block: bool) -> list[str]:
    """Problems with one shown command; [] when fine or when it runs nothing of this repository."""
    words = strip_env(split_words(command))
    if not words or words[0] not in LAUNCHERS:
        return []
    launcher, rest = words[0], words[1:]
    if launcher == "python":
        if rest[:1] == ["-m"]:
            module = rest[1] if len(rest) > 1 else ""
            if not module.startswith("tlrec_utils"):
                return []  # another package's server (vllm, ...)
            if not (REPO / (module.replace(".", "/") + ".py")).is_file():
                return [f"no module {module}"]
            return check_flags(f"-m {module}", rest[2:])
        if not rest or not rest[0].endswith(".py"):
            return [f"no script in {command!r}"] if in_block and rest[:1] != ["-c"] else []
        if not (REPO / rest[0]).is_file():
            return [f"no script {rest[0]}"]
        return check_flags(rest[0], rest[1:])
    if launcher in ("accelerate", "torchrun"):
        if launcher == "accelerate":
            if rest[:1] != ["launch"]:
                return []
            rest = rest[1:]
        scripts = [i for i, w in enumerate(rest) if w.endswith(".py")]
        if not scripts:
            return [f"no script in {command!r}"] if in_block else []
        i = scripts[0]
        problems = [f"{launcher} does not accept {w.split('=')[0]}" for w in rest[:i]
                    if w.startswith("--") and w.split("=")[0] not in launcher_flags(launcher)]
        if not (REPO / rest[i]).is_file():
            return problems + [f"no script {rest[i]}"]
        return problems + check_flags(rest[i], rest[i + 1:])
    # bash / sbatch: the script file exists; sbatch's training command (after the .sbatch) is checked too
    files = [i for i, w in enumerate(rest) if w.endswith((".sh", ".sbatch"))]
    if not files:
        return [f"no script in {command!r}"] if in_block else []
    i = files[0]
    if not (REPO / rest[i]).is_file():
        return [f"no script {rest[i]}"]
    if launcher == "sbatch" and len(rest) > i + 1 and rest[i + 1].endswith(".py"):
        if not (REPO / rest[i + 1]).is_file():
            return [f"no script {rest[i + 1]}"]
        return check_flags(rest[i + 1], rest[i + 2:])
    return []


def doc_problems(text: str) -> list[str]:
    problems = [f"line {n}: {p}" for n, command, block in shown_commands(text) for p in check_command(command, block)]
    for match in CONFIG_PATH.finditer(text):
        if not (REPO / match.group(0)).exists():
            problems.append(f"line {text.count(chr(10), 0, match.start()) + 1}: no file {match.group(0)}")
    return problems


# ---------------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shown_command_and_config_exists(doc):
    assert doc_problems(doc.read_text()) == []


def test_the_docs_show_commands_for_every_entry_script():
    """The extractor finds the documented commands (a test that finds nothing would pass anything)."""
    shown = " ".join(c for doc in DOC_FILES for _, c, _ in shown_commands(doc.read_text()))
    for script in sorted(REPO.glob("run_*.py")):
        assert f"python {script.name}" in shown, f"no command shown for {script.name}"
    readme = shown_commands((REPO / "README.md").read_text())
    assert len([c for c in readme if c[2]]) >= 10


def test_made_up_flags_scripts_and_configs_are_reported():
    text = "\n".join([
        "```bash",
        "python run_eval.py --test_file t.json --no_such_flag 3 \\",
        "    --output_dir out   # a comment --not_a_flag",
        "python run_nothing.py --x",
        "TLREC_DEBUG=1 accelerate launch --no_such_launch_flag run_tuning.py --bf16 --also_made_up",
        "sbatch slurm/single_node.sbatch run_tuning.py --made_up_too",
        "python run_pipeline.py --tuning learning_rate=1e-4 no_such_setting=1 --tuning_args --bf16 --nope",
        "```",
        "Inline: `python run_prepare_data.py --dataset ml-100k --madeup` and configs/experiments/missing.yaml.",
    ])
    problems = doc_problems(text)
    assert problems == [
        "line 2: run_eval.py does not accept --no_such_flag",
        "line 4: no script run_nothing.py",
        "line 5: accelerate does not accept --no_such_launch_flag",
        "line 5: run_tuning.py does not accept --also_made_up",
        "line 6: run_tuning.py does not accept --made_up_too",
        "line 7: run_pipeline.py: 'no_such_setting=1' is no setting of run_tuning.py (--no_such_setting)",
        "line 7: run_tuning.py does not accept --nope",
        "line 9: run_prepare_data.py does not accept --madeup",
        "line 9: no file configs/experiments/missing.yaml",
    ]
    fine = "```bash\npython run_eval.py --test_file t.json --output_dir o --metrics auc\n```\nconfigs/accelerate/\n"
    assert doc_problems(fine) == []


def test_generated_tables_match_the_registries():
    """The dataset and baseline tables in docs/ are the registries' own Markdown, so they cannot drift."""
    from tlrec_utils.baselines.registry import markdown_table as baselines_table
    from tlrec_utils.data.registry import markdown_table as datasets_table

    generated = re.compile(r"<!-- generated: (.+?) -->\n(.*?)\n<!-- /generated -->", re.S)
    blocks = {source: table for doc in DOC_FILES for source, table in generated.findall(doc.read_text())}
    baselines_source = 'python -c "from tlrec_utils.baselines.registry import markdown_table; print(markdown_table())"'
    assert blocks == {"python -m tlrec_utils.data.registry": datasets_table(), baselines_source: baselines_table()}


def section_commands(name: str) -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
    return [c for _, c, block in shown_commands(section) if block]


def test_ci_runs_the_readme_install_and_test_commands():
    """.ci/run says it runs "README Install" and "README Tests": the same commands, in the same order."""
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    install, tests = section_commands("Install"), section_commands("Tests")
    assert install and tests
    assert "python -m pytest -q" in tests
    ci_commands = [line for line in ci if line in install + tests]
    assert ci_commands == install + tests


def test_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 250
    assert "doi.org/10.1145/3640457.3691710" in readme and "@inproceedings{" in readme
    assert "## Where to change what" in readme
    for doc in DOC_FILES[1:]:
        assert f"docs/{doc.name}" in readme, f"README does not link {doc.name}"


def test_readme_layout_lists_every_module_and_nothing_else():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(run_\w+\.py)`", layout, flags=re.M))
    for package, files in re.findall(r"^\| `(tlrec_utils/[\w/]*)` \|(.*)\|$", layout, flags=re.M):
        listed |= {package + name for name in re.findall(r"`(\w+\.py)`", files)}
    modules = {str(p.relative_to(REPO)) for p in [*REPO.glob("run_*.py"), *(REPO / "tlrec_utils").rglob("*.py")]}
    missing, gone = sorted(modules - listed), sorted(listed - modules)
    assert not missing, (f"README's Layout does not list {missing} (a row per package: "
                         "| `tlrec_utils/pkg/` | `file.py` ... |)")
    assert not gone, f"README's Layout names modules that do not exist: {gone}"
