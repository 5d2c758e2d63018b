"""Text views of estimates: the per-GPU table, the phase timeline, the fit verdict, the
assumptions, the ``--explain`` derivations (with the seed's rules of thumb checked against
them), the ``fit`` answers, and a progress line for slow work.

Pure functions returning ``str``; only the CLI prints. The one exception is :class:`Progress`,
which writes to stderr by design (it is what a user watches while a sweep or a trace runs).
Plain text, no third-party renderer: the CLI must start fast and the output must be easy to
paste, diff and test (golden files under ``tests/golden``).

Every number is printed in one unit chosen by the caller (``--units``, GiB by default) and
every header names it; bytes stay integers until this module divides them.
"""

from __future__ import annotations

import math
import os
import sys
import textwrap
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import fields
from typing import IO, Any, TypeVar

from .memory.breakdown import REQUIRED_COMPONENTS, Estimate
from .units import DEFAULT_UNIT, UNITS, check_unit

__all__ = [
    "ORDER",
    "Progress",
    "component_label",
    "describe_scenario",
    "fmt_bytes",
    "ordered_components",
    "progress",
    "render_estimate",
    "render_explain",
    "render_fit",
    "render_seed_check",
    "seed_check",
    "table",
    "unit_note",
]

# The seed's order: weights, gradients, optimizer state, activations, KV cache; then the
# tensors it calls buffers (logits, temporaries, communication buckets) in first-seen order.
ORDER = REQUIRED_COMPONENTS

_LABELS = {
    "weights": "weights",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "activations": "activations",
    "kv_cache": "KV cache",
    "logits": "logits",
    "temporaries": "temporaries",
    "comm_buffers": "communication buffers",
    "cuda_context": "CUDA context",
    "allocator_slack": "allocator slack",
    "cublas_workspace": "cuBLAS workspace",
    "nccl_buffers": "NCCL buffers",
    "cuda_graphs": "CUDA graphs",
    "non_torch": "non-torch memory",
}

_PHASE_LABELS = {"optimizer": "optimizer step"}

WRAP = 100  # text width of the prose parts (tables are as wide as they need)


# ---------------------------------------------------------------------------------------
# Small building blocks
# ---------------------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """A plain aligned text table: a header, a rule, the rows; columns in ``right`` are
    right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(headers, *cells, strict=False)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=False))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, cells)])


def _digits(unit: str) -> int:
    return 0 if unit == "B" else 2


def fmt_bytes(n_bytes: int | float, unit: str = DEFAULT_UNIT, *, suffix: bool = False) -> str:
    """``n_bytes`` in ``unit`` with thousands separators (``'14.96'``, ``'15,316.02'``);
    ``suffix`` appends the unit."""
    unit = check_unit(unit)
    text = f"{n_bytes / UNITS[unit]:,.{_digits(unit)}f}"
    return f"{text} {unit}" if suffix else text


def _num(n_bytes: int, unit: str) -> str:  # kept for callers of the first version
    return fmt_bytes(n_bytes, unit)


def unit_note(unit: str) -> str:
    """``'1 GiB = 2^30 = 1,073,741,824 bytes'``: what a header says about its unit."""
    unit = check_unit(unit)
    size = UNITS[unit]
    if size == 1:
        return "bytes"
    power = ""
    if size & (size - 1) == 0:
        power = f"2^{size.bit_length() - 1} = "
    else:
        k = round(math.log10(size))
        if 10**k == size:
            power = f"10^{k} = "
    return f"1 {unit} = {power}{size:,} bytes"


def component_label(name: str) -> str:
    """A component's name for people (``kv_cache`` -> ``KV cache``)."""
    return _LABELS.get(name, name.replace("_", " "))


def _phase_label(name: str) -> str:
    return _PHASE_LABELS.get(name, name)


def ordered_components(names: Iterable[str]) -> list[str]:
    """The seed's order first (weights, gradients, optimizer states, activations, KV cache),
    then the other components in the order they were first seen."""
    seen = list(dict.fromkeys(names))
    return [n for n in ORDER] + [n for n in seen if n not in ORDER]


def _bar(fraction: float, width: int = 20) -> str:
    n = round(max(0.0, min(1.0, fraction)) * width)
    return "#" * n


def _wrap(text: str, indent: str = "", first: str | None = None) -> str:
    return textwrap.fill(text, width=WRAP, initial_indent=indent if first is None else first,
                         subsequent_indent=indent, break_on_hyphens=False,
                         break_long_words=False)


def _option_defaults(mode: str) -> dict[str, Any]:
    from .workload import InferenceOptions, TrainingOptions

    cls = InferenceOptions if mode == "infer" else TrainingOptions
    return {f.name: f.default for f in fields(cls)}


