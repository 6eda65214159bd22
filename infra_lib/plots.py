"""Every figure of the book. Functions take ``ax=None`` and return the Axes (or an HTML string).

One colour per domain and per method across the whole book; lowercase axis labels with units.
"""
from __future__ import annotations

import html as _html
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt

__all__ = ["DOMAIN_COLORS", "SEGMENT_COLORS", "METHOD_COLORS", "plot_corpus_stats", "render_segments_html"]

DOMAIN_COLORS = {"math": "#1f77b4", "code": "#d62728"}
METHOD_COLORS = {"identity": "#7f7f7f", "diagonal": "#bcbd22", "kfac": "#9467bd", "ekfac": "#2ca02c", "kronfluence": "#ff7f0e", "exact": "#000000"}
SEGMENT_COLORS = {"step": "#e8f0fb", "exploratory": "#fde2b5", "answer": "#d9f2d9"}


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
    ax.legend(frameon=False)
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
