"""kernels/: each hand-written backward against autograd, each Triton kernel against its reference.

Three groups:
1. The hand-written backwards (RMSNormFunction, RoPEFunction, SwiGLUFunction with the "torch"
   backend: the exact math the Triton kernels implement) by torch.autograd.gradcheck in float64,
   and against autograd on the reference in fp32/bf16. dispatch's rules.
2. The fused linear + cross-entropy against autograd on the full logits and against the chunked
   reference (kernels/cross_entropy.py): value and both gradients, frozen head, ignored tokens,
   gradient scaling, bf16.
3. The Triton kernels on CPU under TRITON_INTERPRET=1. The interpreter must be switched on before
   any @triton.jit function is created, and other test files import minift.model (and so these
   kernels) first, so group 3 runs in a child pytest process with the environment set
   (test_triton_kernels_under_interpreter); in this process those tests skip.

Tolerances for a kernel vs the float64 truth are relative to the largest true value (max abs
error / max |truth|), per dtype, in TOL below with the reason beside each; the PyTorch reference
must meet the same bound, so the bound is about what the dtype allows, not about the kernel.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from minift.kernels import cross_entropy, dispatch, linear_cross_entropy_fused as fused
from minift.kernels import adamw, rmsnorm, rope, swiglu

IN_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
HAVE_TRITON = dispatch.triton_available()

# max |got - truth| / max |truth|, per dtype
TOL = {
    torch.float32: 1e-5,   # fp32 eps 1.2e-7; sums over h <= 64 in a different order: ~1e-6 seen
    torch.float16: 2e-3,   # fp16 ulp 2^-10 ~ 9.8e-4 relative: two roundings (intermediate + final)
    torch.bfloat16: 1.6e-2,  # bf16 ulp 2^-7 ~ 7.8e-3: two ulps (PyTorch rounds twice; under the
                             # interpreter Triton's fp32->bf16 cast truncates instead of rounding)
}


def rel_err(got: torch.Tensor, truth: torch.Tensor) -> float:
    return ((got.double() - truth).abs().max() / truth.abs().max()).item()


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# =========================================================================== 1. hand-written backwards


def test_rmsnorm_backward_gradcheck_float64():
    g = _gen(0)
    x = torch.randn(3, 5, 24, generator=g, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(24, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rmsnorm.rms_norm_manual(a, b, 1e-6), (x, w))


def test_rope_backward_gradcheck_float64():
    g = _gen(1)
    x = torch.randn(2, 3, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    # general cos/sin (halves differ), so the test covers more than the rotation by -angle
    cos = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    sin = torch.randn(2, 4, 8, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: rope.apply_rope_manual(a, cos, sin), (x,))


def test_swiglu_backward_gradcheck_float64():
    g = _gen(2)
    gate = (3 * torch.randn(4, 9, generator=g, dtype=torch.float64)).requires_grad_()
    up = torch.randn(4, 9, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(swiglu.swiglu_manual, (gate, up))


def _rope_cos_sin(B, T, hd, dtype, seed=0):
    # As the model builds them: angles in fp32, duplicated over the two halves, cast to dtype.
    inv_freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
    pos = torch.randint(0, 4000, (B, T), generator=_gen(seed)).float()
    emb = torch.cat([pos[..., None] * inv_freq] * 2, dim=-1)                   # (B, T, hd)
    return emb.cos().to(dtype), emb.sin().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_manual_backwards_match_autograd_on_the_reference(dtype):
    """The "torch" backend's forward is the reference to the bit; its gradients match autograd on
    the reference within TOL of the float64 truth (autograd rounds intermediates in bf16, the
    hand-written backward keeps fp32, so in bf16 they are not bit-equal)."""
    g = _gen(3)
    # RMSNorm
    x = torch.randn(2, 7, 40, generator=g).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(40, generator=g)).to(dtype).requires_grad_()
    dy = torch.randn(2, 7, 40, generator=g).to(dtype)
    y_m, y_r = rmsnorm.rms_norm_manual(x, w, 1e-6), rmsnorm.rms_norm_reference(x, w, 1e-6)
    assert torch.equal(y_m, y_r)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64, _ = rmsnorm.rms_norm_forward_torch(x64.reshape(-1, 40), w64, 1e-6)
    truth = torch.autograd.grad(y64, (x64, w64), dy.double().reshape(-1, 40))
    for got, ref, t in zip(torch.autograd.grad(y_m, (x, w), dy), torch.autograd.grad(y_r, (x, w), dy), truth):
        assert rel_err(ref, t) <= TOL[dtype] and rel_err(got, t) <= TOL[dtype]
    # RoPE
    q = torch.randn(2, 3, 5, 16, generator=g).to(dtype).requires_grad_()
    cos, sin = _rope_cos_sin(2, 5, 16, dtype)
    dy = torch.randn(2, 3, 5, 16, generator=g).to(dtype)
    y_m, y_r = rope.apply_rope_manual(q, cos, sin), rope.apply_rope_reference(q, cos, sin)
    assert torch.equal(y_m, y_r)
    (gm,), (gr,) = torch.autograd.grad(y_m, q, dy), torch.autograd.grad(y_r, q, dy)
    truth = rope.rope_backward_torch(dy.double(), cos.double(), sin.double(), torch.float64)
    assert rel_err(gr, truth) <= TOL[dtype] and rel_err(gm, truth) <= TOL[dtype]
    # SwiGLU
    a = (2 * torch.randn(6, 33, generator=g)).to(dtype).requires_grad_()
    b = torch.randn(6, 33, generator=g).to(dtype).requires_grad_()
    dy = torch.randn(6, 33, generator=g).to(dtype)
    y_m, y_r = swiglu.swiglu_manual(a, b), swiglu.swiglu_reference(a, b)
    assert torch.equal(y_m, y_r)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    truth = torch.autograd.grad(F.silu(a64) * b64, (a64, b64), dy.double())
    for got, ref, t in zip(torch.autograd.grad(y_m, (a, b), dy), torch.autograd.grad(y_r, (a, b), dy), truth):
        assert rel_err(ref, t) <= TOL[dtype] and rel_err(got, t) <= TOL[dtype]


def _saved_by(fn, *args):
    """The tensors autograd saves while fn(*args) runs, in save order, as they were saved.

    Recorded with saved_tensors_hooks (what autograd does, on every torch version) rather than read
    back through grad_fn.saved_tensors: torch 2.11 raises "Trying to backward through the graph a
    second time" there once the output of a custom Function is a dropped temporary."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args)
    return out, saved


