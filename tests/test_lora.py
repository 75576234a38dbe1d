"""minift.lora against peft: same adapted layers, same logits, each other's adapter files.

Tiny random Qwen2 and Llama models (hidden 32, 2 layers, vocab 300), fp32 on CPU, no downloads.
minift's decoder reproduces transformers' logits bit for bit in fp32 and a LoRA layer runs the
same torch ops in the same order as peft's lora.Linear (lora_A, lora_B, * scaling, add), so
LoRA parity is asserted exactly (atol=rtol=0); tests that change the order of operations
(merging) state their own bound.
"""
import copy
import json
import logging
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import minift
from minift import lora

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

EXACT = dict(rtol=0, atol=0)  # same fp32 ops in the same order: bitwise equal (measured)
VOCAB = 300


def tiny_hf(arch: str = "qwen2", seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if arch == "qwen2":
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True))
    else:  # Llama with every bias switched on and an untied head: exercises bias="all"/"lora_only"
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **common, attention_bias=True, mlp_bias=True, tie_word_embeddings=False))
    with torch.no_grad():  # HF initialises biases to zero; make them matter
        for n, p in hf.named_parameters():
            if n.endswith(".bias"):
                p.normal_(0.0, 0.05)
    return hf.eval()


def to_minift(hf) -> minift.Transformer:
    model = minift.Transformer(minift.ModelConfig.from_hf_dict(hf.config.to_dict()))
    model.load_state_dict(hf.state_dict())
    return model.eval()


def ids(seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (2, 12), generator=g)


def peft_lora_params(pm) -> dict[str, torch.nn.Parameter]:
    """peft's adapter parameters under minift's names (peft prefix and adapter name removed)."""
    return {n.removeprefix("base_model.model.").replace(".default.", "."): p
            for n, p in pm.named_parameters() if ".lora_" in n}


def adapted(model) -> list[str]:
    return [n for n, _ in lora.lora_layers(model)]


def peft_adapted(pm) -> list[str]:
    return [n.removeprefix("base_model.model.") for n, m in pm.named_modules() if isinstance(m, LoraLayer)]


def randomize_adapter(model, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora.lora_layers(model):
            for w in (layer.lora_A.weight, layer.lora_B.weight):
                w.copy_(torch.randn(w.shape, generator=g) * 0.1)


@pytest.fixture(autouse=True)
def quiet_warnings():
    # transformers/peft deprecation chatter is not what these tests are about
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


# ---------------------------------------------------------------------- parity with peft's LoRA
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("targets", [
    ["q_proj", "v_proj"],                                   # list: leaf names (suffix rule)
    ["model.layers.1.mlp.down_proj", "o_proj"],            # list: a full name and a leaf
    r"model\.layers\.0\.(self_attn\.k|mlp\.up)_proj",      # regex: fullmatch on the full name
    "all-linear",
])
def test_logits_match_peft(arch, targets):
    hf = tiny_hf(arch)
    model = to_minift(hf)
    # Same seed before wrapping: peft and minift create A, B in the same order with the same
    # init (kaiming_uniform(a=sqrt(5)), B = 0), so the default init itself must agree.
    torch.manual_seed(7)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(7)
    lora.add_lora(model, r=4, alpha=8, targets=targets)
    assert adapted(model) == peft_adapted(pm)
    theirs, ours = peft_lora_params(pm), dict(model.named_parameters())
    for k, p in theirs.items():
        torch.testing.assert_close(ours[k], p, **EXACT)       # identical default init
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(theirs)

    with torch.no_grad():  # a non-zero B, so the adapter changes the logits
        for k, p in theirs.items():
            p.normal_(0.0, 0.1)
            ours[k].copy_(p)
    x = ids()
    with torch.no_grad():
        got, want, base = model(x), pm(x).logits, hf(x).logits
    assert (want - base).abs().max() > 1e-3  # the adapter is doing something (1e-3 = ~1000 ulps here)
    torch.testing.assert_close(got, want, **EXACT)


def test_rslora_and_gaussian_init_match_peft():
    hf = tiny_hf("qwen2")
    model = to_minift(hf)
    torch.manual_seed(11)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=6, target_modules="all-linear",
                                                      use_rslora=True, init_lora_weights="gaussian"))
    torch.manual_seed(11)
    lora.add_lora(model, r=4, alpha=6, use_rslora=True, init="gaussian")
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.scaling == 6 / 2.0  # alpha / sqrt(r)
    theirs, ours = peft_lora_params(pm), dict(model.named_parameters())
    for k, p in theirs.items():
        torch.testing.assert_close(ours[k], p, **EXACT)       # N(0, 1/r) drawn identically
    with torch.no_grad():
        for k, p in theirs.items():
            p.normal_(0.0, 0.1)
            ours[k].copy_(p)
        torch.testing.assert_close(model(ids()), pm(ids()).logits, **EXACT)


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_bias_option_trains_and_saves_what_peft_does(bias, tmp_path):
    hf = tiny_hf("llama")
    model = to_minift(hf)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"],
                                                      bias=bias))
    lora.add_lora(model, r=4, alpha=8, targets=["q_proj", "up_proj"], bias=bias)
    ours = {n for n, p in model.named_parameters() if p.requires_grad}
    theirs = {n.removeprefix("base_model.model.").replace(".default.", ".")
              for n, p in pm.named_parameters() if p.requires_grad}
    assert ours == theirs
    assert any(n.endswith("bias") for n in ours)

    pm.save_pretrained(tmp_path / "peft")
    lora.save_adapter(model, tmp_path / "minift")
    from safetensors import safe_open
    keys = []
    for d in ("peft", "minift"):
        with safe_open(str(tmp_path / d / "adapter_model.safetensors"), "pt") as f:
            keys.append(sorted(f.keys()))
    assert keys[0] == keys[1]