def describe_scenario(mode: str, options: Mapping[str, Any],
                      skip: Sequence[str] = ("gpu",)) -> str:
    """The scenario in a few words: the workload's size first, then every option that
    differs from its default (``batch 1 x seq 2048, bf16-mixed, adamw, dp=8, zero=2``).
    Options named in ``skip`` are left out (the compare table shows them in columns)."""
    o = dict(options)
    defaults = _option_defaults(mode)
    shown: list[str] = []
    done = set(skip)
    if mode == "infer":
        size = []
        if "batch" not in done:
            size.append(f"batch {o.get('batch', 1)}")
        if "prompt" not in done:
            size.append(f"prompt {o.get('prompt')}")
        if "generate" not in done:
            size.append(f"generate {o.get('generate')}")
        if size:
            shown.append(", ".join(size) + (" tokens" if "generate" not in done else ""))
        done |= {"batch", "prompt", "generate"}
        if "engine" not in done:
            shown.append(f"engine {o.get('engine', 'hf')}")
        done.add("engine")
    else:
        size = []
        if "batch" not in done:
            size.append(f"batch {o.get('batch', 1)}")
        if "seq" not in done:
            size.append(f"seq {o.get('seq')}")
        if size:
            shown.append(" x ".join(size))
        for key in ("precision", "optimizer"):
            if key not in done and key in o:
                shown.append(str(o[key]))
        done |= {"batch", "seq", "precision", "optimizer"}
    for key, value in o.items():
        if key in done or key not in defaults or value == defaults[key]:
            continue
        if value is True:
            shown.append(key.replace("_", "-"))
        else:
            shown.append(f"{key.replace('_', '-')}={value}")
    return ", ".join(shown)


_MODE_WORDS = {"infer": "inference", "train": "training"}


# ---------------------------------------------------------------------------------------
# The estimate
# ---------------------------------------------------------------------------------------

def _gpu_words(name: str, memory_bytes: int, unit: str) -> str:
    marketed = ""
    try:
        from .hardware import get_gpu

        card = get_gpu(name)
        marketed = "" if card.vendor == "custom" else f"{card.marketed} marketed, "
    except Exception:  # a GPU unknown to the catalog (tests, custom) has no marketed figure
        pass
    return f"{name} ({marketed}{fmt_bytes(memory_bytes, unit, suffix=True)} usable)"


def _engine_label(est: Estimate, name: str) -> str:
    """A component in the engine's own words where it has them (llama.cpp's buffers:
    ``extras["component_words"]``)."""
    words = est.extras.get("component_words") or {}
    return words.get(name) or component_label(name)


def _breakdown_rows(est: Estimate, unit: str) -> list[list[str]]:
    comps = dict(est.components)
    peak = est.peak_bytes
    rows: list[list[str]] = []
    ggml = bool(est.extras.get("component_words"))
    for name in ordered_components(comps):
        value = comps.get(name, 0)
        if value == 0:
            if not ggml:
                rows.append([component_label(name), "-", "-", ""])
            continue
        share = value / peak if peak else 0.0
        rows.append([_engine_label(est, name), fmt_bytes(value, unit), f"{100 * share:.1f}%",
                     _bar(share)])
    rows.append(["= GPU buffers" if ggml else "= peak (tensors)", fmt_bytes(peak, unit),
                 "100.0%", "the CUDA0 buffers llama.cpp logs" if ggml else
                 "what torch.cuda.max_memory_allocated() reports"])
    for name, value in est.overheads.items():
        rows.append([f"+ {component_label(name)}", fmt_bytes(value, unit), "", ""])
    rows.append(["= total", fmt_bytes(est.total_bytes, unit), "",
                 "what nvidia-smi shows (tensors + runtime overheads)"])
    return rows


def _phase_table(est: Estimate, unit: str) -> str:
    names = ordered_components(n for p in est.phases for n in p.components)
    live = [n for n in names if any(p.components.get(n, 0) for p in est.phases)]
    peak_moment = est.extras.get("peak_moment")
    rows = []
    for p in est.phases:
        mark = ""
        if p is est.peak_phase:
            at = (isinstance(peak_moment, str)
                  and peak_moment.split("/")[0] == p.name)  # a moment of this phase
            mark = "<- peak" + (f" (at {peak_moment})" if at else "")
        rows.append([_phase_label(p.name)]
                    + [fmt_bytes(p.components[n], unit) if p.components.get(n) else "-"
                       for n in live]
                    + [fmt_bytes(p.peak_bytes, unit), mark])
    headers = ["phase"] + [_engine_label(est, n) for n in live] + ["peak", ""]
    right = tuple(range(1, len(live) + 2))
    return table(headers, rows, right=right)


_ENGINE_WORDS = {"vllm": "vLLM", "sglang": "SGLang", "ollama": "Ollama", "llamacpp": "llama.cpp",
                 "hf": "transformers"}


