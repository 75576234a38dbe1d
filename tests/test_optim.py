"""minift.optim: AdamW against torch.optim.AdamW and a float64 reference; the LR schedule by hand."""
import math

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from minift import ModelConfig, Transformer
from minift.optim import AdamW, lr_at, param_groups, set_lr


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(8, 5), (5,), (3, 4, 2), (7,)]
    return [nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def _grads(params, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    # mixed scales, so v spans orders of magnitude and eps matters for the small ones
    return [torch.randn(p.shape, generator=g) * (10.0 ** (i - 2)) for i, p in enumerate(params)]


def test_lockstep_with_torch_adamw_fp32():
    """Twenty steps beside torch.optim.AdamW with three param groups (different lr, weight decay,
    betas) and the learning rate changed every step, as the schedule does.
    Tolerance rtol=atol=1e-6: the formula and the order of operations are torch's single-tensor
    path, so the results are expected to agree to the bit; 1e-6 leaves room for a torch release
    that reorders an op (one fp32 ulp per step, ~1e-7 relative, over 20 steps)."""
    ours_p, ref_p = _params(), _params()
    groups = lambda ps: [
        {"params": ps[:2], "lr": 1e-2, "weight_decay": 0.1},
        {"params": ps[2:3], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)},
        {"params": ps[3:], "lr": 5e-2, "weight_decay": 0.5, "eps": 1e-6},
    ]
    ours = AdamW(groups(ours_p), betas=(0.9, 0.95), eps=1e-8)
    ref = torch.optim.AdamW(groups(ref_p), betas=(0.9, 0.95), eps=1e-8, foreach=False)
    base = [g["lr"] for g in ours.param_groups]
    for step in range(20):
        scale = 0.5 + 0.5 * math.cos(step / 20 * math.pi)
        for o, r, b in zip(ours.param_groups, ref.param_groups, base):
            o["lr"] = r["lr"] = b * scale
        for p, q, g in zip(ours_p, ref_p, _grads(ours_p, step)):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
        for p, q in zip(ours_p, ref_p):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    for p, q in zip(ours_p, ref_p):
        torch.testing.assert_close(ours.state[p]["exp_avg"], ref.state[q]["exp_avg"], rtol=1e-6, atol=0)
        torch.testing.assert_close(ours.state[p]["exp_avg_sq"], ref.state[q]["exp_avg_sq"], rtol=1e-6, atol=0)
        assert ours.state[p]["step"] == int(ref.state[q]["step"]) == 20


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("limit", [None, 7])
def test_foreach_path_equals_the_loop(dtype, master, limit, monkeypatch):
    """The list-operation path (used on CUDA) is the same formula in the same order: it must give
    the loop's result to the bit, for fp32 parameters, bf16 ones and bf16 ones with master weights.
    One parameter misses its gradient on some steps, so step counts (and bias corrections) differ.
    limit=7 cuts the tensors into flat pieces across slice boundaries (optim.foreach_slices)."""
    if limit is not None:
        monkeypatch.setattr("minift.optim.FOREACH_SLICE", limit)
        import minift.optim
        monkeypatch.setattr(minift.optim.foreach_slices, "__defaults__", (limit,))
    loop_p, each_p = _params(dtype), _params(dtype)
    loop = AdamW([{"params": loop_p[:2], "weight_decay": 0.1}, {"params": loop_p[2:]}], lr=1e-2,
                 master_weights=master, foreach=False)
    each = AdamW([{"params": each_p[:2], "weight_decay": 0.1}, {"params": each_p[2:]}], lr=1e-2,
                 master_weights=master, foreach=True)
    for step in range(10):
        for i, (p, q, g) in enumerate(zip(loop_p, each_p, _grads(loop_p, step))):
            skip = i == 3 and step % 3 == 1
            p.grad = None if skip else g.to(dtype)
            q.grad = None if skip else g.to(dtype)
        loop.step()
        each.step()
    for p, q in zip(loop_p, each_p):
        assert torch.equal(p, q)
        assert torch.equal(loop.state[p]["exp_avg_sq"], each.state[q]["exp_avg_sq"])
        assert loop.state[p]["step"] == each.state[q]["step"]


def test_foreach_slices_cover_every_element_once():
    from minift.optim import foreach_slices
    sizes = [5, 3, 10, 1]
    slices = foreach_slices(sizes, limit=4)
    assert all(sum(b - a for _, a, b in s) <= 4 for s in slices)
    covered = {}
    for s in slices:
        for i, a, b in s:
            covered.setdefault(i, []).append((a, b))
    for i, n in enumerate(sizes):
        ranges = sorted(covered[i])
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(r1[1] == r2[0] for r1, r2 in zip(ranges, ranges[1:]))


def _reference_adamw(w, m, v, g, t, lr, wd, b1, b2, eps):
    """The AdamW formula in float64 (module docstring of minift/optim.py), on float64 tensors."""
    w = w * (1 - lr * wd)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    w = w - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return w, m, v


@pytest.mark.parametrize("master", [False, True])
def test_bf16_params_fp32_states_against_float64_reference(master):
    """bf16 parameters: m and v must be fp32 and match float64 math; the parameter is the fp32
    update rounded to bf16 (without master weights the rounding happens every step, and the
    reference does the same rounding; with master weights the fp32 master follows float64 math
    and the parameter is master rounded to nearest).
    Tolerances: m, v rtol 1e-5 (fp32 arithmetic over 20 steps against float64);
    master rtol 1e-5, atol 1e-6; bf16 params: at most one bf16 ulp (rtol 2^-8), because the fp32
    result may sit on the other side of a bf16 rounding boundary than the float64 one."""
    lr, wd, b1, b2, eps = 1e-2, 0.1, 0.9, 0.95, 1e-8
    params = _params(torch.bfloat16)
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, master_weights=master)
    ref = [{"w": p.detach().double(), "m": torch.zeros(p.shape, dtype=torch.float64),
            "v": torch.zeros(p.shape, dtype=torch.float64)} for p in params]
    for step in range(20):
        grads = _grads(params, step)
        for p, g, r in zip(params, grads, ref):
            p.grad = g.to(torch.bfloat16)
            w, r["m"], r["v"] = _reference_adamw(r["w"], r["m"], r["v"], p.grad.double(), step + 1,
                                                 lr, wd, b1, b2, eps)
            # without master weights the stored parameter is the bf16 rounding of every step's result
            r["w"] = w if master else w.to(torch.bfloat16).double()
        opt.step()
    for p, r in zip(params, ref):
        st = opt.state[p]
        assert p.dtype == torch.bfloat16
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.float32
        torch.testing.assert_close(st["exp_avg"].double(), r["m"], rtol=1e-5, atol=0)
        torch.testing.assert_close(st["exp_avg_sq"].double(), r["v"], rtol=1e-5, atol=0)
        if master:
            assert st["master"].dtype == torch.float32
            torch.testing.assert_close(st["master"].double(), r["w"], rtol=1e-5, atol=1e-6)
            assert torch.equal(p.detach(), st["master"].to(torch.bfloat16))  # exactly master, rounded
        else:
            assert "master" not in st
        torch.testing.assert_close(p.detach().double(), r["w"].to(torch.bfloat16).double(), rtol=2 ** -8, atol=0)


