"""Fuzzing the input doors: the only exception memfit may raise is MemfitError.

hypothesis drives the config reader (``from_hf_config`` on real catalog configs with values
mutated, keys dropped and types swapped, and on arbitrary JSON-like dicts), the option
classes (``InferenceOptions(**kw)``, ``TrainingOptions(**kw)``, ``make_options``), the file
readers (GGUF and safetensors headers), the command line (``cli.main`` with random flags and
values: exit 0 or 2, one line on stderr) and the HTTP API (random bodies: never a 500).

The default run keeps ``max_examples`` modest (``MEMFIT_EXAMPLES`` raises it); the longer
runs are marked ``slow``. ``benchmarks/fuzz_atheris.py`` drives the same targets with atheris'
coverage-guided fuzzer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import struct
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import memfit
from memfit import MemfitError
from memfit.arch import FAMILIES, from_hf_config
from memfit.catalog import entry_names, get_entry
from memfit.memory.params import count_params
from memfit.workload import InferenceOptions, TrainingOptions, make_options

EXAMPLES = int(os.environ.get("MEMFIT_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
LONG = settings(FUZZ, max_examples=10 * EXAMPLES)

NAMES = entry_names()
CONFIGS = {n: dict(get_entry(n).config) for n in NAMES}
# every key any catalog config uses, and the ones the reader looks up beyond them
KEYS = sorted({k for c in CONFIGS.values() for k in c} | {
    "head_dim", "layer_types", "sliding_window", "use_sliding_window", "max_window_layers",
    "sliding_window_pattern", "mlp_only_layers", "decoder_sparse_step", "text_config",
    "partial_rotary_factor", "rotary_pct", "q_lora_rank", "n_inner", "torch_dtype", "dtype"})

# JSON-like values, including what JSON cannot spell but Python's json reads (NaN, inf)
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.sampled_from([0, 1, 2, 3, 4, 8, 64, 128, 4096, 10**6, 10**9, 10**18, -1])
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=12) | st.sampled_from(["llama", "bfloat16", "full_attention",
                                                    "sliding_attention", "silu", ""]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def _only_memfit_errors(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except MemfitError as exc:
        assert isinstance(exc, ValueError)
        assert str(exc) and "\n" not in str(exc), repr(str(exc))
        return None


@st.composite
def mutated_configs(draw: Any) -> dict[str, Any]:
    """A real catalog config with a few keys dropped, replaced or added."""
    cfg = dict(CONFIGS[draw(st.sampled_from(NAMES))])
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["drop", "replace", "replace", "add", "swap_type"]))
        key = draw(st.sampled_from(sorted(cfg) if action != "add" and cfg else KEYS))
        if action == "drop":
            cfg.pop(key, None)
        elif action == "swap_type":
            value = cfg.get(key)
            cfg[key] = draw(st.sampled_from([str(value), [value], {"v": value}, None,
                                             float("nan"), True]))
        else:
            cfg[key] = draw(JSONISH)
    return cfg


def _estimate_all(spec: Any) -> None:
    """Whatever config was accepted must also estimate (or refuse) cleanly."""
    count_params(spec)
    _only_memfit_errors(memfit.infer, spec, batch=2, prompt=33, generate=3)
    _only_memfit_errors(memfit.train, spec, batch=1, seq=16)


@FUZZ
@given(mutated_configs())
def test_config_reader_on_mutated_real_configs(cfg: dict[str, Any]) -> None:
    spec = _only_memfit_errors(from_hf_config, cfg, name="fuzz")
    if spec is not None:
        _estimate_all(spec)


@FUZZ
@given(st.sampled_from(sorted(FAMILIES) + ["custom", None]),
       st.dictionaries(st.sampled_from(KEYS), JSONISH, max_size=12))
def test_config_reader_on_arbitrary_dicts(model_type: Any, cfg: dict[str, Any]) -> None:
    if model_type is not None:
        cfg = {**cfg, "model_type": model_type}
    spec = _only_memfit_errors(from_hf_config, cfg)
    if spec is not None:
        _estimate_all(spec)


@FUZZ
@given(JSONISH)
def test_model_argument_of_any_type(model: Any) -> None:
    """Whatever is passed as MODEL (a dict, a list, a number...), MemfitError or a result."""
    for call in (memfit.params, memfit.infer, memfit.train):
        _only_memfit_errors(call, model)


@FUZZ
@given(st.data())
def test_custom_model_descriptions(data: Any) -> None:
    """``model_type: custom``: ModelSpec's own fields, mutated."""
    base = from_hf_config(CONFIGS[data.draw(st.sampled_from(NAMES))]).to_dict()
    cfg = {"model_type": "custom", **base}
    for key in data.draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        cfg[key] = data.draw(JSONISH)
    spec = _only_memfit_errors(from_hf_config, cfg)
    if spec is not None:
        _estimate_all(spec)