def _verdict(est: Estimate, unit: str) -> list[str]:
    blockers = list(est.extras.get("blockers") or ())
    if est.gpu is None or est.gpu_memory_bytes is None:
        return ([f"Fit: DOES NOT RUN as asked: {b}." for b in blockers] +
                ["Fit: no --gpu given (name one, e.g. --gpu h100, to check the fit; "
                 "`memfit gpus` lists them)."])
    cap = est.gpu_memory_bytes
    total = est.total_bytes
    head = cap - total
    gpu = _gpu_words(est.gpu, cap, unit)
    out = []
    engine = _ENGINE_WORDS.get(str(est.options.get("engine")), "the engine")
    if est.extras.get("starts") is False:
        out.append(f"Fit: DOES NOT START on {gpu}: {engine} refuses to start or runs out of "
                   "memory starting.")
    elif est.fits and est.extras.get("serves_request") is False:
        out.append(f"Fit: STARTS on {gpu}, BUT DOES NOT SERVE THIS REQUEST AS ASKED (below): "
                   f"total {fmt_bytes(total, unit, suffix=True)}, headroom "
                   f"{fmt_bytes(head, unit, suffix=True)}.")
    elif est.fits:
        out.append(f"Fit: FITS on {gpu}: total {fmt_bytes(total, unit, suffix=True)}, headroom "
                   f"{fmt_bytes(head, unit, suffix=True)} ({100 * head / cap:.1f}% of the GPU).")
    elif head >= 0:
        out.append(f"Fit: DOES NOT FIT on {gpu} as asked: total "
                   f"{fmt_bytes(total, unit, suffix=True)} is within the GPU, but:")
    else:
        out.append(f"Fit: DOES NOT FIT on {gpu}: total {fmt_bytes(total, unit, suffix=True)}, "
                   f"{fmt_bytes(-head, unit, suffix=True)} over ({100 * total / cap:.0f}% of "
                   "the GPU).")
    out.extend(_wrap(b, indent="       ", first="     - ") for b in blockers)
    if "kv_cache_tokens" in est.extras and est.extras.get("starts"):
        x = est.extras
        out.append(f"     {engine} starts: KV pool {x['kv_cache_tokens']:,} tokens, context "
                   f"length {x['max_model_len']:,}, maximum concurrency "
                   f"{x['max_concurrency']}x at that length.")
    # the engine starts, but serves the request otherwise than asked (rejected, truncated
    # or queued): said under the verdict, which stays the engine's own
    out.extend(_wrap(w, indent="       ", first="     ! ")
               for w in est.extras.get("warnings") or ())
    if not est.fits:
        out.append(f"     `memfit fit {est.model} {est.mode} --gpu {est.gpu}` finds the batch, "
                   "context and layouts that fit.")
    return out


def _fmt_value(key: str, value: Any, unit: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key.endswith("_bytes"):
        return f"{fmt_bytes(value, unit, suffix=True)} ({value:,} bytes)"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_fmt_value(str(k), v, unit)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value)
    return str(value)


def _key_label(key: str) -> str:
    return key.replace("_", " ")


def _kv_lines(items: Mapping[str, Any], unit: str, indent: str = "  ") -> list[str]:
    if not items:
        return []
    width = max(len(_key_label(k)) for k in items)
    out = []
    for key, value in items.items():
        head = f"{indent}{_key_label(key).ljust(width)}  "
        out.append(_wrap(_fmt_value(key, value, unit), indent=" " * len(head), first=head))
    return out


def _notes(est: Estimate) -> list[str]:
    notes = est.assumptions.get("notes") or ()
    if isinstance(notes, str):
        notes = (notes,)
    return [str(n) for n in notes]


def render_estimate(est: Estimate, unit: str = DEFAULT_UNIT) -> str:
    """The terminal report of ``infer`` / ``train``: the scenario, the per-GPU table in the
    seed's order with each part's share, the phase timeline and the phase that sets the
    peak, the fit verdict, the details and the assumptions in force."""
    unit = check_unit(unit)
    out = [f"{est.model}, {_MODE_WORDS.get(est.mode, est.mode)}: "
           f"{describe_scenario(est.mode, est.options)}",
           f"Memory of the most loaded GPU, in {unit} ({unit_note(unit)})",
           ""]
    out.append(table(["component", unit, "share", ""], _breakdown_rows(est, unit),
                     right=(1, 2)))
    out.append("")
    out.append(f"Phases (what is live at each phase's own peak, {unit}):")
    out.append(_phase_table(est, unit))
    out.append("")
    out.extend(_verdict(est, unit))
    if est.host_bytes:
        out.append(f"Host (CPU) memory for offloaded tensors: "
                   f"{fmt_bytes(est.host_bytes, unit, suffix=True)}")
    # blockers and warnings are printed under the verdict; empty lists say nothing
    scalars = {k: v for k, v in est.extras.items()
               if not isinstance(v, Mapping) and k not in ("peak_moment", "blockers", "warnings")
               and v != [] and v != ()}
    if scalars:
        out.append("")
        out.append("Details:")
        out.extend(_kv_lines(scalars, unit))
    assumptions = {k: v for k, v in est.assumptions.items() if k != "notes"}
    if assumptions:
        out.append("")
        out.append("Assumptions:")
        out.extend(_kv_lines(assumptions, unit))
    notes = _notes(est)
    if notes:
        out.append("")
        out.append("Notes:")
        out.extend(_wrap(n, indent="    ", first="  - ") for n in notes)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# --explain
