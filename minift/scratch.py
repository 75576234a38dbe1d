"""Path 1 of the seed chapter: train the ~10M-parameter model from random weights.

    raw stories (+ optionally stories under their requests, and request sketches) -> byte-level
    BPE (8,192 tokens, trained here) -> 256-token stream rows (or rows of whole documents) ->
    Transformer(tiny-10m) -> AdamW + warmup/cosine -> HF layout on disk

The result is an ordinary Hugging Face checkpoint (config.json, model.safetensors, tokenizer
files): minift.load_pretrained and transformers' AutoModelForCausalLM both load it, and the
capstone (minift.finetune) fine-tunes it with LoRA when Qwen2.5 weights are not at hand.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import torch

from minift import fast_path
from minift.checkpoint import save_pretrained
from minift.config import ModelConfig
from minift import fairytales
from minift.data import (FAIRYTALE_CORPUS, Batches, Dataset, DatasetStats, document_rows, read_text, text_rows,
                         train_val_split)
from minift.device import pick_device
from minift.generate import generate
from minift.model import Transformer
from minift.tokenizer import train_bpe
from minift.train import TrainConfig, TrainResult

logger = logging.getLogger(__name__)


@dataclass
class ScratchConfig:
    corpus: str = FAIRYTALE_CORPUS
    out_dir: str = "runs/tiny-10m"
    preset: str = "tiny-10m"
    vocab_size: int = 8192
    split: str = "words"           # where the BPE may cut Korean before merging (minift.tokenizer.SPLITS)
    seq_len: int = 256             # rows; the context (max_position_embeddings, >= 1024) holds any pair
    rows: str = "stream"           # "stream" (text_rows: nanoGPT's) or "documents" (document_rows: none cut)
    batch_size: int = 8
    steps: int = 500               # ~10 minutes on a 2-core CPU (~1,800 tok/s measured idle)
    lr: float = 2e-3               # small models take a large peak lr (nanoGPT's char model: 1e-3)
    warmup: int = 30
    weight_decay: float = 0.1
    val_fraction: float = 0.02
    eval_every: int = 100
    save_every: int = 100
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    sample_prompt: str = "옛날 옛적에"
    # Stories written under the request they answer, as plain text (request_documents), meant to
    # teach a base model to take a story's names from the text before it. Measured 2026-11-30
    # (1,000 of them, 500 steps): no gain in names after LoRA (26-29% vs ~25%), so off by default
    # for this model; STORY_BASE (below), the capstone's smaller base, is trained on 8,000.
    request_docs: int = 0
    request_seed: int = 1          # minift.fairytales pairs seed; the shipped pairs are seed 0
    story_docs: int = 0            # more stories, no requests (fairytales.generate_stories, seed request_seed)
    request_sketches: int = 0      # short documents: a request, its story's opening and closing (request_sketches)
    sketch_ending_share: float | None = None  # of those, the share whose request asks for the ending (None: ~14%)
    # ModelConfig fields to change after the preset, e.g. {"hidden_size": 64, "num_hidden_layers": 2}
    # (tests and quick experiments use a smaller model than tiny-10m; vocab_size is set above).
    model_overrides: dict = field(default_factory=dict)
    compile: bool | None = None    # the fast path (minift/fast_path.py): compiled layers on CUDA (None: 1,000+ steps)
    cuda_graph: bool = True        # and the CUDA graph (text rows all have seq_len tokens)


# The capstone's embedded base (scripts/lora_qwen.py without Qwen weights; scripts/train_tiny.py
# --story-base): what LoRA on the fairytale pairs must build on is a model that already takes names
# from the text before it. Measured with scripts/sweep_story_recipe.py (results/h200/
# story_recipe_sweep_round*_2026-11-30.*): the 10M model at a CPU budget of tokens never did (names
# after LoRA <= 48%); stories alone, without requests above them, never taught it (<= 30%); the
# 2.5M model on 8,000 stories under their requests, particles split, did at ~3M tokens of 256-token
# stream rows, but places only now and then (8-78% over seeds; the CPU default: 27%). Round 6: in
# rows that hold whole documents (document_rows: the request always in the story's context) with
# 8,000 request sketches (request_sketches: the place and ending decisions denser), 1,200 steps of
# 4 x 512 (~10 min on the 2-core CPU, 2.5M tokens) gave 92% of names and 99% of places after LoRA
# on the H200, and the CPU default run 80% / 88% (3 sampling seeds: 79.7% / 88.7%); endings stayed
# at 6-33% (round 6 and the CPU default run, 2026-11-30). Round 8 (H200): with half the sketches
# asking for the ending (sketch_ending_share=0.5; ~14% as the pairs come) and twice the sketches for
# half the request documents, the ending was used 100% of the times asked and never when not asked
# (2 pre-training seeds, a probe of 40 fresh requests each way), names 83-93%, places 85-95%. On the
# 2-core CPU the same recipe, run as the default, gave endings 100% and places 87% but names 45%;
# 8,000 + 8,000 with half asking (round 9, on the CPU) gave names 96%, places 33%, endings 44%
# (results/cpu/default_run_2026-11-30_end50/, results/cpu/story_recipe_sweep_round9_2026-11-30.json).
# At this budget each run learns two of the three, and which two the seed decides: the default
# stays the recipe whose CPU run learned names and places, and the ending is taught in LoRA
# (scripts/lora_qwen.py's TINY_UPSAMPLE: the pairs that ask for it seen 4x).
STORY_BASE = dict(out_dir="runs/tiny-story", preset="tiny-2.5m", vocab_size=4096, split="particles",
                  request_docs=8000, request_sketches=8000, rows="documents", seq_len=512, steps=1200,
                  batch_size=4, eval_every=300)


def story_base_config(**overrides) -> ScratchConfig:
    """ScratchConfig for the capstone's embedded base (STORY_BASE), with `overrides` on top."""
    return ScratchConfig(**{**STORY_BASE, **overrides})