def test_count_parameters_matches_peft():
    hf = tiny_hf("qwen2")
    model = to_minift(hf)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    lora.add_lora(model, r=8, alpha=16)
    counts = lora.count_parameters(model)
    assert tuple(counts) == pm.get_nb_trainable_parameters()
    assert str(counts).startswith(f"trainable params: {counts.trainable:,} || all params: {counts.total:,}")
    assert sum(p.numel() for p in lora.trainable_parameters(model)) == counts.trainable


def test_bf16_layer_matches_peft_dtypes():
    """A bf16 base with fp32 adapter weights (peft's autocast_adapter_dtype): same output bits as
    peft's lora.Linear, whose order is x->fp32, adapter in fp32, add in fp32, cast to bf16."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(32, 48, dtype=torch.bfloat16))
    pm = get_peft_model(copy.deepcopy(net), LoraConfig(r=4, lora_alpha=8, target_modules=["proj"],
                                                       init_lora_weights=False))
    ours = lora.add_lora(copy.deepcopy(net), r=4, alpha=8, targets=["proj"])
    layer = ours.proj
    assert layer.lora_A.weight.dtype == torch.float32 == pm.base_model.model.proj.lora_A["default"].weight.dtype
    with torch.no_grad():
        layer.lora_A.weight.copy_(pm.base_model.model.proj.lora_A["default"].weight)
        layer.lora_B.weight.copy_(pm.base_model.model.proj.lora_B["default"].weight)
        x = torch.randn(3, 5, 32).to(torch.bfloat16)
        y = layer(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, pm(x), **EXACT)
    kept = lora.add_lora(copy.deepcopy(net), r=4, alpha=8, targets=["proj"], adapter_dtype=None)
    assert kept.proj.lora_B.weight.dtype == torch.bfloat16


def test_bf16_compute_matches_peft_under_autocast():
    """compute_dtype=bf16 (fp32 adapter weights, bf16 matmuls) is what peft computes inside
    torch.autocast(bf16), HF Trainer's bf16=True: the same casts in the same order, so the output
    and the fp32 gradients of A and B are bitwise equal (CPU autocast, measured)."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("proj", nn.Linear(32, 48, dtype=torch.bfloat16))
    pm = get_peft_model(copy.deepcopy(net), LoraConfig(r=4, lora_alpha=8, target_modules=["proj"],
                                                       init_lora_weights=False))
    ours = lora.add_lora(copy.deepcopy(net), r=4, alpha=8, targets=["proj"], compute_dtype=torch.bfloat16)
    layer, theirs = ours.proj, pm.base_model.model.proj
    with torch.no_grad():
        layer.lora_A.weight.copy_(theirs.lora_A["default"].weight)
        layer.lora_B.weight.copy_(theirs.lora_B["default"].weight)
    x = torch.randn(3, 5, 32).to(torch.bfloat16)
    y = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = pm(x)
    assert y.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(y, want, **EXACT)
    y.float().square().sum().backward()
    want.float().square().sum().backward()
    for ours_w, their_w in ((layer.lora_A.weight, theirs.lora_A["default"].weight),
                            (layer.lora_B.weight, theirs.lora_B["default"].weight)):
        assert ours_w.grad.dtype == torch.float32
        torch.testing.assert_close(ours_w.grad, their_w.grad, **EXACT)
    # and it differs from fp32 adapter math (so the test can tell the two apart)
    fp32 = lora.add_lora(copy.deepcopy(net), r=4, alpha=8, targets=["proj"])
    fp32.proj.load_state_dict(layer.state_dict())
    assert not torch.equal(fp32.proj(x), y)