def test_saved_tensors_are_what_the_docstrings_say():
    """RMSNorm keeps x (no copy) and rstd (one fp32 per token); SwiGLU keeps gate and up; RoPE
    keeps only cos and sin. The memory model counts these bytes (see each file's Note)."""
    x = torch.randn(2, 3, 16, dtype=torch.bfloat16, requires_grad=True)
    w = torch.ones(16, dtype=torch.bfloat16, requires_grad=True)
    _, saved = _saved_by(rmsnorm.rms_norm_manual, x, w, 1e-6)
    assert len(saved) == 3 and saved[0].data_ptr() == x.data_ptr() and saved[1].data_ptr() == w.data_ptr()
    assert saved[2].dtype == torch.float32 and saved[2].shape == (6,)
    per_token = (saved[0].numel() * 2 + saved[2].numel() * 4) / 6
    assert per_token == rmsnorm.saved_bytes_per_token(16, 2) == 2 * 16 + 4
    gate, up = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    _, saved = _saved_by(swiglu.swiglu_manual, gate, up)
    assert [t.data_ptr() for t in saved] == [gate.data_ptr(), up.data_ptr()]
    assert sum(t.numel() * t.element_size() for t in saved) / 4 == swiglu.saved_bytes_per_token(8, 4)
    q = torch.randn(1, 2, 3, 8, requires_grad=True)
    cos, sin = _rope_cos_sin(1, 3, 8, torch.float32)
    _, saved = _saved_by(rope.apply_rope_manual, q, cos, sin)
    assert [t.data_ptr() for t in saved] == [cos.data_ptr(), sin.data_ptr()]


def test_dispatch_rules(monkeypatch):
    x = torch.randn(3, 8, requires_grad=True)
    w = torch.ones(8, requires_grad=True)
    monkeypatch.delenv("MINIFT_KERNELS", raising=False)
    assert not dispatch.use_triton(x, w)                      # CPU tensors: always the reference
    y = dispatch.rms_norm(x, w, 1e-6)
    assert torch.equal(y, rmsnorm.rms_norm_reference(x, w, 1e-6))
    assert not isinstance(y.grad_fn, torch.autograd.function.BackwardCFunction)  # plain autograd
    monkeypatch.setenv("MINIFT_KERNELS", "reference")
    assert not dispatch.use_triton(x, w)
    monkeypatch.setenv("MINIFT_KERNELS", "fastest")
    with pytest.raises(ValueError, match="MINIFT_KERNELS='fastest'"):
        dispatch.use_triton(x)
    if HAVE_TRITON:
        monkeypatch.setenv("MINIFT_KERNELS", "triton")
        assert dispatch.use_triton(x, w)


# --------------------------------------------------------------------------- AdamW's fused update

ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8)   # lr large enough that bf16 params move


def _adamw_case(dtype, master, n=3000, seed=0):
    """A parameter, its fp32 m, v (and master), and 3 gradients; n = 3000 leaves the last block
    of the kernel part-masked."""
    g = _gen(seed)
    p = torch.randn(n, generator=g).to(dtype)
    grads = [torch.randn(n, generator=g).to(dtype) for _ in range(3)]
    state = [torch.zeros(n), torch.zeros(n), p.float() if master else None]
    return p, grads, state


