"""A sample of ``benchmarks/hostile.py``'s hostile inputs, in every default run.

Files (GGUF, safetensors with its index, config.json), command lines and HTTP bodies built
to hurt: huge and float counts, metadata of the wrong type, nested arrays, giant declared
headers, overlapping offsets, 5,000-digit numbers, deep JSON. Each answer must be a result
or memfit's one-line refusal (exit 2, 413/422), within 2 s, the process under 500 MB.
``python benchmarks/hostile.py`` runs 2,400 of them and prints the table.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "hostile.py"


def _hostile() -> Any:
    spec = importlib.util.spec_from_file_location("memfit_hostile", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


hostile = _hostile()


def _web_available() -> bool:
    return bool(importlib.util.find_spec("fastapi")) and any(
        importlib.util.find_spec(m) for m in ("httpx2", "httpx"))


@pytest.mark.parametrize("door", ["gguf", "safetensors", "config", "cli", "http"])
def test_a_sample_of_hostile_inputs_is_bounded(door: str) -> None:
    if door == "http" and not _web_available():
        pytest.skip("the web extra (fastapi, httpx2) is not installed")
    # (no unknown model_type: memfit's generic path imports transformers, a cost of its own)
    stats = hostile.run_all(30, seed=7, doors=(door,), generic=False)[door]
    assert stats.cases == 30
    assert not stats.failures, "\n".join(stats.failures)
    assert stats.max_s < hostile.MAX_SECONDS, stats.slowest
    # memory: in a process of its own (test_every_door_in_a_fresh_process_stays_under_500_mb);
    # this pytest process already holds what earlier test files loaded (torch, models)
    assert stats.refused > 0  # the sample reached the refusals it was built for


def test_the_runner_reports_tracebacks_and_overtime() -> None:
    """The harness itself: a traceback, a slow answer and a hang are all failures."""
    stats = hostile.DoorStats()

    def boom() -> str:
        raise KeyError("x")

    def slow() -> str:  # 0.3 s of CPU (the budget counts the process's own CPU time)
        import time

        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return "result"

    def hang() -> str:
        import time

        time.sleep(60)
        return "result"

    hostile.run_case(hostile.Case("t", "boom", boom), stats, max_seconds=0.1)
    hostile.run_case(hostile.Case("t", "slow", slow), stats, max_seconds=0.1)
    assert len(stats.failures) == 2
    assert "KeyError" in stats.failures[0] and "over 0.1 s" in stats.failures[1]
    hostile.run_case(hostile.Case("t", "hang", hang), stats, max_seconds=0.1)
    assert "still running" in stats.failures[2] and stats.cases == 3


def test_generated_files_are_what_they_claim() -> None:
    """The generators' baseline files are valid (so the hostile changes are what is refused)."""
    import json
    import random
    import struct

    raw = hostile.safetensors_bytes(random.Random(3))
    n = struct.unpack("<Q", raw[:8])[0]
    assert raw[:8] and n > 0
    assert json.loads(hostile.dumps({"a": hostile.Deep(5)})) == {"a": [[[[[1]]]]]}
    text = hostile.dumps([10**5000 - 1])
    assert set(text[1:-1]) == {"9"} and 4990 < len(text) < 5010


# -- the generic path (memfit.generic): bounded before transformers builds anything --------

GENERIC_OK = {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100}


@pytest.mark.parametrize(("change", "field"), [
    ({"num_hidden_layers": 100000}, "num_hidden_layers"),
    ({"num_hidden_layers": 600}, "num_hidden_layers"),  # over the generic path's 512 blocks
    ({"hidden_size": "abc"}, "hidden_size"),
    ({"hidden_size": 768.5}, "hidden_size"),
    ({"hidden_size": 10**8, "intermediate_size": 10**8}, "config"),  # ~10^17 parameters
    ({"vocab_size": 10**5000}, "vocab_size"),
    ({"num_labels": 10**8}, "num_labels"),
    ({"vision_config": {"num_hidden_layers": 400}, "num_hidden_layers": 200},
     "num_hidden_layers"),
    ({"vision_config": {"image_size": 1e300}}, "image_size"),
    ({"model_type": "no_such_type"}, "model_type"),
    ({"model_type": ["bert"]}, "model_type"),
])
def test_generic_path_refuses_before_building(change: dict[str, Any], field: str) -> None:
    """Pure Python: each refusal names its field, without importing torch or transformers."""
    from memfit.errors import MemfitError
    from memfit.generic.bounds import check_config, known_model_type

    cfg = {**GENERIC_OK, **change}
    with pytest.raises(MemfitError) as info:
        check_config(cfg)
        if not known_model_type(cfg["model_type"]):
            raise MemfitError.bad_value("model_type", cfg["model_type"], "known")
    assert info.value.field == field and "\n" not in str(info.value)


