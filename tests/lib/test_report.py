"""Token heat-maps (infra_lib/report.py), checked without a browser.

The HTML is read back with the standard library's HTMLParser, not with anything from infra_lib;
colours against the linear white-to-hue ramp the docstring promises.
Run: `.venv/bin/python -m pytest tests/lib/test_report.py`. In headless Chromium: tests/study/test_html_browser.py.
"""
from __future__ import annotations

import re

import numpy as np
import pytest

from infra_lib import report as ih

from conftest import HOSTILE, hex_rgb, parse_spans, style_of, title_value



# --------------------------------------------------------------------------- heat-maps
def test_token_text_is_escaped_and_kept_verbatim():
    tokens = ["<script>alert(1)</script>", ' a"b', "'&amp;", HOSTILE, "\n", "  x\n\n"]
    out = ih.render_token_heatmap(tokens, [0.5, -0.2, 0.0, 1.0, 0.3, -1.0], title="<b>t</b>")
    assert "<script" not in out and "<img" not in out and "<b>t" not in out
    p = parse_spans(out)
    assert p.tags.count("script") == 0 and "img" not in p.tags and "b" not in p.tags
    assert [s["text"] for s in p.spans] == tokens  # every token, whitespace and newlines included
    assert [int(s["attrs"]["data-i"]) for s in p.spans] == list(range(len(tokens)))
    assert "<b>t</b>" in "".join(p.text_in)  # the title shows as text


def test_whitespace_is_preserved_by_pre_wrap():
    out = ih.render_token_heatmap(["a", "  ", "\n", "b"], [1, 0, 0, 0])
    # the token container keeps runs of spaces and newlines; nothing was inserted between spans
    assert re.search(r'<div style="white-space:pre-wrap[^"]*">(<span[^>]*>[^<]*</span>)+</div>', out)


def test_colour_sign_zero_and_full_intensity():
    scores = np.array([0.8, -0.4, 0.0, -2.0, 2.0, 1e-9])
    p = parse_spans(ih.render_token_heatmap(["t"] * len(scores), scores))
    bg = [style_of(s["attrs"])["background"] for s in p.spans]
    pos, neg, white = hex_rgb(ih.POSITIVE_COLOR), hex_rgb(ih.NEGATIVE_COLOR), np.full(3, 255.0)
    scale = 2.0  # max |score|
    assert bg[2] == "#ffffff" and bg[5] == "#ffffff"  # zero (and a negligible score) is white
    assert bg[4] == ih.POSITIVE_COLOR and bg[3] == ih.NEGATIVE_COLOR  # largest |score|: full intensity
    for k, hue in ((0, pos), (1, neg)):
        c, t = hex_rgb(bg[k]), abs(scores[k]) / scale
        np.testing.assert_allclose(c, white + t * (hue - white), atol=2)  # on the white-to-hue ramp
    # the hue tells the sign at every intensity: green-dominant when helpful, green-poor when harmful
    s = np.linspace(-1, 1, 21)
    for v, sp in zip(s, parse_spans(ih.render_token_heatmap(["t"] * len(s), s)).spans):
        r, g, b = hex_rgb(style_of(sp["attrs"])["background"])
        if v > 0:
            assert g > r and g > b, v
        elif v < 0:
            assert g < r and g < b, v
        else:
            assert r == g == b == 255


def test_given_scale_is_used_and_clips():
    p = parse_spans(ih.render_token_heatmap(["a", "b", "c"], [1.0, -4.0, 0.5], scale=2.0))
    bg = [style_of(s["attrs"])["background"] for s in p.spans]
    white, pos = np.full(3, 255.0), hex_rgb(ih.POSITIVE_COLOR)
    np.testing.assert_allclose(hex_rgb(bg[0]), white + 0.5 * (pos - white), atol=2)  # 1 on a scale of 2
    assert bg[1] == ih.NEGATIVE_COLOR  # beyond the scale: clipped to full
    np.testing.assert_allclose(hex_rgb(bg[2]), white + 0.25 * (pos - white), atol=2)
    with pytest.raises(ValueError, match="scale"):
        ih.render_token_heatmap(["a"], [1.0], scale=0.0)


def test_text_colour_keeps_contrast():
    def lum(c):
        lin = [(x / 255) / 12.92 if x / 255 <= 0.04045 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in hex_rgb(c)]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    s = np.linspace(-1, 1, 41)
    for sp in parse_spans(ih.render_token_heatmap(["x"] * len(s), s)).spans:
        st = style_of(sp["attrs"])
        hi, lo = sorted([lum(st["background"]), lum(st["color"])], reverse=True)
        assert (hi + 0.05) / (lo + 0.05) >= 4.5, st  # WCAG AA for normal text


