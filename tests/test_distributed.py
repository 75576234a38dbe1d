"""minift.distributed on CPU: 2 processes over gloo (torch.multiprocessing spawn), the tiny model.

Each test runs the single-process loop here and the same job on 2 ranks (each with half of every
global batch), and compares. What is compared, and why these tolerances:
* losses: rtol 1e-5. Both runs see the same global batches and weight tokens the same way, so the
  only difference is the order of fp32 additions: one (4, T) batch's gradient against two (2, T)
  halves summed by all_reduce / reduce_scatter (fp32 rounding, ~1e-7 relative), which AdamW's
  m / sqrt(v) passes on to the weights and can grow a little step by step; rtol 1e-5 leaves room
  for 6 steps of that and still catches any real difference (a wrong token weight or a missing
  rank's gradient moves the loss by 1e-2 or more).
* resume on the same number of ranks: exactly equal (CPU kernels are deterministic; the same
  shards, the same RNG streams), as tests/test_train.py demands of one process.
* a checkpoint moved between 1 and 2 ranks: the 1- and 2-rank trajectories differ by the
  rounding above, so the continuation is held to the same rtol 1e-5.
FSDP2 (fully_shard) runs on CPU with gloo on torch 2.13 (checked here); nothing was missing.
"""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from minift import ModelConfig, Transformer, lora
from minift.data import Batches, Example
from minift.train import TrainConfig, train

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
STEPS, T = 6, 12
LOSS_RTOL = 1e-5   # see the module docstring


