"""The layer parts: each layer kind's saved tensors and transients
(:mod:`memfit.memory.activations`, read off transformers' ``modeling_*.py`` and checked op by
op on the tracer), the checkpoint policy (what a layer keeps for backward), autocast's 16-bit
weight copies, and the loss' B x S x V tensors (transformers ``ForCausalLMLoss``)."""

from __future__ import annotations

import itertools
from dataclasses import fields
from typing import Any

from ..arch import ModelSpec
from ..memory.activations import (
    NORM_STYLES,
    ActivationSetup,
    dropout_config,
    embedding_activations,
    head_activations,
    layer_activations,
    lora_unsaved_prefix,
    mask_bytes,
    norm_saved,
    rotary_bytes,
    softcap_config,
)
from ..memory.model_states import fused_projections
from ..memory.weights import memo_table
from ..workload import TrainingOptions
from .context import Stage

__all__ = ["build", "ckpt_working_set", "kept_list"]


def _use_cache(spec: ModelSpec, o: TrainingOptions) -> bool:
    """Whether the training forward builds a ``DynamicCache``: transformers leaves
    ``use_cache`` at the config's default (True) as ``Trainer`` does, and turns it off under
    its gradient checkpointing (memfit's ``selective`` is Megatron-style: no cache either)."""
    if o.checkpointing != "none":
        return False
    return spec.use_cache


def ckpt_working_set(act: Any) -> int:
    """What a checkpointed layer's forward (which saves nothing) holds beside its transient:
    the larger of its attention block (with the norms) and its MLP block."""
    parts = act.saved
    return max(parts.get("norms", 0) + parts.get("attention", 0),
               parts.get("mlp", 0) + parts.get("moe", 0) + parts.get("dropout_masks", 0))


_SETUP_DEFAULTS = {f.name: f.default for f in fields(ActivationSetup)
                   if f.name not in ("batch", "seq")}  # the two without a default


def _prepare_setup(s: Stage) -> None:
    """The stage's activation setup without the batch, the sequence and what the model's
    config says (dtypes of the stream, layout, adapters): ``s.setup_fields``; and
    ``s.fp32_stream``, ``s.residual``."""
    o, recipe, c = s.o, s.recipe, s.c
    b = recipe.compute_bytes
    # QLoRA: bitsandbytes casts each NF4 matmul's output back to its input's dtype, and
    # peft's fp32 embedding makes that fp32: every activation outside the matmuls is fp32
    # (under FSDP2 the policy casts the embedding to 16 bits).
    s.fp32_stream = fp32_stream = (o.qlora and o.fsdp is None and not o.no_kbit_prepare)
    # a 16-bit QLoRA base (no kbit prepare) keeps a 16-bit stream even under autocast
    bf16_base = o.qlora and not fp32_stream
    s.residual = 4 if ((s.autocast and not bf16_base) or b == 4 or fp32_stream) else 2
    fields_ = dict(_SETUP_DEFAULTS)
    fields_.update(compute_bytes=4 if fp32_stream else b,
                   residual_bytes=s.residual, autocast=s.autocast, attn=c.attn,
                   tp=o.tp, sp=o.sp, ep=o.ep, cp=o.cp, lora=s.lora,
                   lora_rank=o.lora_rank or 0, lora_targets=c.lora_targets,
                   lora_dropout=s.lora and o.lora_dropout > 0, dora=s.lora and o.dora,
                   lora_experts=s.lora and o.lora_experts,
                   lora_expert_linears=_expert_linears(c.lora_targets) if s.lora
                   else (0, 0),
                   # FSDP2's MixedPrecisionPolicy casts the adapters too
                   lora_bytes=recipe.compute_bytes if o.fsdp else c.lora_bytes,
                   qlora=o.qlora)
    s.setup_fields = fields_
    # what the model description says of soft-capping, dropout and the cache
    s.setup_model = (softcap_config(s.spec), dropout_config(s.spec), _use_cache(s.spec, o))
    s.setup_token = next(_TOKENS)  # names this setup in the layer activations' memo


_TOKENS = itertools.count()