def test_tooltips_show_exact_values():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=20) * 10.0 ** rng.integers(-9, 6, size=20), [0.0, -1e-300, 1 / 3]])
    p = parse_spans(ih.render_token_heatmap([f"t{i}" for i in range(len(scores))], scores))
    for i, sp in enumerate(p.spans):
        assert title_value(sp["attrs"]["title"]) == scores[i]  # exact, not rounded
        assert sp["attrs"]["title"].endswith(f"(token {i})")
    s32 = np.array([0.1, -0.3], dtype=np.float32)
    p = parse_spans(ih.render_token_heatmap(["a", "b"], s32))
    assert [title_value(sp["attrs"]["title"]) for sp in p.spans] == [float(x) for x in s32]


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="2 tokens but 3 scores"):
        ih.render_token_heatmap(["a", "b"], [1, 2, 3])
    with pytest.raises(ValueError, match="score 1 is nan"):
        ih.render_token_heatmap(["a", "b"], [1, float("nan")])
    with pytest.raises(TypeError, match="token 0"):
        ih.render_token_heatmap([3], [1.0])


def test_heatmaps_share_one_scale_and_legend():
    out = ih.render_heatmaps([{"title": "big", "tokens": ["a", "b"], "scores": [1.0, -0.25]},
                              ("small <x>", ["c", "d"], [0.1, -0.05])], title="Top CoTs")
    p = parse_spans(out)
    bg = [style_of(s["attrs"])["background"] for s in p.spans]
    assert bg[0] == ih.POSITIVE_COLOR  # the largest |score| over both items
    assert bg[2] != ih.POSITIVE_COLOR  # 0.1 on the shared scale 1.0: pale, not full
    white, pos = np.full(3, 255.0), hex_rgb(ih.POSITIVE_COLOR)
    np.testing.assert_allclose(hex_rgb(bg[2]), white + 0.1 * (pos - white), atol=2)
    assert "small <x>" in "".join(p.text_in) and "<x>" not in out
    # the legend runs from -scale (harmful) to +scale (helpful) through white
    legend = re.findall(r'title="([^"]+)" style="display:inline-block;[^"]*background:(#[0-9a-f]{6})', out)
    assert [float(v) for v, _ in legend][0] == -1.0 and float(legend[-1][0]) == 1.0
    assert legend[0][1] == ih.NEGATIVE_COLOR and legend[-1][1] == ih.POSITIVE_COLOR
    assert legend[len(legend) // 2][1] == "#ffffff"
    assert "helpful" in out and "harmful" in out
    # an explicit shared scale across separate calls: the same score, the same colour
    scale = ih.compute_shared_scale([1.0, -3.0], [0.5])
    assert scale == 3.0 and ih.compute_shared_scale([0.0]) == 1.0
    a = parse_spans(ih.render_token_heatmap(["a"], [1.5], scale=scale)).spans[0]
    b = parse_spans(ih.render_heatmaps([("b", ["b"], [1.5])], scale=scale)).spans[0]
    assert style_of(a["attrs"])["background"] == style_of(b["attrs"])["background"] == ih.score_color(1.5, 3.0)


def test_save_html_writes_a_standalone_page_atomically(tmp_path):
    body = ih.render_token_heatmap(["a", "\u00e9"], [1.0, -1.0])
    path = ih.save_html(tmp_path / "sub" / "page.html", body, title="A <page>")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
    assert "<title>A &lt;page&gt;</title>" in text and body in text
    assert "http://" not in text and "https://" not in text  # nothing to fetch
    assert sorted(p.name for p in path.parent.iterdir()) == ["page.html"]  # no temp file left


def test_tooltips_to_significant_digits_when_asked():
    scores = [0.123456789, -1 / 3, 1234.5678, -1.23456e-7, 0.0]
    p = parse_spans(ih.render_heatmaps([("a", [f"t{i}" for i in range(5)], scores)], digits=3))
    assert [s["attrs"]["title"].split()[1] for s in p.spans] == ["+0.123", "-0.333", "+1230", "-1.23e-07", "0"]
    assert [title_value(s["attrs"]["title"]) for s in p.spans] == [0.123, -0.333, 1230.0, -1.23e-07, 0.0]
    assert ih.format_sig(0.000123456) == "+0.000123"
    assert ih.round_sig(-0.0045678, 2) == -0.0046 and ih.format_sig(0.5) == "+0.5"
    # the legend's swatches are titled to 3 digits whatever the scale
    legend = re.findall(r'title="([^"]+)" style="display:inline-block', ih.render_color_legend(0.1 + 0.2))
    assert legend[0] == "-0.3" and legend[-1] == "+0.3" and "+0.06" in legend
