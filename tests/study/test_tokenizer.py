"""Tokenizer: digits alone, chat template, round trips, loads with AutoTokenizer.

Run: pytest tests/study/test_tokenizer.py (a few seconds; trains a 320-token BPE on a handful of texts).
"""
import pytest

from infra_study.tokenizer import IM_END, IM_START, PAD_TOKEN, load_tokenizer, tokenizer_exists, train_tokenizer

RECORDS = [
    {"prompt": f"What is {a} + {b}?", "response": f"First, add the ones: {a % 10} + {b % 10}.\nThe answer is {a + b}."}
    for a, b in [(12, 345), (7, 98), (1234, 56), (40, 40), (999, 1)]
] + [
    {"prompt": "Write a Python function f(x) that returns 3 times x plus 2.",
     "response": "We return 3 * x + 2.\n```python\ndef f(x):\n    return 3 * x + 2\n```"},
]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(RECORDS * 5, 320, path)
    return load_tokenizer(path)


def test_saved_and_loaded_with_auto_tokenizer(tok, tmp_path_factory):
    """The saved folder is a normal HF tokenizer: AutoTokenizer loads it with our special tokens."""
    from transformers import PreTrainedTokenizerFast

    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.eos_token == IM_END and tok.pad_token == PAD_TOKEN
    assert tok.padding_side == "right"
    for t in (IM_START, IM_END, PAD_TOKEN):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    assert len(tok) <= 320


def test_every_digit_is_its_own_token(tok):
    """No token holds a digit together with anything else, even for numbers seen many times."""
    for text in ["12345", "x = 40 + 40", "999 + 1 = 1000", " 7"]:
        pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
        for p in pieces:
            if any(c.isdigit() for c in p):
                assert len(p) == 1, (text, pieces)
    vocab = tok.get_vocab()
    assert not [t for t in vocab if any(c.isdigit() for c in t) and len(t) > 1]


def test_round_trip_keeps_code_indentation(tok):
    text = "def f(x):\n    if x > 3:\n        return x * 2\n    return -x  # ok\n\tdone ünïcode"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_chat_template_is_qwen_style(tok):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\nyo{IM_END}\n"
    gen = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen == f"{IM_START}user\nhi{IM_END}\n{IM_START}assistant\n"
    sys_text = tok.apply_chat_template([{"role": "system", "content": "S"}] + msgs[:1], tokenize=False)
    assert sys_text.startswith(f"{IM_START}system\nS{IM_END}\n")


def test_tokenizer_exists_and_small_vocab_refused(tmp_path):
    assert not tokenizer_exists(tmp_path)
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(RECORDS, 100, tmp_path)


@pytest.fixture(scope="module")
def v2_tok(tmp_path_factory):
    from infra_study.corpus import CorpusConfig, generate_corpus

    c = generate_corpus(CorpusConfig(version=2, n_base=40, n_train=60, n_query=2, n_test=2))
    path = tmp_path_factory.mktemp("tok_v2")
    train_tokenizer(c["base"] + c["train"], 512, path)
    return load_tokenizer(path), c["train"]


def test_v2_connectors_and_markers_are_whole_tokens(v2_tok):
    """On version-2 records the connector words and markers are one token each, the vocabulary
    stays within its size, and texts still decode to themselves."""
    tok, train = v2_tok
    assert len(tok) <= 512
    for text, word in [("Wait, let me check 47.", "Wait"), ("x, since 3 * 7 = 21", " since"),
                       ("7 - 8, but 7 is less", " but"), ("Therefore f returns x.", "Therefore"),
                       ("then let me check", " check"), ("So 4 + 5 = 9.", "So")]:
        pieces = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]
        assert word in pieces, (text, pieces)
        assert all(not any(ch.isdigit() for ch in p) or p.strip().isdigit() for p in pieces)
    for r in train[:50]:
        assert tok.decode(tok(r["response"], add_special_tokens=False)["input_ids"]) == r["response"]


def test_v1_records_get_no_whole_words(tok):
    """Round 1's tokenizer is unchanged: records without corpus_version 2 add no whole words."""
    assert tok.get_added_vocab().keys() <= {IM_START, IM_END, PAD_TOKEN}
