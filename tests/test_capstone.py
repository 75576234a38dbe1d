"""The capstone recipe (minift.finetune, scripts/lora_qwen.py) end to end, offline, on a tiny base.

The base is made the way the embedded default is made: minift.scratch.train_from_scratch on
synthetic Korean stories (here a 2-layer, hidden-64 model with a 1,000-token BPE, 15 steps). Then
40 instruction pairs (minift.fairytales) are fine-tuned three ways, 3 steps each:

  lora   the adapter directory is peft's layout; it reloads into a fresh base (minift.lora.load_adapter)
         to the very model that was trained; peft's PeftModel on transformers' copy of the base gives
         the same logits; the merged export loads in transformers with the same logits.
  qlora  the same, over a freshly NF4-quantized base.
  full   the whole model is saved and reloads to the trained model.

"The trained model" is rebuilt independently of the adapter file, from the training loop's own
checkpoint (out_dir/train/checkpoint/model.safetensors: the trainable tensors by parameter name),
and the report's held-out loss and seeded sample (computed in finetune() on the live model) must be
reproduced by the reloaded one. The learning rate is large (1e-2) so that 3 steps move the model
far beyond every tolerance used here (checked: the adapted logits differ from the base's by > 0.05).
"""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import minift
from minift import fairytales, lora, quant
from minift.data import Batches, load_sft
from minift.evaluate import METRICS, SAMPLING
from minift.finetune import FinetuneConfig, finetune, fit_seq_len, resolve_base
from minift.generate import generate_batch
from minift.scratch import STORY_BASE, ScratchConfig, train_from_scratch
from minift.train import evaluate

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "lora_qwen.py")
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)
PROBE = "옛날 옛적에 호랑이와 토끼가 살았어요. 토끼는 꾀가 많았어요."
# Tolerances (fp32 throughout; logits here are of size ~2, training moved them by 0.45-1.6):
SAME_OPS = dict(rtol=0, atol=0)          # same tensors through the same modules in the same order: bitwise
HF_PARITY = dict(rtol=0, atol=1e-5)      # minift vs transformers/peft: same math, reduction order may
                                         # differ (measured max 1.2e-6)
MERGED = dict(rtol=0, atol=1e-5)         # W + s*B@A folded into one matrix: one more fp32 rounding per
                                         # weight, through 2 layers (measured max 6e-7)


@pytest.fixture(scope="module")
def base_and_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("capstone")
    corpus = root / "corpus.txt"
    fairytales.write_corpus(fairytales.generate_stories(40, seed=1), str(corpus))
    train_from_scratch(ScratchConfig(
        corpus=str(corpus), out_dir=str(root / "base"), vocab_size=1000, seq_len=128, batch_size=4, steps=15,
        lr=3e-3, warmup=3, device="cpu", progress=False, model_overrides=SMALL, request_docs=20))
    pairs = root / "pairs.jsonl"
    fairytales.write_jsonl([p.chat() for p in fairytales.generate_pairs(40, seed=0)], str(pairs))
    return str(root / "base"), str(pairs), root


def run_method(base_and_pairs, method):
    base, pairs, root = base_and_pairs
    cfg = FinetuneConfig(model=base, data=pairs, out_dir=str(root / method), method=method, r=4, alpha=8,
                         dropout=0.0, lr=1e-2, steps=3, batch_size=2, seq_len=128, warmup=0,
                         val_fraction=0.2, eval_batches=2, device="cpu", dtype="float32",
                         merged=method != "full", progress=False, sample_max_tokens=8, seed=0,
                         story_eval=3, story_eval_max_tokens=8)
    return cfg, finetune(cfg, model_dir=base)


@pytest.fixture(scope="module")
def runs(base_and_pairs):
    return {m: run_method(base_and_pairs, m) for m in ("lora", "qlora", "full")}


# ---------------------------------------------------------------------- helpers
def fresh_base(base_dir, method):
    model = minift.load_pretrained(base_dir, dtype="float32", device="cpu")
    if method == "qlora":
        quant.quantize_model(model, compute_dtype=torch.float32)  # deterministic: the same NF4 bytes again
    return model


def from_train_checkpoint(cfg, base_dir):
    """The trained model, rebuilt from the training loop's checkpoint (not from the adapter file)."""
    model = fresh_base(base_dir, cfg.method)
    if cfg.method != "full":
        lora.add_lora(model, r=cfg.r, alpha=cfg.alpha, dropout=0.0, targets=cfg.targets)
    state = load_file(os.path.join(cfg.out_dir, "train", "checkpoint", "model.safetensors"))
    result = model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trainable  # every trained tensor, and nothing else
    return model.eval()


