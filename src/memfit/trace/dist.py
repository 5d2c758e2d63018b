"""FSDP2 on one rank of N, without N processes: a fake process group and ``fully_shard``.

``torch.distributed`` is initialised with PyTorch's fake backend (``FakeStore``, backend
``"fake"``): rank 0 of ``world_size`` N, every collective a no-op that allocates its outputs
as a real one does. The device mesh is built outside ``FakeTensorMode`` (it reads the store),
``fully_shard`` and the training step run inside it. What one rank allocates does not depend
on what the other ranks hold, so this is rank 0's memory of an N-rank job.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["fake_process_group", "shard_model", "shard_model_v1", "local", "local_tensors",
           "track_resize"]


@contextlib.contextmanager
def fake_process_group(world_size: int, device_type: str = "cpu") -> Iterator[Any]:
    """A fake-backend process group of ``world_size`` ranks (this one rank 0) and its 1-D mesh.

    Destroyed on exit (also after an error), so traces can follow each other.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():  # a previous trace interrupted before its clean-up
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield init_device_mesh(device_type, (world_size,))
    finally:
        dist.destroy_process_group()


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers transformers' ``_no_split_modules`` names (what FSDP wraps)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:  # the usual attribute path
        inner = getattr(model, "model", model)
        layers = list(getattr(inner, "layers", None) or getattr(inner, "h", None) or ())
    return layers


def shard_model(model: Any, mesh: Any, mode: str,
                mp_dtype: torch.dtype | None) -> None:
    """``fully_shard`` every decoder layer, then the root (torchtitan's order).

    ``mode`` is ``full`` (``reshard_after_forward=True``) or ``grad-op`` (False). With
    ``mp_dtype`` (the mixed recipes), ``MixedPrecisionPolicy(param_dtype=mp_dtype,
    reduce_dtype=float32)`` over the fp32 sharded parameters.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reshard = mode == "full"
    kwargs: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard}
    if mp_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=mp_dtype,
                                                   reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def shard_model_v1(model: Any, mode: str, mp_dtype: torch.dtype | None) -> Any:
    """FSDP1: ``FullyShardedDataParallel`` with every decoder layer its own unit, the root the
    rest, as accelerate / HF Trainer configure it (``auto_wrap_policy`` on the
    ``_no_split_modules`` layer class, ``use_orig_params=True``, FSDP1's defaults otherwise:
    ``limit_all_gathers=True``, ``BackwardPrefetch.BACKWARD_PRE``, no forward prefetch).

    Flat parameters: each unit's parameters are flattened into one ``FlatParameter`` and
    sharded; the unsharded flat parameter is all-gathered into ``_full_param_padded`` and
    freed with ``storage.resize_(0)``. ``mode``: ``full`` = ``FULL_SHARD``, ``grad-op`` =
    ``SHARD_GRAD_OP``. With ``mp_dtype`` (the mixed recipes) ``MixedPrecision(param_dtype=
    mp_dtype, reduce_dtype=float32)``, like FSDP2's policy here (buffers as they are).
    """
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision, ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    classes = {type(layer) for layer in decoder_layers(model)}
    strategy = (ShardingStrategy.FULL_SHARD if mode == "full"
                else ShardingStrategy.SHARD_GRAD_OP)
    mp = (MixedPrecision(param_dtype=mp_dtype, reduce_dtype=torch.float32)
          if mp_dtype is not None else None)
    return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy(classes),
                                    sharding_strategy=strategy, mixed_precision=mp,
                                    device_id=torch.device("cpu"), use_orig_params=True)


def local(t: Any) -> Any:
    """A DTensor's local shard (the memory this rank holds); any other tensor as is."""
    inner = getattr(t, "_local_tensor", None)
    return inner if inner is not None else t


def local_tensors(tensors: Iterable[Any]) -> list[Any]:
    return [local(t) for t in tensors]


@contextlib.contextmanager
def track_resize(tracker: Any) -> Iterator[None]:
    """Follow ``UntypedStorage.resize_``, which no dispatch mode sees.

    FSDP2 frees an unsharded parameter's memory with ``storage.resize_(0)`` after forward
    (``reshard_after_forward``) and backward, and gets it back with ``resize_(nbytes)``
    before the all-gather: the storage object lives on, its size changes.
    """
    original = torch.UntypedStorage.resize_

    def resize_(storage: Any, size: int) -> Any:
        out = original(storage, size)
        tracker.see_storage(storage)
        return out

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]


def unsharded_tensors(model: Any) -> list[Any]:
    """The unsharded parameters' tensors FSDP2 all-gathers into (their storages are resized
    between 0 and full size, never replaced): counted as ``weights`` while unsharded."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    out: list[Any] = []
    for m in model.modules():
        handle = getattr(m, "_handle", None) if isinstance(m, FullyShardedDataParallel) \
            else None
        if handle is not None:  # FSDP1: the padded unsharded flat parameter, its 16-bit shard
            flat = handle.flat_param
            out.extend(t for t in (getattr(flat, name, None) for name in (
                "_full_param_padded", "_mp_shard", "_full_prec_full_param_padded"))
                if t is not None)
    for m in model.modules():
        if not isinstance(m, FSDPModule):
            continue
        group = m._get_fsdp_state()._fsdp_param_group
        for fp in getattr(group, "fsdp_params", ()) if group is not None else ():
            out.extend(getattr(fp, "all_gather_outputs", None) or ())
            unsharded = getattr(fp, "_unsharded_param", None)
            if unsharded is not None:
                out.append(unsharded)
    return out
