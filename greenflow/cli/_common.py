"""What the commands share: the one-line messages, errors with an exit status, TLS file errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

#: Exit statuses: 1 when something failed, 2 for a usage error (as argparse).
FAILED = 1
USAGE = 2


class CommandError(Exception):
    """Ends the command with one ``greenflow: MESSAGE`` line and an exit status."""

    def __init__(self, message: str, status: int = FAILED) -> None:
        super().__init__(message)
        self.status = status


def say(message: str) -> None:
    """Print one ``greenflow: ...`` line on stderr."""
    print(f"greenflow: {message}", file=sys.stderr, flush=True)


def load_tls_context(build: Callable[[], T], files: dict[str, Path | None]) -> T:
    """Run ``build`` (a ``greenflow.tls`` context helper); a bad file becomes a CommandError.

    ``files`` maps each option (``--certfile``) to the file it gave, or
    ``None``. Each file is opened first, so that a missing or unreadable one
    is named with its option. ``greenflow.tls`` names the file in its own
    errors; a raw ``OpenSSL.SSL.Error`` (which names none) is described by
    the files given.
    """
    from OpenSSL import SSL  # noqa: PLC0415 - only TLS commands load pyOpenSSL

    from ..tls import TLSError  # noqa: PLC0415

    given = {option: path for option, path in files.items() if path is not None}
    for option, path in given.items():
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CommandError(f"{option} {path}: {exc.strerror or exc}") from exc
    try:
        return build()
    except SSL.Error as exc:
        named = ", ".join(f"{option} {path}" for option, path in given.items()) or "the TLS settings"
        raise CommandError(f"cannot use {named}: {openssl_reason(exc)}") from exc
    except (TLSError, ValueError, OSError) as exc:
        raise CommandError(describe_error(exc)) from exc


def openssl_reason(exc: Exception) -> str:
    """The reasons an ``OpenSSL.SSL.Error`` gives, without its library and function names."""
    entries = exc.args[0] if exc.args and isinstance(exc.args[0], list) else []
    reasons: list[str] = []
    for entry in entries:
        reason = str(entry[-1]) if isinstance(entry, tuple) and entry else str(entry)
        if reason and reason not in reasons:
            reasons.append(reason)
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """An error as one line: an OSError without its ``[Errno N]``, with its file name."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


def positive_int(text: str) -> int:
    """An argparse type: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 seconds or more, not {text}")
    return value


def octal(text: str) -> int:
    """An argparse type: a file mode in octal (``660``)."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal file mode (e.g. 660)") from None
