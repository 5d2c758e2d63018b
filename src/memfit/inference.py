"""Inference memory: ``infer(model, **options)`` and the inverse questions of ``fit_infer``.

``infer`` returns an :class:`~memfit.memory.breakdown.Estimate` with the phases ``load``,
``prefill`` and ``decode`` (``serve`` for vLLM), each the live tensors at its own peak, by
component (``weights``, ``kv_cache``, ``activations``, ``logits``). The engine models are in
:mod:`memfit.engines`; the formulas in :mod:`memfit.memory.weights`, ``kv_cache`` and
``inference_activations``.

``fit_infer`` answers, for one GPU model: the largest batch at the given context, the longest
prompt at the given batch, the fewest GPUs (with a valid TP/PP split) and, for vLLM, the KV
cache capacity. Every boundary is exact: the answer fits and one more does not
(:func:`memfit.solve.largest_true` on a monotone predicate).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .arch import ModelSpec
from .catalog import resolve_model, resolve_model_full
from .engines import ENGINE_FUNCS
from .errors import MemfitError
from .memory.breakdown import Estimate, Phase, Term
from .memory.weights import memo_table
from .parallel import ParallelPlan
from .solve import largest_true
from .workload import MAX_COUNT, InferenceOptions, default_within, make_options

__all__ = ["infer", "estimate_inference", "fit_infer", "FitResult"]

ModelLike = str | Path | Mapping[str, Any] | ModelSpec


def estimate_inference(spec: ModelSpec, options: InferenceOptions) -> Estimate:
    """The estimate for an already resolved model and validated options (the ModelSpec
    carries all the estimators need)."""
    table, key = memo_table(spec), ("layout_ok", options.tp, options.pp, options.ep)
    if key not in table:  # a valid layout is remembered per model (bounded table)
        _check_layout(spec, options)
        table[key] = True
    options, note = _default_prompt(spec, options)
    est = ENGINE_FUNCS[options.engine](spec, options)
    if note is None:
        return est
    notes = est.assumptions.get("notes") or ()
    return replace(est, assumptions={**est.assumptions, "notes": (note, *notes)})


def _check_layout(spec: ModelSpec, options: InferenceOptions) -> None:
    """Refuse a TP/PP/EP layout the model cannot take, naming the factor."""
    if spec.moe is None and options.ep > 1:
        raise MemfitError.bad_value("ep", options.ep, "1 for a dense model")
    ParallelPlan(tp=options.tp, pp=options.pp, ep=options.ep).validate(spec)
    if spec.moe is not None and options.ep > 1 and spec.moe.num_experts % options.ep:
        raise MemfitError.bad_value("ep", options.ep,
                                    f"a divisor of the expert count {spec.moe.num_experts}")


def _default_prompt(spec: ModelSpec, o: InferenceOptions) -> tuple[InferenceOptions, str | None]:
    """The default prompt shrunk to fit a learned position table (GPT-2: 1,024 positions,
    so 896 + 128 generated); a prompt the user gave is kept (and refused if too long)."""
    n = spec.learned_positions
    if n and o.generate >= n and o.prompt is InferenceOptions.prompt:
        raise MemfitError.bad_value("generate", o.generate, f"< {n} (the model's learned "
                                    f"position table holds {n} positions, the prompt >= 1)")
    return default_within(o, "prompt", spec.learned_positions, o.generate,
                          "the learned position table (n_positions)")


def infer(model: ModelLike, **options: Any) -> Estimate:
    """Per-GPU memory of one inference scenario on its most loaded GPU.

    ``model``: a catalog name, a ``config.json`` path or folder, a config dict or a
    :class:`~memfit.arch.ModelSpec`. ``options``: the fields of
    :class:`~memfit.workload.InferenceOptions` (the CLI's flags with underscores):
    ``batch, prompt, generate, weights, kv_dtype, attn, logits, engine, tp, pp, ep, gpu,
    gpu_memory_utilization, block_size, n_gpu_layers``.
    """
    spec, _, checkpoint = resolve_model_full(model)
    opts = make_options(InferenceOptions, **options)
    est = estimate_inference(spec, opts)
    return est if checkpoint is None else apply_checkpoint(est, spec, opts, checkpoint)


_PLAIN_FLOATS = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")


def apply_checkpoint(est: Estimate, spec: ModelSpec, opts: InferenceOptions,
                     info: Any) -> Estimate:
    """Use the exact weight bytes read from a checkpoint's headers instead of the formula's.

    Which bytes the GPU holds: llama.cpp keeps a GGUF's tensors as stored; transformers and
    vLLM keep pre-quantized checkpoints (GPTQ, AWQ, FP8, bitsandbytes, MXFP4) as stored and
    cast plain float parameters to the load dtype (``weight_bytes_as``). The formula stays
    where the headers cannot say: a GGUF under transformers (dequantized on load), another
    ``--weights`` than the checkpoint's, split layouts (tp/pp/ep > 1) and llama.cpp offload.
    The gap between formula and headers is reported in ``extras['checkpoint']``.
    """
    from .memory.params import buffer_elements

    method = info.quant_method
    summary: dict[str, Any] = {"source": info.source, "stored_weight_bytes": info.weight_bytes,
                               "quantization": method, "notes": list(info.notes)}
    split = opts.tp > 1 or opts.pp > 1 or opts.ep > 1 or opts.n_gpu_layers is not None
    header: int | None = None
    if split:
        summary["used"] = "formula (the headers are not split per GPU here)"
    elif method == "gguf":
        if opts.engine == "llamacpp" and opts.weights is None:
            header = info.weight_bytes
        else:
            summary["used"] = "formula (transformers and vLLM dequantize GGUF on load)"
    elif method is not None:
        if opts.weights is None:
            header = info.weight_bytes + 4 * buffer_elements(spec)
        else:
            summary["used"] = f"formula (--weights {opts.weights} overrides the checkpoint)"
    elif opts.weights is None or opts.weights.lower() in _PLAIN_FLOATS:
        dtype = (opts.weights or spec.dtype).lower()
        header = info.weight_bytes_as(dtype) + 4 * buffer_elements(spec)
    else:
        summary["used"] = f"formula (--weights {opts.weights} quantizes on load)"
    if header is None:
        return replace(est, extras={**est.extras, "checkpoint": summary})
    formula = est.peak_phase.components.get("weights", 0)
    delta = header - formula
    summary.update(used="checkpoint headers", weight_bytes=header, formula_bytes=formula)
    phases = tuple(
        Phase(p.name, {**p.components, "weights": p.components["weights"] + delta})
        if "weights" in p.components else p for p in est.phases)
    term = Term("weights (checkpoint)", header, "sum of stored tensor bytes (+ fp32 buffers)",
                f"{header:,} (formula: {formula:,}, gap {delta:+,})",
                f"headers of {info.source}")
    return replace(est, phases=phases, terms=(*est.terms, term),
                   extras={**est.extras, "checkpoint": summary})


# ------------------------------------------------------------------------------------------
# fit_infer
# ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitResult:
    """The inverse questions for one model, scenario and GPU model.

    ``max_batch`` fits at the scenario's prompt + generate and ``max_batch + 1`` does not;
    ``max_prompt`` likewise at the scenario's batch; ``min_gpus`` is the fewest GPUs of this
    kind (``tp x pp``, the split in ``layout``) on which the scenario fits; ``None`` where
    nothing fits. For vLLM, ``kv_cache_tokens`` / ``kv_cache_blocks`` are the KV pool of the
    scenario's layout and ``max_concurrency`` the sequences of ``prompt + generate`` tokens it
    holds at once. For llama.cpp, ``max_gpu_layers`` is the largest ``n_gpu_layers`` that fits
    (``n_layer + 1`` puts the output layer on the GPU too).
    """

    model: str
    gpu: str
    gpu_memory_bytes: int
    engine: str
    options: Mapping[str, Any]
    fits: bool | None
    max_batch: int | None
    max_prompt: int | None
    min_gpus: int | None
    layout: Mapping[str, int] | None
    kv_cache_tokens: int | None = None
    kv_cache_blocks: int | None = None
    max_concurrency: int | None = None
    max_gpu_layers: int | None = None  # llama.cpp: the most --n-gpu-layers that fit
    total_bytes: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["options"] = dict(self.options)
        out["layout"] = dict(self.layout) if self.layout is not None else None
        out["notes"] = list(self.notes)
        return out


def _fits(est: Estimate) -> bool:
    """The fit predicate of ``fit``'s searches: nvidia-smi total within the card, and for the
    serving engines (vLLM, SGLang, Ollama: ``fits`` is "it starts") the scenario served as
    asked: the request within the engine's length and every sequence in its pool at once
    (``serves_request``, ``fits_concurrently``)."""
    x = est.extras
    if x.get("fits_concurrently") is False or x.get("serves_request") is False:
        return False
    ok = est.fits
    return bool(ok)


#: The most GPUs a fit sweep takes (``gpus``): 65,536, beyond the largest clusters; bounds
#: the layouts a sweep enumerates.
MAX_GPUS = 65_536


def _layouts(spec: ModelSpec, n: int, engine: str) -> list[tuple[int, int]]:
    """Valid (tp, pp) with tp * pp == n, TP first (TP within a node is the usual choice).
    llama.cpp's multi-GPU layer split is not modelled: one GPU only."""
    if engine in ("llamacpp", "ollama"):
        return [(1, 1)] if n == 1 else []
    out = []
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    for tp in sorted(set(small + [n // d for d in small]), reverse=True):
        pp = n // tp
        try:
            ParallelPlan(tp=tp, pp=pp).validate(spec)
        except MemfitError:
            continue
        out.append((tp, pp))
    return out


#: Counts the fewest-GPU search tries one by one between a power of two that does not fit and
#: the next that does; past it (a model that needs over 128 GPUs: 2,048 counts between 2,048
#: and 4,096 took 25 s) it bisects, then checks the counts just below its answer.
_SCAN_COUNTS = 64


def _fewest(layout_of: Any, lo: int, hi: int, notes: list[str]) -> int:
    """The fewest GPUs in ``[lo, hi]`` with a layout that fits (``hi`` has one)."""
    if hi - lo < _SCAN_COUNTS:
        return next(c for c in range(lo, hi + 1) if layout_of(c) is not None)
    a, b = lo, hi
    while a < b:  # more GPUs never fit worse (in practice): bisect
        mid = (a + b) // 2
        a, b = (a, mid) if layout_of(mid) is not None else (mid + 1, b)
    below = [c for c in range(max(lo, b - 16), b) if layout_of(c) is not None]
    found = below[0] if below else b
    notes.append(f"fewest GPUs: {found}, found by bisection between {lo} and {hi} (each count's "
                 "TP x PP splits tried) and a check of the 16 counts below")
    return found


def _check_gpus(gpus: Any) -> None:
    """``gpus`` must be an integer in ``[1, MAX_GPUS]``."""
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= MAX_GPUS:
        raise MemfitError.bad_value("gpus", gpus, f"an integer in [1, {MAX_GPUS}]")


def _fewest_gpus(spec: ModelSpec, opts: InferenceOptions, ok: Callable[[InferenceOptions], bool],
                 notes: list[str]) -> tuple[int | None, tuple[int, int] | None]:
    """The fewest GPUs that fit and their first fitting TP x PP layout (``None`` when none).

    1, 2, 4, ... then exact counts between (monotone in practice; each count tries every
    valid TP x PP split)."""
    min_gpus = layout = None
    limit = 4096
    n = 1
    tried: dict[int, tuple[int, int] | None] = {}

    def best_layout(count: int) -> tuple[int, int] | None:
        if count not in tried:
            tried[count] = next((lay for lay in _layouts(spec, count, opts.engine)
                                 if ok(replace(opts, tp=lay[0], pp=lay[1]))), None)
        return tried[count]

    hi = None
    while n <= limit:
        if best_layout(n) is not None:
            hi = n
            break
        n *= 2
    if hi is not None:
        min_gpus = _fewest(best_layout, hi // 2 + 1 if hi > 1 else 1, hi, notes)
        layout = best_layout(min_gpus)
    return min_gpus, layout


def _answer_options(spec: ModelSpec, opts: InferenceOptions, gpus: int | None,
                    layout: tuple[int, int] | None, ok: Callable[[InferenceOptions], bool],
                    notes: list[str]) -> InferenceOptions:
    """The options (layout) the batch and prompt questions are answered at."""
    if gpus is not None:
        lay = next((x for x in _layouts(spec, gpus, opts.engine)
                    if ok(replace(opts, tp=x[0], pp=x[1]))), None)
        if lay is None:
            lays = _layouts(spec, gpus, opts.engine)
            if not lays:
                raise MemfitError.bad_value("gpus", gpus,
                                            "a GPU count with a valid tp x pp split for "
                                            f"{spec.name}")
            lay = lays[0]
        return replace(opts, tp=lay[0], pp=lay[1])
    if ok(opts) or layout is None:
        return opts
    notes.append(f"the scenario does not fit tp={opts.tp} x pp={opts.pp}: batch and prompt "
                 f"answers use the fewest GPUs, tp={layout[0]} x pp={layout[1]}")
    return replace(opts, tp=layout[0], pp=layout[1])


def fit_infer(model: ModelLike, gpu: str, gpus: int | None = None, **options: Any) -> FitResult:
    """Largest batch, longest prompt, fewest GPUs (and vLLM's KV capacity) on ``gpu``.

    ``gpus``: the number of GPUs to use for the batch and prompt questions (default: the
    ``tp * pp`` of ``options``, or the fewest that fit when that layout does not).
    """
    spec, _ = resolve_model(model)
    if gpu is None:
        raise MemfitError.bad_value("gpu", gpu, "a GPU name (see `memfit gpus`)")
    opts = make_options(InferenceOptions, **{**options, "gpu": gpu})
    from .hardware import get_gpu

    card = get_gpu(gpu)
    opts, note = _default_prompt(spec, opts)
    notes: list[str] = [note] if note else []

    def est(o: InferenceOptions) -> Estimate:
        return estimate_inference(spec, o)

    def ok(o: InferenceOptions) -> bool:
        try:
            return _fits(est(o))
        except MemfitError:
            return False

    if gpus is not None:
        _check_gpus(gpus)
    min_gpus, layout = _fewest_gpus(spec, opts, ok, notes)
    base = _answer_options(spec, opts, gpus, layout, ok, notes)
    max_batch = largest_true(lambda x: ok(replace(base, batch=x)), 1, MAX_COUNT)
    cap, bound = _prompt_cap(spec, base)
    max_prompt = largest_true(lambda x: ok(replace(base, prompt=x)), 1, cap)
    max_layers, max_batch, max_prompt = _llamacpp_answers(spec, base, ok, max_batch,
                                                          max_prompt, cap, notes)
    e = est(base)
    kv_tokens = e.extras.get("kv_cache_tokens")
    kv_blocks = e.extras.get("kv_cache_blocks")
    conc = e.extras.get("scenario_concurrency")
    notes.extend(_fit_notes(base, e, max_prompt, cap, bound, max_layers, spec.num_layers))
    return FitResult(model=spec.name, gpu=card.name, gpu_memory_bytes=card.usable_bytes,
                     engine=base.engine, options=asdict(base), fits=bool(e.fits),
                     max_batch=max_batch, max_prompt=max_prompt, min_gpus=min_gpus,
                     layout={"tp": layout[0], "pp": layout[1]} if layout else None,
                     kv_cache_tokens=kv_tokens, kv_cache_blocks=kv_blocks, max_concurrency=conc,
                     max_gpu_layers=max_layers, total_bytes=e.total_bytes, notes=tuple(notes))


def _llamacpp_answers(spec: ModelSpec, base: InferenceOptions, ok: Any,
                      max_batch: int | None, max_prompt: int | None, cap: int,
                      notes: list[str]) -> tuple[int | None, int | None, int | None]:
    """llama.cpp: the largest ``--n-gpu-layers`` that fits and, when full offload fits
    nothing and no ``-ngl`` was asked, the batch and prompt answers at that partial offload
    (said in the notes)."""
    if base.engine != "llamacpp":
        return None, max_batch, max_prompt
    L = spec.num_layers
    layers = largest_true(lambda x: ok(replace(base, n_gpu_layers=x)), 0, L + 1)
    if max_batch is None and layers is not None and base.n_gpu_layers is None:
        part = replace(base, n_gpu_layers=layers)
        max_batch = largest_true(lambda x: ok(replace(part, batch=x)), 1, MAX_COUNT)
        max_prompt = largest_true(lambda x: ok(replace(part, prompt=x)), 1, cap)
        notes.append(f"full offload ({L + 1} layers) does not fit: the batch and prompt "
                     f"answers are at --n-gpu-layers {layers}, the rest in host RAM")
    return layers, max_batch, max_prompt


def _prompt_cap(spec: ModelSpec, o: InferenceOptions) -> tuple[int, str]:
    """The longest prompt worth searching and what bounds it: the model's context limit less
    the generated tokens (vLLM: its ``max_model_len``, derived as vLLM derives it; GPT-2's
    learned position table; otherwise ``max_position_embeddings``), else the option's own
    bound."""
    if o.engine == "vllm":
        from .engines import vllm_derived_max_len

        limit = o.max_model_len or vllm_derived_max_len(spec)
        what = f"max_model_len {limit}"
    elif spec.learned_positions:
        limit = spec.learned_positions
        what = f"the learned position table ({limit})"
    elif spec.max_position_embeddings:
        limit = spec.max_position_embeddings
        what = f"the model's context limit {limit} (max_position_embeddings)"
    else:
        return MAX_COUNT, "the option's bound"
    return max(1, limit - o.generate), what


def _fit_notes(o: InferenceOptions, e: Estimate, max_prompt: int | None, cap: int, bound: str,
               max_layers: int | None, n_layers: int) -> list[str]:
    """Which bound the answers hit, said next to them."""
    notes = []
    if max_prompt is not None and max_prompt == cap:
        notes.append(f"longest prompt: capped by {bound} less the {o.generate} generated "
                     "tokens, not by memory")
    largest = e.extras.get("largest_max_model_len")
    if e.extras.get("starts") is False:
        fix = (f"--max-model-len {largest} starts" if largest else
               "no --max-model-len starts on this layout")
        notes.append(f"vLLM does not start with max_model_len {e.extras.get('max_model_len')}: "
                     f"{fix}")
    if max_layers is not None and max_layers <= n_layers:
        notes.append(f"llama.cpp: at most --n-gpu-layers {max_layers} fit ({n_layers + 1} "
                     f"offloads all {n_layers} layers and the output layer)")
    return notes
