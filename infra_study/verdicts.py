"""Verdict rows as a reader sees them: styled HTML tables for each chapter and the status headline
of the summary and the intro.

A findings row is what ``analysis.write_findings`` stores (``claim, metric, ours, interval, paper,
verdict``, optionally ``reason``, ``primary``, ``ours_raw``/``ours_per_token`` with their intervals,
``per_seed``). Everything here returns self-contained HTML (inline ``<style>``, no scripts, no
network), so it reads the same in the book, from ``file://`` and in JupyterLab. Tables wrap their
text and turn into one card per row on a narrow screen.

Settings: the headline takes findings from several settings side by side (a profile's
``runs/<profile>/findings/NN.json``, or a committed record file, see :func:`read_record`).
"""
from __future__ import annotations

import html as _html
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["VERDICT_COLOURS", "CHAPTERS", "PAPER_NUMBERS", "VALIDATION_CHAPTERS", "format_number",
           "format_ours", "verdict_badge", "render_findings_html", "collect_settings", "read_record",
           "headline_claims", "render_headline_html", "render_facts_html", "render_provenance_html"]

# background, text: white text on each background has a contrast ratio of at least 4.5
VERDICT_COLOURS = {
    "holds": ("#1a7f37", "#ffffff"),
    "does not hold": ("#b42318", "#ffffff"),
    "inconclusive": ("#5c6670", "#ffffff"),
    "mixed": ("#8a5a00", "#ffffff"),
    "depends on normalisation": ("#6639ba", "#ffffff"),
}

# chapter number -> (page name, short title) of the finding chapters
CHAPTERS = {
    "00": ("00_setting", "The setting"),
    "01": ("01_cross_domain", "Cross-domain effects"),
    "02": ("02_difficulty_flip", "Difficulty flipping"),
    "03": ("03_exploratory_segments", "Exploratory segments"),
    "04": ("04_token_patterns", "Token patterns"),
    "05": ("05_validation", "How far to trust the scores"),
}
# chapters whose rows check the method rather than a claim of the paper
VALIDATION_CHAPTERS = frozenset({"05"})

# the paper's own numbers where it reports one (Kou et al. 2025, the difficulty-flipping experiment)
PAPER_NUMBERS = {
    "flipping difficulty improves math reasoning": "AIME24 10.0% → 20.0%",
    "flipping difficulty improves code reasoning": "LiveCodeBench 33.8% → 35.3%",
}

_CSS = """
<style>
.infra-verdicts{max-width:100%;overflow-x:auto;margin:0.5em 0 1em 0}
.infra-verdicts table{border-collapse:collapse;width:100%;font-size:0.85em;line-height:1.35;table-layout:auto}
.infra-verdicts th,.infra-verdicts td{border-bottom:1px solid #d0d7de;padding:0.35em 0.5em;text-align:left;
  vertical-align:top;overflow-wrap:break-word;word-break:normal}
.infra-verdicts th{background:#f6f8fa;font-weight:600}
.infra-facts table{width:auto}
.infra-verdicts td.num{font-variant-numeric:tabular-nums;min-width:7em}
.infra-verdicts td.num .part{white-space:nowrap}
.infra-verdicts td:first-child{min-width:12em}
.infra-verdicts td .infra-badge{white-space:normal}
.infra-verdicts .secondary td{color:#57606a}
.infra-verdicts .metric{display:block;color:#57606a;font-size:0.9em}
.infra-verdicts .why{display:block;color:#57606a;font-size:0.9em;margin-top:0.2em}
.infra-badge{display:inline-block;border-radius:0.8em;padding:0.05em 0.6em;font-size:0.9em;font-weight:600;
  white-space:nowrap;margin:0.1em 0.2em 0.1em 0}
.infra-tag{display:inline-block;border:1px solid #8c959f;border-radius:0.3em;padding:0 0.3em;font-size:0.8em;
  color:#57606a;white-space:nowrap}
.infra-tag.primary{border-color:#24292f;color:#24292f;font-weight:600}
@media (max-width:640px){
  .infra-verdicts thead{display:none}
  .infra-verdicts table,.infra-verdicts tbody,.infra-verdicts tr,.infra-verdicts td{display:block;width:auto}
  .infra-verdicts tr{border-bottom:2px solid #d0d7de;padding:0.3em 0}
  .infra-verdicts td{border:none;padding:0.15em 0.3em}
  .infra-verdicts td.num .part{white-space:normal}
  .infra-verdicts td[data-label]::before{content:attr(data-label) ": ";font-weight:600;color:#24292f}
}
</style>
"""