def test_generic_path_bounds_keep_real_configs() -> None:
    """Real configs' fields pass: negative layer indices, rope floats, token ids, lists."""
    from memfit.generic.bounds import check_config, size_kind

    check_config({**GENERIC_OK, "vision_feature_layer": -2, "rope_theta": 1e9,
                  "layer_norm_eps": 1e-12, "pad_token_id": 10**9, "hidden_sizes": [64, 128],
                  "image_size": {"height": 224, "width": 224}, "layer_types": ["full"] * 2,
                  "num_labels": 21841, "sliding_window": None, "initializer_range": 0.02})
    assert size_kind("layer_norm_eps") is None and size_kind("num_hidden_layers") == "depth"
    assert size_kind("max_position_embeddings") == "size" and size_kind("bos_token_id") is None


def test_generic_traced_options_are_bounded() -> None:
    from memfit.errors import MemfitError
    from memfit.generic.bounds import check_trace_options
    from memfit.workload import InferenceOptions, TrainingOptions

    check_trace_options(InferenceOptions(prompt=8192, generate=8192), "infer")
    for options, workload, field in [
            (InferenceOptions(generate=10**6), "infer", "generate"),
            (InferenceOptions(prompt=10**8, generate=0), "infer", "prompt"),
            (TrainingOptions(microbatches=1000), "train", "microbatches"),
            (TrainingOptions(batch=10**6, seq=4096), "train", "batch")]:
        with pytest.raises(MemfitError) as info:
            check_trace_options(options, workload)
        assert info.value.field == field


def test_an_unknown_model_type_is_refused_without_importing_torch(tmp_path: Path) -> None:
    import json
    import subprocess

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**GENERIC_OK, "model_type": "zzz_nosuch"}))
    code = ("import sys; from memfit.cli import main; rc = main(['params', sys.argv[1]]); "
            "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.stdout.split()[-3:] == ["2", "False", "False"]
    assert out.stderr.count("\n") == 1 and "'zzz_nosuch'" in out.stderr


def test_a_sample_of_hostile_generic_configs_is_bounded() -> None:
    """The generic door: transformers builds what passes the bounds (one untimed warm-up)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    stats = hostile.run_all(24, seed=11, doors=("generic",))["generic"]
    assert stats.cases == 24 and not stats.failures, "\n".join(stats.failures)
    assert stats.max_s < hostile.MAX_SECONDS, stats.slowest
    assert stats.refused > 0


def _doors() -> list[str]:
    doors = ["gguf", "safetensors", "config", "cli"]
    doors += ["http"] if _web_available() else []
    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
        doors.append("generic")
    return doors


@pytest.mark.parametrize("door", _doors())
def test_every_door_in_a_fresh_process_stays_under_500_mb(door: str) -> None:
    """The script itself, as a user runs it, one process per door: 30 hostile inputs, no
    failure, no answer over 2 s, and the peak RSS of the process and its web workers under
    500 MiB (the script exits 1 otherwise). The generic door's process imports torch and
    transformers (about 400 MiB of it before any input)."""
    script = Path(__file__).parents[1] / "benchmarks" / "hostile.py"
    out = subprocess.run([sys.executable, str(script), "--count", "30", "--seed", "7",
                          "--doors", door], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "peak RSS" in out.stdout


def test_the_web_server_refuses_the_generic_path_at_once() -> None:
    """A model_type memfit has no formulas for is a 422 naming it, never a trace in a worker."""
    if not _web_available():
        pytest.skip("the web extra (fastapi, httpx2) is not installed")
    import time

    client = hostile.make_client()
    for path in ("/api/params", "/api/infer", "/api/train"):
        start = time.perf_counter()
        r = client.post(path, json={"model": {**GENERIC_OK, "model_type": "bert"}})
        assert r.status_code == 422 and time.perf_counter() - start < 2.0
        detail = r.json()["detail"][0]
        assert detail["loc"][-1] == "model_type" and "allowed on this server" in detail["msg"]
