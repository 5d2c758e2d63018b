"""Hostile inputs at every door, each answer held to a time and memory budget (issue 19).

Generates inputs an attacker (or a broken tool) would hand memfit: GGUF files with huge
counts, metadata of the wrong type and nested arrays; safetensors files with giant declared
headers, overlapping or gapped offsets, thousand-dimension shapes and 5,000-digit numbers;
indexes whose weight_map is not a map of file names; config.json files with float, huge,
NaN and deeply nested values; command lines with huge ``--gpus``, ``--batch``, ``--tp``; and
HTTP bodies with all of the above inline. Every answer must be a result or memfit's refusal
(``MemfitError`` in Python, exit 2 with one line on the CLI, 413/422 over HTTP), within
``--max-seconds`` (2 s) each, the process (and the web server's workers) under ``--max-rss``
(500 MB). The time is this process's CPU time (HTTP: the wall clock, the work being in the
server's workers), so that other work on a shared machine does not count; an answer still
running after 4x the budget of wall clock is a hang.

    python benchmarks/hostile.py [--count 2400] [--seed 0] [--doors gguf,http]

prints one row per door: cases, results, refusals, the slowest answer, the peak RSS, and
every failure (a traceback, an unexpected status, an answer over budget). Exit status 1 when
there is a failure. ``tests/test_hostile.py`` runs a small sample of the same generators in
CI; ``tests/test_fuzz.py`` drives them from hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import signal
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_SECONDS = 2.0
MAX_RSS_BYTES = 500 * 1024 * 1024

# Values an attacker reaches for, where a count or a size belongs.
HUGE = [0, -1, 2**31, 2**32 + 1, 2**53 + 1, 2**63 - 1, 2**64 - 1, 10**12, 10**15, 10**18,
        720720, 100000, 65536, 65537, 10001]
FLOATS = [100000.0, 1e5, 1e30, 1e300, float("inf"), float("nan"), 2.5, -0.0, 4096.0]


def huge_int(rng: random.Random) -> int:
    if rng.random() < 0.15:
        return 10 ** rng.choice([100, 4000, 4400]) - 1  # up to past the int-str limit
    return rng.choice(HUGE)


def hostile_value(rng: random.Random, depth: int = 0) -> Any:
    """Something that does not belong where a count, a size or a name does."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return huge_int(rng)
    if kind == 1:
        return rng.choice(FLOATS)
    if kind == 2:
        return rng.choice(["", "x" * rng.choice([1, 100, 10000]), "\x1b[31mred", "a\nb",
                           "../../etc/passwd", "~nosuchuser/x", "llama"])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return [huge_int(rng)] * rng.choice([0, 1, 3, 1000])
    if kind == 5:
        return deep_json(rng.choice([10, 100, 1000, 5000]))
    if kind == 6:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    if kind == 7:
        return {"v": hostile_value(rng, depth + 1)}
    return rng.random() * 10**rng.randrange(20)


@dataclass(frozen=True)
class Deep:
    """A JSON array nested ``depth`` deep (written as text: json.dumps would recurse)."""

    depth: int


def deep_json(depth: int) -> Any:
    return Deep(depth)


def dumps(value: Any) -> str:
    """``json.dumps`` that writes :class:`Deep` values (and NaN, infinities) as given."""
    deep: list[Deep] = []

    def placeholder(obj: Any) -> str:
        if isinstance(obj, Deep):
            deep.append(obj)
            return f"__deep_{len(deep) - 1}__"
        raise TypeError(type(obj).__name__)

    def long_ints(obj: Any) -> Any:  # past Python's int-str limit: written digit by digit
        if isinstance(obj, int) and not isinstance(obj, bool) and obj.bit_length() > 14_000:
            return Deep(-(int(obj.bit_length() * 0.30103) + 1))  # about its digit count
        if isinstance(obj, list):
            return [long_ints(v) for v in obj]
        if isinstance(obj, dict):
            return {k: long_ints(v) for k, v in obj.items()}
        return obj

    text = json.dumps(long_ints(value), allow_nan=True, default=placeholder)
    for i, d in enumerate(deep):
        nested = "[" * d.depth + "1" + "]" * d.depth if d.depth >= 0 else "9" * -d.depth
        text = text.replace(f'"__deep_{i}__"', nested)
    return text


