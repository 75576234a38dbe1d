"""The seed chapter's decision tree: its own capstone answer, each branch, the gaps, bad input."""
import json

import pytest

from minift import decide as D
from conftest import pythonpath_with  # noqa: E402


def run(**kw):
    # the memory math of a GPU (bf16), whatever machine runs the tests; CPU answers are tested below
    args = dict(general_covered=False, laptop=False, separate_license=False, memory_bytes="141GB", device="cuda")
    args.update(kw)
    return D.decide(**args)


def test_capstone_is_lora_on_qwen_05b_instruct():
    # The chapter, section 4: not general; 5K-50K pairs; laptop yes; licence separate yes.
    d = run(data="5K-50K pairs", laptop=True, separate_license=True, memory_bytes="24GB")
    assert (d.path, d.method, d.model) == ("lora", "lora", "Qwen/Qwen2.5-0.5B-Instruct")
    assert any("laptop" in s for s in d.steps) and any("adapter" in s for s in d.steps)


def test_general_domain_needs_no_fine_tuning():
    d = run(general_covered=True)
    assert d.path == "none" and d.method is None


@pytest.mark.parametrize("data,laptop,lic,path", [
    ("200B tokens", False, False, "scratch"),
    ("2B tokens", False, False, "cpt"),
    ("30B tokens", False, False, "cpt"),           # gap 10B-100B: CPT, scratch needs 100B+
    ("50K pairs", False, False, "full"),
    ("50K pairs", True, False, "lora"),
    ("50K pairs", False, True, "lora"),
    ("2K pairs", False, False, "lora"),
    ("50 pairs", False, False, "lora"),            # below the smallest band: nearest band, warned
    ("5M pairs", False, False, "full"),            # above 1M: nearest band
    ("50M tokens", False, False, "lora"),          # under 1B raw tokens: CPT would do nothing
])
def test_each_branch(data, laptop, lic, path):
    d = run(data=data, laptop=laptop, separate_license=lic)
    assert d.path == path, d.steps


def test_cpt_uses_the_base_model_and_warns_on_thin_data():
    d = run(data="2B tokens")
    assert d.model == "Qwen/Qwen2.5-0.5B" and "Instruct" not in d.model
    d = run(data="50M tokens")
    assert any("failure point 3" in w for w in d.warnings)
    d = run(data="50 pairs")
    assert any("100" in w for w in d.warnings)


def test_rank_warning_and_qlora_when_lora_does_not_fit():
    d = run(data="2K pairs", lora_r=64)
    assert any("r=64" in w for w in d.warnings)
    # 7B LoRA needs ~18 GB even with checkpointing; at 12 GB only QLoRA fits for 7B
    d = run(data="2K pairs", memory_bytes="12GB", base_model="qwen2.5-7b")
    assert d.method == "qlora" and d.model == "Qwen/Qwen2.5-7B-Instruct"


def test_nothing_fits():
    d = run(data="2K pairs", memory_bytes="200MB")
    assert d.model is None and any("fits" in w for w in d.warnings)


def test_units():
    assert D.parse_amount("10K pairs") == (1e4, 1e4, "pairs")
    assert D.parse_amount("1.5B tokens") == (1.5e9, 1.5e9, "tokens")
    assert D.parse_amount("5K-50K pairs") == (5e3, 5e4, "pairs")
    assert D.parse_bytes("24GB") == 24_000_000_000
    assert D.parse_bytes("16GiB") == 16 * 2 ** 30


@pytest.mark.parametrize("text,match", [("5 zettatokens", "unknown unit"), ("-3K pairs", "negative"),
                                        ("lots of pairs", "not understood"), ("50K-5K pairs", "backwards")])
def test_bad_amounts(text, match):
    with pytest.raises(ValueError, match=match):
        D.parse_amount(text)


def test_bad_memory_and_missing_answers():
    with pytest.raises(ValueError, match="unknown unit"):
        D.parse_bytes("24 parsecs")
    with pytest.raises(ValueError, match="positive"):
        D.parse_bytes("-1GB")
    with pytest.raises(ValueError, match="either"):
        run()                                       # no data amount
    with pytest.raises(ValueError, match="batch"):
        run(data="2K pairs", batch=0)


