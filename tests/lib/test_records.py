"""Tests of infra_lib.records: one test per kind of malformed record (the error names file:line
and the field), field mappings for a user's data, and atomic writes; hypothesis properties: valid
records round-trip, a garbage or truncated line is rejected with its line number, derived and
broken segments.

Run: ``pytest tests/lib/test_records.py``.
"""
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from infra_lib.records import RecordError, load_mapping, load_records, validate_record, write_records
from infra_lib.segments import SEGMENT_KINDS, check_segments, join_segments, segment_response

MAPPINGS = Path(__file__).resolve().parents[2] / "data" / "mappings"


def math_rec(i=0, **over):
    response = "First, work out 7 + 5.\nThe answer is 12."
    rec = {
        "id": f"m{i}",
        "domain": "math",
        "difficulty": 1,
        "prompt": "What is 7 + 5?",
        "response": response,
        "answer": "12",
        "meta": {"segments": [[0, 23, "step"], [23, len(response), "answer"]]},
    }
    rec.update(over)
    return rec


def code_rec(i=0, **over):
    response = "```python\ndef f(x):\n    return x\n```"
    rec = {
        "id": f"c{i}",
        "domain": "code",
        "difficulty": 2,
        "prompt": "Write f(x) that returns x.",
        "response": response,
        "tests": ["assert f(1) == 1"],
        "meta": {"segments": [[0, len(response), "answer"]]},
    }
    rec.update(over)
    return rec


def write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n", encoding="utf-8")
    return path


def expect_error(path, line, field, *words, mapping=None):
    with pytest.raises(RecordError) as info:
        load_records(path, mapping=mapping)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}:"), msg
    if field is not None:
        assert f"field '{field}'" in msg, msg
        assert info.value.field == field
    for w in words:
        assert w in msg, msg
    return msg


def test_valid_records_load(tmp_path):
    path = write_lines(tmp_path, [math_rec(0), code_rec(1), "", math_rec(2)])
    recs = load_records(path)
    assert [r["id"] for r in recs] == ["m0", "c1", "m2"]


def test_bad_json(tmp_path):
    path = write_lines(tmp_path, [math_rec(0), '{"id": "m1", "domain": "math",'])
    expect_error(path, 2, None, "bad JSON")


def test_not_an_object(tmp_path):
    path = write_lines(tmp_path, [math_rec(0), "[1, 2]"])
    expect_error(path, 2, None, "JSON object")


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps(math_rec(0)).encode()
    path.write_bytes(good + b"\n" + json.dumps(math_rec(1)).encode().replace(b"What", b"Wh\xff\xfet") + b"\n")
    expect_error(path, 2, None, "not valid UTF-8", "0xff")


def test_empty_file(tmp_path):
    for content in ("", "\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content)
        with pytest.raises(RecordError, match="empty file"):
            load_records(path)


@pytest.mark.parametrize("field", ["id", "domain", "difficulty", "prompt", "response"])
def test_missing_field(tmp_path, field):
    rec = math_rec(1)
    del rec[field]
    path = write_lines(tmp_path, [math_rec(0), rec])
    expect_error(path, 2, field, "missing")


def test_missing_answer_or_tests(tmp_path):
    rec = math_rec(1)
    del rec["answer"]
    expect_error(write_lines(tmp_path, [rec], "a.jsonl"), 1, "answer", "missing")
    rec = code_rec(1)
    del rec["tests"]
    expect_error(write_lines(tmp_path, [rec], "b.jsonl"), 1, "tests", "missing")


def test_answer_and_tests_belong_to_their_domain(tmp_path):
    expect_error(write_lines(tmp_path, [math_rec(0, tests=["assert 1"])], "a.jsonl"), 1, "tests", "only code")
    expect_error(write_lines(tmp_path, [code_rec(0, answer="1")], "b.jsonl"), 1, "answer", "only math")


@pytest.mark.parametrize(
    "field,value,word",
    [
        ("id", 3, "string"),
        ("prompt", 5, "string"),
        ("response", ["a"], "string"),
        ("answer", 12, "string"),
        ("meta", [], "object"),
    ],
)
def test_wrong_type(tmp_path, field, value, word):
    path = write_lines(tmp_path, [math_rec(0, **{field: value})])
    expect_error(path, 1, field, word)


def test_wrong_type_tests(tmp_path):
    expect_error(write_lines(tmp_path, [code_rec(0, tests="assert f(1) == 1")], "a.jsonl"), 1, "tests", "list")
    expect_error(write_lines(tmp_path, [code_rec(0, tests=["assert f(1) == 1", 3])], "b.jsonl"), 1, "tests", "item 1")


def test_unknown_domain(tmp_path):
    path = write_lines(tmp_path, [math_rec(0), math_rec(1, domain="physics")])
    expect_error(path, 2, "domain", "unknown domain", "physics")


@pytest.mark.parametrize("level", [0, 6, -1])
def test_difficulty_out_of_range(tmp_path, level):
    expect_error(write_lines(tmp_path, [math_rec(0, difficulty=level)]), 1, "difficulty", "out of range", "1..5")


@pytest.mark.parametrize("level", [3.0, 2.5, "3", True, None])
def test_difficulty_not_an_integer(tmp_path, level):
    expect_error(write_lines(tmp_path, [math_rec(0, difficulty=level)]), 1, "difficulty", "integer")


@pytest.mark.parametrize("response", ["", "  \n "])
def test_empty_response(tmp_path, response):
    rec = math_rec(0, response=response)
    rec["meta"] = {"segments": []}
    expect_error(write_lines(tmp_path, [rec]), 1, "response", "empty")


def test_empty_prompt(tmp_path):
    expect_error(write_lines(tmp_path, [math_rec(0, prompt=" ")]), 1, "prompt", "empty")


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path, [math_rec(0), code_rec(1), math_rec(0)])
    expect_error(path, 3, "id", "duplicate id 'm0'", "line 1")