# ------------------------------------------------------------------------------------------
# GGUF
# ------------------------------------------------------------------------------------------

_U32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = 4, 6, 7, 8, 9, 10, 11, 12


def _gs(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", len(raw)) + raw


def _gv(vtype: int, value: Any) -> bytes:
    if vtype == _STR:
        return _gs(value)
    if vtype == _ARR:
        item, values = value
        return struct.pack("<IQ", item, len(values)) + b"".join(_gv(item, v) for v in values)
    fmt = {_U32: "<I", _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}[vtype]
    return struct.pack(fmt, value)


def _gguf_kv(arch: str) -> list[tuple[str, int, Any]]:
    return [("general.architecture", _STR, arch), ("general.file_type", _U32, 1),
            (f"{arch}.block_count", _U32, 2), (f"{arch}.context_length", _U32, 256),
            (f"{arch}.embedding_length", _U32, 64), (f"{arch}.feed_forward_length", _U32, 128),
            (f"{arch}.attention.head_count", _U32, 4),
            (f"{arch}.attention.head_count_kv", _U32, 2),
            (f"{arch}.expert_count", _U32, 4), (f"{arch}.expert_used_count", _U32, 2),
            ("tokenizer.ggml.tokens", _ARR, (_STR, [f"t{i}" for i in range(32)]))]


def _gguf_tensors() -> list[tuple[str, list[int], int]]:
    out = [("token_embd.weight", [64, 32], 0), ("output_norm.weight", [64], 0)]
    for i in range(2):
        out += [(f"blk.{i}.attn_q.weight", [64, 64], 0), (f"blk.{i}.ffn_up.weight", [64, 128], 0)]
    return out


def _typed(rng: random.Random, value: Any) -> tuple[int, Any]:
    """A GGUF (type, value) for a hostile value (arrays of arrays included)."""
    if isinstance(value, bool):
        return _BOOL, value
    if isinstance(value, int):
        return (_U64, value) if 0 <= value < 2**64 else (_I64, max(-2**63, min(value, 2**63 - 1)))
    if isinstance(value, float):
        return _F64, value
    if isinstance(value, str):
        return _STR, value
    depth = rng.choice([1, 2, 3, 20])
    inner: tuple[int, Any] = (_U32, [1, 2])
    for _ in range(depth - 1):
        inner = (_ARR, [inner] * rng.choice([1, 2]))
    return _ARR, inner


def gguf_bytes(rng: random.Random) -> tuple[bytes, str]:
    """A GGUF file with one or more hostile changes; its name (split models: -0000N-of-)."""
    arch = rng.choice(["llama", "qwen2moe", "qwen3moe", "gpt2", "deepseek2", "gemma3", "gptneox",
                       "gpt-oss", "phi3"])
    kv = _gguf_kv(arch)
    tensors = _gguf_tensors()
    name = "m.gguf"
    n_tensors: int | None = None
    n_kv: int | None = None
    for _ in range(rng.choice([1, 1, 2, 3])):
        what = rng.randrange(8)
        if what <= 2:  # a key of the wrong type or size
            i = rng.randrange(len(kv))
            kv[i] = (kv[i][0], *_typed(rng, hostile_value(rng)))
        elif what == 3:  # split models
            kv.append(("split.count", *_typed(rng, rng.choice([huge_int(rng), 2, 3]))))
            name = rng.choice(["m-00001-of-00002.gguf", "m-00001-of-99999.gguf", "m.gguf"])
        elif what == 4:  # declared counts
            n_tensors, n_kv = rng.choice([(huge_int(rng) % 2**64, None),
                                          (None, huge_int(rng) % 2**64)])
        elif what == 5:  # tensor shapes
            i = rng.randrange(len(tensors))
            ne = rng.choice([[], [0], [2**63] * 2, [1] * rng.choice([5, 100, 1000]),
                             [huge_int(rng) % 2**64, 64], [63, 32]])
            tensors[i] = (tensors[i][0], ne, rng.choice([0, 1, 2, 12, 99, 2**31]))
        elif what == 6:  # nested or giant metadata arrays, long strings, many tensors
            kv.append(("x.nested", *_typed(rng, [[1]])))
            kv.append(("x.long", _STR, "y" * rng.choice([10, 10**5])))
            if rng.random() < 0.3:  # up to the bound (50,000) and past it
                tensors += [(f"blk.{i % 2}.t{i}.weight", [32], 0)
                            for i in range(rng.choice([5_000, 49_000, 50_001]))]
        else:
            kv.append(("general.alignment", *_typed(rng, rng.choice([0, 3, 2**40, 64, 1]))))
    return _gguf_assemble(kv, tensors, n_tensors, n_kv, rng), name


def _gguf_assemble(kv: list[tuple[str, int, Any]], tensors: list[tuple[str, list[int], int]],
                   n_tensors: int | None, n_kv: int | None, rng: random.Random) -> bytes:
    out = [b"GGUF", struct.pack("<IQQ", 3, len(tensors) if n_tensors is None else n_tensors,
                                len(kv) if n_kv is None else n_kv)]
    for key, vtype, value in kv:
        out += [_gs(key), struct.pack("<I", vtype), _gv(vtype, value)]
    offset = 0
    for tname, ne, ggml in tensors:
        out += [_gs(tname), struct.pack("<I", len(ne)),
                b"".join(struct.pack("<Q", d % 2**64) for d in ne), struct.pack("<IQ", ggml,
                                                                               offset)]
        offset += 4 * 64 * 128 if len(tensors) < 100 else 128
    head = b"".join(out)
    head += bytes(-len(head) % 32)
    raw = head + bytes(min(offset, 1 << 20))
    if rng.random() < 0.1:
        raw = raw[:rng.randrange(len(raw))]  # truncated anywhere
    return raw


# ------------------------------------------------------------------------------------------
# safetensors, index.json, config.json
# ------------------------------------------------------------------------------------------

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 32, "tie_word_embeddings": True}
CONFIG_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
               "num_key_value_heads", "vocab_size", "head_dim", "num_local_experts",
               "num_experts", "num_experts_per_tok", "moe_intermediate_size", "sliding_window",
               "max_position_embeddings", "layer_types", "mlp_only_layers", "torch_dtype",
               "model_type", "text_config", "q_lora_rank", "kv_lora_rank", "n_routed_experts",
               "first_k_dense_replace", "partial_rotary_factor", "decoder_sparse_step"]
