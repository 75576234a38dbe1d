"""The command lines in scripts/, run as a user runs them: `python scripts/X.py ...` in a fresh
process, offline (HF_HUB_OFFLINE=1, an empty HF cache), on CPU.

Each process spends most of its time importing torch, so a module fixture starts them all, four
at a time, and each test waits for its own (OMP_NUM_THREADS=1 keeps them from fighting over the
cores). What is checked is what the script is for: --help works for every
script; generate.py streams the same greedy text as minift.generate; decide.py answers the
chapter's capstone questions with LoRA on Qwen2.5-0.5B-Instruct; continue_pretraining.py trains
a base on raw text and saves it; make_fairytales.py writes the pairs minift.fairytales generates.
"""
import concurrent.futures
import glob
import json
import os
import subprocess
import sys

import pytest
import torch

import minift
from minift import fairytales
from minift.data import read_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "scripts", "*.py")))
PROMPT = "옛날 옛적에"
TIMEOUT = 240


class Runs:
    """Processes run by a pool of PARALLEL threads (enough to keep two cores busy while bounding
    memory: each process holds torch, ~300 MB); .result(key) waits for one -> (returncode, stdout, stderr)."""

    PARALLEL = 4

    def __init__(self, env):
        self.env, self.futures = env, {}
        self.pool = concurrent.futures.ThreadPoolExecutor(self.PARALLEL)

    def start(self, key, args, cwd):
        self.futures[key] = self.pool.submit(subprocess.run, [sys.executable, *args], cwd=cwd, env=self.env,
                                             text=True, capture_output=True, timeout=TIMEOUT)

    def result(self, key):
        proc = self.futures[key].result()
        return proc.returncode, proc.stdout, proc.stderr

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_dir):
    work = tmp_path_factory.mktemp("scripts_cwd")  # no runs/ or data/ here: nothing found by accident
    cache = tmp_path_factory.mktemp("empty_hf_cache")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), OMP_NUM_THREADS="1",
               PYTHONIOENCODING="utf-8")
    r = Runs(env)
    script = lambda name: os.path.join(ROOT, "scripts", name)  # noqa: E731
    for name in SCRIPTS:
        r.start(("help", name), [script(name), "--help"], work)
    r.start("generate", [script("generate.py"), "--model", tiny_dir, "--prompt", PROMPT, "--max-new-tokens", "5",
                         "--device", "cpu", "--dtype", "float32"], work)
    r.start("generate-fallback", [script("generate.py"), "--max-new-tokens", "3", "--device", "cpu",
                                  "--dtype", "float32", "--seed", "0"], work)
    r.start("decide", [script("decide.py"), "--general", "no", "--data", "5K-50K pairs", "--laptop", "yes",
                       "--license-separate", "yes", "--memory", "24GB"], work)
    r.start("decide-missing", [script("decide.py"), "--general", "no", "--laptop", "yes"], work)
    corpus = work / "cpt_corpus.txt"
    corpus.write_text("\n\n".join(fairytales.generate_stories(12, seed=4)), encoding="utf-8")
    r.start("cpt", [script("continue_pretraining.py"), "--model", tiny_dir, "--corpus", str(corpus), "--steps", "3",
                    "--batch-size", "2", "--seq-len", "64", "--lr", "1e-2", "--device", "cpu", "--dtype", "float32",
                    "--out", str(work / "cpt"), "--no-progress", "--ckpt-layers", "1"], work)
    r.start("fairytales", [script("make_fairytales.py"), "--n-pairs", "7", "--corpus-stories", "3", "--seed", "5",
                           "--out-dir", str(work / "data")], work)
    r.work = work
    yield r
    r.close()


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(runs, name):
    rc, out, err = runs.result(("help", name))
    assert rc == 0, (rc, out[-500:], err[-2000:])
    assert out.startswith(f"usage: {name}"), out[:300]


@pytest.mark.parametrize("name", ["compare_methods.py", "sweep_story_recipe.py"])
def test_drivers_of_child_processes_refuse_torchrun(name, tmp_path):
    """Under torchrun every rank would start its own children, which would join no group or the
    wrong one: the drivers say so and stop (torchrun sets WORLD_SIZE and RANK; set here by hand)."""
    env = dict(os.environ, WORLD_SIZE="2", RANK="1", LOCAL_RANK="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name)], cwd=tmp_path, env=env,
                          text=True, capture_output=True, timeout=TIMEOUT)
    assert proc.returncode == 2 and "run it without torchrun" in proc.stderr, (proc.returncode, proc.stderr[-1000:])


