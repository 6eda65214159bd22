"""CoT segments: character spans of a response, each a step, an exploratory detour or an answer.

A segmentation is a list of ``[start, end, kind]`` with half-open character offsets into the
response (Python ``str`` indices, i.e. code points, not bytes or UTF-16 units). Spans are in
order, non-empty, non-overlapping and cover the whole response; a span owns the newline that
ends it. ``kind`` is one of :data:`SEGMENT_KINDS`.

The generated corpus writes its segments as ground truth; :func:`segment_response` recovers them
for text without ground truth (a user's data, the model's own generations) with the rule
The book's protocol (book/protocol.md) fixes: newline-delimited segments (a fenced code block is one segment), an answer line
is ``"answer"``, and a segment led by an exploratory marker *after the first answer* starts an
exploratory run that lasts up to the next answer. On the generated corpus the heuristic
reproduces the ground truth exactly (``tests/test_segments.py`` checks it).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

__all__ = [
    "SEGMENT_KINDS",
    "EXPLORATORY_MARKERS",
    "ANSWER_LINE",
    "answer_in_line",
    "segment_response",
    "join_segments",
    "check_segments",
    "is_answer_line",
    "is_exploratory_start",
    "last_boxed",
]

SEGMENT_KINDS: tuple[str, ...] = ("step", "exploratory", "answer")

# Phrases that open an exploratory segment when they lead a line after the first answer. The
# generator's openers ("Wait, let me check", "Alternatively") are among them (a test checks it).
# Matched case-insensitively at the start of the line (after whitespace, list bullets or `**`),
# followed by a non-letter, so "Waiting" or "Actually," inside a sentence do not count.
EXPLORATORY_MARKERS: tuple[str, ...] = (
    "Wait",
    "But wait",
    "Hold on",
    "Hmm",
    "Let me check",
    "Let me verify",
    "Let me double-check",
    "Let me double check",
    "Let me re-check",
    "Let me recheck",
    "Let's check",
    "Let's verify",
    "Let's double-check",
    "Double-check",
    "Double check",
    "To check",
    "To verify",
    "Check",
    "Verify",
    "Alternatively",
    "Another way",
    "Another approach",
    "Or, another way",
    "On second thought",
    "Actually",
)

# A line that states a final answer: "The answer is 42.", "So the final answer is: 42", or a
# LaTeX \boxed{...} (real CoT data). Greedy and anchored, so it runs in linear time on long lines;
# answer_in_line() strips the trailing period and bold markers from the captured text.
ANSWER_LINE = re.compile(
    r"^\s*(?:\*\*)?(?:(?:so|therefore|thus|hence|finally)\s*,?\s+)?the\s+(?:final\s+)?answer\s+is\s*:?\s*(?P<answer>.*\S)\s*$",
    re.IGNORECASE,
)
_BOXED = "\\boxed{"

_MARKER_RE = re.compile(
    r"^[\s*\->#]*(?:"
    + "|".join(re.escape(m) for m in sorted(EXPLORATORY_MARKERS, key=len, reverse=True))
    + r")(?![A-Za-z])",
    re.IGNORECASE,
)
_FENCE = re.compile(r"^\s*```")
_LINE = re.compile(r"[^\n]*\n|[^\n]+")


def answer_in_line(line: str) -> str | None:
    """The answer a "The answer is X." line states (``"X"``), or None for any other line."""
    m = ANSWER_LINE.match(line)
    if not m:
        return None
    ans = m.group("answer").strip().removeprefix("**").removesuffix("**").strip()
    ans = ans.rstrip(".").strip().removesuffix("**").removeprefix("**").strip()
    return ans or None


def is_answer_line(line: str) -> bool:
    """Whether ``line`` states a final answer ("The answer is ...", or contains ``\\boxed{``)."""
    return answer_in_line(line) is not None or _BOXED in line


def is_exploratory_start(line: str) -> bool:
    """Whether ``line`` is led by one of :data:`EXPLORATORY_MARKERS`."""
    return bool(_MARKER_RE.match(line))


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in ``text`` (braces matched), or None."""
    start = text.rfind(_BOXED)
    while start != -1:
        i, depth = start + len(_BOXED), 1
        for j in range(i, len(text)):
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
                if depth == 0:
                    return text[i:j].strip()
        start = text.rfind(_BOXED, 0, start)  # unbalanced: try an earlier one
    return None


def _units(text: str) -> list[tuple[int, int, bool]]:
    """Split ``text`` into (start, end, is_code_block) units covering it.

    A unit is a line with its newline, or a whole fenced code block (an unclosed fence runs to
    the end); blank lines join the unit before them (or the first unit, at the start).
    """
    units: list[list] = []
    fence_open = False
    for m in _LINE.finditer(text):
        s, e = m.span()
        line = m.group()
        if fence_open:
            units[-1][1] = e
            if _FENCE.match(line):
                fence_open = False
            continue
        if not line.strip():
            if units:
                units[-1][1] = e
            continue
        is_code = bool(_FENCE.match(line))
        fence_open = is_code and line.count("```") % 2 == 1  # "```x```" on one line closes itself
        units.append([s, e, is_code])
    if not units:
        return [(0, len(text), False)] if text else []
    units[0][0] = 0  # leading blank lines join the first unit
    return [(s, e, code) for s, e, code in units]


def segment_response(text: str) -> list[list]:
    """Segments ``[[start, end, kind], ...]`` of a response without ground-truth segments.

    Rule: one segment per line (with its newline); a fenced code block is one segment; blank
    lines belong to the segment before them. Kinds: an answer line (:data:`ANSWER_LINE` or a
    ``\\boxed{}``) or a fenced code block is ``"answer"``; once an answer has been given, a line
    led by an :data:`EXPLORATORY_MARKERS` phrase opens an ``"exploratory"`` run that continues
    over the following lines until the next answer; everything else is a ``"step"``. A response
    with no answer line at all has its last segment marked ``"answer"`` (where a CoT ends).

    The output always satisfies the span invariants (in order, non-empty, non-overlapping,
    covering ``text``); an empty text gives ``[]``.
    """
    units = _units(text)
    segments: list[list] = []
    seen_answer = False
    exploring = False
    for s, e, code in units:
        chunk = text[s:e]
        if code or is_answer_line(chunk):
            kind = "answer"
            seen_answer = True
            exploring = False
        elif seen_answer and (exploring or is_exploratory_start(chunk)):
            kind = "exploratory"
            exploring = True
        else:
            kind = "step"
        segments.append([s, e, kind])
    if segments and not seen_answer:
        segments[-1][2] = "answer"
    return segments


def join_segments(parts: Iterable[tuple[str, str]], sep: str = "\n") -> tuple[str, list[list]]:
    """Join ``(text, kind)`` parts with ``sep`` into a response and its segments.

    Each segment owns the separator that follows it (the last one has none), so the segments
    cover the response. Parts must be non-empty and kinds in :data:`SEGMENT_KINDS`.
    """
    pieces: list[str] = []
    segments: list[list] = []
    pos = 0
    parts = list(parts)
    for i, (chunk, kind) in enumerate(parts):
        if not chunk:
            raise ValueError(f"part {i} is empty")
        if kind not in SEGMENT_KINDS:
            raise ValueError(f"part {i}: unknown kind {kind!r}; expected one of {SEGMENT_KINDS}")
        piece = chunk + (sep if i < len(parts) - 1 else "")
        pieces.append(piece)
        segments.append([pos, pos + len(piece), kind])
        pos += len(piece)
    return "".join(pieces), segments


def check_segments(segments: Sequence, length: int) -> str | None:
    """What is wrong with ``segments`` for a response of ``length`` characters, or None.

    Used by :func:`infra_lib.records.validate_record`; returns a message naming the first bad
    segment by index.
    """
    if not isinstance(segments, (list, tuple)):
        return f"must be a list of [start, end, kind], got {type(segments).__name__}"
    if not segments:
        return "is empty, but must cover the whole response"
    for i, seg in enumerate(segments):
        if not isinstance(seg, (list, tuple)) or len(seg) != 3:
            return f"segment {i} must be [start, end, kind], got {seg!r}"
        start, end, kind = seg
        for name, v in (("start", start), ("end", end)):
            if not isinstance(v, int) or isinstance(v, bool):
                return f"segment {i}: {name} must be an integer, got {v!r}"
        if kind not in SEGMENT_KINDS:
            return f"segment {i}: unknown kind {kind!r}; expected one of {list(SEGMENT_KINDS)}"
        if start < 0 or end > length:
            return f"segment {i} [{start}, {end}) lies outside the response (length {length})"
        if end <= start:
            return f"segment {i} [{start}, {end}) is empty or reversed"
    for i in range(1, len(segments)):
        if segments[i][0] < segments[i - 1][0]:
            return f"segment {i} [{segments[i][0]}, {segments[i][1]}) is out of order (starts before segment {i - 1})"
    prev_end = 0
    for i, (start, end, _) in enumerate(segments):
        if start < prev_end:
            return f"segment {i} [{start}, {end}) overlaps segment {i - 1} (which ends at {prev_end})"
        if start > prev_end:
            return f"segments do not cover the response: characters [{prev_end}, {start}) are in no segment"
        prev_end = end
    if prev_end != length:
        return f"segments do not cover the response: characters [{prev_end}, {length}) are in no segment"
    return None
