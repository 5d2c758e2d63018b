"""Several scenarios side by side: the scenario sets of ``memfit compare`` and ``memfit plot``.

A scenario set is written with comma lists: the MODEL argument and any option may hold several
values, and the scenarios are their cross product: the models vary slowest, then the options
in the order they are defined in ``workload.py`` (so ``--batch`` before ``--checkpointing``)::

    memfit compare llama-3.1-8b train --precision bf16-mixed,bf16-true,fp32
    memfit compare llama-3.1-8b train --dp 8 --zero 0,1,2,3
    memfit compare llama-3.1-8b,qwen2.5-7b infer --prompt 8192
    memfit compare llama-3.1-8b train --lora-rank none,16 --checkpointing none,full

``none`` stands for "not set" in the options that may be unset (``--lora-rank none,16``,
``--fsdp none,full``, ``--weights none,int8``); flags take ``true``/``false``
(``--qlora false,true``). A set holds at most :data:`MAX_SCENARIOS` scenarios.

Pure functions apart from :func:`run`'s progress line; the CLI prints.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .errors import MemfitError
from .memory.breakdown import Estimate
from .report import (
    component_label,
    describe_scenario,
    fmt_bytes,
    ordered_components,
    progress,
    table,
    unit_note,
)
from .units import DEFAULT_UNIT, check_unit
from .workload import InferenceOptions, TrainingOptions

__all__ = [
    "MAX_SCENARIOS",
    "Scenario",
    "add_list_flags",
    "compare_json",
    "estimate",
    "expand",
    "lists_from_args",
    "options_class",
    "parse_values",
    "render_compare",
    "run",
]

#: The most scenarios one command may ask for (a cross product grows fast).
MAX_SCENARIOS = 64

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_UNSET = ("none", "null", "default")


def options_class(mode: str) -> type:
    """The options dataclass of ``mode`` (``infer`` or ``train``)."""
    if mode == "infer":
        return InferenceOptions
    if mode == "train":
        return TrainingOptions
    raise MemfitError.bad_value("mode", mode, "infer, train")


@dataclass(frozen=True)
class Scenario:
    """One scenario of a set: the model, the options given (the others keep their defaults)
    and ``varied``, the values that tell it apart from the other scenarios of its set."""

    model: str
    mode: str
    options: Mapping[str, Any]
    varied: Mapping[str, Any]

    @property
    def label(self) -> str:
        """``'precision=fp32'``, ``'qwen2.5-7b, zero=3'``; the model when nothing varies."""
        parts = [str(v) if k == "model" else f"{k.replace('_', '-')}={_show(v)}"
                 for k, v in self.varied.items()]
        return ", ".join(parts) or self.model


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _number(text: str, kind: Callable[[str], Any], name: str) -> Any:
    try:
        if kind is int:
            value = float(text) if ("e" in text.lower() or "." in text) else int(text)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            return value
        return float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise MemfitError.bad_value(name, text, what) from None


def parse_values(cls: type, name: str, text: str) -> list[Any]:
    """The values of one option given as a comma list, each converted and checked against the
    option's definition in ``cls`` (duplicates dropped, order kept)."""
    found = {f.name: f for f in fields(cls)}
    if name not in found:
        raise MemfitError.bad_value("option", name, ", ".join(found))
    f = found[name]
    meta = f.metadata
    flag = "--" + name.replace("_", "-")
    items = [t.strip() for t in str(text).split(",")]
    if not items or any(not t for t in items):
        raise MemfitError.bad_value(flag, text, "a comma list of values without empty items")
    out: list[Any] = []
    for t in items:
        low = t.lower()
        if meta.get("flag"):
            if low not in _TRUE + _FALSE:
                raise MemfitError.bad_value(flag, t, "true or false")
            value: Any = low in _TRUE
        elif meta.get("nullable") and low in _UNSET and not (
                meta.get("choices") and low in meta["choices"]):
            value = None
        elif meta.get("choices") is not None:
            choices = [c for c in meta["choices"] if c is not None]
            if all(isinstance(c, int) for c in choices):
                value = _number(t, int, flag)
            else:
                match = [c for c in choices if str(c).lower() == low]
                value = match[0] if match else t
            if value not in choices:
                allowed = ", ".join(map(str, choices))
                if meta.get("nullable"):
                    allowed += ", none"
                raise MemfitError.bad_value(flag, t, allowed)
        elif isinstance(f.default, float):
            value = _number(t, float, flag)
        elif meta.get("min") is not None:
            value = _number(t, int, flag)
        else:
            value = t
        if value not in out:
            out.append(value)
    return out


