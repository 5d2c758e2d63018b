"""The two traced workloads: an inference run (prefill + decode) and a training step.

Both run the real transformers model code, op by op, under :class:`MemoryTracker`, on fake
tensors (``device_kind="fake"``: any size, no memory) or on real CPU tensors
(``device_kind="real"``: tiny models only, the tests' proof that fake == real).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import MemfitError
from ..workload import InferenceOptions, TrainingOptions
from .build import (
    DTYPES,
    build_model,
    decode_experts,
    dtype_key,
    hf_config,
    quiet_transformers,
    weights_dtype,
)
from .ckpt import enable_checkpointing, offload_activations
from .compat import (
    cuda_autocast_policy,
    fake_overrides,
    gpu_semantics,
    no_real_fallback,
    transformers_patches,
)
from .optim import (
    MasterWeights,
    OptimizerInBackward,
    host_step_tensors,
    make_optimizer,
    state_tensors,
)
from .result import TraceResult
from .tracker import MemoryTracker

__all__ = ["trace_inference", "trace_training", "DEVICE_KINDS"]

DEVICE_KINDS = ("fake", "real")

# precision recipe -> (parameter dtype, autocast dtype or None, fp32 master copies)
_RECIPES: dict[str, tuple[torch.dtype, torch.dtype | None, bool]] = {
    "fp32": (torch.float32, None, False),
    "bf16-true": (torch.bfloat16, None, False),
    "fp16-true": (torch.float16, None, False),
    "bf16-mixed": (torch.float32, torch.bfloat16, False),
    "fp16-mixed": (torch.float32, torch.float16, False),
    "bf16-master": (torch.bfloat16, None, True),
}


def _not_yet(field: str, value: Any, allowed: str) -> MemfitError:
    return MemfitError.bad_value(field, value, f"{allowed} (the tracer does not run this yet)")


def _check_inference(options: InferenceOptions) -> None:
    if not isinstance(options, InferenceOptions):
        raise MemfitError.bad_value("options", type(options).__name__, "InferenceOptions")
    if options.engine != "hf":
        raise _not_yet("engine", options.engine, "hf")
    for name in ("tp", "pp", "ep"):
        if getattr(options, name) != 1:
            raise _not_yet(name, getattr(options, name), "1")


def _check_training(options: TrainingOptions) -> None:
    if not isinstance(options, TrainingOptions):
        raise MemfitError.bad_value("options", type(options).__name__, "TrainingOptions")
    for name in ("tp", "pp", "cp", "ep"):
        if getattr(options, name) != 1:
            raise _not_yet(name, getattr(options, name), "1")
    if options.dp != 1 and options.fsdp is None:
        raise _not_yet("dp", options.dp, "1, or N with --fsdp full|grad-op (plain DDP and "
                       "ZeRO are not traced)")
    if options.zero:
        raise _not_yet("zero", options.zero, "0")
    if options.fsdp is not None:
        if options.fsdp not in ("full", "grad-op"):
            raise _not_yet("fsdp", options.fsdp, "full or grad-op")
        if options.dp < 2:
            raise _not_yet("fsdp", options.fsdp, "none with --dp 1 (FSDP2 is traced for "
                           "--dp 2 or more)")
        if options.precision == "bf16-master":
            raise _not_yet("precision", options.precision,
                           "fp32, bf16-true, fp16-true, bf16-mixed or fp16-mixed with --fsdp "
                           "(FSDP2 keeps fp32 masters as its sharded parameters: use "
                           "bf16-mixed)")
    if options.qlora:
        from .lora import QLORA_PRECISIONS

        if options.precision not in QLORA_PRECISIONS:
            raise _not_yet("precision", options.precision,
                           " or ".join(QLORA_PRECISIONS) + " with --qlora")
    if options.lora_rank is not None or options.qlora:
        if options.fsdp is not None and (options.qlora or options.precision not in (
                "bf16-mixed", "fp16-mixed", "fp32")):
            raise _not_yet("fsdp", options.fsdp, "none with --qlora, or with --lora-rank a "
                           "mixed or fp32 recipe (FSDP2 all-gathers one dtype per layer: "
                           "peft's fp32 adapters beside a 16-bit base need its "
                           "MixedPrecisionPolicy)")
        if options.precision == "bf16-master":
            raise _not_yet("precision", options.precision,
                           "fp32, bf16-true, fp16-true, bf16-mixed or fp16-mixed with "
                           "--lora-rank (the adapters are fp32 already)")
    if options.offload != "none":
        raise _not_yet("offload", options.offload, "none (host offload of parameters or "
                       "optimizer state is not traced)")
    if options.checkpointing not in ("none", "full", "op-selective"):
        raise _not_yet("checkpointing", options.checkpointing, "none, full or op-selective "
                       "(Megatron's selective recomputation is not traced)")
    _check_adapter_knobs(options)
    _check_step_knobs(options)


def _check_adapter_knobs(options: TrainingOptions) -> None:
    """The LoRA knobs: only with adapters, and only the combinations the tracer runs."""
    if options.lora_rank is None and not options.qlora:
        for name, default in (("lora_targets", "all-linear"), ("lora_dropout", 0.0),
                              ("lora_dtype", None), ("dora", False), ("lora_experts", False)):
            if getattr(options, name) != default:
                raise MemfitError.bad_value(name.replace("_", "-"), getattr(options, name),
                                            f"{default} without --lora-rank or --qlora (no "
                                            "adapters to apply it to)")
    if options.lora_experts and (options.fsdp is not None or options.dora):
        raise _not_yet("lora-experts", True, "off with --fsdp or --dora (peft's "
                       "target_parameters adapters are traced on one GPU, without DoRA)")
    if options.dora and (options.qlora or options.fsdp is not None):
        raise _not_yet("dora", True, "off with --qlora or --fsdp (DoRA's weight norm "
                       "dequantizes through bitsandbytes / gathers the sharded base)")
    if options.lora_dtype not in (None, "fp32") and options.fsdp is not None:
        raise _not_yet("lora-dtype", options.lora_dtype, "fp32 with --fsdp")
    if options.no_kbit_prepare and not options.qlora:
        raise MemfitError.bad_value("no-kbit-prepare", True, "off without --qlora (it names "
                                    "QLoRA's activation stream)")


def _check_step_knobs(options: TrainingOptions) -> None:
    """Loss, checkpoint policy, offloading and optimizer knobs the tracer runs (or names)."""
    if options.loss == "cce":
        raise _not_yet("loss", "cce", "hf, chunked or liger (Cut Cross-Entropy's Triton "
                       "kernels have no PyTorch reference in the tracer)")
    import transformers

    installed = int(transformers.__version__.split(".")[0])
    if options.transformers != installed:
        raise _not_yet("transformers", options.transformers, f"{installed}, the installed "
                       "major version (the tracer builds its module layout)")
    if options.loss != "chunked" and options.loss_chunks != 8:
        raise MemfitError.bad_value("loss-chunks", options.loss_chunks,
                                    "8 (the default) unless --loss chunked")
    if options.checkpoint_every != 1 and options.checkpointing not in ("full", "op-selective"):
        raise MemfitError.bad_value("checkpoint-every", options.checkpoint_every,
                                    "1 without --checkpointing full|op-selective")
    if options.optimizer in ("adamw-8bit", "paged-adamw", "paged-adamw-8bit") and \
            options.optimizer_impl != "foreach":
        raise MemfitError.bad_value("optimizer-impl", options.optimizer_impl,
                                    f"foreach (the default) with {options.optimizer}: "
                                    "bitsandbytes runs its own kernels")
    if options.optimizer in ("paged-adamw", "paged-adamw-8bit") and options.fsdp is not None:
        raise _not_yet("optimizer", options.optimizer, "a non-paged optimizer with --fsdp")
    if options.fsdp_version != 2 and options.fsdp is None:
        raise MemfitError.bad_value("fsdp-version", options.fsdp_version,
                                    "2 (the default) without --fsdp")
    if options.fsdp_version == 1 and options.precision in ("bf16-mixed", "fp16-mixed"):
        raise _not_yet("precision", options.precision,
                       "fp32, bf16-true or fp16-true with --fsdp-version 1 (FSDP1's "
                       "MixedPrecision does not take effect on the CPU trace)")
    if options.fsdp_version == 1 and options.fsdp == "grad-op":
        raise _not_yet("fsdp", options.fsdp, "full with --fsdp-version 1 (FSDP1's "
                       "SHARD_GRAD_OP with use_orig_params trips its own "
                       "_writeback_orig_params assertion on the trace)")
    if options.fsdp_version == 1 and (options.lora_rank is not None or options.qlora):
        raise _not_yet("fsdp-version", 1, "2 with --lora-rank or --qlora (FSDP1 with "
                       "adapters is not traced)")
    fsdp = options.fsdp is not None
    for name, on in (("loss", options.loss != "hf"),
                     ("checkpointing", options.checkpointing == "op-selective"),
                     ("checkpoint-every", options.checkpoint_every != 1),
                     ("activation-offload", options.activation_offload),
                     ("optimizer-in-backward", options.optimizer_in_backward)):
        if on and fsdp:
            raise _not_yet(name, getattr(options, name.replace("-", "_")),
                           "its default with --fsdp (traced on one GPU only)")
    if options.optimizer_in_backward:
        if options.microbatches != 1:
            raise MemfitError.bad_value("microbatches", options.microbatches,
                                        "1 with --optimizer-in-backward (no gradient "
                                        "accumulation: torchtune refuses it too)")
        if options.precision == "bf16-master":
            raise _not_yet("precision", options.precision,
                           "a recipe without master weights with --optimizer-in-backward")


@contextlib.contextmanager
def _session(device_kind: str, hf_cfg: Any, dtype: torch.dtype, attn: str,
             prepare: Any = None,
             distributed: bool = False) -> Iterator[tuple[MemoryTracker, Any, str]]:
    """Patches, the fake mode (or not), the model, then the tracker, innermost.

    The model is built before the tracker starts and its parameters and buffers are counted
    as it starts (the "load" phase holds exactly the weights): building with ``from_config``
    allocates what loading a checkpoint does not (an untied LM head before tying, init
    scratch). ``prepare(model)`` runs in between (FSDP2's ``fully_shard``: the load phase
    then holds this rank's shards). With ``distributed``, DTensor dispatches before the
    tracker and ``UntypedStorage.resize_`` is followed (FSDP2). Yields the tracker, the model
    and the attention implementation it got.
    """
    if device_kind not in DEVICE_KINDS:
        raise MemfitError.bad_value("device_kind", device_kind, ", ".join(DEVICE_KINDS))
    fake = device_kind == "fake"
    with contextlib.ExitStack() as stack:
        stack.enter_context(quiet_transformers())
        stack.enter_context(transformers_patches())
        if fake:
            from torch._subclasses.fake_tensor import FakeTensorMode

            stack.enter_context(no_real_fallback())
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        model, used = build_model(hf_cfg, dtype, attn)
        if prepare is not None:
            model = prepare(model) or model
        first: tuple[type, ...] = ()
        if distributed:
            from torch.distributed.tensor import DTensor

            first = (DTensor,)
        tracker = MemoryTracker(fake_overrides() if fake else None, subclasses_first=first)
        if distributed:
            from .dist import track_resize

            stack.enter_context(track_resize(tracker))
        with tracker:
            tracker.track(_weights(model), "weights")
            yield tracker, model, used


def _versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "memfit": __version__}


def _cache_tensors(obj: Any, depth: int = 3) -> Iterator[torch.Tensor]:
    """Every tensor a transformers ``Cache`` holds (its layers' keys, values, states)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif depth <= 0 or obj is None or isinstance(obj, (str, int, float, bool)):
        return
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _cache_tensors(o, depth - 1)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _cache_tensors(o, depth - 1)
    elif hasattr(obj, "__dict__"):
        for o in vars(obj).values():
            yield from _cache_tensors(o, depth - 1)


def _note_attn(notes: list[str], hf_cfg: Any, asked: str, used: str) -> None:
    if asked != used:
        notes.append(f"{hf_cfg.model_type} has no {asked} attention in transformers; traced "
                     f"with {used} (what transformers picks for it)")


def _device_type(model: Any) -> str:
    return next(model.parameters()).device.type


def _weights(model: Any) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def _result(workload: str, tracker: MemoryTracker, started: float, scenario: dict[str, Any],
            device_kind: str, notes: list[str]) -> TraceResult:
    return TraceResult(
        workload=workload,
        peak_bytes=tracker.peak,
        peak_bytes_rounded=tracker.peak_rounded,
        peak_phase=tracker.peak_phase,
        components=tracker.components(),
        phase_peaks=dict(tracker.phase_peaks),
        seconds=time.perf_counter() - started,
        versions=_versions(),
        scenario=scenario,
        device_kind=device_kind,
        ops=tracker.ops,
        notes=tuple(notes),
    )


def trace_inference(config: Mapping[str, Any], options: InferenceOptions, *,
                    device_kind: str = "fake", fast_decode: bool = True) -> TraceResult:
    """Trace ``generate()``'s memory: one prefill with a ``DynamicCache``, then decode steps.

    The prefill runs ``batch x prompt`` tokens with ``use_cache=True`` and
    ``logits_to_keep=1`` (``--logits last``, what ``generate()`` asks for) or 0 (all). Then
    ``options.generate`` greedy decode steps of one token each, as ``generate()``'s loop does
    (the float32 copy of the last logits, ``argmax``, ``input_ids`` grown with ``torch.cat``,
    MoE experts switched to ``batched_mm``), all under ``torch.no_grad()``. No attention mask
    is passed: ``generate()``'s all-ones mask is dropped by transformers before attention.

    ``fast_decode`` runs only the first and the last decode step through the model and grows
    the cache in between with the cache's own ``update`` (see :func:`_grow_cache`): every
    decode step allocates the same tensors for a longer cache, so the last one holds the
    decode peak. ``fast_decode=False`` runs every step (the tests check both agree).
    """
    _check_inference(options)
    from ..arch import from_hf_config

    try:
        positions = from_hf_config(config).learned_positions
    except MemfitError as exc:  # a model_type memfit has no model for: memfit.generic's
        if exc.field != "model_type":
            raise
        positions = 0
    if positions and options.prompt + options.generate > positions:
        # fake tensors do not bounds-check the position table: refuse what a GPU would
        raise MemfitError.bad_value("prompt", options.prompt,
                                    f"prompt + generate <= {positions} (the learned position "
                                    "table)")
    dtype_name = weights_dtype(config, options.weights)
    if options.kv_dtype is not None and dtype_key(options.kv_dtype) != dtype_name:
        raise MemfitError.bad_value("kv-dtype", options.kv_dtype,
                                    f"{dtype_name} (the tracer keeps the KV cache in the "
                                    "weights' dtype)")
    hf_cfg = hf_config(config)
    started = time.perf_counter()
    notes: list[str] = []
    batch, prompt = options.batch, options.prompt
    with _session(device_kind, hf_cfg, DTYPES[dtype_name], options.attn) as (
            tracker, model, attn):
        _note_attn(notes, hf_cfg, options.attn, attn)
        model.eval()
        keep = 1 if options.logits == "last" else 0
        with torch.no_grad(), gpu_semantics(_device_type(model) == "cpu"):
            tracker.set_phase("prefill")
            loop = _Greedy(model, tracker, torch.zeros((batch, prompt), dtype=torch.long))
            loop.step(logits_to_keep=keep)
            if options.generate:
                with decode_experts(model):
                    _decode(loop, options.generate, fast_decode)
        experts = model.get_experts_implementation()
        if "grouped_mm" in experts.values() and options.generate:
            notes.append("MoE experts: grouped_mm for the prefill, batched_mm for decode "
                         "(generate() on a GPU)")
        scenario = {"workload": "infer", **dataclasses.asdict(options),
                    "resolved": {"weights": dtype_name, "kv_dtype": dtype_name, "attn": attn,
                                 "model_type": hf_cfg.model_type}}
        result = _result("infer", tracker, started, scenario, device_kind, notes)
        del loop
    return result


def _cache_arg() -> str:
    """The name transformers gives the cache argument and output (``cache`` since 5.2x)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    return "cache" if "cache" in fields else "past_key_values"


_CACHE_ARG = _cache_arg()


class _Greedy:
    """``generate()``'s greedy loop: the tensors it keeps between steps, replaced in its order.

    Per step: the forward, then ``next_token_logits`` (a float32 copy of the last position's
    logits), ``next_tokens = argmax``, ``input_ids = cat(input_ids, next_tokens)``, and only
    then the outputs (with their logits) are dropped. The previous step's
    ``next_token_logits`` and ``next_tokens`` stay alive through the next forward.
    """

    def __init__(self, model: Any, tracker: MemoryTracker, input_ids: torch.Tensor) -> None:
        self.model, self.tracker, self.input_ids = model, tracker, input_ids
        self.cache: Any = None
        self.next_token_logits: torch.Tensor | None = None
        self.next_tokens: torch.Tensor | None = None

    def step(self, **kwargs: Any) -> None:
        ids = self.input_ids if self.cache is None else self.input_ids[:, -1:]
        outputs = self.model(input_ids=ids, use_cache=True, **{_CACHE_ARG: self.cache},
                             **kwargs)
        del ids
        self.cache = outputs[_CACHE_ARG]
        self.tracker.track(_cache_tensors(self.cache), "kv_cache")
        self.tracker.track([outputs.logits], "logits")
        self.next_token_logits = outputs.logits[:, -1].to(copy=True, dtype=torch.float32)
        self.next_tokens = torch.argmax(self.next_token_logits, dim=-1)
        self.input_ids = torch.cat([self.input_ids, self.next_tokens[:, None]], dim=-1)
        del outputs


def _decode(loop: _Greedy, steps: int, fast: bool) -> None:
    """``steps`` decode steps; with ``fast``, the middle ones only grow the cache."""
    loop.tracker.set_phase("decode")
    loop.step()
    skip = steps - 2
    if fast and skip > 0 and _grow_cache(loop.cache, skip):
        filler = loop.input_ids.new_zeros((loop.input_ids.shape[0], skip))
        loop.input_ids = torch.cat([loop.input_ids, filler], dim=-1)
        del filler
        loop.tracker.track(_cache_tensors(loop.cache), "kv_cache")
        skip = 0
    for _ in range(max(skip, 0) + (steps > 1)):
        loop.step()


def _grow_cache(cache: Any, n: int) -> bool:
    """Append ``n`` tokens to every layer of ``cache`` as ``n`` decode steps would.

    The stored tensors end with the sizes (and the storages behind views) the real steps
    leave, and no moment here holds more than the next real decode step will:

    - ``DynamicLayer`` (full attention) stores ``cat(old, new)`` at exact size, so one ``cat``
      of ``n`` tokens leaves what ``n`` single ``cat``s leave. Keys, then values, with one
      ``n``-token piece alive at a time: the transient is ``3 x (len + n)`` tokens of one
      layer, below the next step's ``3 x (len + n + 1)``.
    - ``DynamicSlidingWindowLayer`` keeps a view of its last ``window - 1`` tokens on the
      storage of its last ``cat``; it takes one chunk that stays short of the window through
      its own ``update``, then single tokens until the stored sizes stop changing.

    Returns False (nothing done) for any other layer type: then every step runs.
    """
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    layers = getattr(cache, "layers", None)
    kinds = (DynamicLayer, DynamicSlidingWindowLayer)
    if not layers or any(type(layer) not in kinds or not layer.is_initialized
                         for layer in layers):
        return False

    def piece(like: torch.Tensor, count: int) -> torch.Tensor:
        return torch.zeros((*like.shape[:-2], count, like.shape[-1]), dtype=like.dtype)

    layer: Any
    for layer in layers:
        full_attention = type(layer) is DynamicLayer
        if full_attention:
            layer.keys = torch.cat([layer.keys, piece(layer.keys, n)], dim=-2)
            layer.values = torch.cat([layer.values, piece(layer.values, n)], dim=-2)
            continue
        left = n
        room = layer.sliding_window - 2 - layer.keys.shape[-2]  # stays below window - 1
        if room > 0:
            chunk = min(room, left)
            layer.update(piece(layer.keys, chunk), piece(layer.values, chunk))
            left -= chunk
        one = (piece(layer.keys, 1), piece(layer.values, 1))
        while left > 0:
            before = (layer.keys.shape, layer.keys.untyped_storage().nbytes())
            layer.update(*one)
            left -= 1
            if (layer.keys.shape, layer.keys.untyped_storage().nbytes()) == before:
                layer.cumulative_length += left  # later steps change nothing stored
                left = 0
        del one
    return True


def trace_training(config: Mapping[str, Any], options: TrainingOptions, *,
                   device_kind: str = "fake") -> TraceResult:
    """Trace two optimizer steps of a causal-LM loss and report the second (steady state).

    Each step: for each micro-batch, ``model(input_ids, labels=input_ids)`` (under
    ``torch.autocast`` for the mixed recipes; ``use_cache`` at the config's default, so
    transformers also builds a ``DynamicCache`` unless checkpointing switches it off), the
    outputs dropped but for the loss (as ``Trainer.compute_loss`` does), ``loss.backward()``;
    then ``optimizer.step()`` and ``zero_grad(set_to_none=True)``. The peak is reset after the
    first step, when the optimizer state exists.
    """
    _check_training(options)
    param_dtype, autocast_dtype, master = _RECIPES[options.precision]
    hf_cfg = hf_config(config)
    started = time.perf_counter()
    notes: list[str] = []
    fsdp = options.fsdp
    mp_dtype = None
    if fsdp is not None:  # FSDP2's MixedPrecisionPolicy instead of autocast
        mp_dtype, autocast_dtype = autocast_dtype, None
    with contextlib.ExitStack() as outer:
        prepare = _prepare(options, outer, mp_dtype)
        session = _session(device_kind, hf_cfg, param_dtype, options.attn, prepare,
                           distributed=fsdp is not None)
        result = _train(session, options, notes, hf_cfg, started, device_kind,
                        param_dtype, autocast_dtype, master, mp_dtype, prepare is None)
    return result


def _prepare(options: TrainingOptions, outer: contextlib.ExitStack,
             mp_dtype: torch.dtype | None) -> Any:
    """What runs between building the model and tracking: adapters, sharding, checkpointing
    (``None`` for a plain model, checkpointed later)."""
    from .lora import apply_lora_options, apply_qlora

    ckpt = _enable_checkpointing if options.checkpointing != "none" else None

    def checkpoint(model: Any) -> None:
        if ckpt is not None:
            ckpt(model, options)

    if options.fsdp is not None:
        from .dist import fake_process_group, shard_model

        # the mesh reads the store: built before (outside) the fake mode
        mesh = outer.enter_context(fake_process_group(options.dp))

        def prepare_fsdp(model: Any) -> Any:
            assert options.fsdp is not None  # this branch runs only under --fsdp
            checkpoint(model)
            if options.fsdp_version == 1:
                from .dist import shard_model_v1

                return shard_model_v1(model, options.fsdp, mp_dtype)
            if options.lora_rank is not None:  # torchtune's order: adapters, then shards
                apply_lora_options(model, options)  # in place: the base is frozen
            shard_model(model, mesh, options.fsdp, mp_dtype)
            return None

        return prepare_fsdp
    if options.qlora:
        return lambda model: apply_qlora(model, options, checkpoint)
    if options.lora_rank is not None:
        def prepare_lora(model: Any) -> Any:
            checkpoint(model)
            return apply_lora_options(model, options)

        return prepare_lora
    return None


def _forward_loss(model: Any, tracker: MemoryTracker, options: TrainingOptions,
                  input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One micro-batch's forward and loss, keeping what the loop keeps (the loss only)."""
    def keep(outputs: Any, logits: list[torch.Tensor]) -> None:
        tracker.track(logits, "logits")
        tracker.track(_cache_tensors(outputs.get(_CACHE_ARG)), "kv_cache")

    if options.loss == "chunked":
        from .loss import chunked_loss

        return chunked_loss(model, input_ids, labels, options.loss_chunks, keep)
    if options.loss == "liger":
        from .loss import fused_linear_loss

        return fused_linear_loss(model, input_ids, labels, keep)
    outputs = model(input_ids=input_ids, labels=labels)
    keep(outputs, [outputs.logits])
    loss = outputs.loss
    del outputs
    return loss


def _make_optimizer(options: TrainingOptions, tracker: MemoryTracker,
                    params: list[Any]) -> Any:
    if options.optimizer_in_backward:
        return OptimizerInBackward(options.optimizer, options.optimizer_impl, params,
                                   lambda g: tracker.track([g], "gradients"), tracker.host)
    return make_optimizer(options.optimizer, options.optimizer_impl, params, tracker.host)


def _train(session: Any, options: TrainingOptions, notes: list[str], hf_cfg: Any,
           started: float, device_kind: str, param_dtype: torch.dtype,
           autocast_dtype: torch.dtype | None, master: bool,
           mp_dtype: torch.dtype | None, plain: bool) -> TraceResult:
    with session as (tracker, model, attn):
        _note_attn(notes, hf_cfg, options.attn, attn)
        model.train()
        if options.checkpointing != "none" and plain:
            _enable_checkpointing(model, options)
        params = [p for p in model.parameters() if p.requires_grad]
        masters = MasterWeights(params) if master else None
        if masters is not None:
            tracker.retag(masters.masters, "optimizer_states")
        optimizer = _make_optimizer(options, tracker, masters.masters if masters else params)
        input_ids = torch.zeros((options.batch, options.seq), dtype=torch.long)
        labels = input_ids.clone()
        # The tensors' device: "cpu" for the fake and real traces (CPU autocast, whose op
        # lists differ from CUDA's: see docs/tracer.md), "cuda" where a GPU probe runs this.
        device_type = _device_type(model)
        autocast: Any = (torch.autocast(device_type=device_type, dtype=autocast_dtype)
                         if autocast_dtype is not None else contextlib.nullcontext())
        on_cpu = device_type == "cpu"  # the CUDA emulation applies to CPU tensors only
        with gpu_semantics(on_cpu), cuda_autocast_policy(on_cpu and autocast_dtype is not None):
            for step in range(2):
                _step(model, tracker, options, optimizer, masters, params, autocast,
                      input_ids, labels)
                if step == 0:
                    tracker.exclude(host_step_tensors(optimizer))
                    if options.fsdp is not None:
                        from .dist import unsharded_tensors

                        tracker.retag(unsharded_tensors(model), "weights")
                    tracker.reset_peak()
        scenario = _train_scenario(options, attn, param_dtype, autocast_dtype, master,
                                   mp_dtype, params, optimizer, hf_cfg)
        result = _result("train", tracker, started, scenario, device_kind, notes)
        if isinstance(optimizer, OptimizerInBackward):
            optimizer.remove()
        del optimizer, masters, params, input_ids, labels
    return result


def _step(model: Any, tracker: MemoryTracker, options: TrainingOptions, optimizer: Any,
          masters: MasterWeights | None, params: list[Any], autocast: Any,
          input_ids: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimizer step: the micro-batches' forward and backward, then the update."""
    for _ in range(options.microbatches):
        tracker.set_phase("forward")
        offload: Any = (offload_activations(tracker, model) if options.activation_offload
                        else contextlib.nullcontext())
        with autocast, offload:
            loss = _forward_loss(model, tracker, options, input_ids, labels)
        tracker.set_phase("backward")
        loss.backward()
        del loss
    tracker.track([p.grad for p in params], "gradients")
    tracker.set_phase("optimizer")
    if masters is not None:
        masters.grads_to_masters(lambda g: tracker.retag([g], "gradients"))
    optimizer.step()
    if masters is not None:
        masters.masters_to_params()
    optimizer.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    tracker.retag(state_tensors(optimizer), "optimizer_states")


def _train_scenario(options: TrainingOptions, attn: str, param_dtype: torch.dtype,
                    autocast_dtype: torch.dtype | None, master: bool,
                    mp_dtype: torch.dtype | None, params: list[Any], optimizer: Any,
                    hf_cfg: Any) -> dict[str, Any]:
    def name(dtype: torch.dtype | None) -> str | None:
        return str(dtype).replace("torch.", "") if dtype else None

    opt_class = type(optimizer).__name__
    if isinstance(optimizer, OptimizerInBackward):
        inner = next(iter(optimizer.optimizers.values()), None)
        opt_class = f"{type(inner).__name__} per parameter, in backward"
    return {"workload": "train", **dataclasses.asdict(options),
            "resolved": {"attn": attn, "param_dtype": name(param_dtype),
                         "autocast_dtype": name(autocast_dtype), "master_weights": master,
                         "fsdp_param_dtype": name(mp_dtype), "world_size": options.dp,
                         "trainable_params": sum(p.numel() for p in params),
                         "optimizer_class": opt_class, "model_type": hf_cfg.model_type}}


def _enable_checkpointing(model: Any, options: TrainingOptions | None = None) -> None:
    """Non-reentrant activation checkpointing (transformers' own; see :mod:`.ckpt`)."""
    mode = options.checkpointing if options is not None else "full"
    every = options.checkpoint_every if options is not None else 1
    enable_checkpointing(model, mode, every)
