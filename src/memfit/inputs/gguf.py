"""GGUF files: the metadata and every tensor's ggml type and exact bytes, from the header.

The layout (``ggml-org/llama.cpp`` ``ggml/include/gguf.h`` and ``docs/gguf.md``; versions 2
and 3, little-endian)::

    "GGUF"  uint32 version  uint64 n_tensors  uint64 n_kv
    n_kv x (string key, uint32 value_type, value)          # metadata
    n_tensors x (string name, uint32 n_dims, uint64 ne[n_dims], uint32 ggml_type,
                 uint64 offset)                              # tensor infos
    padding to general.alignment (default 32), then the tensor data

    string = uint64 length + UTF-8 bytes; array = uint32 item_type + uint64 count + items

Only the header is parsed (standard library, memory-mapped: the tensor data is never
touched). A tensor's bytes follow from its ggml type's block (elements per block, bytes per
block) in :data:`memfit.dtypes.GGML_TYPES`; ``ne[0]`` is the contiguous dimension, so the
shape is ``ne`` reversed. Split models (``*-00001-of-00003.gguf``, ``split.count``) are read
across all their files.

:func:`gguf_to_config` turns the architecture metadata into a Hugging Face style config dict
that :func:`memfit.arch.from_hf_config` reads (:data:`GGUF_ARCHITECTURES` lists the ones
mapped); facts the metadata omits are read off the tensors (tied embeddings: no
``output.weight``; q/k/v biases; which layers are MoE).
"""

from __future__ import annotations

import math
import mmap
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..arch import MAX_LAYERS, MAX_SIZE
from ..dtypes import GGML_TYPES, GGUF_FILE_TYPES, tensor_bytes
from ..errors import MemfitError
from . import TensorRecord, WeightsInfo
from .safetensors import open_regular

__all__ = ["GGUF_ARCHITECTURES", "GGML_TYPE_IDS", "GGUFArray", "GGUFHeader", "GGUFTensor",
           "gguf_to_config", "parse_gguf_header", "read_gguf"]

GGUF_MAGIC = b"GGUF"
GGUF_VERSIONS = (2, 3)
GGUF_DEFAULT_ALIGNMENT = 32

#: ggml type id -> name (``enum ggml_type`` in ``ggml/include/ggml.h``; 4, 5, 31-33 and
#: 36-38 are retired types no current file holds).
GGML_TYPE_IDS: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
    23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M",
    30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4", 41: "Q1_0",
}

#: (elements per block, bytes per block) of the ggml types that are not weight formats in
#: :data:`memfit.dtypes.GGML_TYPES`: integer and f64 tensors, Q8_1 (an activation type:
#: ``block_q8_1`` is fp16 d + fp16 s + 32 int8 = 36 bytes, ggml-common.h's static_assert),
#: NVFP4 (``block_nvfp4``: 64 values, 36 bytes) and Q1_0 (128 values, 18 bytes), as
#: gguf-py's ``GGML_QUANT_SIZES`` gives them.
_OTHER_BLOCKS: dict[str, tuple[int, int]] = {
    "I8": (1, 1), "I16": (1, 2), "I32": (1, 4), "I64": (1, 8), "F64": (1, 8),
    "Q8_1": (32, 36), "NVFP4": (64, 36), "Q1_0": (128, 18),
}

# GGUF metadata value types (``enum gguf_type``).
_SCALAR_FORMATS: dict[int, str] = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i",
                                   6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32", 5: "int32",
               6: "float32", 7: "bool", 8: "string", 9: "array", 10: "uint64", 11: "int64",
               12: "float64"}
_STRING, _ARRAY = 8, 9
#: Arrays longer than this keep only their type and length (tokenizer vocabularies, merges).
_KEEP_ARRAY_VALUES = 4096
# Arrays of arrays deeper than this are refused (real files nest at most once); the reader
# recurses once per level.
_MAX_ARRAY_DEPTH = 16

