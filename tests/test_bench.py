"""minift.bench's bookkeeping (no GPU): which anchors a row runs against, and that its ratios are
against the fastest anchor's speed and the leanest anchor's memory. The measurements themselves
are scripts/bench_train.py's, on a GPU."""
from unittest import mock

from minift import bench
from minift.bench import Row


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
