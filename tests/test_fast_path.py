"""minift.fast_path.decide: what the recipes' fast path picks for each device, batch shape,
accumulation and flag, and the line it says for each choice. Pure decisions: no GPU needed."""
import argparse
import re
from unittest import mock

import pytest
import torch

from minift import fast_path

BF16, FP32 = torch.bfloat16, torch.float32
CUDA = dict(device="cuda", dtype=BF16)

# (name, decide() arguments, adapter dtype, compile, cuda_graph, drop_last, a phrase its lines must hold)
TABLE = [
    ("cuda lora, packed: everything", dict(CUDA, method="lora", one_shape=True, num_rows=40, batch_size=4),
     BF16, True, True, False, "CUDA graph: on"),
    ("cuda qlora, short last batch: dropped", dict(CUDA, method="qlora", one_shape=True, num_rows=42, batch_size=4),
     BF16, True, True, True, "last short batch (2 of 42 rows) is dropped"),
    ("cuda, grad accumulation: the graph adds each replay's gradients", dict(CUDA, method="lora", one_shape=True,
                                                                           grad_accum=4),
     BF16, True, True, False, "4 micro-batches' gradients added per step"),
    ("cuda, unpacked rows: no graph", dict(CUDA, method="lora", one_shape=False),
     BF16, True, False, False, "the batches change shape"),
    ("cuda, fewer rows than a batch: no graph", dict(CUDA, method="lora", one_shape=True, num_rows=3, batch_size=4),
     BF16, True, False, False, "3 training rows, fewer than one batch of 4"),
    ("cuda full: no adapter math", dict(CUDA, method="full", one_shape=True),
     None, True, True, False, "CUDA graph: on"),
    ("cuda fp32 base: fp32 adapters", dict(device="cuda", dtype=FP32, method="lora", one_shape=True),
     None, True, True, False, "the base computes in float32 on cuda"),
    ("cpu fp32: nothing compiled or captured", dict(device="cpu", dtype=FP32, method="lora", one_shape=True),
     None, False, False, False, "compiled layers: off on cpu"),
    ("cpu bf16 base: bf16 adapters only", dict(device="cpu", dtype=BF16, method="lora", one_shape=True),
     BF16, False, False, False, "CUDA graph: off on cpu"),
    ("mps: no compile, no graph", dict(device="mps", dtype=BF16, method="lora", one_shape=True),
     BF16, False, False, False, "CUDA graph: off on mps"),
    ("--no-compile", dict(CUDA, method="lora", one_shape=True, compile=False),
     BF16, False, True, False, "compiled layers: off (--no-compile)"),
    ("--no-cuda-graph", dict(CUDA, method="lora", one_shape=True, num_rows=42, batch_size=4, cuda_graph=False),
     BF16, True, False, False, "CUDA graph: off (--no-cuda-graph)"),
    ("--adapter-math fp32", dict(CUDA, method="qlora", one_shape=True, adapter_math="fp32"),
     None, True, True, False, "adapter math: fp32 (--adapter-math fp32)"),
    # the run's length (fast_path's Note: when compiling pays)
    ("cuda, a short run: not compiled", dict(CUDA, method="lora", one_shape=True, steps=300),
     BF16, False, True, False, "compiled layers: off for a run of 300 steps"),
    ("cuda, one epoch of the capstone's rows", dict(CUDA, method="lora", one_shape=True, num_rows=847, batch_size=4,
                                                    epochs=1.0),
     BF16, False, True, True, "compiled layers: off for a run of 211 steps"),   # the short batch dropped
    ("cuda, no graph: the short batch counts", dict(CUDA, method="lora", one_shape=True, num_rows=847, batch_size=4,
                                                    epochs=1.0, cuda_graph=False),
     BF16, False, False, False, "compiled layers: off for a run of 212 steps"),
    ("cuda, 1,000 steps: compiled", dict(CUDA, method="qlora", one_shape=True, steps=1000),
     BF16, True, True, False, "compiled layers: on (1,000 steps;"),
    ("cuda, epochs over accumulation: 1,055 steps", dict(CUDA, method="full", one_shape=True, num_rows=847,
                                                         batch_size=4, epochs=10.0, grad_accum=2),
     None, True, True, True, "compiled layers: on (1,055 steps;"),      # 847 // 4 = 211 batches an epoch
    # under torchrun (world_size ranks) every step reads batch_size x world_size rows
    ("2 ranks: a short global batch is dropped", dict(CUDA, method="lora", one_shape=True, num_rows=44, batch_size=4,
                                                       world_size=2),
     BF16, True, True, True, "last short batch (4 of 44 rows) is dropped"),
    ("2 ranks: half the steps, not compiled", dict(CUDA, method="lora", one_shape=True, num_rows=4400, batch_size=4,
                                                   epochs=1.0, world_size=2),
     BF16, False, True, False, "compiled layers: off for a run of 550 steps"),
    ("1 rank: the same rows, compiled", dict(CUDA, method="lora", one_shape=True, num_rows=4400, batch_size=4,
                                             epochs=1.0),
     BF16, True, True, False, "compiled layers: on (1,100 steps;"),
    ("2 ranks, full training: FSDP2 keeps the graph off, compiles", dict(CUDA, method="full", one_shape=True,
                                                                          steps=2000, world_size=2),
     None, True, False, False, "CUDA graph: off on 2 ranks for full training"),
    ("2 ranks, LoRA: the graph stays (the adapters' all-reduce runs after it)",
     dict(CUDA, method="lora", one_shape=True, steps=2000, world_size=2),
     BF16, True, True, False, "CUDA graph: on"),
    ("--compile on a short run", dict(CUDA, method="lora", one_shape=True, steps=300, compile=True),
     BF16, True, True, False, "compiled layers: on (--compile;"),
    ("--no-compile on a long run", dict(CUDA, method="lora", one_shape=True, steps=5000, compile=False),
     BF16, False, True, False, "compiled layers: off (--no-compile)"),
]