def _e(x: Any) -> str:
    return _html.escape(str(x), quote=True)


def format_number(x: Any, digits: int = 3) -> str:
    """A number rounded to ``digits`` significant digits with its sign (``+0.23``, ``-310``); other
    values as text; ``None`` as ``n/a``."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    s = f"{x:+.{digits}g}"
    if "e" in s:  # keep a plain decimal when it is short enough
        mant, exp = s.split("e")
        if -4 <= int(exp) < 6:
            s = f"{x:+.{max(digits - 1 - int(exp), 0)}f}"
    return s.replace("-", "−")


def _interval(iv: Sequence[float] | None) -> str:
    return "n/a" if iv is None else f"[{format_number(iv[0])}, {format_number(iv[1])}]"


def format_ours(row: Mapping[str, Any]) -> tuple[str, str]:
    """Our value and 95% interval of a row as text: raw and per-token for trend rows, the per-seed
    values after a retraining row's mean."""
    if "ours_raw" in row:
        ours = f"raw {format_number(row['ours_raw'])}; per token {format_number(row['ours_per_token'])}"
        iv = f"raw {_interval(row.get('interval_raw'))}; per token {_interval(row.get('interval_per_token'))}"
    else:
        ours, iv = format_number(row.get("ours")), _interval(row.get("interval"))
    if row.get("per_seed"):
        ours += " (seeds " + ", ".join(format_number(v) for v in row["per_seed"]) + ")"
    return ours, iv


def verdict_badge(verdict: str, label: str | None = None, title: str | None = None) -> str:
    """A coloured pill for a verdict (``label`` replaces the text, ``title`` becomes its tooltip)."""
    bg, fg = VERDICT_COLOURS.get(verdict, ("#24292f", "#ffffff"))
    tip = f' title="{_e(title)}"' if title else ""
    return f'<span class="infra-badge" style="background:{bg};color:{fg}"{tip}>{_e(label or verdict)}</span>'


def _tag(primary: bool) -> str:
    return '<span class="infra-tag primary">primary</span>' if primary else '<span class="infra-tag">secondary</span>'


def _num_parts(text: str) -> str:
    """A number cell that may wrap between its parts ("raw ...; per token ...") but never inside one;
    a per-seed list ("(seeds a, b, ...)") wraps between its values."""
    text, _, seeds = str(text).partition(" (seeds ")
    parts = []
    for part in text.split("; "):
        label, sep, interval = part.partition(" [")  # "raw [a, b]": the interval may go under its label
        parts.append(f'<span class="part">{_e(label)}</span> <span class="part">[{_e(interval)}</span>' if sep
                     else f'<span class="part">{_e(part)}</span>')
    return "; ".join(parts) + (f" (seeds {_e(seeds)}" if seeds else "")


def render_findings_html(rows: Sequence[Mapping[str, Any]], *, caption: str | None = None) -> str:
    """One chapter's verdict rows as a styled table: the full claim with its metric under it, our
    value and 95% interval rounded to 3 significant digits, the paper's expectation, a coloured
    verdict with the reason under it, and primary or secondary. No index column."""
    head = ("<thead><tr><th>claim (metric)</th><th>ours</th><th>95% interval</th><th>paper</th>"
            "<th>verdict</th><th></th></tr></thead>")
    body = []
    for r in rows:
        primary = bool(r.get("primary", True))
        ours, iv = format_ours(r)
        why = f'<span class="why">{_e(r["reason"])}</span>' if r.get("reason") else ""
        body.append(
            f'<tr class="{"primary" if primary else "secondary"}">'
            f'<td data-label="claim">{_e(r["claim"])}<span class="metric">{_e(r.get("metric", ""))}</span></td>'
            f'<td class="num" data-label="ours">{_num_parts(ours)}</td>'
            f'<td class="num" data-label="95% interval">{_num_parts(iv)}</td>'
            f'<td data-label="paper">{_e(r.get("paper", ""))}</td>'
            f'<td data-label="verdict">{verdict_badge(r["verdict"])}{why}</td>'
            f"<td>{_tag(primary)}</td></tr>")
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f'{_CSS}<div class="infra-verdicts"><table>{cap}{head}<tbody>{"".join(body)}</tbody></table></div>'