def add_list_flags(parser: argparse.ArgumentParser, cls: type,
                   skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per option of ``cls`` taking a comma list (``--zero 0,1,2,3``); a flag
    option (``--sp``, ``--qlora``) alone means true and also takes ``false,true``."""
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        help_text = meta.get("help", "")
        if meta.get("flag"):
            parser.add_argument(flag, dest=f.name, nargs="?", const="true", default=None,
                                metavar="BOOL[,BOOL]", help=f"{help_text} (true, false or both)")
            continue
        choices = meta.get("choices")
        if choices is not None:
            shown = ", ".join(str(c) for c in choices if c is not None)
            extra = ", none" if None in choices else ""
            help_text = f"{help_text}; one or more of {shown}{extra}"
        default = f.default
        parser.add_argument(flag, dest=f.name, default=None, metavar="V[,V...]",
                            help=f"{help_text} (default: {default})")


def lists_from_args(cls: type, args: argparse.Namespace) -> dict[str, list[Any]]:
    """The options the user gave, each as its list of values, in the class's field order."""
    return {f.name: parse_values(cls, f.name, getattr(args, f.name)) for f in fields(cls)
            if getattr(args, f.name, None) is not None}


def split_models(text: str) -> list[str]:
    """``'llama-3.1-8b,qwen2.5-7b'`` -> the two names (duplicates dropped)."""
    names = [t.strip() for t in str(text).split(",")]
    if any(not n for n in names):
        raise MemfitError.bad_value("model", text, "one or more models separated by commas")
    return list(dict.fromkeys(names))


def expand(models: Sequence[str] | str, mode: str, lists: Mapping[str, Sequence[Any]],
           limit: int = MAX_SCENARIOS) -> list[Scenario]:
    """The cross product of the models and every option's values (``lists`` in its own order,
    the first varying slowest); an error when it has more than ``limit`` scenarios."""
    options_class(mode)
    model_list = split_models(models) if isinstance(models, str) else list(models)
    dims: list[tuple[str, list[Any]]] = [("model", model_list)]
    dims += [(k, list(v)) for k, v in lists.items()]
    for name, values in dims:
        if not values:
            raise MemfitError.bad_value(name, values, "at least one value")
    count = 1
    for _, values in dims:
        count *= len(values)
    if count > limit:
        sizes = " x ".join(f"{len(v)} {k.replace('_', '-')}" for k, v in dims if len(v) > 1)
        raise MemfitError(f"compare: {sizes} = {count} scenarios; allowed: at most {limit} "
                          "(vary fewer options or give shorter lists)", field="scenarios",
                          value=count, allowed=f"at most {limit}")
    varied = [k for k, v in dims if len(v) > 1]
    out = []
    names = [k for k, _ in dims]
    for combo in itertools.product(*(v for _, v in dims)):
        chosen = dict(zip(names, combo, strict=True))
        model = chosen.pop("model")
        out.append(Scenario(model=model, mode=mode, options=chosen,
                            varied={k: (model if k == "model" else chosen[k]) for k in varied}))
    return out


def estimate(s: Scenario) -> Estimate:
    """The estimate of one scenario; errors name the scenario."""
    try:
        if s.mode == "infer":
            from .inference import infer

            return infer(s.model, **s.options)
        from .training import train

        return train(s.model, **s.options)
    except MemfitError as exc:
        if not s.varied:
            raise
        raise MemfitError(f"scenario {s.label}: {exc}", field=exc.field, value=exc.value,
                          allowed=exc.allowed) from None


def run(scenarios: Sequence[Scenario], show_progress: bool = True
        ) -> list[tuple[Scenario, Estimate]]:
    """Estimate every scenario (a progress line on stderr past a second)."""
    items: Any = scenarios
    if show_progress:
        items = progress(scenarios, f"estimating {len(scenarios)} scenarios")
    return [(s, estimate(s)) for s in items]


def _common(results: Sequence[tuple[Scenario, Estimate]]) -> tuple[str, str]:
    """(the models' words, the scenario words shared by all rows)."""
    first_s, first_e = results[0]
    models = list(dict.fromkeys(e.model for _, e in results))
    skip = ("gpu",) + tuple(k for k in first_s.varied if k != "model")
    return ", ".join(models), describe_scenario(first_s.mode, first_e.options, skip=skip)


def render_compare(results: Sequence[tuple[Scenario, Estimate]],
                   unit: str = DEFAULT_UNIT) -> str:
    """One table, a row per scenario: what varies, then the components in the seed's order
    (those non-zero somewhere), the peak and its phase, the total, its ratio to the first row,
    and with ``--gpu`` the verdict and headroom."""
    unit = check_unit(unit)
    if not results:
        return "no scenarios"
    first_s = results[0][0]
    varied = list(first_s.varied)
    models, common = _common(results)
    mode_word = {"infer": "inference", "train": "training"}[first_s.mode]
    names = ordered_components(n for _, e in results for n in e.components)
    live = [n for n in names if any(e.components.get(n, 0) for _, e in results)]
    gpus = list(dict.fromkeys(e.gpu for _, e in results))
    with_gpu = any(e.gpu for _, e in results)
    base_total = results[0][1].total_bytes

    headers = [("model" if k == "model" else "--" + k.replace("_", "-")) for k in varied]
    headers = headers or ["model"]
    headers += [component_label(n) for n in live]
    headers += ["peak", "phase", "total", "vs first"]
    if with_gpu:
        headers += (["gpu", "usable"] if len(gpus) > 1 else []) + ["fits", "headroom"]
    rows = []
    for s, e in results:
        row = [_show(s.varied[k]) for k in varied] or [e.model]
        row += [fmt_bytes(e.components.get(n, 0), unit) if e.components.get(n, 0) else "-"
                for n in live]
        ratio = f"{e.total_bytes / base_total:.2f}x" if base_total else "-"
        row += [fmt_bytes(e.peak_bytes, unit), e.peak_phase.name, fmt_bytes(e.total_bytes, unit),
                ratio]
        if with_gpu:
            if len(gpus) > 1:
                row += [e.gpu or "-", fmt_bytes(e.gpu_memory_bytes, unit)
                        if e.gpu_memory_bytes else "-"]
            if e.fits is None:
                row += ["-", "-"]
            else:
                row += ["yes" if e.fits else "NO", fmt_bytes(e.headroom_bytes or 0, unit)]
        rows.append(row)
    n_lab = max(1, len(varied))
    right = tuple(range(n_lab, n_lab + len(live) + 1)) + (n_lab + len(live) + 2,
                                                            n_lab + len(live) + 3)
    if with_gpu:
        right += (len(headers) - 1,) + ((len(headers) - 3,) if len(gpus) > 1 else ())
    out = [f"{models}, {mode_word}: {common}" if common else f"{models}, {mode_word}",
           f"{len(results)} scenarios; memory of the most loaded GPU in {unit} "
           f"({unit_note(unit)})", ""]
    out.append(table(headers, rows, right=right))
    out.append("")
    out.append("peak: tensors at the peak phase (torch.cuda.max_memory_allocated());")
    out.append("total: plus runtime overheads (nvidia-smi); vs first: total / the first row's.")
    if with_gpu and len(gpus) == 1 and results[0][1].gpu_memory_bytes is not None:
        e0 = results[0][1]
        out.append(f"fits: total within {e0.gpu} ({fmt_bytes(e0.gpu_memory_bytes or 0, unit)} "
                   f"{unit} usable); headroom: what is left (negative: over).")
    elif with_gpu:
        out.append("fits: total within the row's GPU (usable: its memory); headroom: what is "
                   "left (negative: over).")
    return "\n".join(out)


def compare_json(results: Sequence[tuple[Scenario, Estimate]]) -> list[dict[str, Any]]:
    """The contract's object of every scenario, with ``varied`` (what tells it apart) and
    ``scenario`` (its label) added."""
    return [{"scenario": s.label, "varied": dict(s.varied), **e.to_dict()} for s, e in results]
