"""Real model inputs: a local checkpoint folder, a GGUF file or a Hugging Face Hub model.

Each reader takes the exact tensors from the file headers (never the tensor data) and returns
a :class:`WeightsInfo`: one :class:`TensorRecord` per stored tensor (its dtype or ggml type,
its shape, its exact bytes), the totals, the checkpoint's ``quantization_config`` and notes on
what was read and on where the header and the config disagree.

============================  ==========================================================
MODEL                         read by
============================  ==========================================================
``hf:org/name[@revision]``    :func:`memfit.inputs.hub.read_hub` (extra ``hub``):
                              ``config.json`` plus the safetensors headers (HTTP range
                              reads); no weights downloaded
``path/model.gguf``           :func:`read_gguf`: the GGUF header (metadata + tensor infos),
                              stdlib only; the config is derived from the metadata
``path/folder``               :func:`read_safetensors_dir`: ``config.json`` plus every
                              ``*.safetensors`` header (single or sharded)
``path/config.json``          the config alone (no weights info)
============================  ==========================================================

:func:`load` dispatches on the MODEL string and returns ``(ModelSpec, config, WeightsInfo |
None)``. Nothing here imports torch, numpy, ``safetensors``, ``gguf`` or ``huggingface_hub`` at
import time; the Hub reader imports ``huggingface_hub`` when called.

Shapes are always row-major, the last dimension contiguous (PyTorch's ``[out, in]`` for a
Linear weight); GGUF's ``ne`` order is reversed to match.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..arch import ModelSpec, from_hf_config, read_config
from ..errors import MemfitError

__all__ = sorted([
    "ROLES",
    "WEIGHT_COMPONENTS",
    "TensorRecord",
    "WeightsInfo",
    "is_input",
    "load",
    "read_gguf",
    "read_hub",
    "read_safetensors_dir",
    "reconcile",
])

#: What a stored tensor is, for the totals:
#: ``param``: a model parameter (counted in ``total_params`` and ``weight_bytes``);
#: ``quant``: quantization metadata beside a packed weight (GPTQ ``scales``/``qzeros``/
#: ``g_idx``, FP8 ``weight_scale``, bitsandbytes ``absmax``...): in ``weight_bytes``, no params;
#: ``buffer``: a non-parameter tensor (``inv_freq``, GGUF ``rope_freqs``, DeepSeek-V3's
#: ``e_score_correction_bias``): in neither total (memfit's buffer term covers buffers);
#: ``tied``: a stored copy of a tied LM head, which transformers drops at load: in neither;
#: ``unused``: layers past the config's layer count (DeepSeek-V3's MTP module), which
#: transformers does not load: in neither.
ROLES: tuple[str, ...] = ("param", "quant", "buffer", "tied", "unused")

#: The parts of the weights, as :mod:`memfit.memory.weights` reports them, plus ``other``
#: (tensors memfit's model does not describe: a vision tower, an audio encoder...).
WEIGHT_COMPONENTS: tuple[str, ...] = ("embeddings", "attention", "mlp", "experts", "router",
                                      "norms", "lm_head", "other")


@dataclass(frozen=True)
class TensorRecord:
    """One stored tensor, from a file header."""

    name: str
    """As stored (``model.layers.0.self_attn.q_proj.weight``; ``blk.0.attn_q.weight``)."""
    dtype: str
    """The safetensors dtype (``BF16``, ``F8_E4M3``, ``I32``...) or the ggml type (``Q4_K``)."""
    shape: tuple[int, ...]
    """Row-major, last dimension contiguous (GGUF's ``ne`` reversed)."""
    nbytes: int
    """Exact bytes in the file (safetensors ``data_offsets``; ggml blocks for GGUF)."""
    params: int
    """Logical parameters it holds: ``numel`` for a plain tensor, the unpacked count for a
    packed one (an int32 of 4-bit GPTQ values holds 8), 0 unless ``role == "param"``."""
    role: str = "param"
    """One of :data:`ROLES`."""
    file: str = ""
    """The file (shard) it was read from."""

    def __post_init__(self) -> None:
        assert self.role in ROLES, self.role
        assert self.nbytes >= 0 and self.params >= 0, self

    @property
    def numel(self) -> int:
        """Stored elements (of the storage dtype, e.g. int32 words for packed weights)."""
        return math.prod(self.shape)

    @property
    def component(self) -> str:
        """Which of :data:`WEIGHT_COMPONENTS` the tensor belongs to, from its name."""
        return _component(self.name)


@dataclass(frozen=True)
class WeightsInfo:
    """What a checkpoint really stores: every tensor, exact bytes, and the totals.

    ``total_params`` counts logical parameters (packed 4-bit words unpacked; tied, buffer and
    unused tensors left out); ``weight_bytes`` is the exact bytes of the tensors a model
    loaded from the checkpoint holds (``param`` and ``quant`` roles), as stored;
    ``stored_bytes`` is every tensor byte in the files.
    """

    format: str
    """``safetensors`` or ``gguf``."""
    source: str
    """What was read: a folder, a file, or ``hf:org/name@commit``."""
    tensors: tuple[TensorRecord, ...]
    quantization: Mapping[str, Any] | None = None
    """The config's ``quantization_config`` (GPTQ, AWQ, bitsandbytes, fp8, compressed-tensors,
    mxfp4...), or for GGUF ``{"quant_method": "gguf", "file_type": ..., "ggml_types": {...}}``;
    None for an unquantized checkpoint."""
    notes: tuple[str, ...] = ()
    total_params: int = field(init=False)
    weight_bytes: int = field(init=False)
    stored_bytes: int = field(init=False)
    bytes_by_dtype: Mapping[str, int] = field(init=False)
    """``weight_bytes`` by stored dtype / ggml type."""
    params_by_dtype: Mapping[str, int] = field(init=False)
    bytes_by_component: Mapping[str, int] = field(init=False)
    """``weight_bytes`` by :data:`WEIGHT_COMPONENTS` (from tensor names)."""

    def __post_init__(self) -> None:
        assert self.format in ("safetensors", "gguf"), self.format
        by_dtype: dict[str, int] = {}
        params_by_dtype: dict[str, int] = {}
        by_comp = dict.fromkeys(WEIGHT_COMPONENTS, 0)
        total = weight = stored = 0
        for t in self.tensors:
            stored += t.nbytes
            if t.role not in ("param", "quant"):
                continue
            total += t.params
            weight += t.nbytes
            by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.nbytes
            if t.params:
                params_by_dtype[t.dtype] = params_by_dtype.get(t.dtype, 0) + t.params
            by_comp[t.component] += t.nbytes
        object.__setattr__(self, "total_params", total)
        object.__setattr__(self, "weight_bytes", weight)
        object.__setattr__(self, "stored_bytes", stored)
        object.__setattr__(self, "bytes_by_dtype", dict(sorted(by_dtype.items())))
        object.__setattr__(self, "params_by_dtype", dict(sorted(params_by_dtype.items())))
        object.__setattr__(self, "bytes_by_component", by_comp)
        object.__setattr__(self, "notes", tuple(self.notes))

    @property
    def quant_method(self) -> str | None:
        """``quantization["quant_method"]`` (``gptq``, ``fp8``, ``gguf``...), or None."""
        if not self.quantization:
            return None
        method = self.quantization.get("quant_method")
        return str(method) if method is not None else None

    def tensor(self, name: str) -> TensorRecord:
        """The record called ``name``."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise MemfitError.bad_value("tensor", name, "a tensor stored in " + self.source)

    def weight_bytes_as(self, float_dtype: str) -> int:
        """``weight_bytes`` with every floating-point *parameter* cast to ``float_dtype``.

        What transformers holds when it loads a checkpoint with ``dtype=`` a 16- or 32-bit
        type: plain float parameters (F64/F32/F16/BF16) take ``float_dtype``; packed,
        integer and FP8 weights and the quantization metadata stay as stored. (Modules a
        model keeps in fp32, ``_keep_in_fp32_modules``, are not known here.)
        """
        from ..dtypes import dtype_bytes

        size = dtype_bytes(float_dtype)
        out = 0
        for t in self.tensors:
            if t.role == "param" and t.dtype.upper() in _FLOAT_DTYPES:
                out += math.ceil(t.numel * size)
            elif t.role in ("param", "quant"):
                out += t.nbytes
        return out

    def bytes_by_layer(self) -> dict[int | None, int]:
        """``weight_bytes`` by decoder layer index (``model.layers.N.``, ``h.N.``,
        ``blk.N.``); key None for the tensors outside the layers (embeddings, final norm,
        LM head, a vision tower). For pipeline stages and llama.cpp's ``--n-gpu-layers``."""
        out: dict[int | None, int] = {}
        for t in self.tensors:
            if t.role in ("param", "quant"):
                m = _LAYER_INDEX.search(t.name) if _component(t.name) != "other" else None
                key = int(m.group(1)) if m else None
                out[key] = out.get(key, 0) + t.nbytes
        return out

    def with_notes(self, *notes: str) -> WeightsInfo:
        """A copy with ``notes`` appended."""
        return replace(self, notes=self.notes + tuple(n for n in notes if n))

    def to_dict(self, tensors: bool = False) -> dict[str, Any]:
        """A JSON-able summary; ``tensors=True`` adds one row per tensor."""
        out: dict[str, Any] = {
            "format": self.format,
            "source": self.source,
            "total_params": self.total_params,
            "weight_bytes": self.weight_bytes,
            "stored_bytes": self.stored_bytes,
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "params_by_dtype": dict(self.params_by_dtype),
            "bytes_by_component": dict(self.bytes_by_component),
            "quantization": dict(self.quantization) if self.quantization else None,
            "tensor_count": len(self.tensors),
            "notes": list(self.notes),
        }
        if tensors:
            out["tensors"] = [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                               "nbytes": t.nbytes, "params": t.params, "role": t.role,
                               "file": t.file} for t in self.tensors]
        return out


