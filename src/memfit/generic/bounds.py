"""Bounds on the generic path's work, checked before transformers builds anything.

The generic path hands a user's ``config.json`` to transformers, which builds one Python
module per block and runs the model's own code under the tracer. A crafted config could ask
for 100,000 blocks (minutes and gigabytes of module objects), a 10^16-parameter model, a
string where a width belongs (a transformers traceback) or a model type transformers does not
know (seconds spent importing it only to say so). This module refuses those in pure Python,
with one :class:`~memfit.errors.MemfitError` naming the field:

- every size-driving integer field (widths, heads, vocabulary, experts, positions, image
  sizes..., matched by name at any nesting depth, see :func:`size_kind`) must be an integer
  within :data:`memfit.arch.MAX_SIZE` (depths within :data:`memfit.arch.MAX_LAYERS`);
- the blocks transformers would build, summed over the config and its sub-configs (vision
  tower, encoder and decoder), are at most :data:`MAX_BLOCKS`;
- a rough parameter count from those fields is at most :data:`MAX_PARAMS` (the exact
  meta-device count is checked against the same cap after the build);
- a ``model_type`` is looked up in transformers' auto-mapping *source* (read as text, so an
  unknown type is refused in milliseconds without importing transformers or torch);
- the traced sequence is bounded (:func:`check_trace_options`) and every generic call runs
  under a wall-clock deadline (:func:`deadline`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..arch import MAX_LAYERS, MAX_SIZE, _brief, _check_depth
from ..errors import MemfitError

__all__ = ["MAX_BLOCKS", "MAX_FULL_TRACE_BLOCKS", "MAX_PARAMS", "MAX_TRACE_TOKENS",
           "check_config", "check_params", "check_trace_options", "deadline",
           "known_model_type", "size_kind"]

#: Blocks (decoder, encoder and vision layers together) the generic path builds: real models
#: have at most ~200 (Llama 3.1 405B: 126; Whisper large: 32 + 32). transformers builds 1,000
#: BERT blocks on the meta device in ~2.5 s (10,000 in ~14 s, 100,000 exhaust memory).
MAX_BLOCKS = 512
#: Parameters (the largest published models have ~2 x 10^12).
MAX_PARAMS = 10**13
#: Blocks a full-depth trace may run (when reduced depths cannot reproduce the model's
#: blocks): a full trace takes ~0.5 s per block, so this bounds it to about two minutes.
MAX_FULL_TRACE_BLOCKS = 256
#: Tokens per traced sequence (prompt + generated, or the training sequence) and in a batch.
MAX_TRACE_TOKENS = 1 << 22
MAX_TRACE_BATCH_TOKENS = 1 << 26
#: Traced decode steps and micro-batches: each one is run (not extrapolated) by the tracer.
MAX_TRACE_STEPS = 32768
MAX_TRACE_MICROBATCHES = 64
#: Classification labels: transformers builds an ``id2label`` dict of this many entries
#: (10^8 of them take 4 GB); the largest real label sets have ~10^5 (ImageNet-22k: 21,841).
MAX_LABELS = 100_000
#: Default seconds for one generic call (override: ``MEMFIT_GENERIC_TIMEOUT_S``).
DEFAULT_TIMEOUT_S = 300.0

# Field names (lower case) that set a depth, and ones that set a size. Matched on the name's
# underscore-separated words so `layer_norm_eps` or `layer_types` are not depths.
_DEPTH_WORDS = ("layers", "layer", "depth", "depths", "blocks")
_DEPTH_EXCLUDE = ("norm", "types", "drop", "dropout", "scale", "idx", "index", "indices",
                  "interval", "freq", "every", "ratio", "eps", "offset", "start", "end",
                  "step", "id", "ids", "use", "sparse")
_SIZE_WORDS = ("size", "sizes", "dim", "dims", "heads", "head", "vocab", "experts", "expert",
               "positions", "embd", "inner", "ctx", "model", "ff", "kv", "width", "channels",
               "tokens", "rank", "groups", "features", "window", "labels", "length", "embed",
               "ffn", "intermediate", "hidden")
_SIZE_EXCLUDE = ("id", "ids", "eps", "theta", "factor", "scale", "ratio", "type", "types",
                 "dropout", "drop", "prob", "std", "range", "init", "act", "bias", "norm",
                 "multiplier", "coef", "alpha", "beta", "temperature", "softcap", "cap",
                 "threshold", "loss", "penalty", "weight", "mode", "name", "method", "fn",
                 "function", "mean", "keep", "use", "output", "return", "trust", "chunk")
#: Fields whose value must be an integer (transformers reads them as one): a string, a list
#: or a fraction there is refused, as arch.py refuses it for its families.
CORE = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "vocab_size", "num_key_value_heads", "max_position_embeddings", "head_dim", "n_embd",
    "n_layer", "n_head", "n_inner", "n_positions", "d_model", "num_layers", "num_heads",
    "num_local_experts", "num_experts", "n_routed_experts", "moe_intermediate_size",
    "encoder_layers", "decoder_layers", "ffn_dim", "d_ff", "num_experts_per_tok"})
#: The depth fields whose sum is the model's block count (per sub-config).
_BLOCK_FIELDS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers",
                 "decoder_layers", "num_decoder_layers", "depth")


def size_kind(key: str) -> str | None:
    """``"depth"``, ``"size"`` or None: whether config field ``key`` sets a depth or a size."""
    words = key.lower().replace("-", "_").split("_")
    if key in CORE:
        return "depth" if any(w in ("layers", "layer") for w in words) else "size"
    if words[-1] in _DEPTH_WORDS and not any(w in _DEPTH_EXCLUDE for w in words):
        return "depth"  # `num_hidden_layers`, `encoder_layers`; not `layer_rope_theta`
    if any(w in _SIZE_WORDS for w in words) and not any(w in _SIZE_EXCLUDE for w in words):
        return "size"
    return None


def _as_int(key: str, value: Any, kind: str) -> int | None:
    """``value`` as a checked integer, None when it is not a number (left to transformers
    unless the field is one of :data:`CORE`)."""
    limit = MAX_LAYERS if kind == "depth" else MAX_SIZE
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        if value != value or abs(value) > limit:  # NaN, infinities, huge
            raise MemfitError.bad_value(key, value, f"an integer in [0, {limit}]")
        if not value.is_integer():
            if key in CORE:
                raise MemfitError.bad_value(key, value, f"an integer in [0, {limit}]")
            return None
        value = int(value)
    if isinstance(value, int):
        if not -limit <= value <= limit:  # negative: an index from the end
            raise MemfitError.bad_value(key, _brief(value), f"an integer in [0, {limit}]")
        return value
    if key in CORE:
        shown = value if isinstance(value, str) and len(value) < 60 else type(value).__name__
        raise MemfitError.bad_value(key, shown, f"an integer in [0, {limit}]")
    return None


def _walk(config: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """``config`` and every object nested in it (sub-configs, lists of them)."""
    stack: list[Any] = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, Mapping):
            yield value
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(v for v in value if isinstance(v, (Mapping, list, tuple)))


def _check_fields(obj: Mapping[str, Any]) -> dict[str, int]:
    """Check one object's size fields; return its integer ones."""
    found: dict[str, int] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            continue
        kind = size_kind(key)
        if kind is None:
            continue
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, Mapping):  # image_size: {"height": .., "width": ..}; a
            # sub-config under a size-like name is walked as an object of its own
            values = [v for v in value.values() if isinstance(v, (int, float))] if all(
                isinstance(v, (int, float)) for v in value.values()) else []
        for v in values:
            if isinstance(v, (list, tuple, Mapping)):
                continue  # nested ones are walked on their own
            got = _as_int(key, v, kind)
            if got is not None and not isinstance(value, (list, tuple, Mapping)):
                found[key] = got
    return found