def _setup(s: Stage) -> ActivationSetup:
    """The activation setup of the stage: :func:`_prepare_setup`'s, with the batch, the
    sequence and the model config's soft-capping, dropout and cache."""
    o = s.o
    (attn_softcap, logit_softcap), dropout, use_cache = s.setup_model
    # ``ActivationSetup(**kw)`` as its generated ``__init__`` builds it (the same fields,
    # equal and hashing alike), without the frozen class's ``object.__setattr__`` per field
    obj = object.__new__(ActivationSetup)
    d = obj.__dict__
    d.update(s.setup_fields)
    d["batch"] = o.batch
    d["seq"] = o.seq // o.cp
    d["attn_softcap"] = attn_softcap
    d["logit_softcap"] = logit_softcap
    d["dropout"] = dropout
    d["full_seq"] = o.seq
    d["use_cache"] = use_cache
    return obj


def _expert_linears(targets: frozenset[str]) -> tuple[int, int]:
    """transformers 4's per-expert adapters: (how many of gate/up, of down) are adapted."""
    return (("expert_gate" in targets) + ("expert_up" in targets), int("expert_down" in targets))


def _kinds(s: Stage) -> None:
    """Each layer kind's activations (worked out once per kind, not once per layer; memoised
    per setup, which :func:`_setup`'s token and per-call fields name)."""
    memo = memo_table(s.spec)
    acts = []
    setup = s.setup
    key = ("act", s.setup_token, 0, setup.batch, setup.seq, setup.full_seq,
           setup.attn_softcap, setup.logit_softcap, setup.dropout, setup.use_cache)
    for k, x in enumerate(s.kind_list):
        if k:
            key = (*key[:2], k, *key[3:])
        act = memo.get(key)
        if act is None:
            act = memo[key] = layer_activations(s.spec, x, setup)
        acts.append(act)
    s.acts = acts
    s.kind_total = [act.total for act in acts]


def _checkpoint(s: Stage) -> None:
    """The checkpoint policy: what each layer keeps for backward (``kept``; per kind,
    ``kept_of_kind``). none: every saved tensor; full (``torch.utils.checkpoint`` around each
    layer, transformers' gradient checkpointing): the layer's input; selective (Megatron,
    Korthikanti et al. 2022): everything but the S x S scores."""
    ckpt = s.ckpt
    s.ckpt_input = s.T * s.residual * s.spec.hidden_size // s.sp_div
    acts, kt = s.acts, s.kind_total
    if s.o.checkpointing == "op-selective":
        s.kept_of_kind = [s.ckpt_input + _op_sac_saved(s, x) if r else kt[k]
                          for k, (x, r) in enumerate(zip(s.kind_list, s.recomputed,
                                                         strict=True))]
    elif ckpt == "full":
        s.kept_of_kind = [s.ckpt_input if r else kt[k] for k, r in enumerate(s.recomputed)]
    elif ckpt == "selective":
        s.kept_of_kind = [kt[i] - act.s2 for i, act in enumerate(acts)]
    else:
        s.kept_of_kind = list(kt)
    # nothing before the first adapter needs a gradient: the first layer keeps less
    s.first_unsaved = (lora_unsaved_prefix(s.spec, s.setup)
                       if s.first and s.layers and ckpt != "full" else 0)
    if s.first_unsaved and not s.c.lora_targets & {"q", "k", "v"}:
        s.first_unsaved += _mlp_only_prefix(s, acts[s.layer_kind[0]])


