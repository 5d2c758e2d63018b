"""The HTTP API: every endpoint against the Python API, and every error as a 422 naming the
field (``loc``), the value (``input``) and what is ``allowed``."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra (fastapi) is not installed")
if not any(importlib.util.find_spec(m) for m in ("httpx2", "httpx")):
    pytest.skip("FastAPI's TestClient needs httpx2 (or httpx)", allow_module_level=True)

from fastapi.testclient import TestClient  # noqa: E402

from memfit.api import params  # noqa: E402
from memfit.catalog import entry_names, get_entry  # noqa: E402
from memfit.hardware import GPUS  # noqa: E402
from memfit.inference import fit_infer, infer  # noqa: E402
from memfit.training import fit_train, train  # noqa: E402
from memfit.web import create_app  # noqa: E402
from memfit.web.app import MAX_BODY_BYTES, WebSettings  # noqa: E402
from memfit.web.schemas import COMMON_GPUS  # noqa: E402
from memfit.workload import InferenceOptions, TrainingOptions  # noqa: E402

SMALL = "llama-3.2-1b"
TINY_CONFIG = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
               "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app())


def only(response, status: int = 422) -> dict:
    """The single error of a 422 response."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, detail
    for d in detail:
        assert {"loc", "msg", "input", "allowed"} <= set(d), d
    return detail[0]


# -- catalog and options -------------------------------------------------------------------

def test_models_lists_the_catalog(client: TestClient) -> None:
    rows = client.get("/api/models").json()
    assert [r["name"] for r in rows] == list(entry_names())
    row = next(r for r in rows if r["name"] == "llama-3.1-8b")
    assert row["total_params"] == 8_030_261_248 and row["family"] == "llama"


def test_one_model_with_its_config(client: TestClient) -> None:
    data = client.get(f"/api/models/{SMALL}").json()
    assert data["config"] == dict(get_entry(SMALL).config)
    err = only(client.get("/api/models/lama-3.2-1b"))
    assert err["loc"] == ["path", "name"] and err["input"] == "lama-3.2-1b"
    assert "did you mean llama-3.2-1b" in err["msg"]


def test_gpus(client: TestClient) -> None:
    rows = client.get("/api/gpus").json()
    assert [r["name"] for r in rows] == [g.name for g in GPUS]
    assert set(COMMON_GPUS) <= {r["name"] for r in rows}
    h100 = next(r for r in rows if r["name"] == "h100-sxm")
    assert h100["usable_bytes"] == 81559 * 2**20 and "h100" in h100["aliases"]


@pytest.mark.parametrize("mode, cls", [("infer", InferenceOptions), ("train", TrainingOptions)])
def test_options_describe_every_dataclass_field(client: TestClient, mode: str, cls: type) -> None:
    described = {o["name"]: o for o in client.get("/api/options").json()[mode]}
    assert list(described) == [f.name for f in fields(cls)]
    for f in fields(cls):
        o = described[f.name]
        assert o["help"] == f.metadata["help"] and o["flag"] == "--" + f.name.replace("_", "-")
        assert o["default"] == f.default
        assert (o["min"], o["max"]) == (f.metadata["min"], f.metadata["max"])
        if f.metadata["choices"] is not None:
            assert o["kind"] == "choice"
            assert o["choices"] == [c for c in f.metadata["choices"] if c is not None]


@pytest.mark.parametrize("schema, cls", [("InferenceOptionsModel", InferenceOptions),
                                         ("TrainingOptionsModel", TrainingOptions)])
def test_openapi_is_generated_from_the_dataclasses(client: TestClient, schema: str,
                                                   cls: type) -> None:
    """The pydantic models never drift from the dataclasses: same names, help, bounds, choices."""
    props = client.get("/openapi.json").json()["components"]["schemas"][schema]["properties"]
    assert list(props) == [f.name for f in fields(cls)]
    for f in fields(cls):
        p = props[f.name]
        assert p["description"] == f.metadata["help"]
        variants = p.get("anyOf", [p])
        if f.metadata["min"] is not None:
            assert any(v.get("minimum") == f.metadata["min"] for v in variants), p
            assert any(v.get("maximum") == f.metadata["max"] for v in variants), p
        if f.metadata["choices"] is not None:
            enum = next(v["enum"] for v in variants if "enum" in v)
            assert enum == [c for c in f.metadata["choices"] if c is not None]


