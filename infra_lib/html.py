"""Self-contained HTML views of attribution scores: token heat-maps and the step explorer.

Every view is one HTML string: inline styles for the heat-maps, plus one inline ``<style>`` and
``<script>`` for the explorer. Nothing is fetched (no external CSS, JS, fonts or network), so a
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

import dataclasses
import hashlib
import html as _html
import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .io import atomic_write_text

__all__ = [
    "POSITIVE_COLOR",
    "NEGATIVE_COLOR",
    "NEUTRAL_COLOR",
    "LEVELS",
    "score_color",
    "compute_shared_scale",
    "render_color_legend",
    "render_token_heatmap",
    "render_heatmaps",
    "ExplorerQuery",
    "ExplorerExample",
    "select_top_examples",
    "render_step_explorer",
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


def _fmt_scale(scale: float) -> str:
    return f"{scale:.3g}"


# --------------------------------------------------------------------------- heat-maps
def render_color_legend(scale: float, n: int = 11) -> str:
    """A small legend: ``n`` swatches from ``-scale`` (harmful) through 0 to ``+scale`` (helpful)."""
    scale = _check_scale(scale)
    cells = []
    for k in range(n):
        v = scale * (2 * k / (n - 1) - 1)
        bg = score_color(v, scale)
        cells.append(f'<span title="{_html.escape(_fmt_exact(v))}" style="display:inline-block;width:14px;'
                     f'height:12px;background:{bg};border:1px solid #ccc;margin-right:-1px"></span>')
    return (f'<div style="font-family:sans-serif;font-size:11px;color:#333;margin:4px 0">'
            f'harmful &minus;{_fmt_scale(scale)} <span style="vertical-align:middle">{"".join(cells)}</span> '
            f'+{_fmt_scale(scale)} helpful</div>')


def _token_spans(tokens: Sequence[str], scores: Sequence[float], scale: float) -> str:
    parts = []
    for i, (tok, s) in enumerate(zip(tokens, scores)):
        bg, fg = _PALETTE[_level(s, scale) + LEVELS]
        parts.append(f'<span data-i="{i}" title="score {_fmt_exact(s)} (token {i})" '
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
                         scale: float | None = None) -> str:
    """A CoT as its decoded tokens, each on a background coloured by its influence score.

    ``tokens``: the decoded tokens, in order (``"".join(tokens)`` is the text; whitespace and
    newlines are kept). ``scores``: shape ``(len(tokens),)``, per-token influence, positive =
    helpful. ``scale``: the score drawn at full intensity; ``None`` uses this example's
    ``max |score|`` (see :func:`compute_shared_scale` to share one across heat-maps). Hovering a
    token shows its exact score. Returns an HTML ``<div>`` with inline styles only.
    """
    tokens, vals = _check_tokens(tokens, scores, f"heat-map {title!r}" if title else "heat-map")
    scale = compute_shared_scale(vals) if scale is None else _check_scale(scale)
    head = f'<div style="font-weight:bold;margin-bottom:2px">{_html.escape(title)}</div>' if title else ""
    box = "font-family:sans-serif;font-size:12px;margin:6px 0"
    return (f'<div class="infra-heatmap {_NO_MATH}" style="{box}">{head}'
            f'<div style="{_HEAT_STYLE}">{_token_spans(tokens, vals, scale)}</div></div>')


def render_heatmaps(items: Sequence[Any], scale: float | None = None, title: str | None = None,
                    legend: bool = True) -> str:
    """Several token heat-maps on one shared colour scale, with a colour legend.

    ``items``: each a mapping with ``tokens``, ``scores`` and optional ``title``, or a tuple
    ``(title, tokens, scores)``. ``scale``: ``None`` takes ``max |score|`` over all items.
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
    body = "".join(render_token_heatmap(t, v, title=n, scale=scale) for n, t, v in parsed)
    box = "border:1px solid #ddd;padding:6px;margin:6px 0;background:#fff;color:#222"
    return (f'<div class="infra-heatmaps {_NO_MATH}" style="{box}">'
            f'{head}{render_color_legend(scale) if legend else ""}{body}</div>')


