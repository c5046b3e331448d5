"""Python 3.10 to 3.13 (README "Install"): the guard every entry script starts under, run by each of those
interpreters found on PATH, and every source file compiled by them. `.ci/run` also checks statically (vermin)
that no standard-library API newer than 3.10 is used; these runs catch what a static check cannot see."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import REPO

VERSIONS = ("3.10", "3.11", "3.12", "3.13")

# the entry scripts' guard (setup_logging, argparse in one line, a user's mistake -> one line, exit 2)
GUARD = """
import argparse, sys
from tlrec_utils.errors import cli_entry

@cli_entry
def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int)
    parser.parse_args(sys.argv[1:])

main()
"""
COMPILE_ALL = """
import pathlib, sys
for path in sorted(pathlib.Path(".").rglob("*.py")):
    if not any(part.startswith(".") for part in path.parts):
        compile(path.read_text(encoding="utf-8"), str(path), "exec")
print(sys.version_info[:2])
"""


def interpreter(version: str) -> str:
    exe = shutil.which(f"python{version}")
    if exe is None:
        pytest.skip(f"python{version} not on PATH")
    probe = subprocess.run([exe, "-c", "import sys; print(sys.executable)"], capture_output=True, text=True)
    if probe.returncode != 0:  # a pyenv shim of a version that is installed but not selected: run it directly
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True) if shutil.which("pyenv") else None
        found = sorted(Path(root.stdout.strip()).glob(f"versions/{version}.*/bin/python{version}")) if root else []
        if not found:
            pytest.skip(f"python{version} on PATH does not run: {probe.stderr[:100]}")
        return str(found[-1])
    return probe.stdout.strip()  # the interpreter itself, not a shim that depends on the environment


@pytest.mark.parametrize("version", VERSIONS)
def test_guard_and_sources_under_each_python(version):
    exe = interpreter(version)
    proc = subprocess.run([exe, "-c", GUARD, "--seed", "x"], cwd=REPO, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TLREC_LOG_LEVEL": "WARNING"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: argument --seed: invalid int value: 'x'\n"
    proc = subprocess.run([exe, "-c", COMPILE_ALL], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tuple(int(p) for p in version.split(".")))
