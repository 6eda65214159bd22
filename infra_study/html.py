"""The step explorer: a self-contained HTML view of query-side step scores.

One HTML string with an inline ``<style>`` and ``<script>``; nothing is fetched, so it works from
``file://``, as an ``IPython.display.HTML`` output in JupyterLab (a trusted notebook runs its
script; otherwise it shows a note saying so), and in a Jupyter Book page, where MyST-NB copies a
notebook's ``text/html`` output as it is. Token heat-maps and the colour scale come from
:mod:`infra_lib.report` (re-exported here, so a notebook needs one import): positive score =
helpful = green, negative = harmful = magenta, zero = white. Every score a reader sees here (tooltips,
lists, legends) has :data:`DIGITS` significant digits.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html as _html
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from infra_lib import report as _report
from infra_lib.report import (  # noqa: F401  (re-exported for notebooks)
    _HEAT_STYLE,
    _NO_MATH,
    _PALETTE,
    LEVELS,
    NEGATIVE_COLOR,
    NEUTRAL_COLOR,
    POSITIVE_COLOR,
    _check_scale,
    _check_tokens,
    compute_shared_scale,
    format_sig,
    render_color_legend,
    round_sig,
    save_html,
    score_color,
)

DIGITS = 3
"""Significant digits of every score a reader sees in the book's views (tooltips, lists, legends)."""


def render_token_heatmap(tokens: Sequence[str], scores: Sequence[float], title: str | None = None,
                         scale: float | None = None) -> str:
    """:func:`infra_lib.report.render_token_heatmap` with tooltips to :data:`DIGITS` significant digits."""
    return _report.render_token_heatmap(tokens, scores, title=title, scale=scale, digits=DIGITS)


def render_heatmaps(items: Sequence[Any], scale: float | None = None, title: str | None = None,
                    legend: bool = True) -> str:
    """:func:`infra_lib.report.render_heatmaps` (one shared scale, a legend) with tooltips to
    :data:`DIGITS` significant digits."""
    return _report.render_heatmaps(items, scale=scale, title=title, legend=legend, digits=DIGITS)

__all__ = [
    "POSITIVE_COLOR", "NEGATIVE_COLOR", "NEUTRAL_COLOR", "LEVELS", "score_color", "compute_shared_scale",
    "render_color_legend", "render_token_heatmap", "render_heatmaps", "save_html",
    "DIGITS", "ExplorerQuery", "ExplorerExample", "select_top_examples", "elided_span", "render_step_explorer",
]


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
    difficulty: int | None = None
    """Level 1-5 of the query's problem, if known (shown beside its id)."""

    def __post_init__(self):
        segs = tuple((str(t), str(k)) for t, k in self.segments)
        if not segs:
            raise ValueError(f"query {self.id!r}: no segments")
        object.__setattr__(self, "segments", segs)
        if self.difficulty is not None:
            object.__setattr__(self, "difficulty", int(self.difficulty))

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ExplorerQuery":
        """From a corpus record (``meta.segments`` are ``[start, end, kind]`` character spans)."""
        from infra_lib.segments import check_segments

        resp, segs = record["response"], record["meta"]["segments"]
        problem = check_segments(segs, len(resp))
        if problem:
            raise ValueError(f"query {record.get('id')!r}: meta.segments {problem}")
        return cls(id=record["id"], domain=record["domain"], prompt=record["prompt"],
                   segments=tuple((resp[s:e], kind) for s, e, kind in segs), difficulty=record.get("difficulty"))


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
    answer_from: int | None = None
    """Index of the first token of the example's answer, if known: a long heat-map elides its middle
    but always shows the tokens from here on."""

    def __post_init__(self):
        toks, vals = _check_tokens(self.tokens, self.scores, f"training example {self.id!r}")
        object.__setattr__(self, "tokens", tuple(toks))
        object.__setattr__(self, "scores", tuple(vals))
        object.__setattr__(self, "difficulty", int(self.difficulty))
        if self.answer_from is not None:
            a = int(self.answer_from)
            if not 0 <= a < len(toks):
                raise ValueError(f"training example {self.id!r}: answer_from {a} is outside its {len(toks)} tokens")
            object.__setattr__(self, "answer_from", a)


def _coerce(obj: Any, cls: type) -> Any:
    if isinstance(obj, cls):
        return obj
    if isinstance(obj, Mapping):
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in obj and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{cls.__name__} {obj.get('id')!r}: missing field(s) {missing}")
        return cls(**{f.name: obj[f.name] for f in fields if f.name in obj})
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


