"""Real inputs: safetensors folders and GGUF files written here, read back exactly.

The writers below produce the binary formats byte for byte (a safetensors header + zeroed
data; a GGUF v3 header + zeroed, aligned data); every count and byte total is checked against
the closed form of its format and against memfit's parameter count from the config. Where
``safetensors``/``torch``, ``transformers`` or ``gguf`` are installed the parsers are also
checked against those libraries' own readers and writers.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from memfit.arch import from_hf_config
from memfit.dtypes import GGML_TYPES, tensor_bytes
from memfit.errors import MemfitError
from memfit.inputs import TensorRecord, WeightsInfo, is_input, load, read_gguf, read_safetensors_dir
from memfit.inputs.gguf import GGUF_ARCHITECTURES, gguf_to_config, parse_gguf_header
from memfit.inputs.safetensors import (
    SAFETENSORS_DTYPE_BITS,
    HeaderEntry,
    read_header,
    weights_from_headers,
)
from memfit.memory.params import count_params

from .configs.families import FAMILY_CONFIGS

# ------------------------------------------------------------------------------------------
# Writers
# ------------------------------------------------------------------------------------------

Tensors = dict[str, tuple[str, tuple[int, ...]]]  # name -> (dtype, shape)


def st_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return math.prod(shape) * SAFETENSORS_DTYPE_BITS[dtype] // 8


def write_safetensors(path: Path, tensors: Tensors, metadata: dict[str, str] | None = None
                      ) -> int:
    """A safetensors file: 8-byte header length, JSON header (padded to 8), zeroed data.
    Returns the data size."""
    header: dict[str, Any] = {}
    pos = 0
    for name, (dtype, shape) in tensors.items():
        n = st_nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [pos, pos + n]}
        pos += n
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + pos)  # zeros, without writing them
    return pos


def write_folder(folder: Path, config: dict[str, Any], tensors: Tensors, shards: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        write_safetensors(folder / "model.safetensors", tensors, {"format": "pt"})
        return folder
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map = {}
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per:(i + 1) * per]}
        write_safetensors(folder / fname, part, {"format": "pt"})
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


LLAMA = dict(model_type="llama", num_hidden_layers=2, hidden_size=64, intermediate_size=96,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
             tie_word_embeddings=False, torch_dtype="bfloat16")

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def linear_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """[out, in] of each Linear of a Llama layer."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    d = h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return {"self_attn.q_proj": (q, h), "self_attn.k_proj": (kv, h),
            "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, q),
            "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h), "mlp.down_proj": (h, i)}


def llama_tensors(cfg: dict[str, Any], dtype: str = "BF16", norm_dtype: str = "F32",
                  lm_head: bool = True, linear: Any = None) -> Tensors:
    """Every tensor of a Llama checkpoint; ``linear(prefix, out, in)`` overrides the Linears."""
    h, V = cfg["hidden_size"], cfg["vocab_size"]
    t: Tensors = {"model.embed_tokens.weight": (dtype, (V, h))}
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for name, (o, i) in linear_shapes(cfg).items():
            if linear is None:
                t[p + name + ".weight"] = (dtype, (o, i))
            else:
                t.update(linear(p + name, o, i))
        t[p + "input_layernorm.weight"] = (norm_dtype, (h,))
        t[p + "post_attention_layernorm.weight"] = (norm_dtype, (h,))
    t["model.norm.weight"] = (norm_dtype, (h,))
    if lm_head:
        t["lm_head.weight"] = (dtype, (V, h))
    return t


def memfit_count(cfg: dict[str, Any]) -> int:
    return count_params(from_hf_config(cfg)).total


# ------------------------------------------------------------------------------------------
# safetensors
# ------------------------------------------------------------------------------------------

def test_bf16_with_f32_norms_exact(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA)
    folder = write_folder(tmp_path / "m", LLAMA, tensors)
    info = read_safetensors_dir(folder)
    n = memfit_count(LLAMA)
    assert info.total_params == n
    norms = LLAMA["hidden_size"] * (2 * LLAMA["num_hidden_layers"] + 1)
    assert info.bytes_by_dtype == {"BF16": 2 * (n - norms), "F32": 4 * norms}
    assert info.weight_bytes == info.stored_bytes == 2 * (n - norms) + 4 * norms
    assert info.params_by_dtype == {"BF16": n - norms, "F32": norms}
    assert info.quantization is None and info.format == "safetensors"
    assert info.weight_bytes_as("bf16") == 2 * n
    assert info.bytes_by_component["norms"] == 4 * norms
    assert info.bytes_by_component["lm_head"] == 2 * 300 * 64
    assert info.bytes_by_component["other"] == 0
    assert sum(info.bytes_by_component.values()) == info.weight_bytes
    layers = info.bytes_by_layer()
    assert sorted(layers, key=str) == [0, 1, None]
    assert layers[0] == layers[1] == 2 * sum(o * i for o, i in linear_shapes(LLAMA).values()) \
        + 4 * 2 * 64
    assert sum(layers.values()) == info.weight_bytes
    spec, config, loaded = load(folder)
    assert config == LLAMA and spec.name == "m"
    assert loaded is not None and loaded.total_params == n
    assert not any("parameter count" in note for note in loaded.notes)