def test_openapi_docs_page(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200 and "openapi.json" in r.text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/models", "/api/gpus", "/api/options", "/api/params", "/api/infer",
            "/api/train", "/api/fit", "/api/verdicts"} <= set(paths)


def test_page_and_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]


def test_page_loads_nothing_from_outside() -> None:
    """Works offline: no asset names another host."""
    static = Path(__file__).parents[1] / "src" / "memfit" / "web" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8")
        urls = re.findall(r"(?:https?:)?//[\w-]+\.[\w.-]+[^\s\"'`)]*", text)
        urls = [u for u in urls if u != "http://www.w3.org/2000/svg"]  # a namespace name
        assert not urls, (path.name, urls)


# -- estimates ---------------------------------------------------------------------------------

def test_params(client: TestClient) -> None:
    r = client.post("/api/params", json={"model": "llama-3.1-8b"})
    assert r.json() == params("llama-3.1-8b").to_dict()


@pytest.mark.parametrize("name", entry_names())
def test_infer_and_train_match_python_for_every_catalog_model(client: TestClient,
                                                              name: str) -> None:
    opts = {"batch": 2, "prompt": 512}  # gpt2's position table holds 1024 tokens
    r = client.post("/api/infer", json={"model": name, "options": opts})
    assert r.status_code == 200, r.text
    assert r.json() == json.loads(json.dumps(infer(name, **opts).to_dict()))
    r = client.post("/api/train", json={"model": name})
    assert r.status_code == 200, r.text
    assert r.json() == json.loads(json.dumps(train(name).to_dict()))


def test_infer_options_and_contract_keys(client: TestClient) -> None:
    opts = {"batch": 8, "prompt": 4096, "generate": 256, "kv_dtype": "fp8", "gpu": "l40s",
            "engine": "vllm", "gpu_memory_utilization": 0.85}
    data = client.post("/api/infer", json={"model": "qwen2.5-7b", "options": opts}).json()
    assert data == json.loads(json.dumps(infer("qwen2.5-7b", **opts).to_dict()))
    assert {"peak_bytes", "total_bytes", "components", "fits"} <= set(data)
    assert sum(data["components"].values()) == data["peak_bytes"]
    assert data["fits"] in (True, False)


def test_train_options(client: TestClient) -> None:
    opts = {"batch": 2, "seq": 1024, "precision": "bf16-true", "checkpointing": "full",
            "dp": 8, "fsdp": "full", "lora_rank": 8, "gpu": "h100"}
    data = client.post("/api/train", json={"model": "llama-3.1-8b", "options": opts}).json()
    assert data == json.loads(json.dumps(train("llama-3.1-8b", **opts).to_dict()))


def test_inline_config(client: TestClient) -> None:
    r = client.post("/api/infer", json={"model": TINY_CONFIG, "options": {"batch": 3}})
    assert r.json() == json.loads(json.dumps(infer(TINY_CONFIG, batch=3).to_dict()))
    r = client.post("/api/params", json={"model": TINY_CONFIG})
    assert r.json()["total_params"] == params(TINY_CONFIG).total_params


def test_fit_infer(client: TestClient) -> None:
    body = {"mode": "infer", "model": SMALL, "gpu": "l4", "options": {"prompt": 2048}}
    data = client.post("/api/fit", json=body).json()
    assert data == fit_infer(SMALL, gpu="l4", prompt=2048).to_dict()
    assert data["max_batch"] > 1 and data["min_gpus"] == 1


def test_fit_train(client: TestClient) -> None:
    body = {"mode": "train", "model": SMALL, "gpu": "h100", "gpus": 2,
            "options": {"seq": 1024}}
    data = client.post("/api/fit", json=body).json()
    expected = fit_train(SMALL, gpu="h100", gpus=2, seq=1024).to_dict()
    assert data == json.loads(json.dumps(expected))
    assert data["layouts"] and data["max_batch"] >= 1


def test_verdicts_row(client: TestClient) -> None:
    body = {"mode": "infer", "model": "llama-3.1-8b", "options": {"batch": 4}}
    rows = client.post("/api/verdicts", json=body).json()["verdicts"]
    assert [r["gpu"] for r in rows] == list(COMMON_GPUS)
    for r in rows:
        e = infer("llama-3.1-8b", batch=4, gpu=r["gpu"])
        assert (r["fits"], r["total_bytes"], r["headroom_bytes"]) == (
            e.fits, e.total_bytes, e.headroom_bytes)
    body = {"mode": "train", "model": "llama-3.1-8b", "gpus": ["h200", "4090"]}
    rows = client.post("/api/verdicts", json=body).json()["verdicts"]
    assert [r["gpu"] for r in rows] == ["h200", "rtx-4090"] and not rows[1]["fits"]


