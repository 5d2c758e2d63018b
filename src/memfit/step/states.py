"""The model-states part: the rank's tensors (base, adapters), their bytes, the optimizer's
state and step temporaries, and how ZeRO / FSDP shard them (:mod:`memfit.memory.model_states`,
ZeRO (Rajbhandari et al. 2020) sec. 3.1, ``torch/optim``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..arch import ModelSpec
from ..memory.model_states import (
    DEEPSPEED_DEFAULTS,
    V4_EXPERTS,
    FsdpConfig,
    Recipe,
    StateInputs,
    TensorGroup,
    fsdp_padded_elements,
    get_optimizer,
    optimizer_host_step_bytes,
    optimizer_state_bytes,
    optimizer_temporary_bytes,
    paged_state_bytes,
    per_expert_linears,
    rank_tensors,
    shard_states,
    tensor_elements,
)
from ..memory.params import buffer_elements
from ..memory.weights import memo_table
from ..workload import TrainingOptions
from .context import Stage

__all__ = ["LORA_TARGETS", "build", "weight_bytes", "grad_part"]

#: peft target modules of ``--lora-rank`` (contract): q, k, v, o, gate, up, down.
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
_QLORA_FORMAT = "nf4-dq"


def weight_bytes(groups: tuple[TensorGroup, ...], recipe: Recipe, qlora: bool,
                 upcast: bool = True) -> int:
    """Bytes of the weights on the rank: the recipe's b_w per element (fp32 for tensors the
    model keeps in fp32); QLoRA: base linears in NF4 with double quantization
    (:func:`memfit.dtypes.tensor_bytes`), everything else upcast to fp32 by peft's
    ``prepare_model_for_kbit_training`` (``upcast``), or left in the recipe's dtype without
    that step (``--no-kbit-prepare``: torchtune, Unsloth, axolotl)."""
    if not qlora:
        return sum(g.elements * (4 if g.fp32 else recipe.weight_bytes) for g in groups)
    from ..dtypes import tensor_bytes

    total = 0
    for g in groups:
        if g.linear and len(g.shape) == 2 and g.part == "layer":
            total += tensor_bytes(g.shape, _QLORA_FORMAT) * g.count
        else:
            # (QLoRA loads the model in 16 bits, whatever the recipe's master dtype)
            total += (4 if (upcast or g.fp32) else recipe.compute_bytes) * g.elements
    return total


def _adapters(groups: tuple[TensorGroup, ...], r: int, targets: frozenset[str],
              dora: bool = False, experts: bool = False) -> tuple[TensorGroup, ...]:
    """LoRA's A (r x in) and B (out x r) for every targeted linear (peft
    tuners/lora/layer.py ``LoraLayer.update_layer``: ``nn.Linear(in, r)``, ``nn.Linear(r,
    out)``, no bias)."""
    out = []
    for g in groups:
        if experts and g.name in ("experts.gate_up_proj", "experts.down_proj"):
            # peft's target_parameters (ParamWrapper): lora_A (r E x in), lora_B (out x r E)
            e, d1, d2 = g.shape
            out.append(TensorGroup(f"{g.name}.lora_A", (r * e, d2), g.count, g.part))
            out.append(TensorGroup(f"{g.name}.lora_B", (d1, r * e), g.count, g.part))
        if g.lora and g.lora in targets and len(g.shape) == 2:
            n_out, n_in = g.shape
            out.append(TensorGroup(f"{g.name}.lora_A", (r, n_in), g.count, g.part))
            out.append(TensorGroup(f"{g.name}.lora_B", (n_out, r), g.count, g.part))
            if dora:  # DoRA's magnitude vector (lora_magnitude_vector: one per output)
                out.append(TensorGroup(f"{g.name}.lora_magnitude", (n_out,), g.count, g.part))
    return tuple(out)


def _linear_elements(groups: tuple[TensorGroup, ...]) -> int:
    """Elements autocast casts to 16 bits: matmul weights and the biases fused with them."""
    n = 0
    for g in groups:
        if g.name.startswith("experts."):
            continue  # grouped_mm is not an autocast op: the experts run in fp32
        if g.linear or g.name.endswith("_proj.bias") or g.name.endswith("proj.bias"):
            n += g.elements
    return n


def _temporaries(trainable: tuple[TensorGroup, ...], recipe: Recipe, opt: Any,
                 o: TrainingOptions, lora: bool, state_b: int) -> tuple[int, int]:
    """(optimizer state bytes, step temporaries) of the full (unsharded) trainable set."""
    # tensors the model keeps in fp32 (DeepSeek's router) get fp32 optimizer state
    f32 = tuple(g for g in trainable if g.fp32) if state_b < 4 else ()
    rest = tuple(g for g in trainable if not g.fp32) if f32 else trainable
    states_full = optimizer_state_bytes(rest, opt, state_b)
    temps_full = optimizer_temporary_bytes(rest, opt, o.optimizer_impl, state_b)
    if f32 and not opt.eight_bit:
        states_full += optimizer_state_bytes(f32, opt, 4)
        t32 = optimizer_temporary_bytes(f32, opt, o.optimizer_impl, 4)
        temps_full = (temps_full + t32 if o.optimizer_impl == "foreach"
                      else max(temps_full, t32))
    if recipe.master_bytes and not lora and o.optimizer_impl != "fused" and not opt.eight_bit:
        # The optimizer steps the fp32 masters: its temporaries are fp32.
        temps_full = optimizer_temporary_bytes(trainable, opt, o.optimizer_impl, 4)
    return states_full, temps_full


def _state_inputs(spec: ModelSpec, groups: tuple[TensorGroup, ...], recipe: Recipe, opt: Any,
                  o: TrainingOptions, lora: bool, state_b: int, first: bool, n_layers: int,
                  adapter_bytes: int, targets: frozenset[str]
                  ) -> tuple[StateInputs, tuple[TensorGroup, ...], int, dict[str, int]]:
    """The sums over one rank's tensors that the model states need (memoised per layout)."""
    trainable = (_adapters(groups, o.lora_rank or 0, targets, o.dora, o.lora_experts)
                 if lora else groups)
    P = tensor_elements(trainable)
    W = (weight_bytes(groups, recipe, o.qlora, not o.no_kbit_prepare)
         + (adapter_bytes * P if lora else 0))
    if first:
        # rotary inv_freq etc.: fp32 buffers; Gemma's embed_scale in the weights' dtype
        W += (4 * (buffer_elements(spec) - spec.extra_buffers)
              + recipe.weight_bytes * spec.extra_buffers)
    states_full, temps_full = _temporaries(trainable, recipe, opt, o, lora, state_b)
    steps = optimizer_host_step_bytes(trainable, opt, o.optimizer_impl)
    largest = max((g.numel for g in groups), default=0)
    persistent = sum(g.elements for g in groups
                     if g.numel < DEEPSPEED_DEFAULTS.stage3_param_persistence_threshold)
    per_layer = tuple(g for g in groups if g.part == "layer")
    layer_el = tensor_elements(per_layer) // max(1, n_layers)
    root_el = tensor_elements(tuple(g for g in groups if g.part != "layer"))
    xin = StateInputs(weight_bytes=W, trainable=P, compute_bytes=recipe.compute_bytes,
                      state_bytes=states_full, temporaries=temps_full, step_counters=steps,
                      largest_module=largest, persistent=persistent, layer_elements=layer_el,
                      root_elements=root_el, layers=n_layers,
                      fp32_trainable=0 if lora else sum(g.elements for g in trainable
                                                        if g.fp32))
    parts = {part: sum(g.elements for g in trainable if g.part == part)
             for part in ("embed", "head")}
    return xin, trainable, _linear_elements(per_layer), parts


