"""The verdict tables and the status headline (infra_study/verdicts.py) on hand-written findings rows:
numbers rounded, full claims, no index column, one coloured badge per verdict and setting, the
paper's own number where it gives one, validation rows apart, absent settings skipped, text escaped.
Run: `.venv/bin/python -m pytest tests/study/test_verdicts.py`.
"""
from __future__ import annotations

import json
import re

import pytest

from infra_study import analysis, verdicts as V

LONG = "harder math examples help math reasoning more, a claim long enough that a narrow column would cut it"
TREND = {"claim": LONG, "metric": "Spearman(level, influence)", "ours": 0.22971145943688334,
         "interval": [-0.08946648135218177, 0.5200029032832165], "ours_raw": 0.22971145943688334,
         "interval_raw": [-0.08946648135218177, 0.5200029032832165], "ours_per_token": -0.8974061015334241,
         "interval_per_token": [-0.9448891389843822, -0.7980544930855007], "paper": "positive",
         "verdict": "depends on normalisation", "reason": "raw: inconclusive; per token: does not hold", "primary": True}
FLIP = {"claim": "flipping difficulty improves math reasoning", "metric": "pass@1 difference", "ours": -312.456,
        "interval": [-450.2, -160.0], "paper": "positive (AIME24 +0.10)", "per_seed": [0.0123456, -0.5],
        "verdict": "does not hold", "primary": True}
SECOND = {"claim": "<b>x</b> & y", "metric": "m", "ours": 1.0, "interval": None, "paper": "positive",
          "verdict": "holds", "primary": False}
VALID = {"claim": "EK-FAC agrees with the exact inverse", "metric": "Spearman", "ours": 0.97, "interval": [0.95, 0.98],
         "paper": "-", "verdict": "holds", "primary": True}


def test_format_number_rounds_to_three_significant_digits():
    assert V.format_number(0.22971145943688334) == "+0.23"
    assert V.format_number(-312.456) == "−312"
    assert V.format_number(0.000123456) == "+0.000123"
    assert V.format_number(0) == "0"
    assert V.format_number(None) == "n/a"
    assert V.format_number("math +0.000") == "math +0.000"


def test_chapter_table_full_claim_rounded_no_index_coloured():
    out = V.render_findings_html([TREND, FLIP, SECOND])
    assert LONG in out and "..." not in out
    assert "0.229711" not in out and "+0.23" in out and "−0.897" in out and "[−0.0895, +0.52]" in out
    assert "(seeds +0.0123, −0.5)" in out
    for verdict in ("depends on normalisation", "does not hold", "holds"):
        assert f'color:#ffffff">{verdict}</span>' in out
        assert V.VERDICT_COLOURS[verdict][0] in out
    assert TREND["reason"].replace(":", ":") in out
    assert out.count("<tr") == 4  # header + 3 rows, no index column
    assert "<th></th><th>claim" not in out
    assert "secondary" in out and "primary" in out
    assert "<b>x</b>" not in out and "&lt;b&gt;x&lt;/b&gt; &amp; y" in out
    assert "@media (max-width:640px)" in out  # one card per row on a narrow screen


def test_chapter_table_on_real_row_shapes_from_analysis():
    row = analysis.trend_row("c", "m", analysis.Estimate(0.5, 0.1, 0.9, 10, 0.95),
                             analysis.Estimate(0.4, 0.2, 0.8, 10, 0.95), 1, paper="positive")
    assert "holds" in V.render_findings_html([row])


def _findings(*rows, number="01"):
    return {number: {"rows": list(rows), "profile": "x"}}


def test_headline_one_line_per_claim_badge_per_setting_and_paper_numbers():
    by_setting = {"tiny": {**_findings(TREND, dict(TREND, primary=False, verdict="holds")), **_findings(FLIP, number="02")},
                  "pretrained": _findings(dict(TREND, verdict="holds", reason=None))}
    claims = V.headline_claims(by_setting)
    assert [c["claim"] for c in claims] == [LONG, FLIP["claim"]]
    # the secondary robustness row of the same claim does not decide the verdict
    assert [r["verdict"] for r in claims[0]["settings"]["tiny"]] == ["depends on normalisation"]
    assert claims[1]["paper"] == "AIME24 10.0% → 20.0%"
    out = V.render_headline_html(by_setting, link_prefix="_generated/")
    assert out.count("<tr") == 3
    assert re.search(r"<th>tiny</th><th>pretrained</th>", out)
    assert 'href="_generated/01_cross_domain.html"' in out and 'href="_generated/02_difficulty_flip.html"' in out
    assert out.count('class="infra-badge"') == 3  # two settings for the trend, one for the flip
    assert "–</td>" in out  # the flip has no pretrained findings
    assert "AIME24 10.0% → 20.0%" in out