def _first(fields: Mapping[str, int], *keys: str, default: int = 0) -> int:
    return next((max(fields[k], 0) for k in keys if k in fields), default)


def _rough_params(fields: Mapping[str, int], blocks: int) -> int:
    """A rough parameter count of one (sub-)config: blocks of attention and MLP (or experts),
    the embeddings and positions. Only to refuse absurd sizes before building."""
    h = _first(fields, "hidden_size", "n_embd", "d_model", "embed_dim", "dim", "width")
    inter = _first(fields, "intermediate_size", "n_inner", "ffn_dim", "d_ff",
                   "encoder_ffn_dim", default=4 * h)
    experts = _first(fields, "num_local_experts", "num_experts", "n_routed_experts",
                     "moe_num_experts", default=0)
    moe = _first(fields, "moe_intermediate_size", "expert_intermediate_size", default=inter)
    vocab = _first(fields, "vocab_size")
    positions = _first(fields, "max_position_embeddings", "n_positions")
    per_block = 4 * h * h + 3 * h * inter + experts * 3 * h * moe
    return max(blocks, 1) * per_block + 2 * vocab * h + positions * h


def check_config(config: Mapping[str, Any]) -> None:
    """Refuse a config whose build would be unbounded (see the module's docstring)."""
    if not isinstance(config, Mapping):
        raise MemfitError.bad_value("config", type(config).__name__, "a JSON object")
    _check_depth(config)
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise MemfitError.bad_value("model_type", type(model_type).__name__, "a string")
    blocks = params = 0
    for obj in _walk(config):
        fields = _check_fields(obj)
        if fields.get("num_labels", 0) > MAX_LABELS:
            raise MemfitError.bad_value("num_labels", fields["num_labels"],
                                        f"an integer in [0, {MAX_LABELS}]")
        own = sum(max(fields.get(k, 0), 0) for k in _BLOCK_FIELDS)
        blocks += own
        params += _rough_params(fields, own)
    if blocks > MAX_BLOCKS:
        raise MemfitError.bad_value(
            "num_hidden_layers", blocks, f"at most {MAX_BLOCKS} blocks in all (decoder, "
            "encoder and vision layers) on the generic path")
    check_params(params, "roughly, from the config's sizes")