def test_master_weights_keep_updates_that_bf16_loses():
    """p = 1.0 in bf16 has an ulp of 2^-7; an Adam step of lr = 1e-4 is far below half of it.
    Without a master copy every update rounds back to 1.0 and the parameter never moves; with one,
    the fp32 master accumulates 100 steps of ~1e-4 and the bf16 parameter follows it."""
    def run(master):
        p = nn.Parameter(torch.ones(16, dtype=torch.bfloat16))
        opt = AdamW([p], lr=1e-4, weight_decay=0.0, master_weights=master)
        for _ in range(100):
            p.grad = torch.ones(16, dtype=torch.bfloat16)  # constant gradient: each step is ~ -lr
            opt.step()
        return p, opt
    p_plain, _ = run(False)
    assert torch.equal(p_plain.detach(), torch.ones(16, dtype=torch.bfloat16))
    p_master, opt = run(True)
    master = opt.state[p_master]["master"]
    # 100 steps of exactly lr (m^ = g and sqrt(v^) = |g| for a constant gradient): 1 - 0.01 = 0.99
    torch.testing.assert_close(master, torch.full((16,), 0.99), rtol=0, atol=1e-5)
    assert torch.equal(p_master.detach(), master.to(torch.bfloat16))
    assert float(p_master.detach()[0]) < 1.0


def test_fp32_params_get_no_master_copy():
    p = nn.Parameter(torch.ones(4))
    opt = AdamW([p], master_weights=True)
    p.grad = torch.ones(4)
    opt.step()
    assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, True), (torch.bfloat16, False)])
