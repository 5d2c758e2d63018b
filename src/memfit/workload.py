"""Scenario options: what the user runs, as frozen dataclasses checked at construction.

These are the single definition of every option: the CLI flags, the web API's fields and the
Python keyword arguments are all generated from the field metadata below (``help``,
``choices``, ``min``), so the three never drift. Defaults describe what a user of Hugging Face
transformers on PyTorch gets (see ``shared/CONTRACT.md``).
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from .errors import MemfitError

__all__ = [
    "InferenceOptions",
    "TrainingOptions",
    "PRECISIONS",
    "OPTIMIZERS",
    "OPTIMIZER_IMPLS",
    "CHECKPOINTING",
    "ATTN_IMPLS",
    "ENGINES",
    "FSDP_MODES",
    "OFFLOAD",
    "LOSSES",
    "FSDP_VERSIONS",
    "TRANSFORMERS_VERSIONS",
    "ADAPTER_DTYPES",
    "option_fields",
    "vllm_regime",
    "make_options",
    "default_within",
]

PRECISIONS = ("fp32", "bf16-true", "fp16-true", "bf16-mixed", "fp16-mixed", "bf16-master")
OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd", "sgd-momentum",
              "adafactor", "lion")
OPTIMIZER_IMPLS = ("foreach", "fused", "forloop")
CHECKPOINTING = ("none", "full", "selective", "op-selective")
ATTN_IMPLS = ("sdpa", "eager")
LOGITS = ("last", "all")
ENGINES = ("hf", "vllm", "llamacpp", "sglang", "ollama")
# Other names of the engines, lowercased without punctuation (``llama.cpp``, ``vLLM``,
# ``Transformers``, ``llama-cpp``): the CLI and ``memfit check`` accept them.
ENGINE_SPELLINGS = {"llamacpp": "llamacpp", "vllm": "vllm", "hf": "hf", "transformers": "hf",
                    "huggingface": "hf", "hftransformers": "hf", "sglang": "sglang",
                    "ollama": "ollama"}
OLLAMA_VERSIONS = ("0.5", "0.9", "0.34")
VLLM_VERSIONS = ("0.12", "0.21")  # the memory accountings modelled (see vllm_regime)
VLLM_ENTRYPOINTS = ("serve", "llm")
FLASH_ATTN = ("auto", "on", "off")
SPLIT_MODES = ("layer", "row", "none")  # llama.cpp -sm (common/arg.cpp); row is refused
FSDP_MODES = ("full", "grad-op", "hybrid")
OFFLOAD = ("none", "optimizer", "params")
ZERO_STAGES = (0, 1, 2, 3)
FSDP_VERSIONS = (1, 2)
LOSSES = ("hf", "chunked", "liger", "cce")
# ``fused-linear`` was the name of Liger's loss before Cut Cross-Entropy got its own
LOSS_SPELLINGS = {"fusedlinear": "liger", "ligerkernel": "liger", "cutcrossentropy": "cce"}
TRANSFORMERS_VERSIONS = (4, 5)
ADAPTER_DTYPES = ("fp32", "bf16", "fp16")

# The largest size any count option accepts: far beyond any real run, small enough that the
# byte arithmetic stays exact and fast.
MAX_COUNT = 2**40


def _opt(default: Any, help: str, *, choices: tuple[Any, ...] | None = None,
         min: int | float | None = None, max: int | float | None = None,
         flag: bool = False, nullable: bool = False, aliases: tuple[str, ...] = (),
         switches: dict[str, Any] | None = None,
         spellings: dict[str, Any] | None = None) -> Any:
    """A dataclass field carrying its CLI/web metadata.

    ``aliases``: other flags for the same option, the ecosystem's own names
    (``--tensor-parallel-size``, ``-ngl``); ``switches``: flags that set one value
    (``--gradient-checkpointing`` = ``full``); ``spellings``: other names of a choice, keyed
    by the name lowercased without punctuation (``llamacpp`` for ``llama.cpp``). The aliases
    are the names of vLLM's ``vllm/engine/arg_utils.py``, llama.cpp's ``common/arg.cpp``,
    transformers' ``TrainingArguments``, DeepSpeed's config and axolotl's schema, where they
    mean exactly this option; ``memfit check`` reads whole command lines and configs."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "flag": flag,
            "nullable": nullable, "aliases": aliases, "switches": switches or {},
            "spellings": spellings or {}}
    return field(default=default, metadata=meta)


