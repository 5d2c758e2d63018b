"""Units appear only at the edge: bytes are integers inside memfit.

GiB (2**30) is the default display unit; GB (10**9) is what vendors print on the box and
what the seed uses; MiB is what ``nvidia-smi`` reports.
"""

from __future__ import annotations

from .errors import MemfitError

__all__ = ["UNITS", "DEFAULT_UNIT", "to_unit", "format_bytes", "check_unit"]

UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
}
DEFAULT_UNIT = "GiB"


def check_unit(unit: str) -> str:
    """Return ``unit`` in its canonical spelling, or raise naming the allowed ones."""
    for name in UNITS:
        if name.lower() == unit.lower():
            return name
    raise MemfitError.bad_value("units", unit, ", ".join(UNITS))


def to_unit(n_bytes: int, unit: str = DEFAULT_UNIT) -> float:
    """``n_bytes`` expressed in ``unit`` (a float, for display only)."""
    return n_bytes / UNITS[check_unit(unit)]


def format_bytes(n_bytes: int, unit: str = DEFAULT_UNIT, digits: int = 2) -> str:
    """``n_bytes`` as text in ``unit``, e.g. ``'13.48 GiB'``."""
    unit = check_unit(unit)
    return f"{n_bytes / UNITS[unit]:.{digits}f} {unit}"
