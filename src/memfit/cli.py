"""The ``memfit`` command line: a thin shell over the Python API.

Flags for scenario options are generated from the dataclass fields in ``workload.py``, so the
CLI, the API and the web page share one definition. User errors print one line on stderr and
exit with status 2; nothing below this module prints.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shlex
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MemfitError
from .report import table
from .workload import InferenceOptions, TrainingOptions

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become MemfitError (one line, exit 2) naming the field,
    the value and what is allowed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --lora-r is not --lora-rank by prefix
        super().__init__(*args, **kwargs)
        # the innermost (sub)command's parser ends up in the namespace: it names the flags
        # of an unrecognized argument
        self.set_defaults(_parser=self)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _usage_error(self, message)


_ARGUMENT = re.compile(r"^argument (?P<arg>[^:]+): (?P<why>.*)$", re.S)
_CHOICE = re.compile(r"^invalid choice: (?P<value>.*?) \(choose from (?P<choices>.*)\)$", re.S)
_GOT = re.compile(r"^got (?P<value>.*); allowed: (?P<allowed>.*)$", re.S)
_REQUIRED = "the following arguments are required: "


def _action(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    """The parser's argument called ``name`` (a flag, a metavar or a dest)."""
    for action in parser._actions:
        if name in action.option_strings or name in (action.metavar, action.dest):
            return action
    return None


def _usage_error(parser: argparse.ArgumentParser, message: str) -> MemfitError:
    """argparse's message as ``field: got VALUE; allowed: ALLOWED``."""
    m = _ARGUMENT.match(message)
    if m:
        names = m["arg"].split("/")  # "-o/--output", "--tp/--tensor-parallel-size/-tp"
        arg = next((n for n in names if n.startswith("--")), names[-1])  # memfit's own flag
        field = arg.lstrip("-").lower()
        why = m["why"].strip()
        c = _CHOICE.match(why)
        if c:
            choices = ", ".join(x.strip().strip("'\"") for x in c["choices"].split(","))
            return MemfitError.bad_value(field, c["value"].strip("'\""), choices)
        g = _GOT.match(why)
        if g:  # our own type functions
            return MemfitError(f"{field}: {why}", field=field, value=g["value"],
                               allowed=g["allowed"])
        e = re.match(r"^ignored explicit argument (?P<value>.*)$", why)
        if e:  # --json=3: a switch given a value
            return MemfitError(f"{field}: got {e['value']}; allowed: {arg} alone (a switch "
                               "takes no value)", field=field, value=e["value"].strip("'\""),
                               allowed=f"{arg} alone")
        if why.startswith("expected "):  # "expected one argument"
            return MemfitError(f"{field}: got no value; allowed: {arg} VALUE ({why})",
                               field=field, value=None, allowed=f"{arg} VALUE")
        return MemfitError(f"{field}: {why}; allowed: see `{parser.prog} --help`",
                           field=field, value=None, allowed=f"see `{parser.prog} --help`")
    if message.startswith(_REQUIRED):
        names = [n.strip() for n in message[len(_REQUIRED):].split(",")]
        action = _action(parser, names[0].split("/")[-1])
        allowed = (action.help if action is not None and action.help else
                   f"see `{parser.prog} --help`")
        if action is not None and action.choices:
            allowed = ", ".join(map(str, action.choices))
        field = names[0].split("/")[-1].lstrip("-")
        return MemfitError(f"{field}: missing ({parser.prog} needs {', '.join(names)}); "
                           f"allowed: {allowed}", field=field, value=None, allowed=allowed)
    return MemfitError(f"{parser.prog}: {message}")


