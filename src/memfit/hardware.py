"""A catalog of accelerators: the memory a framework can use on each, with where it comes from.

``memory_bytes`` is the total the vendor's tool reports (``nvidia-smi``'s ``memory.total``,
``rocm-smi``'s "VRAM Total Memory", ``hl-smi``'s total), which is less than the marketed
capacity: an "80 GB" H100 shows 81559 MiB, not 81920. Where no such figure is known the entry
holds the marketed capacity in decimal GB (``memory_basis == "marketed"``), which is a lower
bound for HBM parts (their stacks come in binary GiB).

``usable_bytes`` is what one process can allocate for tensors at most: the same as
``memory_bytes`` on discrete accelerators (the CUDA context and allocator overheads are
estimated elsewhere, in ``memory/overhead``), and macOS's ``recommendedMaxWorkingSetSize``
on Apple silicon, whose unified memory the GPU may use only ~75% of by default.

Bandwidth is the spec-sheet peak in bytes/s; ``bf16_tflops_dense`` the spec-sheet dense
(non-sparse) BF16 tensor throughput, ``None`` where the part has no BF16 matrix unit or the
vendor publishes no figure.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .errors import MemfitError

__all__ = ["GPU", "GPUS", "GPU_NAMES", "MEMORY_BASES", "get_gpu", "custom_gpu", "local_gpu",
           "make_gpu", "register_gpu"]

MiB = 2**20
GiB = 2**30
GB = 10**9
TB_S = 10**12  # bandwidth unit on spec sheets: 1 TB/s = 10**12 bytes/s

#: What ``memory_bytes`` is: a tool's reported total, or the marketed capacity.
MEMORY_BASES = ("nvidia-smi", "rocm-smi", "hl-smi", "macos", "marketed", "custom")

# Apple silicon: the Metal device's recommendedMaxWorkingSetSize is 3/4 of RAM on these
# machines (llama.cpp logs 103079.22 MB = 0.75 x 128 GiB on M3 Max and M4 Max 128 GB; 73728 MB =
# 0.75 x 96 GiB on M2 Max 96 GB); Macs with <= 36 GB get about 2/3 (21845.34 MB on 32 GB).
# `sudo sysctl iogpu.wired_limit_mb=N` raises the limit.
_APPLE_GPU_FRACTION = (3, 4)


@dataclass(frozen=True)
class GPU:
    """One accelerator model (one device as frameworks see it)."""

    name: str
    """Canonical lower-case name, e.g. ``h100-sxm``."""
    aliases: tuple[str, ...]
    """Other spellings, including the exact ``nvidia-smi`` / ``torch.cuda`` product name."""
    memory_bytes: int
    """Total device memory as the vendor tool reports it (see ``memory_basis``)."""
    marketed: str
    """The capacity on the box, e.g. ``"80 GB"``."""
    vendor: str
    bandwidth_bytes_per_s: int
    """Peak memory bandwidth from the spec sheet."""
    bf16_tflops_dense: float | None
    """Peak dense BF16 tensor TFLOPS from the spec sheet (None: no BF16 matmul unit or no
    published figure)."""
    notes: str
    source: str
    memory_basis: str = "nvidia-smi"
    """One of :data:`MEMORY_BASES`."""
    usable_bytes: int = 0
    """Most one process can use for tensors; defaults to ``memory_bytes``."""

    def __post_init__(self) -> None:
        assert self.name == self.name.lower(), self.name
        assert self.memory_basis in MEMORY_BASES, self.memory_basis
        assert self.memory_bytes > 0
        # a custom GPU (a bare capacity) has no known bandwidth: 0
        assert self.bandwidth_bytes_per_s > 0 or self.memory_basis == "custom"
        if self.usable_bytes == 0:
            object.__setattr__(self, "usable_bytes", self.memory_bytes)
        assert 0 < self.usable_bytes <= self.memory_bytes

    @property
    def memory_mib(self) -> float:
        """``memory_bytes`` in MiB, the unit ``nvidia-smi`` prints."""
        return self.memory_bytes / MiB


def _nv(name: str, aliases: tuple[str, ...], mib: int, marketed: str, bandwidth: float,
        tflops: float | None, notes: str, source: str) -> GPU:
    """An NVIDIA GPU whose ``nvidia-smi`` total is ``mib`` MiB."""
    return GPU(name=name, aliases=aliases, memory_bytes=mib * MiB, marketed=marketed,
               vendor="NVIDIA", bandwidth_bytes_per_s=round(bandwidth * TB_S),
               bf16_tflops_dense=tflops, notes=notes, source=source)


_SMI = "nvidia-smi memory.total as printed in public logs ('{mib}MiB')"


def _src(sheet: str, mib: int | None = None) -> str:
    return sheet if mib is None else f"{sheet}; {_SMI.format(mib=mib)}"


def _apple(name: str, aliases: tuple[str, ...], ram_gib: int, bandwidth: float,
           notes: str) -> GPU:
    total = ram_gib * GiB
    num, den = _APPLE_GPU_FRACTION
    return GPU(name=name, aliases=aliases, memory_bytes=total, marketed=f"{ram_gib} GB unified",
               vendor="Apple", bandwidth_bytes_per_s=round(bandwidth * TB_S),
               bf16_tflops_dense=None, memory_basis="macos", usable_bytes=total * num // den,
               notes=f"Unified memory shared with the CPU; the GPU may use "
                     f"recommendedMaxWorkingSetSize = 3/4 of it by default "
                     f"({total * num // den} bytes); `sudo sysctl iogpu.wired_limit_mb=N` "
                     f"raises it. {notes}",
               source="Apple tech specs; Metal MTLDevice.recommendedMaxWorkingSetSize as "
                      "logged by llama.cpp ggml_metal_init")


#: Every accelerator, in display order.
GPUS: tuple[GPU, ...] = (
    # --- NVIDIA Hopper / Blackwell -------------------------------------------------------
    _nv("h100-sxm", ("h100", "h100-80gb", "h100-sxm5", "h100-sxm-80gb", "NVIDIA H100 80GB HBM3"),
        81559, "80 GB HBM3", 3.35, 989,
        "H100 SXM5. 989 dense BF16 TFLOPS (1979 with 2:4 sparsity).",
        _src("NVIDIA H100 Tensor Core GPU datasheet", 81559)),
    _nv("h100-pcie", ("h100-pcie-80gb", "NVIDIA H100 PCIe"), 81559, "80 GB HBM2e", 2.0, 756,
        "Same 81559 MiB as the SXM part; lower clocks and bandwidth.",
        _src("NVIDIA H100 Tensor Core GPU datasheet", 81559)),
    _nv("h100-nvl", ("h100-nvl-94gb", "h100-94gb", "NVIDIA H100 NVL"), 95830, "94 GB HBM3",
        3.9, 835, "Per GPU of the NVL pair (the datasheet once quoted the pair's total).",
        _src("NVIDIA H100 NVL datasheet", 95830)),
    _nv("h200", ("h200-sxm", "h200-141gb", "NVIDIA H200", "h200-nvl", "NVIDIA H200 NVL"),
        143771, "141 GB HBM3e", 4.8, 989,
        "H200 SXM; the H200 NVL shows the same 143771 MiB (at 4.8 TB/s, lower clocks).",
        _src("NVIDIA H200 Tensor Core GPU datasheet", 143771)),
    _nv("gh200", ("gh200-96gb", "NVIDIA GH200 480GB", "GH200 120GB", "NVIDIA GH200 120GB"),
        97871, "96 GB HBM3", 4.0, 989,
        "Grace Hopper superchip, H100 with 96 GB HBM3 (the 480GB/120GB in the product name is "
        "the Grace CPU's LPDDR5X, reachable over NVLink-C2C but not counted here). The 144 GB "
        "HBM3e version has more memory.",
        _src("NVIDIA GH200 Grace Hopper Superchip datasheet", 97871)),
    _nv("b200", ("b200-180gb", "hgx-b200", "NVIDIA B200"), 183359, "180 GB HBM3e", 8.0, 2250,
        "HGX/DGX B200 (1000 W). First announced with 192 GB; shipping boards show 183359 MiB. "
        "2250 dense BF16 TFLOPS = half the 4.5 PFLOPS sparse figure.",
        _src("NVIDIA HGX B200 / DGX B200 datasheets", 183359)),
    GPU(name="b100", aliases=("b100-192gb", "hgx-b100", "NVIDIA B100"), memory_bytes=192 * GB,
        marketed="192 GB HBM3e", vendor="NVIDIA", bandwidth_bytes_per_s=8 * TB_S,
        bf16_tflops_dense=1750, memory_basis="marketed",
        notes="Marketed capacity (no nvidia-smi total known); a B200 marketed at 192 GB shows "
              "183359 MiB, so expect about that. 1750 dense BF16 TFLOPS = half of 3.5 sparse.",
        source="NVIDIA HGX B100 specifications (GTC 2024)"),
    # --- NVIDIA Ampere / Volta / Turing data-centre ---------------------------------------
    _nv("a100-sxm-80gb", ("a100", "a100-80gb", "a100-sxm4-80gb", "NVIDIA A100-SXM4-80GB"),
        81920, "80 GB HBM2e", 2.039, 312,
        "'a100' means this one. nvidia-smi shows the full 81920 MiB on A100.",
        _src("NVIDIA A100 Tensor Core GPU datasheet", 81920)),
    _nv("a100-sxm-40gb", ("a100-40gb", "a100-sxm4-40gb", "NVIDIA A100-SXM4-40GB"),
        40960, "40 GB HBM2", 1.555, 312, "",
        _src("NVIDIA A100 Tensor Core GPU datasheet", 40960)),
    _nv("a100-pcie-80gb", ("a100-pcie", "NVIDIA A100 80GB PCIe"), 81920, "80 GB HBM2e", 1.935,
        312, "", _src("NVIDIA A100 Tensor Core GPU datasheet", 81920)),
    _nv("a100-pcie-40gb", ("NVIDIA A100-PCIE-40GB",), 40960, "40 GB HBM2", 1.555, 312, "",
        _src("NVIDIA A100 Tensor Core GPU datasheet", 40960)),
    _nv("a10g", ("a10g-24gb", "NVIDIA A10G"), 23028, "24 GB GDDR6", 0.6, None,
        "AWS g5 instances. NVIDIA publishes no spec sheet for the A10G; its BF16 tensor rate "
        "is left unknown.", _src("AWS EC2 G5 instance documentation", 23028)),
    _nv("a10", ("a10-24gb", "NVIDIA A10"), 23028, "24 GB GDDR6", 0.6, 125,
        "125 dense BF16 TFLOPS (250 sparse).", _src("NVIDIA A10 Tensor Core GPU datasheet",
                                                     23028)),
    _nv("l4", ("l4-24gb", "NVIDIA L4"), 23034, "24 GB GDDR6", 0.3, 121,
        "121 dense BF16 TFLOPS (242 sparse).", _src("NVIDIA L4 Tensor Core GPU datasheet",
                                                     23034)),
    _nv("l40s", ("l40s-48gb", "NVIDIA L40S"), 46068, "48 GB GDDR6", 0.864, 362.05,
        "362.05 dense BF16 TFLOPS (733 sparse).", _src("NVIDIA L40S datasheet", 46068)),
    _nv("v100-16gb", ("v100", "v100-sxm2-16gb", "v100-pcie-16gb", "Tesla V100-SXM2-16GB",
                      "Tesla V100-PCIE-16GB"),
        16160, "16 GB HBM2", 0.9, None,
        "No BF16 support (Volta: FP16 tensor cores, 125 TFLOPS on SXM2). Older drivers and "
        "CUDA report 16160 MiB; R5xx drivers print 16384 MiB in nvidia-smi.",
        _src("NVIDIA V100 Tensor Core GPU datasheet", 16160)),
    _nv("v100-32gb", ("v100-sxm2-32gb", "v100-pcie-32gb", "v100s", "Tesla V100-SXM2-32GB",
                      "Tesla V100-PCIE-32GB", "Tesla V100S-PCIE-32GB"),
        32510, "32 GB HBM2", 0.9, None,
        "No BF16 support. Older drivers report 32510 MiB; R5xx drivers print 32768 MiB. The "
        "V100S has 1134 GB/s.", _src("NVIDIA V100 Tensor Core GPU datasheet", 32510)),
    _nv("t4", ("t4-16gb", "Tesla T4"), 15360, "16 GB GDDR6", 0.32, None,
        "No BF16 support (Turing: FP16 tensor cores, 65 TFLOPS).",
        _src("NVIDIA T4 Tensor Core GPU datasheet", 15360)),
    # --- NVIDIA workstation / consumer ------------------------------------------------------
    _nv("rtx-3090", ("3090", "rtx3090", "NVIDIA GeForce RTX 3090"), 24576, "24 GB GDDR6X",
        0.936, 71, "71 dense BF16 TFLOPS with FP32 accumulate (GeForce runs FP32 accumulate at "
        "half the FP16-accumulate rate).", _src("NVIDIA Ampere GA102 GPU architecture "
                                                "whitepaper, appendix A", 24576)),
    _nv("rtx-4090", ("4090", "rtx4090", "NVIDIA GeForce RTX 4090"), 24564, "24 GB GDDR6X",
        1.008, 165.2, "165.2 dense BF16 TFLOPS with FP32 accumulate.",
        _src("NVIDIA Ada Lovelace GPU architecture whitepaper", 24564)),
    _nv("rtx-5090", ("5090", "rtx5090", "NVIDIA GeForce RTX 5090"), 32607, "32 GB GDDR7",
        1.792, 209.5, "209.5 dense BF16 TFLOPS with FP32 accumulate.",
        _src("NVIDIA RTX Blackwell GPU architecture whitepaper", 32607)),
    _nv("rtx-a6000", ("a6000", "NVIDIA RTX A6000"), 49140, "48 GB GDDR6", 0.768, 154.8,
        "154.8 dense BF16 TFLOPS with FP32 accumulate (309.7 sparse).",
        _src("NVIDIA Ampere GA102 GPU architecture whitepaper, RTX A6000 appendix", 49140)),
    _nv("rtx-6000-ada", ("6000-ada", "rtx6000-ada", "NVIDIA RTX 6000 Ada Generation"), 49140,
        "48 GB GDDR6", 0.96, 364.2, "364.2 dense BF16 TFLOPS with FP32 accumulate.",
        _src("NVIDIA RTX 6000 Ada Generation datasheet", 49140)),
    _nv("rtx-3060", ("3060", "rtx3060", "rtx-3060-12gb", "NVIDIA GeForce RTX 3060"), 12288,
        "12 GB GDDR6", 0.36, None,
        "The 12 GB RTX 3060 (the 8 GB variant has less). No BF16 figure in the whitepaper's "
        "GA106 table is used here.", _src("NVIDIA GeForce RTX 3060 specifications", 12288)),
    _nv("rtx-4070-ti", ("4070ti", "rtx4070ti", "4070-ti", "NVIDIA GeForce RTX 4070 Ti"), 12282,
        "12 GB GDDR6X", 0.504, None, "",
        _src("NVIDIA GeForce RTX 4070 Ti specifications", 12282)),
    _nv("rtx-4080", ("4080", "rtx4080", "rtx-4080-16gb", "NVIDIA GeForce RTX 4080"), 16376,
        "16 GB GDDR6X", 0.717, 97.5, "97.5 dense BF16 TFLOPS with FP32 accumulate.",
        _src("NVIDIA Ada Lovelace GPU architecture whitepaper (RTX 4080)", 16376)),
    _nv("rtx-5080", ("5080", "rtx5080", "NVIDIA GeForce RTX 5080"), 16303, "16 GB GDDR7", 0.96,
        None, "", _src("NVIDIA GeForce RTX 5080 specifications", 16303)),
    _nv("rtx-a5000", ("a5000", "NVIDIA RTX A5000"), 24564, "24 GB GDDR6", 0.768, 111.1,
        "111.1 dense BF16 TFLOPS (222.2 sparse).",
        _src("NVIDIA RTX A5000 datasheet", 24564)),
    _nv("a40", ("a40-48gb", "NVIDIA A40"), 46068, "48 GB GDDR6", 0.696, 149.7,
        "149.7 dense BF16 TFLOPS (299.4 sparse).", _src("NVIDIA A40 datasheet", 46068)),
    _nv("l40", ("l40-48gb", "NVIDIA L40"), 46068, "48 GB GDDR6", 0.864, 181.05,
        "181.05 dense BF16 TFLOPS (362.1 sparse).", _src("NVIDIA L40 datasheet", 46068)),
    _nv("h20", ("h20-96gb", "NVIDIA H20"), 97871, "96 GB HBM3", 4.0, 148,
        "Hopper for the China market: 96 GB HBM3 at 4.0 TB/s, 148 dense BF16 TFLOPS.",
        _src("NVIDIA H20 product brief", 97871)),
    _nv("rtx-pro-6000", ("rtx-pro-6000-blackwell", "pro-6000",
                         "NVIDIA RTX PRO 6000 Blackwell Workstation Edition"), 97887,
        "96 GB GDDR7", 1.792, None, "Blackwell workstation card, 96 GB GDDR7 with ECC.",
        _src("NVIDIA RTX PRO 6000 Blackwell datasheet", 97887)),
    GPU(name="gb200", aliases=("gb200-186gb", "NVIDIA GB200"), memory_bytes=186 * GB,
        marketed="186 GB HBM3e", vendor="NVIDIA", bandwidth_bytes_per_s=8 * TB_S,
        bf16_tflops_dense=2500, memory_basis="marketed",
        notes="Per Blackwell GPU of a GB200 superchip. Marketed capacity (no nvidia-smi total "
              "known; expect a little below 186 GiB). 2500 dense BF16 TFLOPS = half of 5 "
              "sparse.", source="NVIDIA GB200 NVL72 datasheet"),
    # --- AMD ----------------------------------------------------------------------------------
    GPU(name="mi300x", aliases=("mi300x-192gb", "AMD Instinct MI300X"),
        memory_bytes=205_822_885_888, marketed="192 GB HBM3", vendor="AMD",
        bandwidth_bytes_per_s=round(5.3 * TB_S), bf16_tflops_dense=1307.4,
        memory_basis="rocm-smi",
        notes="rocm-smi --showmeminfo vram: 205822885888 bytes (191.7 GiB).",
        source="AMD Instinct MI300X data sheet; rocm-smi output in public logs"),
    GPU(name="mi325x", aliases=("mi325x-256gb", "AMD Instinct MI325X"), memory_bytes=256 * GB,
        marketed="256 GB HBM3E", vendor="AMD", bandwidth_bytes_per_s=6 * TB_S,
        bf16_tflops_dense=1307.4, memory_basis="marketed",
        notes="Marketed capacity (no rocm-smi total known).",
        source="AMD Instinct MI325X data sheet"),
    GPU(name="mi250x", aliases=("mi250x-gcd", "AMD Instinct MI250X"),
        memory_bytes=68_702_699_520, marketed="128 GB HBM2e (2 x 64 GB GCDs)", vendor="AMD",
        bandwidth_bytes_per_s=round(1.6384 * TB_S), bf16_tflops_dense=191.5,
        memory_basis="rocm-smi",
        notes="One MI250X is two graphics compute dies that ROCm and PyTorch expose as two "
              "devices of 64 GiB each (rocm-smi: 68702699520 bytes); figures here are per "
              "GCD (half of the card's 3.2768 TB/s and 383 BF16 TFLOPS).",
        source="AMD Instinct MI250X data sheet; rocm-smi output in public logs"),
    # --- Apple ---------------------------------------------------------------------------------
    _apple("m2-ultra-192gb", ("m2-ultra", "apple-m2-ultra"), 192, 0.8,
           "Mac Studio / Mac Pro M2 Ultra, 800 GB/s."),
    _apple("m3-max-128gb", ("m3-max", "apple-m3-max"), 128, 0.4,
           "16-core CPU / 40-core GPU M3 Max (400 GB/s; the 14-core part has 300 GB/s)."),
    _apple("m4-max-128gb", ("m4-max", "apple-m4-max"), 128, 0.546,
           "16-core CPU / 40-core GPU M4 Max (546 GB/s)."),
    # --- Intel Gaudi ----------------------------------------------------------------------------
    GPU(name="gaudi2", aliases=("gaudi-2", "hl-225", "intel-gaudi2"), memory_bytes=98304 * MiB,
        marketed="96 GB HBM2e", vendor="Intel", bandwidth_bytes_per_s=round(2.46 * TB_S),
        bf16_tflops_dense=None, memory_basis="hl-smi",
        notes="hl-smi shows 98304 MiB on HL-225. Intel's spec sheet gives no dense BF16 "
              "matrix figure.", source="Intel Gaudi 2 product brief; hl-smi output in public "
                                       "logs ('98304MiB')"),
    GPU(name="gaudi3", aliases=("gaudi-3", "hl-325l", "intel-gaudi3"),
        memory_bytes=131072 * MiB, marketed="128 GB HBM2e", vendor="Intel",
        bandwidth_bytes_per_s=round(3.7 * TB_S), bf16_tflops_dense=1835,
        memory_basis="hl-smi", notes="hl-smi shows 131072 MiB on HL-325L (OAM).",
        source="Intel Gaudi 3 AI accelerator white paper / HL-325L product brief; hl-smi "
               "output in public logs ('131072 MiB')"),
    # --- Google TPU ---------------------------------------------------------------------------
    GPU(name="tpu-v5e", aliases=("v5e", "tpu-v5-lite", "v5litepod"), memory_bytes=16 * GB,
        marketed="16 GB HBM2", vendor="Google", bandwidth_bytes_per_s=819 * GB,
        bf16_tflops_dense=197, memory_basis="marketed",
        notes="Per chip. Marketed capacity.", source="Cloud TPU v5e documentation "
                                                     "(docs.cloud.google.com/tpu/docs/v5e)"),
    GPU(name="tpu-v5p", aliases=("v5p",), memory_bytes=95 * GB, marketed="95 GB HBM2e",
        vendor="Google", bandwidth_bytes_per_s=2765 * GB, bf16_tflops_dense=459,
        memory_basis="marketed", notes="Per chip. Marketed capacity.",
        source="Cloud TPU v5p documentation (docs.cloud.google.com/tpu/docs/v5p)"),
)

GPU_NAMES: tuple[str, ...] = tuple(g.name for g in GPUS)


# Brand words dropped before matching, so "NVIDIA GeForce RTX 4090" == "rtx 4090".
_BRAND_WORDS = ("nvidia", "geforce", "tesla", "amd", "instinct", "intel", "apple", "google")


def _key(name: str) -> str:
    """Lookup key: lower case, brand words dropped, letters and digits only
    ('NVIDIA H100 80GB HBM3' == 'h100-80gb-hbm3', 'H100 80GB' == 'h100-80gb')."""
    words = [w for w in name.lower().split() if w not in _BRAND_WORDS]
    return "".join(c for c in "".join(words) if c.isalnum())


_INDEX: dict[str, GPU] = {}
_EXACT: dict[str, GPU] = {}  # the catalog's own spellings, looked up before normalising
for _gpu in GPUS:
    for _spelling in (_gpu.name,) + _gpu.aliases:
        assert _INDEX.setdefault(_key(_spelling), _gpu) is _gpu, _spelling
        _EXACT[_spelling] = _gpu


_CAPACITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gib|gb|mib|mb|tib|tb)\s*$", re.IGNORECASE)
_UNIT_BYTES = {"mib": 2**20, "gib": 2**30, "tib": 2**40, "mb": 10**6, "gb": 10**9,
               "tb": 10**12}
HOW_TO_NAME = ("a catalog name or alias (`memfit gpus`: h100, a100-80gb, rtx-4090 ...), a bare "
               "capacity (24GiB, 80GB: binary GiB or decimal GB, the memory one process may "
               "use) or auto (the local cards, through nvidia-ml-py)")


def custom_gpu(capacity: str) -> GPU | None:
    """A GPU of a bare capacity (``24GiB``, ``80GB``, ``16384MiB``): all of it usable, no
    bandwidth figure. None when ``capacity`` is not one."""
    m = _CAPACITY.match(capacity)
    if m is None:
        return None
    number, unit = m.group(1), m.group(2).lower()
    n = int(float(number) * _UNIT_BYTES[unit])
    if n <= 0:
        return None
    label = f"{float(number):g}{unit}"
    pretty = {"mib": "MiB", "gib": "GiB", "tib": "TiB", "mb": "MB", "gb": "GB", "tb": "TB"}
    return GPU(name=label, aliases=(), memory_bytes=n,
               marketed=f"{float(number):g} {pretty[unit]} (given)",
               vendor="custom", bandwidth_bytes_per_s=0, bf16_tflops_dense=None,
               memory_basis="custom", notes="A bare capacity given with --gpu: all of it "
               "counted as usable (the CUDA context and allocator terms are estimated apart).",
               source="--gpu")


#: GPUs defined in this process (:func:`make_gpu`, or a :class:`GPU` passed as ``gpu=``),
#: found by name like the catalog's.
_DEFINED: dict[str, GPU] = {}


def make_gpu(name: str, memory_bytes: int, *, usable_bytes: int | None = None,
             bandwidth_bytes_per_s: int = 0, bf16_tflops_dense: float | None = None) -> GPU:
    """A GPU that is not in the catalog, for the API: ``memfit.make_gpu("my-a40", 48 *
    2**30)``; pass it (or its name, once made) as ``gpu=``. ``memory_bytes`` is the total as
    nvidia-smi reports it; ``usable_bytes`` what one process may use (default all of it)."""
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise MemfitError.bad_value("gpu", name, "a name of 1 to 64 characters")
    if (not isinstance(memory_bytes, int) or isinstance(memory_bytes, bool)
            or not 0 < memory_bytes <= 2**50):
        raise MemfitError.bad_value("memory_bytes", memory_bytes, "an integer number of "
                                    "bytes in [1, 2**50]")
    if usable_bytes is not None and not (isinstance(usable_bytes, int)
                                         and 0 < usable_bytes <= memory_bytes):
        raise MemfitError.bad_value("usable_bytes", usable_bytes,
                                    f"an integer in [1, memory_bytes={memory_bytes}]")
    gpu = GPU(name=name.strip().lower(), aliases=(), memory_bytes=memory_bytes,
              marketed=f"{memory_bytes / GiB:.2f} GiB (given)", vendor="custom",
              bandwidth_bytes_per_s=max(0, int(bandwidth_bytes_per_s)),
              bf16_tflops_dense=bf16_tflops_dense, memory_basis="custom",
              notes="A GPU defined through the API (make_gpu).", source="make_gpu",
              usable_bytes=usable_bytes or 0)
    return gpu


def register_gpu(gpu: GPU) -> str:
    """The name ``gpu`` is found by from now on (a :class:`GPU` passed as ``gpu=``). A catalog
    name keeps its catalog entry unless ``gpu`` is that very entry."""
    if not isinstance(gpu, GPU):
        raise MemfitError.bad_value("gpu", gpu, "a GPU name or a memfit GPU object")
    known = _EXACT.get(gpu.name) or _INDEX.get(_key(gpu.name))
    if known is not None and known != gpu:
        raise MemfitError.bad_value("gpu", gpu.name, "a name that is not the catalog's "
                                    f"{known.name} (give the custom GPU another name)")
    if known is None:
        _DEFINED[gpu.name] = gpu
    return gpu.name


def local_gpu() -> GPU:
    """``--gpu auto``: the first local card, through nvidia-ml-py (``pynvml``) when it is
    installed: its catalog entry when the product name is known, else its total memory."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        raise MemfitError("gpu: got 'auto'; nvidia-ml-py is not installed (pip install "
                          "nvidia-ml-py), or name the GPU: " + HOW_TO_NAME, field="gpu",
                          value="auto", allowed=HOW_TO_NAME) from None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        product = pynvml.nvmlDeviceGetName(handle)
        total = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception as exc:  # no driver, no device: said, not a traceback
        raise MemfitError(f"gpu: got 'auto'; NVML found no GPU ({exc}); name one: "
                          + HOW_TO_NAME, field="gpu", value="auto", allowed=HOW_TO_NAME) from None
    product = product.decode() if isinstance(product, bytes) else str(product)
    found = _EXACT.get(product) or _INDEX.get(_key(product))
    if found is not None:
        return found
    card = custom_gpu(f"{total // 2**20}MiB")
    assert card is not None
    return card