# ---------------------------------------------------------------------------------------

def _symbols(spec: Any) -> str:
    from .memory.params import count_params

    c = count_params(spec)
    parts = [f"L={spec.num_layers} layers", f"h={spec.hidden_size} hidden size",
             f"a={spec.num_heads} heads", f"a_kv={spec.num_kv_heads} KV heads",
             f"d={spec.head_dim} head dim"]
    if spec.intermediate_size:
        parts.append(f"I={spec.intermediate_size} MLP width")
    parts.append(f"V={spec.vocab_size} vocabulary")
    if spec.moe is not None:
        parts.append(f"E={spec.moe.num_experts} experts, k={spec.moe.top_k} per token, "
                     f"I_e={spec.moe.expert_intermediate_size} expert width")
    parts.append(f"P={c.total:,} parameters" + (f" ({c.active:,} active per token)"
                                                 if c.active != c.total else ""))
    return ", ".join(parts)


def _resolve_spec(est: Estimate, spec: Any) -> Any:
    if spec is not None:
        return spec
    try:
        from .catalog import resolve_model

        return resolve_model(est.model)[0]
    except Exception:  # a model given by a path we no longer have: no symbols, no seed check
        return None


def _sum_line(parts: Sequence[tuple[str, int]]) -> str:
    return " + ".join(f"{name} {value:,}" for name, value in parts)


def render_explain(est: Estimate, unit: str = DEFAULT_UNIT, spec: Any = None) -> str:
    """Every term: its formula in symbols, the same with the numbers substituted, the result
    and its source; then how the terms add up to the peak and the total, the GPU's headroom,
    and where the seed's rules of thumb would give a different number and why.

    ``spec`` (a :class:`~memfit.arch.ModelSpec`) gives the symbols' values and the seed
    check; without it the model is looked up by ``est.model`` (catalog names resolve)."""
    unit = check_unit(unit)
    spec = _resolve_spec(est, spec)
    out = [f"How each number was computed: {est.model}, {_MODE_WORDS.get(est.mode, est.mode)}: "
           f"{describe_scenario(est.mode, est.options)}",
           f"Results in bytes and {unit} ({unit_note(unit)}).",
           ]
    if spec is not None:
        out.append(_wrap("Model symbols: " + _symbols(spec) + "."))
    for i, t in enumerate(est.terms, 1):
        out.append("")
        out.append(f"{i}. {t.name}")
        out.append(_wrap(f"{t.name} = {t.formula}", indent="            ", first="   formula  "))
        out.append(_wrap(f"= {t.substituted}", indent="            ", first="   numbers  "))
        out.append(f"   result   = {t.bytes:,} bytes = {fmt_bytes(t.bytes, unit, suffix=True)}")
        out.append(_wrap(t.source, indent="            ", first="   source   "))
        if t.note:
            out.append(_wrap(t.note, indent="            ", first="   note     "))

    # How the parts add up.
    comps = [(n, v) for n, v in est.components.items()]
    phase = est.peak_phase
    out.append("")
    out.append(f"Adding up (the peak is in phase {_phase_label(phase.name)}; the other phases "
               "are lower):")
    out.append(_wrap(f"peak = {_sum_line(comps)}", indent="         ", first="  "))
    out.append(f"       = {est.peak_bytes:,} bytes = {fmt_bytes(est.peak_bytes, unit, suffix=True)}"
               "  (torch.cuda.max_memory_allocated())")
    if est.overheads:
        over = [("peak", est.peak_bytes)] + list(est.overheads.items())
        out.append(_wrap(f"total = {_sum_line(over)}", indent="          ", first="  "))
        out.append(f"        = {est.total_bytes:,} bytes = "
                   f"{fmt_bytes(est.total_bytes, unit, suffix=True)}  (nvidia-smi)")
    if est.gpu is not None and est.gpu_memory_bytes is not None:
        head = est.gpu_memory_bytes - est.total_bytes
        out.append(f"  headroom = {est.gpu_memory_bytes:,} ({est.gpu}) - {est.total_bytes:,} "
                   f"= {head:,} bytes = {fmt_bytes(head, unit, suffix=True)}"
                   f" -> {'fits' if head >= 0 else 'does not fit'}")

    dicts = {k: v for k, v in est.extras.items() if isinstance(v, Mapping)}
    if dicts:
        out.append("")
        out.append("Breakdowns behind the numbers:")
        for key, value in dicts.items():
            out.append(f"  {_key_label(key)}:")
            byteish = "bytes" in key or key in ("moments", "weights_by_component")
            rows = [[str(k), f"{v:,}" if isinstance(v, int) else str(v),
                     fmt_bytes(v, unit) if (byteish and isinstance(v, int)) else ""]
                    for k, v in value.items()]
            out.append(textwrap.indent(table(["part", "bytes" if byteish else "value",
                                              unit if byteish else ""], rows, right=(1, 2)),
                                       "    "))
    if spec is not None:
        seed = render_seed_check(est, spec, unit)
        if seed:
            out.append("")
            out.append(seed)
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# The seed's rules of thumb, checked
# ---------------------------------------------------------------------------------------

