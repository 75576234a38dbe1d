"""minift: fine-tuning from first principles.

    cfg   = minift.ModelConfig.preset("qwen2.5-0.5b")
    model = minift.Transformer(cfg)
    model = minift.load_pretrained(path_or_id, dtype="bfloat16", device="auto")
"""
from minift.config import ModelConfig
from minift.model import KVCache, Transformer

__all__ = ["ModelConfig", "Transformer", "KVCache"]
from minift.checkpoint import load_pretrained, save_pretrained, resolve_model_dir
from minift.tokenizer import Tokenizer, load_tokenizer
from minift.generate import generate