_Plan = tuple[tuple[str, str, dict[str, Any], bool, frozenset[type], Any], ...]


def _plan(cls: type) -> _Plan:
    """Per field, computed once per class: (attribute, option name, metadata, whether it
    takes a real number, the types of its choices, its default)."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple(
            (f.name, f.name.replace("_", "-"), dict(f.metadata),
             isinstance(f.default, float) or isinstance(f.metadata.get("min"), float),
             frozenset(type(c) for c in f.metadata.get("choices") or ()), f.default)
            for f in fields(cls))
    return plan


_PLANS: dict[type, _Plan] = {}


def _plan_by_name(cls: type) -> dict[str, Any]:
    """:func:`_plan`'s entries by attribute name, with their declaration index."""
    by_name = _PLANS_BY_NAME.get(cls)
    if by_name is None:
        by_name = _PLANS_BY_NAME[cls] = {e[0]: (i, e) for i, e in enumerate(_plan(cls))}
    return by_name


_PLANS_BY_NAME: dict[type, dict[str, Any]] = {}


def _check(obj: Any, given: Any = None) -> None:
    """Validate every field of ``obj`` against its metadata; raise :class:`MemfitError`.
    ``given``: the names of the only fields that may hold other than their default objects
    (``make_options``: the others were set from the defaults, valid by construction)."""
    d = obj.__dict__
    plan: Any = _plan(type(obj))
    if given is not None:  # in declaration order: the first bad field is the one named
        by_name = _plan_by_name(type(obj))
        plan = [by_name[n][1] for n in sorted(given, key=lambda n: by_name[n][0])]
    for attr, name, meta, real, choice_types, default in plan:
        value = d[attr]
        if value is default:  # the very default object: valid by construction
            continue
        if value is None:
            if meta["nullable"]:
                continue
            raise MemfitError.bad_value(name, value, "a value")
        if meta["flag"]:
            if not isinstance(value, bool):
                raise MemfitError.bad_value(name, value, "true or false")
            continue
        choices = meta["choices"]
        if choices is not None:
            # by type too: True is not ZeRO stage 1, nor 1.0
            if type(value) not in choice_types or value not in choices:
                raise MemfitError.bad_value(name, value, ", ".join(map(str, choices)))
            continue
        lo, hi = meta["min"], meta["max"]
        if lo is None and hi is None:
            # a free-form name (weights, kv_dtype, gpu): resolved later, but a string here
            if not isinstance(value, str):
                raise MemfitError.bad_value(name, value, f"a string ({meta['help']})")
            continue
        if real:
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
                  and math.isfinite(value))
            kind = "a number"
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
            kind = "an integer"
        if not ok:
            raise MemfitError.bad_value(name, value, f"{kind} in [{lo}, {hi}]")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise MemfitError.bad_value(name, value, f"{kind} in [{lo}, {hi}]")


# Options that belong to one engine (their help starts "vllm:" or "llamacpp:") are refused
# with any other engine: they would be silently ignored. Whether the user gave one is told
# by identity: an option left out holds the field's very default object (the CLI and the web
# API pass only the options given; ``replace`` keeps the objects it does not change). A value
# equal to a small cached int or bool default given explicitly is that same object, hence
# accepted: it changes nothing.
_ENGINE_OWNED: dict[type, tuple[tuple[str, str, Any], ...]] = {}


def _engine_owned(cls: type) -> tuple[tuple[str, str, Any], ...]:
    """(attribute, owning engines, default object) of every engine-specific field of ``cls``:
    its help starts with the engine's name, or several joined by "/" (``llamacpp/ollama:``,
    a llama.cpp setting that Ollama passes through)."""
    owned = _ENGINE_OWNED.get(cls)
    if owned is None:
        owned = _ENGINE_OWNED[cls] = tuple(
            (f.name, owner, f.default) for f in fields(cls)
            for owner in (str(f.metadata.get("help", "")).split(":", 1)[0],)
            if owner and all(e in ENGINES for e in owner.split("/")))
    return owned