@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_adamw_reference_is_the_optimizers_loop(dtype, master, wd):
    """kernels/adamw.py's reference, step by step, against minift.optim.AdamW's loop path: the
    same ops in the same order, so the same bits."""
    from minift.optim import AdamW
    p, grads, (m, v, w) = _adamw_case(dtype, master)
    param = torch.nn.Parameter(p.clone())
    opt = AdamW([param], lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]), eps=ADAMW["eps"],
                weight_decay=wd, master_weights=master, foreach=False)
    for step, grad in enumerate(grads, start=1):
        param.grad = grad.clone()
        opt.step()
        adamw.adamw_update_reference(p, grad, m, v, w, weight_decay=wd, step=step, **ADAMW)
    st = opt.state[param]
    assert torch.equal(param.data, p) and torch.equal(st["exp_avg"], m) and torch.equal(st["exp_avg_sq"], v)
    if master:
        assert torch.equal(st["master"], w)


# =========================================================================== 2. fused linear + CE


def _ce_case(dtype, seed=0, N=(3, 41), h=32, V=301):
    g = _gen(seed)
    hidden = torch.randn(*N, h, generator=g).to(dtype)
    weight = (torch.randn(V, h, generator=g) / h ** 0.5 * 3).to(dtype)     # logits of scale ~3
    targets = torch.randint(0, V, N, generator=g)
    targets[0, :9] = -100                                                    # a prompt, masked
    targets[2, -1] = -100
    return hidden, weight, targets


def _grads_of(loss_fn, hidden, weight, targets, scale=1.0, **kw):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = loss_fn(h, w, targets, **kw)
    gh, gw = torch.autograd.grad(loss * scale, (h, w))
    return loss.detach(), gh, gw


def _full_logits_ce(h, w, t, chunk_size=None):
    return F.cross_entropy((h @ w.t()).float().flatten(0, -2), t.flatten(), ignore_index=-100)


@pytest.mark.parametrize("chunk_size", [16, 1024])
def test_fused_ce_matches_autograd_fp32(chunk_size):
    """fp32, rtol=atol=1e-6 relative to unit-scale values: the same fp32 math (logsumexp, softmax
    minus one-hot, two matmuls), summed in a different order across chunks."""
    hidden, weight, targets = _ce_case(torch.float32)
    got = _grads_of(fused.linear_cross_entropy, hidden, weight, targets, scale=0.5, chunk_size=chunk_size)
    full = _grads_of(_full_logits_ce, hidden, weight, targets, scale=0.5)
    chunked = _grads_of(cross_entropy.linear_cross_entropy, hidden, weight, targets, scale=0.5,
                        chunk_size=chunk_size)
    for a, b, c in zip(got, full, chunked):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)


def test_fused_ce_bf16_matches_the_chunked_reference():
    """bf16 hidden and head, fp32 logits. The loss: the same fp32 math on the same bf16 logits as
    the chunked reference (rtol 1e-6). The gradients are bf16 matmuls of bf16-rounded dlogits, in
    both; dW is accumulated with addmm here and by autograd's chunk sum there, so they are not
    bit-equal: both must be within TOL[bf16] of the float64 truth (measured ~6e-3 for both)."""
    hidden, weight, targets = _ce_case(torch.bfloat16, seed=1)
    got = _grads_of(fused.linear_cross_entropy, hidden, weight, targets, chunk_size=32)
    ref = _grads_of(cross_entropy.linear_cross_entropy, hidden, weight, targets, chunk_size=32)
    truth = _grads_of(_full_logits_ce, hidden.double(), weight.double(), targets)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    for g, r, t in zip(got[1:], ref[1:], truth[1:]):
        assert g.dtype == torch.bfloat16
        assert rel_err(r, t) <= TOL[torch.bfloat16] and rel_err(g, t) <= TOL[torch.bfloat16]


def test_fused_ce_frozen_head_and_no_grad():
    """LoRA freezes the head: no dW is computed or returned; the hidden gradient is unchanged."""
    hidden, weight, targets = _ce_case(torch.float32, seed=2)
    h = hidden.clone().requires_grad_()
    loss = fused.linear_cross_entropy(h, weight, targets, chunk_size=20)
    saved_dh, saved_dw = loss.grad_fn.saved_tensors
    assert saved_dw is None
    loss.backward()
    _, gh_full, _ = _grads_of(_full_logits_ce, hidden, weight, targets)
    torch.testing.assert_close(h.grad, gh_full, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        value = fused.linear_cross_entropy(hidden, weight, targets, chunk_size=20)
    torch.testing.assert_close(value, _full_logits_ce(hidden, weight, targets), rtol=1e-6, atol=1e-6)


def test_fused_ce_errors():
    hidden, weight, targets = _ce_case(torch.float32)
    # Every target ignored: the mean over no tokens is NaN, as F.cross_entropy's is (no host-side
    # check, which would stall the GPU; the train loop refuses such a batch on the CPU).
    ignored = torch.full_like(targets, -100)
    assert torch.isnan(_full_logits_ce(hidden, weight, ignored))
    assert torch.isnan(fused.linear_cross_entropy(hidden, weight, ignored))
    assert torch.isnan(cross_entropy.linear_cross_entropy(hidden, weight, ignored))
    with pytest.raises(ValueError, match="leading"):
        fused.linear_cross_entropy(hidden, weight, targets[:, :-1])
    h = hidden.clone().requires_grad_()
    loss = fused.linear_cross_entropy(h, weight, targets)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_fused_ce_in_a_tiny_model_tied_head():
    """The tied head (lm_head.weight is embed_tokens.weight) gets the fused dW plus the embedding
    gradient; the model's loss (which is the fused one) gives every parameter the gradient the
    readable chunked reference (kernels/cross_entropy.py) gives (fp32, 1e-5: two layers of fp32
    backprop in a different summation order)."""
    from minift.config import ModelConfig
    from minift.model import Transformer
    cfg = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, 97, (2, 12), generator=_gen(5))
    targets = ids.roll(-1, dims=1)
    targets[:, -1] = -100
    from minift.kernels import cross_entropy
    cross_entropy.linear_cross_entropy(model.hidden_states(ids), model.lm_head.weight, targets,
                                       chunk_size=7).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.loss_chunk_size = 10
    model(ids, targets).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-5, atol=1e-6, msg=n)


