"""The GPU catalog: driver-reported totals, lookups and the unified-memory limit.

Golden values: ``nvidia-smi``'s ``memory.total`` in MiB as printed in public logs,
``rocm-smi --showmeminfo vram`` for the MI300X and MI250X, ``hl-smi`` for Gaudi, and
llama.cpp's ``recommendedMaxWorkingSetSize = 103079.22 MB`` on 128 GB M3 Max / M4 Max.
"""

from __future__ import annotations

import re

import pytest

from memfit.errors import MemfitError
from memfit.hardware import GPU_NAMES, GPUS, MEMORY_BASES, get_gpu

MiB = 2**20

NVIDIA_SMI_MIB = {
    "h100-sxm": 81559, "h100-pcie": 81559, "h100-nvl": 95830, "h200": 143771,
    "gh200": 97871, "b200": 183359, "a100-sxm-80gb": 81920, "a100-pcie-80gb": 81920,
    "a100-sxm-40gb": 40960, "a100-pcie-40gb": 40960, "a10g": 23028, "a10": 23028,
    "l4": 23034, "l40s": 46068, "v100-16gb": 16160, "v100-32gb": 32510, "t4": 15360,
    "rtx-3090": 24576, "rtx-4090": 24564, "rtx-5090": 32607, "rtx-a6000": 49140,
    "rtx-6000-ada": 49140, "rtx-3060": 12288, "rtx-4070-ti": 12282, "rtx-4080": 16376,
    "rtx-5080": 16303, "rtx-a5000": 24564, "a40": 46068, "l40": 46068, "h20": 97871,
    "rtx-pro-6000": 97887,
}


@pytest.mark.parametrize("name,mib", sorted(NVIDIA_SMI_MIB.items()))
def test_nvidia_smi_totals(name, mib):
    gpu = get_gpu(name)
    assert gpu.memory_basis == "nvidia-smi"
    assert gpu.memory_bytes == mib * MiB
    assert gpu.memory_mib == mib
    assert gpu.usable_bytes == gpu.memory_bytes


def test_other_vendor_tools():
    assert get_gpu("mi300x").memory_bytes == 205_822_885_888
    assert get_gpu("MI250X").memory_bytes == 68_702_699_520        # one GCD
    assert get_gpu("gaudi2").memory_bytes == 98304 * MiB
    assert get_gpu("gaudi3").memory_bytes == 131072 * MiB


def test_apple_unified_memory_limit():
    m3 = get_gpu("m3-max")
    assert m3.memory_bytes == 128 * 2**30
    assert m3.usable_bytes == 103_079_215_104                      # "103079.22 MB"
    assert f"{get_gpu('m4-max').usable_bytes / 1e6:.2f}" == "103079.22"
    m2 = get_gpu("M2 Ultra")
    assert m2.usable_bytes * 4 == m2.memory_bytes * 3
    assert "recommendedMaxWorkingSetSize" in m2.notes