def _weight_bits(est: Estimate) -> float:
    """Bits per parameter of the weights' format, as the seed would take it (P x bytes)."""
    name = est.assumptions.get("weights")
    if not isinstance(name, str):
        return 16.0
    try:
        from .dtypes import get_ggml_type, resolve_weights

        fmt: Any = resolve_weights(name)
        if not hasattr(fmt, "bits_per_element"):
            fmt = get_ggml_type(fmt.default_type)
        return float(fmt.bits_per_element)
    except Exception:
        try:
            from .dtypes import get_format

            return float(get_format(name.split()[0]).bits_per_element)
        except Exception:
            return 16.0


def _phase_components(est: Estimate, name: str) -> Mapping[str, int]:
    for p in est.phases:
        if p.name == name:
            return p.components
    return est.components


def _u(n: float) -> str:
    """A byte count the seed-check renderer formats in the unit."""
    return "{" + f"{int(n)}" + "}"


def _seed_infer(est: Estimate, P: int, P_act: int, moe: bool, L: int, h: int,
                B: int) -> list[tuple[str, str]]:
    """The seed's inference rules beside memfit's numbers."""
    o = est.options
    comps = est.components
    out: list[tuple[str, str]] = []
    bits = _weight_bits(est)
    b = bits / 8
    P_seed = P_act if moe else P
    w_seed = P_seed * b
    w_mem = comps.get("weights", 0)
    if moe:
        why = (f"the seed's MoE example counts the {P_act:,} active parameters; every expert "
               f"must be resident, so memfit counts all {P:,} (active parameters set "
               "compute, not memory).")
    else:
        why = ("the same rule; memfit counts every tensor in its stored format (quantization "
               "scales, layers left unquantized, buffers), per GPU after any split.")
    out.append(("weights", f"seed P x b = {P_seed:,} x {b:g} = {_u(w_seed)}; memfit "
                           f"{_u(w_mem)}: {why}"))
    T = int(o.get("prompt", 0)) + int(o.get("generate", 0))
    kv = comps.get("kv_cache", 0)
    per_tok = est.extras.get("kv_bytes_per_token")
    tok = (f", {per_tok:,} bytes per token, {_u(per_tok * B * T)} for batch {B} x {T:,} "
           "tokens at the end of decoding" if isinstance(per_tok, int) else "")
    out.append(("KV cache", f"seed: not counted; memfit {_u(kv)} at the peak{tok}: the "
                            "seed's inference sum has no KV cache, which is what grows with "
                            "batch and context."))
    b_act = 2
    a_seed = B * T * h * L * b_act
    a_mem = comps.get("activations", 0) + comps.get("logits", 0)
    out.append(("activations", f"seed B x S x h x L x b = {B} x {T:,} x {h} x {L} x {b_act} "
                               f"= {_u(a_seed)}; memfit {_u(a_mem)} (activations and logits "
                               "at the peak): inference keeps nothing for a backward "
                               "pass, so only one layer's working set is live at a time, "
                               "plus the logits (B x S x V, often upcast to fp32)."))
    total_seed = w_seed + a_seed
    out.append(("total", f"seed W + A = {_u(total_seed)}; memfit peak {_u(est.peak_bytes)}, "
                         f"total {_u(est.total_bytes)}: the seed has no CUDA context, "
                         "allocator slack or library workspaces, which nvidia-smi shows."))
    return out


def _seed_states_why(est: Estimate, P: int, moe: bool, lora: bool, sharded: bool) -> str:
    """Why memfit's training model states differ from the seed's 4 W."""
    o = est.options
    precision = str(o.get("precision", ""))
    trainable = est.assumptions.get("trainable_params_on_rank")
    dp = int(o.get("dp", 1))
    if lora:
        why = (f"LoRA freezes the base: no gradients or optimizer state for it, only for the "
               f"{trainable:,} adapter parameters; the seed has no rule for adapters."
               if isinstance(trainable, int) else "LoRA freezes the base; the seed has no rule "
               "for adapters.")
    elif precision in ("bf16-true", "fp16-true") and not sharded:
        why = ("pure 16-bit training with 16-bit Adam state is the seed's own assumption, so "
               "the two agree up to buffers and exact tensor sizes.")
    elif precision in ("bf16-mixed", "fp16-mixed", "bf16-master", "fp32"):
        conv = est.assumptions.get("model_states_convention", precision)
        why = (f"{conv}. The usual mixed-precision Adam keeps fp32 master weights and fp32 m "
               "and v: 16 bytes per parameter (ZeRO paper), not the seed's 8, which holds only "
               "for pure 16-bit training (--precision bf16-true).")
    else:
        why = str(est.assumptions.get("model_states_convention", ""))
    if moe and not lora:
        why += (f" For MoE the seed counts gradients and state of the active experts only "
                f"(~3 x W_active); every expert has weights, gradients and optimizer state, so "
                f"model states scale with all {P:,} parameters.")
    if sharded and not lora:
        why += f" Per GPU, sharded over dp={dp} ranks (see ZeRO below)."
    return why