def test_dataset_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(150)) + "\n")
    d = run(dataset=str(f))
    assert d.path == "lora" and any("150" in s for s in d.steps)
    t = tmp_path / "raw.txt"
    t.write_text("once upon a time " * 1000)
    d = run(dataset=str(t))
    assert d.path == "lora" and any("estimate" in s or "tokens" in s for s in d.steps)
    with pytest.raises(FileNotFoundError):
        run(dataset=str(tmp_path / "missing.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "output": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        run(dataset=str(bad))


def test_cpu_answer_is_the_fp32_whole_job():
    # Issue 10: on a 24 GB CPU the recipe loads fp32 weights (7B: 30 GB before anything else), so
    # 7B LoRA must not "fit" there, whatever a bf16 GPU step would need (18.5 GB).
    from minift import memory
    from minift.config import ModelConfig
    d = run(data="2K pairs", laptop=True, separate_license=True, memory_bytes="24GB", device="cpu")
    assert not any(name == "qwen2.5-7b" for name, *_ in d.fits), d.steps
    assert not any(m == "qlora" for _, m, *_ in d.fits)          # not modelled in fp32: never claimed
    assert (d.method, d.model) == ("lora", "Qwen/Qwen2.5-0.5B-Instruct")
    cfg = ModelConfig.preset("qwen2.5-7b")
    job = D.job_estimate(cfg, "lora", 4, 1024, True, 16, "cpu")
    assert job.param_dtype == "float32" and job.total > 30e9   # 4 B x 7.6e9 weights alone
    assert job.job["process"] and job.job["load"] == "float"
    # on a GPU the same question counts bf16 and finds 7B LoRA fits 24 GB with checkpointing
    gpu = run(data="2K pairs", laptop=True, separate_license=True, memory_bytes="32GB", device="cuda",
              base_model="qwen2.5-7b")
    assert ("qwen2.5-7b", "lora") in {(n, m) for n, m, *_ in gpu.fits}
    # the number decide compares is the whole job's peak, phases named
    est = D.job_estimate(ModelConfig.preset("qwen2.5-0.5b"), "lora", 4, 1024, False, 16, "cpu")
    assert any(p.startswith("load: ") for p in est.phases) and "save: adapter" in est.phases
    assert est.total == max(sum(v.values()) for v in est.phases.values())


def test_decide_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="device"):
        run(data="2K pairs", device="tpu")


def test_dataset_measured_in_qwen25_tokens_from_the_command_line(tmp_path):
    # The chapter's first exercise, made concrete: scripts/decide.py --dataset F --tokenizer qwen.
    # Expected counts come from transformers on the same files with Qwen2.5-Instruct's template.
    import os
    import re
    import subprocess
    import sys

    from transformers import AutoTokenizer

    from minift.tokenizer import qwen25_chat_template, qwen_tokenizer_dir

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "data", "fairytales_pairs.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()[:40]
    subset = tmp_path / "pairs.jsonl"
    subset.write_text("".join(lines), encoding="utf-8")
    hf = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())
    hf.chat_template = qwen25_chat_template()
    lengths = []
    for line in lines:
        p = json.loads(line)
        user = p["instruction"] + ("\n\n" + p["input"] if p["input"] else "")
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": p["output"]}]
        lengths.append(len(hf.apply_chat_template(chat, tokenize=True, return_dict=False)))
    seq = sorted(lengths)[20]                                   # about half the pairs are longer

    env = dict(os.environ, PYTHONPATH=pythonpath_with(root), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(root, "scripts", "decide.py"), "--general", "no",
                           "--dataset", str(subset), "--tokenizer", "qwen", "--laptop", "yes",
                           "--license-separate", "yes", "--seq", str(seq), "--memory", "24GB"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    step = next(s for s in proc.stdout.splitlines() if s.startswith("2. Measured"))
    assert "40 pairs" in step and "Qwen2.5" in proc.stdout
    assert f"{sum(lengths):,} tokens with the chat template" in step
    assert f"longest {max(lengths):,}" in step
    assert f"{sum(n > seq for n in lengths)} of 40 longer than seq_len={seq}" in step
    assert re.search(r"path: lora +method: lora +model: Qwen/Qwen2.5-0.5B-Instruct", proc.stdout)


@pytest.mark.parametrize("preset,world", [("qwen2.5-1.5b", 1), ("qwen2.5-7b", 1), ("qwen2.5-7b", 2)])
def test_fewest_checkpointed_layers_is_the_linear_scans_answer(preset, world):
    """The bisection against trying every k (memory.estimate with k bottom layers checkpointed),
    at budgets between no checkpointing and all of it."""
    from minift import memory
    from minift.config import ModelConfig
    cfg = ModelConfig.preset(preset)
    kw = dict(world_size=world, strategy="fsdp") if world > 1 else {}

    def est(k):
        return memory.estimate(cfg, "full", 4, 1024, grad_ckpt=k > 0, ckpt_layers=k if k else None, **kw)
    L = cfg.num_hidden_layers
    peaks = [est(k).total for k in range(L + 1)]
    for budget in sorted({peaks[0], peaks[L], (peaks[0] + peaks[L]) / 2, peaks[L] + (peaks[0] - peaks[L]) / 5}):
        want = next(k for k in range(L + 1) if peaks[k] <= budget)
        k, e = D.fewest_checkpointed_layers(L, budget, est)
        assert (k, e.total) == (want, peaks[want]), budget
    assert D.fewest_checkpointed_layers(L, min(peaks) - 1, est) == (None, None)


def test_one_gpu_full_sft_checkpoints_only_the_layers_it_must():
    # 1.5B full SFT on a 24 GB card: all 28 layers checkpointed fit, but so do fewer, and the
    # answer names how many (the rest are not recomputed: faster at the same budget)
    d = run(data="20K pairs", memory_bytes="24GB", base_model="qwen2.5-1.5b")
    k = dict(((n, m), c) for n, m, c, _ in d.fits)[("qwen2.5-1.5b", "full")]
    assert 0 < k < 28
    assert any(f"--ckpt-layers {k}" in s for s in d.steps), d.steps
    assert any(f"full +ckpt {k}/28 layers" in s for s in d.steps)
