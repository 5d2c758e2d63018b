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
from .test_trace import FAMILIES, assert_fake_equals_real, one_thread  # noqa: E402, F401

LLAMA = FAMILY_CONFIGS["llama"]


def options(**kw: Any) -> TrainingOptions:
    return TrainingOptions(**{"batch": 2, "seq": 16, "lora_rank": 4, "lora_targets": "all-linear",
                              **kw})


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
    ({"dp": 2, "fsdp": "full", "precision": "bf16-true"}, "fsdp"),  # (mixed: traced)
    ({"precision": "bf16-master"}, "precision"),
    ({"qlora": True, "precision": "fp16-true"}, "precision"),
    ({"qlora": True, "precision": "bf16-master"}, "precision"),
])
def test_unsupported_lora_inputs_raise(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(MemfitError, match=field):
        trace_training(LLAMA, options(**kw))


# -- QLoRA: NF4 double-quant stand-in (see memfit.trace.lora and docs/tracer.md) --------------

import importlib.util  # noqa: E402

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None,
                               reason="bitsandbytes not installed")


@needs_bnb
@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
@pytest.mark.parametrize("ckpt", ["none", "full"])
def test_qlora_fake_equals_real(precision: str, ckpt: str) -> None:
    r = check(LLAMA, options(precision=precision, checkpointing=ckpt, qlora=True))
    assert r.scenario["resolved"]["trainable_params"] == _lora_params(LLAMA, 4)


@needs_bnb
def test_qlora_other_family_fake_equals_real() -> None:
    check(FAMILIES["qwen2-tied-sliding"], options(precision="bf16-true", qlora=True))


def _qlora_model(config: dict[str, Any]) -> Any:
    from memfit.trace.build import build_model, hf_config
    from memfit.trace.lora import apply_qlora

    model, _ = build_model(hf_config(config), torch.bfloat16, "sdpa")
    return apply_qlora(model, 4)


@needs_bnb
def test_qlora_weights_are_nf4_double_quant_bytes() -> None:
    """Each base linear's storages = ``tensor_bytes(shape, "bnb-nf4-dq")``; the rest fp32."""
    from memfit.dtypes import tensor_bytes
    from memfit.trace.lora import nf4_linear_class

    model = _qlora_model(LLAMA)
    nf4 = [m for m in model.modules() if isinstance(m, nf4_linear_class())]
    assert nf4 and model.get_output_embeddings() not in nf4  # the LM head stays fp32
    expected = 0
    for m in nf4:
        own = [m.weight, m.absmax, m.absmax2, m.offset, m.code]
        got = sum(t.untyped_storage().nbytes() for t in own)
        assert got == tensor_bytes((m.out_features, m.in_features), "bnb-nf4-dq")
        assert m.weight.dtype == torch.uint8 and not m.weight.requires_grad
        expected += got
    others = {id(t): t for t in [*model.parameters(), *model.buffers()]
              if not any(t is s for m in nf4 for s in (m.weight, m.absmax, m.absmax2,
                                                        m.offset, m.code, m.code2))}
    # prepare_model_for_kbit_training: every float parameter that is not 4-bit is fp32
    assert all(t.dtype == torch.float32 for t in others.values() if t.is_floating_point())
    expected += sum(t.untyped_storage().nbytes() for t in others.values())
    expected += 256 * 4  # quantize_blockwise's shared fp32 map (one for all weights)
    r = trace_training(LLAMA, options(precision="bf16-true", qlora=True))
    assert r.components["weights"] == expected


@needs_bnb
def test_qlora_matmul_materializes_one_dequantized_weight() -> None:
    """Forward: one (out x in) bf16 weight + two fp32 absmax copies live inside the matmul,
    freed after; nothing but the output stays (real CPU tensors, the tracker alone)."""
    from memfit.trace.lora import nf4_linear_class
    from memfit.trace.tracker import MemoryTracker

    lin = torch.nn.Linear(256, 512, bias=False)
    m = nf4_linear_class()(lin, torch.zeros(256))
    x = torch.zeros((4, 256), dtype=torch.bfloat16, requires_grad=True)
    with MemoryTracker() as t:
        y = m(x)
        blocks = 512 * 256 // 64
        assert t.peak == 2 * blocks * 4 + 512 * 256 * 2 + y.untyped_storage().nbytes()
        assert t.total == y.untyped_storage().nbytes()
        y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


# -- issue 16: LoRA targets, dropout, adapter dtype, DoRA, QLoRA's 16-bit stream -------------

def _adapted(config: dict[str, Any], names: tuple[str, ...], rank: int) -> int:
    """r x (in + out) over the linear layers whose last name is in ``names``."""
    from tests.conftest import hf_meta_model

    return sum(rank * (m.in_features + m.out_features)
               for name, m in hf_meta_model(config).named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names)