# Names users bring from elsewhere that are no memfit option, by meaning (key: the name
# without dashes; a dict value: per command)
_MEANINGS: dict[str, Any] = {
    "context-length": {"infer": "--max-model-len (vllm) or --prompt and --generate",
                       "train": "--seq"},
    "max-length": {"infer": "--prompt and --generate", "train": "--seq"},
    "seq": {"infer": "--prompt and --generate (an inference sequence is a prefill plus the "
                     "tokens generated)"},
    "prompt": {"train": "--seq (a training step's sequence length)"},
    "generate": {"train": "--seq (a training step's sequence length)"},
    "lora-alpha": "drop it: alpha scales the adapter's output and takes no memory "
                  "(--lora-rank sets the adapter's size)",
    "gpus": {"infer": "--tp / --pp (`memfit fit MODEL infer` searches the GPU count)",
             "train": "--dp (and --tp, --pp, --cp); `memfit fit MODEL train --gpus N`"},
    "model": "MODEL as the first word: memfit infer MODEL ...",
    "dtype": {"infer": "--weights", "train": "--precision"},
    "torch-dtype": {"infer": "--weights", "train": "--precision"},
    "bf16": "--precision bf16-mixed (autocast) or bf16-true (pure bf16)",
    "fp16": "--precision fp16-mixed or fp16-true",
    "optim": "--optimizer (and --optimizer-impl)",
    "deepspeed": "--zero and --offload, or `memfit check ds_config.json --model MODEL`",
    "num-gpus": {"infer": "--tp", "train": "--dp"},
    "n-gpu": {"infer": "--tp", "train": "--dp"},
    "nproc-per-node": {"infer": "--tp", "train": "--dp"},
    "gpu-mem": "--gpu NAME (see `memfit gpus`) or --gpu-memory-utilization",
    "gpu-memory": "--gpu NAME (see `memfit gpus`) or --gpu-memory-utilization",
    "parallel": "--batch (sequences decoded together)",
    "np": "--batch (sequences decoded together)",
    "micro-batch": "--batch",
}


def _meaning(parser: argparse.ArgumentParser, name: str) -> str | None:
    text = _MEANINGS.get(name.lstrip("-").replace("_", "-").lower())
    if isinstance(text, dict):
        text = text.get(parser.prog.split()[-1])
    return text


def _closest(name: str, flags: Sequence[str]) -> str | None:
    """The flag spelled most like ``name`` (compared without dashes), if it is close."""
    bare = {f.lstrip("-"): f for f in flags}
    close = difflib.get_close_matches(name.lstrip("-").lower(), list(bare), n=1, cutoff=0.75)
    return bare[close[0]] if close else None


def _unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> MemfitError:
    """Arguments the command does not take, with its flags (and, by meaning or spelling,
    the one that was probably meant)."""
    flags = sorted({o for a in parser._actions for o in a.option_strings
                    if o.startswith("--") and o not in ("--help", "--version")})
    name = str(extra[0]).split("=")[0]
    meaning = _meaning(parser, name) if name.startswith("-") else None
    close = None if meaning else _closest(name, flags) if name.startswith("-") else None
    verb = "" if meaning and meaning.startswith("drop") else "use "
    hint = (f"{name} is not a memfit option; {verb}{meaning}. " if meaning else
            f"did you mean {close}? " if close else "")
    allowed = (", ".join(flags) or "no options") + f" (see `{parser.prog} --help`)"
    return MemfitError(f"option: got {' '.join(extra)!r}; {hint}allowed: {allowed}",
                       field="option", value=" ".join(extra), allowed=allowed)


