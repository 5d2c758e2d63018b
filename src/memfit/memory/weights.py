"""Weight memory on one GPU: every tensor in the format it is stored in.

Weights are not ``params x bytes``: a format leaves some tensors unquantized (embeddings,
LM head, norms, router, biases stay 16- or 32-bit in every quantizer), block formats add
scales and zero points, and tensor/pipeline/expert parallelism give each GPU a share.

Closed forms (symbols of :class:`~memfit.arch.ModelSpec`; ``bits(f)`` the bits per element of
format ``f`` with its block metadata, :func:`memfit.dtypes.tensor_bytes` per tensor)::

    W = sum over tensors t on the GPU of ceil(numel(t) * bits(fmt(t)) / 8) (+ row/col/matrix
        metadata of fmt(t)) + 4 * buffers

    seed check: a dense model of N params in one plain dtype: W = N * b
    (7e9 params: fp32 28 GB, bf16 14 GB, int8 7 GB: :func:`plain_weight_bytes`)

The dequantization buffer of formats whose kernels expand a whole weight to 16 bits before a
large matmul (bitsandbytes 4-bit, GPTQ/AWQ exllama) is one 16-bit copy of the largest
quantized matrix, live only during a prefill matmul: :func:`dequant_buffer_bytes`.

Sources: ``transformers/models/<type>/modeling_<type>.py`` (shapes), ``memfit.dtypes`` (the
format table: llama.cpp ``ggml-common.h``, bitsandbytes, AutoGPTQ, AutoAWQ), llama.cpp
``src/llama-quant.cpp`` (which ggml type each GGUF tensor gets).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ..arch import LayerSpec, ModelSpec
from ..dtypes import (
    GGML_TYPES,
    GGUFFileType,
    WeightFormat,
    dtype_bytes,
    get_dtype,
    get_file_type,
    get_format,
    get_ggml_type,
    tensor_bytes,
)
from ..errors import MemfitError
from .breakdown import Term
from .params import buffer_elements

__all__ = ["ResolvedWeights", "resolve_weights_option", "LayerWeights", "ModelWeights",
           "model_weights", "plain_weight_bytes", "WEIGHT_COMPONENTS", "tensor_inventory",
           "layer_kind_counts", "gguf_layer_bytes", "memo", "checkpoint_weights"]

#: Parts of the weights, in report order (they sum to the weights total).
WEIGHT_COMPONENTS = ("embeddings", "attention", "mlp", "experts", "router", "norms", "lm_head",
                     "buffers")

_SRC_SHAPES = "transformers/models/<type>/modeling_<type>.py (5.x): parameter shapes"


def plain_weight_bytes(n_params: int, dtype: str) -> int:
    """``n_params`` weights of one plain dtype: ``N * b`` bytes (the seed's table: 7e9 params
    are 28 / 14 / 7 GB in fp32 / bf16 / int8)."""
    if not isinstance(n_params, int) or isinstance(n_params, bool) or n_params < 0:
        raise MemfitError.bad_value("n_params", n_params, "a non-negative integer")
    return int(n_params * dtype_bytes(dtype))


# ------------------------------------------------------------------------------------------
# Resolving --weights
# ------------------------------------------------------------------------------------------

_Q8_OVERLAY = "_L"  # bartowski's "Q6_K_L" naming: embeddings and output in Q8_0


@dataclass(frozen=True)
class ResolvedWeights:
    """What ``--weights`` means for one engine: a per-tensor format or a GGUF file type."""

    name: str  # canonical label, e.g. "bf16", "bnb-nf4", "Q4_K_M", "Q6_K_L"
    fmt: WeightFormat | None  # one format for every quantizable tensor
    file_type: GGUFFileType | None  # a llama.cpp mixture (per-tensor ggml types)
    q8_overlay: bool = False  # token_embd and output in Q8_0 (the "_L" files)
    compute_dtype: str = "bf16"  # activations (and the default KV cache dtype)
    note: str = ""
    # where the format came from: "--weights", "quantization_config" (the checkpoint's own
    # format, config.json) or "torch_dtype" (an unquantized checkpoint)
    source: str = "torch_dtype"

    @property
    def is_gguf(self) -> bool:
        return self.file_type is not None

    @property
    def needs_dequant_buffer(self) -> bool:
        return self.fmt is not None and self.fmt.needs_dequant_buffer


def _float_name(spec_dtype: str) -> str:
    try:
        name = get_dtype(spec_dtype)
    except MemfitError:
        raise MemfitError.bad_value("torch_dtype", spec_dtype,
                                    "float32, float16 or bfloat16") from None
    if name not in ("fp32", "fp16", "bf16"):
        raise MemfitError.bad_value("torch_dtype", spec_dtype, "float32, float16 or bfloat16")
    return name


def resolve_weights_option(spec: ModelSpec, weights: str | None,
                           engine: str) -> ResolvedWeights:
    """Resolve ``--weights``; without it, the format the checkpoint ships: its config's
    ``quantization_config`` (:func:`checkpoint_weights`) for transformers and vLLM, else the
    config's ``torch_dtype`` (bf16 when absent); see :func:`_resolve_weights`."""
    if weights is None and engine != "llamacpp":
        text = spec.quantization
        if text:
            rw = _checkpoint_from_json(spec.dtype, text)
            if engine == "hf" and rw.fmt is not None and rw.fmt.kind == "mx":
                # transformers integrations/mxfp4.py: kept quantized only where the triton
                # kernels load (the `kernels` package, a Hopper-class GPU); else dequantized
                rw = replace(rw, note=rw.note + "; transformers keeps MXFP4 only with its "
                             "triton kernels (`kernels` installed, Hopper or newer), else it "
                             "dequantizes to bf16: --weights bf16")
            return rw
    rw = _resolve_weights(spec.dtype, weights, engine)
    return rw if weights is None else replace(rw, source="--weights")


