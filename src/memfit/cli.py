"""The ``memfit`` command line: a thin shell over the Python API.

Flags for scenario options are generated from the dataclass fields in ``workload.py``, so the
CLI, the API and the web page share one definition. User errors print one line on stderr and
exit with status 2; nothing below this module prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from typing import Any, Callable, Sequence

from . import __version__
from .errors import MemfitError
from .workload import InferenceOptions, TrainingOptions

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors become MemfitError (one line, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise MemfitError(f"{self.prog}: {message}")


def _int_arg(text: str) -> int:
    try:
        value = float(text) if ("e" in text.lower() or "." in text) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        value = int(value)
    return value


def _float_arg(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def add_option_flags(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One ``--flag`` per field of ``cls`` (an options dataclass), with its help and bounds."""
    for f in fields(cls):
        if f.name in skip:
            continue
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        default = None if f.default is MISSING else f.default
        help_text = meta.get("help", "")
        if meta.get("flag"):
            parser.add_argument(flag, dest=f.name, action="store_true", default=None,
                                help=help_text)
            continue
        choices = meta.get("choices")
        if choices is not None:
            shown = [c for c in choices if c is not None]
            kind: Callable[[str], Any] = int if all(isinstance(c, int) for c in shown) else str
            parser.add_argument(flag, dest=f.name, type=kind, choices=shown, default=None,
                                help=f"{help_text} (default: {default})")
            continue
        kind = _float_arg if isinstance(f.default, float) else (
            _int_arg if meta.get("min") is not None else str)
        parser.add_argument(flag, dest=f.name, type=kind, default=None,
                            help=f"{help_text} (default: {default})")


def options_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the flags the user actually gave (others keep their defaults)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls)
             if getattr(args, f.name, None) is not None}
    return cls(**given)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Plain aligned text table (no third-party renderer: the CLI must start fast)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


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
    rows = []
    for e in entries:
        c = count_params(e.spec)
        rows.append({"name": e.name, "family": e.family, "total_params": c.total,
                     "active_params": c.active, "hf_id": e.hf_id, "source": e.source})
    if args.json:
        _print_json(rows)
        return 0
    print(_table(["model", "family", "total params", "active params", "Hugging Face id"],
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
    print(_table(["component", "parameters", "share"], rows, right=(1, 2)))
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from .catalog import resolve_model

    spec, config = resolve_model(args.model)
    if config is None:
        raise MemfitError.bad_value("model", args.model, "a model with a config.json")
    try:
        from . import trace as tracer
    except ImportError as exc:
        raise MemfitError(f"trace: needs the 'trace' extra (pip install 'memfit[trace]'): {exc}",
                          field="trace", value=None, allowed="memfit[trace] installed") from None
    if args.mode == "infer":
        options = options_from_args(InferenceOptions, args)
        result = tracer.trace_inference(config, options)
    else:
        options = options_from_args(TrainingOptions, args)
        result = tracer.trace_training(config, options)
    out = result.to_dict()
    if args.json:
        _print_json(out)
        return 0
    from .units import format_bytes

    print(f"{spec.name} {args.mode}: peak {format_bytes(out['peak_bytes'])} "
          f"in phase {out.get('peak_phase')} (traced on fake tensors, GiB = 2^30 bytes)")
    rows = [[k, format_bytes(v)] for k, v in out["components"].items()]
    print(_table(["component", "GiB at peak"], rows, right=(1,)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="memfit", description="How much GPU memory a transformer needs, "
                     "for inference and training, exactly.")
    parser.add_argument("--version", action="version", version=f"memfit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("models", help="list the catalog of models")
    p.add_argument("--family", help="only this model_type (e.g. llama, qwen2_moe)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("params", help="exact parameter counts by component")
    p.add_argument("model", metavar="MODEL", help="catalog name, config.json or folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("trace", help="measure the true peak by running the real model code "
                       "on fake tensors (extra 'trace')")
    p.add_argument("model", metavar="MODEL", help="catalog name, config.json or folder")
    tsub = p.add_subparsers(dest="mode", metavar="MODE", parser_class=_Parser, required=True)
    for mode, cls in (("infer", InferenceOptions), ("train", TrainingOptions)):
        q = tsub.add_parser(mode, help=f"trace {mode}")
        add_option_flags(q, cls, skip=("gpu",))
        q.add_argument("--json", action="store_true", help="print JSON")
        q.set_defaults(func=cmd_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
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
