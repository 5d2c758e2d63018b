"""The KV cache: bytes per token per layer from each layer's real attention, times tokens.

Closed forms, per layer and per token (symbols of :class:`~memfit.arch.ModelSpec`, ``b_kv``
the cache's bytes per element, TP the tensor-parallel degree)::

    MHA / GQA / MQA   2 * a_kv' * d * b_kv          a_kv' = max(1, a_kv / TP) (replicated
                                                     when TP > a_kv, as vLLM and Megatron do)
    MLA, latent       (r_kv + d_rope) * b_kv         transformers 5 (DeepseekV2/V3Attention
                                                     caches kv_a's normed latent as "keys" and
                                                     the rotated k_pe as "values"), vLLM's
                                                     FlashMLA/Triton MLA, llama.cpp; replicated
                                                     across TP ranks
    MLA, expanded     a' * (d_nope + d_rope + d_v) * b_kv   (transformers 4.x, SGLang without
                                                     MLA kernels): only for ``mla_cache="expanded"``

    total = sum over layers of bytes_per_token(layer) * B * tokens(layer)

``tokens(layer)`` is the prompt plus generated tokens for full-attention layers. Sliding
layers depend on the engine: transformers 5's ``DynamicSlidingWindowLayer`` keeps the full
``torch.cat`` of the prefill (its ``keys`` are a *view* of the last W-1 rows, which keeps the
whole P-row storage alive) and, from the first decode step on, a new W-row tensor
(``min(W-1, c) + 1`` rows: the W-1 kept plus the new one), so ``tokens = P`` after the prefill
and ``min(P + t, W)`` after decode step ``t >= 1``; vLLM keeps ``ceil(min(T, W) / block)``
blocks; llama.cpp sizes every layer for the context (``n_ctx``) unless SWA caching is on.

Paged engines round each sequence up to whole blocks: ``ceil(T / block) * block`` tokens.

Sources: ``transformers/cache_utils.py`` (DynamicLayer, DynamicSlidingWindowLayer),
``transformers/models/deepseek_v2/modeling_deepseek_v2.py`` (``cache.update(k_nope, k_pe)``),
vLLM ``vllm/v1/kv_cache_interface.py`` (FullAttentionSpec, SlidingWindowSpec, MLAAttentionSpec
page sizes), llama.cpp ``src/llama-kv-cache.cpp`` (``n_embd_k_gqa`` rows per cell).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

from ..arch import LayerSpec, ModelSpec
from ..dtypes import WeightFormat, dtype_bytes, get_dtype, get_ggml_type
from ..errors import MemfitError
from .breakdown import Term

__all__ = ["KVDtype", "resolve_kv_dtype", "KVLayout", "kv_layout", "hf_cache_bytes", "HFCacheRows",
           "hf_cache_term", "tokens_in_layer", "token_bytes_by_kind", "KV_DTYPE_HELP"]

KV_DTYPE_HELP = ("fp16, bf16, fp32, fp8 (fp8_e4m3), fp8_e5m2, int8; with --engine llamacpp also "
                 "the ggml cache types f16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl")
_GGML_KV = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL")

_SRC_HF = "transformers/cache_utils.py DynamicLayer / DynamicSlidingWindowLayer (5.x)"


@dataclass(frozen=True)
class KVDtype:
    """The cache's element type: bytes per element, or a ggml block type."""

    name: str
    bytes_per_element: Fraction  # exact (q8_0: 34/32)
    block: int = 1  # ggml block length: a row of n elements costs ceil(n / block) blocks
    block_bytes: int = 0

    def row_bytes(self, n: int) -> int:
        """Bytes of one cached row of ``n`` elements (one token of one layer's K or V)."""
        if self.block > 1:
            return -(-n // self.block) * self.block_bytes
        q = self.bytes_per_element
        return -(-n * q.numerator // q.denominator)


@lru_cache(maxsize=256)
def resolve_kv_dtype(kv_dtype: str | None, compute_dtype: str, engine: str) -> KVDtype:
    """``--kv-dtype`` (None: the weights' 16-bit compute dtype; llama.cpp's default f16)."""
    if kv_dtype is None:
        if engine == "llamacpp":
            return KVDtype("f16", Fraction(2))
        return KVDtype(compute_dtype, dtype_bytes(compute_dtype))
    if not isinstance(kv_dtype, str):
        raise MemfitError.bad_value("kv-dtype", kv_dtype, KV_DTYPE_HELP)
    key = kv_dtype.strip()
    if engine == "llamacpp" and key.upper() in _GGML_KV:
        fmt: WeightFormat = get_ggml_type(key.upper())
        if fmt.block_size == 1:
            return KVDtype(key.lower(), fmt.bits_per_element / 8)
        return KVDtype(key.lower(), fmt.bits_per_element / 8, fmt.block_size,
                       fmt.block_bits // 8)
    try:
        name = get_dtype(key)
    except MemfitError:
        raise MemfitError.bad_value("kv-dtype", kv_dtype, KV_DTYPE_HELP) from None
    if name in ("int4", "tf32"):
        raise MemfitError.bad_value("kv-dtype", kv_dtype, KV_DTYPE_HELP)
    return KVDtype(name, dtype_bytes(name))


@dataclass(frozen=True)
class KVLayout:
    """Per-token cache rows of one layer kind on one GPU."""

    k_elems: int  # elements of the "keys" row per token (all heads on this rank)
    v_elems: int  # elements of the "values" row per token
    formula: str  # symbolic bytes per token
    substituted: str

    def token_bytes(self, dt: KVDtype) -> int:
        """Bytes of K and V for one token of this layer."""
        return dt.row_bytes(self.k_elems) + dt.row_bytes(self.v_elems)


def kv_layout(spec: ModelSpec, layer: LayerSpec, *, engine: str = "hf", tp: int = 1,
              mla_cache: str | None = None) -> KVLayout:
    """The cache rows one token adds to one layer (see the module docstring)."""
    m = spec.mla
    if m is not None:
        mode = mla_cache or "latent"
        if mode == "latent":
            if engine == "vllm":  # one page row of (r_kv + d_rope): MLAAttentionSpec
                return KVLayout(m.kv_lora_rank + m.qk_rope_head_dim, 0, "(r_kv + d_rope) * b_kv",
                                f"({m.kv_lora_rank} + {m.qk_rope_head_dim}) * b_kv")
            return KVLayout(m.kv_lora_rank, m.qk_rope_head_dim, "(r_kv + d_rope) * b_kv",
                            f"({m.kv_lora_rank} + {m.qk_rope_head_dim}) * b_kv")
        heads = spec.num_heads // tp
        return KVLayout(heads * m.qk_head_dim, heads * m.v_head_dim,
                        "a' * (d_nope + d_rope + d_v) * b_kv",
                        f"{heads} * ({m.qk_nope_head_dim} + {m.qk_rope_head_dim} + "
                        f"{m.v_head_dim}) * b_kv")
    heads = max(1, spec.num_kv_heads // tp)
    d = spec.head_dim
    rep = "" if spec.num_kv_heads >= tp else " (KV heads replicated: TP > a_kv)"
    return KVLayout(heads * d, heads * d, "2 * a_kv' * d * b_kv",
                    f"2 * {heads} * {d} * b_kv{rep}")


def tokens_in_layer(layer: LayerSpec, prompt: int, step: int, engine: str = "hf") -> int:
    """Rows a layer's cache storage holds after the prefill (``step=0``) or decode ``step``.

    transformers' sliding layers keep the prefill's whole P rows (a view of the ``torch.cat``
    result keeps its storage), then ``min(P + t, W)`` rows from the first decode step on.
    """
    total = prompt + step
    if layer.attention != "sliding" or layer.window is None:
        return total
    if engine == "hf":
        return prompt if step == 0 else min(total, layer.window)
    return min(total, layer.window)


def token_bytes_by_kind(spec: ModelSpec, kinds: Iterable[LayerSpec], dt: KVDtype, tp: int,
                        engine: str = "hf") -> dict[LayerSpec, tuple[int, int]]:
    """(K row bytes, V row bytes) per token for each layer kind."""
    out = {}
    for kind in kinds:
        lay = kv_layout(spec, kind, engine=engine, tp=tp)
        out[kind] = (dt.row_bytes(lay.k_elems), dt.row_bytes(lay.v_elems))
    return out


def hf_cache_bytes(spec: ModelSpec, counts: dict[LayerSpec, int], batch: int, prompt: int,
                   step: int, dt: KVDtype, tp: int = 1,
                   rows: dict[LayerSpec, tuple[int, int]] | None = None) -> int:
    """Bytes a ``DynamicCache`` holds for the given layers after decode ``step`` (0: after the
    prefill), including the int64 window scalar of each sliding layer. ``rows``: the
    precomputed :func:`token_bytes_by_kind`."""
    if rows is None:
        rows = token_bytes_by_kind(spec, counts, dt, tp)
    total = 0
    for layer, n in counts.items():
        if not n:
            continue
        k, v = rows[layer]
        total += n * batch * tokens_in_layer(layer, prompt, step, "hf") * (k + v)
        if layer.attention == "sliding" and layer.window is not None:
            total += 8 * n  # DynamicSlidingWindowLayer._sliding_window_tensor (int64 scalar)
    return total


class HFCacheRows:
    """:func:`hf_cache_bytes` of fixed layer counts as a closed form in (batch, prompt, step),
    for the estimates that evaluate it many times: ``B * T * F`` over the full-attention
    layers (``F``: their K + V row bytes summed), ``B * tokens_W * R_W`` per sliding window
    and ``8 * n`` window scalars. Integer sums regrouped, so the bytes are the same."""

    __slots__ = ("full", "sliding", "const")

    def __init__(self, counts: dict[LayerSpec, int],
                 rows: dict[LayerSpec, tuple[int, int]]) -> None:
        full, const = 0, 0
        sliding: dict[int, int] = {}
        for layer, n in counts.items():
            if not n:
                continue
            k, v = rows[layer]
            if layer.attention == "sliding" and layer.window is not None:
                sliding[layer.window] = sliding.get(layer.window, 0) + n * (k + v)
                const += 8 * n
            else:
                full += n * (k + v)
        self.full = full
        self.sliding = tuple(sliding.items())
        self.const = const

    def bytes(self, batch: int, prompt: int, step: int) -> int:
        """``hf_cache_bytes(counts, batch, prompt, step)``."""
        total = batch * (prompt + step) * self.full + self.const
        for window, row in self.sliding:
            total += batch * (prompt if step == 0 else min(prompt + step, window)) * row
        return total


def hf_cache_term(spec: ModelSpec, counts: dict[LayerSpec, int], batch: int, prompt: int,
                  step: int, dt: KVDtype, tp: int, nbytes: int, name: str = "kv_cache") -> Term:
    """The derivation of :func:`hf_cache_bytes` as a :class:`Term`."""
    parts_f, parts_s = [], []
    for layer, n in counts.items():
        if not n:
            continue
        lay = kv_layout(spec, layer, engine="hf", tp=tp)
        rows = tokens_in_layer(layer, prompt, step, "hf")
        kind = "sliding" if layer.attention == "sliding" else "full"
        t_sym = "T" if kind == "full" else ("P" if step == 0 else "min(T, W)")
        parts_f.append(f"L_{kind} * B * {t_sym} * [{lay.formula}]")
        parts_s.append(f"{n} * {batch} * {rows} * {lay.token_bytes(dt)}")
    return Term(name, nbytes, " + ".join(parts_f) + (f"; b_kv = {dt.bytes_per_element}" if
                                                     dt.block == 1 else f"; {dt.name} blocks"),
                " + ".join(parts_s), _SRC_HF + "; " + (
                    "modeling_deepseek_v2.py caches the latent" if spec.mla else
                    "K and V [B, a_kv, T, d] per layer"))