def _op_sac_saved(s: Stage, layer: Any) -> int:
    """torchtitan's op-level selective checkpointing (torchtitan/distributed/
    activation_checkpoint.py ``_apply_ac_to_transformer_block``, ``selective_ac_option="op"``):
    a checkpointed layer keeps the outputs of every other ``aten.mm`` (the 1st, 3rd, ...; a
    biased projection runs ``addmm``, not counted; a MoE router's ``mm`` is recomputed and not
    counted, ``grouped_mm`` is not in the list) and of the fused SDPA kernel (its output and
    fp32 log-sum-exp). peft's adapters add their own ``mm``s: lora_A's and lora_B's."""
    spec, o, T = s.spec, s.o, s.T
    tp, h = o.tp, spec.hidden_size
    a, a_kv, d = spec.num_heads // tp, max(1, spec.num_kv_heads // tp), spec.head_dim
    q, kv = a * d, a_kv * d
    b = 2 if s.autocast else s.setup.compute_bytes
    ab = b if s.autocast else s.setup.lora_bytes
    fused_qkv, fused_gate_up = fused_projections(spec)
    mms: list[int] = []  # bytes per token of each mm's output, in order

    def linear(name: str, width: int, bias: bool) -> None:
        if not bias:
            mms.append(width * b)
        if s.lora and name in s.c.lora_targets:
            mms.extend(((o.lora_rank or 0) * ab, width * ab))  # lora_A, lora_B

    if fused_qkv:
        linear("q", q + 2 * kv, spec.qkv_bias)
    else:
        for name, width in (("q", q), ("k", kv), ("v", kv)):
            linear(name, width, spec.qkv_bias)
    linear("o", h, spec.o_bias)
    width = (spec.moe.shared_intermediate_size if layer.moe and spec.moe else
             spec.intermediate_size) // tp
    if width and (not layer.moe or (spec.moe and spec.moe.shared_intermediate_size)):
        if spec.mlp_gated and fused_gate_up:
            linear("gate", 2 * width, spec.mlp_bias)
        elif spec.mlp_gated:
            linear("gate", width, spec.mlp_bias)
            linear("up", width, spec.mlp_bias)
        else:
            linear("up", width, spec.mlp_bias)
        linear("down", h, spec.mlp_bias)
        if layer.moe and spec.moe and spec.moe.shared_expert_gate:
            mms.append(1 * b)
    saved = sum(mms[0::2])
    n_rep = a // a_kv
    sliding = layer.attention == "sliding"
    math_sdpa = (s.c.attn == "sdpa" and b == 4 and not s.autocast and n_rep > 1
                 and not (sliding or d > 256))
    if s.c.attn == "sdpa" and not math_sdpa:
        saved += q * b + 4 * a  # the kernel's output and log-sum-exp
    return T * saved


def _mlp_only_prefix(s: Stage, act: Any) -> int:
    """Adapters on the MLP only: the first layer's whole attention block needs no gradient
    (its saved tensors are not kept), nor does the second norm's input (it saves nothing);
    with dropout the gate/up adapters' masks are not kept either."""
    spec, h = s.spec, s.spec.hidden_size
    style = NORM_STYLES.get(spec.model_type, "llama")
    out = act.saved.get("attention", 0) + s.T * norm_saved(style, h, s.residual, True
                                                         ) // s.sp_div
    if s.o.lora_dropout:
        _, fused_gate_up = fused_projections(spec)
        names = ("gate",) if fused_gate_up else ("gate", "up")
        out += s.T * h * sum(1 for n in names if n in s.c.lora_targets)
    return out


def _offload(s: Stage) -> None:
    """torchtune's ``OffloadActivations`` (torchtune/training/_activation_offloading.py,
    v0.6, ``use_streams=False``): every tensor saved for backward in the model's forward that
    is not a parameter and holds at least 1024 bytes is copied to host memory (the GPU copy
    freed once nothing else holds it) and copied back when backward unpacks it; nothing from
    the LM head on is offloaded. The layers keep nothing on the GPU, nor the embedding or the
    final norm; rotary tables and masks go when the forward returns. In backward a layer's
    tensors come back as its nodes unpack them (its largest block at a time), a checkpointed
    layer's input before its recomputation."""
    T = s.T
    s.offloaded = (sum(k * n for k, n in zip(s.kept_of_kind, s.kind_count, strict=True))
                   - s.first_unsaved + s.A_emb_raw + s.head.get("final_norm", 0))
    s.kept_of_kind = [0] * len(s.kept_of_kind)
    s.first_unsaved = 0
    s.emb = {k: v for k, v in s.emb.items() if v < 1024}
    s.head = {k: v for k, v in s.head.items() if k != "final_norm"}
    del T


def kept_list(s: Stage) -> list[int]:
    """Each layer's kept activations, in order (the FSDP2 timeline walks them)."""
    kept = list(map(s.kept_of_kind.__getitem__, s.layer_kind))
    if kept:
        kept[0] -= s.first_unsaved
    return kept


