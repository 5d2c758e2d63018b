"""LoRA (and QLoRA) through peft, on fake tensors.

``--lora-rank R``: peft's ``LoraConfig(r=R, target_modules=q, k, v, o, gate, up, down)`` on
the transformers model built in the recipe's weight dtype; peft's defaults otherwise
(``lora_alpha=8``, no dropout, no bias, ``autocast_adapter_dtype=True``: the adapters are
fp32 whatever the base's dtype). The base is frozen; the optimizer steps the adapters only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..errors import MemfitError

__all__ = ["LORA_TARGETS", "apply_lora", "fake_swappable"]

#: The projections LoRA adapts (Llama/Mistral/Qwen names; transformers' other families use
#: the same names for these, where they have them).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _drop_fake_weakrefs(*tensors: torch.Tensor) -> None:
    """Forget FakeTensorMode's memo entries for ``tensors``.

    ``Module.to`` swaps each fake parameter with its converted copy
    (``torch.utils.swap_tensors``), which refuses a tensor with a weak reference; the fake
    mode's converter memo holds one for the fake tensors it made. The memo only caches
    conversions to fake tensors: dropping entries changes nothing else.
    """
    from torch._guards import active_fake_mode

    mode = active_fake_mode()
    if mode is None:
        return
    ids = {id(t) for t in tensors}
    memo = mode.fake_tensor_converter.meta_converter.tensor_memo
    for key, value in list(memo.items()):
        if id(value) in ids:
            del memo[key]


@contextlib.contextmanager
def fake_swappable() -> Iterator[None]:
    """Let peft move its new adapter modules with ``.to()`` on fake tensors."""
    import torch.utils

    original = torch.utils.swap_tensors

    def swap_tensors(t1: torch.Tensor, t2: torch.Tensor) -> None:
        _drop_fake_weakrefs(t1, t2)
        return original(t1, t2)

    torch.utils.swap_tensors = swap_tensors
    try:
        yield
    finally:
        torch.utils.swap_tensors = original


def require_peft() -> Any:
    try:
        import peft
    except ImportError as exc:
        raise MemfitError.bad_value("lora-rank", "peft missing",
                                    "peft installed to trace LoRA (pip install peft)") from exc
    return peft


def apply_lora(model: Any, rank: int) -> Any:
    """``get_peft_model`` with LoRA of rank ``rank`` on the projections that exist."""
    peft = require_peft()
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if isinstance(m, torch.nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in names]
    if not targets:
        raise MemfitError.bad_value("lora-rank", rank,
                                    "a model with q/k/v/o/gate/up/down_proj linear layers "
                                    f"(found none in {type(model).__name__})")
    config = peft.LoraConfig(r=rank, target_modules=targets, task_type="CAUSAL_LM")
    with fake_swappable():
        return peft.get_peft_model(model, config)