# -- errors: 422 with the field, the value and what is allowed ----------------------------------

@pytest.mark.parametrize("path, body, loc, value, allowed", [
    ("/api/infer", {"model": SMALL, "options": {"batch": 0}}, ["body", "options", "batch"], 0,
     "an integer in [1, 1099511627776]"),
    ("/api/infer", {"model": SMALL, "options": {"engine": "tgi"}}, ["body", "options", "engine"],
     "tgi", "hf, vllm, llamacpp"),
    ("/api/infer", {"model": SMALL, "options": {"gpu_memory_utilization": 1.5}},
     ["body", "options", "gpu_memory_utilization"], 1.5, "a number in [0.01, 1.0]"),
    ("/api/train", {"model": SMALL, "options": {"precision": "fp8"}},
     ["body", "options", "precision"], "fp8",
     "fp32, bf16-true, fp16-true, bf16-mixed, fp16-mixed, bf16-master"),
    ("/api/train", {"model": SMALL, "options": {"zero": 4}}, ["body", "options", "zero"], 4,
     "0, 1, 2, 3"),
    ("/api/fit", {"mode": "train", "model": SMALL, "gpu": "h100", "options": {"seq": -5}},
     ["body", "options", "seq"], -5, "an integer in [1, 1099511627776]"),
    ("/api/fit", {"mode": "serve", "model": SMALL, "gpu": "h100"}, ["body", "mode"], "serve",
     "infer, train"),
])
def test_pydantic_errors_name_field_value_allowed(client: TestClient, path: str, body: dict,
                                                  loc: list, value: object,
                                                  allowed: str) -> None:
    err = only(client.post(path, json=body))
    assert (err["loc"], err["input"]) == (loc, value)
    assert err["allowed"].startswith(allowed), err


def test_unknown_option_lists_the_valid_ones(client: TestClient) -> None:
    # (batch_size is llama.cpp's --batch-size since the contract's second round)
    err = only(client.post("/api/infer", json={"model": SMALL, "options": {"batchsize": 4}}))
    assert err["loc"] == ["body", "options", "batchsize"] and err["input"] == 4
    assert "batch" in err["allowed"] and "kv_dtype" in err["allowed"]


@pytest.mark.parametrize("path, body, loc, value, needle", [
    ("/api/train", {"model": SMALL, "options": {"tp": 3}}, ["body", "options", "tp"], 3,
     "divisor"),
    ("/api/train", {"model": SMALL, "options": {"sp": True}}, ["body", "options", "sp"], True,
     "--tp > 1"),
    ("/api/infer", {"model": "gpt2", "options": {"prompt": 2000}}, ["body", "options", "prompt"],
     None, "1024"),
    ("/api/infer", {"model": SMALL, "options": {"weights": "q9_k"}},
     ["body", "options", "weights"], "q9_k", "q4_k"),
    ("/api/infer", {"model": SMALL, "options": {"gpu": "h1000"}}, ["body", "options", "gpu"],
     "h1000", "h100-sxm"),
    ("/api/fit", {"mode": "infer", "model": SMALL, "gpu": "h1000"}, ["body", "gpu"], "h1000",
     "h100-sxm"),
    ("/api/fit", {"mode": "train", "model": SMALL, "gpu": "h100", "gpus": 1000},
     ["body", "gpus"], 1000, "[1, 64]"),
    ("/api/fit", {"mode": "infer", "model": SMALL, "gpu": "h100", "gpus": 1000},
     ["body", "gpus"], 1000, "[1, 64]"),
    ("/api/verdicts", {"mode": "infer", "model": SMALL, "gpus": ["l4", "nope"]},
     ["body", "gpus", 1], "nope", "h100-sxm"),
    ("/api/infer", {"model": "lama-3.2-1b"}, ["body", "model"], "lama-3.2-1b", "catalog"),
    ("/api/infer", {"model": {**TINY_CONFIG, "model_type": "bert"}},
     ["body", "model", "model_type"], "bert", "llama"),
    ("/api/infer", {"model": {**TINY_CONFIG, "num_hidden_layers": 1000}},
     ["body", "model", "num_hidden_layers"], 1000, "at most 512"),
    # the bound is checked on the parsed model: a float count or a nested text_config too
    ("/api/infer", {"model": {**TINY_CONFIG, "num_hidden_layers": 1000.0}},
     ["body", "model", "num_hidden_layers"], 1000, "at most 512"),
    ("/api/train", {"model": {"architectures": ["X"], "text_config": {
        **TINY_CONFIG, "num_hidden_layers": 4096}}},
     ["body", "model", "num_hidden_layers"], 4096, "at most 512"),
    ("/api/infer", {"model": {**TINY_CONFIG, "num_hidden_layers": 10**7}},
     ["body", "model", "num_hidden_layers"], 10**7, "[1, 10000]"),
])
def test_memfit_errors_become_422(client: TestClient, path: str, body: dict, loc: list,
                                  value: object, needle: str) -> None:
    err = only(client.post(path, json=body))
    assert err["type"] == "memfit_error" and err["loc"] == loc, err
    if value is not None:
        assert err["input"] == value
    assert needle in err["allowed"] or needle in err["msg"], err


