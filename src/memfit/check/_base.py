"""What every artefact reader shares: the :class:`Translation` it returns and the small
helpers that record each field as understood (with the memfit option it became) or ignored
(with why), and read values with one-line errors that name the artefact's own field."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import MemfitError

__all__ = ["Translation", "Reader", "to_int", "to_float", "to_bool", "long_options",
           "section"]


@dataclass
class Translation:
    """An artefact read into memfit's terms.

    ``mode``: "infer" or "train"; ``model``: the MODEL it names (a catalog name, an HF id, a
    path) or None when it names none; ``options``: memfit option name -> value (the
    keyword arguments of :func:`memfit.infer` / :func:`memfit.train`); ``understood``: one
    ``{field, value, option}`` per field used (``option`` is the memfit flag and value it
    became); ``ignored``: one ``{field, value, why}`` per field not used; ``when_distributed``:
    options that hold only when the world size given beside is more than one GPU.
    """

    kind: str
    mode: str
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    understood: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[dict[str, Any]] = field(default_factory=list)
    # options that apply when the run has more than one data-parallel rank (torchtune's and
    # torchtitan's distributed recipes shard with FSDP2 whatever the config says)
    when_distributed: dict[str, Any] = field(default_factory=dict)
    # options whose value is a property of the model (``--cpu-moe``: every layer's experts),
    # filled once the model is resolved: option -> ModelSpec attribute
    per_model: dict[str, str] = field(default_factory=dict)
    # the world size a launcher gives (torchrun --nproc_per_node x --nnodes ...)
    world: int | None = None


class Reader:
    """Builds a :class:`Translation` field by field."""

    def __init__(self, kind: str, mode: str) -> None:
        self.t = Translation(kind=kind, mode=mode)

    def use(self, name: str, value: Any, option: str, mapped: Any = None) -> None:
        """Field ``name`` (given as ``value``) becomes memfit's ``option`` = ``mapped``
        (``value`` itself when ``mapped`` is None)."""
        out = value if mapped is None else mapped
        self.t.options[option] = out
        self.t.understood.append({"field": name, "value": value,
                                  "option": flag_text(option, out)})

    def model(self, name: str, value: Any) -> None:
        if not isinstance(value, str) or not value.strip():
            raise MemfitError.bad_value(name, value, "a model name or path")
        self.t.model = value.strip()
        self.t.understood.append({"field": name, "value": value, "option": f"MODEL {value}"})

    def note(self, name: str, value: Any, option: str) -> None:
        """A field that is understood without setting an option (it confirms a default)."""
        self.t.understood.append({"field": name, "value": value, "option": option})

    def ignore(self, name: str, value: Any, why: str) -> None:
        self.t.ignored.append({"field": name, "value": value, "why": why})

    def done(self) -> Translation:
        return self.t


def section(name: str, value: Any) -> Mapping[str, Any]:
    """A nested block of a config (``fsdp_config``), which must be a mapping."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise MemfitError.bad_value(name, value if isinstance(value, (int, float, str, bool))
                                    else type(value).__name__, "a mapping of fields")
    return value


def flag_text(option: str, value: Any) -> str:
    """``--batch 4``, ``--qlora`` (a switch), ``--fsdp full``."""
    flag = "--" + option.replace("_", "-")
    if value is True:
        return flag
    return f"{flag} {value}"


def to_int(name: str, value: Any, lo: int = 0) -> int:
    """An integer field (``8``, ``"8"``, ``8.0``), at least ``lo``."""
    if isinstance(value, bool):
        raise MemfitError.bad_value(name, value, f"an integer >= {lo}")
    try:
        number = float(value) if isinstance(value, str) and ("." in value or "e" in value.lower()) \
            else int(value)
    except (TypeError, ValueError, OverflowError):
        raise MemfitError.bad_value(name, value, f"an integer >= {lo}") from None
    if isinstance(number, float):
        if not math.isfinite(number) or not number.is_integer():
            raise MemfitError.bad_value(name, value, f"an integer >= {lo}")
        number = int(number)
    if number < lo or number > 2**40:
        raise MemfitError.bad_value(name, value, f"an integer in [{lo}, {2**40}]")
    return number


def to_float(name: str, value: Any, lo: float, hi: float) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MemfitError.bad_value(name, value, f"a number in [{lo}, {hi}]") from None
    if isinstance(value, bool) or not lo <= number <= hi:
        raise MemfitError.bad_value(name, value, f"a number in [{lo}, {hi}]")
    return number


_TRUE = ("true", "1", "yes", "on", "y")
_FALSE = ("false", "0", "no", "off", "n", "none", "null", "")


def to_bool(name: str, value: Any) -> bool:
    """A boolean field: YAML/JSON booleans, or the strings HF's argument parser reads."""
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise MemfitError.bad_value(name, value, "true or false")


def long_options(argv: list[str], switches: frozenset[str],
                 short: Mapping[str, str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """Split a command line into positional words and ``(option, value)`` pairs.

    ``--name value`` and ``--name=value`` take a value; names in ``switches`` take none
    (value True; ``--no-name`` gives False), and so does an unknown name followed by another
    option or by nothing; ``short`` maps short forms to long names (``-tp`` ->
    ``--tensor-parallel-size``). Names come back without dashes, ``_`` as ``-``.
    """
    words: list[str] = []
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if not word.startswith("-") or word == "-" or _is_number(word):
            words.append(word)
            continue
        name, eq, value = word.partition("=")
        name = short.get(name, name)
        key = name.lstrip("-").replace("_", "-")
        if key in switches or (key.startswith("no-") and key[3:] in switches):
            if eq:
                pairs.append((key, value))
            else:
                pairs.append((key[3:], False) if key.startswith("no-") and key[3:] in switches
                             else (key, True))
            continue
        if not eq:
            nxt = argv[i] if i < len(argv) else None
            if nxt is None or (nxt.startswith("-") and not _is_number(nxt)):
                pairs.append((key, True))  # a switch this reader does not know
                continue
            value = nxt
            i += 1
        pairs.append((key, value))
    return words, pairs


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True