def with_segments(segs):
    rec = math_rec(0)
    rec["meta"] = {"segments": segs}
    return rec


@pytest.mark.parametrize(
    "segs,word",
    [
        ([[0, 23, "step"]], "do not cover"),  # the tail is in no segment
        ([[0, 20, "step"], [23, 40, "answer"]], "do not cover"),  # a gap
        ([[0, 25, "step"], [23, 40, "answer"]], "overlaps"),
        ([[23, 40, "answer"], [0, 23, "step"]], "out of order"),
        ([[0, 23, "step"], [23, 40, "conclusion"]], "unknown kind"),
        ([[0, 23, "step"], [23, 99, "answer"]], "outside"),
        ([[0, 0, "step"], [0, 40, "answer"]], "empty"),
        ([[0, 23, "step"], [23, 40]], "[start, end, kind]"),
        ([], "empty"),
        ("0-40", "list"),
    ],
)
def test_bad_segments(tmp_path, segs, word):
    assert len(math_rec(0)["response"]) == 40
    expect_error(write_lines(tmp_path, [math_rec(1), with_segments(segs)]), 2, "meta.segments", word)


def test_key_given_twice_is_refused(tmp_path):
    line = json.dumps(math_rec(1))[:-1] + ', "difficulty": 5}'  # plain JSON would keep 5 silently
    path = write_lines(tmp_path, [math_rec(0), line])
    expect_error(path, 2, "difficulty", "appears twice")
    nested = json.dumps(math_rec(2)).replace('"meta": {', '"meta": {"x": 1, "x": 2, ')
    expect_error(write_lines(tmp_path, [nested], "n.jsonl"), 1, "x", "appears twice")


def test_unknown_field(tmp_path):
    expect_error(write_lines(tmp_path, [math_rec(0, solution="x")]), 1, "solution", "unknown field")


def test_missing_segments_are_derived(tmp_path):
    rec = math_rec(0)
    del rec["meta"]
    recs = load_records(write_lines(tmp_path, [rec]))
    assert recs[0]["meta"]["segments"] == [[0, 23, "step"], [23, 40, "answer"]]
    assert recs[0]["meta"]["segments_derived"] is True


def test_validate_record_uses_where():
    with pytest.raises(RecordError, match=r"^here: field 'difficulty'"):
        validate_record(math_rec(0, difficulty=9), "here")


# ----------------------------------------------------------------------------------- mappings


def test_flat_mapping_renames_fields(tmp_path):
    src = {k: v for k, v in math_rec(0).items()}
    src["question"] = src.pop("prompt")
    src["solution"] = src.pop("response")
    path = write_lines(tmp_path, [src])
    recs = load_records(path, mapping={"prompt": "question", "response": "solution"})
    assert recs[0]["prompt"] == "What is 7 + 5?" and recs[0]["answer"] == "12"
    # Without the mapping, the user's field names are unknown.
    expect_error(path, 1, "prompt", "missing")