def _check_engine_owned(obj: Any, given: Any = None) -> None:
    """Refuse an engine-specific option given with another engine, naming its engines
    (``given``: as for :func:`_check`)."""
    for attr, owner, default in _engine_owned(type(obj)):
        if given is not None and attr not in given:
            continue  # its default object
        value = getattr(obj, attr)
        if value is not default and obj.engine not in owner.split("/"):
            names = " or ".join(f"--engine {e}" for e in owner.split("/"))
            raise MemfitError.bad_value(
                attr.replace("_", "-"), value, f"only with {names} (a setting of "
                f"{owner.replace('/', ' and ')}; the {obj.engine} engine has none, so it "
                "would be ignored)")


def _default(cls: type, attr: str) -> Any:
    """The default object of field ``attr`` of the dataclass ``cls`` (a dataclass keeps a
    plain default as the class attribute, the very same object)."""
    return getattr(cls, attr)


def vllm_regime(version: str) -> str:
    """The modelled accounting (one of ``VLLM_VERSIONS``) of vLLM release ``version`` ("0.10.1",
    "0.21", "v0.11.0rc1"): "0.21" from v0.21.0 on (the profiler's CUDA-graph estimate
    ``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` on by default), "0.12" before."""
    regime = _VLLM_REGIMES.get(version) if isinstance(version, str) else None
    if regime is None:
        m = _VLLM_RELEASE.fullmatch(version.strip()) if isinstance(version, str) else None
        if m is None:
            raise MemfitError.bad_value("vllm-version", version, "a vLLM release X.Y or X.Y.Z "
                                        "(e.g. 0.10.1, 0.21.0)")
        regime = "0.21" if (int(m[1]), int(m[2])) >= (0, 21) else "0.12"
        if len(_VLLM_REGIMES) < 256:
            _VLLM_REGIMES[version] = regime
    return regime


_VLLM_REGIMES: dict[str, str] = {v: v for v in VLLM_VERSIONS}
_VLLM_RELEASE = re.compile(r"v?(\d{1,4})\.(\d{1,4})(?:\.\d{1,4})?(?:[.+-]?(?:rc|post|dev)\w*)?")


def default_within(options: Any, name: str, limit: int | None, reserve: int = 0,
                   why: str = "") -> tuple[Any, str | None]:
    """Shrink option ``name`` to ``limit - reserve`` when the user left it at its default
    and that default cannot work (``default + reserve > limit``: GPT-2's 1,024 learned
    positions against the default 1,024-token prompt + 128 generated). A value the user
    gave is left as is (the estimate then refuses it, naming the field). Returns the options
    and a note saying what was changed and why, or ``None`` when nothing was."""
    value = getattr(options, name)
    if not limit or value is not _default(type(options), name) or value + reserve <= limit:
        return options, None
    if limit - reserve < 1:
        return options, None
    new = limit - reserve
    note = (f"{name.replace('_', '-')} {new}, not the default {value}: {why or 'the model'} "
            f"holds {limit} positions" + (f" ({new} + {reserve} generated)" if reserve else "")
            + f"; give --{name.replace('_', '-')} to choose")
    return replace(options, **{name: new}), note