# -- options ---------------------------------------------------------------------------------

def _option_values(cls: type) -> Any:
    names = [f.name for f in fields(cls)]
    return st.dictionaries(st.sampled_from(names), JSONISH | st.sampled_from(
        ["sdpa", "eager", "vllm", "llamacpp", "bf16-mixed", "fp32", "adamw", "full", "h100",
         "bnb-nf4", "q4_k_m", "fp8", "none", "optimizer"]), max_size=6)


@FUZZ
@given(_option_values(InferenceOptions))
def test_inference_options(kw: dict[str, Any]) -> None:
    opts = _only_memfit_errors(InferenceOptions, **kw)
    if opts is not None:
        _only_memfit_errors(memfit.infer, "smollm2-135m", **kw)


@FUZZ
@given(_option_values(TrainingOptions))
def test_training_options(kw: dict[str, Any]) -> None:
    opts = _only_memfit_errors(TrainingOptions, **kw)
    if opts is not None:
        _only_memfit_errors(memfit.train, "smollm2-135m", **kw)


@FUZZ
@given(st.dictionaries(st.text(max_size=10), JSONISH, max_size=4))
def test_unknown_option_names(kw: dict[str, Any]) -> None:
    """Any keyword, known or not: make_options names the unknown one (MemfitError)."""
    for cls in (InferenceOptions, TrainingOptions):
        _only_memfit_errors(make_options, cls, **kw)


# -- file readers ----------------------------------------------------------------------------

def _gguf_header() -> bytes:
    """A small valid GGUF v3 header (llama, 1 block), tensor infos and no data."""
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = [("general.architecture", 8, s("llama")), ("llama.block_count", 4, struct.pack("<I", 1)),
          ("llama.embedding_length", 4, struct.pack("<I", 64)),
          ("llama.feed_forward_length", 4, struct.pack("<I", 128)),
          ("llama.attention.head_count", 4, struct.pack("<I", 4)),
          ("llama.context_length", 4, struct.pack("<I", 256))]
    out = b"GGUF" + struct.pack("<IQQ", 3, 1, len(kv))
    for key, vtype, value in kv:
        out += s(key) + struct.pack("<I", vtype) + value
    out += s("token_embd.weight") + struct.pack("<IQQIQ", 2, 64, 100, 0, 0)  # F32 [100, 64]
    out += bytes(-len(out) % 32)  # tensor data starts at the default 32-byte alignment
    return out + bytes(4 * 64 * 100)


GGUF = _gguf_header()
HEADER_BYTES = 352  # mutations land in the header (metadata and tensor infos), not the data


@FUZZ
@given(st.data())
def test_gguf_reader_on_mutated_headers(tmp_path_factory: Any, data: Any) -> None:
    raw = bytearray(GGUF)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, min(len(raw), HEADER_BYTES) - 1)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:at + data.draw(st.integers(1, 16))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    path = Path(tmp_path_factory.mktemp("gguf")) / "m.gguf"
    path.write_bytes(bytes(raw))
    for call in (memfit.params, memfit.infer):
        _only_memfit_errors(call, str(path))


@FUZZ
@given(st.dictionaries(st.sampled_from(["x", "y", "__metadata__"]), JSONISH | st.fixed_dictionaries(
    {"dtype": st.sampled_from(["BF16", "F32", "I8", "Q9"]) | JSONISH,
     "shape": st.lists(st.integers(-2, 2**40), max_size=3) | JSONISH,
     "data_offsets": st.lists(st.integers(-2, 2**40), max_size=3) | JSONISH}), max_size=3))