def test_sharded_folder_reads_every_shard(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA)
    folder = write_folder(tmp_path / "m", LLAMA, tensors, shards=3)
    single = read_safetensors_dir(write_folder(tmp_path / "one", LLAMA, tensors))
    info = read_safetensors_dir(folder)
    assert info.total_params == single.total_params == memfit_count(LLAMA)
    assert info.weight_bytes == single.weight_bytes
    assert {t.file for t in info.tensors} == {f"model-0000{i}-of-00003.safetensors"
                                              for i in (1, 2, 3)}
    assert "3 shards" in info.source
    (folder / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(MemfitError, match="missing: model-00002-of-00003"):
        read_safetensors_dir(folder)


def test_tied_lm_head_absent_is_noted(tmp_path: Path) -> None:
    cfg = dict(LLAMA, tie_word_embeddings=True)
    folder = write_folder(tmp_path / "m", cfg, llama_tensors(cfg, lm_head=False))
    spec, _, info = load(folder)
    assert info is not None and info.total_params == count_params(spec).total
    assert any(n.startswith("tied weights stored once: lm_head absent") for n in info.notes)


def test_tied_lm_head_stored_is_counted_once(tmp_path: Path) -> None:
    cfg = dict(LLAMA, tie_word_embeddings=True)
    folder = write_folder(tmp_path / "m", cfg, llama_tensors(cfg, lm_head=True))
    spec, _, info = load(folder)
    assert info is not None
    assert info.tensor("lm_head.weight").role == "tied"
    assert info.total_params == count_params(spec).total
    assert info.stored_bytes - info.weight_bytes == 2 * 300 * 64
    assert any("counted once" in n for n in info.notes)


def test_untied_config_without_lm_head_notes_the_gap(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", LLAMA, llama_tensors(LLAMA, lm_head=False))
    spec, _, info = load(folder)
    assert info is not None
    assert info.total_params == count_params(spec).total - 300 * 64
    assert any("tie_word_embeddings=false" in n for n in info.notes)
    gap = [n for n in info.notes if n.startswith("parameter count")]
    assert gap and "-19,200" in gap[0] and "V*h" in gap[0]


def test_fp8_weights_and_scales(tmp_path: Path) -> None:
    def fp8(prefix: str, o: int, i: int) -> Tensors:
        return {prefix + ".weight": ("F8_E4M3", (o, i)), prefix + ".weight_scale": ("F32", ()),
                prefix + ".input_scale": ("F32", ())}

    cfg = dict(LLAMA, quantization_config={"quant_method": "fp8", "activation_scheme": "static"})
    folder = write_folder(tmp_path / "m", cfg, llama_tensors(cfg, linear=fp8))
    info = read_safetensors_dir(folder)
    n = memfit_count(cfg)
    linear = sum(o * i for o, i in linear_shapes(cfg).values()) * cfg["num_hidden_layers"]
    n_linear = 7 * cfg["num_hidden_layers"]
    norms = 64 * 5
    assert info.total_params == n
    assert info.bytes_by_dtype == {"BF16": 2 * (n - linear - norms),
                                   "F32": 4 * norms + 2 * 4 * n_linear,
                                   "F8_E4M3": linear}
    assert info.quant_method == "fp8"
    assert sum(t.role == "quant" for t in info.tensors) == 2 * n_linear
    # The FP8 weights stay 8-bit when the rest is cast to bf16.
    assert info.weight_bytes_as("bf16") == 2 * (n - linear) + linear + 8 * n_linear


def gptq_linear(group: int, bits: int = 4):
    def make(prefix: str, o: int, i: int) -> Tensors:
        return {prefix + ".qweight": ("I32", (i * bits // 32, o)),
                prefix + ".qzeros": ("I32", (i // group, o * bits // 32)),
                prefix + ".scales": ("F16", (i // group, o)),
                prefix + ".g_idx": ("I32", (i,))}
    return make


def test_gptq_packed_int4_logical_count_and_exact_bytes(tmp_path: Path) -> None:
    cfg = dict(LLAMA, hidden_size=128, intermediate_size=256, torch_dtype="float16",
               quantization_config={"quant_method": "gptq", "bits": 4, "group_size": 32,
                                    "desc_act": False})
    folder = write_folder(tmp_path / "m", cfg, llama_tensors(cfg, dtype="F16", norm_dtype="F16",
                                                             linear=gptq_linear(32)))
    info = read_safetensors_dir(folder)
    assert info.total_params == memfit_count(cfg)
    assert info.quantization == cfg["quantization_config"]
    # qweight + qzeros + scales + g_idx of one Linear == memfit.dtypes' GPTQ closed form.
    for name, (o, i) in linear_shapes(cfg).items():
        p = f"model.layers.0.{name}"
        stored = sum(info.tensor(p + s).nbytes for s in (".qweight", ".qzeros", ".scales",
                                                         ".g_idx"))
        assert stored == tensor_bytes((o, i), "gptq-int4-g32")
        assert info.tensor(p + ".qweight").params == o * i
        assert info.tensor(p + ".scales").role == "quant"
    assert not any("parameter count" in n for n in load(folder)[2].notes)  # type: ignore[union-attr]


def test_gptq_3bit_and_default_bits_note(tmp_path: Path) -> None:
    entries = [HeaderEntry("l.qweight", "I32", (3 * 128 // 32, 64), 3 * 4 * 64 * 4, "f"),
               HeaderEntry("l.scales", "F16", (1, 64), 128, "f")]
    info = weights_from_headers(entries, {"quantization_config": {"quant_method": "gptq",
                                                                  "bits": 3}}, source="t")
    assert info.total_params == 128 * 64
    info = weights_from_headers(entries[:1], {"quantization_config": {"quant_method": "x"}},
                                source="t")
    assert any("states no bits" in n for n in info.notes)


def test_awq_bitsandbytes_mxfp4_compressed_tensors_logical_counts() -> None:
    o, i = 64, 128

    def info(entries: list[tuple[str, str, tuple[int, ...]]], qc: dict[str, Any]) -> WeightsInfo:
        return weights_from_headers(
            [HeaderEntry(n, d, s, st_nbytes(d, s), "f") for n, d, s in entries],
            {"quantization_config": qc}, source="t")

    awq = info([("m.qweight", "I32", (i, o // 8)), ("m.qzeros", "I32", (i // 64, o // 8)),
                ("m.scales", "F16", (i // 64, o))], {"quant_method": "awq", "bits": 4})
    assert awq.total_params == o * i
    assert awq.weight_bytes == tensor_bytes((o, i), "awq-int4-g64")

    bnb = info([("m.weight", "U8", (o * i // 2, 1)), ("m.weight.absmax", "F32", (o * i // 64,)),
                ("m.weight.quant_map", "F32", (16,)),
                ("m.weight.quant_state.bitsandbytes__nf4", "U8", (80,)), ("m.bias", "F16", (o,))],
               {"quant_method": "bitsandbytes", "load_in_4bit": True})
    assert bnb.total_params == o * i + o
    assert [t.role for t in bnb.tensors] == ["param", "quant", "quant", "quant", "param"]

    int8 = info([("m.weight", "I8", (o, i)), ("m.SCB", "F32", (o,))],
                {"quant_method": "bitsandbytes", "load_in_8bit": True})
    assert int8.total_params == o * i and int8.weight_bytes == o * i + 4 * o

    e = 4
    mx = info([("model.layers.0.mlp.experts.gate_up_proj_blocks", "U8", (e, 2 * o, i // 32, 16)),
               ("model.layers.0.mlp.experts.gate_up_proj_scales", "U8", (e, 2 * o, i // 32)),
               ("model.layers.0.mlp.experts.gate_up_proj_bias", "BF16", (e, 2 * o))],
              {"quant_method": "mxfp4"})
    assert mx.total_params == e * 2 * o * i + e * 2 * o
    assert mx.bytes_by_dtype["U8"] == tensor_bytes((e, 2 * o, i), "mxfp4")
    assert mx.bytes_by_component["experts"] == mx.weight_bytes

    ct = info([("m.weight_packed", "I32", (o, i // 8)), ("m.weight_scale", "BF16", (o, i // 32)),
               ("m.weight_zero_point", "I32", (o // 8, i // 32)), ("m.weight_shape", "I64", (2,))],
              {"quant_method": "compressed-tensors", "format": "pack-quantized",
               "config_groups": {"group_0": {"weights": {"num_bits": 4, "group_size": 32}}}})
    assert ct.total_params == o * i
    assert [t.role for t in ct.tensors] == ["param", "quant", "quant", "quant"]

    nvfp4 = info([("m.weight_packed", "U8", (o, i // 2)), ("m.weight_scale", "F8_E4M3",
                                                          (o, i // 16)),
                  ("m.weight_global_scale", "F32", (1,)), ("m.input_global_scale", "F32", (1,))],
                 {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
                  "config_groups": {"g": {"weights": {"num_bits": 4}}}})
    assert nvfp4.total_params == o * i
    assert nvfp4.weight_bytes == o * i // 2 + o * i // 16 + 8


def test_buffers_and_layers_past_the_config_are_left_out(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = ("F32", (8,))
    tensors["model.layers.2.mlp.down_proj.weight"] = ("BF16", (64, 96))  # an MTP layer
    info = read_safetensors_dir(write_folder(tmp_path / "m", LLAMA, tensors))
    assert info.total_params == memfit_count(LLAMA)
    assert info.tensor("model.layers.0.self_attn.rotary_emb.inv_freq").role == "buffer"
    assert info.tensor("model.layers.2.mlp.down_proj.weight").role == "unused"
    assert info.stored_bytes - info.weight_bytes == 32 + 2 * 64 * 96
    assert any("past num_hidden_layers=2" in n for n in info.notes)
    assert any("stored buffers" in n for n in info.notes)


def test_vision_tower_gap_is_explained(tmp_path: Path) -> None:
    tensors = llama_tensors(LLAMA)
    tensors["vision_tower.patch_embed.weight"] = ("BF16", (64, 48))
    _, _, info = load(write_folder(tmp_path / "m", LLAMA, tensors))
    assert info is not None and info.bytes_by_component["other"] == 2 * 64 * 48
    gap = [n for n in info.notes if n.startswith("parameter count")]
    assert gap and "outside the language model" in gap[0]


def test_consolidated_duplicate_is_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    tensors = llama_tensors(LLAMA)
    write_safetensors(folder / "model-a.safetensors", tensors)
    write_safetensors(folder / "consolidated.safetensors", tensors)
    info = read_safetensors_dir(folder)
    assert info.total_params == memfit_count(LLAMA)
    assert any("consolidated.safetensors" in n for n in info.notes)


def _raw_file(path: Path, header: bytes, data: int = 0, length: int | None = None) -> Path:
    n = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header + b"\0" * data)
    return path


@pytest.mark.parametrize("header,data,length,match", [
    (b"{not json", 0, None, "not valid JSON"),
    (b"[1, 2]", 0, None, "not a JSON object"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', 4, None,
     "needs 8 bytes but its data_offsets span 4"),
    (b'{"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}', 1, None,
     "dtype 'Q4'; allowed: BOOL"),
    (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', 3, None, "truncated"),
    (b'{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', 8, None, "shape"),
    (b"{}", 0, 200_000_000, "exceeds"),
    (b"{}", 0, 50, "truncated inside"),
])
def test_malformed_safetensors_fail_with_one_line(tmp_path: Path, header: bytes, data: int,
                                                  length: int | None, match: str) -> None:
    path = _raw_file(tmp_path / "x.safetensors", header, data, length)
    with pytest.raises(MemfitError, match=match) as err:
        read_header(path)
    assert "\n" not in str(err.value)


def test_header_parser_matches_safetensors_library(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    safetensors = pytest.importorskip("safetensors")
    tensors = {
        "emb": torch.zeros(10, 6, dtype=torch.bfloat16),
        "norm": torch.ones(6, dtype=torch.float32),
        "fp8": torch.zeros(4, 8).to(torch.float8_e4m3fn),
        "e5m2": torch.zeros(2, 3).to(torch.float8_e5m2),
        "qweight": torch.zeros(2, 16, dtype=torch.int32),
        "half": torch.zeros(3, 5, dtype=torch.float16),
        "i8": torch.zeros(7, dtype=torch.int8),
        "u8": torch.zeros(5, dtype=torch.uint8),
        "b": torch.zeros(3, dtype=torch.bool),
        "i64": torch.zeros(2, dtype=torch.int64),
        "f64": torch.zeros(1, 2, dtype=torch.float64),
        "scalar": torch.tensor(1.5),
    }
    path = tmp_path / "model.safetensors"
    st_torch.save_file(tensors, str(path), metadata={"format": "pt"})
    entries, meta = read_header(path)
    assert meta == {"format": "pt"}
    ours = {e.name: e for e in entries}
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(ours)
        assert f.metadata() == meta
        for name in f.keys():
            sl = f.get_slice(name)
            assert ours[name].dtype == sl.get_dtype()
            assert list(ours[name].shape) == list(sl.get_shape())
            t = tensors[name]
            assert ours[name].nbytes == t.numel() * t.element_size()
    data = sum(e.nbytes for e in entries)
    assert path.stat().st_size - data == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


# transformers 5 saves Qwen3-MoE's expert count as num_local_experts (Qwen3MoeConfig's
# attribute_map); memfit.arch reads num_experts only, so a re-saved config gets the default 128.
_SAVED_CONFIG_GAPS: dict[str, str] = {}


@pytest.mark.parametrize("key", [
    pytest.param(k, marks=pytest.mark.xfail(reason=_SAVED_CONFIG_GAPS[k], strict=True))
    if k in _SAVED_CONFIG_GAPS else k for k in sorted(FAMILY_CONFIGS)])
def test_transformers_checkpoints_match_their_models(tmp_path: Path, key: str) -> None:
    """save_pretrained of a tiny real model, read back: the header count is transformers'
    count and memfit's, the bytes are every parameter's bytes."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    import warnings

    transformers.logging.set_verbosity_error()
    cfg = dict(FAMILY_CONFIGS[key])
    model_type = cfg.pop("model_type")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf_config = transformers.AutoConfig.for_model(model_type, **cfg)
        torch.manual_seed(0)
        model = transformers.AutoModelForCausalLM.from_config(hf_config).to(torch.bfloat16)
        model.save_pretrained(tmp_path, safe_serialization=True)
    spec, _, info = load(tmp_path)
    assert info is not None
    n_params = sum(p.numel() for p in model.parameters())
    assert info.total_params == n_params == count_params(spec).total
    assert info.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())
    assert not any(n.startswith("parameter count") for n in info.notes), info.notes
    assert info.bytes_by_component["other"] == 0, [
        t.name for t in info.tensors if t.component == "other"]
    assert set(info.bytes_by_layer()) == set(range(spec.num_layers)) | {None}
    # the names sort every tensor into memfit's components (all bf16 here: 2 bytes each)
    expected = count_params(spec).as_dict()
    assert {c: n // 2 for c, n in info.bytes_by_component.items() if c != "other"} == expected


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------

# gguf value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
        BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
GGML_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 8, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
            "BF16": 30, "MXFP4": 39, "I32": 26, "Q8_1": 9}


def _gguf_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def _gguf_value(vtype: int, value: Any) -> bytes:
    if vtype == STR:
        return _gguf_str(value)
    if vtype == ARR:
        item, values = value
        return (struct.pack("<IQ", item, len(values))
                + b"".join(_gguf_value(item, v) for v in values))
    return struct.pack(_FMT[vtype], value)


def ggml_nbytes(type_name: str, ne: tuple[int, ...]) -> int:
    if type_name == "I32":
        return 4 * math.prod(ne)
    if type_name == "Q8_1":
        return ne[0] // 32 * 36 * math.prod(ne[1:])
    fmt = GGML_TYPES[type_name]
    return ne[0] // fmt.block_size * (fmt.block_bits // 8) * math.prod(ne[1:])


def write_gguf(path: Path, kv: list[tuple[str, int, Any]],
               tensors: list[tuple[str, tuple[int, ...], str]], version: int = 3,
               alignment: int = 32) -> int:
    """A GGUF file: header, metadata, tensor infos (``ne`` order), aligned zeroed data.
    Returns the data size."""
    out = [b"GGUF", struct.pack("<IQQ", version, len(tensors), len(kv))]
    for key, vtype, value in kv:
        out += [_gguf_str(key), struct.pack("<I", vtype), _gguf_value(vtype, value)]
    offset = 0
    for name, ne, type_name in tensors:
        out += [_gguf_str(name), struct.pack("<I", len(ne)),
                struct.pack(f"<{len(ne)}Q", *ne), struct.pack("<IQ", GGML_IDS[type_name], offset)]
        offset += ggml_nbytes(type_name, ne)
        offset += -offset % alignment
    head = b"".join(out)
    head += b"\0" * (-len(head) % alignment)
    with path.open("wb") as f:
        f.write(head)
        f.truncate(len(head) + offset)
    return offset


def llama_gguf_tensors(n_layers: int = 2, h: int = 256, ff: int = 512, vocab: int = 320,
                       heads: int = 4, kv_heads: int = 2, output: str | None = "Q6_K"
                       ) -> list[tuple[str, tuple[int, ...], str]]:
    d = h // heads
    t = [("token_embd.weight", (h, vocab), "Q8_0")]
    for i in range(n_layers):
        b = f"blk.{i}."
        t += [(b + "attn_norm.weight", (h,), "F32"),
              (b + "attn_q.weight", (h, heads * d), "Q4_K"),
              (b + "attn_k.weight", (h, kv_heads * d), "Q4_K"),
              (b + "attn_v.weight", (h, kv_heads * d), "Q6_K"),
              (b + "attn_output.weight", (heads * d, h), "Q4_K"),
              (b + "ffn_norm.weight", (h,), "F32"),
              (b + "ffn_gate.weight", (h, ff), "Q4_K"),
              (b + "ffn_up.weight", (h, ff), "F16"),
              (b + "ffn_down.weight", (ff, h), "Q6_K")]
    t.append(("output_norm.weight", (h,), "F32"))
    if output:
        t.append(("output.weight", (h, vocab), output))
    return t


def llama_kv(n_layers: int = 2, h: int = 256, ff: int = 512, vocab: int = 320, heads: int = 4,
             kv_heads: int = 2, arch: str = "llama") -> list[tuple[str, int, Any]]:
    return [
        ("general.architecture", STR, arch),
        ("general.name", STR, "Tiny Llama"),
        ("general.file_type", U32, 15),
        ("general.alignment", U32, 32),
        (f"{arch}.block_count", U32, n_layers),
        (f"{arch}.context_length", U32, 2048),
        (f"{arch}.embedding_length", U32, h),
        (f"{arch}.feed_forward_length", U32, ff),
        (f"{arch}.attention.head_count", U32, heads),
        (f"{arch}.attention.head_count_kv", U32, kv_heads),
        (f"{arch}.rope.dimension_count", U32, h // heads),
        (f"{arch}.rope.freq_base", F32, 500000.0),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.tokens", ARR, (STR, [f"t{i}" for i in range(vocab)])),
        ("tokenizer.ggml.token_type", ARR, (I32, [1] * vocab)),
        ("general.quantization_version", U32, 2),
    ]


def test_gguf_llama_mixed_quant_exact(tmp_path: Path) -> None:
    tensors = llama_gguf_tensors()
    path = tmp_path / "tiny.gguf"
    data = write_gguf(path, llama_kv(), tensors)
    config, info = read_gguf(path)
    assert config["model_type"] == "llama" and config["vocab_size"] == 320
    assert config["tie_word_embeddings"] is False and config["head_dim"] == 64
    assert config["max_position_embeddings"] == 2048
    spec = from_hf_config(config)
    assert info.total_params == count_params(spec).total == sum(math.prod(ne) for _, ne, _ in
                                                                tensors)
    expected = {n: ggml_nbytes(t, ne) for n, ne, t in tensors}
    assert {t.name: t.nbytes for t in info.tensors} == expected
    assert info.weight_bytes == sum(expected.values())
    assert data >= info.weight_bytes  # alignment padding between tensors
    # Q4_K 144 bytes / 256, Q6_K 210 / 256, Q8_0 34 / 32 (ggml-common.h)
    assert info.tensor("blk.0.attn_q.weight").nbytes == 256 * 256 // 256 * 144
    assert info.tensor("blk.0.ffn_down.weight").nbytes == 256 * 512 // 256 * 210
    assert info.tensor("token_embd.weight").nbytes == 320 * 256 // 32 * 34
    assert info.tensor("token_embd.weight").shape == (320, 256)  # ne reversed
    assert set(info.bytes_by_dtype) == {"Q8_0", "F32", "Q4_K", "Q6_K", "F16"}
    assert info.quantization == {"quant_method": "gguf", "file_type": "Q4_K_M",
                                 "ggml_types": {"F16": 2, "F32": 5, "Q4_K": 8, "Q6_K": 5,
                                                "Q8_0": 1},
                                 "version": 3}
    assert info.bytes_by_component["lm_head"] == info.tensor("output.weight").nbytes
    assert info.bytes_by_component["other"] == 0
    layers = info.bytes_by_layer()
    assert layers[None] == sum(expected[n] for n in ("token_embd.weight", "output.weight",
                                                     "output_norm.weight"))
    assert layers[0] == layers[1] == sum(v for k, v in expected.items() if k.startswith("blk.0."))
    spec2, config2, info2 = load(path)
    assert spec2.name == "Tiny Llama" and config2 == config
    assert info2 is not None and not any("parameter count" in n for n in info2.notes)


def test_gguf_metadata_value_types(tmp_path: Path) -> None:
    kv = llama_kv() + [
        ("x.u8", U8, 255), ("x.i8", I8, -128), ("x.u16", U16, 65535), ("x.i16", I16, -32768),
        ("x.i32", I32, -5), ("x.f32", F32, 0.5), ("x.bool", BOOL, True), ("x.u64", U64, 2**63),
        ("x.i64", I64, -(2**62)), ("x.f64", F64, 0.25), ("x.str", STR, "héllo"),
        ("x.arr", ARR, (U16, [1, 2, 3])), ("x.nested", ARR, (ARR, [(U8, [1]), (U8, [2, 3])])),
        ("x.long", ARR, (STR, ["a"] * 5000)), ("x.longint", ARR, (F32, [0.0] * 5000)),
    ]
    path = tmp_path / "m.gguf"
    write_gguf(path, kv, llama_gguf_tensors(), version=2)
    header = parse_gguf_header(path)
    meta = header.metadata
    assert header.version == 2
    assert (meta["x.u8"], meta["x.i8"], meta["x.u16"], meta["x.i16"]) == (255, -128, 65535,
                                                                          -32768)
    assert (meta["x.i32"], meta["x.f32"], meta["x.bool"], meta["x.u64"]) == (-5, 0.5, True,
                                                                             2**63)
    assert (meta["x.i64"], meta["x.f64"], meta["x.str"]) == (-(2**62), 0.25, "héllo")
    assert meta["x.arr"] == [1, 2, 3] and meta["x.nested"] == [[1], [2, 3]]
    assert len(meta["x.long"]) == 5000 and len(meta["x.longint"]) == 5000
    assert header.tensors[0].name == "token_embd.weight"


def test_gguf_tied_embeddings_and_buffers(tmp_path: Path) -> None:
    tensors = llama_gguf_tensors(output=None) + [("rope_freqs.weight", (32,), "F32")]
    path = tmp_path / "m.gguf"
    write_gguf(path, llama_kv(), tensors)
    spec, config, info = load(path)
    assert config["tie_word_embeddings"] is True and spec.tie_word_embeddings
    assert info is not None and info.total_params == count_params(spec).total
    assert info.tensor("rope_freqs.weight").role == "buffer"
    assert any("output.weight absent" in n for n in info.notes)


def test_gguf_split_model_reads_all_files(tmp_path: Path) -> None:
    tensors = llama_gguf_tensors()
    half = len(tensors) // 2
    split = [("split.count", U16, 2), ("split.tensors.count", I32, len(tensors))]
    write_gguf(tmp_path / "m-00001-of-00002.gguf", llama_kv() + split + [("split.no", U16, 0)],
               tensors[:half])
    write_gguf(tmp_path / "m-00002-of-00002.gguf", split + [("split.no", U16, 1)],
               tensors[half:])
    whole = tmp_path / "whole"
    whole.mkdir()
    write_gguf(whole / "m.gguf", llama_kv(), tensors)
    _, ref = read_gguf(whole / "m.gguf")
    for part in ("m-00001-of-00002.gguf", "m-00002-of-00002.gguf"):
        _, info = read_gguf(tmp_path / part)
        assert info.total_params == ref.total_params
        assert info.weight_bytes == ref.weight_bytes
    # a folder holding one split model resolves to its first file
    spec, _, info = load(tmp_path)
    assert info is not None and info.weight_bytes == ref.weight_bytes
    (tmp_path / "m-00002-of-00002.gguf").unlink()
    with pytest.raises(MemfitError, match="missing: m-00002-of-00002.gguf"):
        read_gguf(tmp_path / "m-00001-of-00002.gguf")


def test_gguf_other_ggml_types(tmp_path: Path) -> None:
    tensors = llama_gguf_tensors() + [("x.weight", (64, 2), "I32"), ("y.weight", (64,), "Q8_1"),
                                      ("z.weight", (64, 3), "MXFP4")]
    path = tmp_path / "m.gguf"
    write_gguf(path, llama_kv(), tensors)
    _, info = read_gguf(path)
    assert info.tensor("x.weight").nbytes == 512
    assert info.tensor("y.weight").nbytes == 72
    assert info.tensor("z.weight").nbytes == 3 * 2 * 17


@pytest.mark.parametrize("mutate,match", [
    (lambda b: b"GGUX" + b[4:], "not the GGUF magic"),
    (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "its version is 1"),
    (lambda b: b[:4] + struct.pack(">I", 3) + b[8:], "big-endian"),
    (lambda b: b[:200], "ends inside|truncated"),
    (lambda b: b[:10], "fewer than a GGUF header"),
])
def test_malformed_gguf_fails_with_one_line(tmp_path: Path, mutate: Any, match: str) -> None:
    good = tmp_path / "good.gguf"
    write_gguf(good, llama_kv(), llama_gguf_tensors())
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(mutate(good.read_bytes()))
    with pytest.raises(MemfitError, match=match) as err:
        read_gguf(bad)
    assert "\n" not in str(err.value)


def test_gguf_truncated_data_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, llama_kv(), llama_gguf_tensors())
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])
    with pytest.raises(MemfitError, match="truncated: tensor"):
        read_gguf(path)
    write_gguf(path, llama_kv(), [("token_embd.weight", (100, 320), "Q4_K")])
    with pytest.raises(MemfitError, match="not a multiple of Q4_K's block of 256"):
        read_gguf(path)


def test_gguf_unsupported_architecture_lists_the_supported(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    write_gguf(path, llama_kv(arch="mamba"), llama_gguf_tensors())
    with pytest.raises(MemfitError, match="general.architecture: got 'mamba'; allowed: "
                                          "deepseek2, gemma, gemma2") as err:
        read_gguf(path)
    for arch in GGUF_ARCHITECTURES:
        assert arch in str(err.value)


def _shapes(names: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {"token_embd.weight": (320, 256), "output.weight": (320, 256), **names}


def _meta(arch: str, **extra: Any) -> dict[str, Any]:
    meta = {"general.architecture": arch, f"{arch}.block_count": 4,
            f"{arch}.embedding_length": 256, f"{arch}.feed_forward_length": 512,
            f"{arch}.attention.head_count": 4, f"{arch}.attention.head_count_kv": 2,
            f"{arch}.context_length": 4096}
    meta.update({f"{arch}.{k}": v for k, v in extra.items()})
    return meta


def test_gguf_architectures_map_to_configs_memfit_reads() -> None:
    # Qwen2-MoE: which layers are MoE comes from the router tensors.
    moe_shapes = _shapes({f"blk.{i}.ffn_gate_inp.weight": (8, 256) for i in (1, 2, 3)}
                         | {"blk.1.ffn_up_shexp.weight": (384, 256), "blk.0.attn_q.bias": (256,)})
    cfg, _ = gguf_to_config(_meta("qwen2moe", expert_count=8, expert_used_count=2,
                                  expert_feed_forward_length=128), moe_shapes)
    spec = from_hf_config(cfg)
    assert cfg["model_type"] == "qwen2_moe" and cfg["mlp_only_layers"] == [0]
    assert cfg["shared_expert_intermediate_size"] == 384
    assert spec.num_moe_layers == 3 and spec.moe is not None and spec.moe.top_k == 2
    # Mixtral is llama with experts.
    cfg, _ = gguf_to_config(_meta("llama", expert_count=8, expert_used_count=2), _shapes({}))
    assert cfg["model_type"] == "mixtral" and from_hf_config(cfg).moe.num_experts == 8
    # DeepSeek-V3: MLA dims from the *_mla keys, V3 from its expert score bias tensors.
    cfg, notes = gguf_to_config(
        _meta("deepseek2", **{"attention.head_count_kv": 1, "attention.key_length": 576,
                              "attention.key_length_mla": 192, "attention.value_length_mla": 128,
                              "attention.q_lora_rank": 64, "attention.kv_lora_rank": 32,
                              "rope.dimension_count": 64, "expert_count": 8,
                              "expert_used_count": 2, "expert_feed_forward_length": 64,
                              "expert_shared_count": 1, "leading_dense_block_count": 1,
                              "nextn_predict_layers": 1}),
        _shapes({"blk.1.exp_probs_b.bias": (8,)}))
    spec = from_hf_config(cfg)
    assert cfg["model_type"] == "deepseek_v3" and spec.num_layers == 3
    assert spec.mla is not None and spec.mla.qk_nope_head_dim == 128 and spec.mla.v_head_dim == 128
    assert spec.num_kv_heads == 4 and any("multi-token" in n for n in notes)
    # Gemma 3: head_dim explicit, sliding window, tied.
    cfg, _ = gguf_to_config(_meta("gemma3", **{"attention.key_length": 128,
                                               "attention.sliding_window": 512}),
                            {"token_embd.weight": (320, 256)})
    spec = from_hf_config(cfg)
    assert spec.model_type == "gemma3_text" and spec.head_dim == 128 and spec.tie_word_embeddings
    assert [x.attention for x in spec.layers].count("sliding") == 4
    # GPT-2: its own config keys; llama.cpp stores output.weight, so it is not tied there.
    cfg, _ = gguf_to_config(_meta("gpt2"), _shapes({"position_embd.weight": (4096, 256)}))
    spec = from_hf_config(cfg)
    assert cfg["n_inner"] == 512 and spec.learned_positions == 4096
    assert not spec.tie_word_embeddings
    # gpt-oss, Phi-3, GPT-NeoX, OLMo 2, Qwen 3 and Gemma map too.
    for arch, extra in [("gpt-oss", {"expert_count": 4, "expert_used_count": 2,
                                     "expert_feed_forward_length": 128,
                                     "attention.key_length": 64, "attention.sliding_window": 128}),
                        ("phi3", {"attention.sliding_window": 2047}),
                        ("gptneox", {"rope.dimension_count": 16, "use_parallel_residual": True}),
                        ("olmo2", {}), ("qwen3", {"attention.key_length": 128}),
                        ("qwen3moe", {"expert_count": 4, "expert_used_count": 2,
                                      "expert_feed_forward_length": 64}),
                        ("gemma", {"attention.key_length": 64}),
                        ("gemma2", {"attention.sliding_window": 64}), ("qwen2", {})]:
        cfg, _ = gguf_to_config(_meta(arch, **extra), _shapes({}))
        assert cfg["model_type"] == GGUF_ARCHITECTURES[arch]
        from_hf_config(cfg)


def test_gguf_per_layer_arrays() -> None:
    meta = _meta("llama", **{"attention.head_count_kv": [2, 2, 2, 2]})
    cfg, _ = gguf_to_config(meta, _shapes({}))
    assert cfg["num_key_value_heads"] == 2
    meta = _meta("llama", feed_forward_length=[512, 512, 1024, 512])
    with pytest.raises(MemfitError, match="the same value for every layer"):
        gguf_to_config(meta, _shapes({}))


def test_gguf_parser_matches_the_gguf_package(tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "w.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(256)
    writer.add_feed_forward_length(512)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_file_type(1)
    writer.add_token_list([f"t{i}" for i in range(64)])
    writer.add_array("x.floats", [0.5, 1.5])
    q8 = gguf.GGMLQuantizationType.Q8_0
    q4k = gguf.GGMLQuantizationType.Q4_K
    writer.add_tensor("token_embd.weight", np.zeros((64, 256), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.zeros(256, dtype=np.float32))
    # quantized tensors are given as their bytes: rows of 256 values = 8 x 34 (Q8_0) and
    # 1 x 144 (Q4_K) bytes
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((256, 34 * 8), dtype=np.uint8),
                      raw_dtype=q8)
    writer.add_tensor("blk.0.ffn_up.weight", np.zeros((512, 144), dtype=np.uint8),
                      raw_dtype=q4k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    ours = parse_gguf_header(path)
    reader = gguf.GGUFReader(str(path))
    assert ours.metadata["general.architecture"] == "llama"
    assert ours.metadata["x.floats"] == [0.5, 1.5]
    assert len(ours.metadata["tokenizer.ggml.tokens"]) == 64
    theirs = {t.name: t for t in reader.tensors}
    assert [t.name for t in ours.tensors] == [t.name for t in reader.tensors]
    for t in ours.tensors:
        r = theirs[t.name]
        assert t.ggml_type == r.tensor_type.name
        assert list(t.ne) == [int(x) for x in r.shape]
        assert t.nbytes == int(r.n_bytes)
        assert ours.data_offset + t.offset == int(r.data_offset)
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert set(ours.metadata) == set(fields)
    for key, f in fields.items():
        theirs_value = f.contents()
        if isinstance(theirs_value, float):
            assert ours.metadata[key] == pytest.approx(theirs_value)
        else:
            assert ours.metadata[key] == theirs_value, key


# ------------------------------------------------------------------------------------------
# load() dispatch
# ------------------------------------------------------------------------------------------

def test_load_plain_config_has_no_weights(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    spec, config, info = load(tmp_path / "config.json")
    assert info is None and config == LLAMA and spec.num_layers == 2
    spec, config, info = load(tmp_path)  # a folder without safetensors
    assert info is None


def test_load_errors_and_is_input(tmp_path: Path) -> None:
    with pytest.raises(MemfitError, match="no such file or folder"):
        load(tmp_path / "absent")
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(MemfitError, match="one GGUF model"):
        load(tmp_path)
    assert is_input("hf:org/name") and is_input("x.gguf") and is_input(str(tmp_path))
    assert not is_input("llama-3-8b")


def test_records_and_info_are_frozen() -> None:
    r = TensorRecord("a", "F32", (2, 3), 24, 6)
    info = WeightsInfo(format="safetensors", source="s", tensors=(r,), notes=("x",))
    with pytest.raises(AttributeError):
        info.total_params = 1  # type: ignore[misc]
    assert info.to_dict(tensors=True)["tensors"][0]["shape"] == [2, 3]
    assert info.with_notes("y").notes == ("x", "y")
    assert json.dumps(info.to_dict())


def test_core_import_stays_light() -> None:
    import subprocess
    import sys

    code = ("import sys, memfit.inputs, memfit.inputs.gguf, memfit.inputs.safetensors, "
            "memfit.inputs.hub; print(sorted(m for m in ('torch', 'numpy', 'huggingface_hub', "
            "'gguf', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------
# Hostile inputs (issue 19): each reproduced case is a one-line MemfitError, fast
# ------------------------------------------------------------------------------------------

def _kv_with(arch: str = "llama", **changes: tuple[int, Any]) -> list[tuple[str, int, Any]]:
    """llama_kv with some keys' (type, value) replaced (``__`` in a name stands for ``.``)."""
    fixed = {k.replace("__", "."): v for k, v in changes.items()}
    kv = [(k, *fixed.pop(k)) if k in fixed else (k, t, v) for k, t, v in llama_kv(arch=arch)]
    return kv + [(k, t, v) for k, (t, v) in fixed.items()]


@pytest.mark.parametrize("arch,changes,match", [
    ("qwen2moe", {"qwen2moe__block_count": (U64, 10**12)}, r"block_count: got 1000000000000"),
    ("llama", {"general__architecture": (ARR, (STR, ["llama", "x"]))},
     r"general.architecture: got \['llama', 'x'\]"),
    ("llama", {"llama__attention__head_count": (ARR, (ARR, [(U32, [1]), (U32, [2])]))},
     r"head_count: got \[\[1\], \[2\]\]; allowed: an integer, or an array"),
    ("llama", {"llama__embedding_length": (ARR, (STR, ["x"]))}, r"embedding_length: got"),
    ("llama", {"tokenizer__ggml__tokens": (STR, "abc")}, r"tokenizer.ggml.tokens: got 'abc'"),
    ("llama", {"general__file_type": (ARR, (U32, [1]))}, None),  # ignored: not a file type
    ("llama", {"llama__embedding_length": (U32, 2), "llama__attention__head_count": (U32, 4)},
     r"at least attention.head_count=4"),  # h // a == 0 (was ZeroDivisionError)
    ("llama", {"split__count": (U64, 10**15)}, r"split.count: got 1000000000000000; allowed: "
                                               r"an integer in \[0, 65535\]"),
    ("llama", {"split__count": (U16, 3)}, r"its split.count is 3 but its name says 2 files"),
])
def test_gguf_metadata_of_the_wrong_type_or_size(tmp_path: Path, arch: str, changes: dict,
                                                 match: str | None) -> None:
    path = tmp_path / "m-00001-of-00002.gguf"
    write_gguf(path, _kv_with(arch, **changes), llama_gguf_tensors())
    if match is None:
        read_gguf(path)
        return
    with pytest.raises(MemfitError, match=match) as err:
        load(str(path))
    assert "\n" not in str(err.value)


def test_gguf_header_counts_are_bounded_before_the_work(tmp_path: Path) -> None:
    from memfit.inputs import gguf

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 10**9, 1) + bytes(64))
    with pytest.raises(MemfitError, match=r"1,000,000,000 tensors .*at most 50,000"):
        parse_gguf_header(path)
    # a string longer than the bound is refused before it is read
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40)
                     + bytes(64))
    with pytest.raises(MemfitError, match="a string of 1,099,511,627,776 bytes"):
        parse_gguf_header(path)
    # 5 dimensions (ggml has 4)
    write_gguf(path, llama_kv(), [("token_embd.weight", (256, 320, 1, 1, 1), "F32")])
    with pytest.raises(MemfitError, match="5 dimensions"):
        parse_gguf_header(path)
    # millions of empty arrays nested in one: the item budget, not the clock, stops them
    n = gguf.MAX_ITEMS + 1
    raw = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _gguf_str("x") + struct.pack("<IIQ", 9, 9, n)
           + struct.pack("<IQ", 0, 0) * n)
    path.write_bytes(raw)
    with pytest.raises(MemfitError, match="past 2,000,000 items"):
        parse_gguf_header(path)


def test_fifos_and_unknown_users_are_refused_at_once(tmp_path: Path) -> None:
    import os

    folder = write_folder(tmp_path / "ckpt", LLAMA, llama_tensors(LLAMA))
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")  # reading it would block forever
    with pytest.raises(MemfitError, match="a regular file"):
        load(str(folder))
    os.mkfifo(tmp_path / "pipe.gguf")
    with pytest.raises(MemfitError, match="not a regular file or folder"):
        load(str(tmp_path / "pipe.gguf"))
    with pytest.raises(MemfitError, match=r"got '~nosuchuser/x'.*no such file or folder"):
        load("~nosuchuser/x")


def _st(path: Path, header: dict[str, Any], data: int) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))
    return path


def _t(offsets: tuple[int, int], shape: list[int] | None = None, dtype: str = "F32") -> dict:
    if shape is None:
        shape = [(offsets[1] - offsets[0]) // 4]
    return {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}


@pytest.mark.parametrize("header,data,match", [
    # the reference loader's InvalidOffset: overlaps and gaps
    ({"a": _t((0, 8)), "b": _t((4, 12))}, 12, "overlaps the tensor before it"),
    ({"a": _t((0, 8)), "b": _t((16, 24))}, 24, "leaves a gap before it"),
    ({"a": _t((8, 16))}, 16, "leaves a gap"),
    # MetadataIncompleteBuffer: bytes after the last tensor
    ({"a": _t((0, 8))}, 9, "1 bytes after its last tensor"),
    # ValidationOverflow: 1,000 dimensions of 2
    ({"a": _t((0, 8), [2] * 1000)}, 8, "more than 2\\^64 elements"),
    ({"a": _t((0, 2**70), [1])}, 8, "data_offsets"),
    ({"a": _t((0, 8)), "__metadata__": {"format": ["pt"]}}, 8, "__metadata__ is not an object "
                                                                "of strings"),
])
def test_safetensors_offsets_are_validated_as_the_reference_loader(
        tmp_path: Path, header: dict, data: int, match: str) -> None:
    with pytest.raises(MemfitError, match=match) as err:
        read_header(_st(tmp_path / "x.safetensors", header, data))
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_safetensors_headers_in_any_order_and_1000_unit_dimensions(tmp_path: Path) -> None:
    header = {"b": _t((8, 16)), "a": _t((0, 8), [1] * 998 + [2, 1])}
    entries, _ = read_header(_st(tmp_path / "x.safetensors", header, 16))
    assert [e.name for e in entries] == ["a", "b"] and len(entries[0].shape) == 1000


def test_safetensors_header_length_is_bounded_before_reading(tmp_path: Path) -> None:
    import resource

    from memfit.inputs.safetensors import MAX_HEADER_BYTES

    path = tmp_path / "x.safetensors"
    with path.open("wb") as f:  # a sparse 84 MB header: refused from its 8-byte length
        f.write(struct.pack("<Q", 84_000_000))
        f.truncate(8 + 84_000_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(MemfitError, match=f"exceeds {MAX_HEADER_BYTES:,} bytes"):
        read_header(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20_000  # KiB
    path.write_bytes(struct.pack("<Q", 5000) + b'{"a": 1}')
    with pytest.raises(MemfitError, match="truncated inside its 5,000-byte header"):
        read_header(path)
    raw = b'{"a": ' + b"9" * 5000 + b"}"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(MemfitError, match="not valid JSON"):
        read_header(path)
    raw = b'{"\xff": 1}'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(MemfitError, match="not UTF-8"):
        read_header(path)


@pytest.mark.parametrize("weight_map,match", [
    ({"a": 1}, r"weight_map\['a'\]: got 1"),
    ({"a": "../../etc/passwd"}, r"no '\.\.'"),
    ({"a": "/etc/passwd"}, "relative to the folder"),
    ([1, 2], "a JSON object whose weight_map"),
])
def test_safetensors_index_is_checked(tmp_path: Path, weight_map: Any, match: str) -> None:
    folder = write_folder(tmp_path / "ckpt", LLAMA, llama_tensors(LLAMA))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(MemfitError, match=match):
        load(str(folder))


def test_config_with_a_5000_digit_number(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "x": ' + "9" * 5000 + "}")
    with pytest.raises(MemfitError, match="holds a number memfit will not read"):
        load(str(tmp_path))
    cfg = {**LLAMA, "num_hidden_layers": 10**5000}
    with pytest.raises(MemfitError, match="an integer of about 5001 digits"):
        from_hf_config(cfg)
    with pytest.raises(MemfitError, match=r"num_hidden_layers: got 100000.0; allowed: an "
                                          r"integer in \[1, 10000\]"):
        from_hf_config({**LLAMA, "num_hidden_layers": 100000.0})