# ---------------------------------------------------------------------- adapter files, both ways
def test_minift_adapter_loads_in_peft(tmp_path):
    hf = tiny_hf("qwen2")
    model = to_minift(hf)
    model.config.name_or_path = "tiny/qwen2"
    lora.add_lora(model, r=4, alpha=16, targets="all-linear", use_rslora=True, bias="lora_only")
    randomize_adapter(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.base_layer.bias.add_(0.3)  # a "trained" bias travels too
    lora.save_adapter(model, tmp_path)

    raw = json.loads((tmp_path / "adapter_config.json").read_text())
    assert list(raw) == sorted(raw)
    assert raw["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert raw["base_model_name_or_path"] == "tiny/qwen2" and raw["r"] == 4 and raw["lora_alpha"] == 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = LoraConfig.from_pretrained(str(tmp_path))
    assert not [w for w in caught if "unexpected" in str(w.message).lower() or "unknown" in str(w.message).lower()]
    assert (cfg.r, cfg.lora_alpha, cfg.use_rslora, cfg.bias, cfg.task_type) == (4, 16, True, "lora_only", "CAUSAL_LM")

    from safetensors import safe_open
    with safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in f.keys()

    pm = PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(pm(ids()).logits, model(ids()), **EXACT)


@pytest.mark.parametrize("arch,kwargs", [
    ("qwen2", dict(target_modules="all-linear", bias="lora_only")),        # peft writes full names
    ("llama", dict(target_modules=r".*\.(q|v|down)_proj", use_rslora=True, bias="all")),
])
def test_peft_adapter_loads_in_minift(arch, kwargs, tmp_path):
    hf = tiny_hf(arch)
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **kwargs))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if n.endswith(".bias"):
                p.add_(0.1)  # peft saves the biases the option trains: changed ones must arrive
    pm.save_pretrained(str(tmp_path))
    model = lora.load_adapter(to_minift(hf), str(tmp_path))
    assert adapted(model) == peft_adapted(pm)
    assert not any(p.requires_grad for p in model.parameters())  # trainable=False: inference
    with torch.no_grad():
        torch.testing.assert_close(model(ids()), pm(ids()).logits, **EXACT)
    trainable = lora.load_adapter(to_minift(hf), str(tmp_path), trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == \
        {n.removeprefix("base_model.model.").replace(".default.", ".") for n, p in pm.named_parameters()
         if p.requires_grad}


def test_save_load_roundtrip_regex_single_layer(tmp_path):
    """A regex adapting one layer must not save as the leaf name "q_proj" (that would adapt every layer)."""
    hf = tiny_hf("qwen2")
    model = lora.add_lora(to_minift(hf), r=2, alpha=4, targets=r"model\.layers\.1\.self_attn\.q_proj")
    randomize_adapter(model)
    lora.save_adapter(model, tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())["target_modules"]
    assert saved == ["model.layers.1.self_attn.q_proj"]
    again = lora.load_adapter(to_minift(hf), str(tmp_path))
    assert adapted(again) == ["model.layers.1.self_attn.q_proj"]
    with torch.no_grad():
        torch.testing.assert_close(again(ids()), model(ids()), **EXACT)
    pm = PeftModel.from_pretrained(copy.deepcopy(hf), str(tmp_path))
    assert peft_adapted(pm) == ["model.layers.1.self_attn.q_proj"]


# ---------------------------------------------------------------------- merge
def test_merge_unmerge_and_unload():
    hf = tiny_hf("qwen2")
    model = lora.add_lora(to_minift(hf), r=4, alpha=8)
    randomize_adapter(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = ids()
    with torch.no_grad():
        unmerged = model(x)
        lora.merge(model)
        assert all(layer.merged for _, layer in lora.lora_layers(model))
        merged = model(x)
    # x @ (W + s*B@A)^T versus x @ W^T + s*(x @ A^T) @ B^T: the same sum rounded in another order;
    # fp32 keeps ~7 digits and the logits are O(1), so 1e-5 absolute is a few dozen ulps at most.
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    w = model.model.layers[0].mlp.down_proj.base_layer.weight
    d = model.model.layers[0].mlp.down_proj.delta_weight()
    torch.testing.assert_close(w, before["model.layers.0.mlp.down_proj.base_layer.weight"] + d, **EXACT)

    lora.unmerge(model)
    for n, p in model.named_parameters():
        if n.endswith("base_layer.weight"):
            w0 = before[n]
            layer = model.get_submodule(n.removesuffix(".base_layer.weight"))
            # (W + d) - d in fp32 rounds twice: half an ulp of |W + d| then half an ulp of |W|,
            # so the error is at most 2^-24 * (|W + d| + |W|) elementwise (subtraction, as peft does).
            bound = 2.0 ** -24 * ((w0 + layer.delta_weight()).abs() + w0.abs())
            assert ((p - w0).abs() <= bound).all(), n
        else:
            assert torch.equal(p, before[n]), n
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)  # same reason as above

    keys = set(hf.state_dict())
    lora.merge_and_unload(model)
    assert not lora.lora_layers(model) and not hasattr(model, "lora_config")
    assert type(model.model.layers[0].self_attn.q_proj) is nn.Linear
    assert set(model.state_dict()) == keys  # a plain model again: save_pretrained writes HF names
    with torch.no_grad():
        torch.testing.assert_close(model(x), unmerged, rtol=0, atol=1e-5)  # same reason as above


def test_merge_and_unload_matches_peft():
    hf = tiny_hf("llama")
    pm = get_peft_model(copy.deepcopy(hf), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      init_lora_weights=False))
    model = lora.add_lora(to_minift(hf), r=4, alpha=8)
    with torch.no_grad():
        for k, p in peft_lora_params(pm).items():
            dict(model.named_parameters())[k].copy_(p)
    merged_hf = pm.merge_and_unload()
    lora.merge_and_unload(model)
    # W + s*(B@A): peft adds (B@A)*s to W in fp32, minift forms the same fp32 sum: equal bits.
    for k, v in merged_hf.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, **EXACT, msg=k)