@pytest.mark.parametrize("name,kwargs,adapter,compiled,graph,drop_last,phrase", TABLE, ids=[t[0] for t in TABLE])
def test_decide(name, kwargs, adapter, compiled, graph, drop_last, phrase):
    with mock.patch.object(fast_path, "_triton_importable", return_value=True):
        plan = fast_path.decide(**kwargs)
    assert (plan.adapter_compute_dtype, plan.compile, plan.cuda_graph, plan.drop_last) == \
        (adapter, compiled, graph, drop_last), plan.lines
    assert plan.fused_loss and any(phrase in line for line in plan.lines), plan.lines
    # one line per choice: adapter math and fused projections (when there are adapters), compile, graph, loss
    assert len(plan.lines) == (5 if kwargs["method"] in ("lora", "qlora") else 3)
    # fused projections: LoRA and QLoRA on CUDA only
    assert plan.fused_projections == (kwargs["method"] in ("lora", "qlora") and kwargs["device"] == "cuda")


FUSED = [
    ("cuda lora: on", dict(CUDA, method="lora"), True, "fused projections: on"),
    ("flag off", dict(CUDA, method="lora", fused_projections=False), False, "fused projections: off (--no-fused-projections)"),
    ("qlora: NF4 bases", dict(CUDA, method="qlora"), True, "each NF4 product computes its adapter's update"),
    ("cpu: dropout recomputed", dict(device="cpu", dtype=FP32, method="lora"), False, "fused projections: off on cpu"),
    ("full: no line", dict(CUDA, method="full"), False, None),
]


@pytest.mark.parametrize("name,kwargs,on,phrase", FUSED, ids=[t[0] for t in FUSED])
def test_fused_projections_choice(name, kwargs, on, phrase):
    with mock.patch.object(fast_path, "_triton_importable", return_value=True):
        plan = fast_path.decide(one_shape=True, **kwargs)
    assert plan.fused_projections == on
    found = [line for line in plan.lines if line.startswith("fused projections")]
    assert (found and phrase in found[0]) if phrase else not found, plan.lines
    assert ("fused q/k/v and gate/up" in plan.summary()) == on


def test_no_triton_means_no_compile_and_says_why():
    with mock.patch.object(fast_path, "_triton_importable", return_value=False):
        plan = fast_path.decide(**CUDA, method="lora", one_shape=True)
    assert not plan.compile and plan.cuda_graph
    assert any("needs triton" in line for line in plan.lines)


