"""Each plot function draws what its data says and returns its Axes. Run: pytest tests/study/test_plots.py"""
import matplotlib

matplotlib.use("Agg")
import pandas as pd
import pytest

from infra_study import plots


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


def test_arm_plots_draw_their_data():
    acc = pd.DataFrame({"arm": ["baseline"] * 2 + ["flipped"] * 2, "domain": ["math"] * 4, "level": [1, 2, 1, 2],
                        "accuracy": [0.9, 0.2, 0.8, 0.4], "seed_min": [0.8, 0.1, 0.7, 0.3], "seed_max": [1.0, 0.3, 0.9, 0.5]})
    ax = plots.plot_arm_accuracy(acc, "math")
    assert [list(l.get_ydata()) for l in ax.lines] == [[0.9, 0.2], [0.8, 0.4]]
    d = pd.DataFrame({"comparison": ["flipped - baseline"], "domain": ["math"], "value": [0.1], "lo": [-0.05], "hi": [0.2]})
    ax = plots.plot_paired_differences(d)
    assert ax.lines[0].get_xdata()[0] == pytest.approx(0.1)
    assert "flipped - baseline (math)" in [t.get_text() for t in ax.get_yticklabels()]


def test_segment_kind_bars():
    tab = pd.DataFrame({"query_domain": ["math", "math", "code", "code"], "kind": ["step", "exploratory"] * 2,
                        "mean": [1.0, 2.0, 3.0, -1.0], "lo": [0.5, 1.0, 2.0, -2.0], "hi": [1.5, 3.0, 4.0, 0.0]})
    ax = plots.plot_segment_kinds(tab)
    assert sorted(p.get_height() for p in ax.patches) == [-1.0, 1.0, 2.0, 3.0]



def test_validation_plots_draw_their_data():
    from infra_study.analysis import Estimate

    t = pd.DataFrame({"method": ["ekfac", "ekfac", "identity", "identity"], "damping_scale": [1.0, 0.1, 0.1, 1.0],
                      "spearman_mean": [0.8, 0.7, 0.3, 0.4]})
    ax = plots.plot_exact_agreement(t, value="spearman_mean")
    lines = {l.get_label(): l for l in ax.get_lines()}
    assert list(lines["ekfac"].get_xdata()) == [0.1, 1.0] and list(lines["ekfac"].get_ydata()) == [0.7, 0.8]
    ax = plots.plot_lds({"identity": Estimate(0.1, 0.0, 0.2, 10), "ekfac": Estimate(0.3, 0.25, 0.4, 10)})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["identity", "ekfac"]
    ax = plots.plot_parity_scatter([1.0, 2.0, 3.0], [1.1, 2.1, 2.9])
    assert ax.collections[0].get_offsets().tolist() == [[1.1, 1.0], [2.1, 2.0], [2.9, 3.0]]
    ax = plots.plot_timing_bars({"infra_lib": 3.0, "kronfluence": 9.0, "floor": 1.5})
    assert [p.get_height() for p in ax.patches] == [3.0, 9.0, 1.5]
    assert [t.get_text() for t in ax.texts] == ["2.0x floor", "6.0x floor", "1.0x floor"]


def test_heatmap_cells_rounded_and_readable_on_their_background():
    assert plots.format_cell(-312.456) == "-312" and plots.format_cell(0.04237) == "+0.042"
    assert plots.format_cell(-1.6e4) == "-16k" and plots.format_cell(0) == "0"
    t = pd.DataFrame({"domain": ["math", "code"], "level": [1, 1], "mean": [-310.0, 1.0], "lo": [-450.0, 0.5], "hi": [-160.0, 1.5]})
    ax = plots.plot_bucket_heatmap({"math": t, "code": t})
    cells = {x.get_text(): x.get_color() for x in ax.texts}
    assert "-310\n[-450, -160]" in cells and not any("e+" in k for k in cells)
    assert cells["-310\n[-450, -160]"] == "white"  # the darkest red of the scale
    assert cells["+1\n[+0.5, +1.5]"] == "black"  # near the white centre


def test_loss_curves_each_stage_on_its_own_axis():
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, 2)
    curves = {"base": [{"step": s, "loss": 2.0} for s in range(0, 3400, 100)], "sft": [{"step": s, "loss": 1.0} for s in range(30)]}
    plots.plot_loss_curves(curves, ax=axes)
    assert axes[1].get_xlim()[1] < 40 and axes[0].get_xlim()[1] > 3000
    assert [a.get_title() for a in axes] == ["base", "sft"]


def test_token_labels_name_their_whole_word():
    text = "So 12 seconds"
    labels = plots.token_word_labels(text, ["So", " 1", "2", " seco", "nds"], [(0, 2), (2, 4), (4, 5), (5, 10), (10, 13)])
    assert labels == ["So", "'␣1' in 12", "'2' in 12", "'␣seco' in seconds", "'nds' in seconds"]