def elided_span(tokens: Sequence[str], answer_from: int | None = None, *, width: int = 100, max_lines: int = 14,
                head_lines: int = 3, tail_lines: int = 6) -> tuple[int, int] | None:
    """The tokens ``[a, b)`` a long heat-map hides behind a "show" button, or ``None`` to show all.

    Lines are counted as the reader sees them: a newline ends one, and ``width`` characters without
    a newline wrap into the next. An example of more than ``max_lines`` lines keeps its first
    ``head_lines`` lines and its last ``tail_lines`` lines, and always every token from
    ``answer_from`` on (its answer), so the end of a CoT is never cut off; the middle is elided.
    """
    starts, line, col = [], 0, 0
    for tok in tokens:
        starts.append(line)
        for ch in tok:
            if ch == "\n":
                line, col = line + 1, 0
            else:
                col += 1
                if col > width:
                    line, col = line + 1, 1
    n_lines = line + (1 if col else 0)
    if n_lines <= max_lines:
        return None
    a = next((i for i, st in enumerate(starts) if st >= head_lines), len(tokens))
    b = next((i for i, st in enumerate(starts) if st >= n_lines - tail_lines), len(tokens))
    if answer_from is not None:
        b = min(b, int(answer_from))
    if b <= a or starts[b] - starts[a] < 2:  # less than two lines to hide: show everything
        return None
    return a, b


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