def _int_type(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse type for an integer option: 8, 1e6 or 2.0 (integral); bounds are checked
    where the option is defined, so they are only named here."""
    allowed = "an integer" + (f" in [{lo}, {hi}]" if lo is not None else "")

    def parse(text: str) -> int:
        try:
            value = float(text) if ("e" in text.lower() or "." in text) else int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
        if isinstance(value, float):
            if not value.is_integer():
                raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}")
            value = int(value)
        return value

    parse.__name__ = "integer"
    return parse


_int_arg = _int_type()


def _float_type(lo: float | None = None, hi: float | None = None) -> Callable[[str], float]:
    allowed = "a number" + (f" in [{lo}, {hi}]" if lo is not None else "")

    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None

    parse.__name__ = "number"
    return parse


def _choice_type(choices: Sequence[Any]) -> Callable[[str], Any]:
    """An argparse type for integer choices (``--zero``): a non-number names the choices."""
    allowed = ", ".join(map(str, choices))

    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None

    parse.__name__ = "choice"
    return parse


def _port_arg(text: str) -> int:
    port = _int_arg(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: an integer in [0, 65535]")
    return port


def _spelled(choices: Sequence[Any], spellings: dict[str, Any]) -> Callable[[str], Any]:
    """An argparse type for a choice with other spellings (``--engine llama.cpp``): case,
    dots, dashes and spaces do not matter; argparse then checks the choice."""
    def parse(text: str) -> Any:
        key = re.sub(r"[^a-z0-9]", "", text.lower())
        return spellings.get(key, text)

    parse.__name__ = "choice"
    return parse


def _names(f: Any) -> list[str]:
    """A field's flags: ``--name`` then the ecosystem's aliases."""
    return ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]


def add_option_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (an options dataclass), with its aliases, help and
    bounds."""
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        flags = _names(f)
        default = None if f.default is MISSING else f.default
        help_text = meta.get("help", "")
        for switch, value in meta.get("switches", {}).items():
            parser.add_argument(switch, dest=f.name, action="store_const", const=value,
                                default=None, help=f"= {flags[0]} {value}")
        if meta.get("flag"):
            parser.add_argument(*flags, dest=f.name, action="store_true", default=None,
                                help=help_text)
            continue
        choices = meta.get("choices")
        if choices is not None:
            shown = [c for c in choices if c is not None]
            kind: Callable[[str], Any] = (_choice_type(shown) if all(
                isinstance(c, int) for c in shown) else
                _spelled(shown, meta.get("spellings", {})) if meta.get("spellings") else str)
            shown_default = "" if default is None else f" (default: {default})"
            parser.add_argument(*flags, dest=f.name, type=kind, choices=shown, default=None,
                                help=help_text + shown_default)
            continue
        lo, hi = meta.get("min"), meta.get("max")
        real = isinstance(f.default, float) or isinstance(lo, float)  # as workload._plan
        kind = _float_type(lo, hi) if real else (
            _int_type(lo, hi) if lo is not None else str)
        shown_default = "" if default is None else f" (default: {default})"
        parser.add_argument(*flags, dest=f.name, type=kind, default=None,
                            help=help_text + shown_default)


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the flags the user actually gave (others keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls)
             if getattr(args, f.name, None) is not None}
    return cls(**given)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _fmt_params(n: int) -> str:
    """A parameter count for people: 8.03B, 124.4M, 70.6K."""
    for div, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


# -- commands ---------------------------------------------------------------------------

def cmd_models(args: argparse.Namespace) -> int:
    from .catalog import all_entries
    from .memory.params import count_params

    entries = all_entries()
    if args.family:
        entries = [e for e in entries if e.family == args.family.lower()]
        if not entries:
            from .catalog import all_entries as every
            families = sorted({e.family for e in every()})
            raise MemfitError.bad_value("family", args.family, ", ".join(families))
    rows: list[dict[str, Any]] = []
    for e in entries:
        c = count_params(e.spec)
        rows.append({"name": e.name, "family": e.family, "total_params": c.total,
                     "active_params": c.active, "hf_id": e.hf_id, "source": e.source})
    if args.json:
        _print_json(rows)
        return 0
    print(table(["model", "family", "total params", "active params", "Hugging Face id"],
                 [[r["name"], r["family"], _fmt_params(r["total_params"]),
                   _fmt_params(r["active_params"]), r["hf_id"]] for r in rows], right=(2, 3)))
    return 0


def cmd_params(args: argparse.Namespace) -> int:
    from .api import params

    result = params(args.model)
    if args.json:
        _print_json(result.to_dict())
        return 0
    total = result.total_params
    rows = [[name, f"{n:,}", f"{100 * n / total:.1f}%"] for name, n in result.components.items()]
    print(f"{result.model} ({result.model_type}): {total:,} parameters "
          f"({_fmt_params(total)}), {result.active_params:,} active per token")
    print(table(["component", "parameters", "share"], rows, right=(1, 2)))
    for note in getattr(result, "notes", ()):  # the generic path says how it counted
        print(f"note: {note}")
    return 0