@dataclass(frozen=True)
class InferenceOptions:
    """One inference scenario: a prefill of ``prompt`` tokens, then ``generate`` decode steps."""

    batch: int = _opt(1, "sequences decoded together", min=1, max=MAX_COUNT)
    prompt: int = _opt(1024, "prompt tokens per sequence (the prefill)", min=1, max=MAX_COUNT)
    generate: int = _opt(128, "tokens generated per sequence after the prefill", min=0,
                         max=MAX_COUNT)
    weights: str | None = _opt(None, "weight format (see `memfit formats`); default: the "
                               "checkpoint's own (config.json quantization_config, else "
                               "torch_dtype, bf16 when absent)", nullable=True,
                               aliases=("--quantization",))
    kv_dtype: str | None = _opt(None, "KV cache dtype; default: the weights' 16-bit dtype",
                                nullable=True, aliases=("--kv-cache-dtype",))
    attn: str = _opt("sdpa", "attention implementation", choices=ATTN_IMPLS)
    logits: str = _opt("last", "positions whose logits the prefill computes", choices=LOGITS)
    engine: str = _opt("hf", "serving engine (vLLM, llama.cpp, transformers: any case or "
                       "spelling)", choices=ENGINES, spellings=ENGINE_SPELLINGS)
    tp: int = _opt(1, "tensor-parallel degree", min=1, max=4096,
                   aliases=("--tensor-parallel-size", "-tp", "--tp-size"))
    pp: int = _opt(1, "pipeline-parallel degree", min=1, max=4096,
                   aliases=("--pipeline-parallel-size", "-pp", "--pp-size"))
    ep: int = _opt(1, "expert-parallel degree (MoE)", min=1, max=4096)
    gpu: str | None = _opt(None, "GPU to check the fit against (see `memfit gpus`)",
                           nullable=True)
    gpu_memory_utilization: float = _opt(0.9, "vllm: fraction of the GPU it reserves",
                                         min=0.01, max=1.0)
    block_size: int = _opt(16, "vllm: KV cache block size in tokens", min=1, max=1 << 20)
    n_gpu_layers: int | None = _opt(None, "llamacpp/ollama: layers offloaded to the GPU "
                                    "(default all; Ollama: num_gpu, default its estimate)",
                                    min=0, max=1 << 20, nullable=True,
                                    aliases=("--gpu-layers", "-ngl"))
    max_model_len: int | None = _opt(None, "vllm: longest sequence it accepts (--max-model-len); "
                                     "default: the model's limit, derived as vLLM derives it",
                                     min=1, max=MAX_COUNT, nullable=True)
    max_num_seqs: int | None = _opt(None, "vllm: most sequences per step; default by GPU and "
                                    "entry point (1024 on >= 70 GiB cards but A100, else 256)",
                                    min=1, max=1 << 20, nullable=True)
    max_num_batched_tokens: int | None = _opt(
        None, "vllm: tokens per step, the profile run's size; default by GPU and entry point "
        "(vllm serve: 8192 on >= 70 GiB cards but A100, else 2048)", min=1, max=MAX_COUNT,
        nullable=True)
    enforce_eager: bool = _opt(False, "vllm: no CUDA graphs (--enforce-eager)", flag=True)
    vllm_version: str = _opt("0.21", "vllm: release, X.Y or X.Y.Z (0.10.1); modelled with the "
                             "accounting of 0.21 (0.21 and later reserve CUDA-graph memory "
                             "inside the KV budget) or of 0.12 (earlier releases capture graphs "
                             "after sizing the pool)")
    vllm_entrypoint: str = _opt("serve", "vllm: `vllm serve` (OpenAI server) or the LLM class "
                                "(python), which set different batch defaults",
                                choices=VLLM_ENTRYPOINTS)
    flash_attn: str = _opt("auto", "llamacpp/ollama: flash attention (-fa; Ollama: "
                           "OLLAMA_FLASH_ATTENTION=1 is on); auto = on where the backend "
                           "supports it (CUDA); Ollama: off unless on", choices=FLASH_ATTN,
                           aliases=("-fa",))
    ubatch_size: int = _opt(512, "llamacpp/ollama: physical batch of the compute graph (-ub; "
                            "Ollama: num_batch)", min=1,
                            max=1 << 20, aliases=("-ub",))
    cache_type_k: str | None = _opt(None, "llamacpp/ollama: K cache type (-ctk; Ollama: "
                                    "OLLAMA_KV_CACHE_TYPE); default --kv-dtype or f16",
                                    nullable=True, aliases=("-ctk",))
    cache_type_v: str | None = _opt(None, "llamacpp/ollama: V cache type (-ctv; Ollama: "
                                    "OLLAMA_KV_CACHE_TYPE); default --kv-dtype or f16 "
                                    "(quantized V needs flash attention)", nullable=True,
                                    aliases=("-ctv",))
    n_cpu_moe: int = _opt(0, "llamacpp: MoE expert tensors of the first N layers kept in host "
                          "RAM (--n-cpu-moe)", min=0, max=1 << 20)
    tensor_split: str | None = _opt(None, "llamacpp: split the offloaded layers over GPUs in "
                                    "these shares (--tensor-split 3,1; split-mode layer); "
                                    "default one GPU", nullable=True, aliases=("-ts",))
    split_mode: str = _opt("layer", "llamacpp: how the GPUs share the model (-sm): layer "
                           "(whole layers per GPU, --tensor-split shares), none (one GPU); row "
                           "(matrix rows across GPUs) is not modelled yet", choices=SPLIT_MODES,
                           aliases=("-sm",))
    ctx_size: int | None = _opt(None, "llamacpp: context window in KV cells (-c; 0 = the model's "
                                "training context, as llama.cpp reads 0); the KV cache and the "
                                "KQ mask are sized for it and batch x (prompt + generate) must "
                                "fit in it; default: exactly that request", min=0,
                                max=MAX_COUNT, nullable=True, aliases=("-c",))
    batch_size: int = _opt(2048, "llamacpp: logical batch (-b); only bounds the compute graph's "
                           "n_ubatch = min(--ubatch-size, --batch-size, context)", min=1,
                           max=1 << 20)
    mem_fraction_static: float | None = _opt(
        None, "sglang: fraction of the GPU's free memory for weights + KV pool "
        "(--mem-fraction-static); default SGLang's rule by GPU memory and TP", min=0.01,
        max=1.0, nullable=True)
    context_length: int | None = _opt(None, "sglang: longest request (--context-length); "
                                      "default the model's, derived as SGLang derives it",
                                      min=1, max=MAX_COUNT, nullable=True)
    max_running_requests: int | None = _opt(
        None, "sglang: most requests at once (--max-running-requests); default from the pool",
        min=1, max=1 << 20, nullable=True)
    chunked_prefill_size: int | None = _opt(
        None, "sglang: prefill chunk in tokens (--chunked-prefill-size); default by GPU memory",
        min=1, max=MAX_COUNT, nullable=True)
    cuda_graph_max_bs: int | None = _opt(
        None, "sglang: largest CUDA-graph batch (--cuda-graph-max-bs); default by GPU memory "
        "and TP", min=1, max=1 << 16, nullable=True)
    disable_cuda_graph: bool = _opt(False, "sglang: no CUDA graphs (--disable-cuda-graph)",
                                    flag=True)
    num_ctx: int | None = _opt(None, "ollama: context window per model load (num_ctx, "
                               "OLLAMA_CONTEXT_LENGTH); default by version (and VRAM)",
                               min=1, max=MAX_COUNT, nullable=True)
    num_parallel: int = _opt(1, "ollama: parallel requests (OLLAMA_NUM_PARALLEL); the context "
                             "is num_ctx x num_parallel", min=1, max=1 << 10)
    ollama_version: str = _opt("0.9", "ollama: release whose default context is modelled: 0.5 "
                               "(2048), 0.9 (4096), 0.34 (by VRAM: 4k below 24 GiB, 32k below "
                               "48 GiB, else 256k)", choices=OLLAMA_VERSIONS)

    def __post_init__(self) -> None:
        _check(self)
        self._rules()

    def _rules(self, given: Any = None) -> None:
        """The rules between options (after each option's own check)."""
        _check_engine_owned(self, given)
        if self.vllm_version is not _default(InferenceOptions, "vllm_version"):
            vllm_regime(self.vllm_version)  # a release number, or the error naming it
        if self.engine in ("llamacpp", "ollama"):  # layers split across GPUs, not TP/PP/EP
            for name in ("tp", "pp", "ep"):
                if getattr(self, name) > 1:
                    raise MemfitError.bad_value(
                        name, getattr(self, name), f"1 with --engine {self.engine} (memfit "
                        "models "
                        "llama.cpp on one GPU; its multi-GPU layer split is not modelled)")