def test_safetensors_header_parser(header: dict[str, Any]) -> None:
    from memfit.inputs.safetensors import parse_header

    _only_memfit_errors(parse_header, json.dumps(header), "fuzz.safetensors")


# -- the command line ------------------------------------------------------------------------

CLI_COMMANDS = ["infer", "train", "params", "fit", "models", "formats", "gpus", "compare"]
CLI_MODELS = ["smollm2-135m", "gpt2", "qwen1.5-moe-a2.7b", "nosuch", "", "gpt2,smollm2-135m"]
CLI_FLAGS = sorted({"--" + f.name.replace("_", "-") for cls in (InferenceOptions, TrainingOptions)
                    for f in fields(cls)} | {"--json", "--explain", "--gpus", "--units",
                                             "--family", "--bogus", "-o", "--sweep"})
CLI_VALUES = st.sampled_from(["1", "2", "0", "-1", "3", "8", "1e18", "nan", "inf", "1.5", "x",
                              "", "h100", "bf16", "fp8", "q4_k_m", "vllm", "llamacpp", "eager",
                              "all", "full", "selective", "fp32", "params", "optimizer", "GB",
                              "0,1", "none,16", "true", "--json", "1e400", "0x10"]) | st.text(
    max_size=6)


@FUZZ
@given(st.sampled_from(CLI_COMMANDS), st.sampled_from(CLI_MODELS),
       st.sampled_from(["infer", "train", "bogus"]),
       st.lists(st.tuples(st.sampled_from(CLI_FLAGS), st.none() | CLI_VALUES), max_size=5))
def test_cli_exits_0_or_2_with_one_line(command: str, model: str, mode: str,
                                        flags: list[tuple[str, str | None]]) -> None:
    from memfit.cli import main

    argv = [command]
    if command in ("infer", "train", "params", "fit", "compare"):
        argv.append(model)
    if command in ("fit", "compare"):
        argv.append(mode)
    for flag, value in flags:
        argv += [flag] if value is None else [flag, value]
    if "-o" in argv:
        return  # plot's output flag: a fuzzer writes no files
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code in (0, 2), (argv, code)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("memfit: error: "), (argv, lines)
        assert "allowed" in lines[0], (argv, lines)


# -- the HTTP API ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client() -> Any:
    pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
    if not any(importlib.util.find_spec(m) for m in ("httpx2", "httpx")):
        pytest.skip("FastAPI's TestClient needs httpx2 (or httpx)")
    from fastapi.testclient import TestClient

    from memfit.web import create_app

    return TestClient(create_app(), raise_server_exceptions=True)


@FUZZ
@given(st.sampled_from(["/api/params", "/api/infer", "/api/train", "/api/fit",
                        "/api/verdicts"]),
       st.fixed_dictionaries({}, optional={
           "model": st.sampled_from(["smollm2-135m", "gpt2", "../x.json", "hf:a/b"])
           | JSONISH | mutated_configs(),
           "mode": st.sampled_from(["infer", "train"]) | JSONISH,
           "gpu": st.sampled_from(["h100", "l4"]) | JSONISH,
           "gpus": st.integers(-1, 100) | JSONISH,
           "options": _option_values(TrainingOptions) | _option_values(InferenceOptions)
           | JSONISH}))
def test_http_never_answers_500(client: Any, path: str, body: dict[str, Any]) -> None:
    response = client.post(path, content=json.dumps(body).encode(),
                           headers={"content-type": "application/json"})
    assert response.status_code in (200, 413, 422), (path, body, response.text[:300])
    if response.status_code == 422:
        for item in response.json()["detail"]:
            assert {"loc", "msg", "input", "allowed"} <= set(item), item


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_http_raw_bodies(client: Any, body: bytes) -> None:
    response = client.post("/api/infer", content=body,
                           headers={"content-type": "application/json"})
    assert response.status_code in (200, 422), (body, response.text[:300])


# -- hostile shapes (issue 19): huge and float counts, wrong metadata types, nested arrays,
# giant headers, deep JSON; each answer a refusal or a result within 2 s ------------------------