def test_model_of_the_wrong_type(client: TestClient) -> None:
    err = only(client.post("/api/infer", json={"model": 7}))
    assert err["loc"] == ["body", "model"] and err["input"] == 7
    assert "config.json object" in err["allowed"]


def test_malformed_json(client: TestClient) -> None:
    r = client.post("/api/infer", content=b"{not json", headers={"content-type":
                                                                 "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["allowed"]


# -- safety --------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["/etc/passwd", "config.json", "../secrets", "./llama",
                                   "~/model", "C:\\models\\x", "models/llama-3.1-8b"])
def test_paths_are_refused_by_default(client: TestClient, model: str) -> None:
    err = only(client.post("/api/params", json={"model": model}))
    assert err["loc"] == ["body", "model"] and err["input"] == model
    assert "path" in err["msg"] and "--allow-paths" in err["msg"]


def test_catalog_names_never_touch_the_servers_files(tmp_path: Path, monkeypatch,
                                                     client: TestClient) -> None:
    """A folder named like a catalog model in the working directory is not read."""
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps(TINY_CONFIG))
    monkeypatch.chdir(tmp_path)
    r = client.post("/api/params", json={"model": "gpt2"})
    assert r.json()["total_params"] == 124_439_808


def test_paths_when_the_operator_allows_them(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    allowed = TestClient(create_app(WebSettings(allow_paths=True)))
    r = allowed.post("/api/params", json={"model": str(tmp_path / "config.json")})
    assert r.status_code == 200 and r.json()["total_params"] == params(TINY_CONFIG).total_params


def test_hub_is_refused_by_default(client: TestClient) -> None:
    err = only(client.post("/api/infer", json={"model": "hf:meta-llama/Llama-3.1-8B"}))
    assert err["loc"] == ["body", "model"] and "--allow-hub" in err["msg"]


def test_body_size_is_limited(client: TestClient) -> None:
    big = {"model": {**TINY_CONFIG, "padding": "x" * MAX_BODY_BYTES}}
    r = client.post("/api/params", json=big)
    assert r.status_code == 413
    assert r.json()["detail"][0]["allowed"] == f"at most {MAX_BODY_BYTES} bytes"

    def chunks():  # no Content-Length: the limit counts what streams in
        for _ in range(5):
            yield b" " * (MAX_BODY_BYTES // 4)

    r = client.post("/api/params", content=chunks(), headers={"content-type":
                                                              "application/json"})
    assert r.status_code == 413


def test_host_header_is_checked_when_bound_to_loopback() -> None:
    app = create_app(allowed_hosts=("127.0.0.1", "localhost"))
    assert TestClient(app, base_url="http://127.0.0.1:8000").get("/api/gpus").status_code == 200
    assert TestClient(app, base_url="http://evil.example").get("/api/gpus").status_code == 400


def test_serve_defaults_to_loopback() -> None:
    import inspect

    from memfit.web import serve

    params_ = inspect.signature(serve).parameters
    assert params_["host"].default == "127.0.0.1" and params_["port"].default == 8000
    assert params_["allow_paths"].default is False and params_["allow_hub"].default is False


def test_importing_memfit_does_not_import_the_web_stack() -> None:
    code = ("import sys, memfit, memfit.web; "
            "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bounded work: deadlines, departed clients, stalled bodies, crafted files ----------------

# The heaviest bounded question: 65,536 GPUs' layout sweep (its 2,000-estimate budget) and
# the fewest-GPU search of a 9,000-layer MoE: about 1 s of CPU on this machine.
SLOW_FIT = {"mode": "train", "gpu": "h100", "gpus": 65536,
            "model": {**TINY_CONFIG, "model_type": "qwen2_moe", "num_hidden_layers": 9000,
                      "num_experts": 64, "num_experts_per_tok": 2}}


def test_a_computation_past_its_deadline_is_stopped_and_answered_503() -> None:
    import time

    app = create_app(WebSettings(max_layers=10_000, max_fit_gpus=65536,
                                 request_timeout_s=0.25, max_concurrent=1))
    slow = TestClient(app)
    assert slow.post("/api/params", json={"model": TINY_CONFIG}).status_code == 200  # warm
    start = time.perf_counter()
    r = slow.post("/api/fit", json=SLOW_FIT)  # ~1 s of work, 4x the deadline
    assert r.status_code == 503 and r.json()["detail"][0]["type"] == "timeout", r.text
    assert time.perf_counter() - start < 3
    # the worker was killed and replaced: the one slot serves the next request at once
    start = time.perf_counter()
    assert slow.post("/api/params", json={"model": TINY_CONFIG}).status_code == 200
    assert time.perf_counter() - start < 3


def test_a_departed_clients_computation_is_stopped() -> None:
    """ASGI-level: the client disconnects after sending its body; the worker is killed long
    before the 60 s deadline."""
    import asyncio
    import time

    app = create_app(WebSettings(max_layers=10_000, request_timeout_s=60, max_concurrent=1))
    body = json.dumps(SLOW_FIT).encode()
    sent: list[dict] = []
    calls = 0

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}  # gone as soon as the body was sent

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/fit", "raw_path": b"/api/fit",
             "query_string": b"", "headers": [(b"content-type", b"application/json"),
                                              (b"host", b"testserver")],
             "http_version": "1.1", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1), "root_path": "", "app": app}
    start = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    assert time.perf_counter() - start < 10
    assert sent[0]["status"] == 503


