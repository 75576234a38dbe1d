"""minift.fused_projections: q/k/v and gate/up as one matmul each give the loss and the adapter
gradients of the unfused model, leave no trace after the block, and stay off where they cannot work."""
import pytest
import torch
import torch.nn as nn

import minift
from minift import fused_projections, lora, quant

VOCAB = 97


def tiny_model(bias: bool, dtype=torch.float32, seed: int = 0) -> minift.Transformer:
    cfg = minift.ModelConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, qkv_bias=bias, mlp_bias=bias,
                             tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = minift.Transformer(cfg).to(dtype)
    with torch.no_grad():  # biases start at zero; make them matter
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model


def adapted(bias: bool, dropout: float = 0.0, r: int = 4, **kw) -> minift.Transformer:
    model = lora.add_lora(tiny_model(bias, **kw), r=r, alpha=2 * r, dropout=dropout)
    with torch.no_grad():  # B starts at zero; give the adapters something to add
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model.train()


def batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    return ids, ids.roll(-1, dims=1)


def loss_and_grads(model):
    """One forward and backward on batch(), on the model's device; the loss and the gradients on the CPU."""
    device = next(model.parameters()).device
    ids, targets = (t.to(device) for t in batch())
    model.zero_grad(set_to_none=True)
    loss = model(ids, targets)
    loss.backward()
    return loss.detach().cpu(), {n: p.grad.cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


# fp32 on the CPU: the fused matmul sums each output over the same K in the same blocks as the
# separate ones, but MKL may order a wider product's reduction differently; 1e-5 relative is a few
# fp32 ulps times the depth of a two-layer model, far below any effect of a wrong adapter.
CLOSE = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "qkv+mlp-bias"])
def test_fused_gives_the_unfused_loss_and_gradients(bias):
    model = adapted(bias)
    loss, grads = loss_and_grads(model)
    with fused_projections.fused(model) as groups:
        assert groups == 4                                       # q/k/v and gate/up in each of two layers
        fused_loss, fused_grads = loss_and_grads(model)
    torch.testing.assert_close(fused_loss, loss, **CLOSE)
    assert fused_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], **CLOSE, msg=name)


def bf16_adapted(bias: bool, seed: int = 0) -> minift.Transformer:
    """A bf16 base with bf16 adapter math (the fast path's LoRA): its adapters stay fp32 tensors."""
    model = adapted(bias, dtype=torch.bfloat16, seed=seed)
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            m.compute_dtype = torch.bfloat16
    return model


def in_fp64(model: minift.Transformer) -> minift.Transformer:
    """The same weights computed in fp64, adapters included: .double() alone would leave each
    adapter's compute_dtype at bf16, its math rounded as in the model under test."""
    model = model.double()
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            m.compute_dtype = None
    return model


def distance_from_fp64(loss, grads, exact_loss, exact_grads):
    """|loss error| and each gradient's relative distance ||g - exact|| / ||exact||."""
    return abs(loss.double() - exact_loss).item(), \
        {n: ((grads[n].double() - exact_grads[n]).norm() / exact_grads[n].norm()).item() for n in exact_grads}


def assert_near_fp64(loss_err, errs):
    """bf16 rounds every product to 8 bits of mantissa, so no bf16 path gives the fp64 numbers.
    Measured over seeds 0-19 (this tiny model, large adapters; against in_fp64, adapters in fp64
    too): the adapters' gradients land on average 2.3% (relative norm) from fp64 unfused and 2.2%
    fused (a seed's mean at most 3.8% and 4.9%), the farthest single tensor 8.8% and 12.8%, the
    loss 2e-4 on average and at most 5e-4; the NF4 model (nf4_adapted) 1.5% both ways (at most 2.4%
    and 2.6%), 6.4% and 5.5%, the loss at most 5e-4. The paths round in different places (fused:
    the base + adapter sum rounded once inside one matmul; unfused: each product rounded, then
    added) and which tensor comes out closer changes from seed to seed. The bounds below hold for
    all twenty seeds, the seed-mean one only just (4.9% of 5%) for one bf16 seed; the tests run
    seeds 0 and 1. A wrong adapter, scaling or block puts a gradient O(1) away."""
    assert loss_err <= 1e-3, loss_err
    assert sum(errs.values()) / len(errs) <= 0.05, errs
    assert max(errs.values()) <= 0.2, errs


@pytest.mark.parametrize("seed", [0, 1])
def test_bf16_base_with_bf16_adapter_math_matches_too(seed):
    model = bf16_adapted(False, seed)
    exact = in_fp64(bf16_adapted(False, seed))   # the same bf16 weights, computed in fp64
    exact_loss, exact_grads = loss_and_grads(exact)
    assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))   # unfused
    with fused_projections.fused(model):
        assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))


def nf4_adapted(seed: int = 0, dropout: float = 0.0) -> minift.Transformer:
    """QLoRA as the fast path trains it: NF4 bases computing in bf16, bf16 adapter math over fp32
    adapter weights, biases on q/k/v and the MLP."""
    model = lora.add_lora(quant.quantize_model(tiny_model(True, dtype=torch.bfloat16, seed=seed)), r=4, alpha=8,
                          dropout=dropout)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            m.compute_dtype = torch.bfloat16
    return model.train()