@dataclass(frozen=True)
class TrainingOptions:
    """One training step of a causal-LM loss over ``batch`` x ``seq`` tokens per GPU."""

    batch: int = _opt(1, "micro-batch size per data-parallel rank", min=1, max=MAX_COUNT,
                      aliases=("--per-device-train-batch-size", "--micro-batch-size"))
    seq: int = _opt(2048, "sequence length in tokens", min=1, max=MAX_COUNT,
                    aliases=("--max-seq-length", "--sequence-len", "--seq-len"))
    precision: str = _opt("bf16-mixed", "precision recipe", choices=PRECISIONS)
    optimizer: str = _opt("adamw", "optimizer", choices=OPTIMIZERS)
    optimizer_impl: str = _opt("foreach", "optimizer implementation", choices=OPTIMIZER_IMPLS)
    checkpointing: str = _opt("none", "activation checkpointing", choices=CHECKPOINTING,
                              switches={"--gradient-checkpointing": "full"})
    attn: str = _opt("sdpa", "attention implementation", choices=ATTN_IMPLS)
    dp: int = _opt(1, "data-parallel degree", min=1, max=1 << 20)
    zero: int = _opt(0, "DeepSpeed ZeRO stage", choices=ZERO_STAGES, aliases=("--zero-stage",))
    fsdp: str | None = _opt(None, "PyTorch FSDP sharding (FSDP2 or FSDP1: --fsdp-version); "
                            "default: none", choices=FSDP_MODES + (None,),
                            nullable=True)
    tp: int = _opt(1, "tensor-parallel degree", min=1, max=4096)
    sp: bool = _opt(False, "sequence parallelism (with --tp)", flag=True)
    pp: int = _opt(1, "pipeline-parallel degree", min=1, max=4096)
    microbatches: int = _opt(1, "micro-batches per step (pipeline / accumulation)", min=1,
                             max=1 << 20, aliases=("--gradient-accumulation-steps",))
    cp: int = _opt(1, "context-parallel degree", min=1, max=4096)
    ep: int = _opt(1, "expert-parallel degree (MoE)", min=1, max=4096)
    fsdp_version: int = _opt(2, "FSDP generation with --fsdp: 2 = PyTorch fully_shard "
                             "(torchtitan, torchtune); 1 = FullyShardedDataParallel's flat "
                             "parameters (accelerate, HF Trainer)", choices=FSDP_VERSIONS)
    lora_rank: int | None = _opt(None, "LoRA rank (frozen base, trainable adapters)", min=1,
                                 max=1 << 16, nullable=True, aliases=("--lora-r",))
    lora_targets: str = _opt("all-linear", "modules that get adapters: all-linear (every "
                             "q/k/v/o and MLP projection), peft-default (peft's default for the "
                             "model type, q_proj,v_proj for Llama), attention, mlp, or a comma "
                             "list of module names")
    lora_dropout: float = _opt(0.0, "LoRA dropout probability (p > 0 keeps a mask and a dropped "
                               "copy of each adapter's input)", min=0.0, max=0.99)
    lora_dtype: str | None = _opt(None, "adapter weights' dtype; default: peft's fp32",
                                  choices=ADAPTER_DTYPES + (None,), nullable=True)
    dora: bool = _opt(False, "DoRA: weight-decomposed adapters (peft use_dora)", flag=True)
    lora_experts: bool = _opt(False, "adapters on the MoE experts' projections too",
                              flag=True)
    qlora: bool = _opt(False, "QLoRA: base linears in bitsandbytes NF4 (rank 16 unless "
                       "--lora-rank)", flag=True)
    no_kbit_prepare: bool = _opt(False, "QLoRA without peft's prepare_model_for_kbit_training: "
                                 "the 16-bit stream of torchtune, Unsloth, axolotl (default: "
                                 "the prepare step's fp32 upcast)", flag=True)
    transformers: int = _opt(5, "transformers major version, for the MoE layout: 5 fuses the "
                             "experts into 3-D tensors (bitsandbytes leaves them unquantized, "
                             "peft adapts them only with --lora-experts); 4 keeps per-expert "
                             "linear layers (quantized, adapted by name)",
                             choices=TRANSFORMERS_VERSIONS)
    loss: str = _opt("hf", "cross-entropy: hf (full fp32 logits), chunked (torchtune), "
                     "liger (Liger's fused linear cross-entropy), cce (Cut Cross-Entropy)",
                     choices=LOSSES, spellings=LOSS_SPELLINGS)
    loss_chunks: int = _opt(8, "chunks of the chunked loss", min=1, max=1 << 16)
    checkpoint_every: int = _opt(1, "checkpoint every N-th layer (with --checkpointing)",
                                 min=1, max=1 << 20)
    activation_offload: bool = _opt(False, "saved activations offloaded to CPU memory",
                                    flag=True)
    optimizer_in_backward: bool = _opt(False, "optimizer step inside backward (per-parameter "
                                       "hooks: no full gradient set)", flag=True)
    offload: str = _opt("none", "offload to CPU memory", choices=OFFLOAD)
    gpu: str | None = _opt(None, "GPU to check the fit against (see `memfit gpus`)",
                           nullable=True)

    def __post_init__(self) -> None:
        _check(self)
        if self.qlora and self.lora_rank is None:
            object.__setattr__(self, "lora_rank", 16)
        if self.zero and self.fsdp:
            raise MemfitError.bad_value("zero", self.zero, "0 when --fsdp is given "
                                        "(ZeRO and FSDP are alternatives)")
        if self.sp and self.tp == 1:
            raise MemfitError.bad_value("sp", True, "only with --tp > 1")
        if self.qlora and self.precision in ("fp32",):
            raise MemfitError.bad_value("precision", self.precision,
                                        "a 16-bit recipe with --qlora")

    @property
    def world_size(self) -> int:
        """GPUs in the layout: DP x TP x PP x CP (EP reuses the DP x CP ranks)."""
        return self.dp * self.tp * self.pp * self.cp


