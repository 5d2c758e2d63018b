"""Training activations: what autograd saves for backward, layer by layer, from the real code.

Each formula lists the tensors a transformers 5.x decoder layer saves for its backward (read
off ``modeling_<type>.py`` and checked tensor by tensor with ``saved_tensors_hooks`` on the
tracer), per token, in bytes. Symbols: T = B*S tokens on this rank, h hidden, a (a_kv) query
(KV) heads on this rank, d head dim, q = a*d, kv = a_kv*d, I MLP width (per TP rank), V
vocabulary (per TP rank), E experts, k experts per token, I_e expert width; b the compute
dtype's bytes (2, or 4 for fp32), b_r the residual stream's (4 under autocast or fp32).

Per layer, per token (llama-style RMSNorm, SwiGLU, SDPA, 16-bit):

* each RMSNorm: its input in fp32 (4h: ``x.to(float32)`` saved by ``pow``), 1/rms (4), the
  normalised value (b_r h, saved by ``weight * x``);
* q/k/v's input (b h; under autocast each projection saves its own 16-bit cast, 2h each);
* attention (SDPA, flash/memory-efficient kernels): rotated q and k, v, the output
  (b (2q + 2kv)) and the fp32 log-sum-exp (4a); eager: the fp32 softmax (4aS), its 16-bit
  cast (b aS), q, k and v repeated to a heads, the transposed output;
* SwiGLU: gate output, act(gate), up output, their product (4 b I);
* o_proj's input is the attention output (shared); down's input the product (shared).

That is ``S*B*h*(34 + 5*a*S/h)`` bytes per layer in Korthikanti et al. (2022, eq. 1) for a
GPT layer without flash attention and with dropout masks; :func:`korthikanti_per_layer` is
kept as the cross-check and ``docs/training.md`` explains the differences (fp32 norm inputs,
no dropout, SwiGLU's 4I, the kernel's log-sum-exp instead of the S x S softmax).

Where a GPU run differs from the tracer's CPU run: LayerNorm's mean/rstd are fp32 on CUDA
(the CPU kernel keeps them in the input dtype), dropout masks are 1-byte bool (the tracer
calls ``native_dropout`` like CUDA), SDPA's log-sum-exp is (B, a, S) fp32 on both (the CUDA
memory-efficient kernel pads S to a multiple of 32).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from ..arch import LayerSpec, ModelSpec
from .model_states import fused_projections
from .weights import memo

__all__ = [
    "ActivationSetup", "LayerActivations", "layer_activations", "head_activations",
    "embedding_activations", "rotary_bytes", "mask_bytes", "korthikanti_per_layer",
    "dropout_config", "softcap_config", "lora_unsaved_prefix", "norm_saved", "NORM_STYLES",
    "NO_SDPA",
]

# How each family's RMSNorm computes (transformers 5.x):
# "llama": w * x_norm.to(dtype)  (x in fp32, x_norm cast back, weight in param dtype)
# "gemma": (x_norm * (1 + w.float())).type_as(x)  (all in fp32, output cast back)
# "olmo2": (w * x_norm).to(dtype)  (the product in fp32)
# "layernorm": F.layer_norm (GPT-2, GPT-NeoX)
NORM_STYLES: dict[str, str] = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma", "olmo2": "olmo2",
    "gpt_oss": "olmo2",
    "gpt2": "layernorm", "gpt_neox": "layernorm",
}

# Families whose rotary embedding concatenates the rotated and pass-through halves
# (partial rotary): q is (B, a, S, d)-contiguous, so the attention output is copied for o_proj.
_ROTARY_CAT = frozenset({"gpt_neox", "phi3"})

def softcap_config(spec: ModelSpec) -> tuple[bool, bool]:
    """(attention, final logits) tanh soft-capping (Gemma 2's; read from the config by
    :func:`memfit.arch.family_softcap`)."""
    return spec.softcap  # type: ignore[return-value]


#: Families transformers cannot run with SDPA (Gemma 2's soft-capping): they fall back to
#: eager attention, as ``from_pretrained`` does when no implementation is named.
NO_SDPA = frozenset({"gemma2", "gpt_oss"})


def dropout_config(spec: ModelSpec) -> tuple[bool, bool, bool]:
    """(embedding, residual, attention) dropout active (read from the config with the
    family's transformers defaults by :func:`memfit.arch.family_dropout`)."""
    return spec.dropout  # type: ignore[return-value]


@dataclass(frozen=True)
class ActivationSetup:
    """Everything the activation formulas need besides the model."""

    batch: int  # B, micro-batch per rank
    seq: int  # S, tokens per sequence on this rank (after context parallelism)
    compute_bytes: int = 2  # b
    residual_bytes: int = 2  # b_r
    autocast: bool = False
    attn: str = "sdpa"
    tp: int = 1
    sp: bool = False
    ep: int = 1
    cp: int = 1
    lora: bool = False  # frozen base linears with trainable adapters
    lora_rank: int = 0
    # the projections with adapters, in memfit's names (TensorGroup.lora); see LORA_ALL
    lora_targets: frozenset[str] = frozenset(("q", "k", "v", "o", "gate", "up", "down"))
    lora_dropout: bool = False  # peft lora_dropout > 0: an nn.Dropout on each adapter's input
    dora: bool = False  # peft use_dora: weight-decomposed adapters
    lora_experts: bool = False  # adapters on the fused 3-D expert tensors (target_parameters)
    # transformers 4's per-expert nn.Linear adapters: (on gate/up, on down) per routed copy
    lora_expert_linears: tuple[int, int] = (0, 0)
    lora_bytes: int = 4  # the adapters' dtype: fp32 (peft's default) or 16-bit
    qlora: bool = False
    dropout: tuple[bool, bool, bool] = (False, False, False)
    full_seq: int = 0  # S before context parallelism (K/V length); 0 = seq
    attn_softcap: bool = False  # Gemma 2: tanh soft-capping of the attention scores
    logit_softcap: bool = False  # Gemma 2: tanh soft-capping of the logits
    use_cache: bool = False  # transformers builds a DynamicCache in the training forward

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    @property
    def kv_seq(self) -> int:
        return self.full_seq or self.seq


@dataclass(frozen=True)
class LayerActivations:
    """One decoder layer: bytes saved for backward by part, and its transient peaks.

    ``attn_backward``: eager (and the fp32 math kernel) at the softmax's backward: its two fp32
    S x S gradients less what the layer's backward has freed by then (the MLP, the second
    norm, o_proj's input, the probabilities' 16-bit cast, v); may be negative.
    ``cache_forward``: with ``use_cache`` (transformers' default outside checkpointing) the
    layer's ``DynamicCache`` entries (``torch.cat`` copies of K and V) that backward does not
    save; the cache holds them until the model's output is dropped, after the loss.
    ``forward_transient``: the most the layer's forward holds beyond what it saves (scores
    before the softmax, the norm's fp32 product). ``backward_transient``: the most its
    backward holds beyond the saved tensors still alive (gradients of the MLP's intermediate
    tensors, of the scores). ``s2``: the saved S x S part (what selective checkpointing drops).
    """

    saved: Mapping[str, int] = field(default_factory=dict)
    forward_transient: int = 0
    backward_transient: int = 0
    s2: int = 0
    cache_forward: int = 0  # the DynamicCache's copies nothing saves: alive to the forward's end
    attn_backward: int = 0  # the scores' backward beyond the saved tensors still alive then

    @property
    def total(self) -> int:
        return sum(self.saved.values())


def _norm_saved(style: str, width: int, b_in: int, frozen: bool = False) -> int:
    """Bytes per token one norm over ``width`` saves for backward.

    llama: 4w (x in fp32) + 4 (rstd) + b_in w (normalised, for the weight's gradient);
    gemma, olmo2: 4w + 4 + 4w (the normalised value stays fp32);
    layernorm: its input b_in w + mean and rstd (2 x fp32 on CUDA).
    A frozen weight (LoRA) does not need the normalised value.
    """
    if style == "layernorm":
        return b_in * width + 8
    keep = 0 if frozen else (b_in * width if style == "llama" else 4 * width)
    return 4 * width + 4 + keep


def norm_saved(style: str, width: int, b_in: int, frozen: bool = False) -> int:
    """Bytes per token a norm saves (see :func:`_norm_saved`)."""
    return _norm_saved(style, width, b_in, frozen)


def lora_unsaved_prefix(spec: ModelSpec, s: ActivationSetup) -> int:
    """LoRA: what the first decoder layer does not save (bytes, all tokens on the rank).

    The embedding is frozen, so nothing requires grad before the first adapter: the first
    layer's input norm saves nothing (its fp32 input and 1/rms, 4h + 4 per token); the frozen
    q/k/v matmuls keep no weight cast either (counted with autocast's casts in
    ``memfit.step.layers``). OLMo 2 normalises after attention, not before: nothing to drop.
    With ``lora_dropout`` the q/k/v adapters' dropout masks are not saved (their input does
    not require grad; lora_A still saves the dropped copy). Without an adapter on k_proj, k
    does not require grad in the first layer: the eager scores' matmul (and the math SDPA
    kernel's, on its scaled q) saves no q for k's gradient.
    """
    if not s.lora or spec.model_type == "olmo2":
        return 0
    style = NORM_STYLES.get(spec.model_type, "llama")
    h = spec.hidden_size
    out = s.tokens * _norm_saved(style, h, s.residual_bytes, True) // (s.tp if s.sp else 1)
    fused_qkv, _ = fused_projections(spec)
    qkv = ("q",) if fused_qkv else ("q", "k", "v")
    if s.lora_dropout:
        out += s.tokens * h * _adapted(s, qkv)
    if not fused_qkv and "k" not in s.lora_targets and spec.mla is None:
        a, a_kv, d = spec.num_heads // s.tp, max(1, spec.num_kv_heads // s.tp), spec.head_dim
        layer = spec.layers[0]
        sliding = (layer.attention == "sliding" and layer.window is not None
                   and s.kv_seq >= layer.window)
        b = 2 if s.autocast else s.compute_bytes
        math_sdpa = (s.attn == "sdpa" and b == 4 and not s.autocast and a > a_kv
                     and not (sliding or d > 256))
        if s.attn == "eager" or math_sdpa:
            out += s.tokens * b * a * d
    return out


def _adapter_input_bytes(s: ActivationSetup) -> int:
    """Bytes per element of what a LoRA adapter saves (its input for lora_A, lora_A's output
    for lora_B). peft keeps the adapters in fp32 (``autocast_adapter_dtype``) and casts the
    input to their dtype (``_cast_input_dtype``): 4 bytes; under autocast the matmul casts
    that back to 16 bits and saves the cast: 2 bytes. The frozen base matmul saves no input."""
    return 2 if s.autocast else s.lora_bytes


def _adapter_inputs(s: ActivationSetup, width: int, n_proj: int, in_bytes: int) -> int:
    """Bytes per token the adapters of ``n_proj`` projections reading one ``width``-wide
    input save: each casts the input to its own copy, unless the input already has the
    adapters' dtype (no cast, no autocast: one shared tensor); lora_B's input each.

    With ``lora_dropout`` > 0 each adapter has its own ``nn.Dropout`` (peft
    tuners/lora/layer.py, ``LoraLayer.update_layer``: ``lora_dropout[adapter_name]``; the
    forward is ``lora_B(lora_A(dropout(x)))``): dropout saves its bool mask (1 byte per
    element) and lora_A the dropped copy, its own, whatever the dtypes; the cast it read is
    then saved by no one."""
    if n_proj == 0:
        return 0
    ad = _adapter_input_bytes(s)
    if s.lora_dropout:
        return (ad + 1) * width * n_proj + ad * s.lora_rank * n_proj
    shared = in_bytes == ad and (not s.autocast or s.lora_bytes == ad)
    return ad * width * (1 if shared else n_proj) + ad * s.lora_rank * n_proj


def _dora_saved(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup) -> int:
    """DoRA per token (peft tuners/lora/dora.py ``DoraLinearLayer.forward``):
    ``(mag_norm_scale - 1) * base_result + mag_norm_scale * lora_result * scaling`` saves the
    base projection's output (compute dtype) and the adapter's output (the adapters' dtype, 16
    bits under autocast) for the magnitude's gradient, for every adapted projection; the
    weight norm is detached (no graph)."""
    tp, h = s.tp, spec.hidden_size
    a, a_kv, d = spec.num_heads // tp, max(1, spec.num_kv_heads // tp), spec.head_dim
    q, kv = a * d, a_kv * d
    fused_qkv, fused_gate_up = fused_projections(spec)
    width = (spec.moe.shared_intermediate_size if layer.moe and spec.moe else
             spec.intermediate_size) // tp
    outs = {"q": q + 2 * kv if fused_qkv else q, "k": 0 if fused_qkv else kv,
            "v": 0 if fused_qkv else kv, "o": h,
            "gate": 2 * width if fused_gate_up else width, "up": 0 if fused_gate_up else width,
            "down": h}
    if layer.moe and spec.moe is not None and not spec.moe.shared_intermediate_size:
        outs.update(gate=0, up=0, down=0)
    ad = 2 if s.autocast else s.lora_bytes
    b = 2 if s.autocast else s.compute_bytes
    return sum(w for name, w in outs.items() if name in s.lora_targets) * (b + ad)


def _adapted(s: ActivationSetup, names: tuple[str, ...]) -> int:
    """How many of the projections ``names`` (memfit's LoRA names) have adapters."""
    return sum(1 for n in names if n in s.lora_targets)


def _act_saved_tensors(activation: str) -> int:
    """Tensors of width I an MLP activation saves: silu, gelu (exact or tanh kernel), relu
    save their input (1); GPT-2's ``gelu_new`` is written in Python and saves 4 (x, 0.5x,
    tanh(...), 1 + tanh(...))."""
    return 4 if activation in ("gelu_new", "gelu_fast", "gelu_python") else 1


@lru_cache(maxsize=4096)
def _mla_attention(spec: ModelSpec, s: ActivationSetup, a: int, h: int, b: int) -> int:
    """Multi-head latent attention (DeepSeek V2/V3), bytes per token saved."""
    assert spec.mla is not None
    m = spec.mla
    q_dim = a * m.qk_head_dim
    kv_dim = a * m.qk_head_dim
    v_dim = a * m.v_head_dim
    # q_a (or q), kv_a read the normed input; q_b / kv_b read the low-rank latents (their
    # RMSNorms in fp32), the rotary half is rotated, then q, k, v enter SDPA.
    inp = (2 * 2 * h if s.autocast else b * h)
    lat = 0
    if m.q_lora_rank is not None:
        lat += _norm_saved("llama", m.q_lora_rank, b) + b * m.q_lora_rank
    lat += _norm_saved("llama", m.kv_lora_rank, b) + b * m.kv_lora_rank
    S_kv = s.kv_seq
    if s.attn == "eager":
        # q = cat(q_nope, q_pe) and the filled key tensor (matmul views both); v is a view
        # of kv_b_proj's output, which matmul copies with B > 1 (folding B and heads) and
        # views whole with B = 1; the fp32 softmax and its cast back; the output's
        # transposed copy for o_proj
        s2 = 4 * a * S_kv + (b * a * S_kv if b != 4 else 0)
        v_saved = b * v_dim if s.batch > 1 else b * a * (m.qk_nope_head_dim + m.v_head_dim)
        core = b * (q_dim + kv_dim) + v_saved + s2 + b * v_dim
    else:
        # d_qk != d_v: CUDA runs a fused kernel (memory-efficient / cuDNN; the tracer's
        # memfit::fused_attention), which saves q = cat(q_nope, q_pe), the filled key
        # tensor, v (a view of kv_b_proj's output, which it keeps whole: k_nope and v),
        # its output and an fp32 log-sum-exp; o_proj saves the output's contiguous copy.
        s2 = 0
        core = (b * (q_dim + kv_dim) + b * a * (m.qk_nope_head_dim + m.v_head_dim)
                + 2 * b * v_dim + 4 * a)
    return inp + lat + core


def _eager_attention(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup, a: int, q: int,
                     kv: int, b: int, n_rep: int, fused_qkv: bool, rotary: bool,
                     attn_drop: bool) -> tuple[int, int, int]:
    """Eager attention per token: (q, k, v and output kept, the S x S part, the
    probabilities' 16-bit cast)."""
    s2 = probs_cast = 0
    S_kv = s.kv_seq
    if layer.attention == "sliding" and layer.window:
        S_kv = s.kv_seq  # eager computes the full S x S scores, masked
    kv_eager = b * kv * 2 if n_rep == 1 else b * q * 2  # repeat_kv copies
    # q and repeated k, v; the transposed contiguous output (o_proj's input)
    core = b * q + kv_eager + b * q
    if fused_qkv and not rotary:
        core = b * (q + 2 * kv) + b * q
        if s.use_cache and s.batch == 1:
            # matmul views q (the fused output stays whole) and saves the cache's
            # copies of k and v; with B > 1 they replace the copies matmul made
            core += 2 * b * kv
    elif fused_qkv:
        # v is a slice of the fused output: with B = 1 matmul views it (the whole
        # fused output stays alive); with B > 1 folding (B, a) needs a copy of v only.
        # With the cache, matmul gets the cache's contiguous copy of v instead.
        v_saved = b * (q + 2 * kv) if (s.batch == 1 and not s.use_cache) else b * kv
        core = b * (q + kv) + v_saved + b * q
    # GPT-2 softmaxes in the input dtype, others in fp32; autocast runs softmax in fp32
    softmax_fp32 = spec.model_type != "gpt2" or s.autocast
    sm = (4 if softmax_fp32 else b) * a * S_kv
    cast = b * a * S_kv if (softmax_fp32 and b != 4) else 0
    if spec.attention_sinks:
        # gpt-oss: softmax over [scores, sink] in the scores' dtype, and the argmax
        # of the running max (int64) saved for backward
        sm = (4 if s.autocast else b) * a * (S_kv + 1) + 8 * a
        cast = 2 * a * S_kv if s.autocast else 0  # autocast's 16-bit copy for @ v
    if attn_drop:
        s2 = sm + a * S_kv + b * a * S_kv  # softmax out, mask, dropped weights
    else:
        s2 = sm + cast
        probs_cast = cast
    if s.attn_softcap:
        s2 += b * a * S_kv  # tanh(scores / cap), saved by tanh's backward
    return core, s2, probs_cast


def _attn_inputs(s: ActivationSetup, h: int, b: int, br: int, fused_qkv: bool,
                 lora: bool) -> int:
    """Per token: what the q, k, v projections save of their input (adapters' inputs
    under LoRA, autocast's 16-bit copies, else the input itself)."""
    n_in = 1 if fused_qkv else 3
    if lora:
        return _adapter_inputs(s, h, _adapted(s, ("q",) if fused_qkv else ("q", "k", "v")),
                               br)
    if s.autocast:
        return 2 * h * n_in
    return b * h


def _qk_norm_bytes(spec: ModelSpec, style: str, q: int, kv: int, a: int, a_kv: int, b: int,
                   lora: bool) -> int:
    """Per token: what the q and k norms save (per head or over the full width)."""
    if spec.qk_norm == "head":
        nstyle = "gemma" if style == "gemma" else "llama"
        return ((_norm_saved(nstyle, q, b, lora) - 4 + 4 * a)
                + (_norm_saved(nstyle, kv, b, lora) - 4 + 4 * a_kv))
    if spec.qk_norm == "full":
        return _norm_saved(style, q, b, lora) + _norm_saved(style, kv, b, lora)
    return 0


def _sdpa_qkv(s: ActivationSetup, q: int, kv: int, b: int, fused_qkv: bool,
              rotary: bool) -> int:
    """Per token: the q, k, v tensors SDPA saves (and the fused output they keep alive)."""
    if not fused_qkv:
        return b * (q + 2 * kv)
    if s.use_cache:
        # cache.update returns torch.cat copies of k and v, which SDPA saves: with
        # rotary nothing keeps the fused output alive any more (q and k are rotated
        # copies); GPT-2's q is still a view of it, and the two copies come on top.
        return b * (q + 2 * kv) if rotary else b * (q + 4 * kv)
    return b * (q + 2 * kv) + (b * (q + kv) if rotary else 0)


def _sdpa_extras(spec: ModelSpec, s: ActivationSetup, q: int, kv: int, a_kv: int, d: int,
                 b: int, n_rep: int, sliding: bool) -> int:
    """Per token: what a fused SDPA kernel saves beyond q, k, v, its output and lse."""
    extra = 0
    if sliding:
        # SDPA turns the boolean window mask into an additive one in q's dtype
        # (convert_boolean_attn_mask) and saves it for backward: B x S x S per layer.
        extra += b * s.kv_seq
    if n_rep > 1 and a_kv > 1 and (sliding or d > 256):
        # transformers passes enable_gqa only without a mask and for d <= 256
        # (use_gqa_in_sdpa); otherwise repeat_kv copies k and v to a heads, and SDPA
        # saves the copies instead (with one KV head the expand stays a view).
        extra += 2 * b * (q - kv)
    if spec.model_type in _ROTARY_CAT:
        # q comes out of torch.cat (partial rotary): SDPA's output follows q's
        # (B, a, S, d) layout and ``transpose(1, 2).contiguous()`` copies it for o_proj.
        extra += b * q
    return extra


def _o_proj_lora(s: ActivationSetup, q: int, b: int, lora: bool, copy_counted: bool) -> int:
    """Per token: the change LoRA makes to what o_proj saves (its adapter's inputs, or the
    frozen o_proj's input no longer saved)."""
    if lora and "o" in s.lora_targets and s.lora_dropout:
        # o_proj's adapter: dropout's mask and its dropped copy; the eager and math
        # kernels' transposed copy (counted above, b q) is then saved by no one
        return _adapter_inputs(s, q, 1, b) - (b * q if copy_counted else 0)
    if lora and "o" in s.lora_targets:
        # o_proj's adapter saves its input (and lora_B's): where that is a cast, the
        # cast; where it is the attention output itself, nothing more. The eager and
        # math kernels' transposed copy (counted above, b q) is then saved by no one.
        ad = _adapter_input_bytes(s)
        # (under autocast 16-bit adapters read the 16-bit output as it is: no cast)
        cast = ad != b or (s.autocast and s.lora_bytes != ad)
        return ad * s.lora_rank + (
            (ad - b) * q if copy_counted else (ad * q if cast else 0))
    if lora and copy_counted:
        return -b * q  # a frozen o_proj without an adapter saves no input
    return 0


def _std_attention(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup, a: int,
                   a_kv: int, d: int, h: int, br: int, style: str, fused_qkv: bool,
                   sliding: bool, attn_drop: bool, lora: bool) -> tuple[int, int, int]:
    """Multi-head / grouped-query attention per token: (saved bytes, the eager
    probabilities' 16-bit cast, the S x S part)."""
    q, kv = a * d, a_kv * d
    # autocast runs the attention in 16 bits even where the rest of the layer is fp32
    # (QLoRA's fp32 MLP: SDPA is an autocast op, bitsandbytes' matmul is not)
    b = 2 if s.autocast else s.compute_bytes
    inp = _attn_inputs(s, h, b, br, fused_qkv, lora)
    qk_norm = _qk_norm_bytes(spec, style, q, kv, a, a_kv, b, lora)
    rotary = spec.rope_dim > 0
    n_rep = a // a_kv
    s2 = 0
    probs_cast = 0  # eager: the probabilities' 16-bit cast, saved by probs @ v
    # CUDA has no fused fp32 SDPA kernel for grouped KV heads (enable_gqa): it runs the
    # math kernel, which repeats K/V, scales q and saves the fp32 softmax (the tracer
    # calls the same kernel; memfit/trace/compat.py).
    math_sdpa = (s.attn == "sdpa" and b == 4 and not s.autocast and n_rep > 1
                 and not (sliding or d > 256))
    if math_sdpa:
        s2 = 4 * a * s.kv_seq
        attn_bytes = inp + qk_norm + b * q + 2 * b * q + b * q + s2
    elif s.attn == "eager":
        core, s2, probs_cast = _eager_attention(spec, layer, s, a, q, kv, b, n_rep,
                                                fused_qkv, rotary, attn_drop)
        attn_bytes = inp + qk_norm + core + s2
    else:
        lse = 4 * a
        attn_bytes = (inp + qk_norm + _sdpa_qkv(s, q, kv, b, fused_qkv, rotary) + b * q + lse
                      + _sdpa_extras(spec, s, q, kv, a_kv, d, b, n_rep, sliding))
    copy_counted = s.attn == "eager" or math_sdpa
    attn_bytes += _o_proj_lora(s, q, b, lora, copy_counted)
    return attn_bytes, probs_cast, s2


def _transients(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup,
                saved: dict[str, int], a: int, a_kv: int, d: int, h: int, br: int,
                style: str, fused_qkv: bool, sliding: bool, lora: bool, probs_cast: int,
                sp_div: int) -> tuple[int, int, int]:
    """(forward transient, backward transient, eager attention backward) of a layer."""
    T, tp, b = s.tokens, s.tp, s.compute_bytes
    q, kv, n_rep = a * d, a_kv * d, a // a_kv
    I = (spec.intermediate_size // tp) if not layer.moe else (
        spec.moe.expert_intermediate_size * spec.moe.top_k // tp if spec.moe else 0)
    fwd_t = T * 4 * h  # the norm's fp32 product before the cast back
    if lora and spec.mlp_gated and not layer.moe:
        # LoRA projections: the base output, the adapter's output and its scaled copy (in
        # the adapter dtype a_b) are alive together. up_proj: beyond the up output and
        # down's adapter input saved later, (b + 2 a_b - b - a_b) I = a_b I; down_proj: the
        # unsaved product b I and (b + 2 a_b) h.
        ad = _adapter_input_bytes(s)
        if "up" in s.lora_targets:
            fwd_t = max(fwd_t, T * ad * I)
        # a frozen down_proj without an adapter: the unsaved product and its output
        fwd_t = max(fwd_t, T * (b * I + ((b + 2 * ad) * h if "down" in s.lora_targets
                                        else b * h)))
    bwd_t = T * (3 * b * I + 2 * br * h)  # dL/d(product), d(act), d(up); residual gradients
    if spec.mlp_gated and not layer.moe and not lora:
        # the product (saved by down_proj for its weight's gradient) is freed when down_proj's
        # backward returns, before the product's backward allocates d(act) and d(up)
        bwd_t -= T * b * I
    attn_bwd = 0
    if s.attn == "eager" or (spec.mla is None and s.attn == "sdpa" and b == 4
                             and not s.autocast and a > a_kv and d <= 256 and not sliding):
        S_kv = s.kv_seq
        # forward: the masked scores are alive while softmax writes its (saved) output;
        # backward: softmax's fp32 gradient in and out (2 x 4 a S) beside the saved softmax.
        fwd_t = max(fwd_t, T * a * S_kv * (4 if s.autocast else b))
        scores_bwd = T * a * S_kv * 2 * 4
        plain = (spec.mla is None and not fused_qkv and not any(s.dropout)
                 and not spec.attention_sinks and not s.attn_softcap)
        if plain:
            # the layer's backward reaches the softmax after the MLP's, the second norm's,
            # o_proj's and probs @ v's: their saved tensors are gone by then
            v_saved = b * kv if (n_rep == 1 and s.attn == "eager") else b * q
            # o_proj's input, or (LoRA) its adapter's copy and lora_B's input
            o_in = (_adapter_inputs(s, q, 1, b) if "o" in s.lora_targets else 0
                    ) if lora else b * q
            freed = (saved.get("mlp", 0) + saved.get("moe", 0)
                     + _norm_saved(style, h, br, lora) * T // sp_div
                     + T * (o_in + probs_cast + v_saved))
            # beside the residual's gradient and v's (repeated) gradient; the MLP's and
            # o_proj's weight gradients, already made, are added by the caller
            attn_bwd = scores_bwd - freed + T * (br * h + b * q)
        else:
            bwd_t = max(bwd_t, scores_bwd)
    return fwd_t, bwd_t, attn_bwd


def layer_activations(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup) -> LayerActivations:
    """What one decoder layer saves for backward (no checkpointing), in bytes, by part.

    Closed forms per token (see the module docstring for symbols), T tokens in all:
    norms sum(_norm_saved); qkv input b h (autocast: 2h per separate projection);
    attention b(q + kv) rotated + b kv (v; fused q/k/v keeps the whole b(q + 2kv) output
    alive) + b q (output) + 4a (lse); MLP 4 b I (gated) or (n_act + 1) b I; MoE router 4E + 8k
    + 4k (+4), dispatch 24k + routed experts k(2h + 4I_e) b + k*4 (routing weights);
    dropout masks 1 byte per element. TP divides heads, I and (with SP) the norms' inputs.
    """
    T = s.tokens
    tp = s.tp
    b, br = s.compute_bytes, s.residual_bytes
    h = spec.hidden_size
    sp_div = tp if s.sp else 1
    style = NORM_STYLES.get(spec.model_type, "llama")
    a = spec.num_heads // tp
    a_kv = max(1, spec.num_kv_heads // tp)
    d = spec.head_dim
    fused_qkv, fused_gate_up = fused_projections(spec)
    emb_drop, resid_drop, attn_drop = s.dropout
    lora = s.lora
    saved: dict[str, int] = {}
    # A sliding window only changes anything once the keys reach it: transformers skips the
    # mask (and SDPA runs with is_causal) while kv_length < window (_ignore_causal_mask_sdpa).
    sliding = layer.attention == "sliding" and layer.window is not None and s.kv_seq >= layer.window

    # -- norms ------------------------------------------------------------------------------
    n_norms = spec.norms_per_layer
    if spec.parallel_residual:  # GPT-NeoX: both norms read the same residual (saved once)
        norm_bytes = _norm_saved(style, h, br, lora) + (_norm_saved(style, h, br, lora) - br * h)
    else:
        norm_bytes = n_norms * _norm_saved(style, h, br, lora)
    saved["norms"] = norm_bytes * T // sp_div

    # -- attention ------------------------------------------------------------------------------
    if spec.mla is not None:
        saved["attention"] = T * _mla_attention(spec, s, a, h, b)
        s2 = probs_cast = 0
    else:
        attn_bytes, probs_cast, s2 = _std_attention(spec, layer, s, a, a_kv, d, h, br, style,
                                                    fused_qkv, sliding, attn_drop, lora)
        saved["attention"] = T * attn_bytes
    b = s.compute_bytes
    if resid_drop:
        saved["dropout_masks"] = 2 * T * h // sp_div  # after attention and after the MLP

    # -- MLP ----------------------------------------------------------------------------
    if layer.moe and spec.moe is not None:
        saved["moe"] = T * _moe_saved_per_token(spec, s)
        if spec.moe.shared_intermediate_size:
            saved["mlp"] = T * _mlp_saved_per_token(spec, spec.moe.shared_intermediate_size // tp,
                                                    s, fused_gate_up)
            if spec.moe.shared_expert_gate:
                # sigmoid(gate) and the shared output (+ the gate's own 16-bit input cast)
                saved["mlp"] += T * (b + b * h + (2 * h if s.autocast and not lora else 0))
    else:
        saved["mlp"] = T * _mlp_saved_per_token(spec, spec.intermediate_size // tp, s,
                                                fused_gate_up)

    fwd_t, bwd_t, attn_bwd = _transients(spec, layer, s, saved, a, a_kv, d, h, br, style,
                                         fused_qkv, sliding, lora, probs_cast, sp_div)
    if lora and s.dora:
        saved["dora"] = T * _dora_saved(spec, layer, s)
    if lora and s.lora_experts and layer.moe and spec.moe is not None:
        # peft's ParamWrapper (tuners/lora/layer.py) parametrizes each fused expert tensor as
        # W + einsum(lora_B, lora_A) * scaling: the merged (E, in, out) weight is a new tensor
        # that grouped_mm saves for the input's gradient, per layer
        moe = spec.moe
        e_r, i_e = moe.num_experts // s.ep, -(-moe.expert_intermediate_size // tp)
        n_in = 2 if spec.mlp_gated else 1
        be = s.residual_bytes if s.autocast else s.compute_bytes
        saved["moe_lora_weights"] = e_r * (n_in * i_e * h + h * i_e) * be
    return LayerActivations(saved=saved, forward_transient=fwd_t, backward_transient=bwd_t,
                            s2=T * s2 if spec.mla is None else 0,
                            cache_forward=_cache_forward(spec, layer, s, sliding),
                            attn_backward=attn_bwd)


def _cache_forward(spec: ModelSpec, layer: LayerSpec, s: ActivationSetup, sliding: bool) -> int:
    """The layer's ``DynamicCache`` entries that backward does not save (bytes, all tokens).

    With ``use_cache`` each attention stores ``torch.cat`` copies of its K and V and attends
    over them. Where the attention saves those very tensors (SDPA with ``enable_gqa`` or equal
    heads, eager without repeats) they cost nothing extra; where it saves something derived
    instead (``repeat_kv`` copies: eager GQA, SDPA with a mask or d > 256, the fp32 math kernel;
    autocast's 16-bit cast of the fp32 rotated k), the cache's copies stay until the model's
    output is dropped after the loss. MLA caches the latent (what ``kv_b_proj`` saves) and the
    rotated ``k_pe`` (copied into the key tensor, not saved).
    """
    if not s.use_cache:
        return 0
    T, b = s.tokens, s.compute_bytes
    if spec.mla is not None:
        return T * spec.mla.qk_rope_head_dim * b
    a = spec.num_heads // s.tp
    a_kv = max(1, spec.num_kv_heads // s.tp)
    d = spec.head_dim
    kv = a_kv * d
    n_rep = a // a_kv
    rotary = spec.rope_dim > 0
    k_b = 4 if (s.autocast and rotary) else b  # rotary under autocast: q and k are fp32
    math_sdpa = (s.attn == "sdpa" and b == 4 and not s.autocast and n_rep > 1
                 and not (sliding or d > 256))
    repeated = n_rep > 1 and (math_sdpa or (a_kv > 1 and (
        s.attn == "eager" or sliding or d > 256)))
    if repeated:
        return T * (k_b + b) * kv
    saved_b = 2 if s.autocast else b  # what the attention saves: autocast's 16-bit casts
    # v is the projection's output: 16-bit under autocast, but fp32 under QLoRA (b = 4)
    return T * kv * ((k_b if k_b != saved_b else 0) + (b if b != saved_b else 0))


def _mlp_saved_per_token(spec: ModelSpec, I: int, s: ActivationSetup, fused_gate_up: bool
                         ) -> int:
    """A dense MLP per token: its input (b h, or 2h per projection under autocast), then
    gated: gate out, act(gate), up out, product = 4 b I; plain: n_act b I + the output b I."""
    b, h = s.compute_bytes, spec.hidden_size
    n_proj = 1 if (fused_gate_up or not spec.mlp_gated) else 2
    if s.lora:
        reading = (("gate",) if fused_gate_up else ("gate", "up")) if spec.mlp_gated else ("up",)
        inp = _adapter_inputs(s, h, _adapted(s, reading), s.residual_bytes)
    elif s.autocast:
        inp = 2 * h * n_proj
    else:
        inp = b * h
    if spec.mlp_gated:
        body = 4 * b * I
        if s.lora:  # down is frozen: its adapter keeps its own copy instead of the product
            body = 3 * b * I + _adapter_inputs(s, I, _adapted(s, ("down",)), b)
    else:
        body = (_act_saved_tensors(spec.activation) + 1) * b * I
        if s.autocast and _act_saved_tensors(spec.activation) == 4:
            # autocast runs torch.pow in fp32: x, tanh(...) and 1 + tanh(...) are fp32 copies,
            # 0.5 x stays 16-bit, the product is fp32 and down casts it to 16 bits again.
            body = (3 * 4 + 2) * I + 2 * I
        if s.lora:
            body = (_act_saved_tensors(spec.activation) * b * I
                    + _adapter_inputs(s, I, _adapted(s, ("down",)), b))
    return inp + body


def _moe_saved_per_token(spec: ModelSpec, s: ActivationSetup) -> int:
    """A routed-expert block per token (transformers' ``grouped_mm`` experts, top-k routing):

    router input (b h, shared with a shared expert; 2h under autocast), fp32 softmax over E
    (4E), top-k indices (8k) and values (4k) and their sum (4); sort and inverse permutation
    (3 x 8k int64); per routed copy k: the gathered input (b h), gate_up output (2 b I_e),
    act output and product (2 b I_e), the down output (b h) and its routing weight (4).
    Expert parallelism moves tokens, not their number: each rank receives ~k copies per local
    token under balanced routing.
    """
    assert spec.moe is not None
    m = spec.moe
    b, h = s.compute_bytes, spec.hidden_size
    k, E = m.top_k, m.num_experts
    I_e = m.expert_intermediate_size // s.tp
    router_in = 2 * h if s.autocast else (0 if m.shared_intermediate_size else b * h)
    router = router_in + 4 * E + 8 * k + 4 * k + 4
    dispatch = 3 * 8 * k
    n_in = 2 if spec.mlp_gated else 1
    # grouped_mm is not an autocast op: under autocast the experts run in the residual's fp32
    be = s.residual_bytes if s.autocast else b
    # SwiGLU saves act(gate) and the product (2 I_e); gpt-oss's clamped GLU with the
    # (up + 1) term saves five I_e-wide tensors.
    n_act = 5 if spec.model_type == "gpt_oss" else 2
    experts = k * (be * h + n_in * be * I_e + n_act * be * I_e + be * h + 4)
    if s.lora:
        # frozen experts and router (peft adapts nn.Linear projections only): grouped_mm
        # keeps no gathered input and no product for weight gradients, the router no input;
        # with adapters on the experts (peft's ParamWrapper) their weights need gradients
        router -= router_in
        if not s.lora_experts:
            experts -= k * (be * h + be * I_e)
        n_gu, n_down = s.lora_expert_linears
        if n_gu or n_down:
            # transformers 4: each expert an nn.Linear module that peft wraps by name, as a
            # dense MLP's projections (their adapters save their inputs, lora_B lora_A's)
            experts += k * (_adapter_inputs(s, h, n_gu, be) + _adapter_inputs(s, I_e, n_down,
                                                                               be))
    if spec.model_type in ("deepseek_v2",):
        router += 4 * h  # the gate casts its input to fp32 (F.linear in fp32)
    return router + dispatch + experts


def rotary_bytes(spec: ModelSpec, s: ActivationSetup) -> int:
    """The rotary cos and sin tables, computed once per forward and saved by every layer's
    ``q * cos`` (shared): 2 * S * d_rope in the residual dtype (fp32 for OLMo 2); Gemma 3
    keeps one pair per attention type. They do not grow with B (position_ids is 1 x S)."""
    if not spec.rope_dim:
        return 0
    dim = spec.head_dim if spec.mla is None else spec.mla.qk_rope_head_dim
    width = 4 if spec.model_type == "olmo2" else s.residual_bytes
    sets = len({x.attention for x in spec.layers}) if spec.model_type == "gemma3_text" else 1
    return sets * 2 * s.seq * dim * width


def mask_bytes(spec: ModelSpec, s: ActivationSetup) -> int:
    """Explicit attention masks a forward builds: SDPA runs causal layers with ``is_causal``
    and no mask, but sliding-window layers need a (B, 1, S, S) bool mask (each layer's SDPA
    then saves its own additive copy, counted with the layer); eager builds an additive mask
    in the residual dtype for every mask type present."""
    if s.attn == "eager":  # additive masks in the residual dtype
        kinds = memo(spec, "attention-kinds", lambda: len({x.attention for x in spec.layers}))
        return kinds * s.batch * s.seq * s.kv_seq * s.residual_bytes  # type: ignore[no-any-return]
    return 0


def embedding_activations(spec: ModelSpec, s: ActivationSetup) -> dict[str, int]:
    """The embedding's saved tensors: token ids are the inputs (counted with them); GPT-2's
    position ids (8 S), an embedding dropout mask (T h bytes)."""
    out = {}
    if spec.learned_positions:
        out["positions"] = 8 * s.seq
    if s.dropout[0]:
        out["embedding_dropout"] = s.tokens * spec.hidden_size // (s.tp if s.sp else 1)
    return out


def head_activations(spec: ModelSpec, s: ActivationSetup, logits_bytes: int) -> dict[str, int]:
    """The final norm, the LM head's input and the loss, saved for backward.

    transformers' ``ForCausalLMLoss`` upcasts the logits to fp32 and ``cross_entropy`` saves
    ``log_softmax``'s fp32 output: 4 T V (V per TP rank: Megatron's vocab-parallel loss), and
    the shifted labels (8 T).
    """
    T, h = s.tokens, spec.hidden_size
    style = NORM_STYLES.get(spec.model_type, "llama")
    sp_div = s.tp if s.sp else 1
    V = -(-spec.vocab_size // s.tp)
    head_in = 2 * h if s.autocast else s.compute_bytes * h
    if logits_bytes == 4 and not s.autocast:
        head_in = 4 * h
    if s.lora:  # frozen norm weight and LM head: neither saves its input's 16-bit value
        head_in = 0
    out = {
        "final_norm": T * _norm_saved(style, h, s.residual_bytes, s.lora) // sp_div,
        "lm_head_input": T * head_in,
        "log_softmax": 4 * T * V,
        "labels": 8 * T,
    }
    if s.logit_softcap:
        out["logit_softcap"] = logits_bytes * T * V  # tanh(logits / cap), saved
    return out


def korthikanti_per_layer(spec: ModelSpec, seq: int, batch: int, tp: int = 1,
                          sp: bool = False, recompute: str = "none") -> int:
    """Korthikanti et al. 2022 (arXiv:2205.05198), eq. 1-6: activation bytes of one GPT layer
    in 16 bits with dropout and without flash attention:
    ``s b h (34 + 5 a s / h)``; with TP t: ``s b h (10 + 24/t + 5 a s/(h t))``; with TP and
    SP: ``s b h / t (34 + 5 a s / h)``; selective recompute drops the ``5 a s / h`` term;
    full recompute keeps ``2 s b h`` (the layer input)."""
    s_, b_, h, a, t = seq, batch, spec.hidden_size, spec.num_heads, tp
    if recompute == "full":
        return 2 * s_ * b_ * h
    attn = 0 if recompute == "selective" else 5 * a * s_ * s_ * b_ // 1
    if sp or t == 1:
        return (34 * s_ * b_ * h + attn) // t
    return 10 * s_ * b_ * h + (24 * s_ * b_ * h + attn) // t