def check_params(total: int, how: str) -> None:
    """Refuse a model of over :data:`MAX_PARAMS` parameters."""
    if total > MAX_PARAMS:
        raise MemfitError.bad_value(
            "config", f"a model of about {float(total):.3g} parameters ({how})",
            f"at most {float(MAX_PARAMS):.0e} parameters")


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str] | None:
    """Every quoted name in transformers' auto-config mapping source (a superset of the
    model types it knows), read as text; None when the files are not where expected."""
    try:
        spec = importlib.util.find_spec("transformers")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    auto = Path(spec.origin).parent / "models" / "auto"
    names: set[str] = set()
    for file in ("auto_mappings.py", "configuration_auto.py"):
        try:
            names.update(re.findall(r"[\"']([\w.\-]+)[\"']", (auto / file).read_text("utf-8")))
        except (OSError, UnicodeDecodeError):
            continue
    return frozenset(names) if len(names) > 100 else None


def known_model_type(model_type: object) -> bool:
    """Whether transformers may know ``model_type`` (True when it cannot be told cheaply)."""
    if not isinstance(model_type, str):
        return model_type is None
    names = _known_names()
    return names is None or model_type in names


def check_trace_options(options: Any, workload: str) -> None:
    """Refuse traced work that grows without bound with the options: every decode step and
    micro-batch is run by the tracer, and the traced sequence is bounded."""
    batch = int(getattr(options, "batch", 1) or 1)
    if workload == "infer":
        prompt, gen = int(options.prompt), int(getattr(options, "generate", 0) or 0)
        seq, seq_field = prompt + gen, "prompt"
        if gen > MAX_TRACE_STEPS:
            raise MemfitError.bad_value("generate", gen, f"at most {MAX_TRACE_STEPS} generated "
                                        "tokens on the generic path (each decode step is "
                                        "traced)")
    else:
        seq, seq_field = int(options.seq), "seq"
        micro = int(getattr(options, "microbatches", 1) or 1)
        if micro > MAX_TRACE_MICROBATCHES:
            raise MemfitError.bad_value("microbatches", micro, f"at most "
                                        f"{MAX_TRACE_MICROBATCHES} on the generic path (each "
                                        "micro-batch is traced)")
    if seq > MAX_TRACE_TOKENS:
        raise MemfitError.bad_value(seq_field, seq, f"at most {MAX_TRACE_TOKENS} tokens per "
                                    "sequence on the generic path")
    if batch * seq > MAX_TRACE_BATCH_TOKENS:
        raise MemfitError.bad_value("batch", batch, f"batch x sequence at most "
                                    f"{MAX_TRACE_BATCH_TOKENS} tokens on the generic path")


class _Expired(BaseException):
    """Raised in the main thread when a generic call's deadline passes (a BaseException, so
    model code's ``except Exception`` cannot swallow it)."""


def _timeout_s() -> float:
    raw = os.environ.get("MEMFIT_GENERIC_TIMEOUT_S", "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if 0 < value < 86_400 else DEFAULT_TIMEOUT_S


@contextlib.contextmanager
def deadline(what: str, seconds: float | None = None) -> Iterator[None]:
    """Run the body under a wall-clock limit (``SIGALRM``; only in the main thread of a
    process with no other alarm set, else unbounded); past it, one MemfitError."""
    limit = _timeout_s() if seconds is None else seconds
    usable = (hasattr(signal, "setitimer") and threading.current_thread() is
              threading.main_thread() and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise _Expired

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    except _Expired:
        raise MemfitError(
            f"{what}: the generic path gave up after {limit:g} s (set "
            "MEMFIT_GENERIC_TIMEOUT_S to allow longer)", field="model", value=what,
            allowed=f"a model the generic path finishes within {limit:g} s") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