# (an unknown type transformers does not know either: memfit's generic path, which builds a
# model with transformers, is a separate door with its own cost)
MODEL_TYPES = ["llama", "mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3", "gpt2", "gemma3_text",
               "gpt_oss", "custom", "no_such_type"]


def hostile_config(rng: random.Random) -> dict[str, Any]:
    """A config.json with a few fields hostile (float and huge counts, wrong types, nests)."""
    cfg: dict[str, Any] = dict(TINY, model_type=rng.choice(MODEL_TYPES))
    for _ in range(rng.choice([1, 1, 2, 4])):
        key = rng.choice(CONFIG_KEYS)
        if rng.random() < 0.35:  # a count as a float, or just past a bound
            cfg[key] = rng.choice([100000.0, 1e5, 10000.0, 10001.0, 512.0, 1e300, 65.0])
        elif key == "text_config":
            cfg = {"architectures": ["X"], "text_config": cfg}
        else:
            cfg[key] = hostile_value(rng)
    return cfg


def safetensors_bytes(rng: random.Random) -> bytes:
    """A .safetensors file: a header with hostile offsets, shapes, dtypes or lengths."""
    what = rng.randrange(9)
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    header: Any = {names[0]: {"dtype": "F32", "shape": [32, 64], "data_offsets": [0, 8192]},
                   names[1]: {"dtype": "F32", "shape": [64], "data_offsets": [8192, 8448]}}
    data = 8448
    if what == 0:  # overlapping or gapped offsets
        header[names[1]]["data_offsets"] = rng.choice([[4096, 4352], [9000, 9256], [0, 256]])
    elif what == 1:  # a declared header far larger than the file, or than any real one
        n = rng.choice([84_000_000, 2**63, 17 << 20, 100_000_001])
        return struct.pack("<Q", n) + b"{" + bytes(rng.choice([0, 100]))
    elif what == 2:  # dimensions
        header[names[1]]["shape"] = rng.choice([[1] * 1000, [2] * 1000, [2**40, 2**40], [-1],
                                                [1.5], [huge_int(rng)]])
    elif what == 3:  # numbers of 5,000 digits, deep JSON
        raw = ('{"a": {"dtype": "F32", "shape": [' + "9" * rng.choice([5000, 300]) + "], "
               '"data_offsets": [0, 4]}}').encode()
        if rng.random() < 0.5:
            raw = ("[" * 100_000 + "]" * 100_000).encode()
        return struct.pack("<Q", len(raw)) + raw
    elif what == 4:
        header[names[0]] = hostile_value(rng)
    elif what == 5:
        header["__metadata__"] = hostile_value(rng)
    elif what == 6:
        header[names[0]]["dtype"] = hostile_value(rng)
    elif what == 7:
        data += rng.choice([1, -1, 1000])  # bytes after the data, or missing
    else:
        header = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
                  for i in range(rng.choice([10, 10_000, 50_000]))}
        data = len(header)
    raw = dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(max(0, data))


