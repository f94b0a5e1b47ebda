"""The command-line boundary of every entry point: parse, check the device flags, run ``main(args)``, and
turn a user mistake into one line on stderr and exit code 2 (argparse's code for usage errors). Bugs keep
their traceback; ``--debug`` keeps it for user mistakes too.

    if __name__ == "__main__":
        run_cli(main, get_args_parser())

Faults the user fixes outside the program end the same way: a full disk or a read-only output folder
(``OutputError``, exit 2). Ctrl-C (SIGINT) and SIGTERM (what a scheduler or ``kill`` sends) unwind the
program like an exception, so atomic writes remove their temporary files, then print one line and exit
with 130 / 143 (128 + the signal number), without a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from fsvfm.util.errors import UserError

EXIT_USER_ERROR = 2

# Exceptions that name a file or a value the user gave: a missing file or folder, and every ``UserError``
# (bad flag, model name, split file, statistics file, data set, unusable checkpoint, hub path, full disk).
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, PermissionError)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like ``KeyboardInterrupt`` is for SIGINT (not an ``Exception``,
    so no ``except Exception`` swallows it)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (a multi-line message is joined with ``'; '``)."""
    text = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in text:
        text = f"{text}: {error.filename}"
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


def check_device_flags(args: argparse.Namespace) -> None:
    """The start-up check of ``--device``, ``--amp`` and ``--dist_timeout`` (those a parser has), before any
    model or data is loaded: a ``UsageError`` naming the flag (e.g. ``--device cuda`` without a GPU)."""
    device, amp = getattr(args, "device", None), getattr(args, "amp", None)
    if device in (None, "", "auto") and amp in (None, "", "auto", "none") and getattr(args, "dist_timeout", None) is None:
        return
    from fsvfm.util.amp import resolve_amp  # torch: only for programs that have these flags
    from fsvfm.util.dist import dist_timeout, resolve_device
    resolved = resolve_device(device if isinstance(device, str) else None)
    if amp not in (None, "", "auto"):
        resolve_amp(amp, resolved)
    if hasattr(args, "dist_timeout"):
        dist_timeout(args)


def _terminate(signum: int, _frame: Any) -> None:
    if os.getpid() != _terminate.main_pid:  # type: ignore[attr-defined]
        # a forked worker (preprocessing pool, data loader): die as it would without this handler
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated()


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` in this (main) thread while the body runs; the previous handler is
    restored afterwards. Off the main thread (signals cannot be set there) nothing changes."""
    try:
        _terminate.main_pid = os.getpid()  # type: ignore[attr-defined]
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_cli(main: Callable[[argparse.Namespace], Any],
              get_args_parser: Callable[[], argparse.ArgumentParser]) -> Callable[..., Any]:
    """The ``cli(argv=None)`` of a ``main_*.py``: ``run_cli(main, get_args_parser(), argv)``, so every entry
    point has the same command-line boundary (one ``error:`` line and exit 2 for a user mistake)."""
    def cli(argv: Sequence[str] | None = None) -> Any:
        return run_cli(main, get_args_parser(), argv)
    cli.__doc__ = f"``{main.__module__}.main`` behind the command-line boundary (``util.cli.run_cli``)."
    return cli


def run_cli(main: Callable[[argparse.Namespace], Any], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None, *, return_code: bool = False) -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) with ``parser`` plus ``--debug``, check the device flags
    and return ``main(args)``. A user mistake (``USER_ERRORS``, a full disk or a read-only folder)
    prints ``{prog}: error: {message}`` and raises ``SystemExit(2)`` (``return_code=True``, for a ``main``
    that returns its exit code: returns 2), unless ``--debug`` is given (then it propagates with its
    traceback). SIGINT / SIGTERM print ``{prog}: stopped by ...`` and exit with 130 / 143."""
    from fsvfm.util.fileio import output_error
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    args = parser.parse_args(argv)
    code = None
    try:
        with _sigterm_raises():
            check_device_flags(args)
            return main(args)
    except (KeyboardInterrupt, Terminated) as e:
        if args.debug:
            raise
        name, code = ("SIGINT", 128 + signal.SIGINT) if isinstance(e, KeyboardInterrupt) else \
            ("SIGTERM", 128 + signal.SIGTERM)
        print(f"{parser.prog}: stopped by {name}; temporary files were removed, finished outputs are kept",
              file=sys.stderr, flush=True)
    except (*USER_ERRORS, OSError) as e:
        fault = e if isinstance(e, USER_ERRORS) else output_error(e)
        if fault is None or args.debug:
            raise
        print(f"{parser.prog}: error: {one_line(fault)}", file=sys.stderr, flush=True)
        code = EXIT_USER_ERROR
    if return_code:
        return code
    raise SystemExit(code) from None