def get_gpu(name: str | GPU) -> GPU:
    """The accelerator called ``name``: case, spaces and punctuation are ignored, aliases
    (``h100``, ``a100-80gb``, ``4090``) and ``nvidia-smi`` product names are accepted; so are a
    bare capacity (``24GiB``, ``80GB``: :func:`custom_gpu`) and ``auto`` (:func:`local_gpu`).
    Unknown names raise :class:`MemfitError` with close matches and the ways to name a GPU."""
    if isinstance(name, GPU):
        return name
    if isinstance(name, str):
        found = _EXACT.get(name) or _INDEX.get(_key(name)) or _DEFINED.get(name.strip().lower())
        if found is not None:
            return found
        if name.strip().lower() == "auto":
            return local_gpu()
        custom = custom_gpu(name)
        if custom is not None:
            return custom
    spellings = {_key(s): g.name for g in GPUS for s in (g.name,) + g.aliases}
    close = difflib.get_close_matches(_key(str(name)), list(spellings), n=5, cutoff=0.6)
    suggestions = list(dict.fromkeys(spellings[c] for c in close))[:3]
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    allowed = ", ".join(GPU_NAMES)
    raise MemfitError(f"gpu: got {name!r}; {hint}allowed: {HOW_TO_NAME}; the catalog: "
                      f"{allowed}", field="gpu", value=name, allowed=allowed)