def _seed_train_activations(est: Estimate, L: int, h: int, a: int,
                            B: int) -> tuple[tuple[str, str], int]:
    """The seed's training activation rule beside memfit's, and the seed's A (one x)."""
    o = est.options
    S = int(o.get("seq", 0))
    a_inf = B * S * h * L * 2
    a_mem = max(p.components.get("activations", 0) + p.components.get("logits", 0)
                for p in est.phases)
    eager = o.get("attn") == "eager"
    k_layer = S * B * h * (34 + (5 * a * S / h if eager else 0))
    ckpt = o.get("checkpointing", "none")
    ck_text = {"full": " Full checkpointing keeps one layer input per layer (the seed's "
                       "reduction) and recomputes the rest in backward.",
               "selective": " Selective checkpointing drops the attention scores and "
                            "recomputes them."}.get(str(ckpt), "")
    s2 = ("eager attention keeps the s^2 term" if eager
          else "the s^2 term vanishes with SDPA/flash attention")
    item = ("activations", f"seed (2 to 3) x B x S x h x L x 2 = {_u(2 * a_inf)} to "
                           f"{_u(3 * a_inf)}; memfit {_u(a_mem)} (largest over the phases, "
                           f"logits and autocast copies included): training saves every "
                           f"layer's intermediate tensors for backward, per layer ~ s b h "
                           f"(34 + 5 a s / h) bytes in 16 bits (Korthikanti et al. 2022; "
                           f"{s2}): {L} x {_u(k_layer)} = {_u(L * k_layer)} for a GPT "
                           f"layer.{ck_text}")
    return item, a_inf


def _seed_zero(est: Estimate, P: int, states_mem: int) -> tuple[str, str]:
    """The ZeRO paper's per-GPU model states beside memfit's (sharded training)."""
    from .memory.model_states import zero_paper_model_states

    o = est.options
    dp = int(o.get("dp", 1))
    zero = int(o.get("zero", 0))
    fsdp = o.get("fsdp")
    stage = zero if zero else {"full": 3, "grad-op": 2, "hybrid": 3}.get(str(fsdp), 0)
    N = dp
    paper = zero_paper_model_states(P, N, stage)
    gain = ("; with one GPU sharding gains nothing (N = 1)" if N == 1 else "")
    return ("ZeRO", f"seed: per-GPU 0.3 to 0.6 x dense; the ZeRO paper (K = 12, "
                    f"N = {N}) gives stage {stage}: {_u(paper)} of model states per GPU"
                    f"; memfit {_u(states_mem)} with the recipe's real bytes per "
                    f"parameter{gain}.")


def _seed_train(est: Estimate, P: int, P_act: int, moe: bool, L: int, h: int, a: int,
                B: int) -> list[tuple[str, str]]:
    """The seed's training rules beside memfit's numbers."""
    o = est.options
    out: list[tuple[str, str]] = []
    opt = _phase_components(est, "optimizer")
    w_mem = opt.get("weights", 0)
    g_mem = opt.get("gradients", 0)
    s_mem = opt.get("optimizer_states", 0)
    states_mem = w_mem + g_mem + s_mem
    P_seed = P_act if moe else P
    W16 = 2 * P_seed
    seed_states = 4 * W16  # W + G + 2W (Adam's m and v), all 16-bit
    lora = o.get("lora_rank") is not None
    sharded = bool(int(o.get("zero", 0))) or bool(o.get("fsdp"))
    why = _seed_states_why(est, P, moe, lora, sharded)
    out.append(("model states", f"seed W + G + O = 4 W = 4 x 2 x {P_seed:,} = "
                                f"{_u(seed_states)} (weights, gradients, Adam m and v, all "
                                f"16-bit); memfit {_u(states_mem)} (weights {_u(w_mem)} + "
                                f"gradients {_u(g_mem)} + optimizer states {_u(s_mem)}, at "
                                f"the optimizer step): {why}"))
    act, a_inf = _seed_train_activations(est, L, h, a, B)
    out.append(act)
    if sharded and not lora:
        out.append(_seed_zero(est, P, states_mem))
    buffers = sum(v for k, v in est.components.items() if k not in ORDER)
    out.append(("buffers", f"seed 0.1 to 0.2 W = {_u(0.1 * W16)} to {_u(0.2 * W16)}; memfit "
                           f"{_u(buffers)} of temporaries, logits and buckets at the peak "
                           f"plus {_u(sum(est.overheads.values()))} of runtime overheads (CUDA "
                           f"context, allocator slack, NCCL)."))
    lo = 4.1 * W16 + 2 * a_inf
    hi = 4.1 * W16 + 3 * a_inf
    out.append(("total", f"seed 4.1 W + (2 to 3) A = {_u(lo)} to {_u(hi)}; memfit peak "
                         f"{_u(est.peak_bytes)}, total {_u(est.total_bytes)}."))
    return out