def build(s: Stage) -> None:
    """The rank's tensors and model states: s.groups, s.trainable, s.xin, s.sb (sharded),
    s.P (trainable elements), s.N (shards), s.parts, s.linear_el, s.padded_layers."""
    c, o, spec, recipe = s.c, s.o, s.spec, s.recipe
    memo = memo_table(spec)
    gkey: tuple[Any, ...] = ("groups", o.tp, o.ep, s.n_dense, s.n_moe, s.first, s.last)
    groups = memo.get(gkey)
    if groups is None:
        groups = memo[gkey] = rank_tensors(spec, tp=o.tp, ep=o.ep, dense_layers=s.n_dense,
                                           moe_layers=s.n_moe, first=s.first, last=s.last)
    if o.transformers == 4 and s.n_moe and spec.model_type in V4_EXPERTS:
        # transformers 4: one nn.Linear per expert (quantized by bitsandbytes, adapted by name)
        gkey = (*gkey, 4)
        v4 = memo.get(gkey)
        if v4 is None:
            v4 = memo[gkey] = per_expert_linears(spec, groups)
        groups = v4
    lora = s.lora
    ab = c.lora_bytes  # adapter weights and gradients: fp32 (peft default) or bf16 (qlora.py)
    # torch.optim's state is zeros_like(param): the adapters' own dtype (fp32 by default)
    state_b = ab if lora else recipe.state_bytes
    s.grad_b = ab if lora else recipe.grad_bytes
    eff = recipe if not lora else replace(recipe, grad_bytes=ab, step_grad_bytes=ab,
                                          master_bytes=0, state_bytes=ab, extra_grad_bytes=0)
    s.opt = opt = get_optimizer(o.optimizer, o.optimizer_impl)
    skey = ("states", gkey, recipe, o.lora_rank, o.qlora, o.no_kbit_prepare, o.optimizer,
            o.optimizer_impl,
            len(s.layers), ab, c.lora_targets if lora else None, o.dora, o.lora_experts)
    cached = memo.get(skey)
    if cached is None:
        cached = memo[skey] = _state_inputs(spec, groups, recipe, opt, o, lora, state_b,
                                            s.first, len(s.layers), ab, c.lora_targets)
    s.groups = groups
    s.xin, s.trainable, s.linear_el, s.parts = cached
    s.P = s.xin.trainable
    fsdp_cfg = FsdpConfig(gpus_per_node=c.gpus_per_node)
    padded = s.padded_layers = 0
    if o.fsdp is not None:
        n_shards = min(o.dp, fsdp_cfg.gpus_per_node) if o.fsdp == "hybrid" else o.dp
        pkey = ("padded", skey, n_shards)
        if pkey not in memo:
            memo[pkey] = (fsdp_padded_elements(s.trainable, n_shards), fsdp_padded_elements(
                tuple(g for g in s.trainable if g.part == "layer"), n_shards))
        padded, s.padded_layers = memo[pkey]
    s.oib_step = _oib_step(s, skey, state_b) if o.optimizer_in_backward else {}
    s.sb = sb = shard_states(s.xin, eff, dp=o.dp, zero=o.zero, fsdp=o.fsdp, offload=o.offload,
                             fsdp_cfg=fsdp_cfg, padded=padded)
    if opt.paged:
        s.sb = sb = _paged(s, sb, skey)
    s.N = sb.shards
    # the bases every phase starts from
    s.Wres = sb.weights + sb.gathered + sb.gathered_grad_op  # resident and gathered weights
    s.Ost = sb.master + sb.optimizer
    s.G = sb.gradients
    s.buffers = sb.grad_buffers
    s.G_prev = s.G if s.accumulating else 0  # gradients of earlier micro-batches