TARGETS = {"peft-default": ("q_proj", "v_proj"),
           "attention": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "mlp": ("gate_proj", "up_proj", "down_proj"), "k_proj,o_proj": ("k_proj", "o_proj")}


@pytest.mark.parametrize("targets", list(TARGETS))
def test_lora_targets_adapt_what_they_name(targets: str) -> None:
    r = trace_training(LLAMA, options(lora_targets=targets))
    assert r.scenario["resolved"]["trainable_params"] == _adapted(LLAMA, TARGETS[targets], 4)


@pytest.mark.parametrize(("targets", "dropout"), [
    ("peft-default", 0.05), ("mlp", 0.0),
    *[pytest.param(t, p, marks=pytest.mark.slow)
      for t in ("peft-default", "attention", "mlp", "all-linear") for p in (0.0, 0.05)
      if (t, p) not in (("peft-default", 0.05), ("mlp", 0.0))]])
def test_lora_targets_and_dropout_fake_equal_real(targets: str, dropout: float) -> None:
    check(LLAMA, options(lora_targets=targets, lora_dropout=dropout))


def test_lora_dropout_keeps_a_mask_and_a_dropped_copy() -> None:
    """peft's ``lora_dropout(x)`` per adapter: a bool mask and the dropped input, kept for
    backward: more activation memory than without dropout, never less."""
    plain = trace_training(LLAMA, options(precision="bf16-true"))
    dropped = trace_training(LLAMA, options(precision="bf16-true", lora_dropout=0.1))
    assert dropped.phase_peaks["forward"] > plain.phase_peaks["forward"]


@pytest.mark.parametrize("kw", [{"dora": True}, {"dora": True, "lora_dropout": 0.05},
                                {"lora_dtype": "bf16"},
                                {"lora_dtype": "fp16", "precision": "fp16-true"}])
def test_dora_and_adapter_dtype_fake_equal_real(kw: dict[str, Any]) -> None:
    check(LLAMA, options(**kw))


def test_adapter_dtype_sets_the_optimizer_state_dtype() -> None:
    n = _lora_params(LLAMA, 4)
    r = trace_training(LLAMA, options(precision="bf16-true", lora_dtype="bf16"))
    assert r.components["optimizer_states"] == 2 * 2 * n  # AdamW: two bf16 states


@needs_bnb
@pytest.mark.parametrize("precision", ["bf16-true", "bf16-mixed"])
def test_qlora_16bit_stream_fake_equals_real(precision: str) -> None:
    r = check(LLAMA, options(precision=precision, qlora=True, no_kbit_prepare=True))
    fp32 = trace_training(LLAMA, options(precision=precision, qlora=True))
    assert r.components["weights"] < fp32.components["weights"]  # no fp32 upcast
    assert r.peak_bytes < fp32.peak_bytes


@pytest.mark.parametrize(("kw", "field"), [
    ({"lora_rank": None, "lora_targets": "mlp"}, "lora-targets"),
    ({"lora_rank": None, "lora_targets": "all-linear", "lora_dropout": 0.1}, "lora-dropout"),
    ({"lora_rank": None, "lora_targets": "all-linear", "dora": True}, "dora"),
    ({"lora_rank": None, "lora_targets": "all-linear", "lora_dtype": "bf16"}, "lora-dtype"),
    ({"lora_experts": True}, "lora-experts"),  # Llama has no fused experts
    ({"qlora": True, "dora": True, "precision": "bf16-true"}, "dora"),
    ({"no_kbit_prepare": True}, "no-kbit-prepare"),
    ({"lora_targets": "nonexistent_proj"}, "lora-targets"),
    ({"lora_targets": "q_proj,lm_head", "loss": "liger"}, "loss"),
])
def test_untraced_adapter_knobs_raise(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(MemfitError, match=field):
        trace_training(LLAMA, options(**kw))


@pytest.mark.parametrize(("family", "kw"), [
    ("mixtral", {}),
    pytest.param("qwen2_moe", {"lora_targets": "attention", "precision": "bf16-true"},
                 marks=pytest.mark.slow),
    pytest.param("qwen3_moe", {"lora_targets": "attention", "qlora": True,
                               "no_kbit_prepare": True, "precision": "bf16-true"},
                 marks=[pytest.mark.slow, needs_bnb]),
])
def test_lora_on_fused_experts_fake_equals_real(family: str, kw: dict[str, Any]) -> None:
    r = check(FAMILIES[family], options(**{"lora_targets": "peft-default", "lora_experts": True,
                                           **kw}))
    without = trace_training(FAMILIES[family], options(**{"lora_targets": "peft-default", **kw}))
    assert r.scenario["resolved"]["trainable_params"] > \
        without.scenario["resolved"]["trainable_params"]
