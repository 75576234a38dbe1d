"""minift.bench's bookkeeping (no GPU): which anchors a row runs against, and that its ratios are
against the fastest anchor's speed and the leanest anchor's memory. The measurements themselves
are scripts/bench_train.py's, on a GPU."""
import dataclasses
import os
import sys
from unittest import mock

import pytest
import torch
import torch._inductor.config as inductor_config

from minift import bench
from minift.bench import Row
from minift.config import ModelConfig

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def test_anchors_for_each_row():
    assert bench.anchors_for(Row("0.5b", "lora", "fast+compile+graph", "bf16")) == ("autocast+compile", "liger+autocast")
    assert bench.anchors_for(Row("7b", "qlora", "fast+compile+graph", "bf16")) == ("liger+autocast",)
    assert bench.anchors_for(Row("0.5b", "lora", "lean")) == ("plain",)


def test_ratios_are_against_the_fastest_and_the_leanest_anchor():
    row = Row("0.5b", "lora", "fast+compile+graph", "bf16")
    anchors = {"autocast+compile": dict(side="HF+peft, autocast + compile", tok_per_s=50_000.0, peak_bytes=9.4e9),
               "liger+autocast": dict(side="HF+peft+Liger, autocast", tok_per_s=20_000.0, peak_bytes=6.0e9)}
    ours = dict(tok_per_s=150_000.0, peak_bytes=5.7e9)
    with mock.patch.object(bench, "run_minift_row", return_value=ours), \
            mock.patch.object(bench, "run_anchor_row", side_effect=lambda r, s, kind: dict(anchors[kind], kind=kind)):
        (r,) = bench.compare([row], "anchor_hf.py", log=lambda line: None)
    assert r["speed_ratio"] == 3.0 and r["fastest_anchor"] == "HF+peft, autocast + compile"
    assert r["memory_ratio"] == 5.7e9 / 6.0e9 and r["leanest_anchor"] == "HF+peft+Liger, autocast"
    line = bench.format_row(r)
    assert "HF+peft, autocast + compile / HF+peft+Liger, autocast" in line and "| 3.00 | 0.95 |" in line


def test_a_failed_anchor_is_left_out_of_the_ratio():
    row = Row("7b", "qlora", "fast+compile+graph", "bf16")
    with mock.patch.object(bench, "run_minift_row", return_value=dict(tok_per_s=1.0, peak_bytes=1.0)), \
            mock.patch.object(bench, "run_anchor_row", return_value={"error": "CUDA out of memory", "kind": "x"}):
        (r,) = bench.compare([row], "anchor_hf.py", log=lambda line: None)
    assert "speed_ratio" not in r and "CUDA out of memory" in bench.format_row(r)


def test_repeats_take_each_sides_median_run_and_keep_every_rounds_ratio():
    """Three rounds: minift 140k, 150k, 120k tok/s; the compiled anchor 70k, 45k, 50k; Liger
    slower throughout. Each side is its median run (150k is not minift's median, 140k is), the
    ratio is between medians (140k / 50k), and each round's own ratio is kept beside it."""
    row = Row("0.5b", "lora", "fast+compile+graph", "bf16")
    ours = iter([dict(tok_per_s=t, peak_bytes=5.7e9) for t in (140_000.0, 150_000.0, 120_000.0)])
    compiled = iter([dict(side="compiled", tok_per_s=t, peak_bytes=9.4e9) for t in (70_000.0, 45_000.0, 50_000.0)])
    liger = iter([dict(side="liger", tok_per_s=t, peak_bytes=6.0e9) for t in (20_000.0, 19_000.0, 21_000.0)])
    anchors = {"autocast+compile": compiled, "liger+autocast": liger}
    with mock.patch.object(bench, "run_minift_row", side_effect=lambda r: next(ours)), \
            mock.patch.object(bench, "run_anchor_row", side_effect=lambda r, s, kind: next(anchors[kind])):
        lines = []
        (r,) = bench.compare([row], "anchor_hf.py", log=lines.append, repeats=3)
    assert "round 2/3 of 0.5b lora fast+compile+graph: minift 150,000 tok/s, compiled 45,000 tok/s, " \
           "liger 19,000 tok/s" in lines
    assert r["minift"]["tok_per_s"] == 140_000.0 and r["minift"]["runs_tok_per_s"] == [140_000.0, 150_000.0, 120_000.0]
    assert [a["tok_per_s"] for a in r["anchors"]] == [50_000.0, 20_000.0]
    assert r["speed_ratio"] == 140_000.0 / 50_000.0 and r["fastest_anchor"] == "compiled"
    assert r["speed_ratio_rounds"] == [2.0, 150_000.0 / 45_000.0, 120_000.0 / 50_000.0]
    assert "140,000 (120,000-150,000)" in bench.format_row(r)