def cmd_formats(args: argparse.Namespace) -> int:
    from .dtypes import FORMATS, GGUF_FILE_TYPES

    rows: list[dict[str, Any]] = [
            {"name": f.name, "kind": f.kind, "bits_per_element": float(f.bits_per_element),
             "block_size": f.block_size, "unquantized": list(f.unquantized),
             "source": f.source} for f in FORMATS]
    files = [{"name": t.name, "default_type": t.default_type, "description": t.description}
             for t in GGUF_FILE_TYPES]
    if args.json:
        _print_json({"formats": rows, "gguf_file_types": files})
        return 0
    print(table(["format", "kind", "bits/element", "block", "left unquantized"],
                [[r["name"], r["kind"], f"{r['bits_per_element']:.4f}", r["block_size"],
                  ", ".join(r["unquantized"]) or "-"] for r in rows], right=(2, 3)))
    print()
    print(table(["GGUF file type", "main tensor type"],
                [[t["name"], t["default_type"]] for t in files]))
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from .hardware import GPUS

    rows: list[dict[str, Any]] = [
            {"name": g.name, "vendor": g.vendor, "memory_bytes": g.memory_bytes,
             "usable_bytes": g.usable_bytes, "marketed": g.marketed,
             "memory_basis": g.memory_basis} for g in GPUS]
    if args.json:
        _print_json(rows)
        return 0
    print(table(["GPU", "vendor", "usable GiB", "usable MiB", "marketed", "figure from"],
                [[r["name"], r["vendor"], f"{r['usable_bytes'] / 2**30:.2f}",
                  f"{r['usable_bytes'] // 2**20:,}", r["marketed"], r["memory_basis"]]
                 for r in rows], right=(2, 3)))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .catalog import resolve_model

    try:
        spec, config = resolve_model(args.model)
    except MemfitError as exc:  # an unknown model_type: memfit.generic traces it whole
        return _trace_generic(args, exc)
    if config is None:
        raise MemfitError.bad_value("model", args.model, "a model with a config.json")
    try:
        from . import trace as tracer
    except ImportError as exc:
        raise MemfitError(f"trace: needs the 'trace' extra (in a memfit clone: pip install -e "
                          f"\".[trace]\"): {exc}", field="trace", value=None,
                          allowed="the 'trace' extra installed (torch, transformers)") from None
    from .report import Progress

    with Progress(f"tracing {spec.name} {args.mode}"):
        if args.mode == "infer":
            result = tracer.trace_inference(config, options_from_args(InferenceOptions, args))
        else:
            result = tracer.trace_training(config, options_from_args(TrainingOptions, args))
    out = result.to_dict()
    if args.json:
        _print_json(out)
        return 0
    from .units import format_bytes

    print(f"{spec.name} {args.mode}: peak {format_bytes(out['peak_bytes'])} "
          f"in phase {out.get('peak_phase')} (traced on fake tensors, GiB = 2^30 bytes)")
    rows = [[k, format_bytes(v)] for k, v in out["components"].items()]
    print(table(["component", "GiB at peak"], rows, right=(1,)))
    return 0


def _trace_generic(args: argparse.Namespace, exc: MemfitError) -> int:
    from .generic.hook import fallback_trace
    from .report import Progress
    from .units import format_bytes

    cls = InferenceOptions if args.mode == "infer" else TrainingOptions
    with Progress(f"tracing {args.model} {args.mode} (transformers' model)"):
        out = fallback_trace(args.model, exc, args.mode, options_from_args(cls, args))
    if args.json:
        _print_json(out)
        return 0
    print(f"{out['model']} {args.mode}: peak {format_bytes(out['peak_bytes'])} "
          f"in phase {out['peak_phase']} (traced on fake tensors, GiB = 2^30 bytes)")
    rows = [[k, format_bytes(v)] for k, v in out["components"].items()]
    print(table(["component", "GiB at peak"], rows, right=(1,)))
    for note in out["notes"]:
        print(f"note: {note}")
    return 0


def _estimate(args: argparse.Namespace, mode: str) -> Any:
    try:
        if mode == "infer":
            from .inference import infer

            return infer(args.model, **vars(options_from_args(InferenceOptions, args)))
        from .training import train

        return train(args.model, **vars(options_from_args(TrainingOptions, args)))
    except MemfitError as exc:  # an unknown model_type: memfit.generic traces it
        from .generic.hook import fallback_estimate

        cls = InferenceOptions if mode == "infer" else TrainingOptions
        return fallback_estimate(args.model, exc, mode, options_from_args(cls, args))