def test_a_stalled_body_is_refused_408() -> None:
    import asyncio
    import time

    from memfit.web.app import BodyLimit

    async def never_called(scope, receive, send) -> None:  # noqa: ANN001
        raise AssertionError("the app saw a body that never came")

    sent: list[dict] = []

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    start = time.perf_counter()
    asyncio.run(BodyLimit(never_called, 1 << 20, timeout_s=0.3)(
        {"type": "http", "headers": []}, receive, send))
    assert time.perf_counter() - start < 2
    assert sent[0]["status"] == 408


def test_crafted_files_are_422_with_allow_paths(tmp_path: Path) -> None:
    """Hostile files on the server (allowed paths): one-line 422s, never a 500 or a hang."""
    import os
    import struct

    allowed = TestClient(create_app(WebSettings(allow_paths=True)))
    gguf = tmp_path / "bad.gguf"
    gguf.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 20)
                     + b"general.architecture" + struct.pack("<IIQ", 9, 8, 10**15))
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_CONFIG))
    os.mkfifo(folder / "model.safetensors")
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    (overlap / "config.json").write_text(json.dumps(TINY_CONFIG))
    header = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                         "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    (overlap / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                                + bytes(12))
    digits = tmp_path / "digits"
    digits.mkdir()
    (digits / "config.json").write_text('{"model_type": "llama", "x": ' + "9" * 5000 + "}")
    for model in (gguf, folder, overlap, digits):
        r = allowed.post("/api/infer", json={"model": str(model)})
        assert r.status_code == 422, (model, r.text)
        assert "\n" not in r.json()["detail"][0]["msg"]


def test_workers_are_recycled_so_their_caches_stay_bounded() -> None:
    """A worker is replaced after ``max_jobs`` jobs (its per-model memo tables go with it)."""
    import asyncio
    import os

    from memfit.web.workers import WorkerPool

    pool = WorkerPool(1, max_jobs=2)

    async def no() -> bool:
        return False

    async def pids() -> list[int]:
        return [await pool.run(os.getpid, (), timeout_s=30, busy_timeout_s=30, gone=no)
                for _ in range(5)]

    try:
        seen = asyncio.run(pids())
    finally:
        pool.close()
    assert os.getpid() not in seen
    assert seen[0] == seen[1] != seen[2] == seen[3] != seen[4]