_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|blk)\.(\d+)\.")

# Tensor name -> weight component. Hugging Face names (``model.layers.N.self_attn.q_proj``)
# and llama.cpp names (``blk.N.attn_q``); first match wins, order matters.
_COMPONENT_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (comp, re.compile(pattern)) for comp, pattern in (
        ("other", r"(^|\.)(vision_tower|vision_model|visual|audio_tower|multi_modal_projector|"
                  r"mm_projector|vision_encoder|image_newline)(\.|$)"),
        ("lm_head", r"(^|\.)(lm_head|embed_out)(\.|$)|^output\.weight$"),
        ("embeddings", r"(^|\.)(embed_tokens|wte|wpe|embed_in|embed_positions)(\.|$)"
                       r"|^(token_embd|position_embd)\."),
        ("attention", r"self_attn\.\w*norm\.|attn_(q|k|q_a|kv_a)_norm\."),
        ("norms", r"(norm|ln_\d|ln_f|layernorm)[^.]*\.(weight|bias)$"),
        ("router", r"(\.mlp\.gate\.(weight|bias|e_score_correction_bias)$|\.router\."
                   r"|block_sparse_moe\.gate\.|shared_expert_gate\.|ffn_gate_inp(_shexp)?\."
                   r"|exp_probs_b)"),
        ("experts", r"(\.experts\.|_exps\.|ffn_(gate|up|down)\.\d+\.weight)"),
        ("attention", r"(self_attn|\.attn\.|\.attention\.|^blk\.\d+\.attn_)"),
        ("mlp", r"(\.mlp\.|feed_forward|shared_expert|block_sparse_moe|^blk\.\d+\.ffn_)"),
    ))