def held_out(cfg, tok):
    data = load_sft(cfg.data, tok, cfg.seq_len, pack_rows=True, val_fraction=cfg.val_fraction, seed=cfg.seed)
    assert len(data.val) > cfg.batch_size * cfg.eval_batches  # eval stops early: exercises the rewind
    return Batches(data.val, cfg.batch_size, shuffle=False, pad_id=data.pad_id)


def logits(model, ids):
    """(1, T, V) logits of a minift model, or of a transformers / peft one (their .logits)."""
    with torch.no_grad():
        out = model(ids)
    return getattr(out, "logits", out)


def hf_load(path, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                             attn_implementation="eager", **kw).eval()


# ---------------------------------------------------------------------- the three methods
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_report(runs, method):
    cfg, rep = runs[method]
    for ev in (rep.eval_before, rep.eval_after):
        assert set(ev) >= {"loss", "perplexity", "tokens"} and 0 < ev["loss"] < 10 and ev["tokens"] > 0
    assert rep.eval_before["tokens"] == rep.eval_after["tokens"]  # the same held-out rows before and after
    # "after" measured the trained model. (Whether 3 steps help is not asserted: on this 15-step base
    # the held-out loss moves by +-0.03 nats either way, measured; tests/test_train.py pins learning.)
    assert abs(rep.eval_after["loss"] - rep.eval_before["loss"]) > 1e-3
    assert isinstance(rep.sample_before, str) and isinstance(rep.sample_after, str)
    # the story evaluation, before and after, on the same held-out requests (minift.evaluate)
    for story_eval in (rep.story_eval_before, rep.story_eval_after):
        assert set(story_eval) >= {"mean", "std_over_seeds", "n_requests", "seeds", "per_request"}
        assert story_eval["n_requests"] == 3 == len(story_eval["per_request"]) and story_eval["seeds"] == [0]
        assert set(story_eval["mean"]) == set(METRICS)
    assert [r["request"] for r in rep.story_eval_before["per_request"]] == \
        [r["request"] for r in rep.story_eval_after["per_request"]]
    assert rep.sample_prompt and rep.sample_prompt in open(cfg.data, encoding="utf-8").read().replace("\\n", "\n")
    # On CPU this is the process's high-water mark above its size when finetune() started: in a
    # test process that already peaked higher it can be 0 (the script test checks it in a fresh one).
    assert isinstance(rep.measured_peak_bytes, int) and rep.measured_peak_bytes >= 0
    if rep.predicted_peak_bytes is None:  # minift.memory does not model fp32 QLoRA (the CPU case): said so
        assert method == "qlora" and any("no memory prediction" in w for w in rep.warnings)
    else:
        assert rep.predicted_peak_bytes > 0
    if method == "full":
        assert rep.trainable_params == rep.num_params and set(rep.saved) == {"model"}
    else:
        # r * (in + out) per adapted projection: 4 * (64+64) * 2 (q, o) + 4 * (64+32) * 2 (k, v: 2 kv heads x 16)
        # + 4 * (64+128) * 3 (gate, up, down), per layer, 2 layers
        per_layer = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3)
        assert rep.trainable_params == 2 * per_layer
        assert set(rep.saved) == {"adapter", "merged"}
        files = sorted(os.listdir(rep.saved["adapter"]))
        assert files == ["adapter_config.json", "adapter_model.safetensors"]
        assert rep.saved_bytes == sum(os.path.getsize(os.path.join(rep.saved["adapter"], f)) for f in files)


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_saved_result_reloads_to_the_trained_model(runs, base_and_pairs, method):
    cfg, rep = runs[method]
    base_dir = base_and_pairs[0]
    tok = minift.load_tokenizer(base_dir)
    ids = torch.tensor([tok.encode(PROBE)])                                  # (1, T)
    trained = from_train_checkpoint(cfg, base_dir)

    if method == "full":
        reloaded = minift.load_pretrained(rep.saved["model"], dtype="float32", device="cpu")
    else:
        with open(os.path.join(rep.saved["adapter"], "adapter_config.json"), encoding="utf-8") as f:
            acfg = json.load(f)
        assert (acfg["peft_type"], acfg["r"], acfg["lora_alpha"]) == ("LORA", 4, 8)
        assert acfg["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                          "v_proj"]
        reloaded = lora.load_adapter(fresh_base(base_dir, method), rep.saved["adapter"])
    torch.testing.assert_close(logits(reloaded, ids), logits(trained, ids), **SAME_OPS)
    # ... and training really moved it away from the base (so the equalities above mean something).
    moved = (logits(reloaded, ids) - logits(fresh_base(base_dir, method), ids)).abs().max()
    assert moved > 0.05, float(moved)

    # The report was computed on the live model inside finetune(): the reloaded one reproduces it.
    # Same weights, batches and ops (measured difference 0.0); 1e-6 allows only a summation-order
    # change in the token average, and is far below what one update changes (> 1e-3, test_report).
    assert abs(evaluate(reloaded, held_out(cfg, tok), cfg.eval_batches)["loss"] - rep.eval_after["loss"]) < 1e-6
    messages = [{"role": "user", "content": rep.sample_prompt}]
    assert generate_batch(reloaded, tok, [messages], max_new_tokens=cfg.sample_max_tokens, seed=cfg.seed,
                          **SAMPLING) == [rep.sample_after]

    if method == "full":  # transformers reads the saved model to the same logits
        torch.testing.assert_close(logits(hf_load(rep.saved["model"]), ids), logits(reloaded, ids),
                                   **HF_PARITY)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_the_seed_fixes_the_adapter(runs, base_and_pairs, method):
    """The same config writes the same adapter, bit for bit, whatever torch's global generator held
    before: lora_A is drawn from it, and a fresh process seeds it at random (before finetune seeded
    it, two runs of the chapter's exercise ended 0.00075 apart in held-out loss)."""
    base, _, root = base_and_pairs
    cfg, rep = runs[method]
    torch.rand(1000)                                  # other code drew from the generator meanwhile
    again = finetune(dataclasses.replace(cfg, out_dir=str(root / f"{method}-again")), model_dir=base)
    first, second = (load_file(os.path.join(r.saved["adapter"], "adapter_model.safetensors")) for r in (rep, again))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_peft_loads_the_lora_adapter_to_the_same_logits(runs, base_and_pairs):
    cfg, rep = runs["lora"]
    base_dir = base_and_pairs[0]
    tok = minift.load_tokenizer(base_dir)
    ids = torch.tensor([tok.encode(PROBE)])
    ours = lora.load_adapter(fresh_base(base_dir, "lora"), rep.saved["adapter"])
    pm = peft.PeftModel.from_pretrained(hf_load(base_dir), rep.saved["adapter"]).eval()
    torch.testing.assert_close(logits(pm, ids), logits(ours, ids), **HF_PARITY)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_merged_export_loads_in_transformers(runs, base_and_pairs, method):
    cfg, rep = runs[method]
    base_dir = base_and_pairs[0]
    tok = minift.load_tokenizer(base_dir)
    ids = torch.tensor([tok.encode(PROBE)])
    ours = lora.load_adapter(fresh_base(base_dir, method), rep.saved["adapter"])  # unmerged: base + B@A
    merged_hf = hf_load(rep.saved["merged"])
    assert transformers.AutoTokenizer.from_pretrained(rep.saved["merged"])(PROBE, add_special_tokens=False)[
        "input_ids"] == ids[0].tolist()
    torch.testing.assert_close(logits(merged_hf, ids), logits(ours, ids), **MERGED)


# ---------------------------------------------------------------------- the script and the fallback
def test_lora_qwen_script_runs_offline(base_and_pairs, tmp_path):
    """The script twice, side by side (each is mostly torch's import): with --model, and with no
    --model in a directory whose runs/tiny-story is the tiny base, offline with an empty HF cache:
    it must say Qwen is missing and fine-tune the embedded default."""
    base, pairs, _ = base_and_pairs
    (tmp_path / "runs").mkdir()
    os.symlink(base, tmp_path / "runs" / "tiny-story")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty-cache"), OMP_NUM_THREADS="1")
    # seq-len 128: this base's BPE learned stories, not requests, so a prompt takes 70-130 tokens
    # and at 64 no held-out answer token survives (test_too_short_rows_are_a_clear_error).
    common = ["--data", pairs, "--steps", "2", "--seq-len", "128", "--batch-size", "2", "--device", "cpu",
              "--dtype", "float32", "--no-progress", "--story-eval", "2"]
    procs = {name: subprocess.Popen([sys.executable, SCRIPT, *extra, *common, "--out", str(tmp_path / name)],
                                    cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, extra in (("named", ["--model", base, "--no-compile", "--no-cuda-graph", "--adapter-math",
                                            "fp32", "--no-fused-projections", "--ckpt-layers", "1"]),
                                 ("embedded", []))}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (name, err[-3000:])
        with open(tmp_path / name / "report.json", encoding="utf-8") as f:
            rep = json.load(f)
        assert rep["config"]["steps"] == 2 and rep["eval_before"]["loss"] > 0 and rep["eval_after"]["loss"] > 0
        # fp32 LoRA on CPU: both the prediction and the (fresh process's) measurement exist
        assert rep["predicted_peak_bytes"] > 0 and rep["measured_peak_bytes"] > 0
        adapter = tmp_path / name / "adapter"
        assert sorted(os.listdir(adapter)) == ["adapter_config.json", "adapter_model.safetensors"]
        assert "eval loss:" in out and f"saved adapter: {adapter}" in out
        # the fast path says what it picked: each flag by name, else the CPU's own reasons
        if name == "named":
            assert ("fast path:\n  adapter math: fp32 (--adapter-math fp32)\n  fused projections: off "
                    "(--no-fused-projections)\n  compiled layers: off (--no-compile)\n"
                    "  CUDA graph: off (--no-cuda-graph)\n  loss: fused chunked") in out
        else:
            assert ("adapter math: fp32 (the base computes in float32 on cpu" in out
                    and "fused projections: off on cpu" in out
                    and "compiled layers: off on cpu" in out and "CUDA graph: off on cpu" in out)
        assert rep["fast_path"] and rep["compile_line"] is None  # nothing compiled or captured on CPU
        assert rep["story_eval_after"]["n_requests"] == 2 and "story evaluation: 2 held-out requests" in out
        if name == "named":
            assert rep["model_dir"] == os.path.abspath(base) and "not on this machine" not in out
        else:
            assert rep["model_dir"] == STORY_BASE["out_dir"] == os.path.join("runs", "tiny-story")
            assert "Qwen/Qwen2.5-0.5B-Instruct is not on this machine" in out and "embedded default" in out
            # the tiny model's LoRA defaults, not Qwen's
            assert (rep["config"]["lr"], rep["config"]["r"], rep["config"]["alpha"]) == (3e-3, 128, 256)
            # and its data mix, said in the output (the ending request seen 4x)
            assert rep["config"]["upsample"] == ["오래오래 행복하게 살았답니다", 4] and "data mix: " in out
        if name == "named":
            assert rep["config"]["upsample"] is None and "data mix" not in out
            # --ckpt-layers 1 turned checkpointing on for the bottom layer alone
            assert (rep["config"]["grad_ckpt"], rep["config"]["ckpt_layers"]) == (True, 1)
        else:
            assert (rep["config"]["grad_ckpt"], rep["config"]["ckpt_layers"]) == (False, None)


def test_fit_seq_len_keeps_every_pair_whole(base_and_pairs):
    base, pairs, _ = base_and_pairs
    tok = minift.load_tokenizer(base)
    seq_len = fit_seq_len(pairs, tok)
    assert seq_len % 64 == 0
    data = load_sft(pairs, tok, seq_len, val_fraction=0.2)
    assert data.stats.num_truncated == data.val_stats.num_truncated == 0
    shorter = load_sft(pairs, tok, seq_len - 64, val_fraction=0.2)  # the smallest that fits: one step less cuts
    assert shorter.stats.num_truncated + shorter.val_stats.num_truncated > 0
    assert fit_seq_len(pairs, tok, max_examples=5) <= seq_len


def test_too_short_rows_are_a_clear_error(base_and_pairs, tmp_path):
    base, pairs, _ = base_and_pairs
    cfg = FinetuneConfig(model=base, data=pairs, out_dir=str(tmp_path), steps=1, batch_size=2, seq_len=24,
                         device="cpu", dtype="float32", progress=False)
    with pytest.raises(ValueError, match="keeps an answer token at seq_len=24.*raise seq_len"):
        finetune(cfg, model_dir=base)


@pytest.mark.parametrize("kw,match", [
    (dict(ckpt_layers=1), r"ckpt_layers=1: .* with grad_ckpt on \(grad_ckpt=False\)"),
    (dict(grad_ckpt=True, ckpt_layers=3), "ckpt_layers=3, but .* has 2 layers"),
])
def test_ckpt_layers_is_checked(base_and_pairs, tmp_path, kw, match):
    base, pairs, _ = base_and_pairs
    cfg = FinetuneConfig(model=base, data=pairs, out_dir=str(tmp_path), steps=1, batch_size=2, device="cpu",
                         dtype="float32", progress=False, **kw)
    with pytest.raises(ValueError, match=match):
        finetune(cfg, model_dir=base)
    assert not os.listdir(tmp_path)                  # refused before anything was written


def test_resolve_base_falls_back_only_when_the_model_was_not_named(monkeypatch, tmp_path):
    empty = tmp_path / "hub"
    empty.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    tiny = str(tmp_path / "tiny-10m")
    assert resolve_base("Qwen/Qwen2.5-0.5B-Instruct", explicit=False, tiny_dir=tiny) == (tiny, True)
    with pytest.raises(FileNotFoundError) as e:
        resolve_base("Qwen/Qwen2.5-0.5B-Instruct", explicit=True, tiny_dir=tiny)
    msg = str(e.value)
    assert "Qwen/Qwen2.5-0.5B-Instruct" in msg and str(empty) in msg and "HF_HUB_OFFLINE" in msg
    assert "hf download Qwen/Qwen2.5-0.5B-Instruct" in msg  # how to fetch it
    # A local directory is used as is, named or not.
    assert resolve_base(str(tmp_path), explicit=True) == (str(tmp_path), False)
