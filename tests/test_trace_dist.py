"""The tracer's FSDP2 traces, proved: one rank of N on PyTorch's fake process group.

Fake == real to the byte (every field of the result) on tiny models for world sizes 2-8, both
sharding modes (``full``: ``reshard_after_forward=True``; ``grad-op``: False), with and without
activation checkpointing and FSDP2's mixed precision; the real run against PyTorch's own
``FSDPMemTracker`` (``torch.distributed._tools.fsdp2_mem_tracker``); the process group is
destroyed after every trace.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

from memfit.errors import MemfitError  # noqa: E402
from memfit.trace import trace_training  # noqa: E402
from memfit.workload import TrainingOptions  # noqa: E402

from .configs.families import FAMILY_CONFIGS  # noqa: E402
from .test_trace import assert_fake_equals_real, one_thread  # noqa: E402, F401

LLAMA = FAMILY_CONFIGS["llama"]


def options(**kw: Any) -> TrainingOptions:
    return TrainingOptions(**{"batch": 2, "seq": 16, **kw})


def check(config: dict[str, Any], opts: TrainingOptions) -> Any:
    fake = trace_training(config, opts)
    real = trace_training(config, opts, device_kind="real")
    assert_fake_equals_real(fake, real)
    assert not dist.is_initialized()
    return fake


# (world, mode, precision, checkpointing): the fast set covers every world size 2-8, both
# modes, fp32 / 16-bit true / FSDP2 mixed precision, with and without checkpointing
FAST = [
    (2, "full", "fp32", "none"),
    (3, "grad-op", "bf16-mixed", "none"),
    (4, "full", "bf16-mixed", "full"),
    (5, "grad-op", "bf16-true", "full"),
    (6, "full", "fp16-mixed", "none"),
    (7, "grad-op", "fp32", "full"),
    (8, "full", "bf16-mixed", "none"),
    (8, "grad-op", "bf16-mixed", "full"),
]
SLOW = [(w, m, p, c) for w in (2, 4, 8) for m in ("full", "grad-op")
        for p in ("fp32", "bf16-mixed", "bf16-true") for c in ("none", "full")
        if (w, m, p, c) not in FAST]


@pytest.mark.parametrize(("world", "mode", "precision", "ckpt"),
                         FAST + [pytest.param(*c, marks=pytest.mark.slow) for c in SLOW])
def test_fsdp_fake_equals_real(world: int, mode: str, precision: str, ckpt: str) -> None:
    r = check(LLAMA, options(dp=world, fsdp=mode, precision=precision, checkpointing=ckpt))
    assert r.scenario["resolved"]["world_size"] == world
    mixed = precision.endswith("mixed")
    assert r.scenario["resolved"]["autocast_dtype"] is None  # FSDP2's policy, no autocast
    assert (r.scenario["resolved"]["fsdp_param_dtype"] is not None) == mixed


@pytest.mark.parametrize("family", ["qwen2-tied-sliding", "gpt2",
                                    pytest.param("mixtral", marks=pytest.mark.slow)])
def test_fsdp_other_families_fake_equals_real(family: str) -> None:
    check(FAMILY_CONFIGS[family], options(dp=4, fsdp="full", precision="bf16-mixed"))


def test_fsdp_microbatches_and_fused_fake_equal_real() -> None:
    check(LLAMA, options(dp=4, fsdp="full", microbatches=2, optimizer_impl="fused"))


def _sharded_bytes(world: int) -> int:
    """fp32 bytes of rank 0's shards: each parameter's dim 0 padded to a multiple of N."""
    from tests.conftest import hf_meta_model

    total = 0
    for p in hf_meta_model(LLAMA).parameters():
        rows = -(-p.shape[0] // world)
        total += rows * (p.numel() // p.shape[0]) * 4
    return total


@pytest.mark.parametrize("world", [2, 8])
def test_fsdp_shards_the_weights_and_the_optimizer_state(world: int) -> None:
    r = trace_training(LLAMA, options(dp=world, fsdp="full", precision="fp32"))
    shards = _sharded_bytes(world)
    assert r.phase_peaks["optimizer"] >= shards * 4  # weights, gradients, 2 AdamW states
    assert r.components["optimizer_states"] == 2 * shards
    assert r.components["weights"] >= shards


def test_full_reshards_after_forward_grad_op_does_not() -> None:
    full = trace_training(LLAMA, options(dp=4, fsdp="full", precision="bf16-mixed"))
    grad_op = trace_training(LLAMA, options(dp=4, fsdp="grad-op", precision="bf16-mixed"))
    # grad-op keeps every layer's bf16 unsharded parameters from forward into backward
    assert grad_op.phase_peaks["forward"] > full.phase_peaks["forward"]
    assert grad_op.components["weights"] > full.components["weights"]


def test_real_run_matches_fsdp_mem_tracker() -> None:
    """PyTorch's FSDPMemTracker, run over the same real step, peaks at the tracer's number
    less the token ids (made before it starts: not tracked there) plus the optimizer's host
    step counters (the tracer leaves them out: host memory on a GPU)."""
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

    from memfit.trace import run as trace_run
    from memfit.trace.build import hf_config
    from memfit.trace.compat import gpu_semantics
    from memfit.trace.dist import fake_process_group, shard_model

    peaks = {}
    for mode, mp in (("full", None), ("grad-op", torch.bfloat16)):
        with fake_process_group(4) as mesh:
            def prepare(model: Any, mesh: Any = mesh, mode: str = mode, mp: Any = mp) -> None:
                shard_model(model, mesh, mode, mp)

            with trace_run._session("real", hf_config(LLAMA), torch.float32, "sdpa", prepare,
                                    distributed=True) as (tracker, model, _):
                model.train()
                optimizer = torch.optim.AdamW(model.parameters(), foreach=True)
                ids = torch.zeros((2, 16), dtype=torch.long)
                theirs = FSDPMemTracker(model, optimizer)
                steps = []
                with gpu_semantics(True), theirs:
                    for step in range(2):
                        model(input_ids=ids, labels=ids).loss.backward()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        if step == 0:
                            steps = trace_run.host_step_tensors(optimizer)
                            tracker.exclude(steps)
                            tracker.reset_peak()
                            theirs.reset_mod_stats()
                snapshot = theirs.get_tracker_snapshot("peak")
                total = sum(v["Total"] for v in snapshot.values())
                step_bytes = sum(s.untyped_storage().nbytes() for s in steps)
                assert total == tracker.peak - ids.untyped_storage().nbytes() + step_bytes
                peaks[mode] = total
    assert peaks["full"] != peaks["grad-op"]


@pytest.mark.parametrize(("world", "mode", "precision", "ckpt"), [
    (2, "full", "bf16-mixed", "none"),
    (4, "grad-op", "fp32", "full"),
])
def test_fsdp_with_lora_fake_equals_real(world: int, mode: str, precision: str,
                                         ckpt: str) -> None:
    """LoRA adapters put on before sharding (torchtune's order): the frozen base is
    all-gathered with its adapters, only the adapters get gradients and optimizer state."""
    r = check(LLAMA, options(dp=world, fsdp=mode, precision=precision, checkpointing=ckpt,
                             lora_rank=4))
    plain = trace_training(LLAMA, options(dp=world, fsdp=mode, precision=precision,
                                          checkpointing=ckpt))
    assert r.components["optimizer_states"] < plain.components["optimizer_states"] / 10
    assert r.scenario["resolved"]["trainable_params"] < 100_000


@pytest.mark.parametrize(("kw", "field"), [
    ({"dp": 4}, "dp"),
    ({"dp": 4, "fsdp": "full", "precision": "bf16-master"}, "precision"),
    ({"dp": 4, "fsdp": "hybrid"}, "fsdp"),
    ({"dp": 1, "fsdp": "full"}, "fsdp"),
    ({"dp": 2, "fsdp": "full", "lora_rank": 4, "precision": "bf16-true"}, "fsdp"),
    ({"dp": 2, "fsdp": "full", "qlora": True, "precision": "bf16-mixed"}, "fsdp"),
])
def test_unsupported_fsdp_inputs_raise(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(MemfitError, match=field):
        trace_training(LLAMA, options(**kw))
    assert not dist.is_initialized()


def test_process_group_destroyed_after_an_error(monkeypatch: Any) -> None:
    from memfit.trace import dist as trace_dist

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(trace_dist, "shard_model", fail)
    with pytest.raises(RuntimeError, match="boom"):
        trace_training(LLAMA, options(dp=2, fsdp="full"))
    assert not dist.is_initialized()


# -- FSDP1 (FullyShardedDataParallel, flat parameters) on the same fake process group --------

@pytest.mark.parametrize(("world", "mode", "precision", "ckpt"), [
    (4, "full", "fp32", "none"), (8, "full", "bf16-true", "full"),
    pytest.param(2, "full", "fp16-true", "none", marks=pytest.mark.slow),
    pytest.param(4, "full", "fp32", "full", marks=pytest.mark.slow),
])
def test_fsdp1_fake_equals_real(world: int, mode: str, precision: str, ckpt: str) -> None:
    r = check(LLAMA, options(dp=world, fsdp=mode, fsdp_version=1, precision=precision,
                             checkpointing=ckpt))
    two = trace_training(LLAMA, options(dp=world, fsdp=mode, precision=precision,
                                        checkpointing=ckpt))
    # both shard the optimizer state over the ranks (FSDP1 pads its flat parameters)
    assert r.components["optimizer_states"] <= two.components["optimizer_states"] * 1.5


@pytest.mark.parametrize("kw", [{"precision": "bf16-mixed"},
                                {"fsdp": "grad-op"},
                                {"lora_rank": 4}])
def test_fsdp1_untraced_combinations_raise(kw: dict[str, Any]) -> None:
    with pytest.raises(MemfitError):
        trace_training(LLAMA, options(**{"dp": 4, "fsdp": "full", "fsdp_version": 1, **kw}))
    assert not dist.is_initialized()
