"""Tests of validation/gpu/measure_cuda.py on a CPU (tiny configs; CUDA and NVML faked).

The script runs once on a lent H100 and must work the first time, so these tests run every code
path that can run without a GPU: each tiny case in one process, the child-process mode, the
budget and timeout handling, and the CUDA/NVML bookkeeping against fake ``torch.cuda`` and
``pynvml`` modules.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "validation" / "gpu" / "measure_cuda.py"


def _load():
    spec = importlib.util.spec_from_file_location("measure_cuda", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


m = _load()

TOP_KEYS = {"schema_version", "tool", "argv", "device", "tiny", "budget_s", "started_utc",
            "finished_utc", "complete", "provenance", "context", "planned", "cases",
            "status_counts", "total_wall_s"}
CASE_KEYS = {"id", "status", "error", "scenario", "context", "timings", "phases", "model",
             "weights_bytes", "max_memory_allocated", "max_memory_reserved", "memory_stats",
             "nvml_used_at_peak", "nvml_sampler_max", "nvml_process_bytes_at_peak", "peak_phase",
             "input_bytes"}
INFER_KEYS = {"max_memory_allocated_prefill", "max_memory_allocated_decode",
              "kv_cache_bytes_after_prefill", "kv_cache_bytes_final", "kv_cache_seq_len_final",
              "prefill_logits_shape", "prefill_logits_bytes", "allocated_before_run"}
TRAIN_KEYS = {"step1_max_memory_allocated", "step2_max_memory_allocated",
              "optimizer_state_bytes", "allocated_before_step2", "step1_memory_stats"}
PHASE_KEYS = {"allocated_before", "reserved_before", "time_s", "max_allocated", "max_reserved",
              "allocated_after", "reserved_after", "nvml_used_after", "nvml_sampler_max", "stats"}


def run_script(*args, timeout=120):
    cmd = [sys.executable, str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def check_case(rec: dict, *, measured: bool) -> None:
    assert rec["status"] == "ok", rec.get("error")
    assert CASE_KEYS <= set(rec), CASE_KEYS - set(rec)
    sc = rec["scenario"]
    base = m.CASES_BY_ID[rec["id"]]
    for k in ("kind", "model", "attn"):
        assert sc[k] == base[k]
    assert sc["model_type"] == m.MODELS[base["model"]]["model_type"]
    assert rec["model"]["num_params"] > 0
    if sc["kind"] == "infer":
        assert INFER_KEYS <= set(rec)
        assert set(rec["phases"]) == {"prefill", "decode"}
        phases = list(rec["phases"].values())
        if sc["cache"] == "plain":
            assert rec["kv_cache_seq_len_final"] == sc["prompt"] + sc["generate"]
        assert rec["prefill_logits_shape"][1] == (sc["prompt"] if sc["logits"] == "all" else 1)
        assert rec["kv_cache_bytes_final"] >= rec["kv_cache_bytes_after_prefill"] > 0
    else:
        assert TRAIN_KEYS <= set(rec)
        assert set(rec["phases"]) == {"step1", "step2"}
        phases = [rec["phases"][s][p] for s in ("step1", "step2")
                  for p in ("forward", "backward", "optimizer")]
        assert rec["phases"]["step2"]["loss"] > 0
        assert sc["optimizer_kwargs"]["lr"] == 1e-4
    for ph in phases:
        assert PHASE_KEYS <= set(ph)
        if measured:
            assert isinstance(ph["max_allocated"], int)
            assert set(ph["stats"]) == set(m.STAT_KEYS)
        else:
            assert ph["max_allocated"] is None and ph["stats"] is None
    if measured:
        assert isinstance(rec["max_memory_allocated"], int)
        assert isinstance(rec["nvml_process_bytes_at_peak"], int)
    else:
        assert rec["max_memory_allocated"] is None and rec["nvml_used_at_peak"] is None


# ---------------------------------------------------------------------------------------------


def test_case_table():
    ids = [c["id"] for c in m.CASES]
    assert len(ids) == len(set(ids)) >= 20
    assert ids[0] == "llama-3.2-1b.train.bf16-mixed.foreach.b4.s2048.ckpt-none"
    for c in m.CASES:
        assert c["model"] in m.MODELS and c["model"] in m.TINY_OVERRIDES
        assert m.case_id(c) == c["id"]
        if c["model"] == "gpt2" and c["kind"] == "infer":
            assert c["prompt"] + c["generate"] <= m.MODELS["gpt2"]["fields"]["n_positions"]
    # The whole list fits the default budget on an H100 (rough estimates).
    assert sum(c["est_s"] for c in m.CASES) + m.CHILD_OVERHEAD_S < m.DEFAULT_BUDGET_S
    # Nested config dicts are never shared with (or edited by) transformers.
    f = m.model_fields("llama-3.2-1b", False)
    f["rope_scaling"]["x"] = 1
    assert "x" not in m.MODELS["llama-3.2-1b"]["fields"]["rope_scaling"]


def test_full_size_configs_match_published_parameter_counts():
    from transformers import AutoConfig, AutoModelForCausalLM

    expected = {"gpt2": 124.44e6, "qwen2.5-0.5b": 494.03e6, "qwen2.5-1.5b": 1543.7e6,
                "llama-3.2-1b": 1235.8e6, "llama-3.2-3b": 3212.7e6, "llama-3.1-8b": 8030.3e6,
                "mistral-7b-v0.1": 7241.7e6}
    for name, n_exp in expected.items():
        spec = m.MODELS[name]
        cfg = AutoConfig.for_model(spec["model_type"], **m.model_fields(name, False))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
        n = sum(p.numel() for p in model.parameters())
        assert abs(n - n_exp) / n_exp < 1e-3, (name, n)


def test_all_tiny_cases_in_process(tmp_path):
    out = tmp_path / "m.json"
    r = run_script("--device", "cpu", "--tiny", "--in-process", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert TOP_KEYS <= set(doc)
    assert doc["complete"] and doc["tiny"] and doc["device"] == "cpu"
    assert doc["planned"] == [c["id"] for c in m.CASES]
    assert [c["id"] for c in doc["cases"]] == doc["planned"]
    assert doc["status_counts"] == {"ok": len(m.CASES)}
    for rec in doc["cases"]:
        check_case(rec, measured=False)
        assert rec["wall_s"] >= 0
    prov = doc["provenance"]
    for k in ("date_utc", "hostname", "python", "torch", "transformers"):
        assert prov[k]
    assert doc["context"]["status"] == "skipped"
    # The sliding-window cache keeps only the window; the plain one keeps everything.
    by = {c["id"]: c for c in doc["cases"]}
    plain = by["mistral-7b-v0.1.infer.bf16.b1.p16384.g16.sdpa.logits-last"]
    slid = by["mistral-7b-v0.1.infer.bf16.b1.p16384.g16.sdpa.logits-last.cache-config"]
    assert slid["kv_cache_bytes_final"] < plain["kv_cache_bytes_final"]
    assert plain["kv_cache_seq_len_final"] == 40 + 3


@pytest.mark.slow
def test_child_processes_budget_and_timeout(tmp_path):
    out = tmp_path / "m.json"
    r = run_script("--device", "cpu", "--tiny", "--only", "qwen2.5-1.5b.*ckpt-full", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[1/1] qwen2.5-1.5b.train.bf16-true.foreach.b2.s2048.ckpt-full: ok" in r.stdout
    doc = json.loads(out.read_text())
    assert [c["status"] for c in doc["cases"]] == ["ok"]
    for rec in doc["cases"]:
        check_case(rec, measured=False)
        assert rec["returncode"] == 0 and rec["wall_s"] > 0
    assert doc["context"]["status"] == "skipped"

    # A budget too small for anything: every case skipped, the file still complete.
    out2 = tmp_path / "m2.json"
    r = run_script("--device", "cpu", "--tiny", "--budget-s", "1", "--no-context",
                   "--only", "gpt2", "--out", out2)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out2.read_text())
    assert doc["complete"] and {c["status"] for c in doc["cases"]} == {"skipped"}

    # A hung/slow child is killed at its timeout and recorded; the run goes on.
    out3 = tmp_path / "m3.json"
    r = run_script("--device", "cpu", "--tiny", "--case-timeout-s", "0.5", "--no-context",
                   "--only", "gpt2.infer", "--out", out3)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out3.read_text())
    assert doc["cases"][0]["status"] == "timeout"
    assert doc["cases"][0]["error"]["type"] == "Timeout"


def test_cli_errors_and_list():
    r = run_script("--list")
    assert r.returncode == 0 and m.CASES[0]["id"] in r.stdout
    r = run_script("--device", "cpu", "--tiny", "--only", "no-such-case", "--out", "/dev/null")
    assert r.returncode == 2
    r = run_script("--device", "cuda", "--in-process", "--out", "/dev/null")
    assert r.returncode == 2


# --- CUDA and NVML bookkeeping, against fakes ------------------------------------------------


class FakeCuda:
    """Enough of torch.cuda for the script's bookkeeping; numbers grow so peaks are distinct."""

    class OutOfMemoryError(RuntimeError):
        pass

    def __init__(self):
        self.n = 0

    def _tick(self, scale=1):
        self.n += 1
        return 1_000_000 * scale + self.n

    def init(self):
        pass

    def synchronize(self):
        pass

    def reset_peak_memory_stats(self):
        pass

    def memory_allocated(self):
        return self._tick()

    def memory_reserved(self):
        return self._tick(2)

    def max_memory_allocated(self):
        return self._tick(3)

    def max_memory_reserved(self):
        return self._tick(4)

    def memory_stats(self):
        return {k: self._tick() for k in m.STAT_KEYS if k != "requested_bytes.all.peak"}

    def mem_get_info(self):
        return (70 * 2**30, 80 * 2**30)

    def get_device_properties(self, i):
        return types.SimpleNamespace(name="Fake H100", total_memory=80 * 2**30, major=9,
                                     minor=0, multi_processor_count=132, uuid="GPU-fake")


