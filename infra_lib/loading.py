"""Loading a causal LM and its tokenizer from a ``from_pretrained`` folder or hub id.

The one code path for every model the library sees: the study's tiny Qwen2, a converted
pretrained checkpoint, or a user's own model.
"""
from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["load_model", "load_tokenizer", "quiet_hf_progress"]


def load_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """Load a causal LM checkpoint (ours or any Hugging Face one) in eval mode."""
    from transformers import AutoModelForCausalLM

    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    model.eval()
    return model


def load_tokenizer(path: str | os.PathLike):
    """Load a saved tokenizer (ours or a real model's) with ``AutoTokenizer.from_pretrained``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@contextlib.contextmanager
def quiet_hf_progress():
    """Silence transformers' own progress bars (weight loading and saving) for a block.

    A tiny checkpoint loads in milliseconds; a bar per load would bury the stage's own log in
    notebooks that load models in loops.
    """
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