def _plain(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else str(x)
    if isinstance(x, (list, tuple)):
        return ", ".join(_plain(v) for v in x)
    if isinstance(x, Mapping):
        return "; ".join(f"{k} {_plain(v)}" for k, v in x.items())
    return str(x)


def render_facts_html(facts: Mapping[str, Any] | Any, *, caption: str | None = None) -> str:
    """A small two-column table (name, value) for a mapping or a dataclass instead of its repr:
    floats to 4 significant digits, sequences joined, nested mappings on one line."""
    import dataclasses

    if dataclasses.is_dataclass(facts) and not isinstance(facts, type):
        facts = {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts)}
    body = "".join(f'<tr><th scope="row">{_e(str(k).replace("_", " "))}</th><td>{_e(_plain(v))}</td></tr>'
                   for k, v in facts.items())
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    return f'{_CSS}<div class="infra-verdicts infra-facts"><table>{cap}<tbody>{body}</tbody></table></div>'


def render_provenance_html(prov: Mapping[str, Any]) -> str:
    """One small line of provenance (profile, seed, wall time, hardware, torch) for a chapter's end."""
    parts = [f"profile {prov.get('profile')}", f"seed {prov.get('seed')}", f"wall {prov.get('wall_s')} s",
             str(prov.get("hardware", "")), f"torch {prov.get('torch', '')}"]
    return f'<p class="infra-provenance" style="font-size:0.8em;color:#57606a">{_e(" · ".join(parts))}</p>'


# --- settings and the headline ------------------------------------------------------------------

def read_record(path: str | Path) -> tuple[str, dict[str, dict]]:
    """A committed record of a setting's findings: a JSON file
    ``{"setting": "<name>", "findings": {"01": {"rows": [...], ...provenance}, ...}}``.
    Returns ``(setting, findings by chapter number)``."""
    data = json.loads(Path(path).read_text())
    if "setting" not in data or not isinstance(data.get("findings"), dict):
        raise ValueError(f"{path}: a record needs 'setting' and 'findings' (chapter -> {{'rows': [...]}})")
    for number, f in data["findings"].items():
        if not isinstance(f, dict) or not isinstance(f.get("rows"), list):
            raise ValueError(f"{path}: findings[{number!r}] needs a list 'rows'")
    return str(data["setting"]), data["findings"]


def collect_settings(settings: Sequence[str], records: Sequence[str | Path] = ()) -> dict[str, dict[str, dict]]:
    """Findings of every setting that has any, in order: the profiles in ``settings`` (absent ones
    skipped), then each record file. Returns ``{setting: {chapter number: findings}}``."""
    from infra_study import analysis

    out: dict[str, dict[str, dict]] = {}
    for name in settings:
        if name in out:
            continue
        found = analysis.read_findings(name)
        if found:
            out[name] = found
    live = list(out.values())
    for path in records:
        name, found = read_record(path)
        if found and not any(_same_findings(found, f) for f in live):  # a record the live run reproduces shows once
            out[name] = found
    return out


def _same_findings(record: Mapping[str, Mapping], live: Mapping[str, Mapping]) -> bool:
    """Whether every chapter of ``record`` has the same rows (claim, metric, value, interval,
    verdict) in ``live``."""
    def key(rows):
        return json.dumps([[r.get(k) for k in ("claim", "metric", "ours", "interval", "ours_raw", "ours_per_token",
                                                "interval_raw", "interval_per_token", "verdict")] for r in rows],
                          sort_keys=True, default=str)
    return all(ch in live and key(f.get("rows", [])) == key(live[ch].get("rows", [])) for ch, f in record.items())


