"""The model description: one frozen dataclass read from a Hugging Face ``config.json``.

One adapter, :func:`from_hf_config`, turns a config dict into a :class:`ModelSpec`. Each
supported ``model_type`` has an explicit :class:`Family` entry with the defaults its
transformers configuration class applies when a field is absent (e.g. Qwen2's q/k/v bias,
which its config never states, or Gemma's always-tied embeddings). Nothing is guessed from
sizes or names; an unknown ``model_type`` fails loudly with the supported list.

Architectures transformers does not know can be described by hand: a config with
``"model_type": "custom"`` whose keys are :class:`ModelSpec`'s field names (see
``docs/custom-models.md``), or a :class:`ModelSpec` built in Python.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from .errors import MemfitError

__all__ = [
    "ModelSpec",
    "MoESpec",
    "MLASpec",
    "LayerSpec",
    "Family",
    "FAMILIES",
    "from_hf_config",
    "read_config",
]


# Far beyond any real model (the largest have ~130 layers); bounds the per-layer work (an
# estimate of a 10,000-layer model takes ~20 ms).
MAX_LAYERS = 10_000
# Far beyond any real width, vocabulary or expert count (the largest are ~10^6): keeps the
# byte arithmetic exact and small (no float overflow in a ratio of two sizes).
MAX_SIZE = 10**8


def _check_int(name: str, value: object, minimum: int, maximum: int = MAX_SIZE) -> None:
    """Raise :class:`MemfitError` unless ``value`` is an int in ``[minimum, maximum]``."""
    if (not isinstance(value, int) or isinstance(value, bool) or value < minimum
            or value > maximum):
        raise MemfitError.bad_value(name, _brief(value), f"an integer in [{minimum}, {maximum}]")


def _brief(value: object) -> object:
    """``value``, or for an integer too long to print (Python refuses to write one of over
    4,300 digits) a description of it."""
    if isinstance(value, int) and not -10**100 < value < 10**100:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return value


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise MemfitError.bad_value(name, value, "true or false")


@dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3), per ``modeling_deepseek_v3.py``."""

    q_lora_rank: int | None  # None: a plain q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int

    def __post_init__(self) -> None:
        if self.q_lora_rank is not None:
            _check_int("q_lora_rank", self.q_lora_rank, 1)
        _check_int("kv_lora_rank", self.kv_lora_rank, 1)
        _check_int("qk_rope_head_dim", self.qk_rope_head_dim, 0)
        _check_int("qk_nope_head_dim", self.qk_nope_head_dim, 0)
        _check_int("v_head_dim", self.v_head_dim, 1)
        if self.qk_head_dim < 1:
            raise MemfitError.bad_value("qk_nope_head_dim", self.qk_nope_head_dim,
                                        "a positive integer (qk_nope_head_dim + "
                                        "qk_rope_head_dim is 0)")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_rope_head_dim + self.qk_nope_head_dim


@dataclass(frozen=True)
class MoESpec:
    """Routed experts of a mixture-of-experts MLP, and the shared experts beside them."""

    num_experts: int  # E: routed experts per MoE layer
    top_k: int  # k: experts each token is routed to
    expert_intermediate_size: int  # I_e: hidden width of one routed expert
    shared_intermediate_size: int = 0  # total hidden width of the shared expert(s); 0 = none
    shared_expert_gate: bool = False  # Qwen2-MoE's sigmoid gate (h -> 1) on the shared expert
    router_bias: bool = False  # gpt-oss: the router Linear has a bias
    expert_bias: bool = False  # gpt-oss: experts' gate_up and down projections have biases
    router_fp32: bool = False  # DeepSeek-V2/V3 keep gate.weight in fp32 (_keep_in_fp32_modules)
    router_score_bias: bool = False  # DeepSeek-V3's e_score_correction_bias (a fp32 buffer, E)

    def __post_init__(self) -> None:
        _check_int("num_experts", self.num_experts, 1)
        _check_int("moe_intermediate_size", self.expert_intermediate_size, 1)
        _check_int("shared_expert_intermediate_size", self.shared_intermediate_size, 0)
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or not (
                1 <= self.top_k <= self.num_experts):
            raise MemfitError.bad_value("num_experts_per_tok", self.top_k,
                                        f"an integer in [1, num_experts={self.num_experts}]")
        for name in ("shared_expert_gate", "router_bias", "expert_bias", "router_fp32",
                     "router_score_bias"):
            _check_bool(name, getattr(self, name))