# =========================================================================== 3. Triton, interpreted

needs_interpreter = pytest.mark.skipif(not IN_INTERPRETER,
                                       reason="runs in the TRITON_INTERPRET=1 child process "
                                              "(test_triton_kernels_under_interpreter)")


@pytest.mark.skipif(IN_INTERPRETER, reason="this is the parent of the interpreter run")
def test_triton_kernels_under_interpreter():
    if not HAVE_TRITON:
        pytest.skip("triton is not installed: the Triton kernels cannot be checked on this machine")
    env = dict(os.environ, TRITON_INTERPRET="1", MINIFT_KERNELS="triton")
    cmd = [sys.executable, "-m", "pytest", __file__, "-q", "-rs", "-p", "no:cacheprovider", "-k", "interp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and " passed" not in out.splitlines()[-1]:
        pytest.skip("the Triton interpreter could not run here:\n" + out[-2000:])
    assert proc.returncode == 0, "Triton kernels under TRITON_INTERPRET=1 failed:\n" + out[-6000:]


@pytest.fixture(scope="module")
def interpreter():
    """Skip (with the error) if this triton's CPU interpreter cannot run a trivial kernel."""
    try:
        x = torch.randn(8)
        w = torch.ones(8)
        rmsnorm.rms_norm_triton(x[None], w, 1e-6)
    except Exception as e:  # noqa: BLE001 - any failure here means "no interpreter", not a bug
        pytest.skip(f"TRITON_INTERPRET=1 cannot run a Triton kernel here: {type(e).__name__}: {e}")


DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h", [48, 40])                 # 40: the row is masked (BLOCK 64)
def test_interp_rmsnorm(interpreter, dtype, h):
    g = _gen(10)
    x = (2 * torch.randn(2, 9, h, generator=g)).to(dtype).requires_grad_()
    w = (1 + 0.2 * torch.randn(h, generator=g)).to(dtype).requires_grad_()
    dy = torch.randn(2, 9, h, generator=g).to(dtype)
    y = rmsnorm.rms_norm_triton(x, w, 1e-6)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64, _ = rmsnorm.rms_norm_forward_torch(x64.reshape(-1, h), w64, 1e-6)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double().reshape(-1, h))
    y_ref = rmsnorm.rms_norm_reference(x, w, 1e-6)
    assert y.dtype == y_ref.dtype and dx.dtype == dtype and dw.dtype == dtype
    assert rel_err(y, y64.view_as(y)) <= TOL[dtype] and rel_err(y_ref, y64.view_as(y)) <= TOL[dtype]
    assert rel_err(dx, dx64) <= TOL[dtype] and rel_err(dw, dw64) <= TOL[dtype]
    if dtype == torch.float16:      # the interpreter rounds fp16 correctly: same ops, same bits
        assert torch.equal(y, y_ref)