# Bounds on what a header may declare, checked before the work they would cost (a hostile
# header otherwise asks for 10^15 files, strings of gigabytes or millions of tensors).
#: Tensors in one file: real GGUF files hold ~300-2,000 (experts are fused into one tensor
#: per layer); even an unfused 256-expert, 61-layer model would hold ~47,000.
MAX_TENSORS = 50_000
#: Metadata keys in one file: real files hold 20-60.
MAX_KEYS = 10_000
#: Metadata items read or skipped in one file (array elements included): the largest real
#: tokenizers hold ~260,000 tokens plus ~500,000 merges (read in ~0.3 s).
MAX_ITEMS = 2_000_000
_U64 = struct.Struct("<Q")
#: Bytes of one metadata string (a chat template is the longest real one, ~10-100 KB).
MAX_STRING_BYTES = 16 << 20
#: Dimensions of one tensor: ``GGML_MAX_DIMS`` is 4 (ggml/include/ggml.h).
MAX_DIMS = 4
#: Files of a split model: llama.cpp's gguf-split writes ``split.count`` as a uint16
#: (``gguf_set_val_u16(..., LLM_KV_SPLIT_COUNT, ...)`` in tools/gguf-split/gguf-split.cpp).
MAX_SPLIT_FILES = 65_535


@dataclass(frozen=True)
class GGUFArray:
    """A long metadata array, kept as its item type and length (``len()`` works)."""

    item_type: str
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor info: ``ne`` in GGML order (``ne[0]`` contiguous), offset into the data."""

    name: str
    ne: tuple[int, ...]
    ggml_type: str
    offset: int
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major shape (``ne`` reversed): ``[n_vocab, n_embd]`` for ``token_embd``."""
        return tuple(reversed(self.ne))


@dataclass(frozen=True)
class GGUFHeader:
    """A parsed GGUF header."""

    version: int
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensor, ...]
    data_offset: int
    """Where the tensor data starts (after the alignment padding)."""
    file_size: int