_DIGITS = re.compile(r"\d+")


def _component(name: str) -> str:
    # the rules never tell one number from another: one lookup per tensor kind, not per layer
    return _component_of_kind(_DIGITS.sub("0", name))


@lru_cache(maxsize=4096)
def _component_of_kind(name: str) -> str:
    for comp, pattern in _COMPONENT_RULES:
        if pattern.search(name):
            return comp
    return "other"


# ------------------------------------------------------------------------------------------
# load: one entry point for every MODEL string that names a real input
# ------------------------------------------------------------------------------------------

def is_input(model: str | Path) -> bool:
    """Whether ``model`` names an input :func:`load` reads (``hf:``, a ``.gguf`` file, an
    existing path) rather than a catalog name."""
    text = str(model).strip()
    if text.startswith("hf:") or "/" in text or text.endswith((".json", ".gguf")):
        return True
    # os.path.exists: False for a name the system refuses (too long, a NUL byte) rather
    # than an OSError; and cheaper than pathlib on this path, taken by every catalog name
    return os.path.exists(os.path.expanduser(text))


def load(model: str | Path) -> tuple[ModelSpec, dict[str, Any], WeightsInfo | None]:
    """Read a real model input: ``(spec, config, weights)``.

    ``model``: ``hf:org/name[@revision]``, a ``.gguf`` file (or a folder holding one GGUF
    model), a folder with ``config.json`` and ``*.safetensors``, or a ``config.json`` path
    (``weights`` is then None, as for a folder without safetensors files). Disagreements
    between the headers and the config are in ``weights.notes`` (see :func:`reconcile`).
    """
    text = str(model).strip()
    if text.startswith("hf:"):
        from .hub import read_hub

        config, info, name = read_hub(text)
    else:
        try:
            config, info, name = _read_local(text)
        except OSError as exc:  # a name the system refuses (too long), an unreadable folder
            raise MemfitError.bad_value(
                "model", text if len(text) <= 200 else text[:200] + "...",
                f"a file or folder this system can read ({exc.strerror or exc})") from None
    spec = from_hf_config(config, name=name)
    if info is not None:
        info = reconcile(spec, config, info)
    return spec, config, info


