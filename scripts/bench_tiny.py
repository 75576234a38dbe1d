"""Training throughput of the tiny 10M model: minift's loop beside a plain PyTorch loop, same process.

    python scripts/bench_tiny.py                 # this machine's best device (CPU here)
    python scripts/bench_tiny.py --device cuda   # on a GPU, with MFU against 790 TFLOP/s
    python scripts/bench_tiny.py --device cuda --cuda-graph   # minift's loop with TrainConfig(cuda_graph=True)

Both sides train the same `tiny-10m` model from the same initial weights on the same random
batches: minift.train.train (minift's AdamW, clipping, token-weighted loss, fused chunked loss)
against the loop everyone writes first (torch.optim.AdamW, full logits, F.cross_entropy).
Steady tokens/s over the last half of the steps; the first steps warm up either side.
"""
import argparse
import contextlib
import copy
import datetime
import json
import platform
import time

import torch
import torch.nn.functional as F

import minift
from minift import flops
from minift.device import pick_device
from minift.train import TrainConfig, train


def random_batches(vocab, batch, seq, steps, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (batch, seq + 1), generator=g)
        out.append({"input_ids": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device)})
    return out


def plain_loop(model, batches, lr, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for b in batches:
        t0 = time.perf_counter()
        with autocast():
            logits = model(b["input_ids"])                                     # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), b["targets"].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(b["input_ids"].device)
        times.append(time.perf_counter() - t0)
    return times


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cuda-graph", action="store_true", help="minift's loop replays forward + backward as a CUDA graph")
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    a = ap.parse_args()
    device = pick_device(a.device)
    cfg = minift.ModelConfig.preset("tiny-10m")
    torch.manual_seed(0)
    model = minift.Transformer(cfg).to(device)
    twin = copy.deepcopy(model)
    batches = random_batches(cfg.vocab_size, a.batch, a.seq, a.steps, device)
    cuda = device.type == "cuda"
    precision = "bf16-autocast" if cuda else "fp32"
    # the plain loop's precision matches minift's: bf16 autocast on CUDA, fp32 elsewhere
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else contextlib.nullcontext  # noqa: E731

    step_times = []
    t_last = [None]

    def on_step(event):  # minift's loop: time between consecutive step callbacks
        if event.get("kind") == "train":
            _sync(device)
            now = time.perf_counter()
            if t_last[0] is not None:
                step_times.append(now - t_last[0])
            t_last[0] = now

    train(model, batches, None, TrainConfig(steps=a.steps, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1, clip=1.0,
                                            precision=precision, progress=False, log_every=10 ** 9,
                                            cuda_graph=a.cuda_graph),
          callbacks=[on_step])
    plain_times = plain_loop(twin, batches, 1e-3, autocast)

    tokens = a.batch * a.seq
    steady = lambda ts: sorted(ts[len(ts) // 2:])[len(ts[len(ts) // 2:]) // 2]  # noqa: E731
    ours, plain = tokens / steady(step_times), tokens / steady(plain_times)
    fpt = flops.flops_per_token(cfg, "full", a.seq).model
    name = torch.cuda.get_device_name() if cuda else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    row = dict(date=str(datetime.date.today()), device=name, torch=torch.__version__, batch=a.batch, seq=a.seq,
               minift_tok_s=ours, plain_tok_s=plain, ratio=ours / plain, precision=precision,
               cuda_graph=a.cuda_graph)
    if cuda:
        row.update(minift_mfu=ours * fpt / flops.H200_BF16_FLOPS, plain_mfu=plain * fpt / flops.H200_BF16_FLOPS)
    print(f"{row['date']} {name}, torch {torch.__version__}, tiny-10m, batch {a.batch} x {a.seq}, {precision}"
          + (", minift with cuda_graph" if a.cuda_graph else ""))
    print(f"minift train loop: {ours:,.0f} tok/s   plain PyTorch loop: {plain:,.0f} tok/s   ratio {ours / plain:.2f}"
          + (f"   MFU {100 * row['minift_mfu']:.1f}% vs {100 * row['plain_mfu']:.1f}%" if cuda else ""))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(row, f, indent=2)


if __name__ == "__main__":
    main()