class _Cursor:
    """Little-endian reads from a buffer, with errors that name the file."""

    def __init__(self, buf: Any, where: str) -> None:
        self.buf, self.pos, self.where = buf, 0, where
        self.size = len(buf)
        self.items = 0  # metadata items read or skipped, against MAX_ITEMS

    def count(self, n: int, what: str) -> None:
        self.items += n
        if self.items > MAX_ITEMS:
            raise _bad(self.where, f"{what} brings its metadata past {MAX_ITEMS:,} items")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _bad(self.where, f"it ends inside {what} (offset {self.pos})")

    def take(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def string(self, what: str) -> str:
        n = self.take("<Q", what)
        if n > MAX_STRING_BYTES:
            raise _bad(self.where, f"{what} is a string of {n:,} bytes (at most "
                                   f"{MAX_STRING_BYTES:,})")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.take("<Q", what)
        self.need(n, what)
        self.pos += n

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR_FORMATS:
            return self.take(_SCALAR_FORMATS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth >= _MAX_ARRAY_DEPTH:
                raise _bad(self.where, f"{what} nests arrays more than {_MAX_ARRAY_DEPTH} deep")
            item = self.take("<I", what)
            count = self.take("<Q", what)
            if item not in _TYPE_NAMES:
                raise _bad(self.where, f"{what} is an array of unknown type {item}")
            if item not in _SCALAR_FORMATS:  # strings and arrays are read one by one;
                # an inner array costs as much as 16 strings (no real file nests arrays)
                self.count(count * (16 if item == _ARRAY else 1), what)
            if count > _KEEP_ARRAY_VALUES:
                self.skip(item, count, what, depth)
                return GGUFArray(_TYPE_NAMES[item], count)
            if item in _SCALAR_FORMATS:
                fmt = _SCALAR_FORMATS[item]
                size = struct.calcsize(fmt)
                self.need(size * count, what)
                values = list(struct.unpack_from("<" + fmt[1] * count, self.buf, self.pos))
                self.pos += size * count
                return values
            return [self.value(item, what, depth + 1) for _ in range(count)]
        raise _bad(self.where, f"{what} has unknown value type {vtype}")

    def skip(self, item: int, count: int, what: str, depth: int = 0) -> None:
        if item in _SCALAR_FORMATS:
            n = struct.calcsize(_SCALAR_FORMATS[item]) * count
            self.need(n, what)
            self.pos += n
        elif item == _STRING:  # a tokenizer's tokens and merges: a tight loop
            buf, pos, size = self.buf, self.pos, self.size
            length = _U64.unpack_from
            for _ in range(count):
                if pos + 8 > size:
                    break
                pos += 8 + length(buf, pos)[0]
            else:
                if pos <= size:
                    self.pos = pos
                    return
            raise _bad(self.where, f"it ends inside {what} (offset {self.pos})")
        else:
            for _ in range(count):
                self.value(item, what, depth + 1)


def _bad(where: str, why: str) -> MemfitError:
    return MemfitError(f"model: GGUF file {where}: {why}; allowed: a GGUF v2/v3 file",
                       field="model", value=where, allowed="a GGUF v2/v3 file")


def _tensor_nbytes(name: str, ne: tuple[int, ...], type_name: str, where: str) -> int:
    """Exact bytes of a tensor: whole blocks along ``ne[0]``, times the other dimensions."""
    if type_name in GGML_TYPES:
        fmt = GGML_TYPES[type_name]
        block = fmt.block_size
        if ne[0] % block:
            raise _bad(where, f"tensor {name!r} has rows of {ne[0]} elements, not a multiple "
                              f"of {type_name}'s block of {block}")
        if fmt.block_rows == 1 and not fmt.super_block_size and fmt.block_bits % 8 == 0:
            # ggml_nbytes (ggml/src/ggml.c): whole blocks along ne[0], rows never padded
            return ne[0] // block * (fmt.block_bits // 8) * math.prod(ne[1:])
        return tensor_bytes(tuple(reversed(ne)) or (1,), fmt)
    block, size = _OTHER_BLOCKS[type_name]
    if ne[0] % block:
        raise _bad(where, f"tensor {name!r} has rows of {ne[0]} elements, not a multiple of "
                          f"{type_name}'s block of {block}")
    return ne[0] // block * size * math.prod(ne[1:])


def parse_gguf_header(path: str | Path) -> GGUFHeader:
    """Parse one GGUF file's header (metadata and tensor infos); the data is not read."""
    path = Path(path)
    where = path.name
    try:
        with open_regular(path) as f:  # a FIFO named *.gguf is refused, not waited on
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise _bad(where, f"it has {size} bytes, fewer than a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, where, size)
    except OSError as exc:
        raise MemfitError.bad_value("model", str(path), f"a readable GGUF file ({exc})") from None


def _parse(buf: Any, where: str, size: int) -> GGUFHeader:
    cur = _Cursor(buf, where)
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise _bad(where, f"it starts with {magic!r}, not the GGUF magic b'GGUF'")
    cur.pos = 4
    version = cur.take("<I", "the version")
    if version not in GGUF_VERSIONS:
        swapped = struct.unpack("<I", struct.pack(">I", version))[0]
        why = (f"it is a big-endian GGUF (version {swapped})" if swapped in GGUF_VERSIONS
               else f"its version is {version}")
        raise _bad(where, why + "; memfit reads little-endian GGUF v2 and v3")
    n_tensors = cur.take("<Q", "the tensor count")
    n_kv = cur.take("<Q", "the metadata count")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
        raise _bad(where, f"it declares {n_tensors:,} tensors and {n_kv:,} metadata keys (at "
                          f"most {MAX_TENSORS:,} and {MAX_KEYS:,})")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.take("<I", f"the type of {key!r}")
        metadata[key] = cur.value(vtype, repr(key))
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor info #{i}")
        n_dims = cur.take("<I", f"the dimensions of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise _bad(where, f"tensor {name!r} has {n_dims} dimensions (ggml allows 1 to "
                              f"{MAX_DIMS})")
        ne = tuple(cur.take("<Q", f"the shape of {name!r}") for _ in range(n_dims))
        type_id = cur.take("<I", f"the type of {name!r}")
        offset = cur.take("<Q", f"the offset of {name!r}")
        if type_id not in GGML_TYPE_IDS:
            raise MemfitError(f"gguf: {where}: tensor {name!r} has ggml type {type_id}; "
                              "allowed: " + ", ".join(f"{k} ({v})" for k, v in
                                                      GGML_TYPE_IDS.items()),
                              field="ggml_type", value=type_id, allowed="ggml types")
        infos.append((name, ne, GGML_TYPE_IDS[type_id], offset))
    alignment = metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
        raise _bad(where, f"general.alignment is {alignment!r}, not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, ne, type_name, offset in infos:
        nbytes = _tensor_nbytes(name, ne, type_name, where)
        if data_offset + offset + nbytes > size:
            raise _bad(where, f"it is truncated: tensor {name!r} ends at byte "
                              f"{data_offset + offset + nbytes}, the file has {size}")
        tensors.append(GGUFTensor(name, ne, type_name, offset, nbytes))
    return GGUFHeader(version, metadata, tuple(tensors), data_offset, size)


_SPLIT = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def _split_paths(path: Path, count: int) -> list[Path]:
    m = _SPLIT.match(path.name)
    if not m:
        raise _bad(path.name, f"it is part of a {count}-file split model but its name is not "
                              "<stem>-0000N-of-0000M.gguf")
    if int(m.group("count")) != count:
        raise _bad(path.name, f"its split.count is {count} but its name says "
                              f"{int(m.group('count'))} files")
    stem = m.group("stem")
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def read_gguf(path: str | Path) -> tuple[dict[str, Any], WeightsInfo]:
    """A GGUF model: ``(config, weights)``, the config a Hugging Face style dict.

    ``path``: a ``.gguf`` file, or any file of a split model (all of its files are read).
    """
    path = Path(os.path.expanduser(path))  # unchanged for an unknown ~user
    if not path.is_file():
        raise MemfitError.bad_value("model", str(path), "a .gguf file (no such file)")
    first = parse_gguf_header(path)
    headers = [(path, first)]
    notes: list[str] = []
    count = first.metadata.get("split.count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_SPLIT_FILES:
        raise MemfitError.bad_value("split.count", _short(count),
                                    f"an integer in [0, {MAX_SPLIT_FILES}] (a uint16)")
    if count > 1:
        paths = _split_paths(path, count)
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise MemfitError.bad_value("model", str(path),
                                        f"all {count} files of the split model (missing: "
                                        f"{', '.join(missing)})")
        headers = [(p, first if p == path else parse_gguf_header(p)) for p in paths]
        notes.append(f"split model: read the headers of all {count} files")
    meta = headers[0][1].metadata
    records = []
    for p, h in headers:
        for t in h.tensors:
            role = "buffer" if _GGUF_BUFFER.search(t.name) else "param"
            records.append(TensorRecord(t.name, t.ggml_type, t.shape, t.nbytes,
                                        math.prod(t.ne) if role == "param" else 0, role, p.name))
    buffers = [r.name for r in records if r.role == "buffer"]
    if buffers:
        notes.append(f"{len(buffers)} stored buffers ({', '.join(sorted(set(buffers))[:3])}) "
                     "are not parameters: left out of the totals")
    shapes = {r.name: r.shape for r in records}
    config, config_notes = gguf_to_config(meta, shapes)
    notes.extend(config_notes)
    n_layers = config.get("num_hidden_layers", config.get("n_layer"))
    block_count = meta.get(f"{meta.get('general.architecture')}.block_count")
    if isinstance(n_layers, int) and isinstance(block_count, int) and n_layers < block_count:
        records = [_unused(r) if (mm := _BLK.match(r.name)) and int(mm.group(1)) >= n_layers
                   else r for r in records]
        notes.append(f"tensors of blocks {n_layers}..{block_count - 1} are left out of the "
                     "totals (llama.cpp skips the multi-token-prediction layers' weights)")
    ggml_types: dict[str, int] = {}
    for r in records:
        ggml_types[r.dtype] = ggml_types.get(r.dtype, 0) + 1
    quantization = {"quant_method": "gguf", "file_type": _file_type_name(meta),
                    "ggml_types": dict(sorted(ggml_types.items())),
                    "version": headers[0][1].version}
    source = str(path) if len(headers) == 1 else f"{headers[0][0]} (+{len(headers) - 1} files)"
    info = WeightsInfo(format="gguf", source=source, tensors=tuple(records),
                       quantization=quantization, notes=tuple(notes))
    return config, info


_BLK = re.compile(r"^blk\.(\d+)\.")


def _unused(r: TensorRecord) -> TensorRecord:
    return TensorRecord(r.name, r.dtype, r.shape, r.nbytes, 0, "unused", r.file)


# llama.cpp writes these as tensors, but they are not model parameters: rope frequency
# factors (Llama 3.1 rope_freqs, Phi-3 long/short factors) and DeepSeek-V3's expert score
# bias (a buffer in transformers).
_GGUF_BUFFER = re.compile(r"^(rope_freqs|rope_factors_(long|short))\.weight$|\.exp_probs_b\.")

# llama_ftype names (``enum llama_ftype`` in include/llama.h) beyond memfit's file types.
_FTYPE_NAMES = {19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS",
                24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
                30: "IQ4_XS", 31: "IQ1_M", 36: "TQ1_0", 37: "TQ2_0", 39: "NVFP4", 40: "Q1_0"}


def _short(value: Any) -> Any:
    """A metadata value fit for a one-line error (a long array as its length)."""
    if isinstance(value, list) and len(value) > 8:
        return f"an array of {len(value)}"
    if isinstance(value, str) and len(value) > 80:
        return value[:80] + "..."
    return value


def _file_type_name(meta: Mapping[str, Any]) -> str | None:
    ftype = meta.get("general.file_type")
    if not isinstance(ftype, int) or isinstance(ftype, bool):
        return None
    for ft in GGUF_FILE_TYPES:
        if ft.ftype == ftype:
            return ft.name
    return _FTYPE_NAMES.get(ftype, f"ftype {ftype}")


# ------------------------------------------------------------------------------------------
# Metadata -> a Hugging Face style config
# ------------------------------------------------------------------------------------------

#: GGUF ``general.architecture`` -> transformers ``model_type`` (llama.cpp's
#: ``convert_hf_to_gguf.py`` writes Mistral as ``llama``; ``llama`` with experts is Mixtral;
#: ``deepseek2`` is DeepSeek-V2 or V3, told apart by V3's ``exp_probs_b`` tensors).
GGUF_ARCHITECTURES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen2moe": "qwen2_moe",
    "qwen3": "qwen3",
    "qwen3moe": "qwen3_moe",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
    "gpt2": "gpt2",
    "gptneox": "gpt_neox",
    "olmo2": "olmo2",
    "deepseek2": "deepseek_v2",
    "gpt-oss": "gpt_oss",
}


class _Meta:
    """Typed access to ``{arch}.*`` keys, errors naming the key."""

    def __init__(self, meta: Mapping[str, Any], arch: str) -> None:
        self.meta, self.arch = meta, arch

    def raw(self, key: str) -> Any:
        return self.meta.get(f"{self.arch}.{key}")

    def int(self, key: str, default: int | None = None, *, per_layer: bool = False,
            maximum: int = MAX_SIZE) -> int | None:
        value = self.raw(key)
        if value is None:
            return default
        name = f"{self.arch}.{key}"
        if isinstance(value, list) and per_layer:
            if not value or not all(_is_int(v) for v in value):
                raise MemfitError.bad_value(name, _short(value), "an integer, or an array of "
                                            "one integer per layer")
            distinct = set(value)
            if len(distinct) != 1:
                raise MemfitError.bad_value(name, _short(value),
                                            "the same value for every layer (memfit models "
                                            "uniform layers)")
            value = distinct.pop()
        if not _is_int(value) or not 0 <= value <= maximum:
            raise MemfitError.bad_value(name, _short(value), f"an integer in [0, {maximum:,}]")
        return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Dims:
    """The sizes a GGUF file's ``{arch}.*`` keys give (validated, in reading order)."""

    n_layers: int
    h: int
    a: int
    a_kv: int | None
    ff: int | None
    key_len: int | None
    ctx: int | None
    n_expert: int
    n_used: int
    window: int | None


def _gguf_arch(meta: Mapping[str, Any]) -> str:
    """``general.architecture``, one memfit maps to a transformers ``model_type``."""
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_ARCHITECTURES:
        raise MemfitError.bad_value("general.architecture", _short(arch),
                                    ", ".join(sorted(GGUF_ARCHITECTURES)) + " (GGUF "
                                    "architectures memfit maps to a transformers model_type)")
    return arch


def _gguf_dims(m: _Meta, arch: str) -> _Dims:
    """The layer count, widths, heads, experts and window from the metadata."""
    n_layers = m.int("block_count", maximum=MAX_LAYERS)  # bounds every per-layer loop
    h = m.int("embedding_length")
    a = m.int("attention.head_count", per_layer=True)
    if not n_layers or not h or not a:
        raise MemfitError.bad_value(f"{arch}.block_count/embedding_length/attention.head_count",
                                    (n_layers, h, a), "positive integers in the GGUF metadata")
    a_kv = m.int("attention.head_count_kv", a, per_layer=True)
    ff = m.int("feed_forward_length", 0, per_layer=True)
    key_len = m.int("attention.key_length")
    ctx = m.int("context_length")
    n_expert = m.int("expert_count", 0) or 0
    n_used = m.int("expert_used_count", 0) or 0
    window = m.int("attention.sliding_window")
    return _Dims(n_layers, h, a, a_kv, ff, key_len, ctx, n_expert, n_used, window)


def _gguf_vocab(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], m: _Meta,
                notes: list[str]) -> int:
    """Vocabulary: the embedding table's rows (what the model holds), else the token list."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, (list, GGUFArray)):
        raise MemfitError.bad_value("tokenizer.ggml.tokens", _short(tokens), "an array of "
                                    "strings")
    n_tokens = len(tokens) if tokens is not None else None
    vocab: int | None
    if "token_embd.weight" in shapes:
        vocab = shapes["token_embd.weight"][0]
        if n_tokens is not None and n_tokens != vocab:
            notes.append(f"token_embd has {vocab} rows, tokenizer.ggml.tokens {n_tokens} "
                         "entries: used the embedding rows")
    elif n_tokens is not None:
        vocab = n_tokens
    else:
        vocab = m.int("vocab_size")
    if not vocab:
        raise MemfitError.bad_value("tokenizer.ggml.tokens", None,
                                    "a token list or a token_embd.weight tensor")
    return vocab


def _has(shapes: Mapping[str, tuple[int, ...]], suffix: str, layer: int = 0) -> bool:
    """Whether block ``layer`` holds the tensor ``suffix``."""
    return f"blk.{layer}.{suffix}" in shapes


def _llama_config(cfg: dict[str, Any], m: _Meta, shapes: Mapping[str, tuple[int, ...]],
                  d: _Dims, head_dim: int) -> None:
    """llama (and Mixtral, llama with experts): biases, partial rotary, experts."""
    cfg["attention_bias"] = _has(shapes, "attn_q.bias") or _has(shapes, "attn_qkv.bias")
    cfg["mlp_bias"] = _has(shapes, "ffn_up.bias")
    rope = m.int("rope.dimension_count")
    if rope and rope != head_dim:
        cfg["partial_rotary_factor"] = rope / head_dim
    if d.n_expert:
        cfg.update(model_type="mixtral", num_local_experts=d.n_expert,
                   num_experts_per_tok=d.n_used or 2)
        if d.window:
            cfg["sliding_window"] = d.window


def _qwen_moe_config(cfg: dict[str, Any], model_type: str, m: _Meta,
                     shapes: Mapping[str, tuple[int, ...]], d: _Dims) -> None:
    """Qwen2-MoE / Qwen3-MoE: experts, dense layers, Qwen2-MoE's shared expert."""
    n_layers = d.n_layers
    cfg["num_experts"] = d.n_expert
    cfg["num_experts_per_tok"] = d.n_used
    cfg["moe_intermediate_size"] = m.int("expert_feed_forward_length",
                                         _experts_width(shapes, n_layers))
    cfg["decoder_sparse_step"] = 1
    cfg["mlp_only_layers"] = [i for i in range(n_layers)
                              if not _has(shapes, "ffn_gate_inp.weight", i)]
    if model_type == "qwen2_moe":
        shared = m.int("expert_shared_feed_forward_length")
        if shared is None:
            shexp = next((shapes[k] for k in shapes if k.endswith("ffn_up_shexp.weight")),
                         None)
            shared = shexp[0] if shexp else 0
        cfg["shared_expert_intermediate_size"] = shared
        cfg["qkv_bias"] = _has(shapes, "attn_q.bias")


def _gemma_config(cfg: dict[str, Any], m: _Meta, d: _Dims) -> None:
    """Gemma 2 / 3: the sliding window and which layers use it."""
    if d.window:
        cfg["sliding_window"] = d.window
    pattern = m.raw("attention.sliding_window_pattern")
    if isinstance(pattern, list) and len(pattern) == d.n_layers:
        cfg["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    elif isinstance(pattern, int) and pattern > 0:
        cfg["sliding_window_pattern"] = pattern


def _arch_config(cfg: dict[str, Any], model_type: str, meta: Mapping[str, Any], m: _Meta,
                 shapes: Mapping[str, tuple[int, ...]], d: _Dims, head_dim: int,
                 notes: list[str]) -> dict[str, Any]:
    """``cfg`` completed with the keys of its architecture (GPT-2's is rebuilt whole)."""
    if model_type == "llama":
        _llama_config(cfg, m, shapes, d, head_dim)
    elif model_type in ("qwen2", "qwen3", "olmo2"):
        pass
    elif model_type in ("qwen2_moe", "qwen3_moe"):
        _qwen_moe_config(cfg, model_type, m, shapes, d)
    elif model_type in ("gemma2", "gemma3_text"):
        _gemma_config(cfg, m, d)
    elif model_type == "phi3":
        if d.window:
            cfg["sliding_window"] = d.window
    elif model_type == "gpt2":
        dtype = cfg.get("torch_dtype")
        cfg = {"model_type": "gpt2", "_name_or_path": cfg["_name_or_path"],
               "n_layer": d.n_layers, "n_embd": d.h, "n_head": d.a,
               "vocab_size": cfg["vocab_size"],
               "n_positions": d.ctx or shapes.get("position_embd.weight", (1024,))[0],
               "n_inner": d.ff or None, "tie_word_embeddings": cfg["tie_word_embeddings"],
               **({"torch_dtype": dtype} if dtype else {})}
    elif model_type == "gpt_neox":
        rope = m.int("rope.dimension_count") or head_dim
        cfg["rotary_pct"] = rope / head_dim
        parallel = meta.get(f"{m.arch}.use_parallel_residual")
        cfg["use_parallel_residual"] = bool(parallel) if parallel is not None else True
        cfg["attention_bias"] = _has(shapes, "attn_qkv.bias")
        cfg["num_key_value_heads"] = d.a
    elif model_type == "deepseek_v2":
        _deepseek(cfg, m, shapes, d.a, d.n_layers, notes)
    elif model_type == "gpt_oss":
        cfg.update(num_local_experts=d.n_expert, experts_per_token=d.n_used,
                   num_experts_per_tok=d.n_used,
                   intermediate_size=m.int("expert_feed_forward_length",
                                           _experts_width(shapes, d.n_layers)))
        if d.window:
            cfg["sliding_window"] = d.window
    return cfg


def gguf_to_config(meta: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]
                   ) -> tuple[dict[str, Any], list[str]]:
    """A Hugging Face style ``config.json`` dict from GGUF metadata and tensor shapes.

    Returns ``(config, notes)``. Raises :class:`MemfitError` listing the supported
    architectures for any other ``general.architecture``.
    """
    arch = _gguf_arch(meta)
    m = _Meta(meta, arch)
    model_type = GGUF_ARCHITECTURES[arch]
    notes: list[str] = []
    d = _gguf_dims(m, arch)
    vocab = _gguf_vocab(meta, shapes, m, notes)
    tied = "output.weight" not in shapes
    if tied:
        notes.append("tied weights stored once: output.weight absent, token_embd serves as "
                     "the output (tie_word_embeddings=true)")
    name = meta.get("general.name")
    cfg: dict[str, Any] = {
        "model_type": model_type,
        "_name_or_path": name if isinstance(name, str) and name else None,
        "num_hidden_layers": d.n_layers,
        "hidden_size": d.h,
        "num_attention_heads": d.a,
        "num_key_value_heads": d.a_kv,
        "intermediate_size": d.ff,
        "vocab_size": vocab,
        "tie_word_embeddings": tied,
    }
    if d.ctx:
        cfg["max_position_embeddings"] = d.ctx
    theta = meta.get(f"{arch}.rope.freq_base")
    if isinstance(theta, (int, float)):
        cfg["rope_theta"] = theta
    ftype = meta.get("general.file_type")
    dtype = _FLOAT_FILE_TYPES.get(ftype) if isinstance(ftype, int) else None
    if dtype:
        cfg["torch_dtype"] = dtype
    head_dim = d.key_len or d.h // d.a
    if not head_dim:
        raise MemfitError.bad_value(f"{arch}.embedding_length", d.h, f"at least "
                                    f"attention.head_count={d.a} (a head of at least one "
                                    "dimension), or an attention.key_length")
    if model_type not in ("gpt2", "gpt_neox", "deepseek_v2"):
        cfg["head_dim"] = head_dim
    cfg = _arch_config(cfg, model_type, meta, m, shapes, d, head_dim, notes)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    return cfg, notes


_FLOAT_FILE_TYPES = {0: "float32", 1: "float16", 32: "bfloat16"}


def _experts_width(shapes: Mapping[str, tuple[int, ...]], n_layers: int) -> int | None:
    """The routed experts' hidden width, from a fused ``ffn_up_exps`` ([E, I, h])."""
    for i in range(n_layers):
        shape = shapes.get(f"blk.{i}.ffn_up_exps.weight")
        if shape is not None and len(shape) == 3:
            return shape[1]
    return None


def _deepseek(cfg: dict[str, Any], m: _Meta, shapes: Mapping[str, tuple[int, ...]], a: int,
              n_layers: int, notes: list[str]) -> None:
    """MLA and MoE fields of llama.cpp's ``deepseek2`` (DeepSeek-V2, V2-Lite, V3, R1)."""
    v3 = any(".exp_probs_b." in k for k in shapes)
    rope = m.int("rope.dimension_count", 64) or 64
    # Files converted for llama.cpp's absorbed MLA store the original dims in *_mla.
    qk = m.int("attention.key_length_mla") or m.int("attention.key_length")
    v = m.int("attention.value_length_mla") or m.int("attention.value_length")
    q_lora = m.int("attention.q_lora_rank", 0)
    nextn = m.int("nextn_predict_layers", 0) or 0
    if nextn:
        cfg["num_hidden_layers"] = n_layers - nextn
        notes.append(f"{nextn} multi-token-prediction layer(s) counted in block_count are not "
                     "decoder layers: num_hidden_layers = block_count - nextn_predict_layers")
    cfg.update(
        model_type="deepseek_v3" if v3 else "deepseek_v2",
        num_key_value_heads=a,  # MLA: the HF config's KV heads equal the heads
        q_lora_rank=q_lora or None,
        kv_lora_rank=m.int("attention.kv_lora_rank", 512),
        qk_rope_head_dim=rope,
        qk_nope_head_dim=(qk - rope) if qk else None,
        v_head_dim=v,
        n_routed_experts=m.int("expert_count"),
        num_experts_per_tok=m.int("expert_used_count"),
        moe_intermediate_size=m.int("expert_feed_forward_length"),
        n_shared_experts=m.int("expert_shared_count", 0),
        first_k_dense_replace=m.int("leading_dense_block_count", 0),
    )
    if not v3:
        cfg["attention_bias"] = "blk.0.attn_q_a.bias" in shapes or "blk.0.attn_q.bias" in shapes
