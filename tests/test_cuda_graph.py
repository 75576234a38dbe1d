"""minift.cuda_graph.GraphedStep and TrainConfig(cuda_graph=True).

On CUDA: a replayed forward + backward gives the eager step's loss and gradients for fresh data
each time, with LoRA, and the train loop's losses match the eager loop's. The errors (CPU inputs,
a shape that changes) are checked everywhere. Gradient accumulation through the graph (weighted
replays adding into the same gradients) gives the eager accumulation's gradients and losses, and
the adding graph exists only once a call accumulates.
"""
import pytest
import torch

from minift import ModelConfig, Transformer, lora
from minift.cuda_graph import GraphedStep
from minift.train import TrainConfig, train

TINY = ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def make_model(device, with_lora=False):
    torch.manual_seed(0)
    model = Transformer(TINY).to(device)
    if with_lora:
        lora.add_lora(model, r=4, alpha=8)
        with torch.no_grad():   # B starts at zero, which would leave every A's gradient zero: not a test
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.02)
    return model.train()


def batch(seed, device, shape=(2, 32)):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY.vocab_size, shape, generator=g)
    return ids.to(device), ids.roll(-1, dims=1).to(device)


def test_cpu_inputs_are_refused():
    step = GraphedStep(make_model("cpu"))
    ids, targets = batch(0, "cpu")
    with pytest.raises(ValueError, match="'input_ids' must be a CUDA tensor"):
        step(input_ids=ids, targets=targets)


def test_config_refuses_cpu():
    with pytest.raises(ValueError, match="needs a CUDA device"):
        train(make_model("cpu"), iter([]), cfg=TrainConfig(steps=1, cuda_graph=True, progress=False))


@cuda
@pytest.mark.parametrize("with_lora,grad_ckpt", [(False, False), (True, False), (True, True)])
def test_replay_equals_eager(with_lora, grad_ckpt):
    eager, graphed = make_model("cuda", with_lora), make_model("cuda", with_lora)
    eager.gradient_checkpointing = graphed.gradient_checkpointing = grad_ckpt
    step = GraphedStep(graphed)
    for seed in range(4):   # the first call captures; the others replay with new data
        ids, targets = batch(seed, "cuda")
        loss = eager(ids, targets)
        loss.backward()
        got = step(input_ids=ids, targets=targets)
        # Same kernels on the same inputs, only launched from a graph: equal to fp32 rounding of a
        # possibly different cuBLAS algorithm choice on the capture stream (1e-5 relative).
        torch.testing.assert_close(got, loss.detach(), rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
        eager.zero_grad(set_to_none=True)
        graphed.zero_grad(set_to_none=True)   # harmless: the next call hands the graph's gradients back


@cuda
@pytest.mark.parametrize("with_lora", [False, True])
def test_weighted_replays_accumulate_like_eager(with_lora):
    """Three micro-batches, weights as the train loop's token shares: the summed gradients of
    loss_i * w_i, eager, against three replays (the first writing the gradients, the others adding)."""
    eager, graphed = make_model("cuda", with_lora), make_model("cuda", with_lora)
    step = GraphedStep(graphed)
    weights = (0.5, 0.3, 0.2)
    for round_ in range(2):   # the second round checks that a step's first replay overwrites the last step's
        losses = []
        for i, w in enumerate(weights):
            ids, targets = batch(10 * round_ + i, "cuda")
            loss = eager(ids, targets)
            (loss * w).backward()
            losses.append(step(loss_weight=w, accumulate=i > 0, input_ids=ids, targets=targets).clone())
            # fp32, same kernels launched from a graph: 1e-5 relative (test_replay_equals_eager)
            torch.testing.assert_close(losses[-1], loss.detach(), rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(eager.named_parameters(), graphed.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
        eager.zero_grad(set_to_none=True)
        graphed.zero_grad(set_to_none=True)


@cuda
def test_the_adding_graph_is_captured_only_when_asked_and_writes_the_same_gradients():
    """Note: accumulation in minift/cuda_graph.py: plain calls replay the graph that writes the
    gradients (no add per parameter); the first accumulate=True call captures a second graph that
    adds into those same tensors."""
    step = GraphedStep(make_model("cuda", with_lora=True))
    for seed in range(2):
        step(**dict(zip(("input_ids", "targets"), batch(seed, "cuda"))))
    assert step.accumulating is None
    plain = [g.data_ptr() for g in step.grads if g is not None]
    step(accumulate=True, **dict(zip(("input_ids", "targets"), batch(2, "cuda"))))
    assert step.accumulating is not None
    assert [g.data_ptr() for g in step.grads if g is not None] == plain
    assert [p.grad.data_ptr() for p in step.params if p.grad is not None] == plain


@cuda
def test_shape_change_is_an_error():
    step = GraphedStep(make_model("cuda"))
    step(**dict(zip(("input_ids", "targets"), batch(0, "cuda"))))
    ids, targets = batch(1, "cuda", shape=(2, 16))
    with pytest.raises(ValueError, match=r"shape \(2, 16\).*captured with \(2, 32\)"):
        step(input_ids=ids, targets=targets)


@cuda
@pytest.mark.parametrize("with_lora,precision,rel", [
    (True, "fp32", 1e-4),    # the same updates from the same gradients; fp32 reassociation in cuBLAS
    # Full training as continue_pretraining.py runs it on a GPU: bf16 weights, fp32 AdamW states,
    # every weight's gradient written by the replay. A different cuBLAS algorithm on the capture
    # stream changes a bf16 gradient by one rounding (2^-8), which AdamW's m / sqrt(v) carries into
    # the next steps' losses at the 1e-3 level; a missed or stale gradient moves them by far more.
    (False, "bf16", 2e-3),
])
@pytest.mark.parametrize("grad_accum", [1, 3])
def test_train_loop_with_graph_matches_eager(with_lora, precision, rel, grad_accum):
    def run(cuda_graph):
        # two batches in turn: new data for every replay, and a loss the steps can lower; with
        # accumulation, targets masked differently per micro-batch of a step so the token weights
        # differ (by position in the step, not across steps: without accumulation the first and the
        # last step's losses must stay comparable for the "it trained" check below)
        def micro(i):
            ids, targets = (t.cpu() for t in batch(i % 2, "cpu"))
            targets[:, : i % grad_accum * 5] = -100
            return dict(input_ids=ids, targets=targets)
        data = (micro(i) for i in range(100))
        cfg = TrainConfig(steps=6, lr=1e-3, progress=False, cuda_graph=cuda_graph, precision=precision,
                          grad_accum=grad_accum)
        model = make_model("cuda", with_lora=with_lora)
        return train(model if precision == "fp32" else model.to(torch.bfloat16), data, cfg=cfg).losses
    eager, graphed = run(False), run(True)
    assert graphed == pytest.approx(eager, rel=rel)
    assert eager[-1] < eager[0]   # it trained: the comparison is between runs that move