def _paged(s: Stage, sb: Any, skey: tuple[Any, ...]) -> Any:
    """bitsandbytes' paged optimizers: the state of tensors of 1e5 elements or more is in
    CUDA unified memory (``cudaMallocManaged``), which PyTorch's allocator does not count:
    not in the GPU peak (``max_memory_allocated``); it stays on the GPU while memory allows
    and pages to host memory under pressure."""
    memo = memo_table(s.spec)
    key = ("paged", skey)
    paged = memo.get(key)
    if paged is None:
        paged = memo[key] = paged_state_bytes(s.trainable, s.opt)
    note = (f"{s.o.optimizer}: {paged} bytes of optimizer state in CUDA unified memory "
            "(bitsandbytes get_paged), outside PyTorch's allocator: not in the peak; resident "
            "on the GPU while memory allows, paged to host memory under pressure")
    return replace(sb, optimizer=sb.optimizer - paged, notes=(*sb.notes, note))


def _oib_step(s: Stage, skey: tuple[Any, ...], state_b: int) -> dict[str, int]:
    """The optimizer in backward, per part ("layer", "embed", "head"): the largest of one
    parameter's gradient and its own optimizer's step temporaries (torchtune
    ``register_optim_in_bwd_hooks``: one optimizer per parameter, stepped in its
    post-accumulate-grad hook)."""
    memo = memo_table(s.spec)
    key = ("oib", skey)
    v = memo.get(key)
    if v is None:
        v = memo[key] = {part: max((g.numel * s.grad_b + optimizer_temporary_bytes(
            (replace(g, count=1),), s.opt, s.o.optimizer_impl, state_b)
            for g in s.trainable if g.part == part), default=0)
            for part in ("layer", "embed", "head")}
    return v  # type: ignore[no-any-return]


def grad_part(s: Stage, part: str) -> int:
    """Gradient bytes (as held, sharded or not) of the parameters of one ``part`` ("embed",
    "head") on this rank."""
    if s.P == 0:
        return 0
    return s.sb.gradients * s.parts[part] // s.P