@needs_interpreter
def test_interp_rmsnorm_mixed_dtypes(interpreter):
    """fp32 master norm weight with bf16 activations: output and dweight follow the reference's
    type promotion (fp32), dx stays bf16."""
    x = torch.randn(5, 32, generator=_gen(11)).to(torch.bfloat16).requires_grad_()
    w = torch.linspace(0.5, 1.5, 32).requires_grad_()
    y, y_ref = rmsnorm.rms_norm_triton(x, w, 1e-5), rmsnorm.rms_norm_reference(x, w, 1e-5)
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, rtol=1.6e-2, atol=0)  # bf16 y_hat: interpreter truncation
    dx, dw = torch.autograd.grad(y.sum(), (x, w))
    dx_r, dw_r = torch.autograd.grad(y_ref.sum(), (x, w))
    assert dx.dtype == torch.bfloat16 and dw.dtype == torch.float32
    # dweight sums signed terms over tokens (cancellation), so compare to the float64 truth
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64, _ = rmsnorm.rms_norm_forward_torch(x64, w64, 1e-5)
    dx64, dw64 = torch.autograd.grad(y64.sum(), (x64, w64))
    for got, ref, truth in ((dx, dx_r, dx64), (dw, dw_r, dw64)):
        assert rel_err(ref, truth) <= TOL[torch.bfloat16] and rel_err(got, truth) <= TOL[torch.bfloat16]


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hd", [16, 12])                # 12: half = 6, masked (BLOCK_D 8)
def test_interp_rope(interpreter, dtype, hd):
    g = _gen(12)
    B, nh, T = 2, 3, 5
    # q as the model makes it: (B, T, nh, hd) viewed as (B, nh, T, hd), not contiguous
    q = torch.randn(B, T, nh, hd, generator=g).to(dtype).transpose(1, 2).requires_grad_()
    cos, sin = _rope_cos_sin(B, T, hd, dtype, seed=3)
    dy = torch.randn(B, nh, T, hd, generator=g).to(dtype)
    y = rope.apply_rope_triton(q, cos, sin)
    (dx,) = torch.autograd.grad(y, q, dy)
    y_ref = rope.apply_rope_reference(q, cos, sin)
    y64 = rope.apply_rope_reference(q.detach().double(), cos.double(), sin.double())
    dx64 = rope.rope_backward_torch(dy.double(), cos.double(), sin.double(), torch.float64)
    assert y.shape == y_ref.shape and y.stride() == q.stride() and dx.dtype == dtype
    assert rel_err(y, y64) <= TOL[dtype] and rel_err(dx, dx64) <= TOL[dtype]
    if dtype != torch.bfloat16:     # same roundings in the same order (module Note): same bits
        assert torch.equal(y, y_ref)


@needs_interpreter
@pytest.mark.parametrize("dtype", DTYPES)
def test_interp_swiglu(interpreter, dtype):
    g = _gen(13)
    a = (3 * torch.randn(3, 7, 100, generator=g)).to(dtype).requires_grad_()   # 2100: a partial block
    b = torch.randn(3, 7, 100, generator=g).to(dtype).requires_grad_()
    dy = torch.randn(3, 7, 100, generator=g).to(dtype)
    y = swiglu.swiglu_triton(a, b)
    da, db = torch.autograd.grad(y, (a, b), dy)
    a64, b64 = a.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    y64 = F.silu(a64) * b64
    da64, db64 = torch.autograd.grad(y64, (a64, b64), dy.double())
    assert rel_err(y, y64) <= TOL[dtype] and rel_err(da, da64) <= TOL[dtype] and rel_err(db, db64) <= TOL[dtype]
    if dtype == torch.float16:
        # Same roundings as the reference; only fp32 exp may differ by an ulp between numpy (the
        # interpreter) and PyTorch, which after fp16 rounding moves a rare element by one fp16 ulp
        # (measured: 1 of 2100). rtol 2^-10 is one fp16 ulp.
        torch.testing.assert_close(y, swiglu.swiglu_reference(a, b), rtol=2 ** -10, atol=0)


def _bf16_rne_or_truncated(got_bf16: torch.Tensor, exact_fp32: torch.Tensor) -> bool:
    """Each bf16 value is the fp32 value rounded to nearest-even (a GPU's cvt.rn) or truncated
    (the interpreter's cast): i.e. the fp32 values before the cast were identical."""
    truncated = (exact_fp32.view(torch.int32) & -65536).view(torch.float32).to(torch.bfloat16)
    return bool(((got_bf16 == exact_fp32.to(torch.bfloat16)) | (got_bf16 == truncated)).all())


@needs_interpreter
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("shape,blocksize", [((37, 64), 64), ((33, 33), 64), ((65, 257), 64),
                                             ((5, 96), 32), ((3, 4096 + 32), 4096)])
def test_interp_nf4_dequantize_bit_exact(interpreter, shape, blocksize, double_quant):
    """Odd element counts (a half-used last byte), short last blocks, more than 256 blocks (two
    nested blocks: 65 x 257 is 262 blocks), blocksizes 32 and 4096. fp32 and fp16 outputs equal the reference bit for
    bit; bf16 see _bf16_rne_or_truncated."""
    from minift.kernels import nf4
    w = torch.randn(shape, generator=_gen(14)).to(torch.bfloat16)
    packed, state = nf4.quantize(w, blocksize=blocksize, double_quant=double_quant)
    for out_dtype in (torch.float32, torch.float16):
        got = dispatch.dequantize_nf4(packed, state, out_dtype)           # MINIFT_KERNELS=triton here
        assert torch.equal(got, nf4.dequantize(packed, state, out_dtype)), out_dtype
    got = dispatch.dequantize_nf4(packed, state)                          # state.dtype = bf16
    assert got.dtype == torch.bfloat16 and got.shape == shape
    assert _bf16_rne_or_truncated(got, nf4.dequantize(packed, state, torch.float32))


