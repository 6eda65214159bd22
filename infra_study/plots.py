"""Every figure of the book. Functions take ``ax=None`` and return the Axes (or an HTML string).

One colour per domain and per method across the whole book; lowercase axis labels with units.
"""
from __future__ import annotations

import html as _html
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

__all__ = [
    "DOMAIN_COLORS", "SEGMENT_COLORS", "METHOD_COLORS", "CATEGORY_COLORS", "plot_corpus_stats",
    "render_segments_html", "plot_loss_curves", "plot_accuracy_heatmap", "plot_bucket_heatmap",
    "plot_query_spread", "plot_category_bars", "plot_top_tokens", "render_generations_html",
    "ARM_COLORS", "plot_arm_accuracy", "plot_paired_differences", "plot_segment_kinds",
    "plot_exact_agreement", "plot_lds", "plot_parity_scatter", "plot_timing_bars", "format_cell",
    "text_color_for", "token_word_labels",
]

DOMAIN_COLORS = {"math": "#1f77b4", "code": "#d62728"}
METHOD_COLORS = {"identity": "#7f7f7f", "diagonal": "#bcbd22", "kfac": "#9467bd", "ekfac": "#2ca02c", "kronfluence": "#ff7f0e", "exact": "#000000"}
CATEGORY_COLORS = {"connector": "#1f77b4", "code syntax": "#d62728", "number": "#8c564b", "other": "#c7c7c7"}
SEGMENT_COLORS = {"step": "#e8f0fb", "exploratory": "#fde2b5", "answer": "#d9f2d9"}


def format_cell(x: float, digits: int = 2) -> str:
    """A heat-map cell's number: ``digits`` significant digits, a sign, never an exponent
    (``-310``, ``+0.042``, ``+1.5k`` for thousands and up)."""
    if not np.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e4:
        return f"{x / 1e3:+.0f}k"
    if abs(x) >= 1e3:
        return f"{x / 1e3:+.1f}k"
    mag = int(np.floor(np.log10(abs(x))))
    decimals = max(digits - 1 - mag, 0)
    out = f"{round(x, decimals):+.{decimals}f}"
    return out.rstrip("0").rstrip(".") if "." in out else out


