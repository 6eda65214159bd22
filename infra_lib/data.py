"""Records -> token tensors: the interface every training and attribution stage consumes.

One record (the schema of :mod:`infra_lib.records`) becomes one chat: the prompt as the user turn, the response as
the assistant turn, rendered with the tokenizer's chat template. Only the assistant's response
tokens and its end-of-turn token carry labels; the prompt and the template are masked with
-100. Each labelled token also carries the index of the response segment
(``meta.segments``) it belongs to: the segment that contains its first character; the end-of-turn
token belongs to the last segment.

The sequence is ``ids(template up to the assistant turn) + ids(response) + [<|im_end|>]``: the
response is tokenised on its own, so the boundary between prompt and response is never inside a
token, and the ids equal what the model sees when it generates the response after
``apply_chat_template(..., add_generation_prompt=True)``. (The template's newline after
``<|im_end|>`` is left out: nothing follows the end of the turn in training or generation.)
"""
from __future__ import annotations

import bisect
import warnings
from typing import Iterable, Mapping, Sequence

import torch

from .checks import check_records

__all__ = [
    "IGNORE_INDEX",
    "ResponseTooLongError",
    "EmptyResponseError",
    "render_prompt",
    "encode_record",
    "encode_records",
    "collate",
]

IGNORE_INDEX = -100


class EmptyResponseError(ValueError):
    """A record's response tokenises to zero tokens."""


class ResponseTooLongError(ValueError):
    """A record's prompt plus response does not fit in ``max_length`` tokens."""


