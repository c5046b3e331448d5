"""User-facing errors and the guard every entry script runs under (`cli_entry`).

- `InputError` (bad input the user can fix) and argparse errors: `error: ...` on one line, exit 2.
- Ctrl-C: one line, exit 130 (outputs are written atomically, so nothing partial is left).
- Anything else is a bug: one line naming the crash log (full traceback and command line), exit 1.
  `TLREC_DEBUG=1` lets every exception propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_CTRL_C = 130
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped after saving a checkpoint (SLURM preemption); rerunning resumes

_crash_dir: Path | None = None  # an output directory that already exists, once a script knows it


class InputError(Exception):
    """Bad input the user can fix: printed as one line (no traceback), exit code 2.

    The message should name the file, the line or record, and the problem.
    """


def where(path, record=None, line=None) -> str:
    """Format a location prefix: 'FILE', 'FILE line N' or 'FILE record N'."""
    loc = str(path)
    if line is not None:
        loc += f" line {line}"
    if record is not None:
        loc += f" record {record}"
    return loc


def note_output_dir(path) -> None:
    """Crash logs go into this directory when it exists (else the user cache directory)."""
    global _crash_dir
    _crash_dir = Path(path)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _argparse_error(self, message):  # ArgumentParser.error without the usage block: one line, exit 2
    raise InputError(message)


@contextlib.contextmanager
def _one_line_argparse():
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


def crash_log_dir() -> Path:
    if _crash_dir is not None and _crash_dir.is_dir() and os.access(_crash_dir, os.W_OK):
        return _crash_dir
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlrec" / "crashes"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return cache
    except OSError:
        return Path(tempfile.gettempdir())


def write_crash_log(exc: BaseException) -> Path:
    script = Path(sys.argv[0]).stem or "tlrec"
    path = crash_log_dir() / f"tlrec-crash-{script}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = (f"command: {' '.join([sys.executable, *sys.argv])}\ncwd: {os.getcwd()}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    path.write_text(text, encoding="utf-8")
    return path


def cli_entry(main):
    """Decorator for entry-script `main()` functions (see the module docstring): errors become one line on
    stderr and `SystemExit` with the status; success returns main's value (turn it into a status with
    `exit_status`). `main.__wrapped__` is the undecorated function."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        setup_logging()
        debug = os.environ.get("TLREC_DEBUG", "").lower() not in ("", "0", "false", "no")
        try:
            with _one_line_argparse():
                return main(*args, **kwargs)
        except InputError as exc:
            if debug:
                raise
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted (Ctrl-C): stopped; finished outputs are kept, nothing half-written", file=sys.stderr)
            raise SystemExit(EXIT_CTRL_C) from None
        except Exception as exc:
            if debug:
                raise
            try:
                log = write_crash_log(exc)
                where_log = f"traceback and command line in {log}"
            except OSError as log_exc:
                where_log = f"could not write a crash log ({log_exc}); rerun with TLREC_DEBUG=1 for the traceback"
            print(f"internal error (a bug, not your input): {type(exc).__name__}: {_one_line(exc)[:300]}; "
                  f"{where_log}", file=sys.stderr)
            raise SystemExit(EXIT_INTERNAL) from None

    return wrapper


def exit_status(value) -> int:
    """A script's exit status from what its main returned: an int as is, anything else (a path, a summary) 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def setup_logging(level=None) -> None:
    """Plain logging on stderr; `TLREC_LOG_LEVEL` (e.g. WARNING) quiets it."""
    if level is None:
        level = os.environ.get("TLREC_LOG_LEVEL", "INFO").upper()
    if not isinstance(level, int) and not isinstance(logging.getLevelName(level), int):  # a name it knows: its number
        level = logging.INFO
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
            level=level,
            stream=sys.stderr,
        )