def fake_pynvml():
    mod = types.ModuleType("pynvml")
    state = {"used": 500 * 2**20}

    class NVMLError(Exception):
        pass

    def mem(handle, version=None):
        state["used"] += 2**20
        d = dict(total=80 * 2**30, free=80 * 2**30 - state["used"], used=state["used"])
        if version is not None:
            d["reserved"] = 400 * 2**20
        return types.SimpleNamespace(**d)

    def unavailable(*a):
        raise NVMLError("Not Supported")

    mod.NVMLError = NVMLError
    mod.nvmlMemory_v2 = 0x02000028
    mod.nvmlInit = lambda: None
    mod.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    mod.nvmlDeviceGetHandleByUUID = lambda u: ("h", u)
    mod.nvmlDeviceGetMemoryInfo = mem
    mod.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=123 * 2**20)]
    mod.nvmlSystemGetDriverVersion = lambda: "580.00"
    mod.nvmlSystemGetCudaDriverVersion_v2 = lambda: 13000
    mod.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    mod.nvmlDeviceGetUUID = lambda h: "GPU-fake"
    mod.nvmlDeviceGetVbiosVersion = unavailable
    mod.nvmlDeviceGetPersistenceMode = lambda h: 1
    mod.nvmlDeviceGetMigMode = unavailable
    mod.nvmlDeviceGetEccMode = lambda h: [1, 1]
    mod.nvmlDeviceGetPowerManagementLimit = lambda h: 700000
    return mod