# ---------------------------------------------------------------------- training
def test_optimizer_step_touches_only_the_adapter_and_chosen_biases():
    hf = tiny_hf("llama")
    model = lora.add_lora(to_minift(hf), r=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], bias="lora_only")
    model.train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW(lora.trainable_parameters(model), lr=1e-2)
    x = ids()
    for _ in range(2):  # with B = 0 at step 1 only B gets a gradient; by step 2 A gets one too
        loss = model(x[:, :-1], targets=x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None, n
            assert torch.equal(p, frozen[n]), n
    expect = set()
    for n, _ in lora.lora_layers(model):
        expect |= {f"{n}.lora_A.weight", f"{n}.lora_B.weight", f"{n}.base_layer.bias"}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expect
    b = model.model.layers[0].self_attn.q_proj
    assert b.lora_B.weight.abs().max() > 0 and not torch.equal(b.base_layer.bias, hf.state_dict()[
        "model.layers.0.self_attn.q_proj.bias"])


# ---------------------------------------------------------------------- bad input
def test_no_target_matched_lists_the_linear_layers():
    model = to_minift(tiny_hf("qwen2"))
    with pytest.raises(ValueError, match=r"no module matched.*q_proj.*model\.layers\.0\.self_attn"):
        lora.add_lora(model, targets=["query"])
    with pytest.raises(ValueError, match="only linear layers"):
        lora.add_lora(model, targets=["self_attn"])
    with pytest.raises(ValueError, match="lm_head"):
        lora.add_lora(model, targets=["lm_head"])
    assert not lora.lora_layers(model)  # a refused call leaves the model alone


def test_add_twice_and_large_rank(caplog):
    model = to_minift(tiny_hf("qwen2"))
    with caplog.at_level(logging.WARNING, logger="minift.lora"):
        lora.add_lora(model, r=64, alpha=128)
    assert "r=64" in caplog.text
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.add_lora(model)


def test_adapter_for_another_base_names_module_and_shapes(tmp_path):
    small = lora.add_lora(to_minift(tiny_hf("qwen2")), r=4, alpha=8, targets=["q_proj"])
    lora.save_adapter(small, tmp_path)
    torch.manual_seed(0)
    other = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2))
    big = to_minift(other)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*\(4, 32\).*\(4, 48\)"):
        lora.load_adapter(big, str(tmp_path))
    assert not lora.lora_layers(big)  # checked before anything was changed


