"""Activation checkpointing policies and activation offloading for the traced training step.

``--checkpointing full``: transformers' own non-reentrant checkpointing of every decoder layer
(``activation_checkpointing_enable``); ``--checkpoint-every N`` passes transformers'
``every_n_layers=N`` (layers 0, N, 2N, ... are checkpointed: ``layer_index % N == 0`` in
``PreTrainedModel._set_gradient_checkpointing``, transformers 5.25).

``--checkpointing op-selective``: torchtitan's op-level selective activation checkpointing
(torchtitan/distributed/activation_checkpoint.py, ``_apply_ac_to_transformer_block`` with
``selective_ac_option="op"``, the policy of torchtitan 0.1/0.2 before the name-based save
list): each decoder layer is checkpointed with ``torch.utils.checkpoint``'s
``create_selective_checkpoint_contexts(policy)``, a fresh per-layer counter for every
checkpointed call; ``policy`` saves the output of every op in ``_op_sac_save_list``
(``aten.mm``, the flash/efficient/cuDNN SDPA kernels, ``reduce_scatter_tensor``, ``aten.max``)
except every second ``aten.mm`` of the layer, and recomputes the rest; an ``mm`` whose weight
has an MoE router's shape is recomputed and not counted
(``per_op_sac_force_recompute_mm_shapes_by_fqns``, default the router gate).

``--activation-offload``: torchtune's ``OffloadActivations`` (torchtune/training/
_activation_offloading.py, v0.6) with ``use_streams=False``: a ``saved_tensors_hooks`` pair
around the model's forward; a saved tensor that is not a parameter and holds at least 1024
bytes (``min_offload_size``) is copied to pinned host memory in the forward and copied back to
the GPU when backward unpacks it (the host copy then dropped); smaller ones and parameters stay
as they are. As torchtune's ``get_act_offloading_ctx_manager`` does, nothing from the output
layer on is offloaded (its ``NoOpManager``; torchtune computes the loss outside the context).
The host copies are not counted (:meth:`MemoryTracker.host`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["enable_checkpointing", "op_sac_context_fn", "offload_activations",
           "OP_SAC_SAVE_LIST"]


def _save_list() -> set[Any]:
    """torchtitan's ``_op_sac_save_list`` (llama3/parallelize_llama.py), as far as this torch
    has the ops; plus the CPU trace's stand-ins for the CUDA attention kernels: CPU flash
    attention (what the fused CUDA kernels' output is here) and ``memfit::fused_attention``
    (the MLA stand-in for the efficient kernel, see compat.py)."""
    aten = torch.ops.aten
    names = ["_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"]
    ops: set[Any] = {aten.mm.default, aten.max.default}
    ops.update(getattr(aten, n).default for n in names if hasattr(aten, n))
    c10d = getattr(torch.ops, "_c10d_functional", None)
    if c10d is not None and hasattr(c10d, "reduce_scatter_tensor"):
        ops.add(c10d.reduce_scatter_tensor.default)
    from . import compat  # noqa: F401  (registers memfit::fused_attention)

    ops.add(torch.ops.memfit.fused_attention.default)
    return ops


OP_SAC_SAVE_LIST: set[Any] = _save_list()


def op_sac_context_fn(router_shapes: set[tuple[int, ...]]) -> Any:
    """torchtitan's ``selective_checkpointing_context_fn``: a fresh ``meta`` per call."""
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

    mm = torch.ops.aten.mm.default

    def context_fn() -> Any:
        meta: dict[str, int] = defaultdict(int)

        def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
            key = ("recompute" if ctx.is_recompute else "forward") + "_mm_count"
            if func == mm:
                if tuple(args[1].shape) in router_shapes:
                    return CheckpointPolicy.PREFER_RECOMPUTE
                meta[key] += 1
            save = func in OP_SAC_SAVE_LIST and not (func == mm and meta[key] % 2 == 0)
            return CheckpointPolicy.MUST_SAVE if save else CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return context_fn


def _router_shapes(model: Any) -> set[tuple[int, ...]]:
    """``(in, out)`` of each MoE router's weight: the ``mm`` rhs torchtitan recomputes."""
    shapes: set[tuple[int, ...]] = set()
    for name, p in model.named_parameters():
        parts = name.split(".")
        if len(parts) >= 3 and parts[-2] == "gate" and p.dim() == 2 and \
                parts[-3] in ("mlp", "block_sparse_moe"):
            shapes.add((int(p.shape[1]), int(p.shape[0])))
    return shapes


def enable_checkpointing(model: Any, mode: str = "full", every: int = 1) -> None:
    """Non-reentrant checkpointing of every ``every``-th decoder layer (transformers' own),
    with torchtitan's op-level policy for ``mode="op-selective"``."""
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if mode == "op-selective":
        kwargs["context_fn"] = op_sac_context_fn(_router_shapes(model))
        kwargs["preserve_rng_state"] = False  # torchtitan's ptd_checkpoint_wrapper call
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs,
                                              every_n_layers=every)
    else:  # transformers < 5.x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


MIN_OFFLOAD_BYTES = 1024  # torchtune OffloadActivations(min_offload_size=1024)


@contextlib.contextmanager
def offload_activations(tracker: Any, model: Any) -> Iterator[None]:
    """torchtune's ``OffloadActivations(use_streams=False)`` over one forward (and loss)."""
    state = {"on": True}

    def pack(t: torch.Tensor) -> Any:
        nbytes = t.element_size() * t.nelement()  # torchtune's get_num_bytes_tensor
        if not state["on"] or isinstance(t, torch.nn.Parameter) or nbytes < MIN_OFFLOAD_BYTES:
            return (t, False)
        with tracker.host():
            host = torch.empty_like(t)
            host.copy_(t)
        return (host, True)

    def unpack(item: Any) -> torch.Tensor:
        t, moved = item
        if not moved:
            return t
        back = torch.empty_like(t)
        back.copy_(t)
        return back

    head = model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda *_: state.update(on=False))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
    finally:
        hook.remove()