def test_world_size_defaults_to_this_process_group():
    """The recipes leave world_size out: under torchrun decide() reads it from minift.distributed."""
    with mock.patch.object(fast_path, "_triton_importable", return_value=True), \
            mock.patch.object(fast_path.distributed, "world_size", return_value=2):
        plan = fast_path.decide(**CUDA, method="lora", one_shape=True, num_rows=44, batch_size=4)
    assert plan.drop_last and any("last short batch (4 of 44 rows)" in line for line in plan.lines), plan.lines


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="adapter_math must be one of"):
        fast_path.decide(**CUDA, method="lora", one_shape=True, adapter_math="fp16")
    with pytest.raises(ValueError, match="grad_accum must be >= 1"):
        fast_path.decide(**CUDA, method="lora", one_shape=True, grad_accum=0)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        fast_path.decide(**CUDA, method="lora", one_shape=True, world_size=0)


def test_flags_parse_into_decide_arguments():
    ap = argparse.ArgumentParser()
    for flag, kw in fast_path.FLAGS:
        ap.add_argument(flag, **kw)
    assert fast_path.settings(ap.parse_args([])) == dict(compile=None, cuda_graph=True, adapter_math="bf16",
                                                         fused_projections=True)
    assert fast_path.settings(ap.parse_args(["--compile"]))["compile"] is True
    with pytest.raises(SystemExit, match="--compile and --no-compile"):
        fast_path.settings(ap.parse_args(["--compile", "--no-compile"]))
    off = fast_path.settings(ap.parse_args(["--no-compile", "--no-cuda-graph", "--adapter-math", "fp32",
                                            "--no-fused-projections"]))
    assert off == dict(compile=False, cuda_graph=False, adapter_math="fp32", fused_projections=False)
    with mock.patch.object(fast_path, "_triton_importable", return_value=True):
        plan = fast_path.decide(**CUDA, method="lora", one_shape=True, **off)
    assert (plan.compile, plan.cuda_graph, plan.adapter_compute_dtype, plan.fused_projections) == \
        (False, False, None, False)


def test_first_step_line_and_describe():
    assert fast_path.first_step_line([0.1, 0.1], compiled=False, graphed=False) is None
    line = fast_path.first_step_line([41.5, 0.03, 0.04, 0.03], compiled=True, graphed=True)
    assert line == ("first step 41.5 s (compile + CUDA graph capture included), steady step 0.030 s: "
                    "about 41.5 s of one-time cost")
    assert fast_path.describe(["a", "b"], line) == f"fast path:\n  a\n  b\n  {line}"


def test_compiled_layers_are_put_back_after_training():
    from minift.config import ModelConfig
    from minift.model import Transformer
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = Transformer(cfg)
    with fast_path.compiled_layers(model, True):
        assert all(layer._compiled_call_impl is not None for layer in model.model.layers)
    assert all(layer._compiled_call_impl is None for layer in model.model.layers)


def test_evaluation_inside_compiled_layers_builds_no_graph():
    """The train loop evaluates inside compiled_layers; a no-grad graph would be a compile of its
    own for a few batches (minift.train.evaluate runs the layers' eager code)."""
    from minift.config import ModelConfig
    from minift.model import Transformer
    from minift.train import evaluate
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = Transformer(cfg)
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    eager = evaluate(model, [dict(input_ids=ids, targets=ids)])
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with fast_path.compiled_layers(model, True):
        inside = evaluate(model, [dict(input_ids=ids, targets=ids)])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs_before
    assert inside == eager


@pytest.mark.parametrize("num_rows,batch_size,grad_accum,epochs,graph", [
    (847, 4, 1, 1.0, True), (847, 4, 1, 1.0, False), (846, 4, 2, 3.0, False), (20, 4, 1, 2.5, True)])
def test_run_length_is_what_the_train_loop_runs(num_rows, batch_size, grad_accum, epochs, graph):
    """The steps the compile rule reads equal the steps minift.train runs over the same Batches."""
    from minift.data import Batches, Example
    from minift.train import TrainConfig, _total_steps
    with mock.patch.object(fast_path, "_triton_importable", return_value=True):
        plan = fast_path.decide(**CUDA, method="lora", one_shape=True, num_rows=num_rows, batch_size=batch_size,
                                grad_accum=grad_accum, epochs=epochs, cuda_graph=graph)
    line = next(line for line in plan.lines if line.startswith("compiled layers"))
    said = int(re.search(r"run of ([\d,]+) steps", line).group(1).replace(",", ""))
    rows = [Example(input_ids=[1] * 8, targets=[1] * 8)] * num_rows
    batches = Batches(rows, batch_size, drop_last=plan.drop_last)
    assert said == _total_steps(TrainConfig(epochs=epochs, grad_accum=grad_accum), batches)