def test_headline_keeps_validation_apart_and_marks_disagreeing_rows_mixed():
    by_setting = {"tiny": {**_findings(TREND, dict(TREND, verdict="holds")), **_findings(VALID, number="05")}}
    claims = V.headline_claims(by_setting)
    assert [c["chapter"] for c in claims] == ["01"]
    assert V._setting_verdict(claims[0]["settings"]["tiny"])[0] == "mixed"
    val = V.render_headline_html(by_setting, validation=True)
    assert VALID["claim"] in val and LONG not in val


def test_headline_leaves_out_rows_of_other_models():
    # a secondary claim (no primary row) judged on the canonical model and on another model: only
    # the canonical model's row speaks for the setting, so disagreement there is not "mixed"
    own = dict(TREND, primary=False, verdict="inconclusive")
    other = dict(TREND, primary=False, verdict="does not hold", model="flipped@0")
    claims = V.headline_claims({"tiny": _findings(own, other)})
    assert [r["verdict"] for r in claims[0]["settings"]["tiny"]] == ["inconclusive"]
    assert V._setting_verdict(claims[0]["settings"]["tiny"])[0] == "inconclusive"
    assert V.headline_claims({"tiny": _findings(other)}) == []


def test_headline_without_findings_says_so():
    assert "No findings yet" in V.render_headline_html({})


def test_collect_settings_skips_absent_profiles_and_reads_records(tmp_path, monkeypatch):
    monkeypatch.setenv("INFRA_RUNS", str(tmp_path / "runs"))
    analysis.write_findings("tiny", "01", [TREND], seed=0)
    rec = tmp_path / "round1.json"
    rec.write_text(json.dumps({"setting": "round 1 (tiny)", "findings": _findings(FLIP, number="02")}))
    got = V.collect_settings(["tiny", "pretrained"], [rec])
    assert list(got) == ["tiny", "round 1 (tiny)"]
    assert got["tiny"]["01"]["rows"][0]["claim"] == LONG
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"findings": {}}))
    with pytest.raises(ValueError, match="setting"):
        V.collect_settings([], [bad])


def test_facts_and_provenance_replace_reprs():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        n_boot: int = 2000
        damping: float = 0.123456789
        seeds: tuple = (0, 1)

    out = V.render_facts_html(Cfg())
    assert "Cfg(" not in out and "<th scope=\"row\">n boot</th><td>2000</td>" in out
    assert "0.1235" in out and "0, 1" in out
    assert "{" not in V.render_facts_html({"train": 80, "query": 40}).split("</style>")[1]
    line = V.render_provenance_html({"profile": "tiny", "seed": 0, "wall_s": 12.3, "hardware": "x86_64", "torch": "2"})
    assert "profile tiny · seed 0 · wall 12.3 s" in line


def test_collect_settings_shows_a_record_the_live_run_reproduces_once(tmp_path, monkeypatch):
    monkeypatch.setenv("INFRA_RUNS", str(tmp_path / "runs"))
    analysis.write_findings("tiny", "01", [TREND], seed=0)
    same, other = tmp_path / "same.json", tmp_path / "other.json"
    same.write_text(json.dumps({"setting": "tiny, recorded", "findings": _findings(TREND, number="01")}))
    moved = {**TREND, "verdict": "does not hold"}
    other.write_text(json.dumps({"setting": "tiny, round 1", "findings": _findings(moved, number="01")}))
    assert list(V.collect_settings(["tiny"], [same, other])) == ["tiny", "tiny, round 1"]
    assert list(V.collect_settings([], [same, other])) == ["tiny, recorded", "tiny, round 1"]