@pytest.fixture
def fake_gpu(monkeypatch):
    fc = FakeCuda()
    for name in ("init", "synchronize", "reset_peak_memory_stats", "memory_allocated",
                 "memory_reserved", "max_memory_allocated", "max_memory_reserved",
                 "memory_stats", "mem_get_info", "get_device_properties"):
        monkeypatch.setattr(torch.cuda, name, getattr(fc, name))
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    monkeypatch.setattr(m, "tensor_device", lambda device: "cpu")
    monkeypatch.setattr(m.shutil, "which", lambda name: None)  # no nvidia-smi here
    return fc


@pytest.mark.parametrize("cid", [
    "llama-3.2-1b.train.bf16-mixed.foreach.b4.s2048.ckpt-none",
    "qwen2.5-1.5b.train.bf16-true.foreach.b2.s2048.ckpt-full",
    "llama-3.2-1b.train.fp32.forloop.b2.s1024.ckpt-none",
    "qwen2.5-0.5b.infer.bf16.b4.p2048.g16.eager.logits-all",
    "mixtral-small.infer.bf16.b8.p2048.g16.sdpa.logits-last",
])
def test_case_bookkeeping_with_fake_cuda(fake_gpu, cid):
    nv = m.Nvml()
    assert nv.source == "nvml"
    before = nv.used()
    rec = m.run_case_here(cid, "cuda", True, nv, before)
    check_case(rec, measured=True)
    ctx = rec["context"]
    assert ctx["context_bytes"] > 0 and ctx["nvml_used_before_init"] == before
    assert rec["nvml_sampler"]["samples"] >= 1
    assert rec["process_nvml"]["this_pid"] == 123 * 2**20
    assert rec["nvml_process_bytes_at_peak"] == rec["nvml_used_at_peak"] - before
    assert rec["memory_stats"]["requested_bytes.all.peak"] is None  # missing key -> None
    assert isinstance(rec["memory_stats"]["num_alloc_retries"], int)
    json.dumps(rec)
    if rec["scenario"]["kind"] == "train":
        s2 = rec["phases"]["step2"]
        assert rec["max_memory_allocated"] == max(s2[p]["max_allocated"]
                                                  for p in ("forward", "backward", "optimizer"))
        assert rec["step2_max_memory_allocated"] == rec["max_memory_allocated"]
    else:
        assert rec["max_memory_allocated"] == max(rec["max_memory_allocated_prefill"],
                                                  rec["max_memory_allocated_decode"])


