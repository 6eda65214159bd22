"""Self-contained HTML token heat-maps of attribution scores (``infra report --heatmap``).

Every view is one HTML string with inline styles. Nothing is fetched (no external CSS, JS, fonts or network), so a
view works from ``file://`` (:func:`save_html`), as an ``IPython.display.HTML`` output in
JupyterLab, and in a Jupyter Book page, where MyST-NB copies a notebook's ``text/html`` output
into the page as it is, scripts included. JupyterLab runs the explorer's script only in a trusted
notebook (outputs made in the running session are); otherwise it shows a note saying so.

Colour: a diverging map, symmetric about zero. Positive score = helpful (upweighting the
training example lowers the query's loss) = green :data:`POSITIVE_COLOR`; negative = harmful =
magenta :data:`NEGATIVE_COLOR`; zero = white. The intensity is ``|score| / scale``, linear,
clipped at 1 and quantised to :data:`LEVELS` steps per side, so that the explorer's script draws
with the very palette Python computes (:func:`score_color`). Green and magenta (PiYG's ends) stay
apart under the common colour-vision deficiencies and are neither domain's colour.
"""
from __future__ import annotations

import html as _html
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from infra_lib.io import atomic_write_text

__all__ = [
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "NEUTRAL_COLOR",
    "LEVELS",
    "score_color",
    "compute_shared_scale",
    "round_sig",
    "format_sig",
    "render_color_legend",
    "render_token_heatmap",
    "render_heatmaps",
    "save_html",
]

POSITIVE_COLOR = "#4d9221"  # helpful
NEGATIVE_COLOR = "#c51b7d"  # harmful
NEUTRAL_COLOR = "#ffffff"
LEVELS = 100  # colour steps per side of zero

# MathJax (in a Jupyter Book page, in JupyterLab) would typeset \( \) or $$ inside a CoT and merge
# the token spans; these classes tell MathJax 2 and 3 to leave the views alone.
_NO_MATH = "tex2jax_ignore mathjax_ignore"
_HEAT_STYLE = "white-space:pre-wrap;word-break:break-word;font-family:monospace;font-size:12px;line-height:1.5"


# --------------------------------------------------------------------------- colours
def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[k:k + 2], 16) for k in (1, 3, 5))  # type: ignore[return-value]


