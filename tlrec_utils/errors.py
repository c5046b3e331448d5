"""User-facing errors and the guard every entry script runs under (`cli_entry`).

- `InputError` (bad input the user can fix) and argparse errors: `error: ...` on one line, exit 2.
- Ctrl-C: one line, exit 130 (outputs are written atomically, so nothing partial is left).
- Anything else is a bug: one line naming the crash log (full traceback and command line), exit 1. Crash logs
  go only into the crash folder (`crash_log_dir`), never among a run's outputs.
  `TLREC_DEBUG=1` lets every exception propagate with its traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_CTRL_C = 130
EXIT_INTERRUPTED = 143  # 128 + SIGTERM: stopped after saving a checkpoint (SLURM preemption); rerunning resumes

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


def _one_line(text: str) -> str:
    return mask_secrets(" ".join(str(text).split()))


# credentials in a URL: its user info (user:password@, token@) and the values of query parameters whose names
# say secret (api_key, token, sig, password, ...): masked wherever a URL is printed, logged or stored
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s@]+@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&;#\s]*(?:key|token|secret|passw|pwd|sig|auth(?!or)|credential|session)[^=&;#\s]*=)[^&;#\s]+",
    re.IGNORECASE,
)
MASK = "***"


def mask_secrets(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by ***: `https://user:pass@host/p?api_key=K` ->
    `https://***@host/p?api_key=***`."""
    if "://" not in text and "=" not in text:
        return text
    return _SECRET_QUERY.sub(rf"\g<name>{MASK}", _URL_USERINFO.sub(rf"\g<scheme>{MASK}@", text))


def mask_secrets_in(value):
    """`mask_secrets` applied to every string of a JSON-like value (settings before they are stored)."""
    if isinstance(value, str):
        return mask_secrets(value)
    if isinstance(value, dict):
        return {k: mask_secrets_in(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_secrets_in(v) for v in value)
    return value


class _MaskingFormatter(logging.Formatter):
    def format(self, record):
        return mask_secrets(super().format(record))


def _argparse_error(self, message):  # ArgumentParser.error without the usage block: one line, exit 2
    raise InputError(message)


@contextlib.contextmanager
def one_line_argparse():
    original = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = _argparse_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


class _LineTrackingStream:
    """sys.stderr as progress bars and logs see it, remembering whether its last write ended a line: a bar left
    mid-line (its '\r' redraws, an interrupted download) must not swallow the error line that follows."""

    def __init__(self, stream):
        self._stream = stream
        self.mid_line = False

    def write(self, text):
        if text:
            self.mid_line = not text.endswith("\n")
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _print_last_line(text: str) -> None:
    """Close the progress bars still open, then print `text` on stderr at the start of a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", None) or ()):
        with contextlib.suppress(Exception):
            bar.close()
    stream = sys.stderr
    if getattr(stream, "mid_line", False):
        stream.write("\n")
    print(text, file=stream)


def crash_log_dir() -> Path:
    """~/.cache/tlrec/crashes (under $XDG_CACHE_HOME when set), else the temporary directory."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tlrec" / "crashes"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return cache
    except OSError:
        return Path(tempfile.gettempdir())


def write_crash_log(exc: BaseException) -> Path:
    script = Path(sys.argv[0]).stem or "tlrec"
    path = crash_log_dir() / f"tlrec-crash-{script}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = mask_secrets(f"command: {' '.join([sys.executable, *sys.argv])}\ncwd: {os.getcwd()}\n\n"
                        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    path.write_text(text, encoding="utf-8")
    return path


def cli_entry(main):
    """Decorator for entry-script `main()` functions (see the module docstring): errors become one line on
    stderr and `SystemExit` with the status; success returns main's value (turn it into a status with
    `exit_status`). `main.__wrapped__` is the undecorated function."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        stderr = sys.stderr
        sys.stderr = _LineTrackingStream(stderr)
        try:
            return _guarded(main, *args, **kwargs)
        finally:
            sys.stderr = stderr

    return wrapper


def _guarded(main, *args, **kwargs):
    """`main` under the guard (see the module docstring); every last line starts a line of its own."""
    setup_logging()
    debug = os.environ.get("TLREC_DEBUG", "").lower() not in ("", "0", "false", "no")
    try:
        with one_line_argparse():
            return main(*args, **kwargs)
    except InputError as exc:
        if debug:
            raise
        _print_last_line(f"error: {_one_line(exc)}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        if debug:
            raise
        _print_last_line("interrupted (Ctrl-C): stopped; finished outputs are kept, nothing half-written")
        raise SystemExit(EXIT_CTRL_C) from None
    except Exception as exc:
        if debug:
            raise
        try:
            log = write_crash_log(exc)
            where_log = f"traceback and command line in {log}"
        except OSError as log_exc:
            where_log = f"could not write a crash log ({log_exc}); rerun with TLREC_DEBUG=1 for the traceback"
        _print_last_line(f"internal error (a bug, not your input): {type(exc).__name__}: "
                         f"{_one_line(exc)[:300]}; {where_log}")
        raise SystemExit(EXIT_INTERNAL) from None


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
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(level)
