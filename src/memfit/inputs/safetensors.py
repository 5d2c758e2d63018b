"""Safetensors checkpoints: every tensor's dtype, shape and exact bytes, from the headers.

A ``.safetensors`` file starts with an 8-byte little-endian header length ``n``, then ``n``
bytes of JSON: ``{name: {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
"__metadata__": {...}}``, then the tensor data (https://github.com/huggingface/safetensors,
"Format"). Only those ``8 + n`` bytes are read, with the standard library; tensor data never.

A folder is read as transformers reads it: ``model.safetensors.index.json`` (its
``weight_map`` names the shards) when present, else ``model.safetensors``, else every
``*.safetensors`` file (Mistral's ``consolidated*.safetensors`` duplicates skipped).

Packed and quantized checkpoints count their real bytes and their *logical* parameters, from
the config's ``quantization_config``:

* GPTQ / AWQ: ``qweight`` (int32 words of ``bits``-bit values) holds ``numel * 32 / bits``
  parameters; ``qzeros``, ``scales``, ``g_idx`` are quantization metadata (role ``quant``).
* compressed-tensors: ``weight_packed`` likewise with ``config_groups.*.weights.num_bits``;
  ``weight_scale``, ``weight_zero_point``, ``weight_shape``, ``*_global_scale`` are metadata.
* FP8 (``fp8``, ``fbgemm_fp8``, compressed-tensors float): the 8-bit weight is the parameter,
  ``weight_scale(_inv)``, ``input_scale`` metadata.
* bitsandbytes 4-bit: the uint8 ``weight`` holds two 4-bit values per byte; ``absmax``,
  ``quant_map``, ``nested_*``, ``quant_state.*`` are metadata. 8-bit: ``SCB`` is metadata.
* MXFP4 (gpt-oss): ``*_blocks`` (uint8) hold two FP4 values per byte; ``*_scales`` are
  metadata.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from ..arch import FAMILIES, read_config
from ..errors import MemfitError
from . import TensorRecord, WeightsInfo

__all__ = ["SAFETENSORS_DTYPE_BITS", "MAX_HEADER_BYTES", "MAX_TENSORS", "HeaderEntry",
           "open_regular", "parse_header", "read_header", "read_safetensors_dir",
           "weights_from_headers"]

#: Bits per element of each safetensors dtype (``safetensors/src/tensor.rs`` ``Dtype``).
SAFETENSORS_DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8, "I8": 8, "U16": 16, "I16": 16, "U32": 32, "I32": 32, "U64": 64, "I64": 64,
    "F4": 4,  # FP4 e2m1, two per byte
    "F6_E2M3": 6, "F6_E3M2": 6,
    "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "F16": 16, "BF16": 16, "F32": 32, "F64": 64,
    "C64": 64,
}

#: The largest header memfit reads: 16 MiB. The safetensors library refuses headers over
#: 100 MB (``MAX_HEADER_SIZE = 100_000_000`` in ``safetensors/src/tensor.rs``,
#: ``SafeTensors::read_metadata``, ``HeaderTooLarge``), a limit on its Rust parser; Python's
#: ``json`` takes ~13 bytes of memory per header byte, so memfit draws the line lower. Real
#: headers are ~100 bytes per tensor, a few hundred KB per file: 16 MiB holds ~120,000
#: tensors, far more than any real shard.
MAX_HEADER_BYTES = 16 << 20
#: Tensors in one checkpoint, all shards together: the largest real ones hold ~140,000
#: (Kimi-K2: 384 experts x 3 projections x 60 layers, each with its FP8 scale); memfit reads
#: ~80,000 a second in ~1.5 KB each.
MAX_TENSORS = 250_000
#: The largest element count or offset: the reference loader computes them in ``usize``
#: (64 bits) with checked arithmetic and refuses an overflow (``ValidationOverflow``).
_USIZE = 1 << 64

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


class HeaderEntry(NamedTuple):
    """One tensor of a safetensors header."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < _USIZE


