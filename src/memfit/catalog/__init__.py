"""The catalog of real models: their upstream ``config.json`` fields, with provenance.

Each entry is a JSON file in ``data/`` holding ``name``, ``family``, ``hf_id``, ``source``
(the URL of the upstream config), ``published_params`` (what the model card states, or null)
and ``config`` (the real config.json fields). Files are read on demand, never at import.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..arch import ModelSpec, from_hf_config
from ..errors import MemfitError

__all__ = ["CatalogEntry", "HF_VARIANTS", "entry_names", "get_entry", "all_entries",
           "find_hf_id", "resolve_model", "resolve_model_full", "parse_count"]


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model and where its config came from."""

    name: str
    family: str
    hf_id: str
    source: str
    published_params: str | None
    published_params_source: str | None
    notes: str
    config: Mapping[str, Any]
    # Where the published count covers something else (a vision tower, an MTP module):
    # {"reason": ..., "max_relative_gap": ...}; None when it should match.
    published_differs: Mapping[str, Any] | None = None

    @cached_property
    def spec(self) -> ModelSpec:
        """The model description (built once per entry: a ModelSpec is immutable, and the
        estimates memoise per-model work on its identity)."""
        return from_hf_config(self.config, name=self.name)


def _data_dir() -> Any:
    return resources.files(__package__).joinpath("data")


@lru_cache(maxsize=1)
def entry_names() -> tuple[str, ...]:
    """Every catalog name, sorted."""
    return tuple(sorted(p.name[:-5] for p in _data_dir().iterdir() if p.name.endswith(".json")))


@lru_cache(maxsize=256)  # keyed by spelling ("GPT2", " gpt2"): bounded for a long-lived server
def get_entry(name: str) -> CatalogEntry:
    """The catalog entry called ``name`` (case-insensitive), with close-match suggestions."""
    key = name.strip().lower()
    names = entry_names()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise MemfitError(
            f"model: {name!r} is not a catalog name, a config.json or a folder holding one; "
            f"{hint}allowed: a catalog name (see `memfit models`) or a path",
            field="model", value=name, allowed="catalog names")
    raw = json.loads(_data_dir().joinpath(f"{key}.json").read_text(encoding="utf-8"))
    return CatalogEntry(name=raw["name"], family=raw["family"], hf_id=raw.get("hf_id", ""),
                        source=raw["source"], published_params=raw.get("published_params"),
                        published_params_source=raw.get("published_params_source"),
                        notes=raw.get("notes", ""), config=raw["config"],
                        published_differs=raw.get("published_differs"))


# Hugging Face ids of released variants whose config.json has the same shapes and dtype as a
# catalog entry's (the instruction-tuned Llama 3.x checkpoints differ from their base only in
# eos_token_id: huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json against
# .../Llama-3.1-8B/blob/main/config.json), so they resolve to that entry.
HF_VARIANTS = {
    "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Meta-Llama-3.1-8B": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Meta-Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "meta-llama/Llama-3.2-1B-Instruct": "llama-3.2-1b",
    "meta-llama/Llama-3.2-3B-Instruct": "llama-3.2-3b",
    "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B-Instruct": "llama-3-70b",
    # NousResearch's ungated copies of the same checkpoints (axolotl's examples use them)
    "NousResearch/Meta-Llama-3-8B": "llama-3-8b",
    "NousResearch/Meta-Llama-3.1-8B": "llama-3.1-8b",
    "NousResearch/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "NousResearch/Llama-2-7b-hf": "llama-2-7b",
}
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


@lru_cache(maxsize=1)
def _hf_index() -> dict[str, str]:
    index = {k.lower(): v for k, v in HF_VARIANTS.items()}
    for name in entry_names():
        hf_id = get_entry(name).hf_id
        if hf_id:
            index[hf_id.lower()] = name
    return index


def find_hf_id(text: str) -> CatalogEntry | None:
    """The catalog entry whose Hugging Face id (or a listed variant's) is ``text``
    (case-insensitive), or None."""
    name = _hf_index().get(text.strip().lower()) if _HF_ID.match(text.strip()) else None
    return get_entry(name) if name else None


def all_entries() -> list[CatalogEntry]:
    """Every catalog entry, sorted by name."""
    return [get_entry(n) for n in entry_names()]


ModelLikeInput = str | Path | Mapping[str, Any] | ModelSpec


def resolve_model(model: ModelLikeInput) -> tuple[ModelSpec, dict[str, Any] | None]:
    """Turn what a user gives as MODEL into a :class:`ModelSpec` and its config dict.

    Accepts a :class:`ModelSpec`, a config dict, a catalog name, a ``config.json`` path, a
    folder holding one (with or without safetensors), a ``.gguf`` file or ``hf:org/name``.
    The config dict is None for a hand-built ``ModelSpec``.
    """
    spec, config, _ = resolve_model_full(model)
    return spec, config


def resolve_model_full(model: ModelLikeInput
                       ) -> tuple[ModelSpec, dict[str, Any] | None, Any]:
    """As :func:`resolve_model`, plus the checkpoint's :class:`memfit.inputs.WeightsInfo`
    (exact dtypes and sizes read from safetensors/GGUF headers), or None without one."""
    if isinstance(model, ModelSpec):
        return model, None, None
    if isinstance(model, Mapping):
        config = dict(model)
        name = str(config.get("_name_or_path", "config"))
        return from_hf_config(config, name=name), config, None
    if not isinstance(model, (str, Path)):
        raise MemfitError.bad_value("model", type(model).__name__,
                                    "a catalog name, a path, a config dict or a ModelSpec")
    if not str(model).strip():  # Path("") is the working directory: never what was meant
        raise MemfitError.bad_value("model", str(model), "a catalog name (see `memfit models`), "
                                    "a config.json or a folder holding one")
    from ..inputs import is_input, load

    text = str(model).strip()
    if _HF_ID.match(text) and not os.path.exists(os.path.expanduser(text)):
        entry = find_hf_id(text)  # a bare Hugging Face id: the catalog's entry first
        if entry is not None:
            return entry.spec, dict(entry.config), None
        if importlib.util.find_spec("huggingface_hub") is not None:
            return load("hf:" + text)  # the 'hub' extra: read it from the Hub
        raise MemfitError.bad_value("model", text, "a catalog model's Hugging Face id (see "
                                    "`memfit models`), a local path, or hf:org/name with the "
                                    "'hub' extra installed")
    if is_input(model):
        return load(model)
    entry = get_entry(str(model))
    return entry.spec, dict(entry.config), None


_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def parse_count(text: str) -> tuple[int, int]:
    """``'8.03B'`` -> (8030000000, 5000000): the value and half a unit of its last digit."""
    text = text.strip().upper()
    mult = _SUFFIX.get(text[-1], 1)
    digits = text[:-1] if text[-1] in _SUFFIX else text
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    value = round(float(digits) * mult)
    return value, (mult // 10**decimals) // 2
