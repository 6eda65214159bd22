"""Records -> tensors: labels cover exactly the response, segment ids follow the character spans.

Run: pytest tests/lib/test_data.py (seconds; trains a 300-token BPE on a few records).
"""
import pytest
import torch

from infra_lib.data import (
    IGNORE_INDEX,
    EmptyResponseError,
    ResponseTooLongError,
    collate,
    encode_record,
    encode_records,
    render_prompt,
)
from infra_study.tokenizer import train_tokenizer


def _record(i, response, segments):
    return {"id": f"math-1-{i:05d}", "domain": "math", "difficulty": 1, "prompt": f"What is {i} + 5?",
            "response": response, "answer": str(i + 5), "meta": {"segments": segments}}


def _math(i):
    a = f"First, add the ones: {i % 10} + 5 = {i % 10 + 5}.\n"
    b = "Wait, let me check: yes.\n"
    c = f"The answer is {i + 5}."
    r = a + b + c
    return _record(i, r, [[0, len(a), "step"], [len(a), len(a) + len(b), "exploratory"], [len(a) + len(b), len(r), "answer"]])


def _code(i):
    plan = "We return the value.\n"
    code = f"```python\ndef f(x):\n    return {i} * x\n```"
    r = plan + code
    return {"id": f"code-2-{i:05d}", "domain": "code", "difficulty": 2, "prompt": f"Write f(x) returning {i} times x.",
            "response": r, "tests": [f"assert f(1) == {i}"], "meta": {"segments": [[0, len(plan), "step"], [len(plan), len(r), "answer"]]}}


RECORDS = [_math(i) for i in range(12, 40, 3)] + [_code(i) for i in range(2, 9)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(RECORDS * 3, 300, tmp_path_factory.mktemp("tok"))


def test_labels_mask_exactly_the_response(tok):
    """Labelled tokens decode to response + end of turn; everything before is the rendered prompt."""
    for r in RECORDS:
        e = encode_record(r, tok, 512)
        ids, labels = e["input_ids"], e["labels"]
        resp = labels != IGNORE_INDEX
        first = int(resp.nonzero()[0])
        assert resp[first:].all() and not resp[:first].any()  # one contiguous block at the end
        assert torch.equal(labels[resp], ids[resp])
        assert tok.decode(ids[resp]) == r["response"] + tok.eos_token
        assert int(ids[-1]) == tok.eos_token_id
        assert tok.decode(ids[:first]) == render_prompt(r["prompt"], tok)


def test_ids_match_the_chat_template_of_the_whole_chat(tok):
    """The same ids as tokenising the rendered conversation (minus the trailing newline)."""
    for r in RECORDS[:4]:
        e = encode_record(r, tok, 512)
        text = tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["response"]}], tokenize=False)
        full = tok(text, add_special_tokens=False)["input_ids"]
        assert full[:-1] == e["input_ids"].tolist()


def test_segment_ids_follow_character_spans(tok):
    """Each response token's segment holds the token's first character; end of turn -> last segment."""
    for r in RECORDS:
        e = encode_record(r, tok, 512)
        segs = r["meta"]["segments"]
        assert e["segment_kinds"] == [s[2] for s in segs]
        resp = (e["labels"] != IGNORE_INDEX).nonzero().flatten()
        assert (e["segment_ids"][: int(resp[0])] == -1).all()
        offsets = tok(r["response"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        assert len(offsets) == len(resp) - 1
        for pos, (s, _e) in zip(resp.tolist(), offsets):
            k = int(e["segment_ids"][pos])
            assert segs[k][0] <= s < segs[k][1]
        assert int(e["segment_ids"][-1]) == len(segs) - 1
        # every segment of these records gets at least one token
        assert set(e["segment_ids"][resp].tolist()) == set(range(len(segs)))


def test_record_without_segments_is_one_step(tok):
    r = dict(RECORDS[0])
    r["meta"] = {}
    e = encode_record(r, tok, 512)
    assert e["segment_kinds"] == ["step"]
    assert set(e["segment_ids"][e["labels"] != IGNORE_INDEX].tolist()) == {0}


def test_too_long_and_empty_responses(tok):
    long = RECORDS[0]
    n = encode_record(long, tok, 512)["input_ids"].shape[0]
    assert encode_record(long, tok, n)["input_ids"].shape[0] == n
    with pytest.raises(ResponseTooLongError, match=long["id"]):
        encode_record(long, tok, n - 1)
    with pytest.raises(ResponseTooLongError):
        encode_records(RECORDS, tok, n - 1)
    with pytest.warns(UserWarning, match="skipped"):
        kept = encode_records(RECORDS, tok, n - 1, on_too_long="skip")
    assert all(e["input_ids"].shape[0] <= n - 1 for e in kept)
    empty = _record(1, "", [[0, 0, "answer"]])
    with pytest.raises(EmptyResponseError, match="zero tokens"):
        encode_record(empty, tok, 512)


def test_collate_right_pads(tok):
    ex = encode_records(RECORDS[:3] + RECORDS[-2:], tok, 512)
    b = collate(ex, tok.pad_token_id)
    B, T = b["input_ids"].shape
    assert B == 5 and T == max(e["input_ids"].shape[0] for e in ex)
    for i, e in enumerate(ex):
        n = e["input_ids"].shape[0]
        assert torch.equal(b["input_ids"][i, :n], e["input_ids"])
        assert (b["input_ids"][i, n:] == tok.pad_token_id).all()
        assert b["attention_mask"][i].sum() == n and b["attention_mask"][i, :n].all()
        assert (b["labels"][i, n:] == IGNORE_INDEX).all() and (b["segment_ids"][i, n:] == -1).all()
    assert b["ids"] == [e["id"] for e in ex]


@pytest.mark.parametrize("change, words", [
    ({"response": None}, "record 1 (id 'math-1-00015'): field 'response': must be a string, got NoneType"),
    ({"prompt": 5}, "field 'prompt': must be a string, got int"),
    ({"id": 3}, "record 1 (id 3): field 'id': must be a non-empty string"),
    ({"id": "math-1-00012"}, "field 'id': duplicate id, also record 0"),
    ({"meta": ["x"]}, "field 'meta': must be a dict"),
])
def test_records_handed_in_directly_are_checked_before_tokenising(tok, change, words):
    """Records that did not come through load_records are named by index, id and field."""
    from infra_lib.checks import InputError

    recs = [dict(RECORDS[0]), {**RECORDS[1], **change}, dict(RECORDS[2])]
    with pytest.raises(InputError) as err:
        encode_records(recs, tok, 512)
    assert words in str(err.value)
    missing = {k: v for k, v in RECORDS[1].items() if k != "response"}
    with pytest.raises(InputError, match="field 'response': missing"):
        encode_records([missing], tok, 512)


def test_invisible_response_is_tokens_not_an_error(tok):
    """A response of only a zero-width space is not empty to the tokenizer (byte-level BPE): it
    encodes to its byte tokens, so only a truly empty response is the EmptyResponseError case."""
    r = _record(2, "\u200b", [[0, 1, "answer"]])
    e = encode_record(r, tok, 512)
    n_resp = int((e["labels"] != IGNORE_INDEX).sum())
    assert n_resp == len(tok("\u200b", add_special_tokens=False)["input_ids"]) + 1 > 1  # + end of turn