def option_fields(cls: type) -> list[Any]:
    """The dataclass fields of an options class, in declaration order (for CLI and web)."""
    return list(fields(cls))


def make_options(cls: type, **kwargs: Any) -> Any:
    """Build ``cls`` from keyword options, naming any unknown option and the valid ones.

    The instance is made as the dataclass's ``__init__`` makes it (every field set in the
    instance dict, the defaults the very class-level objects), then ``__post_init__`` checks
    it; a class with a field lacking a plain default is built through ``cls(**kwargs)``."""
    fast = _FAST.get(cls)
    if fast is None:
        fast = _FAST[cls] = _fast_plan(cls)
    names, defaults = fast
    g = kwargs.get("gpu")
    if g is not None and not isinstance(g, str):  # a memfit GPU object (hardware.make_gpu)
        from .hardware import register_gpu

        kwargs = {**kwargs, "gpu": register_gpu(g)}
    if not names.issuperset(kwargs):
        unknown = sorted(set(kwargs) - names)
        raise MemfitError.bad_value("option", unknown[0], ", ".join(sorted(names)))
    if defaults is None:
        return cls(**kwargs)
    obj: Any = object.__new__(cls)
    d = obj.__dict__
    d.update(defaults)
    d.update(kwargs)
    rules = getattr(obj, "_rules", None)
    if rules is None:
        obj.__post_init__()
    else:  # __post_init__, checking only the options given (the rest hold the defaults)
        _check(obj, kwargs)
        rules(kwargs)
    return obj


def _fast_plan(cls: type) -> tuple[frozenset[str], dict[str, Any] | None]:
    """(the option names, the defaults by name or None when a field has none or a factory)."""
    fs = fields(cls)
    plain = all(f.default is not MISSING and f.default_factory is MISSING and f.init
                for f in fs) and hasattr(cls, "__post_init__")
    return frozenset(f.name for f in fs), ({f.name: f.default for f in fs} if plain else None)


_FAST: dict[type, tuple[frozenset[str], dict[str, Any] | None]] = {}


def with_changes(options: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-validates (solvers use it to step one option)."""
    return replace(options, **changes)


_ = MISSING  # re-exported for the CLI generator's default handling
