"""minift/advice.py: each of the seed chapter's failure-point thresholds fires at the chapter's
value and not one step below, once per check, wherever it is checked (decide, failure_point_warnings,
add_lora); and the ops checklist names things that exist."""
import importlib
import logging
import os

import pytest

import minift
from minift import advice, lora
from minift import decide as D
from minift.train import failure_point_warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plan(**kw):
    args = dict(general_covered=False, laptop=False, separate_license=False, memory_bytes="141GB")
    args.update(kw)
    return D.decide(**args)


def count(warnings, point: int) -> int:
    return sum(f"failure point {point}" in w for w in warnings)


def tiny_model():
    cfg = minift.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2)
    return minift.Transformer(cfg)


def test_rank_fires_at_64_the_seeds_r_64_plus(caplog):
    assert advice.LARGE_RANK == 64
    assert advice.rank_warning(63) is None and "r=64" in advice.rank_warning(64)
    for r, want in ((63, 0), (64, 1), (128, 1)):
        assert count(plan(data="2K pairs", lora_r=r).warnings, 5) == want
        assert count(failure_point_warnings("qlora", "x", lora_r=r), 5) == want
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="minift.lora"):
            lora.add_lora(tiny_model(), r=r, alpha=r)
        assert sum("failure point 5" in rec.getMessage() for rec in caplog.records) == want, r


def test_thin_cpt_data_fires_below_1b_tokens():
    assert advice.thin_cpt_data_warning(1e9) is None and advice.thin_cpt_data_warning(1e9 - 1)
    assert count(plan(data="999M tokens").warnings, 3) == 1
    d = plan(data="1B tokens")
    assert d.path == "cpt" and count(d.warnings, 3) == 0  # the band edge and the threshold are one number


def test_small_data_full_sft_fires_below_10k_pairs():
    assert advice.small_data_sft_warning(10_000) is None and advice.small_data_sft_warning(9_999)
    d = plan(data="5K-50K pairs")  # middle 15.8K: full SFT; its low end is under 10K
    assert d.path == "full" and count(d.warnings, 1) == 1
    d = plan(data="10K-50K pairs")
    assert d.path == "full" and count(d.warnings, 1) == 0


def test_cpt_on_instruct_and_the_always_on_points():
    assert advice.looks_instruct("Qwen/Qwen2.5-0.5B-Instruct") and advice.looks_instruct("google/gemma-2b-it")
    assert not advice.looks_instruct("some/model-italian") and not advice.looks_instruct(None)
    assert count(plan(data="2B tokens", base_model="qwen2.5-0.5b").warnings, 4) == 1
    assert count(plan(data="200B tokens").warnings, 2) == 1
    assert count(plan(data="2K pairs").warnings, 6) == 1


def test_ops_checklist_is_the_seeds_and_points_at_real_things():
    assert [item for item, _ in advice.OPS_CHECKLIST][0] == "Choose one of the four paths (via the decision tree)"
    assert len(advice.OPS_CHECKLIST) == 7
    for _, where in advice.OPS_CHECKLIST:
        for word in where.replace(";", ",").replace("(", " ").split():
            word = word.strip(",")
            if word.endswith(".py"):
                assert os.path.isfile(os.path.join(REPO, word)), word
            elif word.startswith("minift.") and "(" not in word:
                module, _, attr = word.rpartition(".")
                assert hasattr(importlib.import_module(module), attr), word
    lines = advice.ops_checklist(plan(data="5K-50K pairs", laptop=True, separate_license=True, memory_bytes="24GB"))
    assert [line[:3] for line in lines] == ["[x]"] * 4 + ["[ ]"] * 3  # decide answers the first four
    assert "Qwen/Qwen2.5-0.5B-Instruct" in lines[1] and "5K-50K pairs" in lines[2]
    assert [line[:3] for line in advice.ops_checklist(plan(general_covered=True))] == ["[x]"] + ["[ ]"] * 6


@pytest.mark.parametrize("method", ["rlhf", "dpo"])
def test_unknown_method(method):
    with pytest.raises(ValueError, match="unknown method"):
        failure_point_warnings(method, "x")