def seed_check(est: Estimate, spec: Any) -> list[tuple[str, str]]:
    """The seed's rules of thumb (``shared/seed/NOTES.md``) applied to this scenario, each
    beside memfit's number and why they differ: a list of (part, text)."""
    from .memory.params import count_params

    counts = count_params(spec)
    P, P_act = counts.total, counts.active
    moe = spec.moe is not None
    o = est.options
    L, h, a = spec.num_layers, spec.hidden_size, spec.num_heads
    B = int(o.get("batch", 1))
    if est.mode == "infer":
        return _seed_infer(est, P, P_act, moe, L, h, B)
    return _seed_train(est, P, P_act, moe, L, h, a, B)


def render_seed_check(est: Estimate, spec: Any, unit: str = DEFAULT_UNIT) -> str:
    """:func:`seed_check` as text, every byte count in ``unit``."""
    unit = check_unit(unit)
    try:
        items = seed_check(est, spec)
    except Exception:  # the check is commentary; never let it break an explanation
        return ""
    if not items:
        return ""

    import re

    def fill(text: str) -> str:
        return re.sub(r"\{(-?\d+)\}", lambda m: fmt_bytes(int(m.group(1)), unit, suffix=True),
                      text)

    out = [_wrap("Back-of-envelope rules of thumb (\"seed\" below: weights = P x bytes, "
                 "activations = B x S x h x L x bytes, no KV cache or runtime overheads; "
                 f"here in {unit}) against memfit's numbers:")]
    for part, text in items:
        out.append(_wrap(f"{part}: {fill(text)}", indent="    ", first="  - "))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------

def _n(x: int | None, what: str = "") -> str:
    return "nothing fits" if x is None else f"{x:,}{what}"


def render_fit(result: Any, unit: str = DEFAULT_UNIT) -> str:
    """The answers of ``memfit fit``: for inference (``inference.FitResult``) the largest batch,
    the longest prompt, the fewest GPUs and vLLM's KV capacity; for training
    (``training.FitResult``) the largest micro-batch, the longest sequence and the layouts
    that fit, best first."""
    unit = check_unit(unit)
    if hasattr(result, "layouts"):
        return _render_fit_train(result, unit)
    return _render_fit_infer(result, unit)


def _render_fit_infer(r: Any, unit: str) -> str:
    o = dict(r.options)
    gpu = _gpu_words(r.gpu, r.gpu_memory_bytes, unit)
    lay = f"tp={o.get('tp', 1)} x pp={o.get('pp', 1)}"
    out = [f"{r.model}, inference on {gpu}: {describe_scenario('infer', o)}",
           f"Exact boundaries: each answer fits and one more does not. Memory in {unit} "
           f"({unit_note(unit)}).", ""]
    verdict = "FITS" if r.fits else "DOES NOT FIT"
    total = f", total {fmt_bytes(r.total_bytes, unit, suffix=True)}" if r.total_bytes else ""
    n = o.get("tp", 1) * o.get("pp", 1)
    rows = [["the scenario", f"{verdict} on {n} GPU{'s' if n > 1 else ''} ({lay}){total}"],
            [f"largest batch at {o.get('prompt')} + {o.get('generate')} tokens",
             _n(r.max_batch)],
            [f"longest prompt at batch {o.get('batch')}", _n(r.max_prompt, " tokens")],
            ["fewest GPUs", _n(r.min_gpus) + (f" (tp={r.layout['tp']} x pp={r.layout['pp']})"
                                              if r.layout else "")]]
    if r.kv_cache_tokens is not None:  # SGLang's pool is of tokens, not blocks
        rows.append(["KV cache pool", f"{r.kv_cache_tokens:,} tokens" + (
            f" in {r.kv_cache_blocks:,} blocks" if r.kv_cache_blocks is not None else "")])
    if r.max_concurrency is not None:
        rows.append(["sequences served at once", f"{r.max_concurrency:,} of "
                                                 f"{o.get('prompt')} + {o.get('generate')} "
                                                 "tokens"])
    if getattr(r, "max_gpu_layers", None) is not None:
        rows.append(["largest --n-gpu-layers", f"{r.max_gpu_layers} (of {o.get('n_gpu_layers')} "
                     "asked; n_layer + 1 offloads the output layer too)"
                     if o.get("n_gpu_layers") is not None else f"{r.max_gpu_layers}"])
    out.append(table(["question", "answer"], rows))
    if r.notes:
        out.append("")
        out.extend(_wrap(n, indent="    ", first="  - ") for n in r.notes)
    return "\n".join(out)


def _layout_words(x: Any) -> str:
    parts = [f"dp={x.dp}"]
    for k in ("tp", "pp", "cp", "ep"):
        if getattr(x, k) > 1:
            parts.append(f"{k}={getattr(x, k)}")
    return " ".join(parts)


def _sharding_words(x: Any) -> str:
    if x.fsdp:
        return f"FSDP {x.fsdp}"
    return f"ZeRO-{x.zero}" if x.zero else "none (DDP)" if x.dp > 1 else "none"


