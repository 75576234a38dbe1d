import sys, time, torch
import minift.model as mm
from minift.config import ModelConfig
from minift.bench import training_step
if sys.argv[1] == "nonreentrant":
    mm._reentrant = lambda layer, x: False
torch.set_num_threads(1)
cfg = ModelConfig.preset("qwen2.5-0.5b")
cfg = cfg.__class__(**{**cfg.__dict__, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2,
                      "num_key_value_heads": 1, "head_dim": 32, "vocab_size": 512})
torch.manual_seed(0)
model, step = training_step(cfg, "lora", device="cpu", dtype="float32", grad_ckpt=True, loss_chunk=256, fused=True)
for n, p in model.named_parameters():
    if "lora_B" in n: torch.nn.init.normal_(p, std=0.1)
ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(1))
loss = model(ids, ids); loss.backward()
g = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])
print("grads", sum(p.grad is not None for p in model.parameters() if p.requires_grad), "norm", g.norm().item())
model.zero_grad(set_to_none=True)
for _ in range(3): step(ids, ids)
ts = []
for _ in range(15):
    t = time.perf_counter(); step(ids, ids); ts.append(time.perf_counter() - t)
ts.sort(); print(sys.argv[1], f"median {ts[len(ts)//2]*1e3:.1f} ms")