def test_shipped_data_defaults_are_found_from_any_directory(tmp_path, monkeypatch):
    """The recipes' default --data and the story base's corpus point at the repository's data/
    wherever the script is started (they were paths relative to the current directory)."""
    from minift.finetune import FinetuneConfig
    from minift.scratch import ScratchConfig
    monkeypatch.chdir(tmp_path)
    for path in (FinetuneConfig().data, ScratchConfig().corpus):
        assert os.path.isfile(path), path
        assert os.path.dirname(path) == os.path.join(ROOT, "data")


def test_generate_streams_the_greedy_text(runs, tiny_dir):
    rc, out, err = runs.result("generate")
    assert rc == 0, (rc, err[-2000:])
    model = minift.load_pretrained(tiny_dir, dtype="float32", device="cpu")
    tok = minift.load_tokenizer(tiny_dir)
    expected = minift.generate(model, tok, PROMPT, max_new_tokens=5)
    assert expected  # 5 tokens of something (no stop id first: checked, so the comparison is not vacuous)
    assert out == PROMPT + expected + "\n"
    assert "tokens in" in err and "torch.float32, cpu" in err


def test_generate_without_a_model_says_so_and_runs_a_random_one(runs):
    rc, out, err = runs.result("generate-fallback")
    assert rc == 0, (rc, err[-2000:])
    assert "no --model and no trained model at runs/tiny-10m/" in err and "RANDOM tiny-10m" in err
    assert out.startswith(PROMPT)


def test_continued_pretraining_trains_and_saves_a_model_that_loads(runs, tiny_dir):
    rc, out, err = runs.result("cpt")
    assert rc == 0, (rc, err[-2000:])
    assert "held-out loss" in out and "saved" in out
    # the fast path's lines, as the CPU picks them (no compile, no graph, the fused loss)
    assert "fast path:\n  compiled layers: off on cpu" in out and "CUDA graph: off on cpu" in out
    assert "loss: fused chunked" in out and "adapter math" not in out  # CPT trains every weight
    before = minift.load_pretrained(tiny_dir, dtype="float32", device="cpu")
    after = minift.load_pretrained(str(runs.work / "cpt"), dtype="float32", device="cpu")
    changed = [n for (n, p), (_, q) in zip(before.named_parameters(), after.named_parameters()) if not torch.equal(p, q)]
    assert changed, "three steps at lr 1e-2 left every weight as it was"
    assert minift.load_tokenizer(str(runs.work / "cpt")).encode(PROMPT) == minift.load_tokenizer(tiny_dir).encode(PROMPT)


def test_decide_gives_the_capstone_answer(runs):
    rc, out, err = runs.result("decide")
    assert rc == 0, (rc, err[-2000:])
    assert "path: lora   method: lora   model: Qwen/Qwen2.5-0.5B-Instruct" in out
    # the ops checklist's estimate: sqrt(5K * 50K) pairs x 300 tokens = 4,743,416 tokens, 1 epoch
    assert "training time: 4,743,416 tokens (1 epoch(s))" in out
    rc, out, err = runs.result("decide-missing")
    assert rc == 2 and "question 2 needs --data or --dataset" in err


def test_make_fairytales_writes_the_generated_pairs(runs):
    rc, out, err = runs.result("fairytales")
    assert rc == 0, (rc, err[-2000:])
    data = runs.work / "data"
    with open(data / "fairytales_pairs.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert records == [p.alpaca() for p in fairytales.generate_pairs(7, seed=5)]
    assert read_text(str(data / "fairytales_corpus.txt")) == fairytales.generate_stories(3, seed=5)
    assert "7 records" in out and "3 records" in out


@pytest.mark.skipif(not os.environ.get("MINIFT_SLOW_TESTS"),
                    reason="~30 s on 2 cores (each of its 6 rows trains in a fresh process); "
                           "MINIFT_SLOW_TESTS=1 runs it")
def test_memory_check_cpu_tiny_grid(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "memory_check.py"), "--grid", "cpu-tiny",
                           "--out", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(tmp_path / "results.json", encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    assert [(r["method"], r["grad_ckpt"]) for r in rows] == [(m, c) for m in ("full", "lora", "qlora")
                                                              for c in (False, True)]
    # On CPU the replayed allocator is exact up to bookkeeping (measured |error| <= 0.06%).
    assert all(abs(r["error_pct"]) < 1.0 for r in rows), [r["error_pct"] for r in rows]