def _text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever contrasts more with ``rgb`` (WCAG relative luminance)."""
    lin = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
    return "#000000" if lum > 0.179 else "#ffffff"


def _build_palette() -> list[tuple[str, str]]:
    """(background, text) colours for levels -LEVELS..LEVELS, index ``level + LEVELS``."""
    out = []
    for k in range(-LEVELS, LEVELS + 1):
        t = abs(k) / LEVELS
        hue = _rgb(POSITIVE_COLOR if k > 0 else NEGATIVE_COLOR)
        rgb = tuple(int(math.floor(255 + t * (h - 255) + 0.5)) for h in hue)
        out.append(("#%02x%02x%02x" % rgb, _text_colour(rgb)))
    return out


_PALETTE = _build_palette()


def _level(score: float, scale: float) -> int:
    # floor(x + 0.5), not round(): the explorer's script computes the same level with Math.floor
    return max(-LEVELS, min(LEVELS, math.floor(score / scale * LEVELS + 0.5)))


def score_color(score: float, scale: float) -> str:
    """Background colour ``"#rrggbb"`` of a token with influence ``score`` on a symmetric ``scale``.

    White at 0, :data:`POSITIVE_COLOR` at ``score >= scale`` (helpful), :data:`NEGATIVE_COLOR` at
    ``score <= -scale`` (harmful), linear in between.
    """
    return _PALETTE[_level(float(score), _check_scale(scale)) + LEVELS][0]


def _check_scale(scale: Any) -> float:
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    return scale


def _as_scores(scores: Any, what: str) -> list[float]:
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().cpu().double().numpy()
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{what}: score {int(bad[0])} is {arr[bad[0]]}; scores must be finite")
    return arr.tolist()


def compute_shared_scale(*score_arrays: Any) -> float:
    """The symmetric colour scale ``max |score|`` over all ``score_arrays`` (1.0 if all are zero).

    Pass the result as ``scale=`` to several heat-maps so that equal colours mean equal scores.
    """
    m = 0.0
    for k, s in enumerate(score_arrays):
        vals = _as_scores(s, f"score array {k}")
        if vals:
            m = max(m, max(abs(v) for v in vals))
    return m if m > 0 else 1.0


def _fmt_exact(score: float) -> str:
    # shortest repr that reads back as the same float; the script's String(x) has the same property
    return ("+" if score > 0 else "") + repr(float(score))


def round_sig(x: float, digits: int = 3) -> float:
    """``x`` rounded to ``digits`` significant digits (``0.0123456 -> 0.0123``; zero stays zero)."""
    return float(f"{float(x):.{digits}g}")


def format_sig(x: float, digits: int = 3) -> str:
    """``x`` with a sign and at most ``digits`` significant digits, without an exponent between
    1e-4 and 1e6 (``+0.0123``, ``-1230``, ``+1.2e-07``, ``0``)."""
    v = round_sig(x, digits)
    if v == 0:
        return "0"
    text = f"{v:f}".rstrip("0").rstrip(".") if 1e-4 <= abs(v) < 1e6 else f"{v:.{digits}g}"
    return ("+" if v > 0 else "") + text


def _fmt_score(score: float, digits: int | None) -> str:
    return _fmt_exact(score) if digits is None else format_sig(score, digits)


def _fmt_scale(scale: float) -> str:
    return format_sig(scale).lstrip("+")


# --------------------------------------------------------------------------- heat-maps
def render_color_legend(scale: float, n: int = 11) -> str:
    """A small legend: ``n`` swatches from ``-scale`` (harmful) through 0 to ``+scale`` (helpful),
    each titled with its score to 3 significant digits."""
    scale = _check_scale(scale)
    cells = []
    for k in range(n):
        v = scale * (2 * k / (n - 1) - 1)
        bg = score_color(v, scale)
        cells.append(f'<span title="{_html.escape(format_sig(v))}" style="display:inline-block;width:14px;'
                     f'height:12px;background:{bg};border:1px solid #ccc;margin-right:-1px"></span>')
    return (f'<div style="font-family:sans-serif;font-size:11px;color:#333;margin:4px 0">'
            f'harmful &minus;{_fmt_scale(scale)} <span style="vertical-align:middle">{"".join(cells)}</span> '
            f'+{_fmt_scale(scale)} helpful</div>')


def _token_spans(tokens: Sequence[str], scores: Sequence[float], scale: float, digits: int | None = None) -> str:
    parts = []
    for i, (tok, s) in enumerate(zip(tokens, scores)):
        bg, fg = _PALETTE[_level(s, scale) + LEVELS]
        parts.append(f'<span data-i="{i}" title="score {_fmt_score(s, digits)} (token {i})" '
                     f'style="background:{bg};color:{fg}">{_html.escape(tok)}</span>')
    return "".join(parts)


def _check_tokens(tokens: Sequence[str], scores: Any, what: str) -> tuple[list[str], list[float]]:
    tokens = list(tokens)
    for i, t in enumerate(tokens):
        if not isinstance(t, str):
            raise TypeError(f"{what}: token {i} must be a str, got {type(t).__name__}")
    vals = _as_scores(scores, what)
    if len(vals) != len(tokens):
        raise ValueError(f"{what}: {len(tokens)} tokens but {len(vals)} scores")
    return tokens, vals


def render_token_heatmap(tokens: Sequence[str], scores: Sequence[float], title: str | None = None,
                         scale: float | None = None, digits: int | None = None) -> str:
    """A CoT as its decoded tokens, each on a background coloured by its influence score.

    ``tokens``: the decoded tokens, in order (``"".join(tokens)`` is the text; whitespace and
    newlines are kept). ``scores``: shape ``(len(tokens),)``, per-token influence, positive =
    helpful. ``scale``: the score drawn at full intensity; ``None`` uses this example's
    ``max |score|`` (see :func:`compute_shared_scale` to share one across heat-maps). Hovering a
    token shows its exact score, or its score to ``digits`` significant digits when given.
    Returns an HTML ``<div>`` with inline styles only.
    """
    tokens, vals = _check_tokens(tokens, scores, f"heat-map {title!r}" if title else "heat-map")
    scale = compute_shared_scale(vals) if scale is None else _check_scale(scale)
    head = f'<div style="font-weight:bold;margin-bottom:2px">{_html.escape(title)}</div>' if title else ""
    box = "font-family:sans-serif;font-size:12px;margin:6px 0"
    return (f'<div class="infra-heatmap {_NO_MATH}" style="{box}">{head}'
            f'<div style="{_HEAT_STYLE}">{_token_spans(tokens, vals, scale, digits)}</div></div>')


def render_heatmaps(items: Sequence[Any], scale: float | None = None, title: str | None = None,
                    legend: bool = True, digits: int | None = None) -> str:
    """Several token heat-maps on one shared colour scale, with a colour legend.

    ``items``: each a mapping with ``tokens``, ``scores`` and optional ``title``, or a tuple
    ``(title, tokens, scores)``. ``scale``: ``None`` takes ``max |score|`` over all items.
    ``digits``: tooltips show scores to that many significant digits (``None``: exact).
    """
    parsed = []
    for k, it in enumerate(items):
        if isinstance(it, Mapping):
            name, toks, scs = it.get("title"), it["tokens"], it["scores"]
        else:
            name, toks, scs = it
        toks, vals = _check_tokens(toks, scs, f"item {k}" + (f" ({name!r})" if name else ""))
        parsed.append((name, toks, vals))
    scale = compute_shared_scale(*[v for _, _, v in parsed]) if scale is None else _check_scale(scale)
    head = f'<div style="font-weight:bold">{_html.escape(title)}</div>' if title else ""
    body = "".join(render_token_heatmap(t, v, title=n, scale=scale, digits=digits) for n, t, v in parsed)
    box = "border:1px solid #ddd;padding:6px;margin:6px 0;background:#fff;color:#222"
    return (f'<div class="infra-heatmaps {_NO_MATH}" style="{box}">'
            f'{head}{render_color_legend(scale) if legend else ""}{body}</div>')


def save_html(path: str | os.PathLike, html: str, title: str = "infra-study") -> Path:
    """Write ``html`` (a fragment from this module) as a standalone UTF-8 page, atomically."""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_html.escape(title)}</title></head>\n"
        f'<body style="margin:16px;background:#fff">\n{html}\n</body></html>\n'
    )
    return atomic_write_text(path, page)
