"""Reduced-depth plans: which decoder blocks to trace, and how to extrapolate to full depth.

A transformer's memory at any moment is a sum over its decoder blocks: weights, gradients,
optimizer state, KV cache and saved activations all grow by the same amount for each block
of one kind, and the transients of the block that runs are the same for every block of that
kind. So each phase's peak is linear in the number of blocks of each kind once the first
blocks' own effects are counted (the first block differs: it reads the embeddings' output).
The plan therefore traces:

- ``base``: the last two blocks of each distinct kind, in their model order;
- ``base + t``: the base plus the third-last block of kind ``t``, for each kind with three
  or more;

and extrapolates each phase peak ``P`` as
``P(full) = P(base) + sum_t (n_t - 2) * (P(base + t) - P(base))``, ``n_t`` the blocks of kind
``t``. A block's kind is its class, its parameters' names and shapes and its per-layer
config entries (``layer_types``...). A reduced config keeps the chosen blocks' per-layer
entries; it is accepted only if transformers builds exactly the chosen blocks from it
(checked on the meta device), else the plan traces the full depth (exact, slower).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Plan", "make_plan", "reduced_config"]

#: Config lists of block indices: Qwen-MoE's dense blocks, Llama 4's MoE blocks, Mllama's
#: cross-attention blocks.
_INDEX_LISTS = ("mlp_only_layers", "moe_layers", "cross_attention_layers")
#: A model with at most this many blocks beyond the reduced traces is traced whole.
_MIN_SAVING = 2


@dataclass(frozen=True)
class Plan:
    """What to trace: ``runs`` maps a run name to its block indices (None: the full model).

    ``counts`` are the blocks of each kind in the full model (kinds numbered by first
    appearance); ``kinds`` the kind of every block.
    """

    num_layers: int
    kinds: tuple[int, ...]
    runs: Mapping[str, tuple[int, ...] | None]

    @property
    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for k in self.kinds:
            out[k] = out.get(k, 0) + 1
        return out

    @property
    def reduced(self) -> bool:
        """Whether the plan traces reduced depths (else the full model, once)."""
        return "full" not in self.runs

    def to_dict(self) -> dict[str, Any]:
        return {"num_layers": self.num_layers, "kinds": list(self.kinds),
                "runs": {k: None if v is None else list(v) for k, v in self.runs.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        return cls(num_layers=d["num_layers"], kinds=tuple(d["kinds"]),
                   runs={k: None if v is None else tuple(v) for k, v in d["runs"].items()})


def _text_location(config: Mapping[str, Any],
                   text_cfg: Any) -> tuple[str | None, Mapping[str, Any]]:
    """Where the decoder's fields live: the top level, or ``text_config`` (composite models;
    started from the text config's own type when the config.json leaves it to defaults)."""
    inner = config.get("text_config")
    if isinstance(inner, Mapping):
        return "text_config", inner
    if config.get("model_type") != text_cfg.model_type:  # every field, as config.json has
        return "text_config", text_cfg.to_dict()
    return None, config


def _depth_key(text_cfg: Any) -> str:
    """The config.json key of the decoder's depth (``num_hidden_layers``, GPT-2's ``n_layer``)."""
    return type(text_cfg).attribute_map.get("num_hidden_layers", "num_hidden_layers")


def _per_layer_lists(text_cfg: Any, n: int) -> dict[str, list[Any]]:
    """Config attributes that hold one entry per block (``layer_types``, ``block_types``...)."""
    return {k: v for k, v in vars(text_cfg).items()
            if isinstance(v, list) and len(v) == n and not k.startswith("_")
            and k not in _INDEX_LISTS}