# --------------------------------------------------------------------------- explorer inputs
@dataclass(frozen=True)
class ExplorerQuery:
    """A query of the explorer: its prompt and its response split into steps."""

    id: str
    """Query id, e.g. ``"math-2-00017"``."""
    domain: str
    """``"math"`` or ``"code"``."""
    prompt: str
    """The problem statement."""
    segments: tuple[tuple[str, str], ...]
    """The response as ``(text, kind)`` steps in order; ``"".join(texts)`` is the response, kind is
    ``"step"``, ``"exploratory"`` or ``"answer"``."""

    def __post_init__(self):
        segs = tuple((str(t), str(k)) for t, k in self.segments)
        if not segs:
            raise ValueError(f"query {self.id!r}: no segments")
        object.__setattr__(self, "segments", segs)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ExplorerQuery":
        """From a corpus record (``meta.segments`` are ``[start, end, kind]`` character spans)."""
        from .segments import check_segments

        resp, segs = record["response"], record["meta"]["segments"]
        problem = check_segments(segs, len(resp))
        if problem:
            raise ValueError(f"query {record.get('id')!r}: meta.segments {problem}")
        return cls(id=record["id"], domain=record["domain"], prompt=record["prompt"],
                   segments=tuple((resp[s:e], kind) for s, e, kind in segs))


@dataclass(frozen=True)
class ExplorerExample:
    """A training example of the explorer, with the per-token scores its heat-map shows."""

    id: str
    """Training example id."""
    domain: str
    """``"math"`` or ``"code"``."""
    difficulty: int
    """Level 1-5."""
    tokens: tuple[str, ...]
    """Decoded tokens, in order."""
    scores: tuple[float, ...]
    """Per-token influence, shape ``(len(tokens),)``, positive = helpful (e.g. the example's token
    scores against its query domain's mean query)."""

    def __post_init__(self):
        toks, vals = _check_tokens(self.tokens, self.scores, f"training example {self.id!r}")
        object.__setattr__(self, "tokens", tuple(toks))
        object.__setattr__(self, "scores", tuple(vals))
        object.__setattr__(self, "difficulty", int(self.difficulty))


def _coerce(obj: Any, cls: type) -> Any:
    if isinstance(obj, cls):
        return obj
    if isinstance(obj, Mapping):
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in obj]
        if missing:
            raise ValueError(f"{cls.__name__} {obj.get('id')!r}: missing field(s) {missing}")
        return cls(**{n: obj[n] for n in names})
    raise TypeError(f"expected {cls.__name__} or a mapping, got {type(obj).__name__}")