@dataclass(frozen=True)
class LayerSpec:
    """What one decoder layer holds: its attention span and whether its MLP is MoE."""

    attention: str = "full"  # "full" or "sliding"
    window: int | None = None  # tokens a sliding layer attends to (and caches)
    moe: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("full", "sliding"):
            raise MemfitError.bad_value("attention", self.attention, "full, sliding")
        if self.window is not None:
            _check_int("sliding_window", self.window, 1)
        if self.attention == "sliding" and self.window is None:
            raise MemfitError.bad_value("sliding_window", None,
                                        "a positive integer for a sliding layer")
        _check_bool("moe", self.moe)
        # Layer kinds key many per-model tables: hash once, not on every lookup.
        object.__setattr__(self, "_hash", hash((self.attention, self.window, self.moe)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, as exact as its parameter count needs.

    Symbols used in formulas: L layers, h hidden size, a heads, a_kv KV heads, d head dim,
    I MLP intermediate size, V vocabulary, E experts, k experts per token.
    """

    name: str
    model_type: str
    num_layers: int  # L
    hidden_size: int  # h
    vocab_size: int  # V
    num_heads: int  # a
    num_kv_heads: int  # a_kv
    head_dim: int  # d (explicit head_dim wins over h / a)
    intermediate_size: int  # I: dense MLP width (0 if no dense layer)
    mlp_gated: bool = True  # SwiGLU/GeGLU (gate, up, down) vs plain (up, down)
    activation: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: str = "none"  # "none", "head" (over d: Qwen3, Gemma3) or "full" (over a*d: OLMo2)
    attention_sinks: bool = False  # gpt-oss: one learned logit per head
    norm: str = "rmsnorm"  # "rmsnorm" or "layernorm"
    norm_bias: bool = False  # LayerNorm with bias (GPT-2, GPT-NeoX)
    norms_per_layer: int = 2  # 2 (pre-attn, pre-MLP), 4 (Gemma 2/3), 2 post-norms (OLMo2)
    learned_positions: int = 0  # rows of a learned position table (GPT-2's wpe); 0 = RoPE
    max_position_embeddings: int = 0
    rope_dim: int = 0  # rotary dims per head (inv_freq buffer has rope_dim / 2 fp32 entries)
    mla: MLASpec | None = None
    moe: MoESpec | None = None
    layers: tuple[LayerSpec, ...] = ()
    dtype: str = "bfloat16"  # the config's torch_dtype (bf16 when absent)
    parallel_residual: bool = False  # GPT-NeoX: attention and MLP read the same input
    extra_buffers: int = 0  # fp32 buffer elements outside rotary (e.g. Gemma's embed_scale)
    # the config's quantization_config as canonical JSON ("" when absent): the format the
    # checkpoint ships, read by memory.weights.checkpoint_weights when --weights is not given
    quantization: str = ""
    # What training and the engines read beyond the shapes (all from config.json, so that a
    # model named and its config parsed give the same estimate; STYLE habit 8):
    # (embedding, residual, attention-probabilities) dropout active; None: the family's
    # transformers defaults (DROPOUT_KEYS), as a config without the keys gets
    dropout: tuple[bool, bool, bool] | None = None
    # Gemma 2's (attention, final-logit) tanh soft-capping; None: the family's default
    softcap: tuple[bool, bool] | None = None
    use_cache: bool = True  # the config's use_cache (a training forward's DynamicCache)
    # the config's integer context-length keys (LENGTH_KEYS) as (key, value) pairs, and its
    # rope_scaling (or rope_parameters) as canonical JSON: vLLM's and SGLang's context limit
    length_keys: tuple[tuple[str, int], ...] = ()
    rope_scaling: str = ""

    def __post_init__(self) -> None:
        self._init_training_fields()
        for name in ("name", "model_type", "activation", "dtype", "quantization"):
            if not isinstance(getattr(self, name), str):
                raise MemfitError.bad_value(name, getattr(self, name), "a string")
        _check_int("num_layers", self.num_layers, 1, MAX_LAYERS)
        for name in ("hidden_size", "vocab_size", "num_heads", "num_kv_heads", "head_dim"):
            _check_int(name, getattr(self, name), 1)
        for name in ("intermediate_size", "norms_per_layer", "learned_positions",
                     "max_position_embeddings", "rope_dim", "extra_buffers"):
            _check_int(name, getattr(self, name), 0)
        for name in ("mlp_gated", "tie_word_embeddings", "qkv_bias", "o_bias", "mlp_bias",
                     "attention_sinks", "norm_bias", "parallel_residual"):
            _check_bool(name, getattr(self, name))
        if self.mla is not None and not isinstance(self.mla, MLASpec):
            raise MemfitError.bad_value("mla", self.mla, "an MLASpec (or its fields) or null")
        if self.moe is not None and not isinstance(self.moe, MoESpec):
            raise MemfitError.bad_value("moe", self.moe, "a MoESpec (or its fields) or null")
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        if not isinstance(self.layers, tuple) or not all(
                isinstance(x, LayerSpec) for x in self.layers):
            raise MemfitError.bad_value("layers", self.layers,
                                        "a list of LayerSpecs (attention, window, moe)")
        if self.num_heads % self.num_kv_heads:
            raise MemfitError.bad_value(
                "num_key_value_heads", self.num_kv_heads,
                f"a divisor of num_attention_heads={self.num_heads}")
        if self.qk_norm not in ("none", "head", "full"):
            raise MemfitError.bad_value("qk_norm", self.qk_norm, "none, head, full")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise MemfitError.bad_value("norm", self.norm, "rmsnorm, layernorm")
        if not self.layers:
            object.__setattr__(self, "layers", tuple(LayerSpec(moe=self.moe is not None)
                                                     for _ in range(self.num_layers)))
        # one object per layer kind: lookups keyed by a layer then match by identity
        kinds: dict[LayerSpec, LayerSpec] = {}
        object.__setattr__(self, "layers", tuple(kinds.setdefault(x, x) for x in self.layers))
        if len(self.layers) != self.num_layers:
            raise MemfitError.bad_value("layer_types", len(self.layers),
                                        f"one entry per layer ({self.num_layers})")
        if any(layer.moe for layer in self.layers) and self.moe is None:
            raise MemfitError.bad_value("layers", "an MoE layer",
                                        "dense layers only (the model has no moe block)")
        if any(not layer.moe for layer in self.layers) and self.intermediate_size < 1:
            raise MemfitError.bad_value("intermediate_size", self.intermediate_size,
                                        "a positive integer (the model has dense MLP layers)")

    def _init_training_fields(self) -> None:
        """Check (and resolve to the family's defaults) dropout, softcap, use_cache,
        length_keys and rope_scaling; JSON lists become tuples."""
        for name, n, default in (("dropout", 3, family_dropout(self.model_type, {})),
                                 ("softcap", 2, family_softcap(self.model_type, {}))):
            value = getattr(self, name)
            if value is None:
                value = default
            if (not isinstance(value, (tuple, list)) or len(value) != n
                    or not all(isinstance(x, bool) for x in value)):
                raise MemfitError.bad_value(name, value, f"{n} booleans (or null)")
            object.__setattr__(self, name, tuple(value))
        _check_bool("use_cache", self.use_cache)
        if not isinstance(self.rope_scaling, str):
            raise MemfitError.bad_value("rope_scaling", self.rope_scaling, "a string (JSON)")
        pairs = self.length_keys
        if (not isinstance(pairs, (tuple, list)) or not all(
                isinstance(x, (tuple, list)) and len(x) == 2 and isinstance(x[0], str)
                and isinstance(x[1], int) and not isinstance(x[1], bool) for x in pairs)):
            raise MemfitError.bad_value("length_keys", pairs, "[key, integer] pairs")
        object.__setattr__(self, "length_keys", tuple((k, v) for k, v in pairs))

    # -- derived quantities -------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.moe is not None and any(layer.moe for layer in self.layers)

    @property
    def num_moe_layers(self) -> int:
        return sum(layer.moe for layer in self.layers)

    @property
    def num_dense_layers(self) -> int:
        return self.num_layers - self.num_moe_layers

    @property
    def attention_kind(self) -> str:
        """"mla", "mha", "mqa" or "gqa"."""
        if self.mla is not None:
            return "mla"
        if self.num_kv_heads == self.num_heads:
            return "mha"
        return "mqa" if self.num_kv_heads == 1 else "gqa"

    @property
    def q_dim(self) -> int:
        """Width of the query projection's output (a * d)."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections' outputs (a_kv * d)."""
        return self.num_kv_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict whose keys are this class's fields (round-trips via ``custom``)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "layers":
                value = [{"attention": x.attention, "window": x.window, "moe": x.moe}
                         for x in value]
            elif isinstance(value, (MLASpec, MoESpec)):
                value = {g.name: getattr(value, g.name) for g in fields(value)}
            out[f.name] = value
        return out


# ---------------------------------------------------------------------------------------
# The config.json adapter
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Family:
    """How one ``model_type`` maps onto :class:`ModelSpec`, with its transformers defaults.

    Defaults follow ``transformers/models/<type>/configuration_<type>.py`` (5.x): they apply
    only when the config omits the field.
    """

    model_type: str
    tie_default: bool = False
    qkv_bias: str | bool = "attention_bias"  # config key, or a fixed value
    o_bias: str | bool = "attention_bias"
    mlp_bias: str | bool = False
    bias_default: bool = False  # default of the bias keys above when absent
    norm: str = "rmsnorm"
    norm_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: str = "none"
    gated: bool = True
    head_dim_default: int | None = None  # class default when head_dim is absent
    kv_heads_default: str = "heads"  # "heads": a_kv = a when absent
    sliding: str = "none"  # "none", "all" (Mistral, Phi-3), "qwen", "alternate", "pattern6"
    moe: str = "none"  # "none", "mixtral", "qwen", "deepseek", "gpt_oss"
    mla: bool = False
    attention_sinks: bool = False
    learned_positions: bool = False
    activation_key: str = "hidden_act"
    activation_default: str = "silu"
    extra_buffers: int = 0
    notes: str = ""


FAMILIES: dict[str, Family] = {f.model_type: f for f in [
    Family("llama", mlp_bias="mlp_bias"),
    Family("mistral", qkv_bias=False, o_bias=False, sliding="all"),
    Family("mixtral", qkv_bias=False, o_bias=False, sliding="all", moe="mixtral"),
    Family("qwen2", qkv_bias=True, o_bias=False, sliding="qwen",
           notes="q/k/v always have a bias (never stated in the config)"),
    Family("qwen2_moe", qkv_bias="qkv_bias", o_bias=False, bias_default=True, sliding="qwen",
           moe="qwen"),
    Family("qwen3", qk_norm="head", sliding="qwen"),
    Family("qwen3_moe", qk_norm="head", sliding="qwen", moe="qwen"),
    Family("deepseek_v2", qkv_bias="attention_bias", o_bias="attention_bias",
           mlp_bias="mlp_bias", moe="deepseek", mla=True),
    Family("deepseek_v3", moe="deepseek", mla=True),
    Family("gemma", tie_default=True, head_dim_default=256, activation_default="gelu_pytorch_tanh",
           extra_buffers=1, notes="embed_scale is a 0-d fp32 buffer"),
    Family("gemma2", tie_default=True, head_dim_default=256, norms_per_layer=4,
           sliding="alternate", activation_key="hidden_activation",
           activation_default="gelu_pytorch_tanh", extra_buffers=1),
    Family("gemma3_text", tie_default=True, head_dim_default=256, norms_per_layer=4,
           qk_norm="head", sliding="pattern6", activation_key="hidden_activation",
           activation_default="gelu_pytorch_tanh", extra_buffers=1,
           notes="embed_scale is a 0-d fp32 buffer"),
    Family("phi3", qkv_bias=False, o_bias=False, sliding="all"),
    Family("gpt2", tie_default=True, qkv_bias=True, o_bias=True, mlp_bias=True,
           norm="layernorm", norm_bias=True, gated=False, learned_positions=True,
           activation_key="activation_function", activation_default="gelu_new"),
    Family("gpt_neox", qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias=True,
           bias_default=True, norm="layernorm", norm_bias=True, gated=False,
           activation_default="gelu"),
    Family("olmo2", qk_norm="full", notes="two post-norms per layer, q/k norms over a*d"),
    Family("granite", mlp_bias="mlp_bias",
           notes="Llama's layers; embedding/residual/attention/logits multipliers scale "
                 "activations, not sizes"),
    Family("granitemoe", moe="mixtral",
           notes="experts fused in input_linear (2*I_e x h) and output_linear per layer"),
    Family("gpt_oss", qkv_bias="attention_bias", o_bias="attention_bias", bias_default=True,
           sliding="alternate", moe="gpt_oss", attention_sinks=True, head_dim_default=64),
]}


def read_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read a ``config.json`` from a dict, a file path or a folder holding ``config.json``."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.is_dir():
        path = path / "config.json"
        if not path.is_file():
            raise MemfitError.bad_value("model", str(source),
                                        "a folder holding a config.json (none found there)")
    if not path.is_file():
        raise MemfitError.bad_value("model", str(source),
                                    "a catalog name, a config.json file or a folder holding one")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MemfitError.bad_value("model", str(path),
                                    f"a readable UTF-8 JSON file ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MemfitError(f"model: {path} is not valid JSON (line {exc.lineno}, column "
                          f"{exc.colno}: {exc.msg}); allowed: a config.json object",
                          field="model", value=str(path), allowed="valid JSON") from None
    except RecursionError:  # json's parser recurses once per nesting level
        raise MemfitError(f"model: {path} nests JSON arrays or objects too deeply to read; "
                          "allowed: a config.json object", field="model", value=str(path),
                          allowed="valid JSON") from None
    except ValueError as exc:  # an integer past Python's int-str limit (4,300 digits)
        raise MemfitError(f"model: {path} holds a number memfit will not read ({exc}); "
                          "allowed: a config.json object", field="model", value=str(path),
                          allowed="valid JSON") from None
    if not isinstance(data, dict):
        raise MemfitError.bad_value("model", str(path), "a JSON object (config.json)")
    return data


class _Reader:
    """Typed access to config fields, with errors naming the field."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def int(self, *keys: str, default: int | None = None, minimum: int = 1,
            maximum: int = MAX_SIZE) -> int:
        for key in keys:
            raw = value = self.cfg.get(key)
            if value is None:
                continue
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool):
                raise MemfitError.bad_value(key, _brief(raw), "an integer")
            if not minimum <= value <= maximum:
                raise MemfitError.bad_value(key, _brief(raw), f"an integer in [{minimum}, "
                                                              f"{maximum}]")
            return value
        if default is None:
            raise MemfitError.bad_value(keys[0], None, "an integer (the field is required)")
        return default

    def bool(self, key: str | bool, default: bool) -> bool:
        if isinstance(key, bool):
            return key
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise MemfitError.bad_value(key, value, "true or false")
        return value

    def fraction(self, key: str, default: float) -> float:
        """A number in [0, 1] (a share of the head dimension, e.g. ``partial_rotary_factor``)."""
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not (
                0 <= value <= 1):
            raise MemfitError.bad_value(key, value, "a number in [0, 1]")
        return float(value)

    def str(self, key: str, default: str) -> str:
        value = self.cfg.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise MemfitError.bad_value(key, value, "a string")
        return value

    def int_list(self, key: builtins.str) -> builtins.list[builtins.int]:
        value = self.cfg.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise MemfitError.bad_value(key, value, "a list of integers")
        return value


def _layer_types(r: _Reader, fam: Family, n_layers: int) -> list[tuple[str, int | None]]:
    """Per-layer (attention span, window) following each family's configuration class."""
    explicit = r.cfg.get("layer_types")
    window = r.cfg.get("sliding_window")
    if fam.model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and not r.bool(
            "use_sliding_window", False):
        window = None  # Qwen: sliding_window only counts with use_sliding_window
    if window is not None and (not isinstance(window, int) or isinstance(window, bool)
                               or window < 1):
        if window == 0 and fam.model_type == "qwen2_moe":
            window = None
        else:
            raise MemfitError.bad_value("sliding_window", window, "a positive integer or null")
    if explicit is not None and fam.model_type != "mistral":
        if not isinstance(explicit, list) or len(explicit) != n_layers:
            raise MemfitError.bad_value("layer_types", explicit,
                                        f"a list of {n_layers} layer types")
        out: list[tuple[str, int | None]] = []
        for t in explicit:
            if t == "full_attention":
                out.append(("full", None))
            elif t == "sliding_attention":
                if window is None:
                    raise MemfitError.bad_value(
                        "sliding_window", None, "a positive integer (layer_types has sliding "
                        "layers)")
                out.append(("sliding", window))
            else:
                raise MemfitError.bad_value("layer_types", t,
                                            "full_attention, sliding_attention")
        return out
    if fam.sliding == "none" or window is None:
        return [("full", None)] * n_layers
    if fam.sliding == "all":
        return [("sliding", window)] * n_layers
    if fam.sliding == "qwen":
        first = r.int("max_window_layers", default=28, minimum=0)
        return [("sliding", window) if i >= first else ("full", None) for i in range(n_layers)]
    if fam.sliding == "alternate":
        return [("sliding", window) if (i + 1) % 2 else ("full", None) for i in range(n_layers)]
    if fam.sliding == "pattern6":
        pattern = r.int("sliding_window_pattern", default=6)
        return [("sliding", window) if (i + 1) % pattern else ("full", None)
                for i in range(n_layers)]
    raise AssertionError(fam.sliding)


def _moe(r: _Reader, fam: Family, n_layers: int) -> tuple[MoESpec | None, list[bool]]:
    """The MoE block and which layers carry it, per family."""
    if fam.moe == "none":
        return None, [False] * n_layers
    if fam.moe == "mixtral":
        spec = MoESpec(num_experts=r.int("num_local_experts", default=8),
                       top_k=r.int("num_experts_per_tok", default=2),
                       expert_intermediate_size=r.int("intermediate_size"))
        return spec, [True] * n_layers
    if fam.moe == "gpt_oss":
        spec = MoESpec(num_experts=r.int("num_local_experts", default=128),
                       top_k=r.int("num_experts_per_tok", "experts_per_token", default=4),
                       expert_intermediate_size=r.int("intermediate_size"),
                       router_bias=True, expert_bias=True)
        return spec, [True] * n_layers
    if fam.moe == "qwen":
        # transformers 5 saves Qwen3-MoE's expert count as num_local_experts
        n_exp = r.int("num_experts", "num_local_experts",
                      default=60 if fam.model_type == "qwen2_moe" else 128, minimum=0)
        shared = (r.int("shared_expert_intermediate_size", default=5632, minimum=0)
                  if fam.model_type == "qwen2_moe" else 0)
        step = r.int("decoder_sparse_step", default=1)
        only = set(r.int_list("mlp_only_layers"))
        layers = [(i not in only) and n_exp > 0 and (i + 1) % step == 0 for i in range(n_layers)]
        if n_exp == 0:
            return None, [False] * n_layers
        qwen2_moe = fam.model_type == "qwen2_moe"
        spec = MoESpec(num_experts=n_exp,
                       top_k=r.int("num_experts_per_tok", default=4 if qwen2_moe else 8),
                       expert_intermediate_size=r.int("moe_intermediate_size",
                                                      default=1408 if qwen2_moe else 768),
                       shared_intermediate_size=shared,
                       shared_expert_gate=shared > 0)
        return spec, layers
    if fam.moe == "deepseek":
        v3 = fam.model_type == "deepseek_v3"
        n_exp = r.int("n_routed_experts", "num_local_experts", default=256 if v3 else 64)
        top_k = r.int("num_experts_per_tok", default=8 if v3 else None)  # type: ignore[arg-type]
        moe_i = r.int("moe_intermediate_size", default=2048 if v3 else 1407)
        n_shared = r.int("n_shared_experts", default=1 if v3 else 2, minimum=0)
        first = r.int("first_k_dense_replace", default=3 if v3 else 0, minimum=0)
        spec = MoESpec(num_experts=n_exp, top_k=top_k, expert_intermediate_size=moe_i,
                       shared_intermediate_size=moe_i * n_shared,
                       router_fp32=True, router_score_bias=v3)
        return spec, [i >= first for i in range(n_layers)]
    raise AssertionError(fam.moe)


def _custom(cfg: Mapping[str, Any], name: str) -> ModelSpec:
    """A hand-written description: keys are :class:`ModelSpec` fields."""
    known = {f.name for f in fields(ModelSpec)}
    data = {k: v for k, v in cfg.items() if k != "model_type"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MemfitError.bad_value(unknown[0], data[unknown[0]],
                                    "a ModelSpec field: " + ", ".join(sorted(known)))
    try:
        if isinstance(data.get("mla"), dict):
            data["mla"] = MLASpec(**data["mla"])
        if isinstance(data.get("moe"), dict):
            data["moe"] = MoESpec(**data["moe"])
        if isinstance(data.get("layers"), list):
            data["layers"] = tuple(LayerSpec(**x) for x in data["layers"])
        data.setdefault("name", name)
        data.setdefault("model_type", "custom")
        missing = [f.name for f in fields(ModelSpec)
                   if f.default is MISSING and f.name not in data]
        if missing:
            raise MemfitError.bad_value(missing[0], None, "a value (a required ModelSpec "
                                        "field; missing: " + ", ".join(missing) + ")")
        return ModelSpec(**data)
    except TypeError as exc:
        raise MemfitError(f"custom model: {exc}; allowed: the fields of memfit.arch.ModelSpec",
                          field="model", value=name, allowed="ModelSpec fields") from None


def _dtype(cfg: Mapping[str, Any]) -> str:
    value = cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
    if not isinstance(value, str):
        raise MemfitError.bad_value("torch_dtype", value, "a dtype name such as bfloat16")
    return value.replace("torch.", "")


#: JSON nesting a config may have: real ones nest 3 deep (rope_scaling, quantization_config
#: groups); a deeper value is refused before any message tries to print it (``repr`` of a
#: 5,000-deep list recurses past Python's limit).
MAX_DEPTH = 32


def _check_depth(config: Mapping[str, Any]) -> None:
    """Refuse a config with a value nested deeper than :data:`MAX_DEPTH` (iteratively)."""
    stack: list[tuple[Any, int, str]] = [(v, 1, str(k)) for k, v in config.items()]
    while stack:
        value, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise MemfitError.bad_value(key[:100], f"a value nested over {MAX_DEPTH} deep",
                                        f"JSON values nested at most {MAX_DEPTH} deep")
        if isinstance(value, Mapping):
            stack.extend((v, depth + 1, key) for v in value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend((v, depth + 1, key) for v in value)


def _family_config(config: Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    """(the config the language model is read from, its ``model_type``): a multimodal
    config's ``text_config`` when the outer type is none memfit reads; "custom" as is."""
    model_type = config.get("model_type")
    if model_type is None and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
        model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise MemfitError.bad_value("model_type", model_type,
                                    ", ".join(sorted(FAMILIES)) + " (a string)")
    if model_type == "custom":
        return config, model_type
    if isinstance(config.get("text_config"), Mapping) and model_type not in FAMILIES:
        inner = config["text_config"]
        if inner.get("model_type") in FAMILIES:
            config, model_type = inner, inner["model_type"]
    if model_type not in FAMILIES:
        raise MemfitError.bad_value(
            "model_type", model_type,
            ", ".join(sorted(FAMILIES)) + " (or 'custom' with ModelSpec fields; see "
            "docs/custom-models.md; any other type transformers knows through "
            "memfit.generic, which `memfit params/infer/train` fall back to: "
            "pip install -e \".[trace]\", see docs/architectures.md)")
    return config, model_type


def _dims(r: _Reader, fam: Family, model_type: str) -> tuple[int, int, int, int, int, int, int]:
    """(L, h, a, V, a_kv, d, I) with the family's defaults."""
    gpt2 = model_type == "gpt2"
    # bounded before any per-layer list is built
    L = r.int("n_layer" if gpt2 else "num_hidden_layers", maximum=MAX_LAYERS)
    h = r.int("n_embd" if gpt2 else "hidden_size")
    a = r.int("n_head" if gpt2 else "num_attention_heads")
    V = r.int("vocab_size")
    if model_type == "gpt_oss":
        a_kv = r.int("num_key_value_heads", default=8)
    elif model_type in ("gpt2", "gpt_neox"):
        a_kv = a
    else:
        a_kv = r.int("num_key_value_heads", default=a)
    if fam.mla:
        d = h // a  # not used by MLA's projections; kept for reporting
    else:
        d = r.int("head_dim", default=fam.head_dim_default or 0, minimum=1) \
            if r.has("head_dim") or fam.head_dim_default else 0
        if d == 0:
            if h % a:
                raise MemfitError.bad_value("hidden_size", h,
                                            f"a multiple of num_attention_heads={a} "
                                            "(or give head_dim explicitly)")
            d = h // a
    if gpt2:
        inner = r.cfg.get("n_inner")
        I = r.int("n_inner") if inner is not None else 4 * h
    elif fam.moe in ("mixtral", "gpt_oss"):
        I = 0
    else:
        I = r.int("intermediate_size", default=0, minimum=0)
    if model_type == "qwen2_moe" or model_type == "qwen3_moe":
        I = r.int("intermediate_size", default=0, minimum=0)
    return L, h, a, V, a_kv, d, I


def _rope_dim(r: _Reader, fam: Family, model_type: str, d: int, mla: MLASpec | None) -> int:
    """Rotary dims per head: the inv_freq buffers hold rope_dim / 2 fp32 values."""
    if fam.learned_positions:
        return 0
    if mla is not None:
        return mla.qk_rope_head_dim
    if model_type == "gpt_neox":
        return int(d * r.fraction("rotary_pct", 0.25))
    return int(d * r.fraction("partial_rotary_factor", 1.0))


def from_hf_config(config: Mapping[str, Any], name: str = "model") -> ModelSpec:
    """Build a :class:`ModelSpec` from a Hugging Face ``config.json`` dict.

    A multimodal config whose language model sits under ``text_config`` is read from there.
    """
    if not isinstance(config, Mapping):
        raise MemfitError.bad_value("config", type(config).__name__, "a JSON object")
    _check_depth(config)
    config, model_type = _family_config(config)
    if model_type == "custom":
        return _custom(config, name)
    fam = FAMILIES[model_type]
    r = _Reader(config)
    gpt2 = model_type == "gpt2"
    L, h, a, V, a_kv, d, I = _dims(r, fam, model_type)

    bias_default = fam.bias_default
    qkv_bias = r.bool(fam.qkv_bias, bias_default)
    o_bias = r.bool(fam.o_bias, bias_default)
    mlp_bias = r.bool(fam.mlp_bias, False) if isinstance(fam.mlp_bias, str) else fam.mlp_bias

    spans = _layer_types(r, fam, L)
    moe, moe_layers = _moe(r, fam, L)
    layers = tuple(LayerSpec(attention=s, window=w, moe=m) for (s, w), m in zip(spans, moe_layers,
                                                                        strict=True))

    mla = None
    if fam.mla:
        q_lora = config.get("q_lora_rank")
        mla = MLASpec(q_lora_rank=None if q_lora is None else r.int("q_lora_rank"),
                      kv_lora_rank=r.int("kv_lora_rank", default=512),
                      qk_rope_head_dim=r.int("qk_rope_head_dim", default=64),
                      qk_nope_head_dim=r.int("qk_nope_head_dim", default=128),
                      v_head_dim=r.int("v_head_dim", default=128))

    rope_dim = _rope_dim(r, fam, model_type, d, mla)
    positions = r.int("n_positions", "max_position_embeddings", default=1024) if gpt2 else 0
    activation = r.str(fam.activation_key, fam.activation_default)
    return ModelSpec(
        name=name,
        model_type=model_type,
        num_layers=L,
        hidden_size=h,
        vocab_size=V,
        num_heads=a,
        num_kv_heads=a_kv,
        head_dim=d,
        intermediate_size=I,
        mlp_gated=fam.gated,
        activation=activation,
        tie_word_embeddings=r.bool("tie_word_embeddings", fam.tie_default),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=mlp_bias,
        qk_norm=fam.qk_norm,
        attention_sinks=fam.attention_sinks,
        norm=fam.norm,
        norm_bias=fam.norm_bias,
        norms_per_layer=fam.norms_per_layer,
        learned_positions=positions,
        max_position_embeddings=r.int("max_position_embeddings", "n_positions", default=0,
                                      minimum=0),
        rope_dim=rope_dim,
        mla=mla,
        moe=moe,
        layers=layers,
        dtype=_dtype(config),
        parallel_residual=(r.bool("use_parallel_residual", True) if model_type == "gpt_neox"
                           else False),
        extra_buffers=fam.extra_buffers,
        quantization=_quantization(config),
        dropout=family_dropout(model_type, config),
        softcap=family_softcap(model_type, config),
        use_cache=config.get("use_cache", True) is not False,
        length_keys=tuple((k, v) for k, v in config.items() if k in LENGTH_KEYS
                          and isinstance(v, int) and not isinstance(v, bool)),
        rope_scaling=_rope_scaling(config),
    )


#: Dropout probabilities: config keys and their transformers defaults, per family
#: (embedding dropout, residual dropout (after attention and after MLP), attention dropout);
#: ``configuration_gpt2.py`` (0.1 each), ``configuration_phi3.py`` (0.0 each); other families
#: have ``attention_dropout`` (default 0.0) only.
DROPOUT_KEYS: dict[str, tuple[tuple[str, float], tuple[str, float], tuple[str, float]]] = {
    "gpt2": (("embd_pdrop", 0.1), ("resid_pdrop", 0.1), ("attn_pdrop", 0.1)),
    "phi3": (("embd_pdrop", 0.0), ("resid_pdrop", 0.0), ("attention_dropout", 0.0)),
}
DEFAULT_DROPOUT = (("", 0.0), ("", 0.0), ("attention_dropout", 0.0))

#: The config keys vLLM (``vllm/config/model.py _get_and_verify_max_len``) and SGLang
#: (``hf_transformers_utils.py CONTEXT_LENGTH_KEYS``) derive a model's context from.
LENGTH_KEYS = frozenset(("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                         "model_max_length", "max_sequence_length", "max_seq_length", "seq_len"))


def family_dropout(model_type: str, config: Mapping[str, Any]) -> tuple[bool, bool, bool]:
    """(embedding, residual, attention) dropout active: the config's probabilities, with the
    family's transformers defaults (:data:`DROPOUT_KEYS`) where it says nothing."""
    out = []
    for key, default in DROPOUT_KEYS.get(model_type, DEFAULT_DROPOUT):
        value = config.get(key, default) if key else 0.0
        try:
            out.append(float(value or 0.0) > 0.0)
        except (TypeError, ValueError):
            out.append(False)
    return out[0], out[1], out[2]


def family_softcap(model_type: str, config: Mapping[str, Any]) -> tuple[bool, bool]:
    """(attention, final logits) tanh soft-capping: Gemma 2's ``attn_logit_softcapping``
    (default 50) and ``final_logit_softcapping`` (default 30, ``configuration_gemma2.py``);
    null turns one off. Other families have none."""
    if model_type != "gemma2":
        return False, False
    return (config.get("attn_logit_softcapping", 50.0) is not None,
            config.get("final_logit_softcapping", 30.0) is not None)


@lru_cache(maxsize=256)
def _rope_from_json(text: str) -> Mapping[str, Any] | None:
    return json.loads(text) if text else None


def rope_scaling(spec: ModelSpec) -> Mapping[str, Any] | None:
    """The config's ``rope_scaling`` (or ``rope_parameters``) mapping, None when absent
    (shared: do not mutate)."""
    return _rope_from_json(spec.rope_scaling)


def _rope_scaling(config: Mapping[str, Any]) -> str:
    """``rope_scaling`` (or transformers 5's ``rope_parameters``) as canonical JSON, "" when
    absent or empty."""
    rope = config.get("rope_scaling") or config.get("rope_parameters")
    if not isinstance(rope, Mapping):
        return ""
    return json.dumps(rope, sort_keys=True, default=str)


def _quantization(config: Mapping[str, Any]) -> str:
    """``quantization_config`` as canonical JSON (sorted keys), "" when absent."""
    q = config.get("quantization_config")
    if not isinstance(q, Mapping):
        return ""
    return json.dumps(q, sort_keys=True, default=str)