def reduced_config(config: Mapping[str, Any], text_cfg: Any,
                   indices: tuple[int, ...]) -> dict[str, Any]:
    """``config`` with only the blocks ``indices`` (per-layer entries and index lists kept)."""
    n = text_cfg.num_hidden_layers
    where, text = _text_location(config, text_cfg)
    new_text = copy.deepcopy(dict(text))
    new_text[_depth_key(text_cfg)] = len(indices)
    for key, values in _per_layer_lists(text_cfg, n).items():  # as _signatures reads them
        new_text[key] = [values[i] for i in indices]
    for key in _INDEX_LISTS:  # blocks named by index: renumbered among the kept ones
        named = getattr(text_cfg, key, None)
        if isinstance(named, list) and all(isinstance(i, int) for i in named):
            new_text[key] = [j for j, i in enumerate(indices) if i in set(named)]
    first = getattr(text_cfg, "first_k_dense_replace", None)  # DeepSeek: a dense prefix
    if isinstance(first, int):
        new_text["first_k_dense_replace"] = sum(i < first for i in indices)
    if where is None:
        return new_text
    out = copy.deepcopy(dict(config))
    out[where] = new_text
    return out


def _blocks(model: Any, n: int) -> list[Any]:
    """The decoder's blocks: the ``ModuleList`` of ``n`` modules holding the most parameters."""
    import torch

    best: list[Any] = []
    best_size = -1
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = list(module), size
    return best


def _signatures(model: Any, text_cfg: Any,
                keys: list[str] | None = None) -> tuple[list[tuple[Any, ...]] | None, list[str]]:
    """Each block's kind (class, parameter names and shapes, per-layer config entries) and
    the per-layer config keys used (those of the full model: ``keys``)."""
    n = text_cfg.num_hidden_layers
    blocks = _blocks(model, n)
    if len(blocks) != n:
        return None, []
    lists = _per_layer_lists(text_cfg, n)
    keys = sorted(lists) if keys is None else keys
    if any(not isinstance(getattr(text_cfg, k, None), list)
           or len(getattr(text_cfg, k)) != n for k in keys):
        return None, keys
    return [(type(b).__name__,
             tuple((name, tuple(p.shape)) for name, p in b.named_parameters()),
             tuple((k, repr(getattr(text_cfg, k)[i])) for k in keys))
            for i, b in enumerate(blocks)], keys


def _choose(kinds: list[int]) -> dict[str, tuple[int, ...]]:
    """The runs: the last two blocks of each kind; plus each kind's third-last block.

    The last ones, so the reduced model ends as the full one does: a peak inside the last
    block of a kind (prefill's largest transient sits in the last sliding-window layer of
    Cohere 2, with every earlier layer's cache live) then has blocks of every kind before
    it, in the reduced model as in the full one.
    """
    seen: dict[int, list[int]] = {}
    for i, k in enumerate(kinds):
        seen.setdefault(k, []).append(i)
    base = sorted(i for idx in seen.values() for i in idx[-2:])
    runs = {"base": tuple(base)}
    for k, idx in seen.items():
        if len(idx) >= 3:
            runs[f"kind{k}"] = tuple(sorted(base + [idx[-3]]))
    return runs


def make_plan(config: Mapping[str, Any]) -> Plan:
    """The plan for ``config``: reduced runs when they build the right blocks, else full."""
    from .build import meta_model

    model, hf_cfg, _ = meta_model(config)
    text_cfg = hf_cfg.get_text_config()
    n = getattr(text_cfg, "num_hidden_layers", None)
    if not isinstance(n, int):
        return Plan(num_layers=0, kinds=(), runs={"full": None})
    sigs, keys = _signatures(model, text_cfg)
    del model
    if sigs is None:
        return Plan(num_layers=n, kinds=(), runs={"full": None})
    index: dict[Any, int] = {}
    kinds = [index.setdefault(s, len(index)) for s in sigs]
    runs = _choose(kinds)
    if sum(len(v) for v in runs.values()) + _MIN_SAVING >= n:
        return Plan(num_layers=n, kinds=tuple(kinds), runs={"full": None})
    for indices in runs.values():
        small, small_cfg, _ = meta_model(reduced_config(config, text_cfg, indices))
        got, _ = _signatures(small, small_cfg.get_text_config(), keys)
        if got != [sigs[i] for i in indices]:
            return Plan(num_layers=n, kinds=tuple(kinds), runs={"full": None})
    return Plan(num_layers=n, kinds=tuple(kinds), runs=runs)
