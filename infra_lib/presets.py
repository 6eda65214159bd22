"""Presets of the command line for real models: ``infra COMMAND --profile paper``.

A preset is a :class:`ScaleConfig`, the defaults of the command-line options for one real model
and its data; options given on the command line win. The study's profiles reuse them.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ScaleConfig", "PRESETS", "scale_argv"]


@dataclass(frozen=True)
class ScaleConfig:
    """A real model and real data, run through the command line (``infra ... --profile paper``).

    Each field is the default of the command-line option of the same name; options given on the
    command line win. Data sources are JSONL files or ``hf:NAME[:CONFIG][@SPLIT]`` ``datasets`` ids,
    read through a field mapping (``data/mappings/*.json``) and rendered with the model's own chat
    template; records longer than ``max_length`` tokens are skipped with a counted warning."""

    model: str = "Qwen/Qwen2.5-7B-Instruct"
    """A hub id or a local ``from_pretrained`` folder (its tokenizer and chat template are used)."""
    model_dtype: str = "bfloat16"
    """Dtype the weights are loaded in."""
    autocast: str = "bfloat16"
    """Autocast dtype of the forward passes (``none`` to run in ``model_dtype``); accumulators stay ``dtype``."""
    device: str = "auto"
    """``cuda`` | ``cpu`` | ``auto``; under torchrun each rank takes ``cuda:LOCAL_RANK``."""
    gradient_checkpointing: bool = True
    """Recompute decoder layers in the backward (4k-token sequences of a 7B model)."""
    max_length: int = 4096
    """Longest chat-templated example in tokens; longer ones are skipped and counted, never truncated."""
    train: str | None = None
    """Training records (JSONL or ``hf:`` id); no default: the user's SFT data."""
    mapping: str | None = None
    """Field mapping of ``train`` (e.g. ``data/mappings/hendrycks_math.json``)."""
    batch_size: int = 4
    """Examples per batch of every pass."""
    dtype: str = "float32"
    """Dtype of the factors, the query store and the scores (``float64`` doubles their memory)."""

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("ScaleConfig.model must name a hub id or a folder")
        if self.max_length < 1 or self.batch_size < 1:
            raise ValueError("ScaleConfig.max_length and batch_size must be >= 1")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"ScaleConfig.dtype must be float32 or float64, got {self.dtype!r}")


PRESETS: dict[str, ScaleConfig] = {"paper": ScaleConfig()}
"""Named presets: ``paper`` is Qwen2.5-7B-Instruct in bfloat16 on GPUs."""


def scale_argv(command: str, preset: str) -> list[str]:
    """Command-line options that a preset's :class:`ScaleConfig` sets for ``infra COMMAND`` (the
    options given after them on the command line win)."""
    if preset not in PRESETS:
        raise KeyError(f"profile {preset!r} has no real-model settings for the command line; use one of {', '.join(sorted(PRESETS))}")
    sc = PRESETS[preset]
    if command not in ("fit-factors", "score"):
        return []
    out = ["--model", sc.model, "--model-dtype", sc.model_dtype, "--autocast", sc.autocast, "--device", sc.device,
           "--max-length", str(sc.max_length), "--batch-size", str(sc.batch_size), "--dtype", sc.dtype,
           "--gradient-checkpointing" if sc.gradient_checkpointing else "--no-gradient-checkpointing"]
    if sc.train is not None:
        out += ["--train", sc.train]
    if sc.mapping is not None:
        out += ["--mapping", sc.mapping]
    return out