def text_color_for(rgba) -> str:
    """Black or white, whichever reads better on a background colour (relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3])
    return "black" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.25 else "white"


def _ax(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def plot_corpus_stats(stats, value: str = "count", ax=None, ylabel: str | None = None):
    """Grouped bars of a ``corpus_stats`` column per difficulty level, one bar colour per domain.

    ``stats``: a DataFrame with ``domain`` and ``level`` (as columns or index levels) and ``value``.
    """
    ax = _ax(ax)
    if "domain" not in stats.columns:
        stats = stats.reset_index()
    domains = [d for d in DOMAIN_COLORS if d in set(stats["domain"])]
    width = 0.8 / max(len(domains), 1)
    for k, dom in enumerate(domains):
        sub = stats[stats["domain"] == dom].sort_values("level")
        xs = sub["level"].to_numpy() + (k - (len(domains) - 1) / 2) * width
        ax.bar(xs, sub[value].to_numpy(), width=width, color=DOMAIN_COLORS[dom], label=dom)
    ax.set_xlabel("difficulty level")
    ax.set_ylabel(ylabel or value.replace("_", " "))
    ax.set_xticks(sorted(set(stats["level"])))
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def render_segments_html(record: Mapping[str, Any], title: str | None = None) -> str:
    """The response of a record with each ``meta.segments`` span shaded by kind (self-contained HTML).

    Works from ``file://`` and in JupyterLab: inline styles only, no scripts, no network.
    """
    resp = record["response"]
    parts = []
    for start, end, kind in record["meta"]["segments"]:
        colour = SEGMENT_COLORS.get(kind, "#eeeeee")
        text = _html.escape(resp[start:end])
        parts.append(f'<span title="{kind} [{start}, {end})" style="background:{colour};border-radius:3px">{text}</span>')
    head = _html.escape(title or f"{record['id']} ({record['domain']}, level {record['difficulty']})")
    prompt = _html.escape(record["prompt"])
    legend = " ".join(f'<span style="background:{c};padding:0 4px">{k}</span>' for k, c in SEGMENT_COLORS.items())
    return (
        f'<div style="font-family:monospace;font-size:12px;border:1px solid #ddd;padding:6px;margin:6px 0">'
        f"<div><b>{head}</b> &nbsp; {legend}</div>"
        f'<div style="color:#555;white-space:pre-wrap;margin:4px 0">{prompt}</div>'
        f'<div style="white-space:pre-wrap">{"".join(parts)}</div></div>'
    )


def plot_loss_curves(curves: Mapping[str, Sequence[Mapping[str, float]]], ax=None):
    """Training loss against step. ``curves[name]``: rows with ``step`` and ``loss``.

    ``ax``: one Axes (every stage on it, one line each) or a sequence of Axes, one per stage, each
    with its own x-axis (a short SFT run beside a long base run stays readable). Returns what it got.
    """
    if ax is not None and not hasattr(ax, "plot"):
        axes = list(np.ravel(ax))
        for a, (name, rows) in zip(axes, curves.items()):
            a.plot([r["step"] for r in rows], [r["loss"] for r in rows], color="#444444")
            a.set_title(name, fontsize=9)
            a.set_xlabel("optimizer step")
            a.set_yscale("log")
            a.spines[["top", "right"]].set_visible(False)
        axes[0].set_ylabel("loss (nats per response token)")
        return ax
    ax = _ax(ax)
    for name, rows in curves.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per response token)")
    ax.set_yscale("log")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def _heat(ax, grid, row_labels, col_labels, fmt, cmap, center=None, annot=None):
    import numpy as np

    grid = np.asarray(grid, dtype=float)
    if center is not None:
        m = float(np.nanmax(np.abs(grid - center))) or 1.0
        im = ax.imshow(grid, cmap=cmap, vmin=center - m, vmax=center + m, aspect="auto")
    else:
        im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            text = annot[i][j] if annot is not None else format(grid[i, j], fmt)
            colour = "black" if not np.isfinite(grid[i, j]) else text_color_for(im.cmap(im.norm(grid[i, j])))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(col_labels)), col_labels)
    ax.set_yticks(range(len(row_labels)), row_labels)
    return im


def plot_accuracy_heatmap(accuracy: Mapping[str, Mapping[str, float]], ax=None):
    """Test accuracy per domain (rows) x level (columns). ``accuracy[domain][level]``: fraction in [0, 1]."""
    ax = _ax(ax)
    domains = [d for d in DOMAIN_COLORS if d in accuracy]
    levels = sorted({int(k) for d in domains for k in accuracy[d]})
    grid = [[accuracy[d].get(str(l), float("nan")) for l in levels] for d in domains]
    im = _heat(ax, grid, domains, [str(l) for l in levels], ".2f", "Greens")
    ax.set_xlabel("difficulty level")
    ax.figure.colorbar(im, ax=ax, label="test accuracy (fraction)")
    return ax


def plot_bucket_heatmap(tables: Mapping[str, "object"], ax=None):
    """Mean example influence per (train domain, level) row and query-domain column, annotated
    with the mean and its 95% interval. ``tables[query_domain]``: a ``bucket_influence`` DataFrame."""
    ax = _ax(ax)
    qds = list(tables)
    first = tables[qds[0]]
    keys = list(zip(first["domain"], first["level"]))
    grid, annot = [], []
    for dom, lvl in keys:
        row, arow = [], []
        for q in qds:
            t = tables[q]
            r = t[(t["domain"] == dom) & (t["level"] == lvl)].iloc[0]
            row.append(r["mean"])
            arow.append(f"{format_cell(r['mean'])}\n[{format_cell(r['lo'])}, {format_cell(r['hi'])}]")
        grid.append(row)
        annot.append(arow)
    im = _heat(ax, grid, [f"{d} L{l}" for d, l in keys], [f"{q} queries" for q in qds], "", "RdBu", center=0.0, annot=annot)
    ax.set_ylabel("training examples (domain, level)")
    ax.figure.colorbar(im, ax=ax, label="mean influence (positive = helpful)")
    return ax


def plot_query_spread(per_query: "object", ax=None):
    """Mean influence per training bucket for individual queries (thin lines) against the domain
    mean (thick). ``per_query``: DataFrame with ``query``, ``query_domain``, ``bucket``, ``mean``
    (``query == "mean"`` marks the aggregate)."""
    ax = _ax(ax)
    buckets = list(dict.fromkeys(per_query["bucket"]))
    xs = range(len(buckets))
    for (q, qd), sub in per_query.groupby(["query", "query_domain"], sort=False):
        sub = sub.set_index("bucket").reindex(buckets)
        agg = q == "mean"
        ax.plot(xs, sub["mean"], color=DOMAIN_COLORS.get(qd, "k"), lw=2.5 if agg else 0.8,
                alpha=1.0 if agg else 0.4, label=f"{qd} mean query" if agg else None)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(list(xs), buckets, rotation=60, ha="right")
    ax.set_xlabel("training bucket")
    ax.set_ylabel("mean influence (positive = helpful)")
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def _grouped_bars(table: "object", key: str, colors: Mapping[str, str], ax, edges: Mapping[str, str] | None = None):
    """Bars of ``table['mean']`` with 95% intervals (``lo``, ``hi``): one group per query domain,
    one bar per value of ``table[key]``."""
    import numpy as np

    qds = list(dict.fromkeys(table["query_domain"]))
    vals = list(dict.fromkeys(table[key]))
    width = 0.8 / len(vals)
    for k, v in enumerate(vals):
        sub = table[table[key] == v].set_index("query_domain").reindex(qds)
        xs = np.arange(len(qds)) + (k - (len(vals) - 1) / 2) * width
        err = np.vstack([sub["mean"] - sub["lo"], sub["hi"] - sub["mean"]])
        ax.bar(xs, sub["mean"], width=width, color=colors.get(v, "#999999"), label=v, yerr=err, capsize=2,
               edgecolor=(edges or {}).get(v))
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(qds)), [f"{q} queries" for q in qds])
    ax.set_ylabel("mean per-token influence")
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_category_bars(table: "object", ax=None):
    """Mean per-token influence by token category, one group per query domain, with 95% intervals.
    ``table``: DataFrame with ``query_domain``, ``category``, ``mean``, ``lo``, ``hi``."""
    return _grouped_bars(table, "category", CATEGORY_COLORS, _ax(ax))


def token_word_labels(text: str, tokens: Sequence[str], offsets: Sequence[tuple[int, int]]) -> list[str]:
    """A label per token naming the whole word it falls in: ``so`` when the token is the word,
    ``'nds' in seconds`` when it is a fragment of one. ``offsets``: each token's character span in
    ``text``; spaces and newlines of a token are shown as ``␣`` and ``⏎``."""
    from .analysis import word_spans

    words = word_spans(text)
    out, w = [], 0
    for tok, (a, b) in zip(tokens, offsets):
        while w < len(words) and words[w][1] <= a:
            w += 1
        piece = text[a:b].strip()
        shown = tok.replace(" ", "␣").replace("\n", "⏎")
        if w < len(words) and words[w][0] < b and piece and piece != words[w][2]:
            out.append(f"'{shown}' in {words[w][2]}")
        else:
            out.append(piece or shown)
    return out


def plot_top_tokens(table: "object", k: int = 12, ax=None, color: str = "#444444"):
    """Horizontal bars of the ``k`` token strings with the highest mean per-token influence.
    ``table``: a ``token_table`` DataFrame (``token``, ``mean``, ``count``); label tokens with
    their word first (:func:`token_word_labels`) so that a fragment reads in context."""
    ax = _ax(ax)
    top = table.head(k).iloc[::-1]
    ax.barh(range(len(top)), top["mean"], color=color)
    ax.set_yticks(range(len(top)), [str(t) for t in top["token"]], fontsize=8)
    ax.set_xlabel("mean per-token influence")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def render_generations_html(rows: Sequence[Mapping[str, Any]]) -> str:
    """Model generations with their prompt and a correct / wrong badge (self-contained HTML).
    ``rows``: dicts with ``id``, ``domain``, ``difficulty``, ``prompt``, ``generation``, ``correct``."""
    out = []
    for r in rows:
        badge = ('<span style="background:#d9f2d9;padding:0 4px">correct</span>' if r["correct"]
                 else '<span style="background:#f8d7da;padding:0 4px">wrong</span>')
        out.append(
            f'<div style="font-family:monospace;font-size:12px;border:1px solid #ddd;padding:6px;margin:6px 0">'
            f"<div><b>{_html.escape(r['id'])}</b> ({_html.escape(r['domain'])}, level {r['difficulty']}) {badge}</div>"
            f'<div style="color:#555;white-space:pre-wrap;margin:4px 0">{_html.escape(r["prompt"])}</div>'
            f'<div style="white-space:pre-wrap">{_html.escape(r["generation"])}</div></div>'
        )
    return "".join(out)


ARM_COLORS = {"baseline": "#444444", "flipped": "#2ca02c", "control": "#9467bd", "influence": "#ff7f0e",
              "no-exploration": "#8c564b"}


def plot_arm_accuracy(table: "object", domain: str, ax=None):
    """Test accuracy by level for each arm in ``domain`` (mean over seeds; the band spans the
    seeds' minimum and maximum). ``table``: an ``arms.accuracy_by_level`` DataFrame."""
    ax = _ax(ax)
    sub = table[table["domain"] == domain]
    for arm, g in sub.groupby("arm", sort=False):
        g = g.sort_values("level")
        c = ARM_COLORS.get(arm, "#999999")
        ax.plot(g["level"], g["accuracy"], marker="o", color=c, label=arm, lw=1.5)
        ax.fill_between(g["level"], g["seed_min"], g["seed_max"], color=c, alpha=0.12, lw=0)
    ax.set_xticks(sorted(sub["level"].unique()))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"{domain} test level")
    ax.set_ylabel("accuracy (fraction)")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_paired_differences(table: "object", ax=None, xlabel: str = "difference vs baseline"):
    """Point estimates with 95% intervals of paired differences, one row per (comparison, domain).
    ``table``: DataFrame with ``comparison``, ``domain``, ``value``, ``lo``, ``hi``."""
    ax = _ax(ax)
    labels = [f"{r.comparison} ({r.domain})" for r in table.itertuples()]
    ys = range(len(table))[::-1]
    for y, r in zip(ys, table.itertuples()):
        c = DOMAIN_COLORS.get(r.domain, "k")
        ax.errorbar(r.value, y, xerr=[[r.value - r.lo], [r.hi - r.value]], fmt="o", color=c, capsize=3)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_segment_kinds(table: "object", ax=None):
    """Mean per-token influence of each segment kind per query domain, with 95% intervals over
    training examples. ``table``: DataFrame with ``query_domain``, ``kind``, ``mean``, ``lo``, ``hi``."""
    edges = {"step": "#6b8fc7", "exploratory": "#e0a030", "answer": "#5fa05f"}
    return _grouped_bars(table, "kind", SEGMENT_COLORS, _ax(ax), edges)