def hostile_index(rng: random.Random) -> Any:
    return rng.choice([{"weight_map": {"a": hostile_value(rng)}},
                       {"weight_map": {"a": "../" * 10 + "etc/passwd"}},
                       {"weight_map": hostile_value(rng)}, hostile_value(rng),
                       {"weight_map": {"a": "model.safetensors", "b": "missing.safetensors"}}])


# ------------------------------------------------------------------------------------------
# Cases: one callable each, returning "result" or "refused" (anything else is a failure)
# ------------------------------------------------------------------------------------------

# The generic path (memfit.generic: a model_type memfit has no formulas for, built by
# transformers): hostile configs of types transformers knows. ``params`` builds the model on
# the meta device when the config passes memfit's bounds; ``infer``/``train`` get an option
# past the generic path's bounds too (a trace takes seconds: the budget is for refusals).
GENERIC_BASE = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100,
                "max_position_embeddings": 64}
GENERIC_TYPES = ["bert", "opt", "mamba", "t5", "whisper", "llava", "no_such_type"]
GENERIC_KEYS = ["num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads",
                "vocab_size", "max_position_embeddings", "hidden_act", "encoder_layers",
                "decoder_layers", "d_model", "num_layers", "n_layer", "image_size",
                "vision_config", "text_config", "num_labels", "state_size", "num_experts",
                "type_vocab_size", "layer_types"]
GENERIC_OPTIONS = [("infer", "--generate", "1000000"), ("infer", "--prompt", "100000000"),
                   ("train", "--microbatches", "1000"), ("train", "--batch", "100000000"),
                   ("train", "--seq", "10000000")]


def hostile_generic_config(rng: random.Random) -> dict[str, Any]:
    cfg: dict[str, Any] = dict(GENERIC_BASE, model_type=rng.choice(GENERIC_TYPES))
    for _ in range(rng.choice([1, 1, 2, 3])):
        key = rng.choice(GENERIC_KEYS)
        if rng.random() < 0.4:  # a count as a float, just past a bound, or a huge width
            cfg[key] = rng.choice([100000.0, 1e5, 10001.0, 513, 1e300, 65.5, 10**8, 10**9,
                                   "64", -5])
        else:
            cfg[key] = hostile_value(rng)
    return cfg


def generic_case(rng: random.Random, tmp: Path, i: int) -> Case:
    where = tmp / f"generic-{i}"
    where.mkdir()
    (where / "config.json").write_text(dumps(hostile_generic_config(rng)))
    target = str(where)
    if rng.random() < 0.5:
        return Case("generic", f"params {target}", lambda: _answer(target, "params"))
    argv = list(rng.choice(GENERIC_OPTIONS))
    argv.insert(1, target)
    return Case("generic", " ".join(argv), lambda: _cli(argv))


