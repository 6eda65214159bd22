"""The prefix cache of partial tracking: when only upper decoder layers are tracked, the input of
the lowest tracked layer is kept per example and later passes skip the layers below it. Scores
must equal the same code with the cache off (float64, 1e-6 relative; in fact bit-equal on real
positions), and the cache must never serve another model's weights or other tokens.

Run: ``OMP_NUM_THREADS=1 pytest tests/lib/test_prefix_cache.py -q`` (seconds).
"""
import pytest
import torch

from infra_lib.factors import FactorConfig, fit_factors
from infra_lib.scores import ScoreConfig, compute_scores
from infra_lib.testing import make_examples, make_model, train_briefly
from infra_lib.tracking import ModuleTracker, collate, find_decoder_layers, prefix_cache_for, select_modules

UPPER = r"layers\.(2|3)\.mlp\."


@pytest.fixture(scope="module")
def deep():
    """A float64 4-layer micro Qwen2 with its upper two MLPs tracked, 20 training and 4 query examples."""
    model = train_briefly(make_model(0, layers=4), make_examples(32, seed=1, prefix="pool"), steps=20)
    return model, make_examples(20, seed=2, prefix="tr"), make_examples(4, seed=3, prefix="q")


def _run(model, train, queries, mode):
    cfg = FactorConfig(modules=UPPER, dtype="float64", batch_size=6)
    f = fit_factors(model, train, cfg, progress=False, prefix_cache=mode)
    s = compute_scores(model, f, queries, train, ScoreConfig(dtype="float64", batch_size=6, token_scores=True),
                       progress=False, prefix_cache=mode)
    return f, s


def test_lowest_tracked_layer_is_found(deep):
    model, _, _ = deep
    layers, start, _ = find_decoder_layers(model, select_modules(model, UPPER))
    assert layers is model.model.layers and start == 2
    _, start, reason = find_decoder_layers(model, select_modules(model))
    assert start == 0


def test_scores_equal_the_uncached_run(deep):
    """EK-FAC factors, example and token scores with the cache on equal the cache off (1e-6 relative)."""
    model, train, queries = deep
    f_off, s_off = _run(model, train, queries, "off")
    f_on, s_on = _run(model, train, queries, "on")
    assert f_on.diagnostics["plan"]["prefix_cache"]["used"] and not f_off.diagnostics["plan"]["prefix_cache"]["used"]
    assert f_on.diagnostics["plan"]["prefix_cache"]["cached_examples"] == len(train)
    assert s_on.meta["plan"]["prefix_cache"]["hits"] > 0  # the score pass read the fit's cache
    for k in f_off.tensors:
        torch.testing.assert_close(f_on.tensors[k], f_off.tensors[k], rtol=1e-6, atol=1e-12)
    rel = (s_on.example - s_off.example).abs().max() / s_off.example.abs().max()
    assert rel <= 1e-6
    rel_tok = (s_on.token - s_off.token).abs().max() / s_off.token.abs().max()
    assert rel_tok <= 1e-6


def test_gradients_equal_the_full_model_backward(deep):
    """Captures through a cached prefix equal those of a tracker that differentiates from the embeddings."""
    model, train, _ = deep
    names = select_modules(model, UPPER)
    b = collate(train[:5], list(range(5)))
    with ModuleTracker(model, names, torch.float64) as tr:
        ref = tr.run(b, "data")
    pc = prefix_cache_for(model, names)
    pc.clear()
    with ModuleTracker(model, names, torch.float64, prefix=pc) as tr:
        first, second = tr.run(b, "data"), tr.run(b, "data")
    assert pc.hits >= 1
    real = torch.arange(b.input_ids.shape[1])[None] < b.lengths[:, None]  # padding rows may differ
    for n in names:
        for cap in (first, second):
            torch.testing.assert_close(cap.g[n], ref.g[n], rtol=0, atol=0)
            g = ref.group_of[n]
            torch.testing.assert_close(cap.a[g][real], ref.a[g][real], rtol=0, atol=0)


def test_cache_is_dropped_when_weights_or_tokens_change(deep):
    model, train, _ = deep
    model = __import__("copy").deepcopy(model)
    names = select_modules(model, UPPER)
    pc = prefix_cache_for(model, names)
    with ModuleTracker(model, names, torch.float64, prefix=pc) as tr:
        tr.run(collate(train[:3], [0, 1, 2]), "data")
    assert len(pc) == 3 and prefix_cache_for(model, names) is pc
    changed = dict(train[0], input_ids=train[0]["input_ids"].flip(0))  # same id, other tokens: recomputed
    assert pc.lookup(collate([changed], [0])) is None
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.01)  # a lower weight changes in place
    assert prefix_cache_for(model, names) is not pc


def test_option_validation(deep):
    model, train, _ = deep
    with pytest.raises(ValueError, match="prefix_cache"):
        fit_factors(model, train[:4], FactorConfig(modules=UPPER), progress=False, prefix_cache="maybe")


def test_examples_sharing_tokens_share_one_entry(deep):
    """Entries are keyed by tokens: an example under another id with other labels (one per segment
    of a CoT, say) is served from the cache, and its captures equal the uncached ones."""
    model, train, _ = deep
    model = __import__("copy").deepcopy(model)
    names = select_modules(model, UPPER)
    pc = prefix_cache_for(model, names)
    pc.clear()
    with ModuleTracker(model, names, torch.float64, prefix=pc) as tr:
        tr.run(collate(train[:3], [0, 1, 2]), "data")
        labels = train[1]["labels"].clone()
        labels[: len(labels) // 2] = -100
        twin = dict(train[1], id="twin", labels=labels)
        hits = pc.hits
        cached = tr.run(collate([twin], [0]), "data")
        assert pc.hits == hits + 1 and len(pc) == 3
    with ModuleTracker(model, names, torch.float64) as tr:
        ref = tr.run(collate([twin], [0]), "data")
    for n in names:  # the entry came from a padded batch of 3, the reference from a batch of 1: the
        # matmuls block differently, so equal up to float64 rounding, not bit for bit
        torch.testing.assert_close(cached.g[n], ref.g[n], rtol=1e-12, atol=1e-12 * float(ref.g[n].abs().max()))