@pytest.mark.parametrize("seed", [0, 1])
def test_nf4_groups_match_the_unfused_model(seed):
    """NF4 bases with the adapters inside their products (Note: NF4 groups) against the same
    quantized weights computed in fp64, beside the unfused model: the bf16 noise of the test above."""
    model = nf4_adapted(seed)
    exact_loss, exact_grads = loss_and_grads(in_fp64(nf4_adapted(seed)))   # dequantized to fp64, same codes
    assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))   # unfused
    with fused_projections.fused(model) as groups:
        assert groups == 4
        assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))


def test_nf4_group_returns_the_inputs_dtype_as_unfused():
    """An fp32 model over NF4 products computing in bf16 (quantize_model(compute_dtype=bf16)):
    each projection computes in bf16 and hands back fp32, fused or not."""
    model = lora.add_lora(quant.quantize_model(tiny_model(False), compute_dtype=torch.bfloat16), r=4, alpha=8)
    attn = model.model.layers[0].self_attn
    for m in model.modules():
        if isinstance(m, lora.LoRALinear):
            m.compute_dtype = torch.bfloat16
    x = torch.randn(2, 8, 64)
    unfused = [p(x) for p in (attn.q_proj, attn.k_proj, attn.v_proj)]
    with fused_projections.fused(model) as groups:
        assert groups == 4
        fused = fused_projections.linear(x, None, None, (attn.q_proj, attn.k_proj, attn.v_proj))
    for got, want in zip(fused, unfused):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02)   # bf16 products, rounded in other places


def test_nf4_linear_with_adapters_against_autograd():
    """The NF4 product with the adapters inside: its value is x W^T + xa b^T + bias with W the
    dequantized weight, and its backward (d [x, xa], d b, d bias) passes torch.autograd.gradcheck
    in fp64. xa is an input only to be kept for d b, so its own gradient is none."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    base = quant.Linear4bit.from_linear(nn.Linear(64, 6), blocksize=32).double()   # dequantizes to fp64
    x = torch.randn(2, 3, 64, dtype=torch.float64, generator=g)                          # (..., in)
    xa = torch.randn(2, 3, 4, dtype=torch.float64, generator=g)                          # (..., R)
    x_xa = torch.cat([x, xa], dim=-1).requires_grad_()                                   # (..., in + R)
    b = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)          # (out, R)
    bias = base.bias.detach().clone().requires_grad_()

    def f(x_xa, b, bias):
        return quant._nf4_linear_with_adapters(x_xa, x_xa[..., 64:].detach(), bias, b, *base.op_args())
    assert torch.autograd.gradcheck(f, (x_xa, b, bias))
    y = quant.nf4_linear_with_adapters(x_xa, xa, base, b)
    torch.testing.assert_close(y, x @ base.dequantize().T + xa @ b.T + base.bias, rtol=1e-12, atol=1e-12)


def test_base_and_adapters_gradients_against_autograd():
    """base_and_adapters' own backward against torch.autograd.gradcheck (fp64, finite differences):
    d x, d xa and d b, and no gradient for the frozen weight and bias."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.float64, generator=g, requires_grad=True)      # (..., in)
    xa = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)     # (..., R)
    weight = torch.randn(6, 5, dtype=torch.float64, generator=g)                        # (out, in)
    bias = torch.randn(6, dtype=torch.float64, generator=g)
    b = torch.randn(6, 4, dtype=torch.float64, generator=g, requires_grad=True)         # (out, R)
    assert torch.autograd.gradcheck(fused_projections.base_and_adapters, (x, xa, weight, bias, b))
    y = fused_projections.base_and_adapters(x, xa, weight, bias, b)
    torch.testing.assert_close(y, x @ weight.T + xa @ b.T + bias, rtol=1e-12, atol=1e-12)


def test_the_block_leaves_the_model_as_it_was():
    model = adapted(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    with fused_projections.fused(model):
        attn = model.model.layers[0].self_attn
        q_base = attn.q_proj.base_layer
        # the projections' weights are rows of the one fused buffer, not copies of it
        assert q_base.weight.untyped_storage().data_ptr() == attn.qkv_weight.untyped_storage().data_ptr()
        assert set(model.state_dict()) == set(before)            # the buffers are not saved
    after = model.state_dict()
    assert set(after) == set(before)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    for layer in model.model.layers:
        assert layer.self_attn.qkv_weight is None and layer.mlp.gate_up_weight is None
    storages = {p.untyped_storage().data_ptr() for n, p in model.named_parameters() if "lora" not in n}
    assert len(storages) == sum(1 for n, _ in model.named_parameters() if "lora" not in n)  # none shared
    assert {n: p.data_ptr() for n, p in model.named_parameters() if "lora" in n} == \
        {n: q for n, q in pointers.items() if "lora" in n}       # the trained tensors are the same objects


def test_one_dropout_mask_serves_the_group():
    """With dropout, q, k and v see one mask: the adapters' down-projections of one dropped x."""
    model = adapted(False, dropout=0.5)
    attn = model.model.layers[0].self_attn
    seen = []
    attn.q_proj.lora_dropout.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 8, 64)
    with fused_projections.fused(model):
        assert attn.qkv_weight is not None
        torch.manual_seed(0)
        fused_projections.linear(x, attn.qkv_weight, attn.qkv_bias, (attn.q_proj, attn.k_proj, attn.v_proj))
    assert len(seen) == 1                                         # one dropout for the three adapters
    kept = seen[0] != 0
    assert 0.3 < kept.float().mean() < 0.7                        # at rate p = 0.5


