"""The tiny Qwen2 model: a config dataclass and a builder.

The model is a stock ``transformers.Qwen2ForCausalLM`` (the class of Qwen2.5-7B-Instruct), so
everything downstream (training, evaluation, factors, scores) loads checkpoints with
``from_pretrained(path)``, the same code path as a real model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from infra_lib.loading import load_model, quiet_hf_progress  # noqa: F401  (re-exported)

__all__ = ["ModelConfig", "build_model", "load_model", "model_exists", "count_parameters", "quiet_hf_progress"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the tiny Qwen2 (defaults: the ~1.1M-parameter ``tiny`` model)."""

    hidden_size: int = 128
    """Width of the residual stream (d_model)."""
    num_layers: int = 4
    """Number of decoder blocks."""
    intermediate_size: int = 512
    """Width of the SwiGLU MLP (gate_proj/up_proj out, down_proj in)."""
    num_heads: int = 4
    """Attention heads; ``hidden_size`` must divide by it."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention when < ``num_heads``)."""
    max_position_embeddings: int = 1024
    """Longest sequence (prompt + response) the rotary embedding is set up for."""
    rope_theta: float = 10000.0
    """Rotary base frequency."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head (saves vocab x hidden parameters)."""
    init_std: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""
    seed: int = 0
    """Seed of the weight initialisation."""

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "intermediate_size", "num_heads", "num_kv_heads", "max_position_embeddings"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            raise ValueError("head dimension must be even for rotary embeddings")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


def build_model(cfg: ModelConfig, tokenizer):
    """A freshly initialised ``Qwen2ForCausalLM`` (float32, train mode off) for ``tokenizer``.

    The vocabulary is ``len(tokenizer)``; ``eos_token_id`` is the tokenizer's end-of-turn token
    and ``pad_token_id`` its pad token, so ``generate`` stops at the end of a turn. Initialisation
    is seeded by ``cfg.seed`` and does not touch the global RNG state.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf_cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings,
        initializer_range=cfg.init_std,
        use_sliding_window=False,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Qwen2ForCausalLM(hf_cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.eval()
    return model


def model_exists(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a saved model (config plus safetensors weights)."""
    p = Path(path)
    return (p / "config.json").is_file() and any(p.glob("*.safetensors"))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())
