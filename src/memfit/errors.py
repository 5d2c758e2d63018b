"""The one exception type memfit raises for bad input.

Every user error (a missing file, malformed JSON, an unknown model type, a negative batch,
an impossible parallel layout) raises :class:`MemfitError`, a ``ValueError`` subclass whose
message names the field, the value given and what is allowed. The CLI turns it into one line
on stderr and exit status 2; the web API into HTTP 422.

The message is one line of plain text whatever the input held: a control character (a
newline, a carriage return, an ANSI escape such as ``ESC[31m``), a Unicode line separator
or a bidirectional override in a file name or a value is written as its Python escape
(``\\n``, ``\\x1b``, ``\\u202e``), so it can neither split the one-line error nor colour
or rewrite the user's terminal.
"""

from __future__ import annotations

import re
import reprlib

__all__ = ["MemfitError", "one_line"]

# C0 and C1 controls and DEL (Unicode category Cc), the line and paragraph separators
# (Zl, Zp) and the bidirectional embedding/override/isolate marks (the "Trojan source"
# characters, CVE-2021-42574).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


# A value is shown short: a 5,000-digit integer (whose repr raises past Python's int-str
# limit), a list nested thousands deep or a megabyte string must not make the error itself
# fail or flood the terminal.
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 3, 80, 80, 40
_SHOW.maxlist = _SHOW.maxdict = _SHOW.maxtuple = _SHOW.maxset = 6


def show(value: object) -> str:
    """A bounded ``repr`` of ``value`` for an error message."""
    try:
        return _SHOW.repr(value)
    except (ValueError, RecursionError):  # int-str limit, self-referencing structures
        return f"<{type(value).__name__} too large to show>"


def _escape(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def one_line(text: str) -> str:
    """``text`` with every control, line-separator and bidi character escaped as Python
    writes it in a ``repr`` (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``); other text as is."""
    return _UNSAFE.sub(_escape, text)


class MemfitError(ValueError):
    """Bad input: ``field``, ``value`` and ``allowed`` say what was wrong and what would do.

    The message and ``allowed`` are made one safe line (:func:`one_line`); ``value`` keeps
    the object given, for programs (the web API returns it as JSON)."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None,
                 allowed: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = one_line(allowed) if isinstance(allowed, str) else allowed
        super().__init__(one_line(str(message)))

    @classmethod
    def bad_value(cls, field: str, value: object, allowed: str) -> MemfitError:
        """Build the standard message: ``field: got VALUE; allowed: ALLOWED``."""
        return cls(f"{field}: got {show(value)}; allowed: {allowed}", field=field, value=value,
                   allowed=allowed)