@dataclass
class ScratchReport:
    out_dir: str
    num_params: int
    train_tokens: int
    result: TrainResult
    sample: str
    fast_path: list = field(default_factory=list)   # what the fast path picked, one line per choice
    compile_line: str | None = None                 # the first step's one-time cost


def model_config(cfg: ScratchConfig, tok) -> ModelConfig:
    """The preset, resized to the tokenizer's run (vocab, stop ids, positions), then the overrides."""
    preset = ModelConfig.preset(cfg.preset)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(cfg.model_overrides) - known)
    if unknown:
        raise ValueError(f"ScratchConfig.model_overrides: {unknown} are not ModelConfig fields "
                         f"(known: {sorted(known)})")
    # every stop token (<|im_end|>, <|endoftext|>) goes into generation_config.json, so
    # generation stops on either
    settings = dict(vocab_size=cfg.vocab_size, eos_token_id=tok.eos_token_ids, pad_token_id=tok.pad_token_id,
                    max_position_embeddings=max(cfg.seq_len, 1024), torch_dtype="float32")
    clash = sorted(settings.keys() & cfg.model_overrides.keys())
    if clash:
        raise ValueError(f"ScratchConfig.model_overrides: {clash} are set from the tokenizer and ScratchConfig "
                         f"(vocab_size: use ScratchConfig.vocab_size)")
    overrides = dict(cfg.model_overrides)
    # The preset's head_dim was derived from its own hidden_size / heads; a new size re-derives it.
    if ({"hidden_size", "num_attention_heads"} & overrides.keys()) and "head_dim" not in overrides:
        overrides["head_dim"] = None
    return dataclasses.replace(preset, **settings, **overrides)


def request_documents(n: int, seed: int) -> list[str]:
    """n pre-training documents "request\nstory" (the request as a user would type it, its
    structured conditions on their own lines) from minift.fairytales' pairs with `seed`: no
    chat template, no special tokens; pairs of another seed than the fine-tuning data's."""
    return [p.instruction + ("\n" + p.input if p.input else "") + "\n" + p.output
            for p in fairytales.generate_pairs(n, seed)]


def request_sketches(n: int, seed: int, skip: int = 0, ending_share: float | None = None) -> list[str]:
    """n short documents "request\nopening\nclosing": the request, its story's first paragraph (the
    place and the characters, the title line with it) and its last (the moral and the last line, the
    교훈 line with it), the middle left out. From pairs skip.. of `seed` (skip: the request
    documents' pairs, so none is repeated). Why: a story spends one decision on the requested place
    (its first clause) and one on the requested ending, 300-500 tokens of other text around them;
    a sketch spends ~120 tokens on both, so the same training tokens hold ~3x more of them.

    ending_share: the fraction of sketches whose request asks for the happy ending (None: as the
    pairs come, ~14%), the rest taken from pairs that do not ask, both in the pairs' order. Why:
    the ending is one decision of a rare kind; at 14% the model sees it asked too seldom to learn
    to look back for it, and among sketches that ask half the time the request is the only cue."""
    if ending_share is not None and not 0.0 <= ending_share <= 1.0:
        raise ValueError(f"ending_share must be in [0, 1] or None, got {ending_share}")
    if ending_share is None:
        pairs = fairytales.generate_pairs(skip + n, seed)[skip:]
    else:
        want_asking = round(n * ending_share)
        want = {True: want_asking, False: n - want_asking}
        # ~14% of pairs ask: a stream of n / 0.1 pairs past the skipped ones usually holds enough
        pairs, size = [], skip + n + int(n * ending_share / 0.1)
        while len(pairs) < n:
            pairs, taken = [], {True: 0, False: 0}
            for p in fairytales.generate_pairs(size, seed)[skip:]:
                asks = "happy_end" in p.spec.styles
                if taken[asks] < want[asks]:
                    taken[asks] += 1
                    pairs.append(p)
            # the first m pairs of a seed are the same for any m, so a longer stream only adds pairs
            size *= 2
    sketches = []
    for p in pairs:
        lines = p.output.split("\n")
        first = next(i for i, line in enumerate(lines) if not line.startswith("제목:"))
        last = max(i for i, line in enumerate(lines) if not line.startswith("교훈:"))
        story = lines[:first + 1] + lines[last:]
        sketches.append(p.instruction + ("\n" + p.input if p.input else "") + "\n" + "\n".join(story))
    return sketches