def _as_list(span: tuple[int, int] | None) -> list[int] | None:
    return None if span is None else list(span)


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
#NS .ix-legend{font-family:sans-serif;font-size:11px;color:#333;margin:2px 0 4px 0}
#NS .ix-swatch{display:inline-block;width:14px;height:12px;border:1px solid #ccc;margin-right:-1px;vertical-align:middle}
#NS .ix-list{margin:0;padding-left:1.8em}
#NS .ix-item{margin:6px 0}
#NS .ix-meta{font-size:12px}
#NS .ix-heat{HEAT;border:1px solid #eee;padding:3px}
#NS .ix-more{display:block;font-family:sans-serif;font-size:11px;color:#333;background:#f4f4f4;border:1px dashed #999;border-radius:3px;padding:1px 6px;margin:2px 0;cursor:pointer}
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
      legend = root.querySelector(".ix-legend"), list = root.querySelector(".ix-list");
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  // a score with a sign and at most 3 significant digits, as Python's format_sig
  function fmt(s) {
    var v = Number(Number(s).toPrecision(3)), a = Math.abs(v);
    if (v === 0) { return "0"; }
    var t = (a >= 1e-4 && a < 1e6) ? String(v) : v.toExponential(2).replace(/\.?0+e/, "e");
    return (v > 0 ? "+" : "") + t;
  }
  function colour(s, scale) {
    var x = Math.floor(s / scale * data.levels + 0.5);
    return data.palette[Math.max(-data.levels, Math.min(data.levels, x)) + data.levels];
  }
  function token(ex, i, scale) {
    var c = colour(ex.scores[i], scale), sp = el("span", null, ex.tokens[i]);
    sp.setAttribute("data-i", String(i));
    sp.title = "score " + fmt(ex.scores[i]) + " (token " + i + ")";
    sp.style.background = c[0];
    sp.style.color = c[1];
    return sp;
  }
  function heatmap(ex, scale) {
    var box = el("div", "ix-heat"), cut = ex.elide || [ex.tokens.length, ex.tokens.length], i;
    for (i = 0; i < cut[0]; i++) { box.appendChild(token(ex, i, scale)); }
    if (cut[0] < cut[1]) {
      var mid = el("span", "ix-mid"), more = el("button", "ix-more"), n = cut[1] - cut[0],
          label = "\u22ef " + n + " tokens in the middle hidden: show them";
      more.type = "button";
      more.textContent = label;
      more.setAttribute("aria-expanded", "false");
      for (i = cut[0]; i < cut[1]; i++) { mid.appendChild(token(ex, i, scale)); }
      mid.style.display = "none";
      more.addEventListener("click", function () {
        var open = mid.style.display === "none";
        mid.style.display = open ? "" : "none";
        more.setAttribute("aria-expanded", open ? "true" : "false");
        more.textContent = open ? "hide the middle " + n + " tokens" : label;
      });
      box.appendChild(more);
      box.appendChild(mid);
    }
    for (i = cut[1]; i < ex.tokens.length; i++) { box.appendChild(token(ex, i, scale)); }
    return box;
  }
  function showLegend(scale) {
    legend.textContent = "";
    legend.appendChild(document.createTextNode("colour scale of this step's heat-maps: harmful \u2212" +
      fmt(scale).replace("+", "") + " "));
    for (var k = 0; k <= 10; k++) {
      var v = scale * (2 * k / 10 - 1), sw = el("span", "ix-swatch");
      sw.style.background = colour(v, scale)[0];
      sw.title = fmt(v);
      legend.appendChild(sw);
    }
    legend.appendChild(document.createTextNode(" " + fmt(scale) + " helpful"));
    legend.setAttribute("data-scale", String(scale));
  }
  function showStep(qi, si) {
    var q = data.queries[qi], seg = q.segments[si], buttons = stepsBox.children, scale = q.scales[si];
    for (var b = 0; b < buttons.length; b++) { buttons[b].setAttribute("aria-pressed", b === si ? "true" : "false"); }
    caption.textContent = "Top " + q.top[si].length + " training examples for step " + (si + 1) + " (" + seg[1] +
      ") of " + q.id + ", by influence on that step (positive = helpful):";
    showLegend(scale);
    list.textContent = "";
    q.top[si].forEach(function (pair) {
      var ex = data.train[pair[0]], li = el("li", "ix-item"), meta = el("div", "ix-meta");
      li.setAttribute("data-train-id", ex.id);
      meta.appendChild(el("b", null, ex.id));
      meta.appendChild(document.createTextNode(
        " \u00b7 " + ex.domain + " \u00b7 level " + ex.difficulty + " \u00b7 score "));
      var sc = el("span", "ix-score", fmt(pair[1]));
      sc.title = "influence of this example on this step's loss (positive = helpful)";
      meta.appendChild(sc);
      li.appendChild(meta);
      li.appendChild(heatmap(ex, scale));
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
    var o = el("option", null, q.id + " (" + q.domain + (q.difficulty === null ? "" : ", level " + q.difficulty) + ")");
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

    The reader picks a query (select box, with each query's level); its response shows as one
    clickable block per step; clicking a step lists the ``top_k`` training examples with the largest
    influence on that step (id, domain, level, score), each with its token heat-map. A long example
    shows its first and last lines and its whole answer, with the middle behind a button
    (:func:`elided_span`).

    ``queries``: :class:`ExplorerQuery` (or mappings with its fields). ``train_examples``:
    :class:`ExplorerExample` (or mappings), in the column order of the scores. ``step_scores``:
    per query (a mapping by query id, or a sequence in query order) an array of shape
    ``(n_steps, n_train)``: influence of each training example on the loss of that query step,
    positive = helpful. ``scale``: one colour scale for every heat-map; by default each step has its
    own, ``max |token score|`` over the examples listed for that step, shown in a legend above them.
    ``element_id``: the explorer's HTML id, which namespaces it (default: the data's hash and a
    counter), so several explorers can share a page.

    Every score the page holds is rounded to :data:`DIGITS` significant digits (the lists are
    ranked on the exact scores first). Returns one self-contained HTML string (inline ``<style>``,
    ``<script>``, data as JSON). Only the training examples that appear in some top-k list are
    embedded.
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
    fixed = None if scale is None else round_sig(_check_scale(scale), DIGITS)
    shown_scores: dict[int, list[float]] = {}  # training column -> its token scores as embedded

    def rounded(j: int) -> list[float]:
        if j not in shown_scores:
            shown_scores[j] = [round_sig(v, DIGITS) for v in train[j].scores]
        return shown_scores[j]

    embedded: dict[int, int] = {}  # training column -> index in the embedded list
    q_payload = []
    for qi, q in enumerate(queries):
        s = _step_matrix(step_scores, q, qi, len(train))
        top = select_top_examples(s, top_k)
        lists, scales = [], []
        for si in range(s.shape[0]):
            cols = [int(j) for j in top[si]]
            lists.append([[embedded.setdefault(j, len(embedded)), round_sig(s[si, j], DIGITS)] for j in cols])
            scales.append(fixed or compute_shared_scale(*[rounded(j) for j in cols]))
        q_payload.append({"id": q.id, "domain": q.domain, "difficulty": q.difficulty, "prompt": q.prompt,
                          "segments": [list(seg) for seg in q.segments], "top": lists, "scales": scales})
    order = sorted(embedded, key=embedded.get)

    from .plots import SEGMENT_COLORS  # lazy: plots imports matplotlib

    payload = {
        "format": "infra-step-explorer/2",
        "top_k": top_k,
        "levels": LEVELS,
        "palette": [list(p) for p in _PALETTE],
        "segment_colors": dict(SEGMENT_COLORS),
        "queries": q_payload,
        "train": [{"index": j, "id": train[j].id, "domain": train[j].domain, "difficulty": train[j].difficulty,
                   "tokens": list(train[j].tokens), "scores": rounded(j),
                   "elide": _as_list(elided_span(train[j].tokens, train[j].answer_from))} for j in order],
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
        f'<div class="ix-caption"></div><div class="ix-legend"></div><ol class="ix-list"></ol>'
        f'<script type="application/json" class="ix-data">{data}</script>'
        f"<script>{js}</script></div>"
    )