def cmd_estimate(args: argparse.Namespace) -> int:
    from .report import render_estimate, render_explain

    est = _estimate(args, args.command)
    if args.json:
        _print_json(est.to_dict())
        return 0
    if hasattr(est, "render"):  # memfit.generic's estimate says how it was traced
        print(est.render(args.units))
        return 0
    print(render_estimate(est, args.units))
    if args.explain:
        from .catalog import resolve_model

        print()
        print(render_explain(est, args.units, spec=resolve_model(args.model)[0]))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from . import check
    from .report import render_estimate

    words = list(args.artefact or ())
    if not words:
        raise MemfitError("artefact: missing; allowed: a config file or `-- COMMAND ...` "
                          "(see `memfit check --help`)", field="artefact", value=None,
                          allowed="FILE or -- COMMAND")
    if words == ["-"]:  # pasted on standard input
        text = sys.stdin.read((1 << 20) + 1)
        if len(text) > 1 << 20:
            raise MemfitError.bad_value("artefact", "standard input", "at most 1 MiB")
        t = check.read_text(text, "stdin", Path.cwd())
    elif len(words) == 1 and os.path.basename(words[0].split()[0]) not in check.PROGRAMS:
        t = check.read_file(words[0])
    else:
        t = check.read_command(words, Path.cwd())
    beside = {f.name: getattr(args, f.name, None)
              for cls in (InferenceOptions, TrainingOptions) for f in fields(cls)}
    beside.update(model=args.model, gpus=args.gpus)
    t = check.complete(t, beside)
    if args.json:
        _print_json(check.answer(t))
        return 0
    argv = check.equivalent_argv(t)
    est = check.estimate(t)
    print(_render_check(t, argv))
    print()
    print(render_estimate(est, args.units))
    if args.explain:
        from .catalog import resolve_model
        from .report import render_explain

        print()
        print(render_explain(est, args.units, spec=resolve_model(str(t.model))[0]))
    return 0



def _render_check(t: Any, argv: list[str]) -> str:
    lines = [f"{t.kind}: read as `memfit {shlex.join(argv)}`", "", "Understood:"]
    rows = [[str(u["field"]), _short(u["value"]), u["option"]] for u in t.understood]
    lines.append(table(["field", "value", "memfit option"], rows) if rows else "  (nothing)")
    if t.ignored:
        lines += ["", "Ignored (not in the estimate):"]
        for item in t.ignored:
            value = "" if item["value"] in (None, "") else f" = {_short(item['value'])}"
            lines.append(f"  - {item['field']}{value}: {item['why']}")
    return "\n".join(lines)


def _short(value: Any, width: int = 40) -> str:
    text = "" if value is None else (json.dumps(value) if isinstance(value, (list, dict))
                                     else str(value))
    return text if len(text) <= width else text[:width - 3] + "..."


def cmd_serve(args: argparse.Namespace) -> int:
    from .web import serve

    serve(args.host, args.port, allow_paths=args.allow_paths, allow_hub=args.allow_hub)
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    if args.mode == "infer":
        from .inference import fit_infer as fit
        options = options_from_args(InferenceOptions, args)
    else:
        from .training import fit_train as fit  # type: ignore[assignment]
        options = options_from_args(TrainingOptions, args)
    cls = InferenceOptions if args.mode == "infer" else TrainingOptions
    given = {f.name for f in fields(cls) if getattr(args, f.name, None) is not None}
    kwargs = {k: v for k, v in vars(options).items() if k in given and k != "gpu"}
    # --gpus omitted: None, so fit_train takes the count from --dp/--tp/--pp/--cp or searches
    # for the fewest GPUs that fit
    try:
        result = fit(args.model, gpu=args.gpu, gpus=args.gpus, **kwargs)
    except MemfitError as exc:  # an unknown model_type: say what works for it instead
        from .generic.hook import refuse_fit

        refuse_fit(args.model, exc)
        raise
    data = result.to_dict()
    if args.json:
        _print_json(data)
        return 0
    from .report import render_fit

    print(render_fit(result, args.units))
    return 0


# -- compare and plot: scenario sets written as comma lists (see memfit.compare) -----------

_COMPARE_EXAMPLES = """examples:
  memfit compare llama-3.1-8b train --precision bf16-mixed,bf16-true,fp32
  memfit compare llama-3.1-8b train --dp 8 --zero 0,1,2,3 --gpu h100
  memfit compare llama-3.1-8b,qwen2.5-7b infer --prompt 8192
  memfit compare llama-3.1-8b train --lora-rank none,16 --qlora false,true

MODEL and every option take a comma list; the scenarios are their cross product (at most 64).
'none' unsets an optional value (--lora-rank none,16; --fsdp none,full)."""