def test_wrong_rank_and_unknown_keys(tmp_path):
    model = lora.add_lora(to_minift(tiny_hf("qwen2")), r=4, alpha=8, targets=["q_proj"])
    lora.save_adapter(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**cfg, "r": 8}))
    with pytest.raises(ValueError, match=r"rank 4 but adapter_config.json says r=8"):
        lora.load_adapter(to_minift(tiny_hf("qwen2")), str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file
    t = load_file(str(tmp_path / "adapter_model.safetensors"))
    t["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"] = torch.zeros(4, 32)
    save_file(t, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"gate_proj.*not a LoRA target"):
        lora.load_adapter(to_minift(tiny_hf("qwen2")), str(tmp_path))
    t.pop("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight")
    t["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 32)
    save_file(t, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match=r"layers\.9\.self_attn\.q_proj.*does not exist"):
        lora.load_adapter(to_minift(tiny_hf("qwen2")), str(tmp_path))


def test_missing_config_pickle_only_and_unsupported(tmp_path):
    model = to_minift(tiny_hf("qwen2"))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        lora.load_adapter(model, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                              "target_modules": ["q_proj"]}))
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        lora.load_adapter(model, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        lora.load_adapter(model, str(tmp_path))
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA",\n "r": 4,,}')
    with pytest.raises(ValueError, match="line 2"):
        lora.load_adapter(model, str(tmp_path))
    assert not lora.lora_layers(model)


def test_dropout_is_recomputed_not_saved_on_cpu():
    """LoRA dropout on CPU: the same output and gradients as dropout applied in the plain way with
    the same RNG stream (bit for bit), and autograd keeps no dropped copy of x (the Note on
    dropout without a copy in minift/lora.py): the saved bytes are no more than with no dropout."""
    from minift.lora import LoRALinear

    torch.manual_seed(0)
    base = nn.Linear(64, 96)
    x = torch.randn(4, 32, 64, requires_grad=True)
    layer = LoRALinear(base, r=8, alpha=16, dropout=0.3, init=False).train()

    def saved_bytes(module):
        total = [0]
        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        return total[0]

    torch.manual_seed(1)
    out = layer(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.lora_A.weight, layer.lora_B.weight)] + [x.grad.clone()]
    after_ours = torch.rand(1)                                       # where the RNG stream went on

    torch.manual_seed(1)                                             # the plain path, written out
    dropped = F.dropout(x, 0.3, training=True)
    a, b = layer.lora_A.weight.detach().requires_grad_(), layer.lora_B.weight.detach().requires_grad_()
    x.grad = None
    ref = base(x) + F.linear(F.linear(dropped, a), b) * layer.scaling
    ref.square().sum().backward()
    assert torch.equal(out, ref)
    for got, want in zip(grads, [a.grad, b.grad, x.grad]):
        assert torch.equal(got, want)
    assert torch.equal(after_ours, torch.rand(1))                    # the recompute left the stream alone

    no_dropout = LoRALinear(base, r=8, alpha=16, dropout=0.0, init=False).train()
    # at most what no dropout saves (the checkpoint holds x, not lora_A's weight); a dropped copy
    # of x and its mask would add 40 KiB here
    assert saved_bytes(layer) <= saved_bytes(no_dropout)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_layer_checkpointing_gives_the_plain_gradients(dropout):
    """Gradient checkpointing of a LoRA model (minift/model.py, Note: which checkpoint): the first
    layer's input (the frozen embedding's) needs no grad, so it keeps the non-reentrant checkpoint;
    the layers above take the reentrant one. Every adapter gradient equals the plain backward's bit
    for bit on CPU (the same ops replayed, the dropout masks redrawn from the restored RNG state),
    and none is missing: a reentrant first layer would cut every adapter off."""
    from minift import model as model_module

    def grads(checkpointing: bool, picked: list | None = None):
        model = to_minift(tiny_hf())
        lora.add_lora(model, r=4, alpha=8, dropout=dropout, init=False)
        model.train()
        model.gradient_checkpointing = checkpointing
        rule = model_module._reentrant
        if picked is not None:
            model_module._reentrant = lambda layer, x: picked.append(rule(layer, x)) or picked[-1]
        try:
            torch.manual_seed(3)
            model(ids(), ids(2)).backward()
        finally:
            model_module._reentrant = rule
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    picked = []
    plain, checkpointed = grads(False), grads(True, picked)
    assert picked == [False, True]                   # layer 0 non-reentrant, layer 1 reentrant
    assert plain.keys() == checkpointed.keys() and all(g is not None for g in checkpointed.values())
    for name, g in plain.items():
        assert torch.equal(g, checkpointed[name]), name