def _load_json(header: bytes | str, where: str) -> Any:
    try:
        text = header.decode("utf-8") if isinstance(header, bytes) else header
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise _bad(where, f"its header is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, the int-str digit limit
        raise _bad(where, f"its header is not valid JSON ({str(exc)[:200]})") from None


def parse_header(header: bytes | str | Mapping[str, Any], where: str
                 ) -> tuple[list[HeaderEntry], dict[str, str], int]:
    """Validate a safetensors JSON header: ``(entries, __metadata__, end of the data)``.

    ``header`` is the JSON text (or the already-parsed object); ``where`` names the file in
    errors. The checks are the reference loader's (``safetensors/src/tensor.rs``:
    ``TryFrom<HashMetadata> for Metadata`` sorts the tensors by ``data_offsets``, then
    ``Metadata::validate``): each tensor starts where the previous one ended, the first at 0
    (no gap, no overlap: ``InvalidOffset``), ``end >= begin``, ``numel * bits`` fits 64 bits
    (``ValidationOverflow``), is whole bytes (``MisalignedSlice``) and equals the span
    (``TensorInvalidInfo``); ``__metadata__`` maps strings to strings. Entries come back in
    offset order; the end is the data's length.
    """
    data = header if isinstance(header, Mapping) else _load_json(header, where)
    if not isinstance(data, dict):
        raise _bad(where, "its header is not a JSON object")
    meta = data.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _bad(where, "its __metadata__ is not an object of strings")
    if len(data) > MAX_TENSORS + 1:
        raise _bad(where, f"it declares {len(data) - 1:,} tensors (at most {MAX_TENSORS:,})")
    spans: list[tuple[int, int, HeaderEntry]] = []
    for name, info in data.items():
        if name != "__metadata__":
            spans.append(_entry(name, info, where))
    spans.sort(key=lambda x: (x[0], x[1]))
    end = 0
    for begin, stop, e in spans:
        if begin != end:
            why = "overlaps the tensor before it" if begin < end else "leaves a gap before it"
            raise _bad(where, f"tensor {e.name!r} has data_offsets [{begin}, {stop}], which "
                              f"{why} (expected it to start at {end}; the reference loader's "
                              "InvalidOffset)")
        end = stop
    return [e for _, _, e in spans], {str(k): v for k, v in meta.items()}, end


def _entry(name: str, info: Any, where: str) -> tuple[int, int, HeaderEntry]:
    """One tensor's ``(begin, end, entry)``, its own fields checked."""
    short = name if len(name) <= 200 else name[:200] + "..."
    if not isinstance(info, dict):
        raise _bad(where, f"tensor {short!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPE_BITS:
        raise MemfitError(f"dtype: tensor {short!r} of safetensors file {where} has dtype "
                          f"{_brief(dtype)!r}; allowed: {', '.join(SAFETENSORS_DTYPE_BITS)}",
                          field="dtype", value=_brief(dtype), allowed="safetensors dtypes")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _bad(where, f"tensor {short!r} has shape {_brief(shape)!r} (not a list of "
                          "non-negative 64-bit integers)")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(_is_count(o) for o in offsets) or offsets[0] > offsets[1]):
        raise _bad(where, f"tensor {short!r} has data_offsets {_brief(offsets)!r} (not "
                          "[begin, end], 0 <= begin <= end < 2^64)")
    numel = 1
    for d in shape:  # checked multiplication, as the reference's try_fold(usize::checked_mul)
        numel *= d
        if numel >= _USIZE:
            raise _bad(where, f"tensor {short!r} has a shape of more than 2^64 elements "
                              "(the reference loader's ValidationOverflow)")
    bits = numel * SAFETENSORS_DTYPE_BITS[dtype]
    nbytes = offsets[1] - offsets[0]
    if bits >= _USIZE or bits % 8 or bits // 8 != nbytes:
        raise _bad(where, f"tensor {short!r} ({dtype}, {len(shape)} dims, {numel:,} elements) "
                          f"needs {bits / 8:g} bytes but its data_offsets span {nbytes:,}")
    return offsets[0], offsets[1], HeaderEntry(name, dtype, tuple(shape), nbytes, where)


def _brief(value: Any) -> Any:
    """A header value fit for a one-line error (a long list as its length)."""
    if isinstance(value, (list, dict)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, str) and len(value) > 80:
        return value[:80] + "..."
    if isinstance(value, int) and not -10**30 < value < 10**30:
        return f"<integer of {value.bit_length()} bits>"
    return value


def open_regular(path: Path) -> Any:
    """``path`` opened for binary reading if it is a regular file (never blocks: a FIFO or a
    device named ``*.safetensors`` is refused, not read). Raises OSError or MemfitError."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise MemfitError.bad_value("model", str(path), "a regular file (this is a FIFO, "
                                        "a device or a socket)")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(path: str | Path) -> tuple[list[HeaderEntry], dict[str, str]]:
    """The header of one ``.safetensors`` file: its tensors and ``__metadata__``.

    Reads ``8 + n`` bytes (``n`` at most :data:`MAX_HEADER_BYTES`, checked before reading);
    checks, as the reference loader does, that the data the header declares ends exactly at
    the end of the file (``MetadataIncompleteBuffer``).
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise _bad(path.name, "it is shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise _bad(path.name, f"its header length {n:,} exceeds {MAX_HEADER_BYTES:,} "
                                      "bytes (not a safetensors file?)")
            if 8 + n > size:
                raise _bad(path.name, f"it is truncated inside its {n:,}-byte header")
            header = f.read(n)
    except OSError as exc:
        raise MemfitError.bad_value("model", str(path), f"a readable file ({exc})") from None
    if len(header) < n:
        raise _bad(path.name, f"it is truncated inside its {n:,}-byte header")
    entries, meta, end = parse_header(header, path.name)
    if 8 + n + end > size:
        raise _bad(path.name, f"it is truncated: its tensors need {8 + n + end} bytes, the "
                              f"file has {size}")
    if 8 + n + end < size:
        raise _bad(path.name, f"it has {size - 8 - n - end:,} bytes after its last tensor "
                              "(the data must end the file: the reference loader's "
                              "MetadataIncompleteBuffer)")
    return entries, meta


def _bad(where: str, why: str) -> MemfitError:
    return MemfitError(f"model: safetensors file {where}: {why}; allowed: a safetensors file "
                       "(8-byte little-endian header length, JSON header, data)",
                       field="model", value=where, allowed="a safetensors file")


# ------------------------------------------------------------------------------------------
# A folder
# ------------------------------------------------------------------------------------------

def _weight_files(folder: Path) -> tuple[list[Path], dict[str, str] | None, list[str]]:
    """The safetensors files a loader reads, the index's weight_map, notes."""
    notes: list[str] = []
    index = folder / _INDEX
    if not index.is_file():
        others = sorted(folder.glob("*.safetensors.index.json"))
        index = others[0] if len(others) == 1 else index
    if index.is_file():
        weight_map = _read_index(index)
        files = [folder / f for f in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise MemfitError.bad_value("model", str(folder),
                                        f"every shard {index.name} names (missing: "
                                        f"{', '.join(missing[:5])})")
        return files, weight_map, notes
    if (folder / _SINGLE).is_file():
        return [folder / _SINGLE], None, notes
    files = sorted(folder.glob("*.safetensors"))
    plain = [f for f in files if not f.name.startswith("consolidated")]
    if plain and len(plain) < len(files):
        notes.append("skipped " + ", ".join(f.name for f in files if f not in plain)
                     + " (Mistral's own format, a duplicate of the transformers weights)")
        files = plain
    if not files:
        raise MemfitError.bad_value("model", str(folder), "a folder holding *.safetensors")
    return files, None, notes


#: The largest index memfit reads (real ones: ~10 KB per 100 tensors, a few MB at most).
MAX_INDEX_BYTES = 64 << 20


def _read_index(index: Path) -> dict[str, str]:
    """The index's ``weight_map``: tensor name -> shard file, a relative path in the folder."""
    allowed = ("a safetensors index: a JSON object whose weight_map maps each tensor name to "
               "a shard file in the folder")
    try:
        with open_regular(index) as f:
            raw = f.read(MAX_INDEX_BYTES + 1)
        if len(raw) > MAX_INDEX_BYTES:
            raise MemfitError.bad_value("model", str(index), f"{allowed} (at most "
                                        f"{MAX_INDEX_BYTES:,} bytes)")
        data = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        if isinstance(exc, MemfitError):
            raise
        raise MemfitError.bad_value("model", str(index), f"{allowed} ({str(exc)[:200]})") from None
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or len(weight_map) > MAX_TENSORS:
        raise MemfitError.bad_value("model", str(index), f"{allowed} (at most "
                                    f"{MAX_TENSORS:,} tensors)")
    for name, file in weight_map.items():
        if (not isinstance(file, str) or not file or file.startswith(("/", "\\"))
                or ".." in re.split(r"[/\\]", file) or "\0" in file):
            raise MemfitError.bad_value(f"weight_map[{name[:100]!r}]", _brief(file),
                                        "a shard file name relative to the folder (a string, "
                                        "no '..')")
    return weight_map


def read_safetensors_dir(path: str | Path, config: Mapping[str, Any] | None = None
                         ) -> WeightsInfo:
    """Every tensor of a local checkpoint folder (``config.json`` + ``*.safetensors``).

    ``config``: the config dict (default: the folder's ``config.json``), for the
    ``quantization_config``, ``tie_word_embeddings`` and the layer count.
    """
    folder = Path(os.path.expanduser(path))  # unchanged for an unknown ~user
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise MemfitError.bad_value("model", str(path), "a folder with *.safetensors files")
    if config is None:
        config = read_config(folder)
    files, weight_map, notes = _weight_files(folder)
    entries: list[HeaderEntry] = []
    for f in files:
        entries.extend(read_header(f)[0])
        if len(entries) > MAX_TENSORS:
            raise MemfitError.bad_value("model", str(folder), f"a checkpoint of at most "
                                        f"{MAX_TENSORS:,} tensors (its shards hold more)")
    if weight_map is not None:
        stored = {(e.name, e.file) for e in entries}
        absent = [k for k, v in weight_map.items() if (k, v) not in stored]
        if absent:
            notes.append(f"{len(absent)} tensors the index names are not in their shard "
                         f"(e.g. {absent[0]}); counted what the shards hold")
    what = (f"{len(files)} shards" if len(files) > 1 else files[0].name)
    return weights_from_headers(entries, config, source=f"{folder} ({what})", notes=notes)


# ------------------------------------------------------------------------------------------
# Headers -> WeightsInfo (shared with the Hub reader)
# ------------------------------------------------------------------------------------------

# Quantization metadata beside a weight, by the suffix after the module's name.
_GPTQ_META = ("qzeros", "scales", "g_idx")
_CT_META = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape",
            "weight_global_scale", "input_global_scale", "input_scale", "input_zero_point",
            "output_scale", "weight_scale_2")
_FP8_META = ("weight_scale", "weight_scale_inv", "input_scale", "activation_scale_ub",
             "input_scale_inv")
_KV_SCALES = ("k_scale", "v_scale", "q_scale", "prob_scale", "kv_scale")
_BNB_META = re.compile(r"\.weight\.(absmax|quant_map|nested_absmax|nested_quant_map|"
                       r"quant_state\..*)$")
_BUFFER = re.compile(r"(\.inv_freq|\.e_score_correction_bias|\.attn\.(masked_)?bias|"
                     r"\.position_ids)$")
_LAYER = re.compile(r"^(?:(?:model|language_model)\.){0,2}layers\.(\d+)\.")
_HEADS = ("lm_head.weight", "embed_out.weight")
_EMBEDS = ("embed_tokens.weight", "wte.weight", "embed_in.weight", "word_embeddings.weight")


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    inner = config.get("text_config")
    if isinstance(inner, Mapping) and (config.get("model_type") not in FAMILIES):
        return inner
    return config


def _tied(config: Mapping[str, Any]) -> bool | None:
    """``tie_word_embeddings`` as the config (or its family's default) states it; None if
    neither says."""
    for cfg in (config, _text_config(config)):
        value = cfg.get("tie_word_embeddings")
        if isinstance(value, bool):
            return value
    fam = FAMILIES.get(str(_text_config(config).get("model_type")))
    return fam.tie_default if fam is not None else None


def _value_bits(qc: Mapping[str, Any], notes: list[str]) -> int:
    """Bits of one packed value, from the quantization_config."""
    method = str(qc.get("quant_method", "")).lower()
    if method == "compressed-tensors":
        found = set()
        for group in (qc.get("config_groups") or {}).values():
            weights = group.get("weights") if isinstance(group, Mapping) else None
            if isinstance(weights, Mapping) and isinstance(weights.get("num_bits"), int):
                found.add(weights["num_bits"])
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            notes.append(f"compressed-tensors groups use {sorted(found)} bits; unpacked every "
                         f"packed weight with {max(found)}")
            return max(found)
    for key in ("bits", "w_bit", "weight_bits", "num_bits"):
        value = qc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    notes.append(f"quantization_config ({method or 'unknown method'}) states no bits; "
                 "unpacked packed weights as 4-bit")
    return 4


def weights_from_headers(entries: Iterable[HeaderEntry], config: Mapping[str, Any] | None, *,
                         source: str, notes: Iterable[str] = ()) -> WeightsInfo:
    """Classify header entries (parameter, quantization metadata, buffer, tied copy, unused
    layer), unpack packed weights' logical counts and build the :class:`WeightsInfo`."""
    config = config or {}
    notes = list(notes)
    qc_raw = config.get("quantization_config") or _text_config(config).get("quantization_config")
    qc: Mapping[str, Any] | None = qc_raw if isinstance(qc_raw, Mapping) else None
    method = str(qc.get("quant_method", "")).lower() if qc else ""
    entries = list(entries)
    seen: dict[str, HeaderEntry] = {}
    for e in entries:
        if e.name in seen:
            notes.append(f"{e.name} is stored twice ({seen[e.name].file}, {e.file}); "
                         "counted once")
            continue
        seen[e.name] = e
    names = set(seen)
    packed_bits = _value_bits(qc, notes) if qc is not None and any(
        n.endswith((".qweight", ".weight_packed")) for n in names) else 0
    text = _text_config(config)
    n_layers = text.get("num_hidden_layers", text.get("n_layer"))
    n_layers = n_layers if isinstance(n_layers, int) and not isinstance(n_layers, bool) else None

    records: list[TensorRecord] = []
    unused: list[str] = []
    for e in seen.values():
        role, params = _classify(e, names, method, qc is not None, packed_bits)
        m = _LAYER.match(e.name)
        if role != "buffer" and m and n_layers is not None and int(m.group(1)) >= n_layers:
            role, params = "unused", 0
            unused.append(e.name)
        records.append(TensorRecord(e.name, e.dtype, e.shape, e.nbytes, params, role, e.file))
    if unused:
        layers = sorted({int(_LAYER.match(n).group(1)) for n in unused})  # type: ignore[union-attr]
        notes.append(f"{len(unused)} tensors of layer(s) {', '.join(map(str, layers))} are past "
                     f"num_hidden_layers={n_layers} (e.g. a multi-token-prediction module): "
                     "transformers does not load them, left out of the totals")
    buffers = [r.name for r in records if r.role == "buffer"]
    if buffers:
        notes.append(f"{len(buffers)} stored buffers (e.g. {buffers[0]}) are not parameters: "
                     "left out of the totals (memfit's buffer term covers the buffers the "
                     "model creates)")
    records, tie_notes = _tie(records, _tied(config))
    notes.extend(tie_notes)
    return WeightsInfo(format="safetensors", source=source, tensors=tuple(records),
                       quantization=dict(qc) if qc is not None else None, notes=tuple(notes))


def _classify(e: HeaderEntry, names: set[str], method: str, quantized: bool,
              packed_bits: int) -> tuple[str, int]:
    """(role, logical parameters) of one tensor."""
    numel = math.prod(e.shape)
    storage_bits = SAFETENSORS_DTYPE_BITS[e.dtype]
    prefix, _, leaf = e.name.rpartition(".")
    if _BUFFER.search(e.name):
        return "buffer", 0
    # GPTQ / AWQ: <module>.qweight + qzeros, scales, g_idx
    if leaf == "qweight" and packed_bits:
        return "param", numel * storage_bits // packed_bits
    if leaf in _GPTQ_META and prefix + ".qweight" in names:
        return "quant", 0
    # compressed-tensors: <module>.weight_packed + scales, zero points, shape
    if leaf == "weight_packed" and packed_bits:
        return "param", numel * storage_bits // packed_bits
    if leaf in _CT_META and (prefix + ".weight_packed" in names or prefix + ".weight" in names) \
            and quantized:
        return "quant", 0
    if leaf in _FP8_META and prefix + ".weight" in names and quantized:
        return "quant", 0
    if leaf in _KV_SCALES and quantized:
        return "quant", 0
    # bitsandbytes: 4-bit <module>.weight (uint8, two values a byte) + its quant state
    if _BNB_META.search(e.name):
        return "quant", 0
    if leaf == "weight" and e.dtype == "U8" and any(
            f"{e.name}.quant_state.bitsandbytes__{q}" in names for q in ("nf4", "fp4")):
        return "param", numel * 2
    if leaf in ("SCB", "weight_format") and prefix + ".weight" in names:
        return "quant", 0
    # MXFP4 (gpt-oss): <name>_blocks (uint8, two FP4 values a byte) + <name>_scales
    if leaf.endswith("_blocks") and e.dtype == "U8" and (method == "mxfp4" or (
            prefix + "." + leaf[:-len("_blocks")] + "_scales") in names):
        return "param", numel * 2
    if leaf.endswith("_scales") and (prefix + "." + leaf[:-len("_scales")] + "_blocks") in names:
        return "quant", 0
    return "param", numel


def _tie(records: list[TensorRecord], tied: bool | None) -> tuple[list[TensorRecord], list[str]]:
    """Mark a stored LM head the config ties to the embeddings; note what was found."""
    by_name = {r.name: r for r in records}
    heads = [r for r in records if r.name.endswith(_HEADS) and r.role == "param"]
    embeds = [r for r in records if r.name.endswith(_EMBEDS) and r.role == "param"]
    if not embeds:
        return records, []
    notes: list[str] = []
    if tied and heads:
        for head in heads:
            by_name[head.name] = TensorRecord(head.name, head.dtype, head.shape, head.nbytes, 0,
                                              "tied", head.file)
        notes.append(f"config says tie_word_embeddings=true, yet the checkpoint also stores "
                     f"{heads[0].name} ({heads[0].nbytes:,} bytes): transformers ties it to "
                     "the embeddings at load, so it is counted once (the embeddings)")
    elif tied and not heads:
        notes.append("tied weights stored once: lm_head absent from the checkpoint, config says "
                     "tie_word_embeddings=true; the embeddings serve as the LM head")
    elif tied is False and not heads:
        notes.append("lm_head absent from the checkpoint but config says "
                      "tie_word_embeddings=false: transformers would create a new, untrained "
                      "LM head (V*h parameters in the model's dtype) that weight_bytes does "
                      "not include; memfit's count from the config does")
    return [by_name[r.name] for r in records], notes