@needs_interpreter
@pytest.mark.parametrize("double_quant", [False, True])
def test_interp_nf4_dequantize_into_a_wider_tensor(interpreter, double_quant):
    """out= (minift/quant.py's wide weight [W, b]): the kernel writes each row's in_features values
    at the row's start in out, bit for bit what it writes alone, and leaves the extra columns as
    they were. 300 rows x 128 is 600 blocks of 64, several programs, each row two blocks. Also into
    a view of a wider storage (supported() takes any out with unit column stride): the view's row
    stride, not its width, places each row."""
    from minift.kernels import nf4
    w = torch.randn(300, 128, generator=_gen(15)).to(torch.bfloat16)
    packed, state = nf4.quantize(w, blocksize=64, double_quant=double_quant)
    for out_dtype in (torch.float32, torch.bfloat16):
        for storage_width in (128 + 5, 192):
            storage = torch.full((300, storage_width), 7.0, dtype=out_dtype)
            wide = storage[:, :128 + 5]                                           # (300, 133), row stride storage_width
            got = dispatch.dequantize_nf4(packed, state, out_dtype, out=wide)     # MINIFT_KERNELS=triton here
            assert got is wide
            assert torch.equal(wide[:, :128], dispatch.dequantize_nf4(packed, state, out_dtype)), out_dtype
            assert bool((storage[:, 128:] == 7.0).all()), (out_dtype, storage_width)


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("V", [300, 4096 + 77])          # one masked block; two blocks, the last partial
def test_interp_softmax_xent(interpreter, dtype, V):
    """Loss per row and (softmax - onehot) * scale against a float64 truth computed from the same
    rounded logits; ignored rows give 0 loss and a zero gradient row. The kernel's log-sum-exp is
    accumulated block by block (module Note), so fp32 agrees to ~1e-6; bf16 gradients carry one
    rounding (and the interpreter truncates instead of rounding: two bf16 ulps, TOL)."""
    from minift.kernels import softmax_xent as xent
    g = _gen(15)
    n, h = 6, 16
    hidden = torch.randn(n, h, generator=g).to(dtype)
    weight = (0.5 * torch.randn(V, h, generator=g)).to(dtype)
    targets = torch.randint(0, V, (n,), generator=g)
    targets[2] = -100
    scale = torch.tensor(1 / 5)
    logits64 = (hidden @ weight.t()).double()                       # the rounded logits, exactly
    lse = torch.logsumexp(logits64, -1)
    counted = targets != -100
    safe = targets.clamp(min=0)
    loss64 = torch.where(counted, lse - logits64.gather(1, safe[:, None]).squeeze(1), 0.0)
    d64 = torch.softmax(logits64, -1)
    d64[torch.arange(n), safe] -= 1.0
    d64 = d64 * torch.where(counted, 1 / 5, 0.0)[:, None]
    for fn in (xent.softmax_xent_triton, xent.softmax_xent_reference):
        losses, dlogits = fn(hidden, weight, targets, scale, True)
        assert losses.dtype == torch.float32 and dlogits.dtype == dtype and dlogits.shape == (n, V)
        torch.testing.assert_close(losses.double(), loss64, rtol=1e-6, atol=1e-5)  # fp32 sums over V terms
        assert rel_err(dlogits, d64) <= TOL[dtype]
        assert not dlogits[2].any()
        only_loss, none = fn(hidden, weight, targets, scale, False)
        assert none is None and torch.equal(only_loss, losses)


@needs_interpreter
def test_interp_tiny_model_with_triton_kernels(interpreter, monkeypatch):
    """The whole decoder with every op on Triton (MINIFT_KERNELS=triton) against the reference
    ops: loss and every gradient, fp32, rtol 1e-5 / atol 1e-6 (different fp32 summation order in
    the norm's reduction, two layers deep)."""
    from minift.config import ModelConfig
    from minift.model import Transformer
    cfg = ModelConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Transformer(cfg)
    ids = torch.randint(0, 97, (1, 5), generator=_gen(6))
    targets = ids.roll(-1, dims=1)
    results = {}
    for mode in ("reference", "triton"):
        monkeypatch.setenv("MINIFT_KERNELS", mode)
        model.zero_grad()
        loss = model(ids, targets)
        loss.backward()
        results[mode] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    torch.testing.assert_close(results["triton"][0], results["reference"][0], rtol=1e-5, atol=1e-6)
    for n, grad in results["reference"][1].items():
        torch.testing.assert_close(results["triton"][1][n], grad, rtol=1e-5, atol=1e-6, msg=n)


def _last_bits(want: torch.Tensor) -> dict:
    """fp32 results of the same operations, rounded differently (test_interp_adamw says why)."""
    return dict(rtol=1e-6, atol=1e-6 * want.abs().max().item())