def test_median_run_leaves_failed_runs_out_and_names_them():
    runs = [dict(tok_per_s=3.0), {"error": "CUDA out of memory"}, dict(tok_per_s=1.0)]
    assert bench.median_run(runs) == dict(tok_per_s=3.0, runs_tok_per_s=[3.0, 1.0], runs_failed=["CUDA out of memory"])
    assert bench.median_run([{"error": "a"}, {"error": "b"}]) == {"error": "a"}
    assert bench.median_run([dict(tok_per_s=2.0)]) == dict(tok_per_s=2.0)


def test_median_steady_skips_the_first_two_steps_and_takes_the_upper_middle():
    # the first two (compile, capture) never count, however slow; of four steady steps the third
    assert bench.median_steady([9.0, 5.0, 0.4, 0.1, 0.3, 0.2]) == 0.3
    assert bench.median_steady([9.0, 5.0, 0.4, 0.1, 0.3]) == 0.3


def test_time_training_steps_reports_the_host_part_of_the_step():
    """On the CPU the host is the device, so the host part is the whole step (within the clock's
    noise); on a GPU it is what scripts/host_time.py compares with the wall time."""
    cfg = dataclasses.replace(ModelConfig.preset("qwen2.5-0.5b"), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                              vocab_size=64)
    out = bench.time_training_steps(cfg, "lora", 1, 8, steps=4, device="cpu", dtype="float32")
    assert 0 < out["host_step_s"] <= out["step_s"]


def test_time_training_steps_returns_every_steps_time():
    cfg = dataclasses.replace(ModelConfig.preset("qwen2.5-0.5b"), hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                              vocab_size=64)
    out = bench.time_training_steps(cfg, "lora", 1, 8, steps=5, device="cpu", dtype="float32")
    assert len(out["step_times_s"]) == 5 and out["step_s"] == bench.median_steady(out["step_times_s"])


def test_kernel_times_refuses_a_profile_without_cuda_kernels():
    # a busy time of 0 would say "the GPU idled the whole step"; a CPU-only profile must not say it
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ones(8) @ torch.ones(8)
    with pytest.raises(RuntimeError, match="no CUDA kernels"):
        bench.kernel_times(prof, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA kernels need a GPU")
def test_kernel_times_counts_each_kernel_a_step():
    a = torch.randn(512, 512, device="cuda")
    a @ a
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(4):
            a @ a
        torch.cuda.synchronize()
    kernels = bench.kernel_times(prof, 4)
    assert sum(calls for _, calls in kernels.values()) >= 1.0          # at least the matmul, once a step
    assert all(seconds > 0 for seconds, _ in kernels.values())


def test_profile_step_sets_inductor_options_and_refuses_unknown_ones():
    sys.path.insert(0, SCRIPTS)
    try:
        import profile_step
    finally:
        sys.path.pop(0)
    before = inductor_config.max_pointwise_cat_inputs
    try:
        assert profile_step.set_inductor_options(["max_pointwise_cat_inputs=1"]) == {"max_pointwise_cat_inputs": 1}
        assert inductor_config.max_pointwise_cat_inputs == 1
    finally:
        inductor_config.max_pointwise_cat_inputs = before
    for bad in ("no_such_inductor_option=1", "max_pointwise_cat_inputs"):
        with pytest.raises(SystemExit, match="torch._inductor.config"):
            profile_step.set_inductor_options([bad])