def test_context_and_provenance_with_fake_cuda(fake_gpu):
    nv = m.Nvml()
    rec = m.run_context_here("cuda", nv, nv.used(), nv.used())
    assert rec["status"] == "ok", rec["error"]
    assert rec["context_bytes_after_init"] > 0
    assert isinstance(rec["non_pytorch_bytes_after_bf16_matmul"], int)
    assert rec["nvml_info_before_init"]["v2_reserved"] == 400 * 2**20
    assert rec["device_properties"]["name"] == "Fake H100"
    prov = m.provenance("cuda")
    assert prov["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert prov["driver_version"] == "580.00" and prov["cuda_driver_version_str"] == "13.0"
    assert prov["vbios"].startswith("unavailable")
    assert prov["gpu_total_memory"] == 80 * 2**30
    json.dumps(rec), json.dumps(prov)


def test_oom_is_recorded_and_partial_peaks_kept(fake_gpu, monkeypatch):
    nv = m.Nvml()

    def boom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.optim.AdamW, "step", boom)
    rec = m.run_case_here("gpt2.train.fp32.foreach.b8.s1024.ckpt-none", "cuda", True, nv,
                          nv.used())
    assert rec["status"] == "oom" and rec["oom"] is True
    assert "out of memory" in rec["error"]["message"]
    assert isinstance(rec["partial"]["max_memory_allocated"], int)
    json.dumps(rec)
