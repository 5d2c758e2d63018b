"""One table of data types and weight formats: how many bits each element really costs.

Two kinds of names live here:

* **dtypes** (:data:`DTYPE_BITS`): plain element types for the KV cache and activations,
  ``fp32 tf32 fp16 bf16 fp8_e4m3 fp8_e5m2 int8 int4``.
* **weight formats** (:data:`FORMATS`): how a checkpoint stores its weights, with every
  overhead the format carries (block scales, zero points, mins, super-block scales, per-row
  and per-tensor scales). Each entry states the derivation of its bits and the file it comes
  from (llama.cpp ``ggml/src/ggml-common.h``, bitsandbytes ``functional.py``, AutoGPTQ
  ``qlinear``, ...).

Bits are exact rationals (:class:`fractions.Fraction`); byte counts are integers, rounded up
once per tensor. The storage model of one format, for a tensor of shape
``(*batch, rows, cols)`` (PyTorch's ``[out_features, in_features]`` order; blocks run along
the last, contiguous dimension, which is llama.cpp's ``ne[0]`` and GPTQ's group axis)::

    bits = payload + block metadata + super-block metadata
           + rows * row_bits + cols * col_bits (per matrix) + matrix_bits (per matrix)

* ``pad_blocks`` formats (GGUF) store whole blocks only: a row of ``cols`` elements costs
  ``ceil(cols / block_size) * block_bits``. llama.cpp itself never pads: a row that is not a
  multiple of the block makes ``llama-quantize`` fall back to another type
  (:func:`ggml_fallback_type`); the padded figure is an upper bound for such a row.
* other formats store the payload exactly (``element_bits`` per element) and one metadata
  record per block, counting a partial last block as a whole one (GPTQ's
  ``ceil(in_features / group_size)`` scale rows, bitsandbytes' ``ceil(n / 64)`` absmax).
* ``flat_blocks`` formats (bitsandbytes) block the flattened tensor, not each row.

``bits_per_element`` is the block-level cost (payload + block and super-block metadata);
per-row, per-column and per-matrix terms depend on the shape and are added by
:func:`tensor_bytes` (or, per tensor, by ``bytes_for(..., n_tensors=...)``).

GGUF *file types* (``Q4_K_M`` ...) are mixtures, not formats: :class:`GGUFFileType` maps each
tensor role and layer to a ggml type, following llama.cpp ``src/llama-quant.cpp``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from .errors import MemfitError

__all__ = sorted([
    "DTYPE_BITS",
    "DTYPE_BYTES",
    "DTYPES",
    "FORMATS",
    "FORMAT_NAMES",
    "GGML_TYPES",
    "GGUF_FILE_TYPES",
    "GGUF_ROLES",
    "KINDS",
    "ROLES",
    "GGUFFileType",
    "WeightFormat",
    "array_bytes",
    "bytes_for",
    "dtype_bits",
    "dtype_bytes",
    "get_dtype",
    "get_file_type",
    "get_format",
    "get_ggml_type",
    "ggml_fallback_type",
    "resolve_weights",
    "tensor_bytes",
    "use_more_bits",
])

# --------------------------------------------------------------------------------------------
# Plain dtypes (KV cache, activations)
# --------------------------------------------------------------------------------------------

#: Bits per element of each plain dtype. tf32 is a matmul mode: its values are stored as fp32.
DTYPE_BITS: dict[str, int] = {
    "fp32": 32,
    "tf32": 32,
    "fp16": 16,
    "bf16": 16,
    "fp8_e4m3": 8,
    "fp8_e5m2": 8,
    "int8": 8,
    "int4": 4,
}
#: Bytes per element, exact (``Fraction(1, 2)`` for int4): multiply, then round up once.
DTYPE_BYTES: dict[str, Fraction] = {k: Fraction(v, 8) for k, v in DTYPE_BITS.items()}
DTYPES: tuple[str, ...] = tuple(DTYPE_BITS)

# Other spellings: PyTorch / config.json ``torch_dtype`` names and vLLM's ``--kv-cache-dtype``
# values. vLLM's bare "fp8" means e4m3 on CUDA (its ``fp8`` == ``fp8_e4m3``).
_DTYPE_ALIASES: dict[str, str] = {
    "float32": "fp32", "float": "fp32", "f32": "fp32",
    "float16": "fp16", "half": "fp16", "f16": "fp16",
    "bfloat16": "bf16",
    "fp8": "fp8_e4m3", "float8_e4m3fn": "fp8_e4m3", "float8_e4m3fnuz": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "float8_e5m2": "fp8_e5m2", "float8_e5m2fnuz": "fp8_e5m2", "e5m2": "fp8_e5m2",
    "i8": "int8", "i4": "int4",
}


def _key(name: str) -> str:
    """Lookup key: case, surrounding blanks and the choice of ``-``/``_``/space don't matter."""
    return "-".join(name.strip().lower().replace("_", "-").split())


def _unknown(field_name: str, value: object, names: Iterable[str]) -> MemfitError:
    """The error for an unknown name: close matches first, then every allowed name."""
    names = list(names)
    close = difflib.get_close_matches(_key(str(value)), [_key(n) for n in names], n=3,
                                      cutoff=0.6)
    by_key = {_key(n): n for n in names}
    hint = f"did you mean {', '.join(by_key[c] for c in close)}? " if close else ""
    allowed = ", ".join(names)
    return MemfitError(f"{field_name}: got {value!r}; {hint}allowed: {allowed}",
                       field=field_name, value=value, allowed=allowed)


_DTYPE_INDEX: dict[str, str] = {_key(n): n for n in DTYPE_BITS}
_DTYPE_INDEX.update({_key(a): n for a, n in _DTYPE_ALIASES.items()})


def get_dtype(name: str) -> str:
    """The canonical dtype name for ``name`` (case-insensitive, with aliases such as
    ``bfloat16`` or ``float8_e4m3fn``); raises :class:`MemfitError` naming the valid ones."""
    if isinstance(name, str):
        canonical = _DTYPE_INDEX.get(_key(name))
        if canonical is not None:
            return canonical
    raise _unknown("dtype", name, DTYPES)