def _render_fit_train(r: Any, unit: str) -> str:
    est = r.estimate
    opts = dict(est.options) if est is not None else {}
    scen = describe_scenario("train", opts, skip=("gpu", "batch")) if opts else ""
    gpu = _gpu_words(r.gpu, r.gpu_memory_bytes, unit)
    out = [f"{r.model}, training on {r.gpus} x {gpu}" + (f": {scen}" if scen else ""),
           f"Exact boundaries: each answer fits and one more does not. Memory per GPU in {unit} "
           f"({unit_note(unit)}).", ""]
    rows = [["largest micro-batch", _n(r.max_batch)],
            ["longest sequence at the given batch", _n(r.max_seq, " tokens")]]
    if est is not None:
        rows.append([f"at batch {r.max_batch}: peak / total",
                     f"{fmt_bytes(est.peak_bytes, unit, suffix=True)} / "
                     f"{fmt_bytes(est.total_bytes, unit, suffix=True)} (phase "
                     f"{_phase_label(est.peak_phase.name)})"])
    out.append(table(["question", "answer"], rows))
    out.append("")
    notes = [_wrap(n, indent="    ", first="  - ") for n in getattr(r, "notes", ())]
    if not r.layouts:
        out.append(f"No layout of {r.gpus} GPUs fits at the given batch and sequence; try more "
                   "GPUs (--gpus), a shorter --seq or --lora-rank.")
        return "\n".join(out + notes)
    gpus = f"{r.gpus} GPU{'s' if r.gpus > 1 else ''}"
    out.append(_wrap(f"Layouts of {gpus} that fit at the given batch and sequence, best first "
                     f"(no offload, no recomputation, no model parallelism, then most headroom), "
                     f"{unit} per GPU:"))
    rows = []
    for i, x in enumerate(r.layouts, 1):
        rows.append([str(i), _layout_words(x), _sharding_words(x), x.checkpointing, x.offload,
                     fmt_bytes(x.peak_bytes, unit), fmt_bytes(x.total_bytes, unit),
                     fmt_bytes(x.headroom_bytes, unit)])
    out.append(table(["#", "layout", "sharding", "checkpointing", "offload", "peak", "total",
                      "headroom"], rows, right=(0, 5, 6, 7)))
    return "\n".join(out + ([""] + notes if notes else []))


# ---------------------------------------------------------------------------------------
# Progress on stderr
# ---------------------------------------------------------------------------------------

T = TypeVar("T")


class Progress:
    """A progress line on stderr for work that may take more than a second.

    Nothing is written for work that ends within ``delay`` seconds. On a terminal the line is
    redrawn in place (``label: 12/40 (30%), 2.1 s``) and erased at the end; elsewhere (CI logs)
    a line is written at most every ``log_every`` seconds and one at the end. A background
    thread keeps the clock moving while a single long step (a trace) runs. ``MEMFIT_PROGRESS=0``
    silences it; ``MEMFIT_PROGRESS=1`` forces it on.

        with Progress("tracing llama-3.1-8b train"):
            result = trace_training(...)
        for x in progress(xs, "sweeping batch"):
            ...
    """

    def __init__(self, label: str, total: int | None = None, *, stream: IO[str] | None = None,
                 delay: float = 1.0, interval: float = 0.2, log_every: float = 10.0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.delay = delay
        self.interval = interval
        self.log_every = log_every
        env = os.environ.get("MEMFIT_PROGRESS", "")
        self.enabled = env != "0"
        self.force = env == "1"
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = 0.0
        self._shown = False
        self._last_log = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._width = 0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="memfit-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._shown:
                if self._tty:
                    self.stream.write("\r" + " " * self._width + "\r")
                else:
                    self.stream.write(self._text(final=True) + "\n")
                self.stream.flush()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps done."""
        self.done += n

    def _text(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self._start
        count = ""
        if self.total:
            count = f" {self.done}/{self.total} ({100 * self.done // self.total}%)"
        elif self.done:
            count = f" {self.done}"
        state = ", done" if final else ""
        sep = ":" if count else ""
        return f"memfit: {self.label}{sep}{count}, {elapsed:.1f} s{state}"

    def _draw(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._tty:
                text = self._text()
                self._width = max(self._width, len(text))
                self.stream.write("\r" + text.ljust(self._width))
            else:
                if self._shown and now - self._last_log < self.log_every:
                    return
                self._last_log = now
                self.stream.write(self._text() + "\n")
            self.stream.flush()
            self._shown = True

    def _run(self) -> None:
        if self._stop.wait(0 if self.force else self.delay):
            return
        while not self._stop.is_set():
            try:
                self._draw()
            except (OSError, ValueError):  # a closed stream: stop quietly
                return
            self._stop.wait(self.interval)


def progress(items: Iterable[T], label: str, total: int | None = None,
             **kwargs: Any) -> Iterator[T]:
    """Iterate ``items`` with a :class:`Progress` line (shown only past a second)."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with Progress(label, total, **kwargs) as p:
        for item in items:
            yield item
            p.update()
