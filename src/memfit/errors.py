"""The one exception type memfit raises for bad input.

Every user error (a missing file, malformed JSON, an unknown model type, a negative batch,
an impossible parallel layout) raises :class:`MemfitError`, a ``ValueError`` subclass whose
message names the field, the value given and what is allowed. The CLI turns it into one line
on stderr and exit status 2; the web API into HTTP 422.
"""

from __future__ import annotations

__all__ = ["MemfitError"]


class MemfitError(ValueError):
    """Bad input: ``field``, ``value`` and ``allowed`` say what was wrong and what would do."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None,
                 allowed: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(message)

    @classmethod
    def bad_value(cls, field: str, value: object, allowed: str) -> "MemfitError":
        """Build the standard message: ``field: got VALUE; allowed: ALLOWED``."""
        return cls(f"{field}: got {value!r}; allowed: {allowed}", field=field, value=value,
                   allowed=allowed)
