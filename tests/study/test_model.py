"""The tiny Qwen2: built from a config, saved and reloaded with from_pretrained.

Run: pytest tests/study/test_model.py (seconds).
"""
import pytest
import torch

from infra_study.model import ModelConfig, build_model, count_parameters, load_model, model_exists
from infra_study.tokenizer import train_tokenizer

MICRO = ModelConfig(hidden_size=16, num_layers=1, intermediate_size=32, num_heads=2, num_kv_heads=1,
                    max_position_embeddings=64)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    recs = [{"prompt": f"What is {i} + 1?", "response": f"The answer is {i + 1}."} for i in range(30)]
    return train_tokenizer(recs, 280, tmp_path_factory.mktemp("tok"))


def test_build_is_a_qwen2_with_the_tokenizer_ids(tok):
    from transformers import Qwen2ForCausalLM

    m = build_model(MICRO, tok)
    assert isinstance(m, Qwen2ForCausalLM) and not m.training
    assert m.config.vocab_size == len(tok)
    assert m.config.eos_token_id == tok.eos_token_id and m.config.pad_token_id == tok.pad_token_id
    assert m.get_input_embeddings().weight.data_ptr() == m.get_output_embeddings().weight.data_ptr()
    assert count_parameters(m) == sum(p.numel() for p in m.parameters())


def test_seeded_init_and_round_trip(tok, tmp_path):
    """Same seed -> same weights; save_pretrained + from_pretrained gives the same logits."""
    a, b = build_model(MICRO, tok), build_model(MICRO, tok)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    c = build_model(ModelConfig(**{**MICRO.__dict__, "seed": 1}), tok)
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    a.save_pretrained(tmp_path)
    assert model_exists(tmp_path)
    r = load_model(tmp_path)
    x = torch.randint(0, len(tok), (2, 9))
    with torch.no_grad():
        assert torch.allclose(a(x).logits, r(x).logits, atol=1e-6)


def test_tiny_default_is_about_a_million_parameters(tok):
    m = build_model(ModelConfig(), tok)
    assert 0.9e6 < count_parameters(m) < 1.2e6


@pytest.mark.parametrize("bad", [dict(hidden_size=30, num_heads=4), dict(num_heads=4, num_kv_heads=3),
                                 dict(num_layers=0), dict(init_std=0.0)])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ModelConfig(**bad)
