"""The dtype and weight-format table: exact bits against the upstream layouts.

Golden values and where they come from:
- GGUF block sizes: gguf-py ``GGML_QUANT_SIZES`` (llama.cpp ``gguf-py/gguf/constants.py``),
  transcribed below with its own ``QK_K`` expressions, and the ``sizeof`` static_asserts of
  ``ggml/src/ggml-common.h``.
- Llama-2-7B GGUF sizes: llama.cpp's own report, ``model size = 3.80 GiB (4.84 BPW)`` and
  ``CPU buffer size = 3891.24 MiB`` for Q4_K_M, and llama-bench's ``llama 7B Q4_0 3.56 GiB``,
  ``Q8_0 6.67 GiB``, ``F16 12.55 GiB`` (public logs; figures rounded to 2 decimals).
- The seed's weight table (``shared/seed``): 7B at 4 / 2 / 1 bytes per parameter.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from memfit import dtypes as D
from memfit.errors import MemfitError

QK_K = 256
# (block size, bytes per block), exactly as gguf-py writes them.
GGML_QUANT_SIZES = {
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q2_K": (256, 2 + 2 + QK_K // 16 + QK_K // 4),
    "Q3_K": (256, 2 + QK_K // 4 + QK_K // 8 + 12),
    "Q4_K": (256, 2 + 2 + QK_K // 2 + 12),
    "Q5_K": (256, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    "Q6_K": (256, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
    "Q8_K": (256, 4 + QK_K + QK_K // 8),
    "IQ2_XXS": (256, 2 + QK_K // 4),
    "IQ2_XS": (256, 2 + QK_K // 4 + QK_K // 32),
    "IQ3_XXS": (256, 2 + QK_K // 4 + QK_K // 8),
    "IQ1_S": (256, 2 + QK_K // 8 + QK_K // 16),
    "IQ4_NL": (32, 2 + 16),
    "IQ3_S": (256, 2 + QK_K // 4 + QK_K // 8 + QK_K // 32 + 4),
    "IQ2_S": (256, 2 + QK_K // 4 + QK_K // 16),
    "IQ4_XS": (256, 2 + 2 + QK_K // 2 + QK_K // 64),
    "IQ1_M": (256, QK_K // 8 + QK_K // 16 + QK_K // 32),
    "TQ1_0": (256, 2 + 4 * 13),
    "TQ2_0": (256, 2 + 64),
    "MXFP4": (32, 1 + 16),
    "F32": (1, 4),
    "F16": (1, 2),
    "BF16": (1, 2),
}

# The bits per weight llama.cpp's comments state for the k-quants and i-quants.
STATED_BPW = {
    "Q2_K": Fraction("2.625"), "Q3_K": Fraction("3.4375"), "Q4_K": Fraction("4.5"),
    "Q5_K": Fraction("5.5"), "Q6_K": Fraction("6.5625"), "IQ2_XXS": Fraction("2.0625"),
    "IQ2_XS": Fraction("2.3125"), "IQ2_S": Fraction("2.5625"), "IQ3_XXS": Fraction("3.0625"),
    "IQ3_S": Fraction("3.4375"), "IQ1_S": Fraction("1.5625"), "IQ1_M": Fraction("1.75"),
    "TQ1_0": Fraction("1.6875"), "TQ2_0": Fraction("2.0625"),
}


# --- GGUF block types ---------------------------------------------------------------------

@pytest.mark.parametrize("ggml_name", sorted(GGML_QUANT_SIZES))
def test_ggml_type_bits_match_block_bytes(ggml_name):
    block, type_size = GGML_QUANT_SIZES[ggml_name]
    fmt = D.get_ggml_type(ggml_name)
    assert fmt.block_size == block
    assert fmt.bits_per_element == Fraction(8 * type_size, block)
    assert D.tensor_bytes((1, block), fmt) == type_size
    assert D.tensor_bytes((7, 3 * block), fmt) == 21 * type_size
    assert D.bytes_for(5 * block, fmt) == 5 * type_size


@pytest.mark.parametrize("ggml_name", sorted(STATED_BPW))
def test_ggml_bits_match_the_comments_in_ggml_common(ggml_name):
    assert D.get_ggml_type(ggml_name).bits_per_element == STATED_BPW[ggml_name]


def test_every_gguf_format_is_in_the_transcribed_table():
    gguf = {f.ggml_type for f in D.FORMATS if f.kind == "gguf"}
    assert gguf <= set(GGML_QUANT_SIZES)
    assert set(D.GGML_TYPES) == set(GGML_QUANT_SIZES)


def test_gguf_rows_are_padded_to_whole_blocks():
    q4k = D.get_format("q4_k")
    assert D.tensor_bytes((2, 300), q4k) == 2 * 2 * 144      # 300 -> 2 blocks per row
    assert D.bytes_for(300, q4k) == 2 * 144
    assert D.tensor_bytes((300,), q4k) == 2 * 144


# --- bitsandbytes --------------------------------------------------------------------------

def test_bnb_nf4_is_4_5_bits():
    nf4 = D.get_format("nf4")
    assert nf4.name == "bnb-nf4"
    assert nf4.bits_per_element == Fraction(4) + Fraction(32, 64) == Fraction(9, 2)


def test_bnb_nf4_double_quant_figure():
    # 4-bit values + 8-bit absmax per 64 + fp32 absmax per 256 blocks of 64.
    dq = D.get_format("qlora")
    assert dq.name == "bnb-nf4-dq"
    expected = Fraction(4) + Fraction(8, 64) + Fraction(32, 64 * 256)
    assert dq.bits_per_element == expected == Fraction("4.126953125")
    assert round(float(dq.bits_per_element), 3) == 4.127


def test_bnb_blocks_run_over_the_flattened_tensor():
    # 300 values: 150 bytes of nibbles + ceil(300/64) = 5 fp32 absmax + 64-byte code table.
    assert D.tensor_bytes((3, 100), "bnb-nf4") == 150 + 5 * 4 + 64
    # Double quant on a 4096 x 4096 weight: 2**23 bytes of nibbles, 2**18 uint8 absmax,
    # 2**10 fp32 second-level scales, an fp32 offset and the 64-byte code.
    assert D.tensor_bytes((4096, 4096), "bnb-nf4-dq") == 2**23 + 2**18 + 2**10 * 4 + 4 + 64
    # Without a shape, only the blocks: exact for whole super-blocks.
    assert D.bytes_for(2**24, "bnb-nf4-dq") == 2**23 + 2**18 + 2**12


def test_bnb_int8_keeps_an_fp32_scale_per_row():
    assert D.get_format("LLM.int8").name == "bnb-int8"
    assert D.tensor_bytes((4096, 11008), "bnb-int8") == 4096 * 11008 + 4096 * 4


# --- GPTQ / AWQ ----------------------------------------------------------------------------

@pytest.mark.parametrize("g", [128, 64, 32])
def test_gptq_and_awq_bits(g):
    # Formula: 4-bit weight + fp16 scale per group + 4-bit packed zero per group.
    expected = Fraction(4) + Fraction(16, g) + Fraction(4, g)
    assert D.get_format(f"gptq-int4-g{g}").bits_per_element == expected
    assert D.get_format(f"awq-int4-g{g}").bits_per_element == expected


def test_gptq_g128_is_4_15625_bits():
    assert D.get_format("gptq").bits_per_element == Fraction("4.15625")
    assert D.get_format("GPTQ").name == "gptq-int4-g128"
    assert D.get_format("awq").bits_per_element == Fraction("4.15625")


def test_gptq_tensor_bytes_count_every_buffer():
    # AutoGPTQ QuantLinear(in=4096, out=4096, g=128): qweight int32 [512, 4096],
    # qzeros int32 [32, 512], scales fp16 [32, 4096], g_idx int32 [4096].
    qweight, qzeros, scales, g_idx = 512 * 4096 * 4, 32 * 512 * 4, 32 * 4096 * 2, 4096 * 4
    assert D.tensor_bytes((4096, 4096), "gptq") == qweight + qzeros + scales + g_idx
    # AWQ has no g_idx.
    assert D.tensor_bytes((4096, 4096), "awq") == qweight + qzeros + scales
    # A partial last group still gets a scale and a zero (ceil(in / g) rows).
    # 8 rows x 2 groups, each an fp16 scale and a 4-bit zero.
    assert D.tensor_bytes((8, 200), "awq-int4-g128") == 8 * 200 // 2 + 8 * 2 * (16 + 4) // 8


# --- FP8, MX, int8 --------------------------------------------------------------------------

def test_fp8_per_tensor_scale_helper():
    n = 7 * 10**9
    assert D.bytes_for(n, "fp8") == n
    assert D.bytes_for(n, "fp8-e4m3", n_tensors=224) == n + 224 * 4
    # Fused experts [E, out, in]: one scale per expert matrix.
    assert D.tensor_bytes((8, 14336, 4096), "fp8-e5m2") == 8 * 14336 * 4096 + 8 * 4


def test_fp8_block_scales():
    fmt = D.get_format("deepseek-fp8")
    assert fmt.bits_per_element == 8 + Fraction(32, 128 * 128)
    # DeepSeek-V3 kv_b_proj-like [out, in] = [7168, 2048]: 56 x 16 tiles of 128 x 128.
    assert D.tensor_bytes((7168, 2048), fmt) == 7168 * 2048 + 56 * 16 * 4
    # Partial tiles get a whole scale: 129 x 129 -> 2 x 2 tiles.
    assert D.tensor_bytes((129, 129), fmt) == 129 * 129 + 4 * 4


def test_mx_formats():
    assert D.get_format("mxfp4").bits_per_element == Fraction(17, 4)
    assert D.get_format("MXFP4") is D.get_ggml_type("MXFP4")
    assert D.get_format("nvfp4").bits_per_element == Fraction(9, 2)
    assert D.tensor_bytes((4096, 4096), "nvfp4") == 4096 * 4096 * 9 // 16 + 8
    assert "attention" in D.get_format("mxfp4").unquantized


def test_int8_per_channel():
    assert D.tensor_bytes((4096, 4096), "int8") == 4096 * 4096 + 4096 * 4


# --- the seed's weight table -----------------------------------------------------------------

@pytest.mark.parametrize("fmt,bytes_7b,bytes_moe", [
    ("fp32", 28 * 10**9, 516 * 10**8),
    ("bf16", 14 * 10**9, 258 * 10**8),
    ("fp16", 14 * 10**9, 258 * 10**8),
    ("int8", 7 * 10**9, 129 * 10**8),
])
def test_seed_weight_table(fmt, bytes_7b, bytes_moe):
    assert D.bytes_for(7 * 10**9, fmt) == bytes_7b
    assert D.bytes_for(129 * 10**8, fmt) == bytes_moe


# --- plain dtypes ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,nbytes", [
    ("fp32", 4), ("tf32", 4), ("fp16", 2), ("bf16", 2), ("fp8_e4m3", 1), ("fp8_e5m2", 1),
    ("int8", 1), ("int4", Fraction(1, 2)),
    ("float32", 4), ("bfloat16", 2), ("half", 2), ("FP8", 1), ("float8_e4m3fn", 1),
    ("fp8-e5m2", 1), ("E5M2", 1),
])
def test_dtype_bytes(name, nbytes):
    assert D.dtype_bytes(name) == nbytes


def test_dtype_tables():
    assert D.DTYPES == ("fp32", "tf32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4")
    assert all(D.DTYPE_BYTES[k] == Fraction(D.DTYPE_BITS[k], 8) for k in D.DTYPES)
    assert D.dtype_bits("int4") == 4
    assert D.array_bytes(3, "int4") == 2
    assert D.array_bytes(2**20, "bf16") == 2**21
    assert D.get_dtype("BFloat16") == "bf16"


def test_bad_dtype_names_the_allowed_ones():
    with pytest.raises(MemfitError) as err:
        D.dtype_bytes("bf17")
    assert err.value.field == "dtype"
    assert "bf16" in str(err.value) and "int4" in str(err.value)
    assert "did you mean" in str(err.value)


# --- lookups ---------------------------------------------------------------------------------

@pytest.mark.parametrize("spelling,name", [
    ("BF16", "bf16"), ("bfloat16", "bf16"), ("Q4_K", "q4_k"), ("q4-k", "q4_k"),
    ("gguf-Q6_K", "q6_k"), ("NF4", "bnb-nf4"), ("nf4-dq", "bnb-nf4-dq"),
    ("load_in_4bit", "bnb-fp4"), ("gptq-int4", "gptq-int4-g128"), ("AWQ-G64", "awq-int4-g64"),
    ("fp8", "fp8-e4m3"), ("FP8_E5M2", "fp8-e5m2"), ("  tf32 ", "tf32"), ("iq4_xs", "iq4_xs"),
])
def test_aliases_and_case(spelling, name):
    assert D.get_format(spelling).name == name


def test_bad_format_names_the_allowed_ones():
    with pytest.raises(MemfitError) as err:
        D.get_format("q4_k_x")
    msg = str(err.value)
    assert err.value.field == "weights" and err.value.value == "q4_k_x"
    for name in ("q4_k", "bnb-nf4", "gptq-int4-g128", "fp32"):
        assert name in err.value.allowed
    assert "did you mean" in msg
    with pytest.raises(MemfitError):
        D.get_ggml_type("Q4_K_M")
    with pytest.raises(MemfitError):
        D.get_format(4)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_bad_counts(bad):
    with pytest.raises(MemfitError):
        D.bytes_for(bad, "bf16")
    with pytest.raises(MemfitError):
        D.tensor_bytes((4, bad), "bf16")


def test_table_invariants():
    assert len(set(D.FORMAT_NAMES)) == len(D.FORMAT_NAMES)
    spellings = [D._key(s) for f in D.FORMATS for s in (f.name,) + f.aliases]
    assert len(set(spellings)) == len(spellings)
    for f in D.FORMATS:
        assert f.description and f.source, f.name
        assert set(f.unquantized) <= set(D.ROLES)
        assert (f.unquantized_dtype is None) == (not f.unquantized), f.name
        assert f.compute_dtype in D.DTYPE_BITS
        # bits_per_element is exact over whole blocks and super-blocks.
        n = math.lcm(f.block_elements, f.super_block_size or 1) * 8
        assert D.bytes_for(n, f) * 8 == n * f.bits_per_element, f.name
    assert [f.name for f in D.FORMATS if f.kind == "float"][:4] == ["fp32", "tf32", "fp16",
                                                                       "bf16"]


def test_tensor_bytes_at_least_the_block_cost():
    for f in D.FORMATS:
        for shape in [(1,), (3, 5), (17, 300), (2, 3, 129)]:
            n = math.prod(shape)
            assert D.tensor_bytes(shape, f) >= math.ceil(n * f.bits_per_element / 8)
    assert D.tensor_bytes((0, 4096), "q4_k") == 0


# --- GGUF file types -----------------------------------------------------------------------

def test_use_more_bits_is_half_the_layers():
    picked = [i for i in range(32) if D.use_more_bits(i, 32)]
    assert picked == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert sum(D.use_more_bits(i, 80) for i in range(80)) == 40


def test_q4_k_m_rules():
    ft = D.get_file_type("q4_k_m")
    assert ft.name == "Q4_K_M" and ft.ftype == 15 and ft.default_type == "Q4_K"
    for role in ("attn_v", "ffn_down"):
        types = [ft.tensor_type(role, i, 32) for i in range(32)]
        assert types.count("Q6_K") == 16 and types.count("Q4_K") == 16
        assert types[0] == "Q6_K" and types[4] == "Q4_K" and types[6] == "Q6_K"
    for role in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "token_embd"):
        assert ft.tensor_type(role, 0, 32) == "Q4_K"
    assert ft.tensor_type("output") == "Q6_K"
    assert ft.tensor_type("token_embd", tied_embeddings=True) == "Q6_K"
    for role in ("norm", "bias", "ffn_gate_inp"):
        assert ft.tensor_type(role, 3, 32) == "F32"
    # 8 experts (Mixtral): attn_v and attn_k Q8_0, attn_output Q5_K.
    assert ft.tensor_type("attn_v", 5, 32, n_expert=8) == "Q8_0"
    assert ft.tensor_type("attn_k", 5, 32, n_expert=8) == "Q8_0"
    assert ft.tensor_type("attn_output", 5, 32, n_expert=8) == "Q5_K"
    assert ft.tensor_format("ffn_down_exps", 0, 32).name == "q6_k"


def test_other_file_type_rules():
    q3m = D.get_file_type("Q3_K_M")
    assert [q3m.tensor_type("attn_v", i, 32) for i in range(3)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert q3m.tensor_type("ffn_down", 1, 32) == "Q5_K"      # i < 32 // 16
    assert q3m.tensor_type("ffn_down", 2, 32) == "Q4_K"
    assert q3m.tensor_type("attn_output", 2, 32) == "Q4_K"
    q2k = D.get_file_type("Q2_K")
    assert q2k.tensor_type("attn_v", 0, 32, n_gqa=1) == "Q3_K"
    assert q2k.tensor_type("attn_v", 0, 32, n_gqa=4) == "Q4_K"
    assert q2k.tensor_type("attn_v", 0, 80, n_gqa=8, llama_70b=True) == "Q5_K"
    assert q2k.tensor_type("ffn_down", 0, 32) == "Q3_K"
    assert q2k.tensor_type("attn_q", 0, 32) == "Q2_K"
    q4s = D.get_file_type("q4_k_s")
    assert [q4s.tensor_type("attn_v", i, 32) for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert [q4s.tensor_type("ffn_down", i, 32) for i in (3, 4)] == ["Q5_K", "Q4_K"]
    assert D.get_file_type("q8_0").tensor_type("output") == "Q8_0"
    assert D.get_file_type("q4_0").tensor_type("output") == "Q6_K"
    assert D.get_file_type("q4_0").tensor_type("ffn_down", 0, 32, has_imatrix=True) == "Q4_1"
    assert D.get_file_type("f16").tensor_type("output") == "F16"
    assert D.get_file_type("f16").tensor_type("norm") == "F32"
    mx = D.get_file_type("mxfp4_moe")
    assert mx.tensor_type("ffn_up_exps", 0, 24) == "MXFP4"
    assert mx.tensor_type("attn_q", 0, 24) == "Q8_0"
    assert mx.tensor_type("output") == "Q8_0"


def test_shape_fallbacks():
    # gpt-oss's hidden size 2880 is not a multiple of 256: Q4_K -> Q5_0, the output -> Q8_0.
    ft = D.get_file_type("Q4_K_M")
    assert ft.tensor_type("attn_q", 0, 24, row_length=2880) == "Q5_0"
    assert ft.tensor_type("output", row_length=2880) == "Q8_0"
    assert D.ggml_fallback_type("Q6_K", 2880) == "Q8_0"
    assert D.ggml_fallback_type("Q4_K", 4096) == "Q4_K"
    assert D.ggml_fallback_type("Q2_K", 100) == "F16"
    with pytest.raises(MemfitError):
        D.ggml_fallback_type("Q8_0", 100)


def test_file_type_lookup_errors():
    with pytest.raises(MemfitError) as err:
        D.get_file_type("Q4_K_Z")
    assert "Q4_K_M" in str(err.value)
    with pytest.raises(MemfitError):
        D.get_file_type("q4_k_m").tensor_type("attn_z")
    with pytest.raises(MemfitError):
        D.get_file_type("q4_k_m").tensor_type("attn_v", 32, 32)


def test_resolve_weights_prefers_gguf_file_types():
    assert isinstance(D.resolve_weights("Q4_K_M"), D.GGUFFileType)
    assert isinstance(D.resolve_weights("q8_0"), D.GGUFFileType)
    assert D.resolve_weights("q4_k") is D.get_format("q4_k")
    assert D.resolve_weights("nf4") is D.get_format("bnb-nf4")
    with pytest.raises(MemfitError) as err:
        D.resolve_weights("q4_k_mm")
    assert "Q4_K_M" in str(err.value) and "bnb-nf4" in str(err.value)


def _llama2_7b_gguf_bytes(file_type: str) -> int:
    """Tensor bytes of Llama-2-7B (vocab 32000, hidden 4096, FFN 11008, 32 layers, MHA)."""
    V, h, f, L = 32000, 4096, 11008, 32
    ft = D.get_file_type(file_type)

    def size(role: str, shape: tuple[int, ...], i: int = 0) -> int:
        t = ft.tensor_type(role, i, L, row_length=shape[-1])
        return D.tensor_bytes(shape, D.get_ggml_type(t))

    total = size("token_embd", (V, h)) + size("output", (V, h)) + size("norm", (h,))
    for i in range(L):
        total += sum(size(r, (h, h), i) for r in ("attn_q", "attn_k", "attn_v", "attn_output"))
        total += size("ffn_gate", (f, h), i) + size("ffn_up", (f, h), i)
        total += size("ffn_down", (h, f), i) + 2 * size("norm", (h,), i)
    return total


def test_llama2_7b_q4_k_m_matches_llama_cpp():
    n_params = 6_738_415_616
    total = _llama2_7b_gguf_bytes("Q4_K_M")
    assert f"{total / 2**20:.2f}" == "3891.24"          # "CPU buffer size = 3891.24 MiB"
    assert f"{total / 2**30:.2f}" == "3.80"             # "model size = 3.80 GiB (4.84 BPW)"
    assert f"{total * 8 / n_params:.2f}" == "4.84"


@pytest.mark.parametrize("file_type,gib", [("Q4_0", "3.56"), ("Q8_0", "6.67"), ("F16", "12.55")])
def test_llama2_7b_other_file_types_match_llama_bench(file_type, gib):
    assert f"{_llama2_7b_gguf_bytes(file_type) / 2**30:.2f}" == gib
