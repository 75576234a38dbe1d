"""minift.train: golden loss trajectory, kill-and-resume, interrupted saves, divergence, frozen params.

Everything runs a tiny minift Transformer on CPU in fp32, where every kernel is deterministic, so
a resumed run must equal an uninterrupted one exactly (not approximately).

Regenerate the golden file (after a deliberate change to the loop, or when a torch upgrade
changes CPU kernels): MINIFT_REGEN_GOLDEN=1 python -m pytest tests/test_train.py -k golden
"""
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from minift import ModelConfig, Transformer, safeio
from minift.train import (TrainConfig, TrainingDiverged, evaluate, failure_point_warnings,
                          recover_checkpoint_dir, train)

GOLDEN = Path(__file__).parent / "golden" / "train_tiny_losses.json"
TINY = ModelConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2)


class TinyBatches:
    """The data.Batches interface in a few lines: dicts of (B, T) input_ids and shifted targets,
    a learnable pattern (each row counts up by a row-specific stride, with some noise), and a
    prompt of random length per row whose targets are -100, so micro-batches hold different
    numbers of loss tokens. Batch i depends only on (seed, i), and state_dict() is that position.
    With per_epoch set, iteration stops after that many batches and the next iter() starts the
    next epoch."""

    def __init__(self, seed=0, batch=4, seq=16, vocab=256, per_epoch=None):
        self.seed, self.batch, self.seq, self.vocab, self.per_epoch = seed, batch, seq, vocab, per_epoch
        self.pos, self.in_epoch = 0, 0

    def __iter__(self):
        return self

    def __len__(self):
        return self.per_epoch

    def __next__(self):
        if self.per_epoch is not None and self.in_epoch == self.per_epoch:
            self.in_epoch = 0
            raise StopIteration
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.pos)
        B, T, V = self.batch, self.seq, self.vocab
        start = torch.randint(0, V, (B, 1), generator=g)
        stride = torch.randint(1, 4, (B, 1), generator=g)
        seq = (start + stride * torch.arange(T + 1)) % V                          # (B, T+1)
        noise = torch.rand(B, T + 1, generator=g) < 0.1
        seq = torch.where(noise, torch.randint(0, V, (B, T + 1), generator=g), seq)
        targets = seq[:, 1:].clone()                                              # (B, T)
        prompt = torch.randint(0, T // 2, (B, 1), generator=g)
        targets[torch.arange(T)[None, :] < prompt] = -100
        self.pos += 1
        self.in_epoch += 1
        return {"input_ids": seq[:, :-1].contiguous(), "targets": targets}

    def state_dict(self):
        return {"pos": self.pos, "in_epoch": self.in_epoch}

    def load_state_dict(self, state):
        self.pos, self.in_epoch = int(state["pos"]), int(state["in_epoch"])


def make_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    model = Transformer(TINY)
    if dropout:
        # Dropout on the embeddings draws from the global torch RNG every step, so a resumed run
        # only matches if the checkpoint restored that RNG too.
        model.model.embed_tokens.register_forward_hook(lambda mod, inp, out: F.dropout(out, dropout, mod.training))
    return model


def cfg(**kw):
    base = dict(steps=8, grad_accum=2, lr=3e-3, warmup=2, weight_decay=0.1, clip=0.5, progress=False,
                log_every=0, seed=1234)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny (64x32 matmuls): with two OpenMP threads on a loaded 2-core machine
    each op waits on the other thread and a step takes 25x longer. One thread, restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dir_hashes(path):
    return {f: hashlib.sha256(Path(path, f).read_bytes()).hexdigest() for f in sorted(os.listdir(path))}


# ---------------------------------------------------------------------- golden trajectory
def test_golden_loss_trajectory():
    """10 steps, fp32, grad_accum 2, clipping at 0.5, warmup 3 then cosine, from fixed seeds.
    rtol 1e-5: the same code on the same torch gives the same bits; a change in the loop (loss
    weighting, clip, schedule, AdamW) moves these numbers by far more. A torch upgrade may change
    CPU kernels (matmul blocking, SDPA) and move them by ~1e-6 relative per step: then check the
    cause and regenerate (see the module docstring)."""
    model = make_model(seed=0)
    result = train(model, TinyBatches(seed=0), cfg=cfg(steps=10, warmup=3))
    got = {"losses": result.losses, "grad_norms": result.grad_norms, "lrs": result.lrs}
    if os.environ.get("MINIFT_REGEN_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"torch": torch.__version__, **got}, indent=2) + "\n")
        pytest.skip(f"regenerated {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    assert len(got["losses"]) == 10
    torch.testing.assert_close(torch.tensor(got["losses"], dtype=torch.float64),
                               torch.tensor(want["losses"], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(got["grad_norms"], dtype=torch.float64),
                               torch.tensor(want["grad_norms"], dtype=torch.float64), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.tensor(got["lrs"], dtype=torch.float64),
                               torch.tensor(want["lrs"], dtype=torch.float64), rtol=1e-12, atol=0)
    assert got["losses"][-1] < got["losses"][0]  # it learns the pattern


# ---------------------------------------------------------------------- resume
class StopAt(Exception):
    pass


def stop_at(step):
    def callback(event):
        if event["kind"] == "train" and event["step"] == step:
            raise StopAt(step)
    return callback


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kill_and_resume_matches_uninterrupted_run(tmp_path, precision):
    """Run A: 8 steps, checkpoints every 3, evaluation every 4. Run B: the same, killed by a
    callback at step 5 (after step 5's update, before anything of step 5 is saved): its last
    checkpoint is step 3. Run C: a fresh model and a fresh batch source, resume=True from B's
    out_dir. C's loss history, grad norms, evaluations, final parameters and optimizer state
    must equal A's exactly: deterministic CPU kernels, and everything that feeds the trajectory
    (params, m, v, master weights, step, data position, RNG for the dropout) was restored.
    Gradient accumulation (2) and clipping (0.5; the norms here are above it) are on.
    bf16: pure bf16 params with fp32 master weights, also bitwise (CPU bf16 kernels are deterministic)."""
    def model():
        m = make_model(seed=0, dropout=0.1)
        return m.to(torch.bfloat16) if precision == "bf16" else m
    extra = dict(precision=precision, master_weights=precision == "bf16", save_every=3, eval_every=4, eval_batches=2)
    a = train(model(), TinyBatches(seed=0), TinyBatches(seed=99), cfg=cfg(out_dir=str(tmp_path / "a"), **extra))
    assert max(a.grad_norms) > 0.5  # clipping was active

    with pytest.raises(StopAt):
        train(model(), TinyBatches(seed=0), TinyBatches(seed=99), cfg=cfg(out_dir=str(tmp_path / "b"), **extra),
              callbacks=[stop_at(5)])
    state = safeio.read_json(tmp_path / "b" / "checkpoint" / "trainer_state.json")
    assert state["step"] == 3 and state["data"] == {"pos": 6, "in_epoch": 6}

    torch.manual_seed(777)  # a different global RNG state: the checkpoint's must win
    m_c = model()
    c = train(m_c, TinyBatches(seed=0), TinyBatches(seed=99), cfg=cfg(out_dir=str(tmp_path / "b"), **extra))
    assert c.resumed_from_step == 3 and c.final_step == 8
    assert c.losses == a.losses
    assert c.grad_norms == a.grad_norms
    assert c.lrs == a.lrs
    assert c.eval_history == a.eval_history
    assert c.tokens_seen == a.tokens_seen and c.loss_tokens_seen == a.loss_tokens_seen
    a_params = load_file(tmp_path / "a" / "checkpoint" / "model.safetensors")
    c_params = load_file(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert a_params.keys() == c_params.keys()
    for k in a_params:
        assert torch.equal(a_params[k], c_params[k]), k
    a_opt = load_file(tmp_path / "a" / "checkpoint" / "optimizer.safetensors")
    c_opt = load_file(tmp_path / "b" / "checkpoint" / "optimizer.safetensors")
    assert a_opt.keys() == c_opt.keys()
    assert any(k.endswith(".master") for k in a_opt) == (precision == "bf16")
    for k in a_opt:
        assert a_opt[k].dtype == torch.float32 and torch.equal(a_opt[k], c_opt[k]), k


def test_resume_without_restoring_rng_would_differ(tmp_path):
    """Guards the test above: with the dropout hook, a resume that skipped the RNG restore would
    not match. Resume from step 3 after replacing the saved torch RNG state with another one."""
    a = train(make_model(dropout=0.1), TinyBatches(), cfg=cfg(steps=5))
    with pytest.raises(StopAt):
        train(make_model(dropout=0.1), TinyBatches(), cfg=cfg(steps=5, out_dir=str(tmp_path), save_every=3),
              callbacks=[stop_at(4)])
    rng_file = tmp_path / "checkpoint" / "rng.safetensors"
    rng = load_file(rng_file)
    rng["torch_cpu"] = torch.Generator().manual_seed(5).get_state()
    safeio.atomic_save_file(rng, rng_file)
    b = train(make_model(dropout=0.1), TinyBatches(), cfg=cfg(steps=5, out_dir=str(tmp_path), save_every=3))
    assert b.losses[:3] == a.losses[:3] and b.losses[3:] != a.losses[3:]


def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    """The second checkpoint (step 4) fails after writing model.safetensors (an exception inside
    the save, as a full disk would raise). checkpoint/ must still be the whole step-2 checkpoint.
    Then a hard kill is simulated as well: a half-written checkpoint.tmp-<pid>/ left behind and a
    swap stopped between its two renames (only checkpoint.old/ present). The next start recovers
    and the resumed run matches an uninterrupted one exactly."""
    ref = train(make_model(), TinyBatches(), cfg=cfg(steps=6))
    out = tmp_path / "run"
    real_save = safeio.atomic_save_file
    calls = {"n": 0}

    def failing_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 5:  # checkpoint 1 wrote 3 safetensors files; #4 is checkpoint 2's model file
            raise OSError(28, "No space left on device (simulated)")
        return real_save(tensors, path, metadata)

    seen = {}
    monkeypatch.setattr(safeio, "atomic_save_file", failing_save)
    with pytest.raises(OSError, match="simulated"):
        train(make_model(), TinyBatches(), cfg=cfg(steps=6, out_dir=str(out), save_every=2),
              callbacks=[lambda e: e["kind"] == "checkpoint" and seen.update(dir_hashes(e["path"]))])
    monkeypatch.setattr(safeio, "atomic_save_file", real_save)
    assert sorted(os.listdir(out)) == ["checkpoint"]             # the failed temp dir was cleaned up
    assert dir_hashes(out / "checkpoint") == seen                  # step 2's files, byte for byte
    assert safeio.read_json(out / "checkpoint" / "trainer_state.json")["step"] == 2

    # a SIGKILL mid-write leaves a temp dir; one between the renames leaves only checkpoint.old/
    (out / "checkpoint.tmp-424242").mkdir()
    (out / "checkpoint.tmp-424242" / "model.safetensors").write_bytes(b"\x00" * 10)
    os.replace(out / "checkpoint", out / "checkpoint.old")
    assert recover_checkpoint_dir(str(out)) == str(out / "checkpoint")
    assert sorted(os.listdir(out)) == ["checkpoint"]

    resumed = train(make_model(), TinyBatches(), cfg=cfg(steps=6, out_dir=str(out), save_every=2))
    assert resumed.resumed_from_step == 2
    assert resumed.losses == ref.losses


# ---------------------------------------------------------------------- divergence
class NaNAt(nn.Module):
    """Wraps a model; its forward number `at` returns NaN (as an overflow would)."""

    def __init__(self, inner, at):
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0
        self.gradient_checkpointing = False

    def forward(self, input_ids, targets=None, **kw):
        self.calls += 1
        loss = self.inner(input_ids, targets=targets, **kw)
        return loss * float("nan") if self.calls == self.at else loss


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    model = NaNAt(make_model(), at=3)  # grad_accum 1: forward 3 is step 3
    seen = {}
    with pytest.raises(TrainingDiverged) as err:
        train(model, TinyBatches(), cfg=cfg(steps=6, grad_accum=1, out_dir=str(tmp_path), save_every=2),
              callbacks=[lambda e: e["kind"] == "checkpoint" and seen.update(dir_hashes(e["path"]))])
    msg = str(err.value)
    assert "step 3/6" in msg and "loss nan" in msg and "lr " in msg
    assert f"last good checkpoint at {tmp_path / 'checkpoint'} (step 2) was kept" in msg
    assert dir_hashes(tmp_path / "checkpoint") == seen
    assert safeio.read_json(tmp_path / "checkpoint" / "trainer_state.json")["step"] == 2


def test_nan_skip_budget(tmp_path):
    """max_nan_skips=1: the NaN step makes no update (parameters and optimizer state unchanged
    across it) and the run continues; the skipped step is recorded."""
    snap = {}

    def grab(event):
        if event["kind"] == "train" and event["step"] in (2, 3):
            snap[event["step"]] = [p.detach().clone() for p in model.parameters()]

    model = NaNAt(make_model(), at=3)
    result = train(model, TinyBatches(), cfg=cfg(steps=5, grad_accum=1, max_nan_skips=1), callbacks=[grab])
    assert result.skipped_steps == [3] and result.final_step == 5
    assert math.isnan(result.losses[2]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 2)
    assert all(torch.equal(a, b) for a, b in zip(snap[2], snap[3]))


# ---------------------------------------------------------------------- frozen parameters
def test_only_trainable_params_are_optimised_and_checkpointed(tmp_path):
    """Freeze the (tied) embedding and every norm, as LoRA freezes its base: they must not move,
    must not be in model.safetensors or optimizer.safetensors, and resume must still work."""
    def model():
        m = make_model()
        for name, p in m.named_parameters():
            if "embed_tokens" in name or "norm" in name:
                p.requires_grad_(False)
        return m
    m = model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    train(m, TinyBatches(), cfg=cfg(steps=3, out_dir=str(tmp_path)))
    for n, p in m.named_parameters():
        assert torch.equal(p, before[n]) == (n not in trainable), n
    ck = tmp_path / "checkpoint"
    assert set(load_file(ck / "model.safetensors")) == trainable
    opt_keys = set(load_file(ck / "optimizer.safetensors"))
    assert opt_keys == {f"{n}.{k}" for n in trainable for k in ("exp_avg", "exp_avg_sq")}
    resumed = train(model(), TinyBatches(), cfg=cfg(steps=5, out_dir=str(tmp_path)))
    assert resumed.resumed_from_step == 3 and resumed.final_step == 5


# ---------------------------------------------------------------------- accumulation, eval, precision
def test_accumulation_is_token_weighted():
    """grad_accum=2 over micro-batches with different numbers of -100 targets equals one batch
    holding both (the mean over all counted tokens). Tolerance rtol 1e-6: the same sums in a
    different order (two weighted means vs one mean), fp32."""
    class Joined(TinyBatches):
        def __next__(self):
            a, b = super().__next__(), super().__next__()
            return {k: torch.cat([a[k], b[k]]) for k in a}
    two = train(make_model(), TinyBatches(), cfg=cfg(steps=3, grad_accum=2))
    one = train(make_model(), Joined(), cfg=cfg(steps=3, grad_accum=1))
    torch.testing.assert_close(torch.tensor(two.losses), torch.tensor(one.losses), rtol=1e-6, atol=0)
    torch.testing.assert_close(torch.tensor(two.grad_norms), torch.tensor(one.grad_norms), rtol=1e-5, atol=0)
    assert two.loss_tokens_seen == one.loss_tokens_seen < two.tokens_seen


def test_evaluate_is_token_weighted_mean_and_perplexity():
    model = make_model()
    batches = [next(TinyBatches(seed=5)), next(TinyBatches(seed=6))]
    result = evaluate(model, batches)
    with torch.no_grad():
        logits = model(torch.cat([b["input_ids"] for b in batches]))               # (2B, T, V)
        targets = torch.cat([b["targets"] for b in batches])
        want = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100).item()
    assert result["loss"] == pytest.approx(want, rel=1e-6)   # fp32 sums in another order
    assert result["perplexity"] == math.exp(result["loss"])
    assert result["tokens"] == int((targets != -100).sum()) and model.training


def test_epochs_count_steps_and_restart_the_source():
    source = TinyBatches(per_epoch=3)
    result = train(make_model(), source, cfg=cfg(steps=None, epochs=2, grad_accum=2))
    assert result.final_step == 3 and source.pos == 6


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16"])
def test_bf16_paths_learn(precision):
    model = make_model()
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    result = train(model, TinyBatches(), cfg=cfg(steps=20, precision=precision,
                                                 master_weights=precision == "bf16"))
    assert all(math.isfinite(x) for x in result.losses)
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.2  # it learns
    want = torch.bfloat16 if precision == "bf16" else torch.float32
    assert all(p.dtype == want for p in model.parameters())


def test_bad_config_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        TrainConfig()
    with pytest.raises(ValueError, match="trains torch.bfloat16 parameters, but 'model.embed_tokens.weight' is torch.float32"):
        train(make_model(), TinyBatches(), cfg=cfg(precision="bf16"))
    with pytest.raises(ValueError, match="more than TrainConfig.batch_size=2"):
        train(make_model(), TinyBatches(batch=4), cfg=cfg(batch_size=2))
    with pytest.raises(ValueError, match="epochs needs len"):
        train(make_model(), iter([]), cfg=cfg(steps=None, epochs=1))
    m = make_model()
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(m, TinyBatches(), cfg=cfg())
    bad = next(TinyBatches())
    bad["targets"][1, 3] = TINY.vocab_size                      # one past the head's last row
    with pytest.raises(ValueError, match=r"step 1: target id 256 is outside the model's vocabulary \[0, 256\)"):
        train(make_model(), iter([bad] * 4), cfg=cfg(steps=1))


def test_a_device_batch_is_not_read_back_for_its_loss_token_count():
    """On a GPU the loop takes the count Batches made on the CPU instead of summing the targets
    (which would wait for the GPU once a step). A meta tensor stands in for the GPU: reading it
    raises, so the test fails if the loop reads it."""
    from minift.train import _count_loss_tokens
    targets = torch.full((2, 8), -100, device="meta")
    assert _count_loss_tokens({"targets": targets, "num_loss_tokens": 5}, 256, step=1) == 5
    with pytest.raises(RuntimeError, match="meta tensors"):   # no count given: the targets are read
        _count_loss_tokens({"targets": targets}, 256, step=1)
    cpu = {"targets": torch.tensor([[1, -100, 3]]), "num_loss_tokens": 99}   # a CPU batch is counted and checked
    assert _count_loss_tokens(cpu, 256, step=1) == 2


def test_grad_checkpointing_flag_is_set_and_same_losses():
    plain = train(make_model(), TinyBatches(), cfg=cfg(steps=3))
    m = make_model()
    ckpt = train(m, TinyBatches(), cfg=cfg(steps=3, grad_checkpointing=True))
    assert m.gradient_checkpointing is True
    assert ckpt.losses == plain.losses  # recomputation gives the same forward, bit for bit on CPU


def test_checkpoint_layers_recomputes_only_the_bottom_layers():
    plain = train(make_model(), TinyBatches(), cfg=cfg(steps=3))
    m = make_model()
    part = train(m, TinyBatches(), cfg=cfg(steps=3, grad_checkpointing=True, checkpoint_layers=1))
    assert (m.gradient_checkpointing, m.checkpoint_layers) == (True, 1)
    assert part.losses == plain.losses
    calls = [0] * len(m.model.layers)
    for i, layer in enumerate(m.model.layers):
        layer.register_forward_pre_hook(lambda mod, args, i=i: calls.__setitem__(i, calls[i] + 1))
    m.train()
    m(torch.randint(0, 256, (2, 8)), torch.randint(0, 256, (2, 8))).backward()
    assert calls == [2] + [1] * (len(calls) - 1)          # layer 0 ran again in backward, the rest did not


@pytest.mark.parametrize("kw,match", [
    (dict(checkpoint_layers=1), "needs grad_checkpointing=True"),
    (dict(grad_checkpointing=True, checkpoint_layers=-1), "integer >= 0"),
    (dict(grad_checkpointing=True, checkpoint_layers=True), "integer >= 0"),
])
def test_checkpoint_layers_is_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(steps=1, **kw)


def test_checkpoint_layers_above_the_model_is_an_error():
    with pytest.raises(ValueError, match="checkpoint_layers=9, but the model has 2 layers"):
        train(make_model(), TinyBatches(), cfg=cfg(steps=1, grad_checkpointing=True, checkpoint_layers=9))


def test_failure_point_warnings():
    cpt = failure_point_warnings("cpt", "Qwen/Qwen2.5-0.5B-Instruct")
    assert len(cpt) == 1 and "base model" in cpt[0]
    assert len(failure_point_warnings("continued-pretraining", "google/gemma-2b-it")) == 1
    assert len(failure_point_warnings("cpt", "/models/llama-2-7b-chat/")) == 1
    assert failure_point_warnings("cpt", "Qwen/Qwen2.5-0.5B") == []
    assert failure_point_warnings("cpt", "some/model-italian") == []       # "-it" must end a name part
    assert failure_point_warnings("sft", "Qwen/Qwen2.5-0.5B-Instruct") == []
    assert failure_point_warnings("lora", "Qwen/Qwen2.5-0.5B-Instruct", lora_r=16) == []
    assert failure_point_warnings("lora", "Qwen/Qwen2.5-0.5B-Instruct", lora_r=63) == []
    assert len(failure_point_warnings("lora", "x", lora_r=64)) == 1  # the seed's "r=64+" (minift/advice.py)
    r128 = failure_point_warnings("qlora", "x", lora_r=128)
    assert len(r128) == 1 and "r=128" in r128[0]
    with pytest.raises(ValueError, match="unknown method"):
        failure_point_warnings("rlhf", "x")