def test_mapped_field_errors_name_the_source_field(tmp_path):
    path = write_lines(tmp_path, [{"id": "a", "domain": "math", "difficulty": 1, "question": "q", "solution": "", "answer": "1"}])
    expect_error(path, 1, "response", "empty", "mapped from 'solution'", mapping={"prompt": "question", "response": "solution"})


def test_full_mapping_defaults_values_keep_derive_ids(tmp_path):
    rows = [
        {"problem": "What is $1+1$?", "solution": "We add.\nSo it is $\\boxed{2}$.", "level": "Level 2", "type": "Algebra"},
        {"problem": "What is $2+2$?", "solution": "We add.\nThe answer is 4.", "level": "Level 5", "type": "Algebra"},
    ]
    path = write_lines(tmp_path, rows)
    mapping = {
        "fields": {"prompt": "problem", "response": "solution", "difficulty": "level"},
        "defaults": {"domain": "math"},
        "values": {"difficulty": {f"Level {i}": i for i in range(1, 6)}},
        "keep": ["type"],
        "derive": {"answer": "boxed"},
        "id_prefix": "hm-",
    }
    with pytest.raises(RecordError, match=r":2: field 'answer': missing"):
        load_records(path, mapping=mapping)  # row 2 has no \boxed{}
    mapping["derive"] = {"answer": "answer_line"}
    rows[0]["solution"] = "We add.\nThe answer is 2."
    recs = load_records(write_lines(tmp_path, rows), mapping=mapping)
    assert [r["id"] for r in recs] == ["hm-1", "hm-2"]
    assert [r["difficulty"] for r in recs] == [2, 5]
    assert [r["answer"] for r in recs] == ["2", "4"]
    assert recs[0]["meta"]["type"] == "Algebra"
    assert [k for _, _, k in recs[0]["meta"]["segments"]] == ["step", "answer"]


def test_mapping_coerces_numeric_ids_and_answers(tmp_path):
    src = math_rec(0)
    src["id"], src["answer"] = 17, 12
    del src["meta"]
    recs = load_records(write_lines(tmp_path, [src]), mapping={"fields": {}})
    assert recs[0]["id"] == "17" and recs[0]["answer"] == "12"


def test_bad_mapping_is_rejected():
    with pytest.raises(ValueError, match="not a record field"):
        load_mapping({"fields": {"question": "prompt"}})
    with pytest.raises(ValueError, match="unknown key"):
        load_mapping({"fields": {}, "renames": {}})
    with pytest.raises(ValueError, match="derive"):
        load_mapping({"derive": {"answer": "guess"}})


def test_shipped_mappings_load_and_apply(tmp_path):
    files = sorted(MAPPINGS.glob("*.json"))
    assert files, "data/mappings/ holds at least one example"
    for f in files:
        assert load_mapping(f)["fields"]
    # A MATH-500-shaped row (fields as published on the Hub) through data/mappings/math500.json.
    row = {"problem": "Compute $3+4$.", "solution": "Add: $3+4=7$.\nSo $\\boxed{7}$.", "answer": "7",
           "subject": "Prealgebra", "level": 1, "unique_id": "test/prealgebra/1.json"}
    recs = load_records(write_lines(tmp_path, [row]), mapping=MAPPINGS / "math500.json")
    assert recs[0]["id"] == "test/prealgebra/1.json" and recs[0]["domain"] == "math" and recs[0]["difficulty"] == 1
    assert recs[0]["meta"]["subject"] == "Prealgebra"


# ----------------------------------------------------------------------------------- writing


def test_write_then_load_round_trip(tmp_path):
    recs = [math_rec(0), code_rec(1, prompt="Écris f — ünïcode")]
    path = write_records(tmp_path / "out.jsonl", recs)
    assert load_records(path) == recs
    assert "ünïcode" in path.read_text(encoding="utf-8")


def test_write_is_all_or_nothing(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, [math_rec(0)])
    before = path.read_bytes()
    with pytest.raises(RecordError, match=r"out.jsonl:2: field 'difficulty'"):
        write_records(path, [math_rec(1), math_rec(2, difficulty=7)])
    assert path.read_bytes() == before
    with pytest.raises(RecordError, match="duplicate id"):
        write_records(path, [math_rec(1), math_rec(1)])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]  # no temp file left