@lru_cache(maxsize=512)
def _resolve_weights(spec_dtype: str, weights: str | None, engine: str) -> ResolvedWeights:
    """Resolve ``--weights`` for a model whose config says ``spec_dtype``.

    ``llamacpp`` reads GGUF file types (``Q4_K_M``; ``F16``...), with ``_L`` for the files
    whose embeddings and output are Q8_0 (``Q6_K_L``); ``hf`` and ``vllm`` read weight formats
    (``bf16``, ``bnb-nf4``, ``gptq``, ``fp8``...). transformers dequantizes a GGUF file to its
    torch dtype when it loads one, so ``hf`` with a file type counts the 16-bit weights.
    """
    base = _float_name(spec_dtype)
    if weights is None:
        if engine == "llamacpp":
            return ResolvedWeights(base.upper(), None, get_file_type(base), False, "fp32")
        fmt = get_format(base)
        return ResolvedWeights(fmt.name, fmt, None, False, base)
    if not isinstance(weights, str) or not weights.strip():
        raise MemfitError.bad_value("weights", weights, "a weight format name (memfit formats)")
    text = weights.strip()
    overlay = text.upper().endswith(_Q8_OVERLAY) and len(text) > 2
    stem = text[:-2] if overlay else text
    file_type = None
    try:
        file_type = get_file_type(stem)
    except MemfitError:
        if overlay:
            raise MemfitError.bad_value("weights", weights,
                                        "a GGUF file type before _L (e.g. Q6_K_L)") from None
    if engine == "llamacpp":
        if file_type is None:
            fmt = get_format(text)  # raises naming every format
            if fmt.ggml_type is None and fmt.name not in ("fp32", "fp16", "bf16"):
                raise MemfitError.bad_value("weights", weights,
                                            "a GGUF file type (Q4_K_M, Q8_0, F16 ...) or a ggml "
                                            "type for --engine llamacpp")
            key = fmt.ggml_type or fmt.name.upper()
            file_type = get_file_type(key) if key in ("F32", "F16", "BF16") else None
            if file_type is None:
                return ResolvedWeights(key, fmt, None, False, "fp32")
        label = file_type.name + ("_L" if overlay else "")
        return ResolvedWeights(label, None, file_type, overlay, "fp32")
    # hf / vllm: weight formats first
    try:
        fmt = get_format(text)
    except MemfitError:
        if file_type is None:
            raise
        if engine == "hf":
            return ResolvedWeights(base, get_format(base), None, False, base,
                                   note=f"transformers dequantizes the GGUF file type "
                                        f"{file_type.name} to {base} when it loads it")
        label = file_type.name + ("_L" if overlay else "")
        return ResolvedWeights(label, None, file_type, overlay, base)
    if fmt.kind == "gguf" and engine == "hf":
        return ResolvedWeights(base, get_format(base), None, False, base,
                               note=f"transformers dequantizes GGUF {fmt.name} to {base} when "
                                    "it loads it")
    if fmt.kind == "float":
        compute = fmt.name if fmt.name in ("fp32", "fp16", "bf16") else (
            "fp32" if fmt.name == "tf32" else base if base != "fp32" else "bf16")
    else:
        compute = fmt.compute_dtype if fmt.compute_dtype in ("fp16", "bf16", "fp32") else "bf16"
        if fmt.kind == "gguf":
            compute = base if base != "fp32" else "bf16"
    return ResolvedWeights(fmt.name, fmt, None, False, compute)