def headline_claims(by_setting: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                    validation: bool = False) -> list[dict]:
    """One entry per claim, in chapter order: ``{chapter, claim, primary, paper, settings: {setting:
    [rows]}}``. A claim is primary when any of its rows is; the rows under a setting are that
    setting's primary rows of the claim (all its rows when it has no primary one). Rows about
    another model of the study than the setting's own (a ``model`` key, e.g. the trend repeated on
    the flipped model) stay in their chapter's table and out of the headline. ``validation``
    picks the rows of the validation chapters instead of the paper's claims."""
    claims: dict[tuple[str, str], dict] = {}
    for setting, findings in by_setting.items():
        for number in sorted(findings):
            if (number in VALIDATION_CHAPTERS) != validation:
                continue
            for r in findings[number].get("rows", []):
                if "model" in r:
                    continue
                key = (number, r["claim"])
                c = claims.setdefault(key, {"chapter": number, "claim": r["claim"], "primary": False,
                                            "paper": r.get("paper", ""), "settings": {}})
                c["settings"].setdefault(setting, []).append(r)
                c["primary"] |= bool(r.get("primary", True))
    for c in claims.values():
        for setting, rows in c["settings"].items():
            prim = [r for r in rows if r.get("primary", True)]
            c["settings"][setting] = prim or rows
        first = next(iter(c["settings"].values()))[0]
        c["paper"] = PAPER_NUMBERS.get(c["claim"], first.get("paper", ""))
    return sorted(claims.values(), key=lambda c: (c["chapter"], not c["primary"]))


def _setting_verdict(rows: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """(verdict, our value) of a claim in one setting: the rows' common verdict, or ``mixed``."""
    verdicts = {r["verdict"] for r in rows}
    verdict = verdicts.pop() if len(verdicts) == 1 else "mixed"
    values = "; ".join(format_ours(r)[0] for r in rows)
    return verdict, values


def _chapter_link(number: str, link_prefix: str) -> str:
    page, title = CHAPTERS.get(number, (None, f"chapter {number}"))
    if page is None:
        return _e(title)
    return f'<a href="{_e(link_prefix + page + ".html")}">{_e(number)} {_e(title)}</a>'


def render_headline_html(by_setting: Mapping[str, Mapping[str, Mapping[str, Any]]], *,
                         link_prefix: str = "", validation: bool = False) -> str:
    """The status headline: one row per claim with a coloured verdict badge per setting that has
    findings (our value in the badge's tooltip and under it), the paper's number or qualitative
    claim, primary or secondary, and a link to the chapter (``link_prefix`` + page + ``.html``).
    ``validation=True`` renders the validation chapters' rows instead, as their own table."""
    claims = headline_claims(by_setting, validation=validation)
    settings = list(by_setting)
    if not claims:
        return f'{_CSS}<div class="infra-verdicts"><p>No findings yet: run <code>make book</code>.</p></div>'
    head = ("<thead><tr><th>claim</th><th>paper</th>"
            + "".join(f"<th>{_e(s)}</th>" for s in settings) + "<th>chapter</th></tr></thead>")
    body = []
    for c in claims:
        cells = []
        for s in settings:
            rows = c["settings"].get(s)
            if not rows:
                cells.append(f'<td data-label="{_e(s)}">–</td>')
                continue
            verdict, values = _setting_verdict(rows)
            reasons = "; ".join(r["reason"] for r in rows if r.get("reason"))
            cells.append(f'<td data-label="{_e(s)}">{verdict_badge(verdict, title=reasons or None)}'
                         f'<span class="why">ours: {_e(values)}</span></td>')
        body.append(f'<tr class="{"primary" if c["primary"] else "secondary"}">'
                    f'<td data-label="claim">{_e(c["claim"])} {_tag(c["primary"])}</td>'
                    f'<td data-label="paper">{_e(c["paper"])}</td>{"".join(cells)}'
                    f'<td data-label="chapter">{_chapter_link(c["chapter"], link_prefix)}</td></tr>')
    return f'{_CSS}<div class="infra-verdicts"><table>{head}<tbody>{"".join(body)}</tbody></table></div>'