def render_prompt(prompt: str, tokenizer, system: str | None = None) -> str:
    """The chat-template text up to and including the assistant header (generation prompt)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _segments(record: Mapping) -> list:
    segs = (record.get("meta") or {}).get("segments")
    if not segs:
        # A record without segments is one "step" segment (library users' own data).
        return [[0, len(record["response"]), "step"]]
    return segs


def encode_record(record: Mapping, tokenizer, max_length: int, system: str | None = None) -> dict:
    """Tokenise one record with the chat template, label the response, map tokens to segments.

    Args:
        record: a dict with ``id``, ``prompt``, ``response`` and optionally
            ``meta.segments = [[start, end, kind], ...]`` (character offsets into the response,
            half-open, in order, covering it); without segments the response is one ``"step"``.
        tokenizer: a fast tokenizer with a chat template and an ``eos_token`` (end of turn).
        max_length: the most tokens (prompt + response + end of turn) a sequence may have.
        system: an optional system message placed before the prompt.

    Returns:
        A dict with
        ``id`` (str);
        ``input_ids``: LongTensor [T], the whole chat;
        ``labels``: LongTensor [T], equal to ``input_ids`` on the response tokens and the final
        end-of-turn token, ``-100`` elsewhere (so position t's label is the token at t; the
        model's loss shifts it);
        ``segment_ids``: LongTensor [T], for labelled tokens the index into ``segment_kinds`` of
        the segment holding the token's first character (end of turn: the last segment), ``-1``
        elsewhere;
        ``segment_kinds``: list[str], the kind of each segment (``"step"``, ``"exploratory"``,
        ``"answer"``, ...);
        ``domain`` and ``difficulty`` when the record has them.

    Raises:
        EmptyResponseError: the response tokenises to zero tokens.
        ResponseTooLongError: T would exceed ``max_length``.
    """
    return encode_records([record], tokenizer, max_length, system)[0]


def _prompt_renderer(tokenizer, system: str | None):
    """A fast ``prompt -> rendered text`` function.

    Rendering the Jinja chat template costs ~0.5 ms per call; when the template inserts the
    prompt verbatim (checked on two probes) the text is the same prefix + prompt + suffix for
    every prompt, so that is used instead. Otherwise every prompt is rendered.
    """
    probe = "\x00infra-probe\x00"
    text = render_prompt(probe, tokenizer, system)
    if text.count(probe) == 1:
        head, tail = text.split(probe)
        if all(render_prompt(p, tokenizer, system) == head + p + tail for p in ("What is 1 + 2?", " x\n  y ")):
            return lambda p: head + p + tail
    return lambda p: render_prompt(p, tokenizer, system)


def _assemble(record: Mapping, prompt_ids: list, resp_ids: list, offsets: list, eot: int, max_length: int) -> dict:
    rid = record.get("id", "?")
    response = record["response"]
    if not resp_ids:
        raise EmptyResponseError(f"record {rid!r}: the response tokenises to zero tokens")
    T = len(prompt_ids) + len(resp_ids) + 1
    if T > max_length:
        raise ResponseTooLongError(
            f"record {rid!r}: {T} tokens (prompt {len(prompt_ids)} + response {len(resp_ids)} + 1) "
            f"exceed max_length={max_length}"
        )
    segs = _segments(record)
    starts = [int(s[0]) for s in segs]
    if starts[0] != 0 or int(segs[-1][1]) != len(response):
        raise ValueError(f"record {rid!r}: meta.segments must cover the response [0, {len(response)})")
    # The segment of a token is the last one starting at or before its first character.
    seg_of_token = [max(bisect.bisect_right(starts, s) - 1, 0) for s, _e in offsets]
    seg_of_token.append(len(segs) - 1)  # end of turn

    P = len(prompt_ids)
    input_ids = torch.tensor(list(prompt_ids) + list(resp_ids) + [eot], dtype=torch.long)  # (T,)
    labels = input_ids.clone()
    labels[:P] = IGNORE_INDEX
    segment_ids = torch.full((T,), -1, dtype=torch.long)
    segment_ids[P:] = torch.tensor(seg_of_token, dtype=torch.long)
    out = {
        "id": rid,
        "input_ids": input_ids,
        "labels": labels,
        "segment_ids": segment_ids,
        "segment_kinds": [str(s[2]) for s in segs],
    }
    for key in ("domain", "difficulty"):
        if key in record:
            out[key] = record[key]
    return out


def encode_records(
    records: Iterable[Mapping],
    tokenizer,
    max_length: int,
    system: str | None = None,
    on_too_long: str = "error",
) -> list[dict]:
    """``encode_record`` over many records (prompts and responses tokenised in two batched calls).

    Args:
        on_too_long: ``"error"`` (default) raises ``ResponseTooLongError`` on the first record that
            does not fit, naming it; ``"skip"`` drops such records and warns once with their
            count. Records are never truncated: a cut response would train the model on an
            unfinished answer and attribute influence to a sequence that was never seen whole.

    Raises:
        EmptyResponseError: always, for a response with zero tokens (a corpus bug).
        InputError: a record without a unique string ``id`` or with a non-string ``prompt`` or
            ``response`` (see :func:`infra_lib.checks.check_records`), before any tokenising.
    """
    if on_too_long not in ("error", "skip"):
        raise ValueError(f"on_too_long must be 'error' or 'skip', got {on_too_long!r}")
    records = list(records)
    if not records:
        return []
    check_records(records)
    eot = tokenizer.eos_token_id
    if eot is None:
        raise ValueError("the tokenizer has no eos_token (end-of-turn token)")
    render = _prompt_renderer(tokenizer, system)
    p_enc = tokenizer([render(r["prompt"]) for r in records], add_special_tokens=False)["input_ids"]
    r_enc = tokenizer([r["response"] for r in records], add_special_tokens=False, return_offsets_mapping=True)
    out, skipped = [], []
    for r, pids, rids, offs in zip(records, p_enc, r_enc["input_ids"], r_enc["offset_mapping"]):
        try:
            out.append(_assemble(r, pids, rids, offs, eot, max_length))
        except ResponseTooLongError:
            if on_too_long == "error":
                raise
            skipped.append(r.get("id", "?"))
    if skipped:
        warnings.warn(
            f"encode_records: skipped {len(skipped)} record(s) longer than max_length={max_length} "
            f"(first: {skipped[:3]})",
            stacklevel=2,
        )
    return out


def collate(examples: Sequence[Mapping], pad_token_id: int) -> dict:
    """Right-pad encoded examples into a batch.

    Returns:
        ``input_ids`` LongTensor [B, T] (padded with ``pad_token_id``), ``attention_mask``
        LongTensor [B, T] (1 on real tokens), ``labels`` LongTensor [B, T] (-100 on padding),
        ``segment_ids`` LongTensor [B, T] (-1 on padding), ``ids`` list[str] and
        ``segment_kinds`` list[list[str]]. T is the longest example in the batch.
    """
    if not examples:
        raise ValueError("collate: empty batch")
    B = len(examples)
    T = max(int(e["input_ids"].shape[0]) for e in examples)
    input_ids = torch.full((B, T), int(pad_token_id), dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
    segment_ids = torch.full((B, T), -1, dtype=torch.long)
    for b, e in enumerate(examples):
        n = int(e["input_ids"].shape[0])
        input_ids[b, :n] = e["input_ids"]
        attention_mask[b, :n] = 1
        labels[b, :n] = e["labels"]
        if "segment_ids" in e:
            segment_ids[b, :n] = e["segment_ids"]
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "segment_ids": segment_ids,
        "ids": [e.get("id") for e in examples],
        "segment_kinds": [list(e.get("segment_kinds", [])) for e in examples],
    }
