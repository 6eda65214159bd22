"""Tests of infra_lib.segments: the span invariants hold for any text, and the heuristic labels
steps, answers and exploratory detours as the book's protocol defines them.

Run: ``pytest tests/lib/test_segments.py``.
"""
from hypothesis import given, settings
from hypothesis import strategies as st

from infra_lib.segments import (
    EXPLORATORY_MARKERS,
    SEGMENT_KINDS,
    answer_in_line,
    check_segments,
    is_answer_line,
    is_exploratory_start,
    join_segments,
    last_boxed,
    segment_response,
)


def assert_invariants(text, segs):
    """Spans inside the text, non-empty, in order, non-overlapping, covering it; known kinds."""
    if not text:
        assert segs == []
        return
    assert segs[0][0] == 0 and segs[-1][1] == len(text)
    for (s, e, k), nxt in zip(segs, segs[1:] + [None]):
        assert 0 <= s < e <= len(text)
        assert k in SEGMENT_KINDS
        if nxt is not None:
            assert nxt[0] == e
    assert check_segments(segs, len(text)) is None


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_invariants_on_arbitrary_text(text):
    assert_invariants(text, segment_response(text))


LINES = st.sampled_from(
    [
        "First, add the ones.",
        "The answer is 42.",
        "So the answer is 7",
        "Wait, let me check: 42 - 17 = 25.",
        "Alternatively, add in the other order.",
        "Let me verify this.",
        "Actually, no.",
        "```python",
        "```",
        "def f(x):",
        "    return x",
        "",
        "   ",
        "\\boxed{3}",
        "x = 3\r",
        "Wait",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(LINES, st.text(max_size=20)), max_size=15), st.booleans())
def test_invariants_and_rules_on_cot_like_text(lines, trailing_newline):
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    segs = segment_response(text)
    assert_invariants(text, segs)
    # Exploratory segments come only after an answer, and a run starts with a marker.
    seen_answer, prev = False, None
    for s, e, k in segs:
        if k == "exploratory":
            assert seen_answer
            assert prev == "exploratory" or is_exploratory_start(text[s:e])
        seen_answer = seen_answer or k == "answer"
        prev = k
    if segs:
        assert any(k == "answer" for _, _, k in segs)


def kinds(text):
    return [(text[s:e], k) for s, e, k in segment_response(text)]


def test_labels_steps_answer_and_exploration():
    text = (
        "First, work out 7 + 5.\n"
        "Wait, this is before any answer.\n"
        "The answer is 12.\n"
        "Wait, let me check by subtracting back.\n"
        "12 - 5 = 7, which is the first number.\n"
        "So the answer is 12."
    )
    assert [k for _, k in kinds(text)] == ["step", "step", "answer", "exploratory", "exploratory", "answer"]


def test_marker_needs_a_word_boundary_and_a_line_start():
    assert is_exploratory_start("Wait, let me check")
    assert is_exploratory_start("  alternatively, add")
    assert is_exploratory_start("**Wait**")
    assert not is_exploratory_start("Waiting for the carry")
    assert not is_exploratory_start("So, wait")
    text = "The answer is 3.\nWaiting is not a marker.\nThe answer is 3."
    assert [k for _, k in kinds(text)] == ["answer", "step", "answer"]


def test_every_marker_is_recognised():
    for m in EXPLORATORY_MARKERS:
        assert is_exploratory_start(f"{m}, something"), m


def test_code_block_is_one_answer_segment_and_blank_lines_join_previous():
    text = "\nFirst, f takes x.\n\n```python\ndef f(x):\n\n    return x\n```\n\nWait, check f(1).\nSo the final code is:\n```python\ndef f(x):\n    return x\n```"
    got = kinds(text)
    assert got[0] == ("\nFirst, f takes x.\n\n", "step")
    assert got[1] == ("```python\ndef f(x):\n\n    return x\n```\n\n", "answer")
    assert [k for _, k in got] == ["step", "answer", "exploratory", "exploratory", "answer"]


def test_unclosed_fence_runs_to_the_end():
    text = "Plan.\n```python\ndef f(x):\n    return x"
    assert kinds(text) == [("Plan.\n", "step"), ("```python\ndef f(x):\n    return x", "answer")]


def test_no_answer_line_marks_the_last_segment_answer():
    assert [k for _, k in kinds("a\nb\nc")] == ["step", "step", "answer"]
    assert kinds("42") == [("42", "answer")]


def test_answer_lines():
    assert is_answer_line("The answer is 42.")
    assert is_answer_line("Therefore, the final answer is: 42")
    assert is_answer_line("so the answer is -3")
    assert is_answer_line("Hence $\\boxed{12}$.")
    assert not is_answer_line("So 40 + 2 = 42.")
    assert not is_answer_line("The answer lies in the tens.")
    assert not is_answer_line("The answer is")
    assert answer_in_line("The answer is 3.5.") == "3.5"
    assert answer_in_line("So the answer is **42**.") == "42"
    assert answer_in_line("So 40 + 2 = 42.") is None


def test_last_boxed_matches_braces():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{3} then \\boxed{unclosed") == "3"


def test_join_segments_round_trip():
    text, segs = join_segments([("a", "step"), ("b b", "answer"), ("c", "exploratory")])
    assert text == "a\nb b\nc"
    assert segs == [[0, 2, "step"], [2, 6, "answer"], [6, 7, "exploratory"]]
    assert_invariants(text, segs)


def test_check_segments_names_each_problem():
    assert "cover" in check_segments([[0, 2, "step"]], 3)
    assert "cover" in check_segments([[0, 1, "step"], [2, 3, "step"]], 3)
    assert "overlaps" in check_segments([[0, 2, "step"], [1, 3, "step"]], 3)
    assert "out of order" in check_segments([[1, 3, "step"], [0, 1, "step"]], 3)
    assert "unknown kind" in check_segments([[0, 3, "thought"]], 3)
    assert "empty" in check_segments([[0, 0, "step"], [0, 3, "step"]], 3)
    assert "outside" in check_segments([[0, 4, "step"]], 3)
    assert "integer" in check_segments([[0, 3.0, "step"]], 3)
