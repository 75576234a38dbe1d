"""ModelConfig: the numbers that define a decoder, with presets copied from Hugging Face configs.

Field names are the ones in Hugging Face's config.json, so reading and writing that file is a
copy. Only two architectures are understood: Qwen2ForCausalLM and LlamaForCausalLM. They differ
in which projections carry a bias and in their defaults; the math is the same decoder.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

SUPPORTED_ARCHITECTURES = ("Qwen2ForCausalLM", "LlamaForCausalLM")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None              # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    architecture: str = "Qwen2ForCausalLM"
    qkv_bias: bool = True                    # Qwen2: q/k/v carry a bias; Llama: attention_bias
    o_bias: bool = False                     # Llama's attention_bias also adds one to o_proj
    mlp_bias: bool = False                   # Llama's mlp_bias
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    torch_dtype: str = "bfloat16"
    name_or_path: str = ""
    extra: dict = field(default_factory=dict, repr=False)  # unknown config.json keys, kept for writing back

    def __post_init__(self):
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                                 f"num_attention_heads {self.num_attention_heads}; give head_dim explicitly")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} must be a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads} (grouped-query attention)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not supported; "
                             f"minift runs {', '.join(SUPPORTED_ARCHITECTURES)}")

    # ------------------------------------------------------------------ sizes
    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count, by the formula (tests check it against the meta-device model)."""
        h, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        q_out, kv_out = self.num_attention_heads * hd, self.num_key_value_heads * hd
        attn = h * q_out + 2 * h * kv_out + q_out * h
        attn += (q_out + 2 * kv_out) * self.qkv_bias + h * self.o_bias
        mlp = 3 * h * f + (2 * f + h) * self.mlp_bias
        per_layer = attn + mlp + 2 * h          # two RMSNorm weights
        body = self.num_hidden_layers * per_layer + h  # final norm
        if not include_embedding:
            return body
        embed = self.vocab_size * h
        return body + embed + (0 if self.tie_word_embeddings else embed)

    # ------------------------------------------------------------------ presets
    @staticmethod
    def preset(name: str) -> "ModelConfig":
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
        return PRESETS[name]()

    # ------------------------------------------------------------------ HF config.json
    @staticmethod
    def from_hf(path: str) -> "ModelConfig":
        """Read a Hugging Face config.json (a file, or a directory holding one)."""
        file = os.path.join(path, "config.json") if os.path.isdir(path) else path
        if not os.path.exists(file):
            raise FileNotFoundError(f"no config.json at {file}")
        try:
            with open(file, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not valid JSON ({e})") from e
        return ModelConfig.from_hf_dict(raw, source=file)

    @staticmethod
    def from_hf_dict(raw: dict, source: str = "config.json") -> "ModelConfig":
        archs = raw.get("architectures") or []
        arch = archs[0] if archs else {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}.get(
            raw.get("model_type", ""), "")
        if arch not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"{source}: architecture {arch or raw.get('model_type')!r} is not supported; "
                             f"minift runs {', '.join(SUPPORTED_ARCHITECTURES)}")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in raw:
                raise ValueError(f"{source}: missing key {key!r}")
        rope_scaling = raw.get("rope_scaling") or (raw.get("rope_parameters") or {})
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default")) if rope_scaling else "default"
        if rope_type not in ("default", None):
            raise ValueError(f"{source}: rope_scaling type {rope_type!r} is not supported (only plain RoPE)")
        if raw.get("use_sliding_window"):
            raise ValueError(f"{source}: use_sliding_window=true is not supported (Qwen2.5 ships it false)")
        theta = raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0))
        qwen = arch == "Qwen2ForCausalLM"
        attention_bias = raw.get("attention_bias", False)
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
            head_dim=raw.get("head_dim"),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            rope_theta=float(theta),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=raw.get("tie_word_embeddings", not qwen),
            architecture=arch,
            qkv_bias=True if qwen else attention_bias,
            o_bias=False if qwen else attention_bias,
            mlp_bias=False if qwen else raw.get("mlp_bias", False),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            initializer_range=raw.get("initializer_range", 0.02),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype") or "bfloat16",
            extra={k: v for k, v in raw.items() if k not in known and k not in _HF_KEYS_WE_WRITE},
        )

    def to_hf_dict(self) -> dict:
        """The config.json transformers expects for this architecture."""
        qwen = self.architecture == "Qwen2ForCausalLM"
        out = dict(self.extra)
        out.update(
            architectures=[self.architecture],
            model_type="qwen2" if qwen else "llama",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            max_position_embeddings=self.max_position_embeddings,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id,
            torch_dtype=self.torch_dtype,
            use_cache=True,
        )
        if self.pad_token_id is not None:
            out["pad_token_id"] = self.pad_token_id
        if qwen:
            out.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_hidden_layers,
                       attention_dropout=0.0)
        else:
            out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias, attention_dropout=0.0,
                       pretraining_tp=1, rope_scaling=None)
        return out

    def save_hf(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(self.to_hf_dict(), f, indent=2)


_HF_KEYS_WE_WRITE = {
    "architectures", "model_type", "head_dim", "hidden_act", "use_cache", "use_sliding_window",
    "sliding_window", "max_window_layers", "attention_dropout", "attention_bias", "pretraining_tp",
    "rope_scaling", "transformers_version", "dtype", "rope_parameters", "layer_types",
}


# ---------------------------------------------------------------------- presets
# Literal values copied from each model's config.json (links beside them), so a reader can check.

def _qwen25(**kw) -> ModelConfig:
    # Shared by all Qwen2.5 sizes: rope_theta 1e6, rms_norm_eps 1e-6, max_position_embeddings 32768,
    # bos 151643, eos 151645 (<|im_end|>), q/k/v bias.
    return ModelConfig(max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       architecture="Qwen2ForCausalLM", qkv_bias=True, bos_token_id=151643,
                       eos_token_id=151645, **kw)


PRESETS = {
    # The from-scratch model of the seed chapter's Parts 1-6: the Qwen2 decoder at ~10M parameters,
    # with the 8,192-token byte-level BPE that scripts/train_tiny.py trains on the fairytale corpus.
    # 10,065,600 parameters (tied): embedding 2.6M + 6 layers x 1.24M.
    "tiny-10m": lambda: ModelConfig(
        vocab_size=8192, hidden_size=320, intermediate_size=864, num_hidden_layers=6,
        num_attention_heads=5, num_key_value_heads=5, max_position_embeddings=1024, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, architecture="Qwen2ForCausalLM", qkv_bias=True,
        bos_token_id=None, eos_token_id=None, name_or_path="tiny-10m"),
    # The capstone's embedded base (minift.scratch.STORY_BASE): the same decoder, smaller, so that a
    # 2-core CPU pre-trains it on more tokens in the same minutes. 2,559,936 parameters (tied):
    # embedding 0.79M (4,096-token BPE) + 4 layers x 0.44M.
    "tiny-2.5m": lambda: dataclasses.replace(
        PRESETS["tiny-10m"](), vocab_size=4096, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=3, num_key_value_heads=3, head_dim=None, name_or_path="tiny-2.5m"),
    # https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json
    "qwen2.5-0.5b": lambda: _qwen25(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                    num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                    tie_word_embeddings=True, name_or_path="Qwen/Qwen2.5-0.5B-Instruct"),
    # https://huggingface.co/Qwen/Qwen2.5-1.5B-Instruct/blob/main/config.json
    "qwen2.5-1.5b": lambda: _qwen25(vocab_size=151936, hidden_size=1536, intermediate_size=8960,
                                    num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                                    tie_word_embeddings=True, name_or_path="Qwen/Qwen2.5-1.5B-Instruct"),
    # https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/config.json
    "qwen2.5-3b": lambda: _qwen25(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                                  num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                                  tie_word_embeddings=True, name_or_path="Qwen/Qwen2.5-3B-Instruct"),
    # https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json (untied head, larger vocab)
    "qwen2.5-7b": lambda: _qwen25(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                  num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                  tie_word_embeddings=False, name_or_path="Qwen/Qwen2.5-7B-Instruct"),
    # https://huggingface.co/Qwen/Qwen2.5-14B-Instruct/blob/main/config.json (the seed's 13B row)
    # 14,770,033,664 parameters (untied)
    "qwen2.5-14b": lambda: _qwen25(vocab_size=152064, hidden_size=5120, intermediate_size=13824,
                                   num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                                   tie_word_embeddings=False, name_or_path="Qwen/Qwen2.5-14B-Instruct"),
    # https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/config.json (the seed's 70B row)
    # 72,706,203,648 parameters (untied)
    "qwen2.5-72b": lambda: _qwen25(vocab_size=152064, hidden_size=8192, intermediate_size=29568,
                                   num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                                   tie_word_embeddings=False, name_or_path="Qwen/Qwen2.5-72B-Instruct"),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-360M-Instruct/blob/main/config.json
    "smollm2-360m": lambda: ModelConfig(
        vocab_size=49152, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
        num_attention_heads=15, num_key_value_heads=5, max_position_embeddings=8192, rope_theta=100000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, architecture="LlamaForCausalLM", qkv_bias=False,
        o_bias=False, mlp_bias=False, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        name_or_path="HuggingFaceTB/SmolLM2-360M-Instruct"),
}