@dataclass
class Case:
    door: str
    label: str
    run: Callable[[], str]


def _python_api(call: Callable[[], Any]) -> str:
    from memfit.errors import MemfitError

    try:
        call()
    except MemfitError as exc:
        text = str(exc)
        if "\n" in text or not text:
            raise AssertionError(f"not one line: {text!r}") from None
        return "refused"
    return "result"


def _answer(model: str, which: str) -> str:
    """One answer: ``memfit.params``, ``infer`` or ``train`` of ``model``."""
    import memfit

    return _python_api(lambda: getattr(memfit, which)(model))


def file_case(rng: random.Random, tmp: Path, door: str, i: int) -> Case:
    """A hostile file (or folder) on disk, read through ``memfit.params/infer/train``."""
    where = tmp / f"{door}-{i}"
    where.mkdir()
    if door == "gguf":
        raw, name = gguf_bytes(rng)
        (where / name).write_bytes(raw)
        target = str(where / name)
    elif door == "safetensors":
        (where / "config.json").write_text(json.dumps(TINY))
        (where / "model.safetensors").write_bytes(safetensors_bytes(rng))
        if rng.random() < 0.2:
            (where / "model.safetensors.index.json").write_text(dumps(hostile_index(rng)))
        if rng.random() < 0.03:
            os.unlink(where / "model.safetensors")
            os.mkfifo(where / "model.safetensors")
        target = str(where)
    else:
        cfg = hostile_config(rng)
        text = dumps(cfg)
        if rng.random() < 0.1:
            text = text[:-1] + ', "big": ' + "9" * rng.choice([4000, 5000]) + "}"
        (where / "config.json").write_text(text)
        target = str(where)
    which = rng.choice(["params", "infer", "train"])
    return Case(door, f"{which} {target}", lambda: _answer(target, which))


CLI_FLAGS = ["--gpus", "--batch", "--seq", "--prompt", "--generate", "--tp", "--pp", "--dp",
             "--cp", "--ep", "--microbatches", "--lora-rank", "--max-model-len",
             "--gpu-memory-utilization", "--n-gpu-layers", "--ctx-size"]
CLI_VALUES = ["1e30", "720720", "65537", "1e18", "9" * 5000, "100000.0", "nan", "inf", "-1",
              "0", "0x7fffffffffffffff", "1e-300", "4096", "8"]


def cli_case(rng: random.Random, tmp: Path, i: int) -> Case:
    """``memfit infer|train|fit|params`` with hostile option values (in-process)."""
    command = rng.choice(["infer", "train", "fit", "fit", "params"])
    argv = [command, rng.choice(["gpt2", "smollm2-135m", "qwen1.5-moe-a2.7b", "llama-3.1-8b"])]
    if command == "fit":
        argv += [rng.choice(["infer", "train"]), "--gpu", "h100"]
    for _ in range(rng.choice([1, 2, 3])):
        argv += [rng.choice(CLI_FLAGS), rng.choice(CLI_VALUES)]

    return Case("cli", " ".join(a if len(a) < 40 else a[:12] + "..." for a in argv),
                lambda: _cli(argv))


def _cli(argv: list[str]) -> str:
    """``memfit ARGV`` in-process: a result (exit 0) or one ``memfit: error:`` line (exit 2)."""
    from memfit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code == 2:
        lines = err.getvalue().strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith("memfit: error: "):
            raise AssertionError(f"exit 2 without one error line: {lines[:3]}")
        return "refused"
    if code != 0:
        raise AssertionError(f"exit {code}: {err.getvalue()[-300:]}")
    return "result"


