"""The generated math + code chain-of-thought corpus (data/DATASHEET.md), its splits and grading.

Two domains, five difficulty levels each, four problem splits:

- ``base``: CoT responses without exploration (``base_style="cot"``, default) or answer-only
  (``"answer"``), all levels; the base stage stands in for the instruct model that already reasons;
- ``train`` (SFT), ``query`` (D_correct is drawn from here) and ``test`` (accuracy, gold
  log-likelihood): step-by-step CoTs with ground-truth ``meta.segments``; a controlled share
  (``exploratory_share``) goes on after the first answer to verify or to try another way.

Math CoTs reason in words with logic connectors and do arithmetic column by column (what let a
1M-parameter model learn two-digit sums at all, see data/DATASHEET.md); code CoTs plan
in words and then write ``f`` in a fenced block, graded by hidden asserts. The generator is our
own rather than reasoning-gym's: those generators write neither column-wise CoTs nor segment
ground truth (``data/DATASHEET.md``).

Splits are disjoint by problem: a problem's split is a function of the hash of its canonical
statement (the expression for math, the function spec for code), independent of the seed, so two
wordings of one problem never land in two splits. Everything is seeded: the same config gives
byte-identical files.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Sequence

from infra_lib.io import config_hash, read_json, write_config
from infra_lib.records import DOMAINS, LEVELS, load_records, validate_record, write_records
from infra_lib.segments import answer_in_line, last_boxed

from . import v1, v2

__all__ = [
    "SPLITS",
    "GENERATOR_VERSIONS",
    "generator_version",
    "CorpusConfig",
    "generate_corpus",
    "build_corpus",
    "load_corpus",
    "corpus_exists",
    "corpus_paths",
    "strip_exploratory",
    "normalise_problem",
    "split_of",
    "extract_math_answer",
    "extract_code",
    "grade_math",
    "corpus_stats",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("base", "train", "query", "test")
# Per corpus version: bump when that version's generated text or meta changes, so a cached corpus
# with the same config is rebuilt (and the tokenizer trained on it). Version 1: 3 (the package
# split; its bytes are unchanged since). Version 2: 5 (the levels of calibration pilot 6:
# re-ordered by measured accuracy, folds that only double or triple).
GENERATOR_VERSIONS: dict[int, str] = {1: "3", 2: "5"}
_COT_SPLITS = ("train", "query", "test")


@dataclass(frozen=True)
class CorpusConfig:
    """What the generated corpus contains; saved as ``config.json`` beside the split files."""

    seed: int = 0
    """Seed of every random choice (problems, wording, which CoTs explore); same seed, same bytes."""
    n_base: int = 600
    """Problems per (domain, level) in the base split (see ``base_style``)."""
    n_train: int = 400
    """Problems per (domain, level) in the SFT train split (CoT responses)."""
    n_query: int = 50
    """Problems per (domain, level) in the query split (D_correct comes from here)."""
    n_test: int = 50
    """Problems per (domain, level) in the test split (accuracy; never used to choose weights)."""
    domains: tuple[str, ...] = ("math", "code")
    """Domains to generate, a subset of ``("math", "code")``."""
    levels: tuple[int, ...] = (1, 2, 3, 4, 5)
    """Difficulty levels to generate, a subset of 1..5."""
    exploratory_share: float = 0.3
    """Share of train/query/test CoTs, per (domain, level, split), that explore after the first
    answer (rounded to whole records, so the share is exact up to 1/n)."""
    alternative_share: float = 0.5
    """Of the exploratory CoTs, the share that try another way ("Alternatively, ..."); the rest
    verify ("Wait, let me check ...")."""
    split_shares: tuple[float, float, float, float] = (0.5, 0.34, 0.08, 0.08)
    """Shares of hash space owned by base, train, query, test. A problem's split is a function of
    its hash and these shares; each split's count must fit its region of a level's problem space
    (math level 1 has 1701 problems, so at most ~850 base and ~570 train problems there)."""
    base_style: str = "cot"
    """Responses of the base split: ``"cot"`` (the step-by-step CoT without exploration; version 2
    takes the first wording of every slot), ``"varied"`` (version 2 only: the same CoT with its
    wordings drawn from the pools, as in SFT) or ``"answer"`` (answer only). A 1M-parameter base trained on answer-only responses could not
    learn the CoT in a short SFT stage (0-6% accuracy, measured), so the base reasons step by step
    like an instruct model and SFT changes the mix and adds exploration."""
    n_tests: int = 5
    """Asserts per code problem (hidden tests; the first few are shown in the prompt)."""
    n_examples: tuple[int, int, int, int, int] = (2, 2, 3, 3, 3)
    """Asserts shown as examples in the code prompt, per level 1..5 (each < ``n_tests``)."""
    version: int = 1
    """Generator version: 1 (round 1, byte-identical to its recorded corpus) or 2 (round 2: slips
    that a check corrects, alternatives that compute, paraphrase pools, code difficulty from
    reasoning steps; data/DATASHEET.md). The ``tiny`` and ``smoke`` profiles use 2."""
    slip_share: float = 0.5
    """Version 2 only: of the exploring CoTs per (domain, level, split), the share whose first
    answer carries one slip (a dropped carry or borrow; a constant not carried through a step)
    that the check finds and corrects. ``alternative_share`` then splits the rest between
    alternatives and checks that confirm."""

    def __post_init__(self) -> None:
        # Lists arrive from JSON; store tuples so the config stays hashable and compares equal.
        for name in ("domains", "levels", "split_shares", "n_examples"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for split in SPLITS:
            n = self.count(split)
            if not _is_int(n) or n < 1:
                raise ValueError(f"n_{split} must be an integer >= 1, got {n!r}")
        if not self.domains or len(set(self.domains)) != len(self.domains) or not set(self.domains) <= set(DOMAINS):
            raise ValueError(f"domains must be distinct values of {DOMAINS}, got {self.domains!r}")
        if not self.levels or len(set(self.levels)) != len(self.levels) or not all(_is_int(l) and l in LEVELS for l in self.levels):
            raise ValueError(f"levels must be distinct integers in 1..5, got {self.levels!r}")
        if self.version not in (1, 2) or not _is_int(self.version):
            raise ValueError(f"version must be 1 or 2, got {self.version!r}")
        if self.base_style == "varied" and self.version != 2:
            raise ValueError("base_style='varied' needs version=2 (version 1 has one wording per slot)")
        for name in ("exploratory_share", "alternative_share", "slip_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
        s = self.split_shares
        if len(s) != 4 or any(isinstance(x, bool) or not isinstance(x, (int, float)) or x <= 0 for x in s):
            raise ValueError(f"split_shares must be 4 positive numbers (base, train, query, test), got {s!r}")
        if abs(sum(s) - 1.0) > 1e-9:
            raise ValueError(f"split_shares must sum to 1, got {sum(s)}")
        if self.base_style not in ("cot", "varied", "answer"):
            raise ValueError(f"base_style must be 'cot', 'varied' or 'answer', got {self.base_style!r}")
        if not _is_int(self.n_tests) or not 2 <= self.n_tests <= 10:
            raise ValueError(f"n_tests must be an integer in 2..10, got {self.n_tests!r}")
        if len(self.n_examples) != 5 or not all(_is_int(k) and 1 <= k < self.n_tests for k in self.n_examples):
            raise ValueError(f"n_examples must be 5 integers in 1..n_tests-1 (one per level), got {self.n_examples!r}")

    def count(self, split: str) -> int:
        """Problems per (domain, level) in ``split``."""
        return getattr(self, f"n_{split}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------- splits


def normalise_problem(text: str) -> str:
    """A problem statement reduced to what identifies it: lower case, single spaces, no end dot."""
    return " ".join(text.lower().split()).rstrip(" .?")


def _problem_unit(text: str) -> float:
    digest = hashlib.sha256(("infra-split-v1:" + normalise_problem(text)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(problem: str, shares: Sequence[float] = CorpusConfig.split_shares) -> str:
    """The split (base, train, query or test) that owns a problem, from the hash of its statement.

    A function of the normalised statement and ``shares`` only (no seed), so a problem keeps its
    split across seeds and profiles. Also usable for a user's data: pass the prompt.
    """
    u = _problem_unit(problem)
    edge = 0.0
    for split, share in zip(SPLITS, shares):
        edge += share
        if u < edge:
            return split
    return SPLITS[-1]


# ----------------------------------------------------------------------------------- generation


def _sample_cell(cfg: CorpusConfig, domain: str, level: int) -> dict[str, list[dict]]:
    """Distinct problems of one (domain, level), each in the split its hash owns."""
    stream = "infra-corpus" if cfg.version == 1 else "infra-corpus-v2"
    rng = random.Random(f"{stream}:{cfg.seed}:{domain}:{level}")
    sample_math = v1._sample_math if cfg.version == 1 else v2.sample_math
    sample_code = v1._sample_code if cfg.version == 1 else v2.sample_code
    need = {s: cfg.count(s) for s in SPLITS}
    got: dict[str, list[dict]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    misses = 0
    while any(len(got[s]) < need[s] for s in SPLITS):
        p = sample_math(rng, level) if domain == "math" else sample_code(rng, level, cfg.n_tests)
        key = normalise_problem(p["problem"])
        split = None if key in seen else split_of(key, cfg.split_shares)
        seen.add(key)
        if split is None or len(got[split]) >= need[split]:
            misses += 1
            if misses > 20000:  # the level's problem space has no more problems for some split
                short = {s: f"{len(got[s])}/{need[s]}" for s in SPLITS if len(got[s]) < need[s]}
                raise ValueError(
                    f"{domain} level {level}: ran out of distinct problems for {short} after {len(seen)} "
                    f"distinct ones; lower those counts or give those splits more of split_shares"
                )
            continue
        misses = 0
        got[split].append(p)
    return got


def generate_corpus(cfg: CorpusConfig) -> dict[str, list[dict]]:
    """Generate every split in memory: ``{split: [record, ...]}`` in order base, train, query, test.

    Within a split, records run domain by domain, level by level; ids are
    ``<domain>-<level>-<split>-<index>``. Each (domain, level) draws from its own seeded stream,
    so changing one domain's settings leaves the other's records as they were. ``cfg.version``
    chooses the generator (``v1.py``: round 1, frozen; ``v2.py``: round 2).
    """
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for domain in cfg.domains:
        for level in cfg.levels:
            cell = _sample_cell(cfg, domain, level)
            for split in SPLITS:
                probs = cell[split]
                if cfg.version == 1:
                    out[split] += _records_v1(cfg, domain, level, split, probs)
                else:
                    out[split] += _records_v2(cfg, domain, level, split, probs)
    return out


def _record(domain: str, level: int, split: str, i: int, p: dict, body: dict, explore: str | None) -> dict:
    meta = body.pop("meta")
    meta.update(split=split, problem=p["problem"], exploratory=explore is not None, exploration=explore)
    rec = {"id": f"{domain}-{level}-{split}-{i:05d}", "domain": domain, "difficulty": level}
    rec.update(body)
    rec["meta"] = meta
    return rec


def _records_v1(cfg: CorpusConfig, domain: str, level: int, split: str, probs: list[dict]) -> list[dict]:
    kinds: list[str | None] = [None] * len(probs)
    if split in _COT_SPLITS:
        erng = random.Random(f"infra-explore:{cfg.seed}:{domain}:{level}:{split}")
        chosen = sorted(erng.sample(range(len(probs)), round(cfg.exploratory_share * len(probs))))
        for i in chosen:
            kinds[i] = "alternative" if erng.random() < cfg.alternative_share else "verify"
    answer_only = split == "base" and cfg.base_style == "answer"
    out = []
    for i, (p, explore) in enumerate(zip(probs, kinds)):
        trng = random.Random(f"infra-text:{cfg.seed}:{split}:{p['problem']}")
        if domain == "math":
            body = v1._render_math(p, answer_only, explore, trng)
        else:
            body = v1._render_code(p, answer_only, explore, cfg.n_examples[level - 1])
        out.append(_record(domain, level, split, i, p, body, explore))
    return out


def _kinds_v2(cfg: CorpusConfig, domain: str, level: int, split: str, probs: list[dict],
              erng: random.Random) -> list[str | None]:
    """Which CoTs explore and how: exactly ``round(exploratory_share * n)`` explore; of those,
    ``round(slip_share * n_explore)`` slip, drawn among the problems that admit a slip (math: a
    carry or borrow in the checked operation; every code problem does); the rest try another
    way with probability ``alternative_share``, else verify."""
    n = len(probs)
    kinds: list[str | None] = [None] * n
    if split not in _COT_SPLITS:
        return kinds
    n_exp = round(cfg.exploratory_share * n)
    n_slip = round(cfg.slip_share * n_exp)
    able = [i for i, p in enumerate(probs) if (v2.can_slip(p) if domain == "math" else v2.slip_steps(p))]
    slips = erng.sample(able, min(n_slip, len(able)))
    rest = erng.sample([i for i in range(n) if i not in set(slips)], n_exp - len(slips))
    for i in slips:
        kinds[i] = "slip"
    for i in sorted(rest):
        kinds[i] = "alternative" if erng.random() < cfg.alternative_share else "verify"
    return kinds


def _records_v2(cfg: CorpusConfig, domain: str, level: int, split: str, probs: list[dict]) -> list[dict]:
    erng = random.Random(f"infra-explore-v2:{cfg.seed}:{domain}:{level}:{split}")
    kinds = _kinds_v2(cfg, domain, level, split, probs, erng)
    plain = split == "base" and cfg.base_style != "varied"
    out = []
    for i, (p, explore) in enumerate(zip(probs, kinds)):
        trng = random.Random(f"infra-text-v2:{cfg.seed}:{split}:{p['problem']}")
        state = trng.getstate()
        if domain == "math":
            slip_at = erng.choice(v2.slip_columns(*v2._checked_op(p))) if explore == "slip" else None
            body = v2.render_math(p, explore, trng, plain=plain, slip_at=slip_at)
        else:
            slip_step = erng.choice(v2.slip_steps(p)) if explore == "slip" else None
            body = v2.render_code(p, explore, cfg.n_examples[level - 1], trng, plain=plain, slip_step=slip_step)
        if explore == "slip":  # the ablation's CoT: the same problem without the detour
            trng.setstate(state)
            clean = (v2.render_math(p, None, trng) if domain == "math"
                     else v2.render_code(p, None, cfg.n_examples[level - 1], trng))
            body["meta"]["clean"] = {k: clean["meta"][k] if k != "response" else clean["response"]
                                     for k in ("response", "segments", "segment_roles")}
        if split == "base" and cfg.base_style == "answer":
            last = body["meta"]["segments"][-1]
            text = body["response"][last[0]:last[1]]
            body["response"] = text
            body["meta"]["segments"] = [[0, len(text), "answer"]]
            body["meta"]["segment_roles"] = ["answer"]
        body["meta"]["corpus_version"] = 2
        out.append(_record(domain, level, split, i, p, body, explore))
    return out


def corpus_paths(out_dir: str | Path) -> dict[str, Path]:
    """``{split: out_dir/<split>.jsonl}``."""
    return {s: Path(out_dir) / f"{s}.jsonl" for s in SPLITS}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def generator_version(cfg: "CorpusConfig") -> str:
    """The generator version that writes ``cfg``'s corpus (``GENERATOR_VERSIONS[cfg.version]``)."""
    return GENERATOR_VERSIONS[cfg.version]