def test_write_refuses_no_records(tmp_path):
    with pytest.raises(RecordError, match="no records"):
        write_records(tmp_path / "x.jsonl", [])


# --------------------------------------------------------------------------- properties (hypothesis)
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(lambda t: t.strip())
_PARTS = st.lists(st.tuples(_TEXT, st.sampled_from(SEGMENT_KINDS)), min_size=1, max_size=4)


@st.composite
def records(draw, n_max=5):
    """Valid records of both domains with unicode text and ground-truth segments from join_segments."""
    out = []
    for i in range(draw(st.integers(1, n_max))):
        response, segs = join_segments(draw(_PARTS))
        rec = {"id": f"r{i}-{draw(st.text('abc-_0189', max_size=6))}", "domain": draw(st.sampled_from(["math", "code"])),
               "difficulty": draw(st.integers(1, 5)), "prompt": draw(_TEXT), "response": response}
        if rec["domain"] == "math":
            rec["answer"] = draw(_TEXT)
        else:
            rec["tests"] = draw(st.lists(_TEXT, min_size=1, max_size=3))
        rec["meta"] = {"segments": segs, **draw(st.dictionaries(st.sampled_from(["source", "note"]), _TEXT, max_size=1))}
        out.append(rec)
    return out


_FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_FAST
@given(records(), st.booleans())
def test_valid_records_round_trip(tmp_path, recs, ascii_only):
    path = tmp_path / "rt.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in recs), encoding="utf-8")
    assert load_records(path) == recs
    write_records(path, recs)
    assert load_records(path) == recs


@_FAST
@given(records(n_max=4), st.data())
def test_a_garbage_line_is_rejected_with_its_line_number(tmp_path, recs, data):
    """Any line that is not a valid record (random text or bytes) stops loading at that line."""
    k = data.draw(st.integers(0, len(recs)), label="garbage line index")
    garbage = data.draw(st.one_of(st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
                                  st.binary(max_size=40)), label="garbage")
    assume(b"\n" not in garbage)
    try:
        assume(garbage.decode("utf-8").strip() != "")  # blank lines are skipped by design
    except UnicodeDecodeError:
        pass
    lines = [json.dumps(r).encode() for r in recs]
    lines.insert(k, garbage)
    path = tmp_path / "g.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(RecordError) as info:
        load_records(path)
    assert info.value.where == f"{path}:{k + 1}", str(info.value)


@_FAST
@given(records(n_max=3), st.data())
def test_a_truncated_last_line_is_rejected_with_its_line_number(tmp_path, recs, data):
    blob = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs).encode()
    last = blob.rfind(b"\n") + 1  # start of the last line
    cut = data.draw(st.integers(last + 1, len(blob) - 1), label="cut")
    path = tmp_path / "t.jsonl"
    path.write_bytes(blob[:cut])
    with pytest.raises(RecordError) as info:
        load_records(path)
    assert info.value.where == f"{path}:{len(recs)}" and ("bad JSON" in str(info.value) or "UTF-8" in str(info.value))


@_FAST
@given(records(n_max=3), st.data())
def test_records_without_segments_get_valid_ones(tmp_path, recs, data):
    """Derived segments (segment_response) of any loaded record are inside, covering, in order."""
    for r in recs:
        del r["meta"]["segments"]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    for r in load_records(path):
        segs = r["meta"]["segments"]
        assert r["meta"]["segments_derived"] is True and segs == segment_response(r["response"])
        assert check_segments(segs, len(r["response"])) is None
        assert "".join(r["response"][s:e] for s, e, _ in segs) == r["response"]


@_FAST
@given(_PARTS, st.data())
def test_broken_segments_are_named(parts, data):
    """Shifting one boundary of valid segments (a gap, an overlap, out of range, empty) is always caught."""
    text, segs = join_segments(parts)
    i = data.draw(st.integers(0, len(segs) - 1), label="segment")
    end = data.draw(st.sampled_from(["start", "end"]), label="which")
    delta = data.draw(st.integers(-3, 3).filter(bool), label="delta")
    bad = [list(s) for s in segs]
    bad[i][0 if end == "start" else 1] += delta
    msg = check_segments(bad, len(text))
    assert msg is not None and "segment" in msg


