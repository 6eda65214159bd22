"""A byte-level BPE tokenizer trained on the corpus, wrapped as a `transformers` fast tokenizer.

The tokenizer mirrors Qwen2's: the same pre-tokenisation regex (every digit is its own pre-token,
so no merge can ever join two digits or a digit and a space), byte-level BPE on top, the special
tokens ``<|endoftext|>`` (padding), ``<|im_start|>`` and ``<|im_end|>`` (end of turn = EOS), and a
Qwen-style chat template. It is saved with ``save_pretrained`` so that the rest of the pipeline
loads it exactly as it would load a real checkpoint's tokenizer: ``AutoTokenizer.from_pretrained``.

Why digits alone: a tiny model cannot learn arithmetic over multi-digit tokens whose identity
hides the digits; with one token per digit, column-wise addition is a lookup per column.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from infra_lib.loading import load_tokenizer  # noqa: F401  (re-exported)

__all__ = [
    "PAD_TOKEN",
    "IM_START",
    "IM_END",
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "WHOLE_WORDS",
    "whole_word_forms",
    "train_tokenizer",
    "load_tokenizer",
    "tokenizer_exists",
]

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)

# Qwen2's pre-tokenisation pattern: `\p{N}` on its own makes every digit a separate pre-token.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen2.5's template without the default system prompt (it would cost every example ~20 tokens a
# tiny model has no use for); a system message is rendered when one is given.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


# Connector words and exploration markers that the version-2 corpus keeps whole: a 512-token BPE
# otherwise splits "Wait", "Alternatively", "check", "Since" into fragments, and the token-level
# analysis wants one token per word where it can. Each form (line-initial "Wait", mid-line
# " since") that occurs in the training text becomes one added token matched as a whole word.
WHOLE_WORDS = (
    "Wait", "Alternatively", "Another", "Hmm", "Hold", "check", "verify", "double", "recheck", "trace",
    "So", "Therefore", "Thus", "Hence", "Since", "since", "because", "But", "but",
    "First", "Next", "Then", "then", "Now", "After", "Otherwise", "otherwise", "carry", "borrow",
)


def whole_word_forms(records: Iterable[Mapping], words: Sequence[str] = WHOLE_WORDS, min_count: int = 20) -> list[str]:
    """The forms of ``words`` (``"Wait"`` at a line start, ``" since"`` after a space) that occur
    at least ``min_count`` times as whole words in the prompts and responses, in a fixed order."""
    import re

    text = "\n".join(t for t in _texts(records))
    out = []
    for w in words:
        for form in (w, " " + w):
            pat = (r"(?<![^\s])" if form == w else "") + re.escape(form) + r"(?![A-Za-z0-9_])"
            if form == w:  # line start or after a non-space, non-letter (": So")
                pat = r"(?:^|(?<=[\n(]))" + re.escape(w) + r"(?![A-Za-z0-9_])"
            n = len(re.findall(pat, text, flags=re.M))
            if n >= min_count:
                out.append(form)
    return out


def _texts(records: Iterable[Mapping]) -> Iterable[str]:
    for r in records:
        # The template's role names, so that "user" and "assistant" become single tokens.
        yield "user\nassistant\n"
        yield r["prompt"]
        yield r["response"]


def train_tokenizer(records: Iterable[Mapping], vocab_size: int, out_dir: str | os.PathLike,
                    whole_words: Sequence[str] | None = None):
    """Train a byte-level BPE on the prompts and responses of ``records`` and save it.

    Args:
        records: corpus records (dicts with ``prompt`` and ``response`` strings).
        vocab_size: total vocabulary size including the 256 byte tokens and the 3 special tokens;
            at least 259 + 1.
        out_dir: folder written with ``save_pretrained`` (``tokenizer.json``,
            ``tokenizer_config.json``, chat template).
        whole_words: words kept whole (:data:`WHOLE_WORDS` by default for records of the
            version-2 corpus, none for version 1 so that round 1's tokenizer is unchanged); each
            form that occurs (:func:`whole_word_forms`) is one added token within ``vocab_size``.

    Returns:
        The ``PreTrainedTokenizerFast``, as ``AutoTokenizer.from_pretrained(out_dir)`` loads it:
        ``eos_token = <|im_end|>``, ``pad_token = <|endoftext|>``, right padding.
    """
    records = list(records)
    if whole_words is None:
        v2 = any((r.get("meta") or {}).get("corpus_version") == 2 for r in records)
        whole_words = WHOLE_WORDS if v2 else ()
    forms = whole_word_forms(records, whole_words) if whole_words else []
    if vocab_size - len(forms) < 256 + len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level BPE and {len(forms)} whole words (need > 259)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(forms),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(records), trainer=trainer)
    if forms:  # matched before pre-tokenisation, each as one token, never inside a longer word
        # A form led by a space cannot ask for a word boundary on its left (the letter before the
        # space would fail it), so only the line-initial forms are single words; " borrow" is
        # also the start of " borrowed" (its stem then is one token).
        tok.add_tokens([AddedToken(f, single_word=not f.startswith(" "), normalized=False) for f in forms])
    fast = _wrap(tok)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    return load_tokenizer(out_dir)


def _wrap(tok: Tokenizer):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[IM_START, IM_END],
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_exists(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a saved fast tokenizer."""
    return (Path(path) / "tokenizer.json").is_file()