# ------------------------------------------------------------------------------------------
# The checkpoint's own format: config.json quantization_config
# ------------------------------------------------------------------------------------------

# Module-name patterns of the skip lists (modules_to_not_convert, ignore, ignored_layers,
# llm_int8_skip_modules) -> the dtypes.ROLES they keep in 16 bits. Checked in order.
_SKIP_ROLES = (("lm_head", "lm_head"), ("embed", "embeddings"), ("router", "router"),
               ("mlp.gate", "router"), ("self_attn", "attention"), ("attn", "attention"),
               ("norm", "norms"))
_CT = "compressed-tensors (vllm-project/compressed-tensors, config_groups.weights)"


def _skip_roles(patterns: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(roles kept unquantized, patterns memfit cannot map to a role)."""
    roles: list[str] = []
    unmapped: list[str] = []
    for p in patterns if isinstance(patterns, (list, tuple)) else ():
        text = str(p).lower()
        role = next((r for key, r in _SKIP_ROLES if key in text and
                     not (key == "mlp.gate" and "gate_" in text)), None)
        if role is None:
            unmapped.append(str(p))
        elif role not in roles:
            roles.append(role)
    return tuple(roles), tuple(unmapped)


def _int_format(method: str, bits: int, group: int, zeros: bool, g_idx: bool,
                scale_bits: int = 16) -> WeightFormat:
    """A group-quantized integer layout: ``bits`` per value, a ``scale_bits`` scale (and a
    ``bits`` zero point) per group of ``group`` inputs (-1: one per output channel)."""
    if bits == 4 and group in (32, 64, 128) and zeros and scale_bits == 16 and \
            method in ("gptq", "awq"):
        return get_format(f"{method}-int4-g{group}")
    base = get_format("gptq-int4-g128")
    meta = scale_bits + (bits if zeros else 0)
    if group == -1:
        fmt = replace(base, block_size=1, block_bits=bits, row_bits=meta)
    else:
        fmt = replace(base, block_size=group, block_bits=group * bits + meta)
    return replace(fmt, name=f"{method}-int{bits}-g{group}", aliases=(),
                   element_bits=Fraction(bits), col_bits=32 if g_idx else 0,
                   description=f"{method} {bits}-bit, group {group}: {bits} bits + a "
                               f"{scale_bits}-bit scale{' and zero point' if zeros else ''} "
                               "per group" + (" + int32 g_idx per input" if g_idx else ""))


def _fp8_block(rows: int, cols: int) -> WeightFormat:
    base = get_format("fp8-block")
    if (rows, cols) == (128, 128):
        return base
    return replace(base, name=f"fp8-block-{rows}x{cols}", aliases=(), block_size=cols,
                   block_rows=rows, block_bits=rows * cols * 8 + 32)


def _compressed_tensors(q: Mapping[str, Any]) -> tuple[WeightFormat, str]:
    groups = q.get("config_groups") or {}
    w = next((g.get("weights") for g in groups.values()
              if isinstance(g, Mapping) and isinstance(g.get("weights"), Mapping)), None)
    if w is None:
        raise MemfitError.bad_value("quantization_config", "compressed-tensors",
                                    "config_groups with a weights scheme")
    bits, kind = int(w.get("num_bits", 8)), str(w.get("type", "int"))
    strategy, group = str(w.get("strategy", "tensor")), int(w.get("group_size") or -1)
    if kind == "float" and bits == 8:
        if strategy == "block":
            r, c = (w.get("block_structure") or [128, 128])[:2]
            return _fp8_block(int(r), int(c)), f"{_CT}: fp8 {r}x{c} blocks"
        if strategy == "channel":
            fmt = replace(get_format("fp8-e4m3"), name="fp8-channel", aliases=(),
                          matrix_bits=0, row_bits=32)
            return fmt, f"{_CT}: fp8, one fp32 scale per output channel"
        return get_format("fp8-e4m3"), f"{_CT}: fp8, one fp32 scale per tensor"
    if kind == "float" and bits == 4:
        return get_format("nvfp4"), f"{_CT}: nvfp4 (groups of 16, fp8 scales)"
    sym = bool(w.get("symmetric", True))
    fmt = _int_format("int-ct", bits, group if strategy == "group" else -1, not sym, False)
    return fmt, f"{_CT}: int{bits} {strategy} (group {group}), bf16 scales"


def _quant_format(q: Mapping[str, Any]) -> tuple[WeightFormat, str, Any]:
    """(format, how it was read, the skip list) of one ``quantization_config``."""
    method = str(q.get("quant_method", "")).lower()
    if method == "mxfp4":
        return get_format("mxfp4"), "mxfp4 (MoE experts; transformers Mxfp4Config)", \
            q.get("modules_to_not_convert")
    if method == "fp8":
        skip = q.get("modules_to_not_convert") or q.get("ignored_layers")
        block = q.get("weight_block_size")
        if block:
            r, c = int(block[0]), int(block[1])
            return _fp8_block(r, c), f"fp8 e4m3, {r}x{c} blocks with fp32 weight_scale_inv", skip
        return get_format("fp8-e4m3"), "fp8 e4m3, one fp32 scale per tensor", skip
    if method in ("gptq", "awq"):
        bits, group = int(q.get("bits", q.get("w_bit", 4))), int(q.get("group_size",
                                                                         q.get("q_group_size",
                                                                               128)))
        zeros = method == "gptq" or bool(q.get("zero_point", True))
        fmt = _int_format(method, bits, group, zeros, method == "gptq")
        skip = q.get("modules_to_not_convert")
        return fmt, f"{method} {bits}-bit, group_size {group}", skip
    if method == "bitsandbytes":
        skip = q.get("llm_int8_skip_modules")
        if q.get("load_in_4bit"):
            kind = str(q.get("bnb_4bit_quant_type", "fp4")).lower()
            dq = bool(q.get("bnb_4bit_use_double_quant", False))
            name = f"bnb-{kind}" + ("-dq" if dq else "")
            return get_format(name), f"bitsandbytes 4-bit {kind}" + (
                " with double quantization" if dq else ""), skip
        if q.get("load_in_8bit"):
            return get_format("bnb-int8"), "bitsandbytes LLM.int8()", skip
    if method == "compressed-tensors":
        fmt, how = _compressed_tensors(q)
        return fmt, how, q.get("ignore")
    raise MemfitError.bad_value(
        "quantization_config.quant_method", method or None,
        "mxfp4, fp8, gptq, awq, bitsandbytes or compressed-tensors (or pass --weights)")


@lru_cache(maxsize=256)
def _checkpoint_from_json(spec_dtype: str, text: str) -> ResolvedWeights:
    return checkpoint_weights(spec_dtype, json.loads(text))


def checkpoint_weights(spec_dtype: str, q: Mapping[str, Any]) -> ResolvedWeights:
    """The weights as a checkpoint ships them, from its ``quantization_config``.

    The quantized tensors take the method's format (memfit.dtypes); the modules its skip list
    names (``modules_to_not_convert``, ``ignore``, ``ignored_layers``,
    ``llm_int8_skip_modules``) join the format's own unquantized roles in 16 bits: gpt-oss's
    MXFP4 keeps attention, the router, embeddings and LM head in bf16; DeepSeek-V3's FP8
    (``weight_block_size [128, 128]``) stores a ``[ceil(out/128), ceil(in/128)]`` fp32
    ``weight_scale_inv`` beside each fp8 matrix. Skip entries that name no role (one layer by
    index) cannot be placed and are named in the note. Sources: transformers
    ``quantizers/quantizer_mxfp4.py``, ``quantizer_finegrained_fp8.py``, ``quantizer_gptq.py``,
    ``quantizer_awq.py``, ``quantizer_bnb_4bit.py``; compressed-tensors ``QuantizationScheme``.
    """
    fmt, how, skip = _quant_format(q)
    roles, unmapped = _skip_roles(skip)
    extra = tuple(r for r in roles if r not in fmt.unquantized)
    if extra:
        fmt = replace(fmt, name=f"{fmt.name}+{'+'.join(extra)}-16bit", aliases=(),
                      unquantized=fmt.unquantized + extra)
    base = _float_name(spec_dtype)
    compute = fmt.compute_dtype if fmt.compute_dtype in ("fp16", "bf16") else base
    kept = ", ".join(fmt.unquantized)
    note = (f"weights as the checkpoint ships them: config.json quantization_config "
            f"({how}; kept in {fmt.unquantized_dtype}: {kept})")
    if unmapped:
        note += f"; skip-list entries not placed (counted quantized): {', '.join(unmapped)}"
    return ResolvedWeights(fmt.name, fmt, None, False, compute, note=note,
                           source="quantization_config")


# ------------------------------------------------------------------------------------------
# The tensor inventory
# ------------------------------------------------------------------------------------------

# One row of the inventory: (component, role, gguf_role, count, shape). ``role`` is the
# dtypes.ROLES name a format may leave unquantized ("attention", "mlp" and "experts" are
# quantized unless the format says otherwise), ``gguf_role`` the llama.cpp tensor name.
Tensor = tuple[str, str, str, int, tuple[int, ...]]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)



def _layer_tensors(spec: ModelSpec, layer: LayerSpec, tp: int, ep: int) -> list[Tensor]:
    """The tensors of one decoder layer on one tensor-parallel rank.

    Megatron/vLLM sharding: q/k/v and gate/up split by output rows, o and down by input
    columns (TP); KV heads replicated when TP > a_kv; MLA's low-rank down-projections
    replicated; routed experts split E/EP whole experts per rank (EP), else each expert's
    width split by TP; norms and the router replicated.
    """
    h, a, d = spec.hidden_size, spec.num_heads, spec.head_dim
    out: list[Tensor] = []
    add = out.append
    if spec.mla is not None:
        m = spec.mla
        bias = spec.qkv_bias
        heads = a // tp
        if m.q_lora_rank is None:
            add(("attention", "attention", "attn_q", 1, (heads * m.qk_head_dim, h)))
        else:
            add(("attention", "attention", "other", 1, (m.q_lora_rank, h)))
            add(("attention", "norms", "norm", 1, (m.q_lora_rank,)))
            add(("attention", "attention", "other", 1, (heads * m.qk_head_dim, m.q_lora_rank)))
            if bias:
                add(("attention", "biases", "bias", 1, (m.q_lora_rank,)))
        add(("attention", "attention", "other", 1, (m.kv_lora_rank + m.qk_rope_head_dim, h)))
        if bias:
            add(("attention", "biases", "bias", 1, (m.kv_lora_rank + m.qk_rope_head_dim,)))
        add(("attention", "norms", "norm", 1, (m.kv_lora_rank,)))
        add(("attention", "attention", "attn_kv_b", 1,
             (heads * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank)))
        add(("attention", "attention", "attn_output", 1, (h, heads * m.v_head_dim)))
        if spec.o_bias:
            add(("attention", "biases", "bias", 1, (h,)))
    else:
        q_rows = a * d // tp
        kv_rows = max(1, spec.num_kv_heads // tp) * d
        add(("attention", "attention", "attn_q", 1, (q_rows, h)))
        add(("attention", "attention", "attn_k", 1, (kv_rows, h)))
        add(("attention", "attention", "attn_v", 1, (kv_rows, h)))
        add(("attention", "attention", "attn_output", 1, (h, q_rows)))
        if spec.qkv_bias:
            add(("attention", "biases", "bias", 1, (q_rows + 2 * kv_rows,)))
        if spec.o_bias:
            add(("attention", "biases", "bias", 1, (h,)))
        if spec.qk_norm == "head":
            add(("attention", "norms", "norm", 2, (d,)))
        elif spec.qk_norm == "full":
            add(("attention", "norms", "norm", 1, (q_rows + kv_rows,)))
        if spec.attention_sinks:
            add(("attention", "norms", "bias", 1, (a // tp,)))
    n_norm = spec.norms_per_layer * (2 if spec.norm_bias else 1)
    add(("norms", "norms", "norm", n_norm, (h,)))
    if layer.moe and spec.moe is not None:
        moe = spec.moe
        experts = moe.num_experts // ep
        ie = moe.expert_intermediate_size
        width = ie if ep > 1 else _ceil_div(ie, tp)
        if spec.mlp_gated:
            add(("experts", "experts", "ffn_gate_exps", 1, (experts, width, h)))
            add(("experts", "experts", "ffn_up_exps", 1, (experts, width, h)))
        else:
            add(("experts", "experts", "ffn_up_exps", 1, (experts, width, h)))
        add(("experts", "experts", "ffn_down_exps", 1, (experts, h, width)))
        if moe.expert_bias:
            add(("experts", "biases", "bias", 1, (experts, (2 if spec.mlp_gated else 1) * width)))
            add(("experts", "biases", "bias", 1, (experts, h)))
        # DeepSeek-V2/V3 keep gate.weight in fp32 (_keep_in_fp32_modules_strict)
        router_role = "router_fp32" if moe.router_fp32 \
            else "router"
        add(("router", router_role, "ffn_gate_inp", 1, (moe.num_experts, h)))
        if moe.router_bias:
            add(("router", "biases", "bias", 1, (moe.num_experts,)))
        if moe.shared_intermediate_size:
            out.extend(_mlp_tensors(spec, _ceil_div(moe.shared_intermediate_size, tp), "_shexp"))
        if moe.shared_expert_gate:
            add(("router", "router", "ffn_gate_inp", 1, (1, h)))
    else:
        out.extend(_mlp_tensors(spec, _ceil_div(spec.intermediate_size, tp), ""))
    return out


def _mlp_tensors(spec: ModelSpec, width: int, suffix: str) -> list[Tensor]:
    h = spec.hidden_size
    rows: list[Tensor] = []
    if spec.mlp_gated:
        rows.append(("mlp", "mlp", "ffn_gate" + suffix, 1, (width, h)))
    rows.append(("mlp", "mlp", "ffn_up" + suffix, 1, (width, h)))
    rows.append(("mlp", "mlp", "ffn_down" + suffix, 1, (h, width)))
    if spec.mlp_bias:
        rows.append(("mlp", "biases", "bias", 1, ((2 if spec.mlp_gated else 1) * width + h,)))
    return rows


def tensor_inventory(spec: ModelSpec, *, tp: int = 1, ep: int = 1) -> dict[str, list[Tensor]]:
    """Every tensor of the model on one TP/EP rank: ``{"first": embeddings, "last": final
    norm and LM head, "layer:<i>": one row per distinct layer kind}`` (see
    :func:`_layer_tensors`)."""
    h, V = spec.hidden_size, spec.vocab_size
    v_rows = _ceil_div(V, tp)  # vocab-parallel embedding / LM head (Megatron)
    first: list[Tensor] = [("embeddings", "embeddings", "token_embd", 1, (v_rows, h))]
    if spec.learned_positions:
        first.append(("embeddings", "embeddings", "other", 1, (spec.learned_positions, h)))
    last: list[Tensor] = [("norms", "norms", "norm", 2 if spec.norm_bias else 1, (h,))]
    if not spec.tie_word_embeddings:
        last.append(("lm_head", "lm_head", "output", 1, (v_rows, h)))
    out = {"first": first, "last": last}
    for kind in _layer_kinds(spec):
        out[f"kind:{kind}"] = _layer_tensors(spec, kind, tp, ep)
    return out


def _layer_kinds(spec: ModelSpec) -> list[LayerSpec]:
    return list(dict.fromkeys(spec.layers))


# ------------------------------------------------------------------------------------------
# Bytes
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerWeights:
    """Bytes of one decoder layer of a given kind on one rank, by component."""

    components: dict[str, int]
    largest_matrix: int  # elements of the largest quantized 2-D weight (dequant buffer)

    @property
    def total(self) -> int:
        return sum(self.components.values())


@dataclass(frozen=True)
class ModelWeights:
    """Weights on one GPU (one pipeline stage of one TP/EP rank)."""

    components: dict[str, int]
    extra_terms: tuple[Term, ...] = field(default=())
    dequant_bytes: int = 0  # transient 16-bit copy of the largest quantized matrix
    _terms_args: tuple = field(default=(), repr=False, compare=False)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def terms(self) -> tuple[Term, ...]:
        """The derivation (built on demand: formatting costs more than the arithmetic)."""
        if not self._terms_args:
            return self.extra_terms
        spec, rw, tp, ep = self._terms_args
        return tuple(_terms(spec, rw, self.components, tp, ep, self.dequant_bytes))


def _tensor_fmt(rw: ResolvedWeights, role: str) -> WeightFormat:
    """The format one tensor is stored in under a per-tensor format."""
    fmt = rw.fmt
    assert fmt is not None
    if role in fmt.unquantized and fmt.unquantized_dtype is not None:
        return get_format(fmt.unquantized_dtype)
    if fmt.kind in ("float",) and fmt.name not in ("fp32", "tf32", "fp16", "bf16") and \
            role in ("norms", "biases", "router", "embeddings", "lm_head"):
        return get_format(rw.compute_dtype)
    return fmt


def _bytes_rows(rows: Iterable[Tensor], rw: ResolvedWeights, spec: ModelSpec,
                i_layer: int = 0, n_layers: int = 1) -> tuple[dict[str, int], int]:
    comps: dict[str, int] = {}
    largest = 0
    for comp, role, grole, count, shape in rows:
        if rw.file_type is not None:
            fmt = _gguf_format(rw, spec, grole, i_layer, n_layers, shape)
        elif role == "router_fp32":
            fmt = get_format("fp32")
        else:
            fmt = _tensor_fmt(rw, role)
        n = tensor_bytes(shape, fmt) * count
        comps[comp] = comps.get(comp, 0) + n
        if len(shape) >= 2 and fmt.kind != "float" and role in ("attention", "mlp", "experts"):
            largest = max(largest, shape[-1] * shape[-2])
    return comps, largest


def _gguf_format(rw: ResolvedWeights, spec: ModelSpec, grole: str, i_layer: int,
                 n_layers: int, shape: tuple[int, ...]) -> WeightFormat:
    ft = rw.file_type
    assert ft is not None
    if rw.q8_overlay and grole in ("token_embd", "output"):
        return GGML_TYPES["Q8_0"]
    if len(shape) == 1:
        return GGML_TYPES["F32"]
    n_expert = spec.moe.num_experts if spec.moe is not None else 0
    name = ft.tensor_type(grole, i_layer, n_layers,
                          n_gqa=max(1, spec.num_heads // spec.num_kv_heads),
                          n_expert=n_expert, row_length=shape[-1],
                          tied_embeddings=spec.tie_word_embeddings)
    return get_ggml_type(name)


# Per-spec memo keyed by identity (ModelSpec hashing walks every layer; solvers and sweeps
# call the estimate thousands of times for one spec). One table per model, the oldest model's
# dropped past _MEMO_SPECS models (the catalog has ~60); a model's table is emptied past
# _MEMO_PER_SPEC entries, so a long-running server's memory stays bounded. The table holds
# the spec, so its id is not reused while the entry lives.
_MEMO: dict[int, tuple[ModelSpec, dict[Any, Any]]] = {}
_MEMO_SPECS = 128
_MEMO_PER_SPEC = 4096
_MISSING = object()


def memo_table(spec: ModelSpec) -> dict[Any, Any]:
    """The memo table of one spec object (see above)."""
    slot = _MEMO.get(id(spec))
    if slot is not None and slot[0] is spec:
        table = slot[1]
        if len(table) >= _MEMO_PER_SPEC:
            table.clear()
        return table
    if len(_MEMO) >= _MEMO_SPECS:
        _MEMO.pop(next(iter(_MEMO)))
    table = {}
    _MEMO[id(spec)] = (spec, table)
    return table


def memo(spec: ModelSpec, key: Any, make):  # type: ignore[no-untyped-def]
    """``make()`` computed once per (spec object, key)."""
    table = memo_table(spec)
    value = table.get(key, _MISSING)
    if value is _MISSING:
        value = table[key] = make()
    return value


def layer_kind_counts(spec: ModelSpec, start: int = 0,
                      stop: int | None = None) -> dict[LayerSpec, int]:
    """How many layers of each kind lie in ``layers[start:stop]`` (O(kinds) per call)."""
    def build() -> tuple[list[LayerSpec], list[list[int]]]:
        kinds = _layer_kinds(spec)
        index = {k: i for i, k in enumerate(kinds)}
        prefix = [[0] * (spec.num_layers + 1) for _ in kinds]
        for i, layer in enumerate(spec.layers):
            for j in range(len(kinds)):
                prefix[j][i + 1] = prefix[j][i] + (1 if index[layer] == j else 0)
        return kinds, prefix
    kinds, prefix = memo(spec, "kind_prefix", build)
    stop = spec.num_layers if stop is None else stop
    return {k: prefix[j][stop] - prefix[j][start] for j, k in enumerate(kinds)}


def layer_weights(spec: ModelSpec, rw: ResolvedWeights, tp: int,
                  ep: int) -> dict[LayerSpec, LayerWeights]:
    """Bytes of one layer of each kind under a per-tensor format."""
    def build() -> dict[LayerSpec, LayerWeights]:
        out = {}
        for kind in _layer_kinds(spec):
            comps, largest = _bytes_rows(_layer_tensors(spec, kind, tp, ep), rw, spec)
            out[kind] = LayerWeights(comps, largest)
        return out
    return memo(spec, f"layer_weights:{rw.name}:{tp}:{ep}", build)


def gguf_layer_bytes(spec: ModelSpec, rw: ResolvedWeights) -> list[LayerWeights]:
    """Bytes of every layer under a GGUF file type (llama.cpp gives more bits to some
    layers: ``use_more_bits``), by component."""
    def build() -> list[LayerWeights]:
        L = spec.num_layers
        out = []
        for i, layer in enumerate(spec.layers):
            comps, largest = _bytes_rows(_layer_tensors(spec, layer, 1, 1), rw, spec, i, L)
            out.append(LayerWeights(comps, largest))
        return out
    return memo(spec, f"gguf_layers:{rw.name}", build)


def model_weights(spec: ModelSpec, rw: ResolvedWeights, *, tp: int = 1, ep: int = 1,
                  start: int = 0, stop: int | None = None, first: bool = True,
                  last: bool = True) -> ModelWeights:
    """Weights of one GPU holding decoder layers ``start:stop`` (default all), the embeddings
    when ``first`` and the final norm and LM head when ``last`` (pipeline stages; tied
    embeddings are held by both the first and the last stage, as Megatron does).

    Memoised per model (the bounded table above), keyed on the resolved format object's
    identity (kept alive in the entry and compared, so a recycled id never matches): the
    vLLM and llama.cpp engines ask for the same slices on every estimate.
    """
    stop = spec.num_layers if stop is None else stop
    table = memo_table(spec)
    key = ("model_weights", id(rw), tp, ep, start, stop, first, last)
    hit = table.get(key)
    if hit is not None and hit[0] is rw:
        return hit[1]  # type: ignore[no-any-return]
    w = _model_weights(spec, rw, tp, ep, start, stop, first, last)
    table[key] = (rw, w)
    return w


def _model_weights(spec: ModelSpec, rw: ResolvedWeights, tp: int, ep: int, start: int,
                   stop: int, first: bool, last: bool) -> ModelWeights:
    """:func:`model_weights`, computed."""
    comps = dict.fromkeys(WEIGHT_COMPONENTS, 0)
    largest = 0
    if rw.file_type is not None:
        for lw in gguf_layer_bytes(spec, rw)[start:stop]:
            largest = max(largest, lw.largest_matrix)
            for c, n in lw.components.items():
                comps[c] += n
    else:
        per_kind = layer_weights(spec, rw, tp, ep)
        for kind, count in layer_kind_counts(spec, start, stop).items():
            if not count:
                continue
            lw = per_kind[kind]
            largest = max(largest, lw.largest_matrix)
            for c, n in lw.components.items():
                comps[c] += n * count
    inv = memo(spec, f"inventory:{tp}:{ep}", lambda: tensor_inventory(spec, tp=tp, ep=ep))
    if first:
        c = memo(spec, f"first:{rw.name}:{tp}:{ep}", lambda: _bytes_rows(inv["first"], rw, spec)[0])
        for k, n in c.items():
            comps[k] += n
    if last:
        rows = list(inv["last"])
        if spec.tie_word_embeddings and not first:
            rows.append(("lm_head", "lm_head", "output", 1, inv["first"][0][4]))
        c = memo(spec, f"last:{rw.name}:{tp}:{ep}:{first}",
                 lambda: _bytes_rows(rows, rw, spec)[0])
        for k, n in c.items():
            comps[k] += n
    if first or last:
        # fp32 buffers (rotary inv_freq...); Gemma's embed_scale scalar is created in the
        # model's dtype
        extra = spec.extra_buffers
        comps["buffers"] = (4 * (buffer_elements(spec) - extra)
                            + extra * int(dtype_bytes(rw.compute_dtype)))
    dequant = 2 * largest if rw.needs_dequant_buffer else 0
    return ModelWeights(comps, (), dequant, _terms_args=(spec, rw, tp, ep))


def _terms(spec: ModelSpec, rw: ResolvedWeights, comps: dict[str, int], tp: int, ep: int,
           dequant: int) -> list[Term]:
    total = sum(comps.values())
    parts = " + ".join(f"{k} {v}" for k, v in comps.items() if v)
    if rw.fmt is not None:
        f = rw.fmt
        bits = f.bits_per_element
        bits_txt = str(bits) if bits.denominator != 1 else str(int(bits))
        formula = ("sum_t ceil(numel_t * bits(fmt_t) / 8) + 4 * n_buf; "
                   f"bits({f.name}) = {bits_txt}" +
                   (f"; unquantized ({', '.join(f.unquantized)}) in {f.unquantized_dtype}"
                    if f.unquantized else ""))
        source = f"{f.source}; {_SRC_SHAPES}"
    else:
        ft = rw.file_type
        assert ft is not None
        formula = (f"sum_t ceil(numel_t / block_t) * block_bytes_t, ggml type per tensor from "
                   f"{ft.name}" + (" with token_embd/output Q8_0" if rw.q8_overlay else ""))
        source = f"{ft.source}; memfit.dtypes GGML block sizes"
    shard = []
    if tp > 1:
        shard.append(f"TP={tp}: heads, MLP width and vocab split")
    if ep > 1:
        shard.append(f"EP={ep}: E/EP experts per GPU")
    terms = [Term("weights", total, formula, parts + (f" ({'; '.join(shard)})" if shard else ""),
                  source, note=rw.note)]
    if dequant:
        terms.append(Term("dequant_buffer", dequant, "2 * max_t(rows_t * cols_t)",
                          f"2 * {dequant // 2}", rw.fmt.source if rw.fmt else "",
                          note="a 16-bit copy of one quantized matrix during a prefill matmul"))
    return terms