def plot_exact_agreement(table: "object", ax=None, value: str = "spearman"):
    """Agreement with the exact inverse against damping, one line per method.

    ``table``: a DataFrame with ``method``, ``damping_scale`` and ``value`` (e.g. the mean per-query
    Spearman) for one curvature."""
    ax = _ax(ax)
    for method, sub in table.groupby("method", sort=False):
        sub = sub.sort_values("damping_scale")
        ax.plot(sub["damping_scale"], sub[value], marker="o", color=METHOD_COLORS.get(method, "#444444"),
                label=method, linestyle="--" if method == "kronfluence" else "-")
    ax.set_xscale("log")
    ax.set_xlabel("damping (x mean eigenvalue of the exact matrix)")
    ax.set_ylabel(value.replace("_", " ") + " with exact")
    ax.legend(frameon=False, fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_lds(estimates: Mapping[str, Any], ax=None):
    """LDS per method as points with 95% interval bars. ``estimates``: method -> ``analysis.Estimate``."""
    ax = _ax(ax)
    names = list(estimates)
    for k, m in enumerate(names):
        e = estimates[m]
        ax.errorbar([k], [e.value], yerr=[[e.value - e.lo], [e.hi - e.value]], fmt="o", capsize=4,
                    color=METHOD_COLORS.get(m, "#444444"))
    ax.axhline(0, color="#999999", lw=0.8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names)
    ax.set_ylabel("LDS (mean Spearman over queries)")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_parity_scatter(ours: Sequence[float], theirs: Sequence[float], ax=None):
    """Example scores of infra_lib (y) against kronfluence (x) on matched settings, with the diagonal."""
    ax = _ax(ax)
    ax.scatter(theirs, ours, s=6, alpha=0.5, color=METHOD_COLORS["ekfac"], edgecolors="none")
    lo, hi = min(min(ours), min(theirs)), max(max(ours), max(theirs))
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8)
    ax.set_xlabel("kronfluence score")
    ax.set_ylabel("infra_lib score")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_timing_bars(seconds: Mapping[str, float], ax=None):
    """Wall seconds per entry (e.g. ``infra_lib``, ``kronfluence``, ``floor``) as bars labelled with
    their multiple of the floor (the entry named ``floor``)."""
    ax = _ax(ax)
    names = list(seconds)
    vals = [float(seconds[n]) for n in names]
    colors = [METHOD_COLORS.get({"infra_lib": "ekfac"}.get(n, n), "#bbbbbb") for n in names]
    bars = ax.bar(names, vals, color=colors)
    floor = seconds.get("floor")
    if floor:
        for b, v in zip(bars, vals):
            ax.annotate(f"{v / floor:.1f}x floor", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.spines[["top", "right"]].set_visible(False)
    return ax


MODEL_MARKERS = {"raw": "o", "per_token": "s"}


def plot_trend_models(table: "object", train: str, query: str, ax=None):
    """Spearman(level, influence) of ``train`` examples on the ``query`` target for each model of
    the study, raw (circles) and per-token (squares), with 95% intervals. ``table``: the frame of
    ``attribution.other_model_trends`` (``model, train, query, variant, value, lo, hi``)."""
    ax = _ax(ax)
    t = table[(table["train"] == train) & (table["query"] == query)]
    models = list(dict.fromkeys(t["model"]))
    for k, var in enumerate(("raw", "per_token")):
        sub = t[t["variant"] == var].set_index("model").reindex(models)
        xs = [i + (k - 0.5) * 0.25 for i in range(len(models))]
        ax.errorbar(xs, sub["value"], yerr=[sub["value"] - sub["lo"], sub["hi"] - sub["value"]], fmt=MODEL_MARKERS[var],
                    color=DOMAIN_COLORS.get(query, "k"), mfc="white" if var == "per_token" else None, capsize=3,
                    label=var.replace("_", " "))
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("spearman(level, influence)")
    ax.set_title(f"{train} train -> {query} queries", fontsize=9)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def plot_per_seed(per_seed: Mapping[str, Mapping[int, float]], ax=None, xlabel: str = "difference vs baseline"):
    """Per-seed paired differences (dots) and their mean (bar), one row per comparison.
    ``per_seed``: ``{label: {seed: difference}}``; a label ending in ``(math)``/``(code)`` takes
    that domain's colour."""
    ax = _ax(ax)
    labels = list(per_seed)
    ys = range(len(labels))[::-1]
    for y, lab in zip(ys, labels):
        vals = list(per_seed[lab].values())
        dom = "math" if lab.endswith("(math)") else "code" if lab.endswith("(code)") else None
        c = DOMAIN_COLORS.get(dom, "#444444")
        ax.scatter(vals, [y] * len(vals), color=c, s=18, alpha=0.8, zorder=3)
        ax.plot([np.mean(vals)] * 2, [y - 0.3, y + 0.3], color=c, lw=2)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return ax