def select_top_examples(step_scores: Any, k: int) -> np.ndarray:
    """Indices of the ``k`` most helpful training examples per step, best first.

    ``step_scores``: shape ``(n_steps, n_train)``, positive = helpful. Returns an int array of shape
    ``(n_steps, min(k, n_train))``; ties go to the lower training index.
    """
    s = np.asarray(step_scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"step_scores must be 2-D (n_steps, n_train), got shape {s.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _step_matrix(step_scores: Any, q: ExplorerQuery, qi: int, n_train: int) -> np.ndarray:
    try:
        raw = step_scores[q.id] if isinstance(step_scores, Mapping) else step_scores[qi]
    except (KeyError, IndexError):
        raise ValueError(f"step_scores has no entry for query {q.id!r} (index {qi})") from None
    if hasattr(raw, "detach"):
        raw = raw.detach().cpu().double().numpy()
    s = np.asarray(raw, dtype=np.float64)
    want = (len(q.segments), n_train)
    if s.shape != want:
        raise ValueError(f"step_scores[{q.id!r}] has shape {s.shape}, expected (n_steps, n_train) = {want}")
    bad = np.argwhere(~np.isfinite(s))
    if bad.size:
        st, tr = (int(x) for x in bad[0])
        raise ValueError(f"step_scores[{q.id!r}][{st}, {tr}] is {s[st, tr]}; scores must be finite")
    return s


# --------------------------------------------------------------------------- explorer
_ids = itertools.count()


def _json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script>``: no ``</script>``, ``<!--`` or line separators survive."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


_CSS = """
#NS{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;font-size:13px;color:#222;background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px;margin:8px 0}
#NS .ix-head{display:flex;flex-wrap:wrap;gap:8px;align-items:center}
#NS .ix-nojs{color:#a00;margin:4px 0}
#NS .ix-prompt{white-space:pre-wrap;font-family:monospace;font-size:12px;color:#555;margin:6px 0}
#NS .ix-steps{display:flex;flex-direction:column;gap:3px}
#NS .ix-step{display:block;width:100%;text-align:left;font-family:monospace;font-size:12px;line-height:1.4;white-space:pre-wrap;color:#222;border:1px solid #ccc;border-radius:3px;padding:3px 6px;margin:0;cursor:pointer}
#NS .ix-step:hover{border-color:#555}
#NS .ix-step[aria-pressed="true"]{border-color:#222;box-shadow:0 0 0 2px #222}
#NS .ix-kind{font-family:sans-serif;font-size:10px;color:#666;margin-right:6px}
#NS .ix-caption{margin:8px 0 2px 0}
#NS .ix-list{margin:0;padding-left:1.8em}
#NS .ix-item{margin:6px 0}
#NS .ix-meta{font-size:12px}
#NS .ix-heat{HEAT;border:1px solid #eee;padding:3px;max-height:14em;overflow:auto}
"""

_JS = r"""
(function () {
  "use strict";
  var cur = document.currentScript;
  var root = (cur && cur.parentNode && cur.parentNode.id === "NS") ? cur.parentNode : document.getElementById("NS");
  if (!root || root.getAttribute("data-ready")) { return; }
  var data = JSON.parse(root.querySelector("script.ix-data").textContent);
  var sel = root.querySelector(".ix-query"), promptBox = root.querySelector(".ix-prompt"),
      stepsBox = root.querySelector(".ix-steps"), caption = root.querySelector(".ix-caption"),
      list = root.querySelector(".ix-list");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function exact(s) { return (s > 0 ? "+" : "") + String(s); }
  function short(s) { return (s > 0 ? "+" : "") + Number(s).toPrecision(3); }
  function level(s) {
    var x = Math.floor(s / data.scale * data.levels + 0.5);
    return Math.max(-data.levels, Math.min(data.levels, x));
  }
  function heatmap(ex) {
    var box = el("div", "ix-heat");
    for (var i = 0; i < ex.tokens.length; i++) {
      var c = data.palette[level(ex.scores[i]) + data.levels], sp = el("span", null, ex.tokens[i]);
      sp.setAttribute("data-i", String(i));
      sp.title = "score " + exact(ex.scores[i]) + " (token " + i + ")";
      sp.style.background = c[0];
      sp.style.color = c[1];
      box.appendChild(sp);
    }
    return box;
  }
  function showStep(qi, si) {
    var q = data.queries[qi], seg = q.segments[si], buttons = stepsBox.children;
    for (var b = 0; b < buttons.length; b++) { buttons[b].setAttribute("aria-pressed", b === si ? "true" : "false"); }
    caption.textContent = "Top " + q.top[si].length + " training examples for step " + (si + 1) + " (" + seg[1] +
      ") of " + q.id + ", by influence on that step (positive = helpful):";
    list.textContent = "";
    q.top[si].forEach(function (pair) {
      var ex = data.train[pair[0]], li = el("li", "ix-item"), meta = el("div", "ix-meta");
      li.setAttribute("data-train-id", ex.id);
      meta.appendChild(el("b", null, ex.id));
      meta.appendChild(document.createTextNode(
        " \u00b7 " + ex.domain + " \u00b7 level " + ex.difficulty + " \u00b7 score "));
      var sc = el("span", "ix-score", short(pair[1]));
      sc.title = exact(pair[1]);
      meta.appendChild(sc);
      li.appendChild(meta);
      li.appendChild(heatmap(ex));
      list.appendChild(li);
    });
    root.setAttribute("data-query", String(qi));
    root.setAttribute("data-step", String(si));
  }
  function showQuery(qi) {
    var q = data.queries[qi];
    promptBox.textContent = q.prompt;
    stepsBox.textContent = "";
    q.segments.forEach(function (seg, si) {
      var btn = el("button", "ix-step");
      btn.type = "button";
      btn.setAttribute("data-step", String(si));
      btn.style.background = data.segment_colors[seg[1]] || "#eeeeee";
      btn.appendChild(el("span", "ix-kind", (si + 1) + " " + seg[1]));
      btn.appendChild(document.createTextNode(seg[0].replace(/\n+$/, "")));
      btn.addEventListener("click", function () { showStep(qi, si); });
      stepsBox.appendChild(btn);
    });
    showStep(qi, 0);
  }
  data.queries.forEach(function (q, qi) {
    var o = el("option", null, q.id + " (" + q.domain + ")");
    o.value = String(qi);
    sel.appendChild(o);
  });
  sel.addEventListener("change", function () { showQuery(Number(sel.value)); });
  root.querySelector(".ix-nojs").style.display = "none";
  showQuery(0);
  root.setAttribute("data-ready", "1");
})();
"""


def render_step_explorer(queries: Sequence[ExplorerQuery | Mapping[str, Any]],
                         train_examples: Sequence[ExplorerExample | Mapping[str, Any]],
                         step_scores: Mapping[str, Any] | Sequence[Any], top_k: int = 5,
                         title: str | None = None, scale: float | None = None,
                         element_id: str | None = None) -> str:
    """An interactive view of which training examples support each step of a query's CoT.

    The reader picks a query (select box); its response shows as one clickable block per step;
    clicking a step lists the ``top_k`` training examples with the largest influence on that step
    (id, domain, level, score), each with its token heat-map.

    ``queries``: :class:`ExplorerQuery` (or mappings with its fields). ``train_examples``:
    :class:`ExplorerExample` (or mappings), in the column order of the scores. ``step_scores``:
    per query (a mapping by query id, or a sequence in query order) an array of shape
    ``(n_steps, n_train)``: influence of each training example on the loss of that query step,
    positive = helpful. ``scale``: the heat-maps' shared colour scale, default ``max |token score|``
    over the examples shown. ``element_id``: the explorer's HTML id, which namespaces it (default:
    the data's hash and a counter), so several explorers can share a page.

    Returns one self-contained HTML string (inline ``<style>``, ``<script>``, data as JSON). Only
    the training examples that appear in some top-k list are embedded.
    """
    queries = [_coerce(q, ExplorerQuery) for q in queries]
    train = [_coerce(t, ExplorerExample) for t in train_examples]
    if not queries:
        raise ValueError("render_step_explorer: no queries")
    if not train:
        raise ValueError("render_step_explorer: no training examples")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    if element_id is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", element_id):
        raise ValueError(f"element_id must start with a letter and hold only letters, digits, '-' or '_', "
                         f"got {element_id!r}")

    embedded: dict[int, int] = {}  # training column -> index in the embedded list
    q_payload = []
    for qi, q in enumerate(queries):
        s = _step_matrix(step_scores, q, qi, len(train))
        top = select_top_examples(s, top_k)
        lists = []
        for si in range(s.shape[0]):
            lists.append([[embedded.setdefault(int(j), len(embedded)), float(s[si, j])] for j in top[si]])
        q_payload.append({"id": q.id, "domain": q.domain, "prompt": q.prompt,
                          "segments": [list(seg) for seg in q.segments], "top": lists})
    order = sorted(embedded, key=embedded.get)
    shown = [train[j] for j in order]
    scale = compute_shared_scale(*[t.scores for t in shown]) if scale is None else _check_scale(scale)

    from .plots import SEGMENT_COLORS  # lazy: plots imports matplotlib

    payload = {
        "format": "infra-step-explorer/1",
        "top_k": top_k,
        "scale": scale,
        "levels": LEVELS,
        "palette": [list(p) for p in _PALETTE],
        "segment_colors": dict(SEGMENT_COLORS),
        "queries": q_payload,
        "train": [{"index": j, "id": t.id, "domain": t.domain, "difficulty": t.difficulty,
                   "tokens": list(t.tokens), "scores": list(t.scores)} for j, t in zip(order, shown)],
    }
    data = _json_for_script(payload)
    # default id: the data's hash (stable across runs) plus a counter (two explorers of the same data)
    ns = element_id or f"infra-explorer-{hashlib.sha1(data.encode()).hexdigest()[:10]}-{next(_ids)}"
    css = _CSS.replace("#NS", f"#{ns}").replace("HEAT", _HEAT_STYLE)
    js = _JS.replace('"NS"', json.dumps(ns))
    head = f"<b>{_html.escape(title)}</b>" if title else ""
    return (
        f'<div id="{ns}" class="infra-explorer {_NO_MATH}" data-infra-explorer="1"><style>{css}</style>'
        f'<div class="ix-head">{head}<label for="{ns}-query">query</label>'
        f'<select id="{ns}-query" class="ix-query"></select></div>'
        f'<div class="ix-nojs">This explorer needs JavaScript. In JupyterLab, trust the notebook '
        f'(or re-run the cell) to see it.</div>'
        f'<div class="ix-prompt"></div><div class="ix-steps" role="group" aria-label="steps of the response"></div>'
        f'<div class="ix-caption"></div><ol class="ix-list"></ol>{render_color_legend(scale)}'
        f'<script type="application/json" class="ix-data">{data}</script>'
        f"<script>{js}</script></div>"
    )


def save_html(path: str | os.PathLike, html: str, title: str = "infra-study") -> Path:
    """Write ``html`` (a fragment from this module) as a standalone UTF-8 page, atomically."""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_html.escape(title)}</title></head>\n"
        f'<body style="margin:16px;background:#fff">\n{html}\n</body></html>\n'
    )
    return atomic_write_text(path, page)
