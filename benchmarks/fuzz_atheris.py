"""Coverage-guided fuzzing of memfit's input doors with atheris (libFuzzer for Python).

    pip install atheris
    python benchmarks/fuzz_atheris.py -runs=20000          # a bounded run
    python benchmarks/fuzz_atheris.py -max_total_time=600  # ten minutes

The first input byte picks a target; the rest is its input:

0. a config.json text: ``json.loads`` then ``from_hf_config``, then ``params``/``infer``/``train``;
1. scenario options built from the bytes: ``InferenceOptions(**kw)``, ``TrainingOptions(**kw)``
   and the estimates on a small catalog model;
2. a GGUF file: ``memfit.params`` and ``memfit.infer`` on it;
3. a safetensors JSON header: ``memfit.inputs.safetensors.parse_header``;
4. a command line from a vocabulary of commands, flags and values: ``memfit.cli.main``,
   which must exit 0 or 2 with one line on stderr.

Anything but :class:`memfit.MemfitError` is a crash (atheris stops and writes the input).
``tests/test_fuzz.py`` runs this script briefly when atheris is installed; hypothesis drives
the same targets there by default.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
from dataclasses import fields

import atheris

with atheris.instrument_imports(include=["memfit"]):
    import memfit
    from memfit import MemfitError
    from memfit.arch import from_hf_config
    from memfit.catalog import get_entry
    from memfit.cli import main as cli_main
    from memfit.inputs.safetensors import parse_header
    from memfit.workload import InferenceOptions, TrainingOptions

SMALL = "smollm2-135m"
BASE_CONFIG = dict(get_entry(SMALL).config)
TMP = tempfile.mkdtemp(prefix="memfit-atheris-")
GGUF_PATH = os.path.join(TMP, "fuzz.gguf")

OPTION_NAMES = {cls: [f.name for f in fields(cls)] for cls in (InferenceOptions, TrainingOptions)}
WORDS = ["infer", "train", "params", "fit", "models", "formats", "gpus", "compare", SMALL, "gpt2",
         "nosuch", "--batch", "--prompt", "--generate", "--seq", "--tp", "--pp", "--ep", "--dp",
         "--zero", "--fsdp", "--sp", "--cp", "--weights", "--kv-dtype", "--engine", "--gpu",
         "--gpus", "--precision", "--optimizer", "--checkpointing", "--lora-rank", "--qlora",
         "--offload", "--json", "--units", "--bogus", "1", "2", "0", "-1", "8", "1e18", "nan",
         "inf", "x", "", "h100", "vllm", "llamacpp", "bf16", "fp8", "q4_k_m", "full", "fp32",
         "0,1", "none"]


def _value(fdp: atheris.FuzzedDataProvider) -> object:
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeIntInRange(-2, 2**41)
    if kind == 1:
        return fdp.ConsumeRegularFloat() if fdp.ConsumeBool() else fdp.ConsumeFloat()
    if kind == 2:
        return fdp.ConsumeUnicodeNoSurrogates(12)
    if kind == 3:
        return fdp.ConsumeBool()
    if kind == 4:
        return None
    if kind == 5:
        return [fdp.ConsumeIntInRange(0, 8)]
    return fdp.PickValueInList(["sdpa", "eager", "vllm", "llamacpp", "bf16-mixed", "fp32",
                                "adamw", "full", "h100", "bnb-nf4", "q4_k_m", "fp8", "none"])


def _guard(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except MemfitError:
        return None


def _config(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    if fdp.ConsumeBool():  # mutate a real config
        cfg = dict(BASE_CONFIG)
        for _ in range(fdp.ConsumeIntInRange(1, 4)):
            key = fdp.PickValueInList(sorted(cfg) + ["head_dim", "layer_types", "text_config"])
            cfg[key] = _value(fdp)
    else:  # raw JSON text
        try:
            cfg = json.loads(fdp.ConsumeUnicodeNoSurrogates(4096))
        except (ValueError, RecursionError):
            return
        if not isinstance(cfg, dict):
            return
    spec = _guard(from_hf_config, cfg)
    if spec is not None:
        _guard(memfit.params, spec)
        _guard(memfit.infer, spec, batch=2, prompt=17, generate=3)
        _guard(memfit.train, spec, batch=1, seq=16)


def _options(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    cls = InferenceOptions if fdp.ConsumeBool() else TrainingOptions
    kw = {fdp.PickValueInList(OPTION_NAMES[cls]): _value(fdp)
          for _ in range(fdp.ConsumeIntInRange(0, 5))}
    if _guard(cls, **kw) is not None:
        _guard(memfit.infer if cls is InferenceOptions else memfit.train, SMALL, **kw)


def _gguf(data: bytes) -> None:
    with open(GGUF_PATH, "wb") as f:
        f.write(b"GGUF" + data if data[:1] != b"G" else data)
    _guard(memfit.params, GGUF_PATH)
    _guard(memfit.infer, GGUF_PATH, engine="llamacpp")


def _safetensors(data: bytes) -> None:
    _guard(parse_header, data, "fuzz.safetensors")


def _cli(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    argv = [fdp.PickValueInList(WORDS) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    if argv[:1] in (["serve"], ["trace"], ["plot"]):
        return
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    if code not in (0, 2):
        raise AssertionError(f"exit {code} for {argv}")
    if code == 2 and len(err.getvalue().strip().splitlines()) != 1:
        raise AssertionError(f"not one line for {argv}: {err.getvalue()!r}")


TARGETS = (_config, _options, _gguf, _safetensors, _cli)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    TARGETS[data[0] % len(TARGETS)](data[1:])


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
