"""Each plot function draws what its data says and returns its Axes. Run: pytest tests/test_plots.py"""
import matplotlib

matplotlib.use("Agg")
import pandas as pd
import pytest

from infra_lib import plots


def test_corpus_stats_bars_match_values():
    stats = pd.DataFrame({"domain": ["math", "math", "code"], "level": [1, 2, 1], "count": [3, 5, 7]})
    ax = plots.plot_corpus_stats(stats, "count")
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [3, 5, 7]


def test_accuracy_heatmap_annotations():
    ax = plots.plot_accuracy_heatmap({"math": {"1": 0.5, "2": 0.25}, "code": {"1": 1.0, "2": 0.0}})
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.00", "0.25", "0.50", "1.00"]


def test_bucket_heatmap_grid_and_intervals():
    t = pd.DataFrame({"domain": ["math", "code"], "level": [1, 1], "mean": [0.5, -0.25], "lo": [0.1, -0.5], "hi": [0.9, 0.0]})
    ax = plots.plot_bucket_heatmap({"math": t, "code": t})
    assert ax.images[0].get_array().shape == (2, 2)
    assert any("[+0.1, +0.9]" in x.get_text() for x in ax.texts)


def test_category_bars_and_top_tokens():
    tab = pd.DataFrame({"query_domain": ["math", "math"], "category": ["connector", "code syntax"],
                        "mean": [1.0, -1.0], "lo": [0.5, -2.0], "hi": [1.5, -0.5]})
    ax = plots.plot_category_bars(tab)
    assert sorted(p.get_height() for p in ax.patches) == [-1.0, 1.0]
    tt = pd.DataFrame({"token": ["a", "b"], "mean": [2.0, 1.0], "count": [5, 5]})
    ax = plots.plot_top_tokens(tt, k=1)
    assert [p.get_width() for p in ax.patches] == [2.0]


def test_segments_html_escapes_and_covers():
    rec = {"id": "x", "domain": "math", "difficulty": 1, "prompt": "<b>", "response": "a<b\nc",
           "meta": {"segments": [[0, 4, "step"], [4, 5, "answer"]]}}
    html = plots.render_segments_html(rec)
    assert "a&lt;b" in html and "<b>" not in html.replace("<b>x", "")
    assert 'title="answer [4, 5)"' in html