def _rows(n=22, seed=0):
    """Rows of a learnable pattern with a random-length prompt (targets -100), so ranks and
    micro-batches hold different numbers of loss tokens. 22 rows in global batches of 4: the last
    batch of each epoch has 2 rows, so on 2 ranks rank 1 gets a placeholder there."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        start, stride = int(torch.randint(0, 64, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
        seq = [(start + stride * t) % 64 for t in range(T + 1)]
        prompt = int(torch.randint(0, T // 2, (1,), generator=g))
        targets = [-100] * prompt + seq[1 + prompt:]
        rows.append(Example(input_ids=seq[:T], targets=targets))
    return rows


def _model(method):
    torch.manual_seed(0)
    model = Transformer(CFG)
    if method == "lora":
        lora.add_lora(model, r=4, alpha=8, dropout=0.0)
    return model


def _config(out_dir=None, steps=STEPS, save_every=0, grad_ckpt=False):
    return TrainConfig(steps=steps, grad_accum=2, lr=3e-3, warmup=2, clip=0.5, save_every=save_every,
                       out_dir=out_dir, progress=False, grad_checkpointing=grad_ckpt, log_every=0)


class _Killed(RuntimeError):
    pass


class _KilledBatches(Batches):
    """Batches that raise after `left` micro-batches: a run killed mid-way, on every rank at once."""

    def __init__(self, *a, left, **k):
        super().__init__(*a, **k)
        self.left = left

    def __iter__(self):
        for batch in super().__iter__():
            if self.left == 0:
                raise _Killed("killed")
            self.left -= 1
            yield batch


def _trained(model, batch_size, out_dir=None, kill_after=None, save_every=0, grad_ckpt=False, resume=True):
    rows = _rows()
    data = (_KilledBatches(rows, batch_size, seed=1, left=kill_after) if kill_after is not None
            else Batches(rows, batch_size, seed=1))
    res = train(model, data, Batches(rows[:8], batch_size, shuffle=False),
                _config(out_dir, save_every=save_every, grad_ckpt=grad_ckpt), resume=resume)
    return res


def _state(model):
    """The trainable tensors in full (a collective under FSDP), on every rank."""
    from torch.distributed.tensor import DTensor
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------------- the worker
SCENARIOS = ("lora", "full", "full-compiled", "resume", "write-half", "read-half")


def _worker(rank, world, port, tmp):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from minift import distributed
    from minift.device import pick_device
    assert pick_device("cpu").type == "cpu" and distributed.is_distributed()
    for scenario in SCENARIOS:   # one spawn for all (starting 2 interpreters is the slow part)
        result = {}
        if scenario in ("lora", "full"):
            model = _model(scenario)
            res = _trained(model, 2, grad_ckpt=scenario == "full")
            result = {"losses": res.losses, "norms": res.grad_norms, "evals": res.eval_history,
                      "state": {k: v.tolist() for k, v in _state(model).items()},
                      "sharded": distributed.is_sharded(model)}
        elif scenario == "full-compiled":   # the recipes compile the layers of a long run under FSDP2 too
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()
            model = _model("full")
            model.compile_layers(backend="aot_eager")
            res = _trained(model, 2)
            result = {"losses": res.losses, "graphs": torch._dynamo.utils.counters["stats"]["unique_graphs"]}
        elif scenario == "resume":
            full = _trained(_model("full"), 2, out_dir=os.path.join(tmp, "straight"), save_every=2)
            try:
                _trained(_model("full"), 2, out_dir=os.path.join(tmp, "killed"), save_every=2, kill_after=7)
                raise AssertionError("the run was not killed")
            except _Killed:
                pass
            resumed = _trained(_model("full"), 2, out_dir=os.path.join(tmp, "killed"), save_every=2)
            result = {"straight": full.losses, "resumed": resumed.losses, "from": resumed.resumed_from_step}
        elif scenario == "write-half":   # 2 ranks train to step 3 of 6, then are killed
            try:
                _trained(_model("full"), 2, out_dir=os.path.join(tmp, "by-two"), save_every=3, kill_after=7)
                raise AssertionError("the run was not killed")
            except _Killed:
                result = {"killed": True}
        elif scenario == "read-half":    # 2 ranks resume what 1 process wrote
            res = _trained(_model("full"), 2, out_dir=os.path.join(tmp, "by-one"), save_every=3)
            result = {"losses": res.losses, "from": res.resumed_from_step}
        with open(os.path.join(tmp, f"{scenario}-{rank}.json"), "w") as f:
            json.dump(result, f)
        model = res = full = resumed = None   # nothing sharded outlives its scenario (teardown's docstring)
    distributed.barrier()
    distributed.teardown()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every 2-rank scenario in one spawn; first, one process writes the checkpoint (killed at
    step 3 of 6) that the 2 ranks resume in "read-half". Returns (tmp dir, read(scenario, rank))."""
    tmp = tmp_path_factory.mktemp("dist")
    try:
        _trained(_model("full"), 4, out_dir=str(tmp / "by-one"), save_every=3, kill_after=7)
    except _Killed:
        pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp)), nprocs=2, join=True)
    return tmp, lambda scenario, rank=0: json.load(open(tmp / f"{scenario}-{rank}.json"))


@pytest.fixture(scope="module")
def single():
    """The uninterrupted one-process full-training run, batches of 4."""
    return _trained(_model("full"), 4)


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_give_the_single_process_losses(method, two_ranks):
    """LoRA (adapters replicated, gradients all-reduced by hand) and full training (FSDP2 shards,
    with gradient checkpointing) on 2 ranks x 2 rows = the one-process run on batches of 4."""
    _, read = two_ranks
    model = _model(method)
    one = _trained(model, 4)
    ranks = [read(method, r) for r in (0, 1)]
    assert ranks[1]["sharded"] == (method == "full")
    for r in ranks:
        assert r["losses"] == ranks[0]["losses"] and r["norms"] == ranks[0]["norms"]  # one global value
        torch.testing.assert_close(torch.tensor(r["losses"]), torch.tensor(one.losses), rtol=LOSS_RTOL, atol=0)
        torch.testing.assert_close(torch.tensor(r["norms"]), torch.tensor(one.grad_norms), rtol=LOSS_RTOL, atol=0)
        assert [e["tokens"] for e in r["evals"]] == [e["tokens"] for e in one.eval_history]
        torch.testing.assert_close(r["evals"][-1]["loss"], one.eval_history[-1]["loss"], rtol=LOSS_RTOL, atol=0)
    # The weights after 6 steps, gathered in full. atol 1e-5 = lr / 300: AdamW moves each weight by
    # up to lr per step whatever the gradient's size, so an element whose gradient is near eps turns
    # the ~1e-7 relative rounding difference into a few 1e-6 (measured: 1.4e-6 at most).
    for name, value in _state(model).items():
        torch.testing.assert_close(torch.tensor(ranks[0]["state"][name]), value, rtol=1e-4, atol=1e-5)