def test_what_is_left_unfused():
    full = tiny_model(False)                                      # every weight trains: the buffer would hide it
    with fused_projections.fused(full) as groups:
        assert groups == 0
    q4 = lora.add_lora(quant.quantize_model(tiny_model(False, dtype=torch.bfloat16)), r=4, alpha=8)
    with fused_projections.fused(q4) as groups:
        assert groups == 0                                        # fp32 adapter math over bf16 NF4 products
    for m in q4.modules():
        if isinstance(m, lora.LoRALinear):
            m.compute_dtype = torch.bfloat16
    with fused_projections.fused(q4) as groups:
        assert groups == 4                                        # bf16 adapter math: the fast path's QLoRA
    only_q = lora.add_lora(tiny_model(False), r=4, alpha=8, targets=["q_proj", "v_proj", "gate_proj", "up_proj"])
    with fused_projections.fused(only_q) as groups:
        assert groups == 2                                        # gate/up in each layer; k has no adapter
    frozen = tiny_model(False)
    frozen.requires_grad_(False)
    with fused_projections.fused(frozen) as groups:              # a plain frozen base: the products alone
        assert groups == 4
        ids, _ = batch()
        fused_logits = frozen(ids)
    torch.testing.assert_close(fused_logits, frozen(ids), **CLOSE)


def test_undone_when_the_block_raises():
    model = adapted(False)
    with pytest.raises(RuntimeError, match="stop"):
        with fused_projections.fused(model):
            raise RuntimeError("stop")
    assert all(layer.self_attn.qkv_weight is None for layer in model.model.layers)
    assert isinstance(model.model.layers[0].self_attn.q_proj.base_layer.weight, nn.Parameter)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_recipes_training_block_fuses_trains_and_undoes(caplog, method):
    """fast_path.train_with, as the recipes call it with the plan CUDA gets (here on the CPU):
    it says how many groups it fused, trains the adapters through them, and unfuses after.
    QLoRA as the capstone's --method qlora runs it: bf16 adapter math, dropout 0.05."""
    import dataclasses
    import logging
    from minift import fast_path
    from minift.train import TrainConfig
    model = adapted(True) if method == "lora" else nf4_adapted(0, dropout=0.05)
    a_before = model.model.layers[0].self_attn.q_proj.lora_A.weight.detach().clone()
    plan = dataclasses.replace(fast_path.decide("cpu", torch.float32, method=method, one_shape=True),
                               fused_projections=True)
    ids, targets = batch()
    with caplog.at_level(logging.INFO, logger="minift.fast_path"):
        result, _ = fast_path.train_with(plan, model, [{"input_ids": ids, "targets": targets}] * 2, None,
                                         TrainConfig(steps=2, lr=1e-2, progress=False))
    assert "fused projections: 4 q/k/v and gate/up groups fused" in caplog.text
    assert len(result.losses) == 2
    assert not torch.equal(model.model.layers[0].self_attn.q_proj.lora_A.weight, a_before)  # it trained
    assert all(not layer.self_attn.fused and not layer.mlp.fused for layer in model.model.layers)
    assert all(layer.self_attn.qkv_weight is None and layer.mlp.gate_up_weight is None for layer in model.model.layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled CUDA path")
@pytest.mark.parametrize("build", [lambda: bf16_adapted(True), lambda: nf4_adapted(0)], ids=["bf16", "nf4"])
def test_compiled_on_cuda_matches_fp64(build):
    """What the recipes run on a GPU, compiled, unfused and fused: LoRA over a bf16 base with bf16
    adapter math, and QLoRA (the Triton dequantize writing into the wide weight [W, b]). The fp64
    reference runs on the CPU: minift's CUDA kernels (Triton) are written for 16- and 32-bit floats.
    bf16 on tensor cores: the noise of the CPU bf16 tests above."""
    from minift import fast_path
    model = build().cuda()
    exact_loss, exact_grads = loss_and_grads(in_fp64(build()))
    with fast_path.compiled_layers(model, True):
        assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))      # unfused
    with fused_projections.fused(model) as groups, fast_path.compiled_layers(model, True):
        assert groups == 4
        assert_near_fp64(*distance_from_fp64(*loss_and_grads(model), exact_loss, exact_grads))
