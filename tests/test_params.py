"""Exact parameter counts: equal to transformers' count on the meta device, for every family
option and every catalog entry; published counts agree to the precision they are stated in."""

from __future__ import annotations

import pytest

from memfit import params
from memfit.arch import from_hf_config
from memfit.catalog import entry_names, get_entry, parse_count
from memfit.memory.params import buffer_elements, count_params

from .configs.families import FAMILY_CONFIGS
from .conftest import hf_counts


@pytest.mark.parametrize("key", sorted(FAMILY_CONFIGS))
def test_family_config_matches_transformers(key: str) -> None:
    config = FAMILY_CONFIGS[key]
    spec = from_hf_config(config, name=key)
    n_params, n_buffers = hf_counts(config)
    assert count_params(spec).total == n_params
    assert buffer_elements(spec) == n_buffers


@pytest.mark.parametrize("name", entry_names())
def test_catalog_entry_matches_transformers(name: str) -> None:
    entry = get_entry(name)
    n_params, n_buffers = hf_counts(dict(entry.config))
    counts = count_params(entry.spec)
    assert counts.total == n_params
    assert buffer_elements(entry.spec) == n_buffers
    assert counts.active <= counts.total


@pytest.mark.parametrize("name", [n for n in entry_names() if get_entry(n).published_params])
def test_catalog_entry_matches_published_count(name: str) -> None:
    entry = get_entry(name)
    value, half_unit = parse_count(entry.published_params)
    total = count_params(entry.spec).total
    if entry.published_differs:
        # e.g. DeepSeek-V3's 671B excludes its multi-token-prediction module, Gemma 3's 27.4B
        # includes its vision tower: the entry states why, and the gap must stay that size.
        assert entry.published_differs["reason"]
        assert abs(total - value) / value <= entry.published_differs["max_relative_gap"]
        return
    # Model cards round or truncate: allow one unit of the last digit stated.
    assert abs(total - value) <= 2 * half_unit, (entry.published_params, total)


def test_catalog_is_large_and_has_provenance() -> None:
    names = entry_names()
    assert len(names) >= 40
    families = {get_entry(n).family for n in names}
    for required in ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                     "deepseek_v2", "deepseek_v3", "gemma", "gemma2", "gemma3_text", "phi3",
                     "gpt2", "gpt_neox", "olmo2", "gpt_oss"):
        assert required in families
    for n in names:
        entry = get_entry(n)
        assert entry.name == n
        assert entry.source.startswith("https://")
        assert entry.family == entry.config.get("model_type", entry.family)


def test_seed_and_known_counts() -> None:
    # nanoGPT's transformer_sizing notebook: GPT-2 small has 124,439,808 parameters with the
    # tied LM head counted once (124,337,664 without the position table's... see notebook).
    assert params("gpt2").total_params == 124_439_808
    # Llama-2-7B: 6,738,415,616 (the figure transformers and the Llama 2 checkpoints give).
    assert params("llama-2-7b").total_params == 6_738_415_616
    # Mixtral-8x7B: 46.7B total, 12.9B active (Mistral AI's announcement).
    mixtral = params("mixtral-8x7b")
    assert round(mixtral.total_params / 1e9, 1) == 46.7
    assert round(mixtral.active_params / 1e9, 1) == 12.9


def test_components_sum_to_total() -> None:
    for n in entry_names():
        result = params(n)
        assert sum(result.components.values()) == result.total_params


def test_parse_count() -> None:
    assert parse_count("8.03B") == (8_030_000_000, 5_000_000)
    assert parse_count("124M") == (124_000_000, 500_000)
    assert parse_count("46.7B") == (46_700_000_000, 50_000_000)