_PLOT_EXAMPLES = """examples:
  memfit plot llama-3.1-8b train --precision bf16-mixed,bf16-true,fp32 -o breakdown.png
  memfit plot llama-3.1-8b infer --sweep batch --prompt 4096 --gpu a100-80gb -o batch.svg
  memfit plot llama-3.1-8b train --sweep seq --precision bf16-mixed,bf16-true --gpu h100 -o s.png
  memfit plot llama-3.1-8b train --fit --gpus 8 --gpu h100 -o layouts.png

Without --sweep or --fit: one stacked bar per scenario. The format follows the extension
(.png or .svg). Needs the 'plot' extra (in a memfit clone: pip install -e ".[plot]")."""


def _scenario_lists(args: argparse.Namespace) -> dict[str, list[Any]]:
    from .compare import lists_from_args, options_class

    return lists_from_args(options_class(args.mode), args)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_json, expand, render_compare, run
    from .units import check_unit

    unit = check_unit(args.units)
    results = run(expand(args.model, args.mode, _scenario_lists(args)))
    if args.json:
        _print_json(compare_json(results))
        return 0
    print(render_compare(results, unit))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plot
    from .compare import expand, run
    from .report import Progress
    from .units import check_unit

    unit = check_unit(args.units)
    out = plot.check_output(args.output)
    lists = _scenario_lists(args)
    if args.sweep and args.fit:
        raise MemfitError.bad_value("sweep", args.sweep, "no --sweep together with --fit")
    if args.sweep:
        axes = plot.SWEEP_AXES[args.mode]
        if args.sweep not in axes:
            raise MemfitError.bad_value("sweep", args.sweep, ", ".join(axes))
        values = lists.pop(args.sweep, None)
        if values is not None and len(values) < 2:
            values = None  # one value is no grid: sweep the default one
        scenarios = expand(args.model, args.mode, lists, limit=8)
        sweeps = plot.sweep(scenarios, args.sweep, values)
        path = plot.plot_sweep(sweeps, out, unit)
    elif args.fit:
        scenarios = expand(args.model, args.mode, lists, limit=1)
        s = scenarios[0]
        gpu = s.options.get("gpu")
        if not gpu:
            raise MemfitError.bad_value("gpu", None, "a GPU name with --fit (see `memfit gpus`)")
        opts = {k: v for k, v in s.options.items() if k != "gpu"}
        with Progress(f"searching the layouts of {s.model} on {gpu}"):
            if args.mode == "train":
                from .training import fit_train

                result: Any = fit_train(s.model, gpu=gpu, gpus=args.gpus or 1, **opts)
            else:
                from .inference import fit_infer

                counts: Any = args.gpus or plot.infer_gpu_counts(
                    fit_infer(s.model, gpu=gpu, **opts).min_gpus)
                result = (s, counts, plot.infer_layouts(s, counts))
        path = plot.plot_layouts(result, out, unit, scenario=s)
    else:
        path = plot.plot_breakdown(run(expand(args.model, args.mode, lists)), out, unit)
    print(f"wrote {path}")
    return 0


