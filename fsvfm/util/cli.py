"""The command-line boundary of every entry point: parse, run ``main(args)``, and turn a user mistake
into one line on stderr and exit code 2 (argparse's code for usage errors). Bugs keep their
traceback; ``--debug`` keeps it for user mistakes too.

    if __name__ == "__main__":
        run_cli(main, get_args_parser())
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fsvfm.util.errors import UserError

EXIT_USER_ERROR = 2

# Exceptions that name a file or a value the user gave: a missing file or folder, and every ``UserError``
# (bad flag, model name, split file, statistics file, data set, unusable checkpoint, hub path).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ``'; '``)."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def run_cli(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None, *, return_code: bool = False) -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``parser`` plus ``--debug`` and return
    ``main(args)``. A user mistake (``USER_ERRORS``) prints ``{prog}: error: {message}`` and raises
    ``SystemExit(2)`` (``return_code=True``, for a ``main`` that returns its exit code: returns 2),
    unless ``--debug`` is given (then it propagates with its traceback)."""
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    args = parser.parse_args(argv)
    try:
        return main(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        if return_code:
            return EXIT_USER_ERROR
        raise SystemExit(EXIT_USER_ERROR) from None