@needs_interpreter
@pytest.mark.parametrize("dtype,master", [(torch.float32, False), (torch.bfloat16, False), (torch.bfloat16, True),
                                          (torch.float16, False)])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_interp_adamw(interpreter, dtype, master, wd):
    """The fused update against its reference, step by step from the same inputs (3 steps).
    fp32 results (m, v, the master, an fp32 parameter) within 1e-6 of the tensor's largest value:
    the same operations, but PyTorch's vectorised CPU lerp and addcmul fuse a multiply-add (one
    rounding) where numpy here rounds twice, a last-bit difference of the operands (~1e-7 of the
    largest), seen up to 2.2e-8 on m ~ 0.3 (kernels/adamw.py Note); a wrong formula or scalar
    misses by orders more. A bf16 parameter within one bf16 step (2^-7 relative): the interpreter's
    fp32 -> bf16 cast truncates where PyTorch rounds to nearest (TOL above), so an update smaller
    than a step can be lost here and not there; fp16 rounds correctly here (one fp16 step)."""
    p, grads, (m, v, w) = _adamw_case(dtype, master, seed=1)
    start = p.clone()
    for step, grad in enumerate(grads, start=1):
        ref = [t.clone() if t is not None else None for t in (p, m, v, w)]
        adamw.adamw_update_triton([(p, grad, m, v, w)], weight_decay=wd, step=step, **ADAMW)
        adamw.adamw_update_reference(ref[0], grad, *ref[1:], weight_decay=wd, step=step, **ADAMW)
        for got, want in ((m, ref[1]), (v, ref[2])) + (((w, ref[3]),) if master else ()):
            torch.testing.assert_close(got, want, **_last_bits(want))
        if dtype == torch.float32:
            torch.testing.assert_close(p, ref[0], **_last_bits(ref[0]))
        else:
            one_step = {torch.float16: 2 ** -10, torch.bfloat16: 2 ** -7}[dtype]
            torch.testing.assert_close(p, ref[0], rtol=one_step, atol=1e-9)
        for mine, theirs in zip((p, m, v, w), ref):          # the next step starts from the same inputs
            if mine is not None:
                mine.copy_(theirs)
    assert not torch.equal(p, start)                         # the parameter moved


@needs_interpreter
def test_interp_adamw_many_tensors_in_one_launch(interpreter, monkeypatch):
    """minift.optim.AdamW hands every tensor of FUSED_MIN_NUMEL elements or more to one kernel
    launch per kind (kernels/adamw.py Note: one launch for many tensors): here sizes under a block,
    a block exactly, a part-masked block after two, in two kinds (bf16 with a master copy, fp32
    without), and one tensor under the threshold for the foreach lists. All must end where the
    loop path puts them (tolerances as test_interp_adamw). The launch is kept while the tensors
    stay where they were (step 2: gradients copied into the same tensors) and rebuilt when a
    gradient moves (step 3: new gradient tensors)."""
    from minift import optim
    monkeypatch.setattr(optim, "FUSED_MIN_NUMEL", 5)
    g = _gen(4)
    kinds = [torch.bfloat16, torch.bfloat16, torch.bfloat16, torch.float32, torch.float32]
    sizes = [3, 1024, 2 * 1024 + 7, 5, 1000]
    init = [torch.randn(n, generator=g).to(dt) for n, dt in zip(sizes, kinds)]
    grads = [[torch.randn(n, generator=g).to(dt) for n, dt in zip(sizes, kinds)] for _ in range(3)]
    runs, launches = {}, []
    for foreach in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = optim.AdamW(params, lr=1e-2, weight_decay=0.1, master_weights=True, foreach=foreach)
        for step, gs in enumerate(grads, start=1):
            for p, gr in zip(params, gs):
                if p.grad is None or step == 3:
                    p.grad = gr.clone()           # new tensors: steps 1 and 3
                else:
                    p.grad.copy_(gr)              # the same tensors: step 2
            opt.step()
            if foreach:
                launches.append(next(iter(opt._fused_launches.values())))
        runs[foreach] = (params, opt)
    assert launches[1] is launches[0] and launches[2] is not launches[1]
    before, after = launches[1][2].launches, launches[2][2].launches   # step 3: the gradients alone moved,
    assert all(a[1][3] is b[1][3] for a, b in zip(before, after))    # so the block tables were kept
    assert launches[2][1] == [True] * 4         # the kernel took the four of 5+ elements (the 3-element one: the lists)
    assert len(launches[2][2].launches) == 2                     # bf16 + master, fp32: a launch each
    (fused_params, fused_opt), (loop_params, loop_opt) = runs[True], runs[False]
    for pf, pl in zip(fused_params, loop_params):
        sf, sl = fused_opt.state[pf], loop_opt.state[pl]
        for key in ("exp_avg", "exp_avg_sq") + (("master",) if "master" in sl else ()):
            torch.testing.assert_close(sf[key], sl[key], **_last_bits(sl[key]))
        tol = _last_bits(pl.data) if pl.dtype == torch.float32 else dict(rtol=2 ** -7, atol=1e-9)
        torch.testing.assert_close(pf.data, pl.data, **tol)