def http_case(rng: random.Random, client: Any, i: int) -> Case:
    """A POST with a hostile inline config, options or body shape."""
    path = rng.choice(["/api/params", "/api/infer", "/api/train", "/api/fit", "/api/verdicts"])
    body: dict[str, Any] = {"model": hostile_config(rng)}
    if path in ("/api/fit", "/api/verdicts"):
        body["mode"] = rng.choice(["infer", "train"])
    if path == "/api/fit":
        body["gpu"] = "h100"
        body["gpus"] = rng.choice([1, 8, 64, 65, 720720, 1e30, 64.0, "8"])
    if rng.random() < 0.4:
        body["options"] = {rng.choice(["batch", "seq", "prompt", "tp", "dp", "pp", "gpus"]):
                           hostile_value(rng)}
    raw = dumps(body).encode()
    if rng.random() < 0.05:
        raw = b'{"model": ' + b"[" * rng.choice([1000, 100_000]) + b"]" * 1000 + b"}"

    def run() -> str:
        r = client.post(path, content=raw, headers={"content-type": "application/json"})
        if r.status_code == 200:
            return "result"
        if r.status_code in (413, 422):
            for item in r.json()["detail"]:
                if not {"loc", "msg", "input", "allowed"} <= set(item):
                    raise AssertionError(f"422 without loc/msg/input/allowed: {item}")
            return "refused"
        raise AssertionError(f"HTTP {r.status_code}: {r.text[:300]}")

    return Case("http", f"{path} {raw[:80]!r}", run)


# ------------------------------------------------------------------------------------------
# Running them
# ------------------------------------------------------------------------------------------

class _Overtime(BaseException):
    """Raised in the case by the interval timer (BaseException: nothing catches it)."""


@dataclass
class DoorStats:
    cases: int = 0
    results: int = 0
    refused: int = 0
    max_s: float = 0.0
    """The slowest answer, in seconds of this process's CPU (HTTP: wall clock, the work being
    in the server's worker processes)."""
    max_wall_s: float = 0.0
    slowest: str = ""
    failures: list[str] = field(default_factory=list)


def rss_bytes() -> int:
    """The peak RSS of this process and of its live descendants (the web workers), bytes.

    From /proc's VmHWM (this memory image's own high-water mark): ``ru_maxrss`` survives
    exec on Linux, so a process started by a large parent (pytest holding torch) would report
    the parent's peak."""
    peak = _hwm(os.getpid())
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for pid in _descendants(os.getpid()):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            continue
    return peak


