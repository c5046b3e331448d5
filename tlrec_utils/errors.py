"""User-facing errors and the CLI wrapper that turns them into one line and exit code 2."""

from __future__ import annotations

import functools
import logging
import sys

EXIT_BAD_INPUT = 2


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


def cli_entry(main):
    """Decorator for entry-script `main()` functions.

    InputError -> 'error: ...' on stderr and exit 2. Anything else propagates with its traceback
    (a bug, not bad input). Also sets up plain logging so library messages are visible.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        setup_logging()
        try:
            return main(*args, **kwargs)
        except InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper


def setup_logging(level=logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
            level=level,
            stream=sys.stderr,
        )
