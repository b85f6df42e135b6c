"""The error base class and the one ``main`` wrapper of the six commands (torch-free).

Every error a user can cause (bad file, bad flag value, missing model, corrupt shard...) is a
:class:`ToonError` subclass whose message is one actionable line. :func:`run_command` parses the
arguments, runs the chosen subcommand and turns those errors, ``ValueError`` and ``OSError`` into
``PROG: error: message`` and exit status 1, with the traceback only behind ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence


class ToonError(Exception):
    """Base of every error reported to the user as one line (what failed, which file, what to
    do). Each package derives its own (``CheckpointError``, ``AlignError``, ``PairsError``...)."""


# Errors reported as one line rather than a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ToonError, ValueError, OSError)


def error_line(error: BaseException) -> str:
    """The first non-empty line of an error's message (its type name when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    usage_without_command: bool = False,
) -> int:
    """Parse ``argv``, run ``args.func(args)`` and return its exit status.

    ``usage_without_command``: with no arguments at all, print the usage and return 2 (commands
    made only of subcommands). A :data:`USER_ERRORS` error prints ``prog: error: ...`` (and the
    traceback when ``args.debug`` is set) and returns 1.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if usage_without_command and not argv:
        parser.print_usage(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:  # Ctrl-C outside a loop that handles it: one line, no traceback
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"\n{prog}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"{prog}: error: {error_line(e)}", file=sys.stderr)
        return 1


def add_deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: object
) -> None:
    """Accept the old flag ``old`` for the option now called ``new``: it stores into ``dest``
    like the new one, with a one-line deprecation notice on stderr, and is hidden from
    ``--help``. ``kwargs`` (``type``, ``action``...) are those of the new flag."""

    class _Deprecated(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):  # noqa: ANN001
            print(f"{parser.prog}: {old} is deprecated; use {new}", file=sys.stderr)
            setattr(namespace, self.dest, values)

    parser.add_argument(old, dest=dest, action=_Deprecated, help=argparse.SUPPRESS, **kwargs)