# ----------------------------------------------------------------------------------- hostile input
# What a careless export or a hostile file holds; each must stop with file:line (and the field).


def test_deeply_nested_json_is_named_not_a_traceback(tmp_path):
    deep = '{"id": "m0", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = write_lines(tmp_path, [math_rec(1), deep])
    expect_error(path, 2, None, "nested too deeply")


@pytest.mark.parametrize("field", ["prompt", "response", "answer", "id"])
def test_a_lone_surrogate_is_refused_naming_the_field(tmp_path, field):
    """JSON may spell a lone surrogate (\\ud800), which no tokenizer can encode."""
    rec = math_rec(0)
    at = min(3, len(rec[field]))
    rec[field] = rec[field][:at] + "\ud800" + rec[field][at:]
    line = json.dumps(rec)  # ensure_ascii: written as the escape \ud800
    assert "\\ud800" in line
    path = write_lines(tmp_path, [line])
    expect_error(path, 1, field, "U+D800", f"character {at + 1}")


def test_a_lone_surrogate_in_a_test_is_refused(tmp_path):
    path = write_lines(tmp_path, [code_rec(0, tests=["assert f(1) == 1", "assert f('\udfff') == 2"])])
    expect_error(path, 1, "tests", "item 1", "U+DFFF")


@pytest.mark.parametrize("digits", [4301, 5000, 100_000])
def test_a_number_too_long_to_read_names_field_and_column(tmp_path, digits):
    number = "9" * digits
    line = json.dumps(math_rec(0)).replace('"difficulty": 1', f'"difficulty": {number}')
    path = write_lines(tmp_path, [json.dumps(math_rec(1)), line])
    msg = expect_error(path, 2, "difficulty", f"{digits} digits", f"column {line.index(number) + 1}")
    assert len(msg) < 300  # the digits themselves are not repeated


def test_a_long_number_within_the_limit_gets_a_short_message(tmp_path):
    line = json.dumps(math_rec(0)).replace('"difficulty": 1', f'"difficulty": {"9" * 4000}')
    msg = expect_error(write_lines(tmp_path, [line]), 1, "difficulty", "4000-digit integer", "out of range")
    assert len(msg) < 300


@pytest.mark.parametrize("rid, word", [
    ("cafe\u0301", "NFC"),  # e + combining acute: looks like café (U+00E9)
    ("m1 ", "whitespace"),
    ("\tm1", "whitespace"),
    ("m\u200b1", "U+200B"),  # zero-width space
    ("m\u202e1", "U+202E"),  # right-to-left override
    ("m\u00a01", "U+00A0"),  # no-break space
    ("m\x001", "U+0000"),
    ("m\u34171\ufe0f", "U+FE0F"),  # variation selector
    ("m\u3164", "U+3164"),  # Hangul filler: a letter that draws nothing
])
def test_look_alike_ids_are_refused(tmp_path, rid, word):
    """Ids that would print the same as another id (or as nothing) are refused, not taken as distinct."""
    path = write_lines(tmp_path, [math_rec(0, id="caf\u00e9"), math_rec(1, id=rid)])
    expect_error(path, 2, "id", word)


def test_ids_in_other_scripts_are_accepted(tmp_path):
    ids = ["caf\u00e9", "\u6570\u5b66-1", "\u0437\u0430\u0434\u0430\u0447\u0430 2", "m-1_a.b"]
    path = write_lines(tmp_path, [math_rec(i, id=rid) for i, rid in enumerate(ids)])
    assert [r["id"] for r in load_records(path)] == ids


def test_write_records_refuses_what_load_records_would(tmp_path):
    with pytest.raises(RecordError, match=r"U\+200B"):
        write_records(tmp_path / "out.jsonl", [math_rec(0, id="a\u200bb")])
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("make, kind", [
    (lambda p: p.mkdir(), "a folder"),
    (lambda p: __import__("os").mkfifo(p), "a FIFO"),
])
def test_a_path_that_is_not_a_regular_file_is_named(tmp_path, make, kind):
    """A FIFO would block the reader forever, a folder raise IsADirectoryError: both are named."""
    path = tmp_path / "data.jsonl"
    make(path)
    with pytest.raises(RecordError, match=f"is {kind}.*not a regular file"):
        load_records(path)


def test_a_device_is_named():
    with pytest.raises(RecordError, match="is a character device"):
        load_records("/dev/zero")  # would read forever