def test_compiled_layers_under_fsdp2_give_the_eager_losses(two_ranks):
    """fast_path compiles the layers of a long full-training run under torchrun as well (only the CUDA
    graph is left off there), so the compiler must trace each layer with FSDP2's gather and
    reduce-scatter hooks around it. backend="aot_eager" runs dynamo's and AOTAutograd's tracing
    (where FSDP2's hooks meet the compiler) without Inductor's code generation, which is per device
    and slow on this 2-core CPU. Same tolerance as the eager 2-rank run: the ops are the same, only
    the fp32 reduction order across ranks differs from one process."""
    one = _trained(_model("full"), 4)
    for rank in (0, 1):
        got = two_ranks[1]("full-compiled", rank)
        assert got["graphs"] >= 1                   # the layers went through the compiler
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(one.losses), rtol=LOSS_RTOL, atol=0)


def test_two_ranks_killed_mid_way_resume_to_the_same_losses(two_ranks):
    got = two_ranks[1]("resume")
    assert got["from"] == 2                       # killed at step 4 (7 micro-batches), saved at 2
    assert got["resumed"] == got["straight"]      # bit for bit, on CPU


def test_checkpoint_written_by_two_ranks_resumes_in_one_process(two_ranks, single):
    tmp, read = two_ranks
    assert read("write-half")["killed"]
    ckpt = tmp / "by-two" / "checkpoint"          # the same files a one-process run writes
    assert set(load_file(str(ckpt / "model.safetensors"))) == {n for n, _ in _model("full").named_parameters()}
    rng = load_file(str(ckpt / "rng.safetensors"))
    assert "torch_cpu" in rng and "rank1.torch_cpu" in rng
    resumed = _trained(_model("full"), 4, out_dir=str(tmp / "by-two"), save_every=3)
    assert resumed.resumed_from_step == 3
    torch.testing.assert_close(torch.tensor(resumed.losses), torch.tensor(single.losses), rtol=LOSS_RTOL, atol=0)


def test_checkpoint_written_by_one_process_resumes_on_two_ranks(two_ranks, single):
    got = two_ranks[1]("read-half")
    assert got["from"] == 3
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(single.losses), rtol=LOSS_RTOL, atol=0)


def test_batches_split_each_global_batch_across_ranks():
    rows = _rows(10)
    whole = [b["input_ids"] for b in Batches(rows, 4, seed=3)]
    parts = [[b["input_ids"] for b in Batches(rows, 2, seed=3, rank=r, world_size=2)] for r in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for i in range(2):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), whole[i])
    assert torch.equal(parts[0][2], whole[2])                     # 10 rows: the last global batch has 2
    last = list(Batches(rows, 2, seed=3, rank=1, world_size=2))[2]
    assert last["input_ids"].shape == (1, T) and (last["targets"] == -100).all()   # rank 1's placeholder
    # a position saved with a global batch of 4 (1 rank x 4) resumes on 2 ranks x 2, and back
    one = Batches(rows, 4, seed=3, rank=0, world_size=1)
    next(iter(one))
    two = Batches(rows, 2, seed=3, rank=0, world_size=2)
    two.load_state_dict(one.state_dict())
    assert two.position == 1
    odd = Batches(rows, 3, seed=3, rank=0, world_size=1)
    with pytest.raises(ValueError, match="not a whole number"):
        odd.load_state_dict({"epoch": 0, "position": 1, "global_batch": 4})