def corpus_exists(cfg: CorpusConfig, out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a complete corpus made by ``cfg`` and this generator version.

    Complete means: ``config.json`` with the same config hash and generator version, and every
    split file present with the recorded SHA-256 (so a truncated or edited file is rebuilt).
    """
    out = Path(out_dir)
    cfg_file = out / "config.json"
    if not cfg_file.exists():
        return False
    try:
        saved = read_json(cfg_file)
    except ValueError:
        return False
    if saved.get("config_hash") != config_hash(cfg) or saved.get("generator_version") != generator_version(cfg):
        return False
    files = saved.get("files", {})
    for split, path in corpus_paths(out).items():
        if not path.exists() or files.get(split, {}).get("sha256") != _sha256(path):
            return False
    return True


def build_corpus(cfg: CorpusConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/{base,train,query,test}.jsonl`` and ``config.json``; reuse a valid one.

    Logs "reusing" when :func:`corpus_exists`, else "generating". Each file is written
    atomically and ``config.json`` last (removed first), so an interrupted build is never
    mistaken for a complete one. Returns ``{split: path}``.
    """
    out = Path(out_dir)
    paths = corpus_paths(out)
    h = config_hash(cfg)
    if corpus_exists(cfg, out):
        log.info("reusing corpus in %s (config %s)", out, h)
        return paths
    log.info("generating corpus in %s (config %s, seed %d)", out, h, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").unlink(missing_ok=True)
    corpus = generate_corpus(cfg)
    files = {}
    for split, path in paths.items():
        write_records(path, corpus[split])
        files[split] = {"records": len(corpus[split]), "sha256": _sha256(path)}
    write_config(out, cfg, generator_version=generator_version(cfg), files=files)
    return paths


def load_corpus(out_dir: str | Path) -> dict[str, list[dict]]:
    """Load (and validate) every split written by :func:`build_corpus`."""
    return {s: load_records(p) for s, p in corpus_paths(out_dir).items()}


# ----------------------------------------------------------------------------------- ablation


def strip_exploratory(record: dict) -> dict:
    """A copy of ``record`` without its exploratory segments (the exploratory ablation).

    Removes every ``"exploratory"`` segment and, where an answer was given before the detour,
    the ``"answer"`` segment right after it (the restated answer exists only because of the
    detour), then shifts the offsets. The result is the response a non-exploring CoT of the same
    problem has, ending as the original did (no dangling newline). ``meta.exploratory`` becomes
    False and ``meta.stripped_exploration`` keeps what was removed. A record without exploratory
    segments comes back as an unchanged copy.
    """
    rec = copy.deepcopy(record)
    clean = rec["meta"].pop("clean", None)
    if clean is not None:  # version 2, a slip: the first answer is wrong, so take the clean CoT
        rec["response"] = clean["response"]
        rec["meta"]["segments"] = clean["segments"]
        rec["meta"]["segment_roles"] = clean["segment_roles"]
        rec["meta"]["stripped_exploration"] = rec["meta"].get("exploration")
        rec["meta"]["exploratory"] = False
        rec["meta"]["exploration"] = None
        rec["meta"].pop("slip", None)
        validate_record(rec, f"strip_exploratory({rec['id']})")
        return rec
    segs = rec["meta"]["segments"]
    if not any(k == "exploratory" for _, _, k in segs):
        return rec
    text = rec["response"]
    roles = rec["meta"].get("segment_roles")
    keep: list[tuple[str, str]] = []
    kept_roles: list[str] = []
    seen_answer = dropping = False
    for j, (start, end, kind) in enumerate(segs):
        if kind == "exploratory":
            dropping = seen_answer or dropping
            continue
        if kind == "answer" and dropping:
            dropping = False
            continue
        dropping = False
        seen_answer = seen_answer or kind == "answer"
        keep.append((text[start:end], kind))
        if roles is not None:
            kept_roles.append(roles[j])
    if text and not text.endswith("\n") and keep:
        last, kind = keep[-1]
        keep[-1] = (last.rstrip("\n") or last, kind)
    response = "".join(t for t, _ in keep)
    new_segs, pos = [], 0
    for t, kind in keep:
        new_segs.append([pos, pos + len(t), kind])
        pos += len(t)
    if roles is not None:
        rec["meta"]["segment_roles"] = kept_roles
    rec["response"] = response
    rec["meta"]["segments"] = new_segs
    rec["meta"]["stripped_exploration"] = rec["meta"].get("exploration") or True
    rec["meta"]["exploratory"] = False
    rec["meta"]["exploration"] = None
    validate_record(rec, f"strip_exploratory({rec['id']})")
    return rec


# ----------------------------------------------------------------------------------- grading


def extract_math_answer(text: str, which: str = "last") -> str | None:
    """The answer stated in a math response, or None if it states none.

    Answer lines are "The answer is X." (with an optional "So"/"Therefore"/...) or a
    ``\\boxed{X}``. ``which="last"`` (what :func:`grade_math` grades) takes the last one, the
    answer a CoT ends on after any exploration; ``which="first"`` the first answer reached.
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    found: list[str] = []
    for line in text.splitlines():
        ans = answer_in_line(line)
        if ans is not None:
            found.append(ans)
        elif "\\boxed{" in line:
            b = last_boxed(line)
            if b is not None:
                found.append(b)
    if not found:
        return None
    return found[-1] if which == "last" else found[0]


_FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str | None:
    """The body of the last closed fenced code block (```python, ```py or bare ```), or None."""
    blocks = _FENCED.findall(text)
    return blocks[-1] if blocks else None


def _normalise_answer(s: str) -> str:
    s = s.strip().strip("$").strip()
    inner = last_boxed(s)
    if inner is not None:
        s = inner
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)  # 1,692 -> 1692
    return s.rstrip(".").replace(" ", "")


def _as_number(s: str) -> Fraction | None:
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def grade_math(record: dict, text: str) -> bool:
    """Whether ``text`` (a model's response) ends on ``record["answer"]``.

    Grades the *last* answer line (:func:`extract_math_answer`); numbers compare by value
    (``"85"``, ``"85.0"``, ``"1,692"`` and ``"170/2"`` match ``"85"`` etc.), anything else
    as strings without spaces.
    """
    got = extract_math_answer(text, which="last")
    if got is None:
        return False
    a, b = _normalise_answer(got), _normalise_answer(str(record["answer"]))
    na, nb = _as_number(a), _as_number(b)
    if na is not None and nb is not None:
        return na == nb
    return a == b


# ----------------------------------------------------------------------------------- statistics


def corpus_stats(records: Iterable[dict]):
    """Per (domain, level): count, mean response characters, mean whitespace tokens, exploratory share.

    Returns a ``pandas.DataFrame`` indexed by ``(domain, level)`` with columns ``count``,
    ``mean_chars``, ``mean_tokens`` and ``exploratory_share`` (the share of records with
    at least one exploratory segment).
    """
    import pandas as pd

    rows = [
        {
            "domain": r["domain"],
            "level": r["difficulty"],
            "mean_chars": len(r["response"]),
            "mean_tokens": len(r["response"].split()),
            "exploratory": any(k == "exploratory" for _, _, k in r["meta"]["segments"]),
        }
        for r in records
    ]
    cols = ["count", "mean_chars", "mean_tokens", "exploratory_share"]
    if not rows:
        return pd.DataFrame(columns=cols, index=pd.MultiIndex.from_tuples([], names=["domain", "level"]))
    df = pd.DataFrame(rows)
    g = df.groupby(["domain", "level"], sort=True)
    out = pd.DataFrame(
        {
            "count": g.size(),
            "mean_chars": g["mean_chars"].mean(),
            "mean_tokens": g["mean_tokens"].mean(),
            "exploratory_share": g["exploratory"].mean(),
        }
    )
    order = {d: i for i, d in enumerate(DOMAINS)}
    return out.sort_index(key=lambda idx: idx.map(order) if idx.name == "domain" else idx)[cols]
