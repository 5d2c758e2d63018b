"""The tracer's LoRA traces (peft), proved: fake == real to the byte on tiny models.

peft's ``LoraConfig(r=R)`` on q, k, v, o, gate, up and down projections, the base frozen in the
recipe's weight dtype, the adapters fp32 (peft's ``autocast_adapter_dtype=True``), AdamW over
the adapters only.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from memfit.errors import MemfitError  # noqa: E402
from memfit.trace import trace_training  # noqa: E402
from memfit.workload import TrainingOptions  # noqa: E402

from .configs.families import FAMILY_CONFIGS  # noqa: E402
from .test_trace import FAMILIES, assert_fake_equals_real  # noqa: E402

LLAMA = FAMILY_CONFIGS["llama"]


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def options(**kw: Any) -> TrainingOptions:
    return TrainingOptions(**{"batch": 2, "seq": 16, "lora_rank": 4, **kw})


def check(config: dict[str, Any], opts: TrainingOptions) -> Any:
    fake = trace_training(config, opts)
    real = trace_training(config, opts, device_kind="real")
    assert_fake_equals_real(fake, real)
    return fake


FAST = [("bf16-true", "none", 4), ("bf16-mixed", "full", 8), ("fp32", "none", 4),
        ("fp16-true", "full", 16)]
SLOW = [(p, c, r) for p in ("bf16-true", "fp16-true", "bf16-mixed", "fp16-mixed", "fp32")
        for c in ("none", "full") for r in (4, 16) if (p, c, r) not in FAST]


@pytest.mark.parametrize(("precision", "ckpt", "rank"),
                         FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW])
def test_lora_fake_equals_real(precision: str, ckpt: str, rank: int) -> None:
    check(LLAMA, options(precision=precision, checkpointing=ckpt, lora_rank=rank))


@pytest.mark.parametrize("family", ["qwen2-tied-sliding", "mixtral",
                                    pytest.param("qwen3", marks=pytest.mark.slow),
                                    pytest.param("gemma2", marks=pytest.mark.slow)])
def test_lora_other_families_fake_equals_real(family: str) -> None:
    check(FAMILIES[family], options(precision="bf16-true"))


@pytest.mark.parametrize("impl", ["fused", "forloop"])
def test_lora_optimizer_impls_fake_equal_real(impl: str) -> None:
    check(LLAMA, options(optimizer_impl=impl, microbatches=2))


def _lora_params(config: dict[str, Any], rank: int) -> int:
    """r x (in + out) per adapted projection, from the model's own linear shapes."""
    from memfit.trace.lora import LORA_TARGETS
    from tests.conftest import hf_meta_model

    total = 0
    for name, m in hf_meta_model(config).named_modules():
        if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LORA_TARGETS:
            total += rank * (m.in_features + m.out_features)
    return total


@pytest.mark.parametrize("precision", ["bf16-true", "fp32"])
def test_optimizer_over_fp32_adapters_only(precision: str) -> None:
    r = trace_training(LLAMA, options(precision=precision, lora_rank=8))
    n = _lora_params(LLAMA, 8)
    assert r.scenario["resolved"]["trainable_params"] == n
    # AdamW: two fp32 states per adapter parameter (the adapters are fp32 on a bf16 base)
    assert r.components["optimizer_states"] == 2 * 4 * n


def test_lora_base_is_frozen_in_the_recipe_dtype() -> None:
    full = trace_training(LLAMA, TrainingOptions(batch=2, seq=16, precision="bf16-true"))
    lora = trace_training(LLAMA, options(precision="bf16-true"))
    assert lora.phase_peaks["optimizer"] < full.phase_peaks["optimizer"]
    assert lora.components["optimizer_states"] < full.components["optimizer_states"]
    assert lora.components["gradients"] < full.components["gradients"] or \
        full.components["gradients"] == 0


@pytest.mark.parametrize(("kw", "field"), [
    ({"dp": 2, "fsdp": "full"}, "fsdp"),
    ({"precision": "bf16-master"}, "precision"),
    ({"qlora": True, "precision": "bf16-true"}, "qlora"),
])
def test_unsupported_lora_inputs_raise(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(MemfitError, match=field):
        trace_training(LLAMA, options(**kw))