@pytest.mark.parametrize("spelling,name", [
    ("h100", "h100-sxm"), ("H100-80GB", "h100-sxm"), ("h100 80gb", "h100-sxm"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("NVIDIA H100 PCIe", "h100-pcie"),
    ("a100-80gb", "a100-sxm-80gb"), ("A100", "a100-sxm-80gb"), ("a100-40gb", "a100-sxm-40gb"),
    ("NVIDIA A100-SXM4-40GB", "a100-sxm-40gb"), ("4090", "rtx-4090"),
    ("NVIDIA GeForce RTX 4090", "rtx-4090"), ("RTX 3090", "rtx-3090"), ("Tesla T4", "t4"),
    ("A10G", "a10g"), ("a10", "a10"), ("L40S", "l40s"), ("l4", "l4"),
    ("AMD Instinct MI300X", "mi300x"), ("HL-225", "gaudi2"), ("v5e", "tpu-v5e"),
    ("NVIDIA RTX 6000 Ada Generation", "rtx-6000-ada"), ("NVIDIA GH200 480GB", "gh200"),
])
def test_aliases_and_case(spelling, name):
    assert get_gpu(spelling).name == name


def test_unknown_gpu_suggests_close_matches():
    with pytest.raises(MemfitError) as err:
        get_gpu("rtx 4060")
    msg = str(err.value)
    assert err.value.field == "gpu" and err.value.value == "rtx 4060"
    assert "did you mean" in msg and "rtx-4080" in msg
    # the error says every way to name a GPU
    assert "24GiB" in msg and "auto" in msg and "memfit gpus" in msg
    assert all(name in err.value.allowed for name in GPU_NAMES)
    with pytest.raises(MemfitError):
        get_gpu("")


def test_catalog_invariants():
    assert len(set(GPU_NAMES)) == len(GPU_NAMES) == len(GPUS)
    for gpu in GPUS:
        assert isinstance(gpu.memory_bytes, int) and isinstance(gpu.usable_bytes, int)
        assert isinstance(gpu.bandwidth_bytes_per_s, int) and gpu.bandwidth_bytes_per_s > 0
        assert 0 < gpu.usable_bytes <= gpu.memory_bytes
        assert gpu.memory_basis in MEMORY_BASES
        assert gpu.source and gpu.marketed and gpu.vendor
        assert gpu.bf16_tflops_dense is None or gpu.bf16_tflops_dense > 0
        if gpu.memory_basis == "marketed":
            # Marketed capacity in decimal GB, and the note says so.
            gb = int(re.match(r"\d+", gpu.marketed).group())
            assert gpu.memory_bytes == gb * 10**9
            assert "arketed" in gpu.notes
        if gpu.memory_basis != "macos":
            assert gpu.usable_bytes == gpu.memory_bytes
        assert gpu.memory_basis != "custom"  # only --gpu 24GiB makes one


def test_driver_total_is_below_marketed_binary_capacity():
    # nvidia-smi never shows more than the board's binary capacity ("80 GB" = 80 GiB of HBM).
    for name in ("h100-sxm", "h200", "b200", "a100-sxm-80gb", "l40s", "rtx-4090"):
        gpu = get_gpu(name)
        marketed_gb = int(re.match(r"\d+", gpu.marketed).group())
        assert gpu.memory_bytes <= marketed_gb * 2**30


@pytest.mark.parametrize("text,nbytes,name", [
    ("24GiB", 24 * 2**30, "24gib"), ("24GB", 24 * 10**9, "24gb"), ("80 GB", 80 * 10**9, "80gb"),
    ("16384MiB", 16384 * MiB, "16384mib"), ("23.5gib", int(23.5 * 2**30), "23.5gib"),
    ("1TB", 10**12, "1tb"),
])
def test_bare_capacity(text, nbytes, name):
    gpu = get_gpu(text)
    assert gpu.memory_bytes == gpu.usable_bytes == nbytes
    assert gpu.name == name and gpu.memory_basis == "custom" and gpu.vendor == "custom"
    assert get_gpu(gpu.name) == gpu  # the name reads back (the web API passes names)


@pytest.mark.parametrize("text", ["0GB", "24", "24 bytes", "-1GiB", "GiB"])
def test_bad_capacity_is_refused(text):
    with pytest.raises(MemfitError) as err:
        get_gpu(text)
    assert err.value.field == "gpu"


def test_bare_capacity_through_infer():
    from memfit.inference import infer

    e = infer("llama-3.1-8b", gpu="24GiB")
    assert e.gpu_memory_bytes == 24 * 2**30 and e.fits is True
    assert infer("llama-3.1-8b", gpu="12GB").fits is False


def test_auto_without_nvml_says_how_to_name_a_gpu(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    with pytest.raises(MemfitError) as err:
        get_gpu("auto")
    assert err.value.field == "gpu" and "nvidia-ml-py" in str(err.value)


def test_custom_gpu_object_in_the_api() -> None:
    import memfit

    g = memfit.make_gpu("my-a40", 46068 * 2**20)
    assert g.memory_basis == "custom" and g.usable_bytes == 46068 * 2**20
    e = memfit.infer("llama-3.1-8b", gpu=g)
    assert e.gpu == "my-a40" and e.gpu_memory_bytes == 46068 * 2**20
    assert memfit.infer("llama-3.1-8b", gpu="my-a40").gpu == "my-a40"  # found by name after
    assert memfit.fit_infer("llama-3.1-8b", g).gpu == "my-a40"
    with pytest.raises(memfit.MemfitError, match="catalog"):
        memfit.infer("llama-3.1-8b", gpu=memfit.make_gpu("h100", 10))
    with pytest.raises(memfit.MemfitError, match="memory_bytes"):
        memfit.make_gpu("x", -1)


def test_issue_15_cards_in_the_catalog() -> None:
    from memfit.hardware import get_gpu

    for name in ("rtx-5090", "h100-nvl", "h200-nvl", "b200", "mi300x", "mi325x"):
        assert get_gpu(name).source  # each with its datasheet