_ROWS = {"stream": text_rows, "documents": document_rows}


def _check_rows(rows: str) -> None:
    if rows not in _ROWS:
        raise ValueError(f"rows must be 'stream' or 'documents', got {rows!r}")


def pretrain_rows(docs: list[str], tok, seq_len: int, *, val_fraction: float, seed: int,
                  rows: str = "stream") -> Dataset:
    """minift.data.load_pretrain for documents already in memory, in stream or document rows."""
    _check_rows(rows)
    make_rows = _ROWS[rows]
    train_d, val_d = train_val_split(docs, val_fraction, seed)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    # Every document ends with the eos token, <|im_end|>, not <|endoftext|> (Qwen's separator): the
    # chat template closes the assistant's turn with <|im_end|>, and LoRA cannot train that token's
    # row of the frozen (tied) embedding. Left untrained, the fine-tuned model finishes the story
    # and then tells another one (measured 2026-11-30: no stop in 50 stories, ending 0-33%).
    sep = tok.eos_token_id
    train, stats = make_rows(train_d, tok, seq_len, sep_id=sep, pad_id=pad_id)
    val, val_stats = make_rows(val_d, tok, seq_len, sep_id=sep, pad_id=pad_id) if val_d else ([], DatasetStats())
    return Dataset(train, val, stats, val_stats, pad_id)


def train_from_scratch(cfg: ScratchConfig) -> ScratchReport:
    _check_rows(cfg.rows)   # before minutes of BPE training, not after
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    docs = (read_text(cfg.corpus) + request_documents(cfg.request_docs, cfg.request_seed)
            + fairytales.generate_stories(cfg.story_docs, cfg.request_seed)
            + request_sketches(cfg.request_sketches, cfg.request_seed, skip=cfg.request_docs,
                               ending_share=cfg.sketch_ending_share))
    logger.info("training a %d-token byte-level BPE (split: %s) on %d documents", cfg.vocab_size, cfg.split, len(docs))
    tok = train_bpe(docs, cfg.vocab_size, split=cfg.split)
    model_cfg = model_config(cfg, tok)
    data = pretrain_rows(docs, tok, cfg.seq_len, val_fraction=cfg.val_fraction, seed=cfg.seed, rows=cfg.rows)
    plan = fast_path.decide(device, torch.float32, method="scratch", one_shape=len({len(r) for r in data.train}) == 1,
                            num_rows=len(data.train), batch_size=cfg.batch_size, steps=cfg.steps, compile=cfg.compile,
                            cuda_graph=cfg.cuda_graph)
    train_rows = Batches(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, device=device,
                         drop_last=plan.drop_last)
    val_rows = Batches(data.val, cfg.batch_size, shuffle=False, device=device) if data.val else None
    model = Transformer(model_cfg).to(device)
    # bf16 autocast where the device runs it fast; fp32 on CPU, where bf16 matmuls are slower.
    precision = "bf16-autocast" if device.type == "cuda" else "fp32"
    result, compile_line = fast_path.train_with(plan, model, train_rows, val_rows, TrainConfig(
        steps=cfg.steps, lr=cfg.lr, warmup=cfg.warmup, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
        clip=1.0, precision=precision, eval_every=cfg.eval_every, eval_batches=None,
        out_dir=os.path.join(cfg.out_dir, "train"), save_every=cfg.save_every, seed=cfg.seed,
        progress=cfg.progress))
    model.eval()
    save_pretrained(model, cfg.out_dir, tokenizer=tok)
    sample = generate(model, tok, cfg.sample_prompt, max_new_tokens=120, temperature=0.8, top_k=50, seed=cfg.seed)
    return ScratchReport(cfg.out_dir, model.num_params(), data.stats.num_tokens, result, cfg.sample_prompt + sample,
                         fast_path=list(plan.lines), compile_line=compile_line)