def _copies(s: Stage) -> None:
    """autocast's 16-bit copies of the matmul weights (``torch.autocast``'s cast cache): cached
    until the forward ends, saved by the matmuls until each layer's backward (a layer at a
    time with full checkpointing)."""
    o, L = s.o, len(s.layers)
    s.copy_layer = 0  # every layer's copies
    s.copy_first_less = 0  # the first layer's fewer copies
    s.copies_head = 0
    if s.autocast:
        # QLoRA's NF4 linears are not autocast ops (bitsandbytes dequantizes them itself)
        lin = 0 if o.qlora else s.linear_el
        n = max(1, L)
        # the adapters' fp32 weights are cast too (and cached: they require grad); 16-bit
        # adapters (--lora-dtype bf16) are not cast
        cast_adapters = s.lora and s.c.lora_bytes == 4
        if cast_adapters:
            lin += sum(g.elements for g in s.trainable if g.part == "layer")
        s.copy_layer = 2 * lin // n if L else 0
        if s.lora and s.first and s.layers and not o.qlora:
            # nothing before the first adapter needs a gradient: the first layer's frozen
            # q/k/v matmuls keep no copy of their weights
            frozen = ("q_proj", "k_proj", "v_proj", "qkv_proj") + (
                () if s.c.lora_targets & {"q", "k", "v"} else ("o_proj",))
            qkv = sum(g.elements for g in s.groups if g.part == "layer"
                      and g.name.split(".")[0] in frozen)
            s.copy_first_less = 2 * qkv // n
        if s.last:
            # chunked loss: a frozen head's cast is not cached (autocast caches only the casts
            # of leaves that require grad), so each chunk's matmul casts and saves its own
            n = o.loss_chunks if (o.loss == "chunked" and s.lora) else 1
            # a 16-bit QLoRA head needs no cast
            n = 0 if (o.qlora and not s.fp32_stream) else n
            s.copies_head = 2 * s.V * s.spec.hidden_size * n
    copies_layers = s.copy_layer * L - s.copy_first_less
    # the last layer's copies (the first's when it is the only one)
    s.c_layer = (s.copy_layer - (s.copy_first_less if L == 1 else 0)) if L else 0
    s.copies_all = copies_layers + s.copies_head
    s.copies_fwd_loss = s.copies_fwd_mid = s.copies_all
    s.copies_per_layer = True  # the copies arrive with each layer's forward
    if s.autocast and s.lora and s.ckpt == "full" and s.layers:
        # autocast caches only the casts of tensors that require grad (the adapters'); a
        # checkpointed layer saves nothing, so the frozen base's casts go with each matmul
        adapters = 2 * sum(g.elements for g in s.trainable
                           if g.part == "layer") if cast_adapters else 0
        s.copies_fwd_loss = adapters + s.copies_head
        s.copies_fwd_mid = adapters + (s.c_layer - adapters // L) + s.copies_head
        s.copies_per_layer = False
    # Full checkpointing discards the forward's saved casts: in backward only the head's copy
    # (saved by the un-checkpointed LM head) and the recomputed layer's live.
    kept_casts = (copies_layers if s.ckpt != "full" else s.copy_layer * sum(
        n for n, r in zip(s.kind_count, s.recomputed, strict=True) if not r))
    s.copies_bwd = s.copies_head + kept_casts


def _edges(s: Stage) -> None:
    """The embedding, the LM head and the loss (HF ``ForCausalLMLoss``: the logits, their fp32
    copy, ``log_softmax``'s fp32 output; in backward the two fp32 gradients of the loss and
    of ``log_softmax``), rotary tables and masks, the token ids."""
    o, setup, T, V, h = s.o, s.setup, s.T, s.V, s.spec.hidden_size
    s.emb = embedding_activations(s.spec, setup) if s.first else {}
    logit_b = s.logit_b
    s.head = head_activations(s.spec, setup, logit_b) if s.last else {}
    s.masks = mask_bytes(s.spec, setup)  # not saved: freed when the forward returns
    s.shared = rotary_bytes(s.spec, setup) + s.masks
    s.inputs = 16 * T  # input_ids and labels (int64), alive through the step
    s.logits = T * V * logit_b if s.last else 0
    if o.loss == "chunked":
        _chunked_loss(s)
        return
    if o.loss == "liger":
        _fused_linear_loss(s)
        return
    if o.loss == "cce":
        _cce_loss(s)
        return
    s.upcast = T * V * 4 if (s.last and logit_b != 4) else 0
    if s.last and (s.autocast or s.lora):
        # The final norm's output is still a local of the model's forward during the loss
        # (under autocast the LM head saved its own 16-bit cast; LoRA's frozen head saved
        # nothing).
        s.upcast += T * h * s.residual // s.sp_div
    s.loss_grads = 2 * 4 * T * V if s.last else 0


def _liger_chunk(rows: int, hidden: int, vocab: int) -> int:
    """Liger's rows per chunk: ``next_power_of_2(cdiv(BT, cdiv(V, H)))``, at most ``BT``."""
    size = -(-rows // -(-vocab // hidden))
    return min(1 << (size - 1).bit_length(), rows)


def _fused_linear_loss(s: Stage) -> None:
    """Liger-Kernel's fused linear cross-entropy (liger_kernel/ops/
    fused_linear_cross_entropy.py, ``fused_linear_cross_entropy_forward``, v0.5): the forward
    computes the gradients too, chunk by chunk of ``next_power_of_2(cdiv(BT, cdiv(V, H)))``
    rows, so no logits outlive a chunk; it saves ``grad_input`` (T h) and ``grad_weight``
    (V h, the head's gradient, none for a frozen head) for a backward that only scales them.
    Neither the head's input nor ``log_softmax`` is saved. At the loss: the hidden state, one
    chunk's logits and its ``grad_input`` slice, the fp32 per-row loss and the shifted
    labels, beside what is saved. (Cut Cross-Entropy keeps less: not modelled.)"""
    if not s.last:
        s.upcast = s.loss_grads = 0
        return
    T, V, h, b = s.T, s.V, s.spec.hidden_size, s.setup.compute_bytes
    # grad_input / grad_weight are zeros_like the hidden state and the head's weight: under
    # autocast the fp32 final norm output and the fp32 weight
    xb = s.residual if s.autocast else b
    wb = s.recipe.weight_bytes if s.autocast else b
    head = dict(s.head)
    head.pop("lm_head_input", None)
    head.pop("log_softmax", None)
    head.pop("labels", None)
    head["liger_grad_input"] = T * h * xb
    if not s.lora:
        head["liger_grad_weight"] = V * h * wb
    s.head = head
    chunk = _liger_chunk(T, h, V)
    s.logits = 0
    s.upcast = T * h * xb + chunk * (V + h) * b + 4 * T + 8 * T
    s.loss_grads = 0


def _cce_loss(s: Stage) -> None:
    """Cut Cross-Entropy (apple/ml-cross-entropy, cut_cross_entropy/cce.py
    ``LinearCrossEntropyFunction``, as its transformers patch calls it: ``shift=True``,
    ``filter_eps="auto"``): no logits ever exist. Forward: ``_build_flat_valids``
    (utils.py) turns the N = B (S - 1) shifted labels into an int64 row index (``nonzero``'s
    int64 [N, 2], its int32 copy, their sum), ``cce_lse_forward_kernel`` the fp32
    log-sum-exp (N) and the fp32 per-vocabulary mean logit (V, for the gradient filter),
    ``indexed_neg_dot_forward_kernel`` the fp32 target logits (N); saved: the hidden state
    ``e`` (the head's 16-bit input), the lse, the valids, the mean logits. Backward
    (cce_backward.py ``cce_backward_kernel``): ``argsort`` of the mean logits (int64, to
    int32), ``de = zeros_like(e)`` (T h), ``dc = zeros_like(c)`` (V h, the head's gradient;
    none for a frozen head), int32 locks of ``cdiv(rows, 128) x cdiv(h, 64)``; the logits'
    blocks live in registers. Needs 16-bit ``e`` and ``c`` (its backward asserts them)."""
    if not s.last:
        s.upcast = s.loss_grads = 0
        return
    o, T, V, h, b = s.o, s.T, s.V, s.spec.hidden_size, s.setup.compute_bytes
    N = o.batch * (o.seq - 1)  # the shifted labels, all valid
    head = dict(s.head)
    head.pop("log_softmax", None)
    head.pop("labels", None)  # CCE reads the unshifted labels (shift=True): no copy
    head["lm_head_input"] = T * h * b  # e, saved (also under LoRA's frozen head)
    head["cce_lse"] = 4 * N
    head["cce_valids"] = 8 * N
    head["cce_logit_avg"] = 4 * V
    s.head = head
    s.logits = 0
    # beside what it saves: nonzero's int64 [N, 2] and its int32 copy, before the int64
    # valids, lse and mean logits exist; then the fp32 target logits (N)
    s.upcast = max(24 * N - (8 * N + 4 * N + 4 * V), 4 * N)
    locks = 4 * -(-h // 64) * (-(-N // 128) + (0 if s.lora else -(-V // 128)))
    grads = T * h * b + (0 if s.lora else V * h * b)
    s.loss_grads = max(12 * V, 4 * V + grads + locks)


def _chunked_loss(s: Stage) -> None:
    """torchtune's chunked output and ``CEWithChunkedOutputLoss``
    (torchtune/modules/loss/ce_chunked_output_loss.py, modules/transformer.py
    ``chunked_output``, v0.6): the LM head runs on ``loss_chunks`` pieces of the last hidden
    state (``tensor_split`` along the sequence), the list of 16-bit logits chunks (T V b in
    all) is held until the loss is done, and the loss upcasts one chunk at a time: one
    chunk's fp32 copy at a time, every chunk's ``log_softmax`` output saved (4 T V, as HF);
    the model's output (the fp32 final norm) is dropped before the loss. Backward: one
    chunk's two fp32 gradients at a time."""
    o = s.o
    seq = o.seq // o.cp
    chunk = o.batch * -(-seq // o.loss_chunks)  # the first (largest) chunk's tokens
    s.upcast = chunk * s.V * 4 if (s.last and s.logit_b != 4) else 0
    s.loss_grads = 2 * 4 * chunk * s.V if s.last else 0


def prepare(s: Stage) -> None:
    """What the activation side needs that does not depend on the batch, the sequence or the
    model's config (after :func:`memfit.step.states.build`): the setup's fixed fields, the
    vocabulary on the rank, the logits' dtype, the micro-batches in flight, autocast's
    copies, QLoRA's dequantized weight."""
    o = s.o
    _prepare_setup(s)
    s.V = -(-s.spec.vocab_size // o.tp)
    s.sp_div = o.tp if o.sp else 1
    b = s.recipe.compute_bytes
    # the logits' dtype: QLoRA's LM head is fp32 (peft), but an autocast op all the same
    s.logit_b = 4 if (b == 4 or (s.fp32_stream and not s.autocast)) else b
    s.inflight = min(o.pp - s.stage, o.microbatches) if o.pp > 1 else 1
    _copies(s)
    # QLoRA: bitsandbytes dequantizes each NF4 weight to 16 bits for its matmul (forward, and
    # again in backward for the input gradient): one layer's largest weight at a time.
    s.dequant = 2 * max((g.numel for g in s.groups if g.linear and g.part == "layer"
                         and len(g.shape) == 2), default=0) if o.qlora else 0


def build(s: Stage) -> None:
    """Every activation-side quantity of the stage for its batch and sequence (after
    :func:`prepare`)."""
    o = s.o
    s.setup = _setup(s)
    s.T = s.setup.tokens
    _kinds(s)
    _checkpoint(s)
    _edges(s)
    inflight = s.inflight
    s.A_emb_raw = sum(s.emb.values())
    if o.activation_offload:
        _offload(s)
    s.A_layers = sum(k * n for k, n in zip(s.kept_of_kind, s.kind_count, strict=True)
                     ) - s.first_unsaved
    s.A_emb = sum(s.emb.values())
    s.A_head = sum(s.head.values())
    s.A_all = inflight * (s.A_layers + s.A_emb + s.shared) + s.A_head + s.inputs
    # what backward starts with: the masks go with the forward, unless checkpointing keeps
    # them as inputs of the layers it recomputes
    s.A_bwd = s.A_all - (inflight * s.shared if o.activation_offload else
                         0 if s.ckpt == "full" else inflight * s.masks)
    # A checkpointed layer's forward saves nothing: at most its attention's or its MLP's
    # tensors are alive at once, beside the transient.
    full = s.ckpt == "full"
    s.fwd_layer_t = max((act.forward_transient + (ckpt_working_set(act) if full and r else 0)
                         for act, r in zip(s.acts, s.recomputed, strict=True)),
                        default=0) + s.dequant
    # the DynamicCache's copies that backward does not save live until the output is dropped
    s.cache_of_kind = [inflight * act.cache_forward for act in s.acts]
    s.cache_fwd = sum(c * n for c, n in zip(s.cache_of_kind, s.kind_count, strict=True))