def dtype_bits(name: str) -> int:
    """Bits per element of a plain dtype (``int4`` -> 4)."""
    return DTYPE_BITS[get_dtype(name)]


def dtype_bytes(name: str) -> Fraction:
    """Bytes per element of a plain dtype, exact: ``bf16`` -> 2, ``int4`` -> 1/2."""
    return DTYPE_BYTES[get_dtype(name)]


def _check_count(field_name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MemfitError.bad_value(field_name, value, "a non-negative integer")
    return value


def array_bytes(n_elements: int, dtype: str) -> int:
    """Bytes of ``n_elements`` packed values of a plain dtype, rounded up to a whole byte."""
    n = _check_count("n_elements", n_elements)
    return -(-n * dtype_bits(dtype) // 8)


# --------------------------------------------------------------------------------------------
# Weight formats
# --------------------------------------------------------------------------------------------

#: Tensor roles a format may leave unquantized. "attention" is for formats that quantize only
#: the MoE experts (gpt-oss's MXFP4 checkpoints).
ROLES: tuple[str, ...] = ("embeddings", "lm_head", "norms", "router", "biases", "attention")
KINDS: tuple[str, ...] = ("float", "int", "gguf", "bnb", "mx")

_GGML_COMMON = "ggml-org/llama.cpp ggml/src/ggml-common.h"
_GGUF_SIZES = "ggml-org/llama.cpp gguf-py/gguf/constants.py GGML_QUANT_SIZES"
_LLAMA_QUANT = "ggml-org/llama.cpp src/llama-quant.cpp"
_CONVERT = "ggml-org/llama.cpp convert_hf_to_gguf.py (1-D tensors, norms, ffn_gate_inp -> F32)"
_BNB = "bitsandbytes-foundation/bitsandbytes bitsandbytes/functional.py quantize_4bit"
_GPTQ = ("AutoGPTQ/AutoGPTQ auto_gptq/nn_modules/qlinear (QuantLinear buffers qweight, "
         "qzeros, scales, g_idx)")
_AWQ = "casper-hansen/AutoAWQ awq/modules/linear/gemm.py (WQLinear_GEMM qweight, qzeros, scales)"


@dataclass(frozen=True)
class WeightFormat:
    """How one weight format stores a tensor, with every overhead it carries.

    ``bits_per_element`` (computed) is ``block_bits / (block_size * block_rows)`` plus the
    super-block term: exact, and the figure to quote. Shape-dependent terms (``row_bits``,
    ``col_bits``, ``matrix_bits``) are not in it; :func:`tensor_bytes` adds them.
    """

    name: str
    """Canonical lower-case name, e.g. ``q4_k``, ``bnb-nf4-dq``, ``gptq-int4-g128``."""
    aliases: tuple[str, ...]
    kind: str
    """One of :data:`KINDS`."""
    block_size: int
    """Elements per block along the last dimension (1 for plain dtypes)."""
    block_bits: int
    """Bits of one whole block: its quantized values plus its own scales/zeros/mins."""
    element_bits: Fraction
    """Bits of one element's quantized value (the payload, without any metadata)."""
    description: str
    """The layout and the derivation of the bits."""
    source: str
    """The file or paper the layout comes from."""
    unquantized: tuple[str, ...] = ()
    """Roles (from :data:`ROLES`) the format leaves unquantized by default."""
    unquantized_dtype: str | None = None
    """The dtype those roles stay in (a :data:`DTYPES` name)."""
    needs_dequant_buffer: bool = False
    """Whether common kernels dequantize a whole layer's weight into a 16-bit temporary."""
    compute_dtype: str = "bf16"
    """The dtype of the activations the layer takes and returns."""
    block_rows: int = 1
    """Rows per block: 128 for 128x128 tiles, 1 for blocks within a row."""
    pad_blocks: bool = False
    """Blocks are stored whole (ggml): a partial last block costs a full one, payload too."""
    flat_blocks: bool = False
    """Blocks run over the flattened tensor (bitsandbytes), not over each row."""
    super_block_size: int = 0
    """Elements per second-level scale (bitsandbytes double quantization), 0 if none."""
    super_block_bits: int = 0
    row_bits: int = 0
    """Bits per row (output channel) of each matrix, e.g. a per-channel scale."""
    col_bits: int = 0
    """Bits per column (input feature) of each matrix, e.g. GPTQ's int32 ``g_idx``."""
    matrix_bits: int = 0
    """Bits per 2-D matrix, e.g. a per-tensor fp32 scale."""
    ggml_type: str | None = None
    """The ggml type name (``Q4_K``) for GGUF block types."""
    bits_per_element: Fraction = field(init=False)

    def __post_init__(self) -> None:
        # Internal invariants of the table (not user input).
        assert self.name == self.name.lower(), self.name
        assert self.kind in KINDS, self.kind
        assert set(self.unquantized) <= set(ROLES), self.unquantized
        assert self.unquantized_dtype is None or self.unquantized_dtype in DTYPE_BITS
        assert self.block_size >= 1 and self.block_rows >= 1
        per_block = self.block_size * self.block_rows
        assert self.block_bits >= self.element_bits * per_block, self.name
        assert (self.super_block_size == 0) == (self.super_block_bits == 0)
        bits = Fraction(self.block_bits, per_block)
        if self.super_block_size:
            bits += Fraction(self.super_block_bits, self.super_block_size)
        object.__setattr__(self, "bits_per_element", bits)

    @property
    def block_elements(self) -> int:
        """Elements per block (``block_size * block_rows``)."""
        return self.block_size * self.block_rows

    @property
    def block_metadata_bits(self) -> Fraction:
        """Bits of one block that are not quantized values (scales, zeros, mins)."""
        return self.block_bits - self.element_bits * self.block_elements


def _plain(name: str, aliases: tuple[str, ...], bits: int, description: str, *,
           kind: str = "float", compute: str | None = None,
           source: str = "IEEE 754 / PyTorch dtypes") -> WeightFormat:
    return WeightFormat(name=name, aliases=aliases, kind=kind, block_size=1, block_bits=bits,
                        element_bits=Fraction(bits), description=description, source=source,
                        compute_dtype=compute or name)


# Tensors the HF-style quantizers below skip: embeddings and the LM head stay in the model's
# 16-bit dtype (transformers keeps the output embedding out of every quantizer), as do norms
# and biases, which are not Linear weights.
_HF_SKIP = ("embeddings", "lm_head", "norms", "biases")

_FLOATS = (
    _plain("fp32", ("float32", "f32"), 32,
           "IEEE binary32: 32 bits per element, no overhead.", compute="fp32"),
    _plain("tf32", ("tensorfloat32",), 32,
           "TF32 is a tensor-core matmul mode, not a storage type: values are stored as fp32 "
           "(32 bits) and multiplied with a 10-bit mantissa.", compute="tf32",
           source="NVIDIA A100 whitepaper (TF32)"),
    _plain("fp16", ("float16", "half", "f16"), 16, "IEEE binary16: 16 bits, no overhead."),
    _plain("bf16", ("bfloat16",), 16, "bfloat16 (8-bit exponent, 7-bit mantissa): 16 bits."),
    WeightFormat(
        name="fp8-e4m3", aliases=("fp8", "float8_e4m3fn", "e4m3", "w8a8-fp8"),
        kind="float", block_size=1, block_bits=8, element_bits=Fraction(8), matrix_bits=32,
        description="FP8 E4M3 with one fp32 scale per weight matrix: 8 bits per element + "
                    "32 bits per matrix (matrix_bits). Static activation quantization stores "
                    "a second fp32 (input_scale) per matrix, not counted. Kernels without FP8 "
                    "tensor cores (pre-Ada) run it weight-only through Marlin.",
        source="OCP 8-bit Floating Point Specification (OFP8) v1.0; vLLM/llm-compressor "
               "per-tensor FP8 checkpoints (weight_scale: one fp32 per Linear)",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="bf16"),
    WeightFormat(
        name="fp8-e5m2", aliases=("float8_e5m2", "e5m2"),
        kind="float", block_size=1, block_bits=8, element_bits=Fraction(8), matrix_bits=32,
        description="FP8 E5M2 with one fp32 scale per weight matrix: 8 bits per element + "
                    "32 bits per matrix.",
        source="OCP 8-bit Floating Point Specification (OFP8) v1.0",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="bf16"),
    WeightFormat(
        name="fp8-block", aliases=("fp8-block-128", "fp8-128x128", "deepseek-fp8"),
        kind="float", block_size=128, block_rows=128, block_bits=128 * 128 * 8 + 32,
        element_bits=Fraction(8),
        description="FP8 E4M3 in 128x128 tiles, one fp32 scale per tile (DeepSeek-V3 "
                    "weight_scale_inv, shape [ceil(out/128), ceil(in/128)]): "
                    "8 + 32/16384 bits = 8.001953125. Embeddings, LM head, norms and the MoE "
                    "gate stay in bf16.",
        source="DeepSeek-V3 technical report (arXiv:2412.19437) sec. 3.3; deepseek-ai/"
               "DeepSeek-V3 config.json quantization_config weight_block_size [128, 128]",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="bf16"),
)

_INT8 = (
    WeightFormat(
        name="int8", aliases=("int8-per-channel", "w8a16", "w8a8-int8"),
        kind="int", block_size=1, block_bits=8, element_bits=Fraction(8), row_bits=32,
        description="Symmetric int8 with one fp32 scale per output channel (row): 8 bits per "
                    "element + 32 bits per row (row_bits). Chosen to match bitsandbytes' SCB; "
                    "checkpoints that keep the scale in 16 bits use 16 bits per row, a "
                    "difference under 0.05% for rows of 4096.",
        source="per-channel weight quantization (LLM.int8(), arXiv:2208.07339 sec. 3)",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="bf16"),
    WeightFormat(
        name="bnb-int8", aliases=("llm.int8", "llm-int8", "bnb-8bit", "load-in-8bit",
                                  "bitsandbytes-int8"),
        kind="bnb", block_size=1, block_bits=8, element_bits=Fraction(8), row_bits=32,
        description="bitsandbytes LLM.int8(): Int8Params keeps CB (int8, [out, in]) and SCB "
                    "(fp32 absmax per row, [out]): 8 bits per element + 32 bits per row. "
                    "Outlier columns (|x| > threshold 6.0) run in 16 bits from the int8 "
                    "weight's dequantized columns only, not the whole layer.",
        source="bitsandbytes-foundation/bitsandbytes bitsandbytes/nn/modules.py Int8Params "
               "(CB, SCB); arXiv:2208.07339",
        unquantized=_HF_SKIP, unquantized_dtype="fp16", compute_dtype="fp16"),
)


def _bnb4(quant: str, double: bool) -> WeightFormat:
    label = {"nf4": "NF4 (4-bit NormalFloat)", "fp4": "FP4 (e2m1)"}[quant]
    name = f"bnb-{quant}" + ("-dq" if double else "")
    # A bare "fp4" would be ambiguous with mxfp4/nvfp4; transformers' load_in_4bit default is
    # bnb_4bit_quant_type="fp4" without double quantization.
    aliases = {("nf4", False): ("nf4",), ("nf4", True): ("nf4-dq", "nf4-double-quant", "qlora"),
               ("fp4", False): ("load-in-4bit",), ("fp4", True): ("bnb-fp4-double-quant",)
               }[(quant, double)]
    if double:
        # absmax per 64 values quantized to 8 bits (quantize_blockwise, blocksize=256) with an
        # fp32 absmax per 256 first-level blocks; fp32 offset (absmax mean) per tensor.
        derivation = ("4-bit values + 8-bit absmax per 64 + fp32 second-level absmax per "
                      "256 blocks = 4 + 8/64 + 32/16384 = 4.126953125 bits; per weight also an "
                      "fp32 offset and the 16-entry fp32 code (matrix_bits = 32 + 512). The "
                      "256-entry fp32 map of the second level is cached and shared by "
                      "bitsandbytes (a prequantized checkpoint loads one per weight, +1 KiB).")
        block_bits, super_size, super_bits, matrix_bits = 64 * 4 + 8, 64 * 256, 32, 32 + 512
    else:
        derivation = ("4-bit values + fp32 absmax per block of 64 = 4 + 32/64 = 4.5 bits; per "
                      "weight also the 16-entry fp32 code (matrix_bits = 512).")
        block_bits, super_size, super_bits, matrix_bits = 64 * 4 + 32, 0, 0, 512
    return WeightFormat(
        name=name, aliases=aliases, kind="bnb", block_size=64, block_bits=block_bits,
        element_bits=Fraction(4), flat_blocks=True, super_block_size=super_size,
        super_block_bits=super_bits, matrix_bits=matrix_bits,
        description=f"bitsandbytes {label}, blocksize 64 over the flattened weight: "
                    f"{derivation} For more than one token per step (prefill, training) "
                    "matmul_4bit dequantizes the layer's whole weight to 16 bits; one-token "
                    "decode uses the gemv_4bit kernel. Linear4bit computes in the input's "
                    "dtype when it is bf16/fp32.",
        source=_BNB + (" (compress_statistics: quantize_blockwise(absmax - offset, "
                       "blocksize=256))" if double else ""),
        unquantized=_HF_SKIP, unquantized_dtype="bf16", needs_dequant_buffer=True)


def _gptq(group_size: int) -> WeightFormat:
    g = group_size
    aliases: tuple[str, ...] = (f"gptq-g{g}", f"gptq-4bit-g{g}", f"int4-gptq-g{g}")
    if g == 128:
        aliases += ("gptq", "gptq-int4", "gptq-4bit", "int4-gptq")
    bits = Fraction(4) + Fraction(16 + 4, g)
    return WeightFormat(
        name=f"gptq-int4-g{g}", aliases=aliases, kind="int", block_size=g,
        block_bits=4 * g + 16 + 4, element_bits=Fraction(4), col_bits=32,
        description=f"GPTQ 4-bit, group size {g} along in_features: int32-packed 4-bit "
                    f"qweight + one fp16 scale per group + one 4-bit zero point per group "
                    f"(qzeros, int32-packed) = 4 + 16/{g} + 4/{g} = {float(bits)} bits; plus "
                    "g_idx, one int32 per input feature (col_bits = 32), which AutoGPTQ stores "
                    "with or without desc_act (act-order makes it a real permutation). exllama "
                    "v1/v2 kernels dequantize a layer into a shared fp16 scratch buffer for "
                    "large batches; Marlin does not.",
        source=_GPTQ + "; arXiv:2210.17323",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="fp16",
        needs_dequant_buffer=True, compute_dtype="fp16")


def _awq(group_size: int) -> WeightFormat:
    g = group_size
    aliases: tuple[str, ...] = (f"awq-g{g}", f"awq-4bit-g{g}", f"int4-awq-g{g}")
    if g == 128:
        aliases += ("awq", "awq-int4", "awq-4bit", "int4-awq")
    bits = Fraction(4) + Fraction(16 + 4, g)
    return WeightFormat(
        name=f"awq-int4-g{g}", aliases=aliases, kind="int", block_size=g,
        block_bits=4 * g + 16 + 4, element_bits=Fraction(4),
        description=f"AWQ 4-bit (GEMM layout), group size {g}: qweight int32 [in, out/8], "
                    f"fp16 scales [in/{g}, out], 4-bit zeros int32-packed [in/{g}, out/8] = "
                    f"4 + 16/{g} + 4/{g} = {float(bits)} bits; no g_idx. WQLinear_GEMM "
                    "dequantizes the whole weight to fp16 when a call has >= 1024 tokens.",
        source=_AWQ + "; arXiv:2306.00978",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="fp16",
        needs_dequant_buffer=True, compute_dtype="fp16")


_MX = (
    WeightFormat(
        name="mxfp4", aliases=("mxfp4-e2m1", "gguf-mxfp4"), kind="mx", block_size=32,
        block_bits=32 * 4 + 8, element_bits=Fraction(4), ggml_type="MXFP4",
        description="OCP microscaling MXFP4: blocks of 32 FP4 (e2m1) values sharing one E8M0 "
                    "8-bit scale = 4 + 8/32 = 4.25 bits (ggml block_mxfp4: 1 + 16 bytes / 32). "
                    "gpt-oss stores only the MoE expert weights in MXFP4 and keeps attention, "
                    "embeddings, the LM head and the router in bf16. transformers without the "
                    "MXFP4 kernels dequantizes the experts to bf16 at load time.",
        source="OCP Microscaling Formats (MX) v1.0; openai/gpt-oss (MoE weights in MXFP4); "
               + _GGML_COMMON + " block_mxfp4",
        unquantized=_HF_SKIP + ("router", "attention"), unquantized_dtype="bf16"),
    WeightFormat(
        name="nvfp4", aliases=("nvfp4-e2m1",), kind="mx", block_size=16,
        block_bits=16 * 4 + 8, element_bits=Fraction(4), matrix_bits=64,
        description="NVIDIA NVFP4: blocks of 16 FP4 (e2m1) values with one FP8 E4M3 scale "
                    "= 4 + 8/16 = 4.5 bits; per matrix an fp32 global weight scale "
                    "(weight_scale_2) and an fp32 input_scale (matrix_bits = 64).",
        source="NVIDIA TensorRT Model Optimizer NVFP4 checkpoints (weight, weight_scale, "
               "weight_scale_2, input_scale); NVIDIA Blackwell architecture whitepaper",
        unquantized=_HF_SKIP + ("router",), unquantized_dtype="bf16"),
)

# ggml block types: (GGML name, elements per block, bytes per block, layout). The bytes are
# gguf-py's GGML_QUANT_SIZES and the sizeof() static_asserts in ggml-common.h.
_GGML_BLOCKS: tuple[tuple[str, int, int, str], ...] = (
    ("Q4_0", 32, 18, "block_q4_0: fp16 d + 32 4-bit quants (16 bytes) = 18 bytes / 32"),
    ("Q4_1", 32, 20, "block_q4_1: fp16 d + fp16 m + 16 bytes of 4-bit quants = 20 bytes / 32"),
    ("Q5_0", 32, 22, "block_q5_0: fp16 d + 4 bytes of 5th bits + 16 bytes of nibbles = "
                     "22 bytes / 32"),
    ("Q5_1", 32, 24, "block_q5_1: fp16 d + fp16 m + 4 bytes of 5th bits + 16 bytes of nibbles "
                     "= 24 bytes / 32"),
    ("Q8_0", 32, 34, "block_q8_0: fp16 d + 32 int8 = 34 bytes / 32"),
    ("Q2_K", 256, 84, "block_q2_K: super-block of 256 = 16 blocks of 16; 16 bytes of 4-bit "
                      "scales and mins + 64 bytes of 2-bit quants + fp16 d and dmin = "
                      "84 bytes / 256"),
    ("Q3_K", 256, 110, "block_q3_K: 16 blocks of 16; 32 bytes high bits + 64 bytes low 2 bits "
                       "+ 12 bytes of 6-bit scales + fp16 d = 110 bytes / 256"),
    ("Q4_K", 256, 144, "block_q4_K: super-block of 256 = 8 blocks of 32; 4-bit quants (128 "
                       "bytes) + 6-bit scales and mins per block (12 bytes) + fp16 d and dmin "
                       "per super-block = 144 bytes / 256"),
    ("Q5_K", 256, 176, "block_q5_K: 8 blocks of 32; 128 bytes low 4 bits + 32 bytes high bits "
                       "+ 12 bytes 6-bit scales and mins + fp16 d and dmin = 176 bytes / 256"),
    ("Q6_K", 256, 210, "block_q6_K: 16 blocks of 16; 128 bytes low 4 bits + 64 bytes high 2 "
                       "bits + 16 int8 scales + fp16 d = 210 bytes / 256"),
    ("Q8_K", 256, 292, "block_q8_K: fp32 d + 256 int8 + 16 int16 block sums = 292 bytes / "
                       "256; llama.cpp uses it only for intermediate quantization of "
                       "activations in dot products, never in model files"),
    ("IQ1_S", 256, 50, "block_iq1_s: fp16 d + 32 bytes grid indices + 8 uint16 of high index "
                       "bits, scales and shifts = 50 bytes / 256"),
    ("IQ1_M", 256, 56, "block_iq1_m: 32 bytes grid indices + 16 bytes high bits and shifts + 8 "
                       "bytes 3-bit scales (the fp16 super-scale is spread over them) = "
                       "56 bytes / 256"),
    ("IQ2_XXS", 256, 66, "block_iq2_xxs: fp16 d + 32 uint16 (E8-lattice indices, signs and "
                         "4-bit scales packed) = 66 bytes / 256"),
    ("IQ2_XS", 256, 74, "block_iq2_xs: fp16 d + 32 uint16 of indices and signs + 8 bytes of "
                        "scales = 74 bytes / 256"),
    ("IQ2_S", 256, 82, "block_iq2_s: fp16 d + 64 bytes indices + 8 bytes high bits + 8 bytes "
                       "scales = 82 bytes / 256"),
    ("IQ3_XXS", 256, 98, "block_iq3_xxs: fp16 d + 96 bytes (grid indices, signs and scales) "
                         "= 98 bytes / 256"),
    ("IQ3_S", 256, 110, "block_iq3_s: fp16 d + 64 bytes indices + 8 bytes high bits + 32 bytes "
                        "signs + 4 bytes scales = 110 bytes / 256"),
    ("IQ4_NL", 32, 18, "block_iq4_nl: fp16 d + 16 bytes of 4-bit non-linear codes = "
                       "18 bytes / 32"),
    ("IQ4_XS", 256, 136, "block_iq4_xs: fp16 d + uint16 high scale bits + 4 bytes low scale "
                         "bits + 128 bytes of 4-bit non-linear codes = 136 bytes / 256"),
    ("TQ1_0", 256, 54, "block_tq1_0: 48 bytes of base-3 trits (5 per byte) + 4 bytes (4 per "
                       "byte) + fp16 d = 54 bytes / 256"),
    ("TQ2_0", 256, 66, "block_tq2_0: 64 bytes of 2-bit ternary values + fp16 d = 66 bytes / "
                       "256"),
)


def _ggml(ggml_name: str, block: int, type_size: int, layout: str) -> WeightFormat:
    bits = Fraction(8 * type_size, block)
    return WeightFormat(
        name=ggml_name.lower(), aliases=(f"gguf-{ggml_name.lower()}",), kind="gguf",
        block_size=block, block_bits=8 * type_size, element_bits=bits, pad_blocks=True,
        ggml_type=ggml_name,
        description=f"GGUF {ggml_name}: {layout} = {bits} bits ({float(bits)}).",
        source=f"{_GGML_COMMON} block_{ggml_name.lower().replace('_k', '_K')}; {_GGUF_SIZES}",
        unquantized=("norms", "router", "biases"), unquantized_dtype="fp32",
        compute_dtype="fp32")


_GGUF = tuple(_ggml(*row) for row in _GGML_BLOCKS)

#: Every weight format, in display order.
FORMATS: tuple[WeightFormat, ...] = (
    _FLOATS + _INT8
    + tuple(_gptq(g) for g in (128, 64, 32))
    + tuple(_awq(g) for g in (128, 64, 32))
    + (_bnb4("nf4", False), _bnb4("nf4", True), _bnb4("fp4", False), _bnb4("fp4", True))
    + _MX + _GGUF
)
FORMAT_NAMES: tuple[str, ...] = tuple(f.name for f in FORMATS)

_FORMAT_INDEX: dict[str, WeightFormat] = {}
for _fmt in FORMATS:
    for _spelling in (_fmt.name,) + _fmt.aliases:
        assert _key(_spelling) not in _FORMAT_INDEX, _spelling
        _FORMAT_INDEX[_key(_spelling)] = _fmt

#: ggml type name (as llama.cpp spells it) -> format. F32/F16/BF16 are the plain floats.
GGML_TYPES: dict[str, WeightFormat] = {
    "F32": _FORMAT_INDEX["fp32"], "F16": _FORMAT_INDEX["fp16"], "BF16": _FORMAT_INDEX["bf16"],
    **{f.ggml_type: f for f in FORMATS if f.ggml_type is not None},
}


def get_format(name: str | WeightFormat) -> WeightFormat:
    """The weight format called ``name`` (case-insensitive; ``-``/``_`` alike; aliases such
    as ``nf4``, ``gptq``, ``gguf-q4_k``); raises :class:`MemfitError` naming the valid ones."""
    if isinstance(name, WeightFormat):
        return name
    if isinstance(name, str):
        found = _FORMAT_INDEX.get(_key(name))
        if found is not None:
            return found
    raise _unknown("weights", name, FORMAT_NAMES)


def get_ggml_type(name: str) -> WeightFormat:
    """The format of a ggml tensor type by llama.cpp's name (``Q4_K``, ``F16``)."""
    if isinstance(name, str):
        found = GGML_TYPES.get(name.strip().upper())
        if found is not None:
            return found
    raise _unknown("ggml type", name, GGML_TYPES)


def bytes_for(n_elements: int, fmt: str | WeightFormat, *, n_tensors: int = 0) -> int:
    """Bytes of ``n_elements`` values in ``fmt``, taken as one flat run of whole blocks.

    Exact for whole blocks: ``ceil(n / block) * block_bits`` for padded (GGUF) formats,
    ``n * element_bits + ceil(n / block) * metadata`` otherwise, plus super-blocks, then
    ``n_tensors * matrix_bits`` (e.g. one fp32 per tensor for per-tensor FP8), rounded up to
    a byte. Per-row and per-column overheads need the shape: use :func:`tensor_bytes`.
    """
    f = get_format(fmt)
    n = _check_count("n_elements", n_elements)
    k = _check_count("n_tensors", n_tensors)
    blocks = -(-n // f.block_elements)
    if f.pad_blocks:
        bits = Fraction(blocks * f.block_bits)
    else:
        bits = n * f.element_bits + blocks * f.block_metadata_bits
    if f.super_block_size:
        bits += -(-n // f.super_block_size) * f.super_block_bits
    bits += k * f.matrix_bits
    return math.ceil(bits / 8)


def tensor_bytes(shape: Sequence[int], fmt: str | WeightFormat) -> int:
    """Bytes of one tensor of ``shape`` in ``fmt`` (PyTorch order, last dimension contiguous:
    ``[out_features, in_features]`` for a Linear weight, ``[experts, out, in]`` for fused
    experts), every overhead included.

    Blocks run along the last dimension, whose length is rounded up to whole blocks per row
    (``block_rows`` rows at a time for 2-D tiles), or over the flattened tensor for
    bitsandbytes; rows, columns and matrices then add their own overheads.
    """
    f = get_format(fmt)
    dims = tuple(shape) if not isinstance(shape, int) else (shape,)
    if not dims or any(not isinstance(d, int) or isinstance(d, bool) or d < 0 for d in dims):
        raise MemfitError.bad_value("shape", shape, "a non-empty sequence of non-negative "
                                    "integers, last dimension contiguous")
    if 0 in dims:
        return 0
    cols = dims[-1]
    rows = dims[-2] if len(dims) >= 2 else 1
    matrices = math.prod(dims[:-2])
    n = matrices * rows * cols
    if f.flat_blocks:
        blocks = -(-n // f.block_elements)
        supers = -(-n // f.super_block_size) if f.super_block_size else 0
    else:
        blocks = matrices * -(-rows // f.block_rows) * -(-cols // f.block_size)
        supers = matrices * rows * -(-cols // f.super_block_size) if f.super_block_size else 0
    # integer arithmetic on the element bits' numerator and denominator (a Fraction's
    # arithmetic costs microseconds per operation; this runs for every tensor of a model):
    # bits = X / den, and ceil(bits / 8) = ceil(X / (8 * den))
    num, den = f.element_bits.numerator, f.element_bits.denominator
    if f.pad_blocks:
        x = blocks * f.block_bits * den
    else:
        x = n * num + blocks * (f.block_bits * den - num * f.block_elements)
    x += den * (supers * f.super_block_bits
                + matrices * (rows * f.row_bits + cols * f.col_bits + f.matrix_bits))
    return -(-x // (8 * den))


# --------------------------------------------------------------------------------------------
# GGUF file types (llama.cpp mixtures)
# --------------------------------------------------------------------------------------------

#: Tensor roles in a GGUF file, as llama.cpp names the tensors (``blk.N.attn_v.weight`` ->
#: ``attn_v``). ``*_exps`` are fused 3-D expert tensors, ``*_shexp`` shared experts;
#: ``ffn_gate_inp`` is the MoE router; ``other`` is any other 2-D weight (``attn_q_a``...).
GGUF_ROLES: tuple[str, ...] = (
    "token_embd", "output", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_kv_b",
    "attn_output", "ffn_gate", "ffn_up", "ffn_down", "ffn_gate_exps", "ffn_up_exps",
    "ffn_down_exps", "ffn_gate_shexp", "ffn_up_shexp", "ffn_down_shexp", "other",
    "ffn_gate_inp", "norm", "bias",
)
# Roles llama-quantize never quantizes (tensor_allows_quantization): 1-D tensors, *_norm, and
# ffn_gate_inp. convert_hf_to_gguf.py writes them as F32.
_F32_ROLES = frozenset({"ffn_gate_inp", "norm", "bias"})
_EXPERT_ROLES = frozenset({"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"})
# llama-quant.cpp tensor_get_category / category_is_attn_v.
_ATTN_V_LIKE = frozenset({"attn_v", "attn_qkv", "attn_kv_b"})


def _category(role: str) -> str:
    if role in _ATTN_V_LIKE:
        return "attn_v"
    for prefix in ("ffn_gate", "ffn_up", "ffn_down"):
        if role.startswith(prefix):
            return prefix
    return role


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for which layers a ``_M`` mixture gives more bits: the first and last
    eighth of the layers, and every third layer in between (half of them in all).

    ``i_layer < n/8 or i_layer >= 7n/8 or (i_layer - n/8) % 3 == 2``, integer division
    (``llama_tensor_get_type_impl`` in ``src/llama-quant.cpp``).
    """
    n8 = n_layers // 8
    return i_layer < n8 or i_layer >= 7 * n_layers // 8 or (i_layer - n8) % 3 == 2


# tensor_type_fallback: a row not divisible by the type's block size takes this type instead.
_FALLBACK: dict[str, str] = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL",
    "IQ2_S": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}


def ggml_fallback_type(ggml_type: str, row_length: int) -> str:
    """The ggml type llama-quantize actually writes for rows of ``row_length`` elements:
    ``ggml_type`` itself when the row is a whole number of blocks, else its fallback
    (``tensor_type_fallback``: Q4_K -> Q5_0, Q6_K -> Q8_0, IQ* -> IQ4_NL ...), else F16."""
    fmt = get_ggml_type(ggml_type)
    name = fmt.ggml_type or ggml_type.strip().upper()
    n = _check_count("row_length", row_length)
    if n % fmt.block_size == 0:
        return name
    if name not in _FALLBACK:
        raise MemfitError.bad_value("row_length", row_length,
                                    f"a multiple of {fmt.block_size} for {name} (llama.cpp "
                                    "defines no fallback type for it)")
    fallback = _FALLBACK[name]
    return fallback if n % GGML_TYPES[fallback].block_size == 0 else "F16"


@dataclass(frozen=True)
class GGUFFileType:
    """A llama.cpp file type (``llama-quantize`` preset): which ggml type each tensor gets.

    Named after its default type; :meth:`tensor_type` applies llama.cpp's per-role and
    per-layer rules (``llama_tensor_get_type_impl``) for this preset.
    """

    name: str
    """As ``llama-quantize`` spells it, e.g. ``Q4_K_M``."""
    aliases: tuple[str, ...]
    ftype: int
    """The ``llama_ftype`` value stored in ``general.file_type``."""
    default_type: str
    """The ggml type of every 2-D weight no rule overrides."""
    description: str
    source: str = _LLAMA_QUANT

    @property
    def default_format(self) -> WeightFormat:
        return GGML_TYPES[self.default_type]

    def tensor_type(self, role: str, i_layer: int = 0, n_layers: int = 1, *,
                    n_gqa: int = 1, n_expert: int = 0, row_length: int | None = None,
                    tied_embeddings: bool = False, has_imatrix: bool = False,
                    llama_70b: bool = False, falcon: bool = False) -> str:
        """The ggml type name of the tensor with ``role`` in layer ``i_layer`` of ``n_layers``.

        ``i_layer``/``n_layers``: for ``attn_v``-like roles, the tensor's index among the
        model's attn_v/attn_qkv/attn_kv_b tensors and their count (the layer index for the
        usual one-per-layer model); for FFN roles, the layer index and the layer count.
        ``n_gqa`` = attention heads / KV heads; ``n_expert`` = routed experts (llama.cpp has
        special rules for exactly 8). ``row_length`` (the tensor's last dimension) enables
        the shape rules: the output falls back to Q8_0 when not a multiple of the default
        type's block, and every type falls back per :func:`ggml_fallback_type`.
        ``tied_embeddings``: no ``output.weight``, so ``token_embd`` is quantized as the
        output. ``llama_70b``: llama.cpp's ``LLM_TYPE_70B`` (it bumps attn_v to Q5_K);
        ``falcon``: the Falcon architecture's own rules.
        """
        if role not in GGUF_ROLES:
            raise _unknown("role", role, GGUF_ROLES)
        _check_count("i_layer", i_layer)
        _check_count("n_layers", n_layers)
        if i_layer >= max(n_layers, 1):
            raise MemfitError.bad_value("i_layer", i_layer, f"less than n_layers={n_layers}")
        if role in _F32_ROLES:
            return "F32"
        if self.default_type in ("F32", "F16", "BF16"):
            return self.default_type            # unquantized files: no per-tensor rules
        t = self._rule(role, i_layer, n_layers, n_gqa=n_gqa, n_expert=n_expert,
                       row_length=row_length, tied=tied_embeddings, imatrix=has_imatrix,
                       is_70b=llama_70b, falcon=falcon)
        if row_length is not None:
            t = ggml_fallback_type(t, row_length)
        return t

    def tensor_format(self, role: str, i_layer: int = 0, n_layers: int = 1,
                      **options: Any) -> WeightFormat:
        """:meth:`tensor_type` as a :class:`WeightFormat` (same options)."""
        return GGML_TYPES[self.tensor_type(role, i_layer, n_layers, **options)]

    def _rule(self, role: str, i: int, n: int, *, n_gqa: int, n_expert: int,
              row_length: int | None, tied: bool, imatrix: bool, is_70b: bool,
              falcon: bool) -> str:
        # Mirrors llama_tensor_get_type_impl for the presets in GGUF_FILE_TYPES (the IQ*
        # presets, TQ*, Q2_K_S and IQ3_* are not modelled).
        ft, new, cat = self.name, self.default_type, _category(role)
        if cat == "output" or (tied and cat == "token_embd"):
            if ft == "MXFP4_MOE":
                return "Q8_0"
            if falcon or (row_length is not None
                          and row_length % GGML_TYPES[new].block_size != 0):
                return "Q8_0"
            return new if new == "Q8_0" else "Q6_K"
        if ft == "MXFP4_MOE":
            return "MXFP4" if role in _EXPERT_ROLES else "Q8_0"
        if cat == "token_embd":
            return new
        if cat == "attn_v":
            if ft == "Q2_K":
                new = "Q4_K" if n_gqa >= 4 else "Q3_K"
            elif ft == "Q3_K_M":
                new = "Q5_K" if i < 2 else "Q4_K"
            elif ft == "Q3_K_L":
                new = "Q5_K"
            elif ft in ("Q4_K_M", "Q5_K_M") and use_more_bits(i, n):
                new = "Q6_K"
            elif ft == "Q4_K_S" and i < 4:
                new = "Q5_K"
            if is_70b and new in ("Q3_K", "Q4_K"):
                new = "Q5_K"
            if n_expert == 8:
                new = "Q8_0"
            return new
        if cat == "attn_k":
            return "Q8_0" if n_expert == 8 else new
        if cat == "ffn_down":
            more = use_more_bits(i, n)
            if ft == "Q2_K":
                return "Q3_K"
            if ft == "Q3_K_M":
                return "Q5_K" if i < n // 16 else ("Q4_K" if not falcon or more else "Q3_K")
            if ft == "Q3_K_L":
                return "Q4_K" if falcon else "Q5_K"
            if ft == "Q4_K_M":
                if falcon:
                    return "Q6_K" if i < n // 16 else ("Q5_K" if more else "Q4_K")
                return "Q6_K" if more else new
            if ft == "Q5_K_M":
                return "Q6_K" if more else new
            if ft == "Q4_K_S":
                return "Q5_K" if not falcon and i < n // 8 else new
            if ft in ("Q4_0", "Q5_0") and imatrix and i < n // 8:
                return "Q4_1" if ft == "Q4_0" else "Q5_1"
            return new
        if cat == "attn_output":
            if falcon:
                return "Q4_K" if ft == "Q3_K_L" else new
            if n_expert == 8:
                return "Q5_K" if ft in ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_K_S", "Q4_K_M") else new
            return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(ft, new)
        return new


_NOTE_F32 = ("Norms, biases and the router (ffn_gate_inp) are never quantized and stay F32 "
             "as convert_hf_to_gguf.py writes them.")
_NOTE_OUT = ("output.weight (and token_embd when the embeddings are tied) gets Q6_K, or Q8_0 "
             "when its rows are not a multiple of the default type's block.")

#: The GGUF file types modelled, each with its llama-quantize rules.
GGUF_FILE_TYPES: tuple[GGUFFileType, ...] = (
    GGUFFileType("F32", ("all-f32",), 0, "F32", "Every tensor F32."),
    GGUFFileType("F16", ("mostly-f16",), 1, "F16", "2-D weights F16; 1-D tensors and the "
                 "router F32."),
    GGUFFileType("BF16", ("mostly-bf16",), 32, "BF16", "2-D weights BF16; 1-D tensors and "
                 "the router F32."),
    GGUFFileType("Q8_0", (), 7, "Q8_0", "Every 2-D weight Q8_0, output.weight included. "
                 + _NOTE_F32),
    GGUFFileType("Q6_K", (), 18, "Q6_K", "Every 2-D weight Q6_K. " + _NOTE_F32),
    GGUFFileType("Q5_K_M", (), 17, "Q5_K", "Q5_K, with Q6_K for attn_v and ffn_down in the "
                 "use_more_bits layers (half of them). " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q5_K_S", (), 16, "Q5_K", "Q5_K throughout. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q5_1", (), 9, "Q5_1", "Q5_1 throughout. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q5_0", (), 8, "Q5_0", "Q5_0 throughout (ffn_down of the first eighth of "
                 "the layers Q5_1 with an imatrix). " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q4_K_M", (), 15, "Q4_K", "Q4_K, with Q6_K for attn_v and ffn_down in the "
                 "use_more_bits layers (the first and last eighth and every third layer "
                 "between: half of them). " + _NOTE_OUT + " With 8 experts attn_v and attn_k "
                 "are Q8_0 and attn_output Q5_K. " + _NOTE_F32),
    GGUFFileType("Q4_K_S", (), 14, "Q4_K", "Q4_K, with Q5_K for the first 4 attn_v and the "
                 "ffn_down of the first eighth of the layers. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q4_1", (), 3, "Q4_1", "Q4_1 throughout. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q4_0", (), 2, "Q4_0", "Q4_0 throughout (ffn_down of the first eighth of "
                 "the layers Q4_1 with an imatrix). " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q3_K_L", (), 13, "Q3_K", "Q3_K, with Q5_K for attn_v, ffn_down and "
                 "attn_output. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q3_K_M", (), 12, "Q3_K", "Q3_K, with attn_v Q5_K in the first 2 layers and "
                 "Q4_K after, ffn_down Q5_K in the first sixteenth and Q4_K after, "
                 "attn_output Q4_K. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q3_K_S", (), 11, "Q3_K", "Q3_K throughout. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("Q2_K", (), 10, "Q2_K", "Q2_K, with attn_v Q3_K (Q4_K when heads/KV heads "
                 ">= 4), ffn_down and attn_output Q3_K. " + _NOTE_OUT + " " + _NOTE_F32),
    GGUFFileType("MXFP4_MOE", (), 38, "MXFP4", "Fused 3-D expert tensors MXFP4, "
                 "every other 2-D weight Q8_0, output.weight Q8_0. " + _NOTE_F32),
)

_FILE_TYPE_INDEX: dict[str, GGUFFileType] = {}
for _ft in GGUF_FILE_TYPES:
    for _spelling in (_ft.name,) + _ft.aliases:
        assert _key(_spelling) not in _FILE_TYPE_INDEX, _spelling
        _FILE_TYPE_INDEX[_key(_spelling)] = _ft


def get_file_type(name: str) -> GGUFFileType:
    """The GGUF file type called ``name`` (``q4_k_m``, ``Q8_0`` ...), case-insensitive."""
    if isinstance(name, str):
        found = _FILE_TYPE_INDEX.get(_key(name))
        if found is not None:
            return found
    raise _unknown("gguf file type", name, (ft.name for ft in GGUF_FILE_TYPES))


def resolve_weights(name: str) -> WeightFormat | GGUFFileType:
    """What a ``--weights`` value means: a GGUF file type when it names one (``Q4_K_M``, and
    also ``Q8_0``/``Q4_0``/``Q6_K``/``Q2_K``, whose files carry a Q6_K output), else a format."""
    if isinstance(name, str) and _key(name) in _FILE_TYPE_INDEX:
        return _FILE_TYPE_INDEX[_key(name)]
    try:
        return get_format(name)
    except MemfitError:
        names = list(FORMAT_NAMES) + [ft.name for ft in GGUF_FILE_TYPES
                                      if _key(ft.name) not in _FORMAT_INDEX]
        raise _unknown("weights", name, names) from None