def test_state_round_trip_through_safetensors(tmp_path, dtype, master):
    """Five steps, save the state as named tensors (safetensors) + JSON, load into a fresh
    optimizer over copies of the parameters, step both five more: bitwise equal (same inputs,
    same ops). The loaded moments must stay fp32 for bf16 params (torch's Optimizer.load_state_dict
    would cast them to bf16)."""
    params = _params(dtype)
    groups = lambda ps: [{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}]
    opt = AdamW(groups(params), lr=1e-2, master_weights=master)
    for step in range(5):
        for p, g in zip(params, _grads(params, step)):
            p.grad = g.to(dtype)
        opt.step()
    names = {p: f"p{i}" for i, p in enumerate(params)}
    tensors, meta = opt.named_state(names)
    save_file(tensors, tmp_path / "opt.safetensors")

    params2 = [nn.Parameter(p.detach().clone()) for p in params]
    opt2 = AdamW(groups(params2), lr=123.0)  # hyperparameters come from the saved groups
    opt2.load_named_state(load_file(tmp_path / "opt.safetensors"), meta, {p: f"p{i}" for i, p in enumerate(params2)})
    assert opt2.param_groups[0]["lr"] == 1e-2 and opt2.param_groups[0]["master_weights"] == master
    for p, q in zip(params, params2):
        for key, value in opt.state[p].items():
            if key == "step":
                assert opt2.state[q]["step"] == value == 5
            else:
                assert opt2.state[q][key].dtype == torch.float32 and torch.equal(opt2.state[q][key], value)
    for step in range(5, 10):
        for p, q, g in zip(params, params2, _grads(params, step)):
            p.grad, q.grad = g.to(dtype), g.to(dtype)
        opt.step()
        opt2.step()
    for p, q in zip(params, params2):
        assert torch.equal(p, q)


def test_load_named_state_rejects_other_parameters():
    params = _params()
    opt = AdamW(params)
    for p, g in zip(params, _grads(params, 0)):
        p.grad = g
    opt.step()
    tensors, meta = opt.named_state({p: f"p{i}" for i, p in enumerate(params)})
    other = AdamW(_params())
    with pytest.raises(ValueError, match="different parameters"):
        other.load_named_state(tensors, meta, {p: f"q{i}" for i, p in enumerate(other.param_groups[0]["params"])})


def test_param_groups_follow_nanogpt_rule_and_skip_frozen():
    cfg = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    model = Transformer(cfg)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    names = {p: n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    decayed = {names[p] for p in decay["params"]}
    assert "model.embed_tokens.weight" in decayed  # embeddings decay, as in nanoGPT (tied head: once)
    assert "model.layers.0.mlp.up_proj.weight" not in decayed  # frozen: not given to the optimizer
    assert {names[p] for p in no_decay["params"]} == {
        "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
        "model.norm.weight", "model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias",
        "model.layers.0.self_attn.v_proj.bias"}
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_trainable


def test_schedule_values_by_hand():
    """base 1e-3, warmup 10, total 110, min ratio 0.1 (min_lr 1e-4):
    step 0: 1e-3 * 1/10 = 1e-4; step 9 (last warmup step): 1e-3; step 10: cosine(0) = 1e-3;
    step 60 (half way through the 100 decay steps): (1e-3 + 1e-4) / 2 = 5.5e-4;
    step 35 (a quarter): 1e-4 + 0.5 * (1 + cos(pi/4)) * 9e-4 = 1e-4 + 0.853553 * 9e-4 = 8.681981e-4;
    step 110 and after: 1e-4."""
    f = lambda s: lr_at(s, 1e-3, 10, 110, 0.1)
    assert f(0) == pytest.approx(1e-4, rel=1e-12)
    assert f(4) == pytest.approx(5e-4, rel=1e-12)
    assert f(9) == pytest.approx(1e-3, rel=1e-12)
    assert f(10) == pytest.approx(1e-3, rel=1e-12)
    assert f(35) == pytest.approx(8.681980515339464e-4, rel=1e-12)
    assert f(60) == pytest.approx(5.5e-4, rel=1e-12)
    assert f(110) == pytest.approx(1e-4, rel=1e-12)
    assert f(500) == pytest.approx(1e-4, rel=1e-12)
    assert lr_at(0, 1e-3, 0, 100, 0.0) == pytest.approx(1e-3, rel=1e-12)  # no warmup: start at the peak
    assert lr_at(50, 1e-3, 0, 100, 0.0) == pytest.approx(5e-4, rel=1e-12)


def test_set_lr_sets_every_group():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    opt = AdamW([{"params": [a]}, {"params": [b], "lr": 5.0}])
    set_lr(opt, 0.25)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
