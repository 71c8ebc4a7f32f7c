"""Where the CLI gets the API key, and the guard that keeps it out of every output.

The key is read from ``--api-key-file PATH`` or the ``KEYAPI_API_KEY``
environment variable, never from a command-line value: arguments land in
shell history and in ``ps`` output for every user of the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..engine.config import API_KEY_ENV
from .exit import CLIError

__all__ = ["API_KEY_ENV", "Redactor", "resolve_api_key"]

_MASK = "**********"


def resolve_api_key(key_file: str | None, environ: Mapping[str, str] = os.environ) -> str:
    """Return the key from ``key_file`` if given, else from ``KEYAPI_API_KEY``.

    Raises :class:`CLIError` (exit 2) naming both sources when there is none.
    """
    if key_file is not None:
        try:
            with open(key_file, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise CLIError(
                f"cannot read --api-key-file {key_file!r}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise CLIError(f"--api-key-file {key_file!r} is not UTF-8 text") from None
        if not key:
            raise CLIError(f"--api-key-file {key_file!r} is empty")
        return key
    key = environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise CLIError(
            f"no API key: set the {API_KEY_ENV} environment variable "
            "(or pass --api-key-file PATH); keys are never taken as arguments"
        )
    return key


class Redactor:
    """Masks the key in text bound for the terminal or the ledger.

    The library never puts the key in a message; this is the second line of
    defence against a server or proxy that echoes the Authorization header
    back in an error body.
    """

    __slots__ = ("_key",)

    def __init__(self, key: str | None) -> None:
        self._key = key or None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every occurrence of the key masked."""
        key = self._key
        if key is None or key not in text:
            return text
        return text.replace(key, _MASK)

    def __repr__(self) -> str:
        return "Redactor(**********)"