# -- POST /api/check: a pasted command line or config file -------------------------------------

CHECK_VLLM = ("vllm serve meta-llama/Llama-3.1-8B-Instruct \\\n  --max-model-len 16384 "
              "--max-num-seqs 64")
CHECK_AXOLOTL = """\
# examples/llama-3/lora-8b.yml (axolotl), shortened
base_model: NousResearch/Meta-Llama-3-8B
adapter: lora
sequence_len: 4096
lora_r: 32
lora_alpha: 16
lora_target_linear: true
gradient_accumulation_steps: 4
micro_batch_size: 2
optimizer: adamw_bnb_8bit
bf16: auto
gradient_checkpointing: true
"""
CHECK_DEEPSPEED = json.dumps({"train_batch_size": 128, "train_micro_batch_size_per_gpu": 8,
                              "gradient_accumulation_steps": 2, "bf16": {"enabled": True},
                              "zero_optimization": {"stage": 1}})


@pytest.mark.parametrize("body, beside", [
    ({"text": CHECK_VLLM, "gpu": "l4"}, {"gpu": "l4"}),
    ({"text": CHECK_AXOLOTL, "gpu": "rtx-4090"}, {"gpu": "rtx-4090"}),
    ({"text": CHECK_DEEPSPEED, "model": "llama-3.2-1b", "gpus": 8},
     {"model": "llama-3.2-1b", "gpus": 8}),
])
def test_check_answers_as_check_text(client: TestClient, body: dict, beside: dict) -> None:
    from memfit.check import check_text

    r = client.post("/api/check", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got == json.loads(json.dumps(check_text(body["text"], **beside)))
    assert got["understood"] and {"peak_bytes", "total_bytes", "fits"} <= set(got)
    assert got["artefact"]["equivalent"].startswith("memfit ")


def test_check_vllm_line_understood(client: TestClient) -> None:
    got = client.post("/api/check", json={"text": CHECK_VLLM, "gpu": "l4"}).json()
    assert got["artefact"]["kind"] == "vllm"
    fields_seen = {u["field"] for u in got["understood"]}
    assert "--max-model-len" in fields_seen


@pytest.mark.parametrize("body, loc", [
    ({"text": "base_model: llama-3.2-1b\nmicro_batch_size: [1, 2\n  : :"}, ["body", "text"]),
    ({"text": "   "}, ["body", "text"]),
    ({"text": CHECK_DEEPSPEED}, ["body", "model"]),  # a DeepSpeed JSON names no model
    ({"text": "vllm serve /etc/passwd"}, ["body", "model"]),  # never the server's files
    ({"text": CHECK_VLLM, "gpu": "no-such-gpu"}, ["body", "gpu"]),
])
def test_check_errors_are_one_line_422(client: TestClient, body: dict, loc: list) -> None:
    d = only(client.post("/api/check", json=body))
    assert d["loc"][:2] == loc, d
    assert "\n" not in d["msg"] and d["allowed"], d


def test_check_text_is_bounded() -> None:
    from memfit.web.check_api import MAX_TEXT_CHARS

    app = TestClient(create_app(WebSettings(max_body_bytes=4 * MAX_TEXT_CHARS,
                                            max_concurrent=0)))
    d = only(app.post("/api/check", json={"text": "x" * (MAX_TEXT_CHARS + 1)}))
    assert d["loc"] == ["body", "text"] and "1,048,576" in d["allowed"]


def test_page_has_the_check_section() -> None:
    static = Path(__file__).parents[1] / "src" / "memfit" / "web" / "static"
    html = (static / "index.html").read_text()
    js = (static / "app.js").read_text()
    assert 'id="check-section"' in html and 'id="check-run"' in html
    for id_ in ("check-form", "check-text", "check-verdict", "check-numbers",
                "check-understood", "check-ignored", "check-error"):
        assert f'id="{id_}"' in html and f'$("#{id_}")' in js, id_
    assert 'post("api/check"' in js
    assert "innerHTML" not in js  # user text only ever goes into textContent