def _load_hostile() -> Any:
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "hostile.py"
    spec = importlib.util.spec_from_file_location("memfit_hostile", script)
    assert spec is not None and spec.loader is not None
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return module


HOSTILE = _load_hostile()


def _bounded(case: Any) -> None:
    stats = HOSTILE.DoorStats()
    HOSTILE.run_case(case, stats, HOSTILE.MAX_SECONDS)
    assert not stats.failures, stats.failures


@FUZZ
@given(st.randoms(use_true_random=False), st.sampled_from(["gguf", "safetensors", "config"]))
def test_hostile_files(tmp_path_factory: Any, rng: Any, door: str) -> None:
    """GGUF (wrong types, nested arrays, huge counts and shapes), safetensors (giant declared
    headers, overlapping offsets, 1,000-dimension shapes, 5,000-digit numbers, bad indexes),
    config.json (float and huge counts, deep JSON): refused or answered within 2 s."""
    HOSTILE.MODEL_TYPES[:] = [t for t in HOSTILE.MODEL_TYPES if t != "no_such_type"]
    _bounded(HOSTILE.file_case(rng, Path(tmp_path_factory.mktemp(door)), door, 0))


COUNT_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
              "vocab_size", "num_local_experts", "num_experts_per_tok", "head_dim",
              "max_position_embeddings", "sliding_window", "moe_intermediate_size"]


@FUZZ
@given(st.sampled_from(["llama", "mixtral", "qwen2_moe", "deepseek_v3", "gpt2"]),
       st.dictionaries(st.sampled_from(COUNT_KEYS),
                       st.integers(-2, 2**70) | st.integers(1, 10**6).map(float)
                       | st.floats(1e3, 1e300) | st.sampled_from([100000.0, 1e5, 10001.0]),
                       min_size=1, max_size=3))
def test_float_and_huge_counts_in_configs(model_type: str, counts: dict[str, Any]) -> None:
    """A count spelled as a float (``100000.0``) is read as its integer and held to the same
    bounds; nothing huge gets past them into the per-layer work."""
    cfg = {**HOSTILE.TINY, "model_type": model_type, **counts}
    _bounded(HOSTILE.Case("config", repr(counts), lambda: HOSTILE._python_api(
        lambda: _estimate_all(from_hf_config(cfg)))))


@FUZZ
@given(st.randoms(use_true_random=False))
def test_hostile_command_lines(rng: Any) -> None:
    """``--gpus 1e30``, ``--tp 720720``, 5,000-digit values...: exit 0 or 2, within 2 s."""
    _bounded(HOSTILE.cli_case(rng, Path("."), 0))


@FUZZ
@given(st.randoms(use_true_random=False))
def test_hostile_http_bodies(client: Any, rng: Any) -> None:
    """Inline configs with hostile counts, float GPU counts, deep JSON: 200/413/422 in 2 s."""
    HOSTILE.MODEL_TYPES[:] = [t for t in HOSTILE.MODEL_TYPES if t != "no_such_type"]
    _bounded(HOSTILE.http_case(rng, client, 0))


# -- atheris ---------------------------------------------------------------------------------

def test_atheris_harness_runs_briefly(tmp_path: Path) -> None:
    """The coverage-guided harness (benchmarks/fuzz_atheris.py), a few thousand inputs."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (pip install atheris)")
    import subprocess
    import sys

    script = Path(__file__).parents[1] / "benchmarks" / "fuzz_atheris.py"
    proc = subprocess.run([sys.executable, str(script), "-runs=3000", "-seed=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 3000 runs" in proc.stderr, proc.stderr[-1000:]


# -- longer runs -----------------------------------------------------------------------------

@pytest.mark.slow
@LONG
@given(mutated_configs())
def test_slow_config_reader(cfg: dict[str, Any]) -> None:
    test_config_reader_on_mutated_real_configs.hypothesis.inner_test(cfg)


@pytest.mark.slow
@LONG
@given(_option_values(TrainingOptions), _option_values(InferenceOptions))
def test_slow_options(train_kw: dict[str, Any], infer_kw: dict[str, Any]) -> None:
    test_training_options.hypothesis.inner_test(train_kw)
    test_inference_options.hypothesis.inner_test(infer_kw)