def _hwm(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out += kids
        frontier += kids
    return out


def run_case(case: Case, stats: DoorStats, max_seconds: float) -> None:
    """Run one case under a hard limit (4x the budget), recording its outcome and time."""
    def overtime(signum: int, frame: Any) -> None:
        raise _Overtime()

    old = signal.signal(signal.SIGALRM, overtime)
    signal.setitimer(signal.ITIMER_REAL, max(4 * max_seconds, 5.0))
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        outcome = case.run()
    except _Overtime:
        outcome = "overtime"
    except BaseException as exc:  # noqa: BLE001 - a traceback is what this hunts
        outcome = "failure"
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        stats.failures.append(f"{case.label}: {type(exc).__name__}: {exc!s:.300} "
                              f"[{tb[-2].strip()[:200] if len(tb) > 1 else ''}]")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    wall = time.perf_counter() - start
    # A machine shared with other work stretches the wall clock; the budget is this
    # process's own CPU time (a hang is caught by the wall-clock alarm above).
    elapsed = wall if case.door == "http" else time.process_time() - cpu_start
    stats.max_wall_s = max(stats.max_wall_s, wall)
    stats.cases += 1
    if outcome == "result":
        stats.results += 1
    elif outcome == "refused":
        stats.refused += 1
    elif outcome == "overtime":
        stats.failures.append(f"{case.label}: still running after {4 * max_seconds:g} s")
    if elapsed > stats.max_s:
        stats.max_s, stats.slowest = elapsed, case.label
    if elapsed > max_seconds and outcome != "overtime":
        stats.failures.append(f"{case.label}: answered in {elapsed:.2f} s (over "
                              f"{max_seconds:g} s)")


DOORS = ("gguf", "safetensors", "config", "cli", "http", "generic")


def make_client() -> Any:
    from fastapi.testclient import TestClient

    from memfit.web import create_app
    from memfit.web.app import WebSettings

    client = TestClient(create_app(WebSettings(allow_paths=False)))
    client.post("/api/params", json={"model": TINY})  # starts the worker processes
    return client


WARM_UP: dict[str, float] = {}


def warm_up() -> None:
    """Pay the one-time imports before the clock runs: an unknown ``model_type`` sends memfit
    to its generic path, whose first call imports transformers (seconds); later calls in the
    same process do not. The time is printed with the table."""
    if WARM_UP:
        return
    start = time.perf_counter()
    _python_api(lambda: __import__("memfit").params(dict(GENERIC_BASE)))
    WARM_UP["generic path, first call"] = time.perf_counter() - start


def run_all(count: int, seed: int, doors: tuple[str, ...] = DOORS,
            max_seconds: float = MAX_SECONDS, keep: str | None = None,
            generic: bool = True) -> dict[str, DoorStats]:
    """``count`` hostile inputs spread over ``doors``; the statistics of each door.
    ``keep``: write the files there (kept) instead of a temporary folder; ``generic=False``:
    no unknown ``model_type`` (memfit's generic path, which needs transformers)."""
    every_type = list(MODEL_TYPES)
    if not generic:
        MODEL_TYPES[:] = [t for t in MODEL_TYPES if t != "no_such_type"]
    try:
        return _run(count, seed, doors, max_seconds, keep, generic)
    finally:
        MODEL_TYPES[:] = every_type


def _run(count: int, seed: int, doors: tuple[str, ...], max_seconds: float, keep: str | None,
         generic: bool) -> dict[str, DoorStats]:
    rng = random.Random(seed)
    stats = {d: DoorStats() for d in doors}
    client = make_client() if "http" in doors else None
    if generic:
        warm_up()
    with tempfile.TemporaryDirectory(prefix="memfit-hostile-", dir=keep) as tmp_dir:
        tmp = keep or tmp_dir
        for i in range(count):
            door = doors[i % len(doors)]
            if door == "cli":
                case = cli_case(rng, Path(tmp), i)
            elif door == "http":
                case = http_case(rng, client, i)
            elif door == "generic":
                case = generic_case(rng, Path(tmp), i)
            else:
                case = file_case(rng, Path(tmp), door, i)
            run_case(case, stats[door], max_seconds)
    return stats


def table(stats: dict[str, DoorStats], rss: int) -> str:
    rows = [f"{'door':<12}{'cases':>7}{'results':>9}{'refused':>9}{'max s':>8}{'wall s':>8}"
            "  failures", "-" * 68]
    for door, s in stats.items():
        rows.append(f"{door:<12}{s.cases:>7}{s.results:>9}{s.refused:>9}{s.max_s:>8.3f}"
                    f"{s.max_wall_s:>8.3f}  {len(s.failures)}")
    total = sum(s.cases for s in stats.values())
    worst = max(stats.values(), key=lambda s: s.max_s)
    wall = max(s.max_wall_s for s in stats.values())
    rows += ["-" * 68, f"{'all':<12}{total:>7}{'':>9}{'':>9}{worst.max_s:>8.3f}{wall:>8.3f}  "
             f"{sum(len(s.failures) for s in stats.values())}",
             "max s: the slowest answer in CPU seconds of this process (HTTP: wall clock); "
             "wall s: wall clock",
             f"peak RSS (this process and the web workers): {rss / 2**20:.0f} MiB",
             *[f"untimed warm-up: {k}: {v:.2f} s" for k, v in WARM_UP.items()],
             f"slowest: {worst.slowest[:120]}"]
    for door, s in stats.items():
        rows += [f"FAIL {door}: {f}" for f in s.failures[:20]]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--doors", default=",".join(DOORS))
    parser.add_argument("--max-seconds", type=float, default=MAX_SECONDS)
    parser.add_argument("--max-rss", type=int, default=MAX_RSS_BYTES // 2**20, help="MiB")
    parser.add_argument("--keep", help="write the hostile files into this folder and keep them")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    stats = run_all(args.count, args.seed, tuple(args.doors.split(",")), args.max_seconds,
                    args.keep)
    rss = rss_bytes()
    print(table(stats, rss))
    print(f"wall time: {time.perf_counter() - start:.1f} s; python {sys.version.split()[0]}")
    bad = any(s.failures for s in stats.values()) or rss > args.max_rss * 2**20
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