def _read_local(text: str) -> tuple[dict[str, Any], WeightsInfo | None, str]:
    """``(config, weights, name)`` of a local path (see :func:`load`)."""
    path = Path(os.path.expanduser(text))  # unchanged for an unknown ~user (no RuntimeError)
    info = None
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent  # one file of a checkpoint: the folder is the model
    if path.is_file() and path.suffix.lower() == ".gguf":
        config, info = read_gguf(path)
        name = str(config.get("_name_or_path") or path.stem)
    elif path.is_dir() and not (path / "config.json").is_file() and _gguf_files(path):
        config, info = read_gguf(_single_gguf(path))
        name = str(config.get("_name_or_path") or path.name)
    elif path.is_dir():
        config = read_config(path)  # raises when there is no config.json
        if _has_safetensors(path):
            info = read_safetensors_dir(path)
        name = path.resolve().name or text
    elif path.is_file():
        config = read_config(path)
        name = path.resolve().parent.name or text
    else:
        why = "not a regular file or folder" if path.exists() else "no such file or folder"
        raise MemfitError.bad_value(
            "model", text, "hf:org/name[@revision], a .gguf file, a folder with config.json "
            f"(and *.safetensors), or a config.json path ({why})")
    return config, info, name


def _gguf_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())


def _single_gguf(folder: Path) -> Path:
    """The one GGUF model in ``folder`` (the first shard of a split model)."""
    files = _gguf_files(folder)
    firsts = []
    for p in files:
        split = _SPLIT_NAME.search(p.name)
        if split is None or int(split.group(1)) == 1:
            firsts.append(p)
    if len(firsts) != 1:
        raise MemfitError.bad_value("model", str(folder),
                                    "a folder holding one GGUF model (found "
                                    + ", ".join(p.name for p in files) + "); name the file")
    return firsts[0]


_SPLIT_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def _has_safetensors(path: Path) -> bool:
    return any(p.suffix == ".safetensors" for p in path.iterdir())


def reconcile(spec: ModelSpec, config: Mapping[str, Any], info: WeightsInfo) -> WeightsInfo:
    """Compare the checkpoint with memfit's model from the config; note every disagreement.

    The checkpoint wins for what it stores (``weight_bytes``, ``total_params`` are the
    header's); memfit's count from the config stays the count of the model transformers
    builds. Each note says which figure is which and why they differ.
    """
    from ..memory.params import count_params

    notes: list[str] = []
    counted = count_params(spec).total
    if info.total_params != counted:
        gap = info.total_params - counted
        why = _explain_gap(spec, info, gap)
        notes.append(
            f"parameter count: the checkpoint holds {info.total_params:,} parameters, memfit's "
            f"count from config.json is {counted:,} ({gap:+,}){why}; weight bytes are the "
            "checkpoint's, the per-component model is the config's")
    return info.with_notes(*notes)


def _explain_gap(spec: ModelSpec, info: WeightsInfo, gap: int) -> str:
    other = sum(t.params for t in info.tensors if t.role == "param" and t.component == "other")
    if other and other == gap:
        return (": the difference is tensors outside the language model (a vision or audio "
                "tower), which memfit does not model")
    if info.quant_method and info.quant_method != "gguf":
        return (f": {info.quant_method} packs weights, and the logical count unpacks them "
                "with the quantization_config's bits; layers it leaves unquantized or pads "
                "explain the rest")
    if abs(gap) == spec.vocab_size * spec.hidden_size:
        return (": exactly one V*h matrix, an LM head the config ties but the checkpoint "
                "stores (or the reverse)")
    return ""


# The readers (imported after the classes above, which they use).
from .gguf import read_gguf  # noqa: E402
from .safetensors import read_safetensors_dir  # noqa: E402


def read_hub(model: str) -> tuple[dict[str, Any], WeightsInfo | None, str]:
    """``hf:org/name[@revision]`` -> ``(config, weights, name)``; see :mod:`memfit.inputs.hub`
    (needs the ``hub`` extra: ``pip install -e ".[hub]"`` in a memfit clone)."""
    from .hub import read_hub as _read_hub

    return _read_hub(model)