@needs_interpreter
def test_interp_adamw_gradient_that_no_longer_fits_goes_to_the_lists(interpreter):
    """A gradient that moves and turns non-contiguous (a transposed view) cannot be read flat by
    the kernel: the optimizer notices when it re-points its launch, builds a new one without that
    parameter, and the lists update it; both parameters end where the loop path puts them."""
    from minift import optim
    g = _gen(5)
    init = [torch.randn(32, 64, generator=g), torch.randn(3000, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(2)]
    runs = []
    for foreach in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in init]
        opt = optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=foreach)
        for step, gs in enumerate(grads, start=1):
            params[0].grad = gs[0].clone() if step == 1 else gs[0].t().contiguous().t()   # step 2: not contiguous
            params[1].grad = gs[1].clone()
            opt.step()
        runs.append((params, opt))
    (params, opt), (loop_params, loop_opt) = runs
    assert not params[0].grad.is_contiguous()
    assert next(iter(opt._fused_launches.values()))[1] == [False, True]   # the lists took the first
    for p, q in zip(params, loop_params):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], loop_opt.state[q][key], **_last_bits(loop_opt.state[q][key]))
        torch.testing.assert_close(p.data, q.data, **_last_bits(q.data))


@needs_interpreter
def test_interp_adamw_kept_launch_keeps_no_gradient_alive(interpreter):
    """The optimizer keeps its launch from step to step; the launch must not keep the step's
    gradients: after zero_grad(set_to_none=True) they are freed, as in the loop path (a launch that
    held them put one gradient per parameter more on the next step's peak: the CUDA allocator's
    peak tests in test_on_cuda.py caught it). Step 1 builds the launch, step 2 re-points it."""
    import gc
    import weakref
    from minift import optim
    g = _gen(6)
    params = [torch.nn.Parameter(torch.randn(64, 64, generator=g)), torch.nn.Parameter(torch.randn(3000, generator=g))]
    opt = optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)   # the path CUDA tensors take
    for step in (1, 2):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        grads = [weakref.ref(p.grad) for p in params]
        opt.step()
        assert next(iter(opt._fused_launches.values()))[1] == [True, True]    # the kernel took both
        opt.zero_grad(set_to_none=True)
        gc.collect()
        assert [r() is None for r in grads] == [True, True], f"step {step}: a gradient outlived zero_grad"


@needs_interpreter
def test_interp_adamw_leaves_non_cpu_tensors_to_the_lists(interpreter):
    """Under TRITON_INTERPRET=1 the kernel runs on the CPU and reads its table's addresses as host
    memory, so a tensor elsewhere (here on the meta device; on a GPU host, a CUDA tensor) is not
    supported (the optimizer's lists take it) and a launch built for it is refused by name."""
    p = torch.empty(4096, device="meta")
    m, v = torch.empty_like(p), torch.empty_like(p)
    assert not adamw.supported(p, p, m, v, None)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1 runs the kernel on the CPU; a tensor of shape "
                                         r"\(4096,\) is on meta"):
        adamw.AdamWLaunch([(p, p, m, v, None)])


@needs_interpreter
def test_interp_adamw_on_fsdp2_shards(interpreter, tmp_path):
    """Under FSDP2 the optimizer sees DTensors; the kernel must update their local shards in place
    (minift/optim.py Note: shards). One gloo process (a world of 1) shards a model with fully_shard;
    its large weight goes through the kernel and ends where the same weight trained unsharded by
    the loop path ends, after one step (tolerances as test_interp_adamw_many_tensors_in_one_launch).
    One step: from the second on, the gradients come from weights that differ in the last bits,
    and where a gradient is near zero Adam's m / sqrt(v) turns that into differences of ~1%."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from minift import optim
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'rendezvous'}")
    try:
        torch.manual_seed(0)
        plain = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 8, bias=False))
        sharded = torch.nn.Sequential(*(torch.nn.Linear(l.in_features, l.out_features, bias=False) for l in plain))
        sharded.load_state_dict(plain.state_dict())
        start = plain[0].weight.detach().clone()
        # a CPU mesh, as minift.distributed.prepare gives gloo: left to itself FSDP2 takes CUDA where
        # there is one, and the interpreter cannot read a GPU's addresses from the kernel's table
        fully_shard(sharded, mesh=init_device_mesh("cpu", (1,)))
        x = torch.randn(4, 1024, generator=_gen(3))
        opts = [optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1, foreach=foreach)
                for m, foreach in ((sharded, True), (plain, False))]
        for m, opt in zip((sharded, plain), opts):
            m(x).pow(2).mean().backward()
            opt.step()
        big = sharded[0].weight
        assert isinstance(big, DTensor)
        st = opts[0].state[big]
        local = [optim._local(t) for t in (big, big.grad, st["exp_avg"], st["exp_avg_sq"])]
        assert optim.uses_fused_kernel(*local, None)
        for mine, theirs in zip((big, st["exp_avg"], st["exp_avg_sq"]),
                                (plain[0].weight, opts[1].state[plain[0].weight]["exp_avg"],
                                 opts[1].state[plain[0].weight]["exp_avg_sq"])):
            torch.testing.assert_close(mine.full_tensor(), theirs.detach(), **_last_bits(theirs.detach()))
        assert not torch.equal(big.full_tensor(), start)                      # the weight moved
    finally:
        dist.destroy_process_group()