def _add_compare_and_plot(sub: Any) -> None:
    """The parsers of ``compare`` and ``plot``: MODEL[,MODEL...] MODE, then every option of
    the mode as a comma list."""
    from .compare import add_list_flags

    for name, helptext, epilog in (
            ("compare", "several scenarios side by side (comma lists on MODEL or any option)",
             _COMPARE_EXAMPLES),
            ("plot", "pictures: stacked breakdowns, sweeps vs the GPU, fit layouts (extra "
             "'plot')", _PLOT_EXAMPLES)):
        p = sub.add_parser(name, help=helptext, description=helptext, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("model", metavar="MODEL[,MODEL...]",
                       help="one or more models (catalog names, config.json or folders)")
        msub = p.add_subparsers(dest="mode", metavar="MODE", parser_class=_Parser,
                                required=True)
        for mode, cls in (("infer", InferenceOptions), ("train", TrainingOptions)):
            q = msub.add_parser(mode, help=f"{name} {mode} scenarios", epilog=epilog,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
            add_list_flags(q, cls)
            q.add_argument("--units", default="GiB", help=_units_help())
            if name == "compare":
                q.add_argument("--json", action="store_true",
                               help="print a list of the contract's objects, each with "
                               "'varied' and 'scenario'")
                q.set_defaults(func=cmd_compare)
                continue
            q.add_argument("-o", "--output", required=True, metavar="FILE",
                           help="the picture to write: FILE.png or FILE.svg")
            q.add_argument("--sweep", metavar="OPTION",
                           help="memory against this option: "
                           + ", ".join(("batch", "prompt", "generate") if mode == "infer"
                                       else ("batch", "seq"))
                           + " (its values: the option's list, or powers of two past the fit)")
            q.add_argument("--fit", action="store_true",
                           help="the layouts of `memfit fit` ranked by peak (needs --gpu)")
            q.add_argument("--gpus", type=_int_arg, default=None,
                           help="GPUs for --fit (default: 1 for train, the fewest that fit "
                           "for infer)")
            q.set_defaults(func=cmd_plot)


_CHECK_EXAMPLES = """examples:
  memfit check --gpu l4 -- vllm serve meta-llama/Llama-3.1-8B-Instruct --max-model-len 16384
  memfit check --gpu rtx-4090 -- llama-server -m model.gguf -c 8192 -ngl 99
  memfit check ds_config.json --model llama-3.1-8b --gpus 8 --gpu h100
  memfit check axolotl.yaml --gpu a100-80gb
  memfit check llama3_8b.toml --gpus 8 --gpu h100 --json
  memfit check -- torchrun --nproc_per_node 8 train.py --per_device_train_batch_size 4 ...

Reads vllm serve / SGLang / llama-server / llama-cli command lines, Ollama Modelfiles,
DeepSpeed JSON, TrainingArguments/TRL, axolotl, LLaMA-Factory and torchtune YAML, torchtitan
TOML and accelerate configs, and training launch lines (torchrun, accelerate launch,
deepspeed, trl sft, llamafactory-cli train, axolotl train, tune run). It lists every field
it understood (with the memfit option it became) and every field it ignored (and why), then
answers as `memfit infer|train` would. memfit's own options given beside fill what the
artefact does not say, and win over it."""


def _add_check(sub: Any) -> None:
    helptext = "read a vllm/llama.cpp command line or a training config and answer for it"
    p = sub.add_parser("check", help=helptext, description=helptext, epilog=_CHECK_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artefact", nargs="*", metavar="FILE | - | -- COMMAND ...",
                   help="a config file, - for one pasted on standard input, or the command "
                   "line after --")
    p.add_argument("--model", help="MODEL when the artefact names none (or to override it): "
                   + _MODEL_HELP)
    seen: set[str] = set()
    for cls in (InferenceOptions, TrainingOptions):
        add_option_flags(p, cls, skip=tuple(seen))
        seen |= {f.name for f in fields(cls)}
    p.add_argument("--gpus", type=_int_arg, default=None,
                   help="world size of a training run (sets --dp = GPUs / (tp x pp x cp))")
    _output_flags(p)
    p.add_argument("--explain", action="store_true",
                   help="show each number's formula, substituted values and source")
    p.set_defaults(func=cmd_check)


def _units_help() -> str:
    from .units import UNITS

    return "units of the printed sizes: " + ", ".join(UNITS) + " (default GiB)"


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the contract's JSON")
    p.add_argument("--units", default="GiB", help=_units_help())


_FIT_DESCRIPTION = textwrap.fill(
    "What fits on a GPU: for inference the largest batch, the longest prompt and the fewest "
    "GPUs (with their tp x pp layout); for training the largest micro-batch, the longest "
    "sequence and every parallel layout of --gpus GPUs ranked by peak. Every answer is exact: "
    "it fits and one more does not.", 92)
_FIT_EXAMPLES = """examples:
  memfit fit llama-3.1-8b infer --gpu l4
  memfit fit llama-3.1-70b infer --gpu h100 --engine vllm --prompt 8192
  memfit fit llama-3.1-8b train --gpu a100-80gb --lora-rank 16
  memfit fit llama-3.1-70b train --gpu h100 --gpus 8 --checkpointing full

MODEL comes before the mode (`memfit fit infer MODEL` is read the same way). Every option of
`memfit infer` / `memfit train` is taken; --gpu is required."""
_MODEL_HELP = ("a catalog name (see `memfit models`) or its Hugging Face id, a config.json, a "
               "folder, a .gguf file, or hf:org/name (extra 'hub')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memfit", description="How much GPU memory a transformer needs, "
                     "for inference and training, exactly.")
    parser.add_argument("--version", action="version", version=f"memfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("models", help="list the catalog of models")
    p.add_argument("--family", help="only this model_type (e.g. llama, qwen2_moe)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("formats", help="the table of dtypes and weight formats (bits/element)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_formats)

    p = sub.add_parser("gpus", help="the catalog of GPUs and their usable memory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_gpus)

    p = sub.add_parser("params", help="exact parameter counts by component")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_params)

    for mode, cls, what in (("infer", InferenceOptions, "inference: a prefill, then decode"),
                            ("train", TrainingOptions, "one training step")):
        p = sub.add_parser(mode, help=f"memory per GPU for {what}")
        p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
        add_option_flags(p, cls)
        _output_flags(p)
        p.add_argument("--explain", action="store_true",
                       help="show each number's formula, substituted values and source")
        p.set_defaults(func=cmd_estimate)

    helptext = "largest batch, longest context, fewest GPUs, layouts"
    p = sub.add_parser("fit", help=helptext, description=_FIT_DESCRIPTION, epilog=_FIT_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    fsub = p.add_subparsers(dest="mode", metavar="MODE", parser_class=_Parser, required=True)
    for mode, cls in (("infer", InferenceOptions), ("train", TrainingOptions)):
        q = fsub.add_parser(mode, help=f"what fits for {mode}", description=_FIT_DESCRIPTION,
                            epilog=_FIT_EXAMPLES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        add_option_flags(q, cls, skip=("gpu",))
        q.add_argument("--gpu", required=True, help="GPU kind (see `memfit gpus`)")
        q.add_argument("--gpus", type=_int_arg, default=None,
                       help="number of GPUs (default: for train --dp x --tp x --pp x --cp "
                       "when given, else the fewest that fit; searched for infer)")
        _output_flags(q)
        q.set_defaults(func=cmd_fit)

    _add_check(sub)
    _add_compare_and_plot(sub)

    p = sub.add_parser("serve", help="the web page and HTTP API (extra 'web')")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port_arg, default=8000, help="port (default 8000)")
    p.add_argument("--allow-paths", action="store_true",
                   help="accept MODEL paths on this machine (off by default)")
    p.add_argument("--allow-hub", action="store_true",
                   help="accept hf: models, fetching configs and headers from the Hub")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("trace", help="measure the true peak by running the real model code "
                       "on fake tensors (extra 'trace')")
    p.add_argument("model", metavar="MODEL", help=_MODEL_HELP)
    tsub = p.add_subparsers(dest="mode", metavar="MODE", parser_class=_Parser, required=True)
    for mode, cls in (("infer", InferenceOptions), ("train", TrainingOptions)):
        q = tsub.add_parser(mode, help=f"trace {mode}")
        add_option_flags(q, cls, skip=("gpu",))
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=cmd_trace)
    return parser


_MODES = ("infer", "train")


def _normalize(argv: Sequence[str]) -> list[str]:
    """``--per_device_train_batch_size`` as ``--per-device-train-batch-size`` (HF's
    spelling), and ``fit infer MODEL`` as ``fit MODEL infer`` (the same for trace, compare and
    plot); words after a bare ``--`` are left alone."""
    out: list[str] = []
    for i, word in enumerate(argv):
        if word == "--":
            out += argv[i:]
            break
        if word.startswith("--") and "_" in word.split("=")[0]:
            name, eq, value = word.partition("=")
            word = name.replace("_", "-") + eq + value
        out.append(word)
    if (len(out) >= 3 and out[0] in ("fit", "trace", "compare", "plot") and out[1] in _MODES
            and out[2] not in _MODES and not out[2].startswith("-")):
        out[1], out[2] = out[2], out[1]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        argv = _normalize(sys.argv[1:] if argv is None else argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise _unrecognized(args._parser, extra)
        if not getattr(args, "func", None):
            commands = _action(parser, "command")
            allowed = ", ".join(commands.choices or ()) if commands else "a command"
            raise MemfitError(f"command: missing; allowed: {allowed} (see `memfit --help`)",
                              field="command", value=None, allowed=allowed)
        return int(args.func(args))
    except MemfitError as exc:
        print(f"memfit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
