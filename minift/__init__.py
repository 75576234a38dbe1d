"""minift: fine-tuning from first principles.

    cfg   = minift.ModelConfig.preset("qwen2.5-0.5b")
    model = minift.Transformer(cfg)
    model = minift.load_pretrained(path_or_id, dtype="bfloat16", device="auto")
    tok   = minift.load_tokenizer(path_or_id)
    text  = minift.generate(model, tok, prompt, max_new_tokens=64)

LoRA, NF4 and the memory math are submodules: `from minift import lora, quant, memory`.
"""
from minift.checkpoint import load_pretrained, resolve_model_dir, save_pretrained
from minift.config import ModelConfig
from minift.generate import generate
from minift.model import KVCache, Transformer
from minift.tokenizer import Tokenizer, load_tokenizer

__all__ = ["ModelConfig", "Transformer", "KVCache", "load_pretrained", "save_pretrained", "resolve_model_dir",
           "Tokenizer", "load_tokenizer", "generate"]
