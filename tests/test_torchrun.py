"""The recipes as a user starts them under torchrun (`python -m torch.distributed.run --standalone
--nproc-per-node 2 scripts/...`, CPU, gloo), beside the same script in one process.

tests/test_distributed.py checks the library (train() on 2 ranks); this checks the job: the
script's own argument parsing, loading, data preparation, memory report, training, evaluation and
saving, with rank 0 alone writing and printing. 2 ranks x B rows see the global batches 1 process x 2B sees, so:
* the output folders hold the same files (nothing written twice, nothing missing);
* the trained tensors agree to rtol 1e-4, atol 1e-5 and the held-out loss to rtol 1e-5, the
  tolerances tests/test_distributed.py explains (the order of fp32 additions differs; AdamW turns
  a ~1e-7 relative gradient difference into up to ~lr/300 in a weight; lr 3e-3 here as there).
Adapter dropout is 0: each rank draws its own dropout masks, which one process does not.
"""
import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from minift import fairytales

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240
LR = "3e-3"
RTOL, ATOL, LOSS_RTOL = 1e-4, 1e-5, 1e-5   # see the module docstring


def _run(script, args, cwd, ranks):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] \
        if ranks > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")
    proc = subprocess.run([*launcher, os.path.join(ROOT, "scripts", script), *args], cwd=cwd, env=env,
                          text=True, capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 0, (ranks, proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _assert_same_tensors(one_file, two_file):
    one, two = load_file(one_file), load_file(two_file)
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=RTOL, atol=ATOL, msg=name)


def test_lora_recipe_under_torchrun_writes_what_one_process_writes(tiny_dir, tmp_path):
    """scripts/lora_qwen.py: LoRA, data parallel (the adapters' gradients all-reduced)."""
    common = ["--model", tiny_dir, "--steps", "3", "--seq-len", "1024", "--max-examples", "40", "--lr", LR,
              "--dropout", "0", "--device", "cpu", "--dtype", "float32", "--story-eval", "0", "--no-progress"]
    _run("lora_qwen.py", [*common, "--batch-size", "4", "--out", str(tmp_path / "one")], tmp_path, ranks=1)
    two = _run("lora_qwen.py", [*common, "--batch-size", "2", "--out", str(tmp_path / "two")], tmp_path, ranks=2)
    assert "torchrun: 2 processes, gloo backend" in two.stderr + two.stdout
    assert two.stdout.count("saved adapter:") == 1 and two.stdout.count("eval loss:") == 1   # rank 0 alone reports
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    _assert_same_tensors(tmp_path / "one" / "adapter" / "adapter_model.safetensors",
                         tmp_path / "two" / "adapter" / "adapter_model.safetensors")
    reports = [json.load(open(tmp_path / side / "report.json")) for side in ("one", "two")]
    assert reports[0]["eval_after"]["tokens"] == reports[1]["eval_after"]["tokens"]
    torch.testing.assert_close(reports[1]["eval_after"]["loss"], reports[0]["eval_after"]["loss"],
                               rtol=LOSS_RTOL, atol=0)
    assert reports[0]["eval_after"]["loss"] != reports[0]["eval_before"]["loss"]   # it trained


def test_continued_pretraining_under_torchrun_writes_what_one_process_writes(tiny_dir, tmp_path):
    """scripts/continue_pretraining.py: every weight trains, sharded with FSDP2, saved in full. The two
    ranks checkpoint their bottom layer (--ckpt-layers 1), one process none: recomputing a layer
    must not change what is learned, sharded or not."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(fairytales.generate_stories(12, seed=4)), encoding="utf-8")
    common = ["--model", tiny_dir, "--corpus", str(corpus), "--steps", "3", "--seq-len", "64", "--lr", LR,
              "--device", "cpu", "--dtype", "float32", "--no-progress"]
    _run("continue_pretraining.py", [*common, "--batch-size", "2", "--out", str(tmp_path / "one")], tmp_path, ranks=1)
    two = _run("continue_pretraining.py", [*common, "--batch-size", "1", "--ckpt-layers", "1", "--out",
                                           str(tmp_path / "two")], tmp_path, ranks=2)
    assert "torchrun: 2 processes, gloo backend" in two.stderr + two.stdout
    assert two.stdout.count("corpus:") == 1 and two.stdout.count("train loss") == 1   # rank 0 alone reports
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    _assert_same_tensors(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    before = load_file(os.path.join(tiny_dir, "model.safetensors"))
    after = load_file(tmp_path / "two" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)                  # it trained


def test_training_from_scratch_under_torchrun_writes_what_one_process_writes(tmp_path):
    """scripts/train_tiny.py: the tokenizer trained on every rank alike, the model sharded with FSDP2."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(fairytales.generate_stories(12, seed=4)), encoding="utf-8")
    common = ["--corpus", str(corpus), "--steps", "3", "--seq-len", "64", "--vocab-size", "300", "--lr", LR,
              "--device", "cpu", "--no-progress"]
    _run("train_tiny.py", [*common, "--batch-size", "2", "--out", str(tmp_path / "one")], tmp_path, ranks=1)
    two = _run("train_tiny.py", [*common, "--batch-size", "1", "--out", str(tmp_path / "two")], tmp_path, ranks=2)
    assert two.stdout.count("train loss:") == 1                                       # rank 0 alone reports
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    _assert_same_tensors(tmp_path / "one" / "model.safetensors", tmp_path / "two" / "model.safetensors")
    assert (tmp_path / "one" / "tokenizer.json").read_bytes() == (tmp_path / "two" / "tokenizer.json").read_bytes()
