"""Error classes that mean "the user can fix this" (wrong path, flag, model name or data file).

The entry points (``fsvfm.util.cli.run_cli``) print such an error as one line and exit with code 2;
any other exception is a bug and keeps its traceback. No torch import here: every module may use it.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the message names the file or flag and the fix."""


class UsageError(UserError, ValueError):
    """A wrong, missing or inconsistent command-line value (also a ``ValueError``)."""


class DataError(UserError, ValueError):
    """Input data that cannot be used as given: a bad split-file line, an unlabelled class folder,
    a set with one class, a set whose images are all unreadable (also a ``ValueError``)."""


class OutputError(UserError, OSError):
    """An output cannot be written: the disk is full or the folder is read-only (also an ``OSError``).
    The message names the file or folder and the fix; older outputs are left as they were."""
