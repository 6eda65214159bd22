"""infra_lib against kronfluence 1.0.1, dattri-llm 0.1.0 and Bergson 2.5.1: EK-FAC factors, example
scores and token scores on the same model, data, batch size and dtype.

How to run (2 CPU threads per library; ~15-25 minutes on a busy 2-core machine):
    python bench/vs_kronfluence.py --json runs/bench/vs_kronfluence.json
    python bench/vs_kronfluence.py --peer-python /path/to/peers/venv/bin/python ...  # adds dattri-llm, Bergson
    python bench/vs_kronfluence.py --quick --model runs/tiny/model --json ...  # 64 x 64 tokens, pipeline only

Setting: a Qwen2 of the tiny model's shape (hidden 128, 4 layers, MLP 512, vocab 512), trained
for a few hundred steps on a synthetic topic-Markov language (or loaded with ``--model``); 512
training and 32 query sequences of 128 tokens, a masked prompt of 16-31 tokens then the response.
Tracked modules: the MLP linears on every side. float32 everywhere; every library gets the same
training batch size (``--batch-size``) and all 32 queries in one query batch (one pass over the
training set per score phase, on every side).

How it is timed (so that an auditor can check it):
- each library runs in its own child process, one process per repeat; repeats are interleaved
  round robin (floor, ours, kronfluence, peers; the order rotates each repeat), so a change of
  machine load falls on every side alike; each phase reports the minimum over ``--repeats``
  (at least 3) and the CPU-seconds of that repeat beside its wall time;
- every child warms up on a slice of the data before its timed phases;
- I/O: every library writes its factors and scores to a tmpfs folder inside the timed region
  (kronfluence cannot skip it; ours gets an ``out_dir`` too, with no resume chunks);
- labels of the sampled-label Fisher: inverse CDF with one uniform per position on our side and in
  kronfluence's task (the same algorithm); dattri-llm fits EK-FAC from the training gradients
  only (empirical Fisher), so its pipeline is compared with ours under the empirical Fisher;
  Bergson samples its labels with its own default (``torch.multinomial``) and is compared with
  our sampled-label pipeline;
- Bergson runs the steps of its ``hessian_pipeline`` (query gradients, ``kfac`` factors with
  ``ev_correction``, the damped inverse on the queries, a scoring pass), each loading the model
  and the datasets from disk as its pipeline does; the copy of the model it loads has
  ``max_position_embeddings`` raised to one batch's tokens (its per-batch token budget may not
  exceed the context; the function is unchanged, checked); its covariances take every
  non-padding position (prompt positions too), ours and kronfluence's the loss positions, so its
  scores are not the same numbers (Pearson 0.9999 on the trained bench model, 0.993 on an
  untrained one);
- the floor is one forward plus an activation-only backward (parameters frozen, gradient from
  the embeddings' output, no weight gradient) over the same tokens; the full step (every weight
  gradient) is reported beside it;
- peak RSS is sampled per phase in each child (after ``malloc_trim``), and ru_maxrss per process;
- parity (Pearson) runs once, untimed, with the empirical Fisher on every side and the same
  relative damping (0.1 x mean eigenvalue per module).

``--json`` writes ratios (ours / theirs) and the figures behind them; see ``report``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, N_TOPICS, SEQ = 512, 8, 128
PEERS = ("dattri", "bergson")


# --------------------------------------------------------------------------- setting
def make_data(n: int, seed: int, prefix: str, chains: torch.Tensor, seq: int = SEQ) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    vocab = chains.shape[-1]
    out = []
    for i in range(n):
        topic = int(torch.randint(0, N_TOPICS, (1,), generator=g))
        ids = [topic, int(torch.randint(N_TOPICS, vocab, (1,), generator=g))]
        while len(ids) < seq:
            ids.append(int(torch.multinomial(chains[topic, ids[-1]], 1, generator=g)))
        ids = torch.tensor(ids)
        p = int(torch.randint(seq // 8, seq // 4, (1,), generator=g))
        labels = ids.clone()
        labels[:p] = -100
        seg = torch.full((seq,), -1)
        cuts = torch.linspace(p, seq, 5).long()
        for k in range(4):
            seg[cuts[k]:cuts[k + 1]] = k
        out.append({"id": f"{prefix}{i:04d}", "input_ids": ids, "labels": labels, "segment_ids": seg,
                    "domain": "math" if topic < N_TOPICS // 2 else "code"})
    return out


def make_chains(seed: int = 0, branch: int = 8, vocab: int = VOCAB) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    P = torch.zeros(N_TOPICS, vocab, vocab)
    for k in range(N_TOPICS):
        succ = torch.stack([torch.randperm(vocab - N_TOPICS, generator=g)[:branch] + N_TOPICS for _ in range(vocab)])
        w = torch.rand(vocab, branch, generator=g) ** 2 + 1e-3
        P[k].scatter_(1, succ, w / w.sum(1, keepdim=True))
    return P


def prepare(args) -> Path:
    """Model and data into the work dir (cached)."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model_dir = work / "model"
    src = args.model or (str(ROOT / "runs/tiny/model") if (ROOT / "runs/tiny/model").is_dir() else None)
    vocab = VOCAB
    if src:
        m = AutoModelForCausalLM.from_pretrained(src).float()
        m.save_pretrained(model_dir)
        vocab = m.config.vocab_size  # the synthetic language uses the model's own vocabulary
    chains = make_chains(vocab=vocab)
    torch.save({"train": make_data(args.n_train, 1, "tr", chains, args.seq),
                "queries": make_data(args.n_query, 2, "q", chains, args.seq)}, work / "data.pt")
    if src:
        return work
    if (model_dir / "config.json").is_file():
        return work
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(cfg)
    pool = make_data(args.train_steps * 16, 7, "pool", chains, args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    model.train()
    for s in range(args.train_steps):
        b = pool[s * 16:(s + 1) * 16]
        ids = torch.stack([x["input_ids"] for x in b])
        lab = torch.stack([x["labels"] for x in b])
        loss = model(input_ids=ids, labels=lab, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s % 100 == 0 or s == args.train_steps - 1:
            print(f"  train step {s:4d} loss {loss.item():.3f}", flush=True)
    model.eval().save_pretrained(model_dir)
    return work


# --------------------------------------------------------------------------- measuring
class PeakRSS:
    """Samples this process's RSS every 5 ms in a daemon thread."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.peak = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def reset(self) -> int:
        self.peak = self.proc.memory_info().rss
        return self.peak


def trim_heap() -> None:
    """Hand freed heap back to the OS, so that a phase's peak RSS is its own, not an earlier phase's."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def timed(R: dict, mem: PeakRSS, name: str, fn):
    """Wall and CPU seconds of one call of ``fn``, its peak RSS and the RSS it added."""
    trim_heap()
    base = mem.reset()
    c0, t0 = sum(os.times()[:2]), time.perf_counter()
    out = fn()
    wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - c0
    R[name] = {"s": wall, "cpu_s": cpu, "peak_rss_mb": mem.peak / 2**20, "added_rss_mb": (mem.peak - base) / 2**20,
               "loadavg1": os.getloadavg()[0]}
    print(f"  {name:34s} {wall:8.2f} s  cpu {cpu:8.2f} s  peak RSS {mem.peak / 2**20:7.0f} MB"
          f"  (+{(mem.peak - base) / 2**20:.0f})  load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL over response tokens (labels -100 elsewhere), float logits."""
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100,
                           reduction="sum")


def batches(data: list[dict], bs: int):
    for i in range(0, len(data), bs):
        b = data[i:i + bs]
        yield torch.stack([x["input_ids"] for x in b]), torch.stack([x["labels"] for x in b])


def forward_only(model, train, bs):
    with torch.no_grad():
        for ids, _ in batches(train, bs):
            model(input_ids=ids, use_cache=False)


def activation_floor(model, train, bs):
    """One forward plus an activation-only backward: parameters frozen, gradient from the
    embeddings' output, no weight gradient (the least any attribution pass can cost)."""
    req = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in req:
        p.requires_grad_(False)
    emb = model.get_input_embeddings()
    try:
        for ids, lab in batches(train, bs):
            x = emb(ids).detach().requires_grad_(True)
            loss = summed_nll(model(inputs_embeds=x, use_cache=False).logits, lab)
            torch.autograd.grad(loss, x)
    finally:
        for p, r in req:
            p.requires_grad_(r)


def full_step(model, train, bs):
    """Forward plus backward with every weight gradient (a training step without the optimizer)."""
    for p in model.parameters():
        p.requires_grad_(True)
    for ids, lab in batches(train, bs):
        summed_nll(model(input_ids=ids, use_cache=False).logits, lab).backward()
    model.zero_grad(set_to_none=True)


def tmpdir(tag: str) -> Path:
    """A fresh folder on tmpfs (RAM) when there is one: every library writes its artifacts there."""
    import tempfile

    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"bench_{tag}_", dir=base))


# --------------------------------------------------------------------------- children
def child_floor(args, model, train, queries, mem, R):
    bs = args.batch_size
    activation_floor(model, train[:bs], bs)  # warm-up
    full_step(model, train[:bs], bs)
    timed(R, mem, "forward", lambda: forward_only(model, train, bs))
    timed(R, mem, "floor (fwd + activation-only bwd)", lambda: activation_floor(model, train, bs))
    timed(R, mem, "full step (fwd + bwd, weight grads)", lambda: full_step(model, train, bs))


def child_infra_lib(args, model, train, queries, mem, R, parity=False):
    import shutil

    import infra_lib.factors as fm
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.scores import ScoreConfig, compute_scores

    bs, Q = args.batch_size, len(queries)
    fc = lambda **k: FactorConfig(batch_size=bs, save_every=10**9, **k)  # noqa: E731 - no resume chunks
    sc = lambda **k: ScoreConfig(batch_size=bs, query_batch_size=Q, **k)  # noqa: E731
    kw = dict(progress=False)
    if parity:
        f = fit_factors(model, train, fc(fisher="empirical"), **kw)
        s = compute_scores(model, f, queries, train, sc(token_scores=True), **kw)
        return {"example": s.example, "token": torch.stack([s.tokens_of(i) for i in range(len(train))], 1)}
    phases: dict[str, float] = {}
    real_pass, real_eig = fm.run_pass, fm._eigendecompose

    def run_pass(*a, **k):
        t0 = time.perf_counter()
        out = real_pass(*a, **k)
        phases[k["desc"]] = phases.get(k["desc"], 0.0) + time.perf_counter() - t0
        return out

    def eig(*a, **k):
        t0 = time.perf_counter()
        out = real_eig(*a, **k)
        phases["eigendecomposition"] = time.perf_counter() - t0
        return out

    fm.run_pass, fm._eigendecompose = run_pass, eig  # restored below (--in-process runs children in turn)
    dirs: list[Path] = []

    def pipeline(shared: str, fisher: str):
        phases.clear()
        d = tmpdir("ours")
        dirs.append(d)
        t0 = time.perf_counter()
        f = fit_factors(model, train, fc(fisher=fisher), out_dir=d / "factors", shared_pass=shared, **kw)
        t_fit = time.perf_counter() - t0
        compute_scores(model, f, queries, train, sc(), out_dir=d / "scores", **kw)
        known = sum(v for k, v in phases.items() if k != "scores")
        phases["rest of fit (shared Λ, hashing, planning, saving)"] = t_fit - known
        return f

    w = train[:2 * bs]  # warm-up
    fw = fit_factors(model, w, fc(), out_dir=tmpdir("warm") / "f", **kw)
    compute_scores(model, fw, queries[:4], w, sc(token_scores=True), **kw)
    f = timed(R, mem, "pipeline", lambda: pipeline("auto", "sampled"))
    R["pipeline"]["phases"] = dict(phases)
    R["plan"] = f.diagnostics["plan"]
    timed(R, mem, "pipeline (two passes)", lambda: pipeline("off", "sampled"))
    R["pipeline (two passes)"]["phases"] = dict(phases)
    if args.empirical:
        timed(R, mem, "pipeline (empirical)", lambda: pipeline("auto", "empirical"))
    if not args.quick:
        d = tmpdir("tok")
        dirs.append(d)
        timed(R, mem, "token scores (32 queries)",
              lambda: compute_scores(model, f, queries, train, sc(token_scores=True), out_dir=d, **kw))
    fm.run_pass, fm._eigendecompose = real_pass, real_eig
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


def child_kronfluence(args, model, train, queries, mem, R, parity=False):
    import copy
    import logging
    import shutil

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments

    from infra_lib.testing import KronfluenceDataset as DS, kronfluence_task

    logging.disable(logging.WARNING)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".mlp." in n]
    task = kronfluence_task(names, sampler="inverse-cdf")
    out = tmpdir("kf")
    an = Analyzer(analysis_name="bench", model=prepare_model(copy.deepcopy(model), task), task=task, cpu=True,
                  disable_tqdm=True, output_dir=str(out))
    bs, Q = args.batch_size, len(queries)
    tr, qs = DS(train), DS(queries)
    phases: dict[str, float] = {}

    def fit(name, empirical, data=tr):
        fa = FactorArguments(strategy="ekfac", use_empirical_fisher=empirical)
        for phase, fn in (("covariance", an.fit_covariance_matrices), ("eigendecomposition", an.perform_eigendecomposition),
                          ("lambda", an.fit_lambda_matrices)):
            t0 = time.perf_counter()
            if phase == "eigendecomposition":
                fn(factors_name=name, factor_args=fa, overwrite_output_dir=True)
            else:
                fn(factors_name=name, dataset=data, per_device_batch_size=bs, factor_args=fa, overwrite_output_dir=True)
            phases[phase] = time.perf_counter() - t0

    def scores(name, factors, per_token=False, data=tr, query=qs):
        t0 = time.perf_counter()
        an.compute_pairwise_scores(scores_name=name, factors_name=factors, query_dataset=query, train_dataset=data,
                                   per_device_query_batch_size=len(query), per_device_train_batch_size=bs,
                                   score_args=ScoreArguments(damping_factor=None, compute_per_token_scores=per_token),
                                   overwrite_output_dir=True)  # None: 0.1 x mean(Lambda) per module, as ours
        phases["scores"] = time.perf_counter() - t0

    try:
        if parity:
            fit("emp", True)
            scores("ex", "emp")
            scores("tok", "emp", per_token=True)
            return {"example": an.load_pairwise_scores("ex")["all_modules"],
                    "token": an.load_pairwise_scores("tok")["all_modules"]}
        fit("warm", False, DS(train[:2 * bs]))  # warm-up
        scores("warm", "warm", per_token=True, data=DS(train[:2 * bs]), query=DS(queries[:4]))
        timed(R, mem, "pipeline", lambda: (fit("sampled", False), scores("ex", "sampled")))
        R["pipeline"]["phases"] = dict(phases)
        if not args.quick:
            timed(R, mem, "token scores (32 queries)", lambda: scores("tok", "sampled", per_token=True))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def child_dattri(args, model, train, queries, mem, R, parity=False):
    """dattri-llm 0.1.0's EKFACAttributor, live (no gradient store on disk): it fits EK-FAC from the
    training gradients (empirical Fisher) with relative damping 0.1 x mean eigenvalue per layer."""
    import logging
    import shutil

    from dattri_llm import AttributionArguments, AttributionTask, EKFACAttributor
    from dattri_llm.gradient.hooks import HookManagerConfig

    logging.disable(logging.WARNING)

    class DS(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = [{"input_ids": x["input_ids"], "labels": x["labels"]} for x in items]

        def __len__(self):
            return len(self.items)

        def __getitem__(self, i):
            return self.items[i]

    out = tmpdir("dattri")
    bs, Q = args.batch_size, len(queries)
    task = AttributionTask(loss_func=lambda m, b: summed_nll(m(input_ids=b["input_ids"], use_cache=False).logits,
                                                            b["labels"]), model=model)
    att = EKFACAttributor(AttributionArguments(output_dir=str(out / "o"), per_device_train_batch_size=bs,
                                               per_device_eval_batch_size=Q, use_cpu=True), task=task)
    hook = HookManagerConfig(linear_io=[r"\.mlp\."])
    tr, qs = DS(train), DS(queries)
    kw = dict(hook_config=hook, damping=0.1, relative_damping=True)
    try:
        if parity:
            fd = str(out / "fit")
            ex = att.attribute(tr, qs, fisher_dir=fd, **kw)
            tok = att.attribute(tr, qs, fisher_dir=fd, attribution_granularity="token", **kw)
            return {"example": ex, "token": tok, "train": tr.items}
        att.attribute(DS(train[:2 * bs]), DS(queries[:4]), fisher_dir=str(out / "warm"), **kw)  # warm-up
        fd = str(out / "fit")
        timed(R, mem, "pipeline (empirical)", lambda: att.attribute(tr, qs, fisher_dir=fd, **kw))
        if not args.quick:  # the fit saved above is loaded: token scores only
            timed(R, mem, "token scores (32 queries)",
                  lambda: att.attribute(tr, qs, fisher_dir=fd, attribution_granularity="token", **kw))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def dattri_matrices(res: dict, n_query: int, seq: int) -> dict:
    """dattri-llm's scores (keyed by content hash) in dataset order: example (Q, N), token (Q, N, T)."""
    from dattri_llm import hash_sample

    ids, mat = res["example"].agnostic_matrix()  # (N, Q) in its own order
    row = {h: i for i, h in enumerate(ids)}
    # its hook manager hashes the model's forward inputs (our loss calls model(input_ids=...))
    for fields in (("input_ids",), ("input_ids", "labels")):
        hashes = [hash_sample({k: x[k] for k in fields}) for x in res["train"]]
        if all(h in row for h in hashes):
            break
    else:
        raise KeyError("dattri-llm's sample hashes match neither input_ids nor input_ids + labels")
    example = torch.stack([mat[row[h]] for h in hashes], 1)  # (Q, N)
    token = torch.zeros(n_query, len(hashes), seq)
    for i, h in enumerate(hashes):
        pos, m = res["token"].token_scores(h)  # (P, Q)
        token[:, i, torch.as_tensor(pos)] = m.T.float()
    return {"example": example, "token": token}


def bergson_inputs(model, train, queries, bs: int, seq: int, out: Path) -> dict:
    """Untimed set-up of Bergson's inputs: it loads the model and a tokenizer by path and reads
    Hugging Face datasets from disk (pre-tokenized ``input_ids`` and ``labels``, with a ``length``
    column). Its token budget per batch (``token_batch_size``) must not exceed the model's
    context (``max_position_embeddings``), so the copy it loads has that raised to one batch's
    tokens; with the default RoPE the function is the same (checked here on the first batch)."""
    import json as _json

    import datasets
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    ctx = max(bs * seq, model.config.max_position_embeddings)
    mdir = out / "model"
    model.save_pretrained(mdir)
    cfg = _json.loads((mdir / "config.json").read_text())
    cfg["max_position_embeddings"] = ctx
    (mdir / "config.json").write_text(_json.dumps(cfg))
    vocab = model.config.vocab_size
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t0")),
                                  unk_token="t0", pad_token="t0", model_max_length=ctx)
    tok.save_pretrained(mdir)
    ids = torch.stack([x["input_ids"] for x in train[:bs]])
    with torch.no_grad():
        a = model(input_ids=ids, use_cache=False).logits
        b = AutoModelForCausalLM.from_pretrained(mdir).float().eval()(input_ids=ids, use_cache=False).logits
    assert torch.equal(a, b), "raising max_position_embeddings changed the model's function"
    datasets.disable_progress_bars()
    paths = {}
    for name, items in (("train", train), ("queries", queries), ("warm_train", train[:2 * bs]), ("warm_queries", queries[:4])):
        paths[name] = str(out / name)
        Dataset.from_dict({"input_ids": [x["input_ids"].tolist() for x in items],
                           "labels": [x["labels"].tolist() for x in items],
                           "length": [len(x["input_ids"]) for x in items]}).save_to_disk(paths[name])
    return {"model": str(mdir), **paths}


def child_bergson(args, model, train, queries, mem, R, parity=False):
    """Bergson 2.5.1's EK-FAC (``method="kfac"`` with ``ev_correction``), the steps of its
    ``hessian_pipeline`` called one by one: query gradients (no aggregation: one row per query),
    covariances + eigendecomposition + eigenvalue correction over the training set, the damped
    inverse applied to the query gradients (``damped_inverse``, 0.1 x mean eigenvalue per module,
    all queries in one apply batch), then a scoring pass over the training set. Its own default
    labels for the Fisher (``torch.multinomial`` from the model's predictions); the data labels
    (``use_dataset_labels``) for parity. Every step loads the model and datasets from disk and
    writes its output there (tmpfs), as its pipeline does."""
    import logging
    import shutil
    from contextlib import redirect_stdout
    from copy import deepcopy
    from io import StringIO

    from bergson.build import build_query
    from bergson.config.config import (DataConfig, HessianConfig, IndexConfig, InversionConfig, PreprocessConfig,
                                       QuerySetConfig, ScoreConfig)
    from bergson.data import load_scores
    from bergson.distributed import launch_distributed_run
    from bergson.hessians.apply_hessian import EkfacConfig, apply_worker
    from bergson.hessians.hessian_approximations import approximate_hessians
    from bergson.score.score import score_dataset

    logging.disable(logging.WARNING)
    bs, Q = args.batch_size, len(queries)
    out = tmpdir("bergson")
    src = bergson_inputs(model, train, queries, bs, args.seq, out / "inputs")
    phases: dict[str, float] = {}

    def step(name, fn):
        t0 = time.perf_counter()
        with redirect_stdout(StringIO()):  # its progress prints
            fn()
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    def index_cfg(run, data, tokens=False):
        return IndexConfig(run_path=str(run), model=src["model"], precision="fp32", data=DataConfig(dataset=src[data]),
                           filter_modules="*self_attn*,*lm_head*", token_batch_size=bs * args.seq, max_batch_size=bs,
                           attribute_tokens=tokens)

    def fit(run, data, empirical):
        shutil.rmtree(run, ignore_errors=True)
        hc = HessianConfig(method="kfac", ev_correction=True, use_dataset_labels=empirical)
        step("factors (covariance, eigendecomposition, eigenvalue correction)",
             lambda: approximate_hessians(index_cfg(run / "hessian", data), hc))

    def scores(run, data, tokens=False):
        tag = "tokens" if tokens else "example"
        step("query gradients", lambda: build_query(index_cfg(run / f"query_{tag}", data), QuerySetConfig(
            dataset=src["queries" if data == "train" else "warm_queries"], aggregation="none"), PreprocessConfig()))
        ek = EkfacConfig(hessian_method_path=str(run / "hessian"), gradient_path=str(run / f"query_{tag}"),
                         run_path=str(run / f"pre_{tag}"), ev_correction=True, apply_batch_size=Q)
        inv = InversionConfig(inversion="damped_inverse", damping_factor=0.1)
        step("inverse applied to the queries", lambda: launch_distributed_run("apply_hessian", apply_worker, [ek, inv]))
        step("scores", lambda: score_dataset(index_cfg(run / f"scores_{tag}", data, tokens),
                                             ScoreConfig(query_path=str(run / f"pre_{tag}"), batch_size=bs),
                                             PreprocessConfig()))
        return load_scores(run / f"scores_{tag}")

    try:
        if parity:
            run = out / "parity"
            fit(run, "train", True)
            ex = torch.from_numpy(scores(run, "train")[:].copy()).T  # (Q, N)
            grid = scores(run, "train", tokens=True).to_grid()  # (N, T-1, Q): row t = position t
            tok = torch.zeros(Q, len(train), args.seq)
            tok[:, :, :grid.shape[1]] = grid.permute(2, 0, 1)
            return {"example": ex, "token": tok}
        fit(out / "warm", "warm_train", False)  # warm-up
        scores(out / "warm", "warm_train", tokens=True)
        phases.clear()
        timed(R, mem, "pipeline", lambda: (fit(out / "run", "train", False), scores(out / "run", "train")))
        R["pipeline"]["phases"] = dict(phases)
        if not args.quick:  # the fit above is reused: query gradients, inverse, token scoring pass
            phases.clear()
            timed(R, mem, "token scores (32 queries)", lambda: scores(out / "run", "train", tokens=True))
            R["token scores (32 queries)"]["phases"] = dict(phases)
    finally:
        shutil.rmtree(out, ignore_errors=True)


CHILDREN = {"floor": child_floor, "infra_lib": child_infra_lib, "kronfluence": child_kronfluence,
            "dattri": child_dattri, "bergson": child_bergson}


def run_child(args):
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers import AutoModelForCausalLM

    work = Path(args.work)
    data = torch.load(work / "data.pt", weights_only=False)
    train, queries = data["train"], data["queries"]
    model = AutoModelForCausalLM.from_pretrained(work / "model").float().eval()
    lib = args.child
    if args.parity:
        out = CHILDREN[lib](args, model, train, queries, None, {}, parity=True)
        if lib == "dattri":
            out = dattri_matrices(out, len(queries), args.seq)
        torch.save(out, work / f"parity_{lib}.pt")
        return
    mem = PeakRSS()
    R: dict = {"threads": torch.get_num_threads(), "repeat": args.repeat, "loadavg_start": os.getloadavg()}
    print(f"[{lib}] repeat {args.repeat + 1}", flush=True)
    CHILDREN[lib](args, model, train, queries, mem, R)
    R["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    R["loadavg_end"] = os.getloadavg()
    (work / "times").mkdir(exist_ok=True)
    (work / "times" / f"{lib}.{args.repeat}.json").write_text(json.dumps(R, indent=1))


# --------------------------------------------------------------------------- report
def pearson(x, y) -> float:
    return float(torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1])


def paired_sample(x: torch.Tensor, y: torch.Tensor, n: int = 4096, seed: int = 0) -> dict:
    """A seeded sample of at most ``n`` paired entries of two equal-shape score tensors (for a scatter)."""
    x, y = x.flatten().double(), y.flatten().double()
    idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return {"ours": x[idx].tolist(), "kronfluence": y[idx].tolist()}


def best_of(work: Path, lib: str) -> dict:
    """Per phase, the repeat with the least wall time (its CPU seconds beside it), the largest peak
    RSS over repeats, and every repeat's wall time and load."""
    runs = [json.loads(p.read_text()) for p in sorted((work / "times").glob(f"{lib}.*.json"))]
    out: dict = {"repeats": len(runs), "ru_maxrss_mb": max((r["ru_maxrss_mb"] for r in runs), default=0.0)}
    for name in (runs[0] if runs else {}):
        if not isinstance(runs[0][name], dict) or "s" not in runs[0][name]:
            continue
        rs = [r[name] for r in runs if name in r]
        b = min(rs, key=lambda v: v["s"])
        out[name] = {**b, "s_all": [round(v["s"], 2) for v in rs], "loadavg1_all": [round(v["loadavg1"], 1) for v in rs],
                     "peak_rss_mb": max(v["peak_rss_mb"] for v in rs)}
    if runs and "plan" in runs[0]:
        out["plan"] = runs[0]["plan"]
    return out


def flops_token(n_tok: int, q: int, shapes) -> float:
    """FLOPs of the bilinear forms g_t^T P_q a_t of per-token scores (2 per multiply-add)."""
    return 2.0 * n_tok * q * sum(o * i for o, i in shapes)


def report(args, work: Path, libs: list[str], skipped: dict[str, str]) -> dict:
    T = {lib: best_of(work, lib) for lib in libs}
    o, k, fl = T["infra_lib"], T["kronfluence"], T["floor"]
    s = lambda R, name: R[name]["s"] if name in R else float("nan")  # noqa: E731
    floor = s(fl, "floor (fwd + activation-only bwd)")
    J: dict = {
        "quick": bool(args.quick), "model": args.model, "n_train": args.n_train, "n_query": args.n_query,
        "seq": args.seq, "batch_size": args.batch_size, "dtype": "float32", "threads": args.threads,
        "repeats": min(T[lib]["repeats"] for lib in libs),
        "labels": {"infra_lib": "sampled-label Fisher, inverse CDF (one seeded uniform per position)",
                   "kronfluence": "sampled-label Fisher, inverse CDF in its task (torch.rand + searchsorted)",
                   "dattri": "empirical Fisher (its EK-FAC fits the training gradients only); ours timed on the "
                             "empirical Fisher for this comparison",
                   "bergson": "sampled-label Fisher, its default (torch.multinomial from the model's predictions at "
                              "the labelled positions); ours timed on its sampled-label Fisher (inverse CDF)"},
        "io": "every library writes factors and scores to tmpfs inside the timed region",
        "floor_s_ours": floor, "floor_cpu_s": fl.get("floor (fwd + activation-only bwd)", {}).get("cpu_s"),
        "forward_s": s(fl, "forward"), "full_step_s": s(fl, "full step (fwd + bwd, weight grads)"),
        "pipeline_s_ours": s(o, "pipeline"), "pipeline_s_ours_two_passes": s(o, "pipeline (two passes)"),
        "pipeline_s_kronfluence": s(k, "pipeline"),
        "pipeline_ratio_vs_kronfluence": s(o, "pipeline") / s(k, "pipeline"),
        "pipeline_two_passes_ratio_vs_kronfluence": s(o, "pipeline (two passes)") / s(k, "pipeline"),
        "pipeline_cpu_ratio_vs_kronfluence": o["pipeline"]["cpu_s"] / k["pipeline"]["cpu_s"],
        "pipeline_floor_multiple": s(o, "pipeline") / floor,
        "pipeline_full_step_multiple": s(o, "pipeline") / s(fl, "full step (fwd + bwd, weight grads)"),
        "kronfluence_pipeline_floor_multiple": s(k, "pipeline") / floor,
        "pipeline_phases": {"infra_lib": o["pipeline"].get("phases"), "kronfluence": k["pipeline"].get("phases"),
                            "infra_lib_two_passes": o["pipeline (two passes)"].get("phases")},
        "plan": o.get("plan"),
        # the same plan as kronfluence's (two passes) for memory; the shared pass judged against its plan
        "peak_rss_mb_ours": o["pipeline (two passes)"]["peak_rss_mb"], "peak_rss_mb_kronfluence": k["pipeline"]["peak_rss_mb"],
        "peak_rss_ratio_vs_kronfluence": o["pipeline (two passes)"]["peak_rss_mb"] / k["pipeline"]["peak_rss_mb"],
        "peak_rss_mb_ours_shared_pass": o["pipeline"]["peak_rss_mb"],
        "added_rss_mb_ours_shared_pass": o["pipeline"]["added_rss_mb"],
        "added_rss_mb_ours_two_passes": o["pipeline (two passes)"]["added_rss_mb"],
        "ru_maxrss_mb": {lib: T[lib]["ru_maxrss_mb"] for lib in libs},
        "timings": T, "skipped": skipped,
    }
    if "token scores (32 queries)" in o and "token scores (32 queries)" in k:
        shapes = [(m.out_features, m.in_features) for n, m in _model_linears(work)]
        ft = flops_token(args.n_train * args.seq, args.n_query, shapes)
        J.update({"token_s_ours": s(o, "token scores (32 queries)"), "token_s_kronfluence": s(k, "token scores (32 queries)"),
                  "token_ratio_vs_kronfluence": s(o, "token scores (32 queries)") / s(k, "token scores (32 queries)"),
                  "token_cpu_ratio_vs_kronfluence": o["token scores (32 queries)"]["cpu_s"] / k["token scores (32 queries)"]["cpu_s"],
                  "token_gflop_per_s_ours": ft / 1e9 / s(o, "token scores (32 queries)"),
                  "token_gflop_per_s_kronfluence": ft / 1e9 / s(k, "token scores (32 queries)")})
    for peer in PEERS:
        # each peer against our pipeline under the same Fisher: its own default labels where it has
        # a sampled-label Fisher (Bergson), the empirical Fisher where that is all it fits (dattri-llm)
        name = next((n for n in ("pipeline", "pipeline (empirical)") if n in T.get(peer, {})), None)
        if name and name in o:
            J[f"pipeline_s_{peer}"] = s(T[peer], name)
            J[f"pipeline_ratio_vs_{peer}"] = s(o, name) / s(T[peer], name)
            J[f"pipeline_cpu_ratio_vs_{peer}"] = o[name]["cpu_s"] / T[peer][name]["cpu_s"]
            J[f"pipeline_floor_multiple_{peer}"] = s(T[peer], name) / floor
            J[f"peak_rss_mb_{peer}"] = T[peer][name]["peak_rss_mb"]
            J[f"peak_rss_ratio_vs_{peer}"] = o["pipeline (two passes)"]["peak_rss_mb"] / T[peer][name]["peak_rss_mb"]
            J["pipeline_phases"][peer] = T[peer][name].get("phases")
            if "token scores (32 queries)" in T[peer] and "token scores (32 queries)" in o:
                J[f"token_s_{peer}"] = s(T[peer], "token scores (32 queries)")
                J[f"token_ratio_vs_{peer}"] = s(o, "token scores (32 queries)") / s(T[peer], "token scores (32 queries)")
        else:
            J[f"pipeline_ratio_vs_{peer}"] = None
    # parity: empirical Fisher on every side, untimed
    par = {lib: torch.load(work / f"parity_{lib}.pt", weights_only=False) for lib in libs + list(PEERS)
           if (work / f"parity_{lib}.pt").is_file() and lib != "floor"}
    if "infra_lib" in par and "kronfluence" in par:
        po, pk = par["infra_lib"], par["kronfluence"]
        J["pearson_example"] = pearson(po["example"], pk["example"])
        J["paired_example_scores"] = paired_sample(po["example"], pk["example"])
        if "token" in po and "token" in pk:  # ours entry t = position t-1; theirs index = position
            J["pearson_token"] = pearson(po["token"][:, :, 1:], pk["token"][:, :, :args.seq - 1])
            J["max_rel_err_token_sum_vs_example"] = float((po["token"].sum(-1) - po["example"]).abs().max()
                                                          / po["example"].abs().max())
    for peer in PEERS:
        if peer in par and "infra_lib" in par:
            J[f"pearson_example_vs_{peer}"] = pearson(par["infra_lib"]["example"], par[peer]["example"])
            J[f"pearson_token_vs_{peer}"] = pearson(par["infra_lib"]["token"][:, :, 1:], par[peer]["token"][:, :, :args.seq - 1])
    print_table(J, T, libs)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(J, indent=1, default=str))
        tmp.replace(path)
        print(f"wrote {path}")
    return J


def _model_linears(work: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(work / "model"))
    return [(n, mod) for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and ".mlp." in n]


def print_table(J: dict, T: dict, libs: list[str]) -> None:
    print(f"\n{'phase':40s} " + " ".join(f"{lib:>24s}" for lib in libs))
    names = list(dict.fromkeys(n for lib in libs for n, v in T[lib].items() if isinstance(v, dict) and "s" in v))
    for n in names:
        cells = []
        for lib in libs:
            v = T[lib].get(n)
            cells.append(f"{v['s']:7.2f}s cpu {v['cpu_s']:6.1f} {v['peak_rss_mb']:5.0f}MB" if v else " " * 24)
        print(f"{n:40s} " + " ".join(f"{c:>24s}" for c in cells))
    keys = [k for k in J if k.endswith(("_ratio_vs_kronfluence", "_multiple")) or k.startswith(("pipeline_ratio_vs_",
            "token_ratio_vs_", "pearson_"))]
    for key in keys:
        v = J[key]
        print(f"  {key:45s} {v:.4f}" if isinstance(v, float) else f"  {key:45s} {v}")
    print(f"  repeats {J['repeats']}; skipped: {J['skipped'] or 'none'}")


# --------------------------------------------------------------------------- main
def peer_ready(python: str, peer: str) -> str:
    """'' when ``python`` can import the peer, else why not."""
    mod = {"dattri": "dattri_llm", "bergson": "bergson"}[peer]
    try:
        r = subprocess.run([python, "-c", f"import {mod}"], capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python}: {exc}"
    return "" if r.returncode == 0 else f"import {mod} failed: {r.stderr.strip().splitlines()[-1][:200]}"


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="from_pretrained path (default: runs/tiny/model if present, else train one)")
    p.add_argument("--work", default=str(ROOT / "runs/bench/vs_kronfluence"))
    p.add_argument("--json", default=None)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-query", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="training batch size of every library and the floor")
    p.add_argument("--seq", type=int, default=SEQ, help="tokens per synthetic sequence")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per library (>= 3), interleaved round robin")
    p.add_argument("--quick", action="store_true",
                   help="64 training and 8 query sequences of 64 tokens, factors + example scores only")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-python", default=os.environ.get("INFRA_PEER_PYTHON", ""),
                   help="python of a venv with dattri-llm 0.1.0 and Bergson 2.5.1 (peers are skipped without it)")
    p.add_argument("--in-process", action="store_true",
                   help="run every library in this process (smoke tests; peak memory is then not each one's own)")
    p.add_argument("--child", choices=list(CHILDREN), default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--empirical", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; sizes given on the command line win
        for name, value in (("n_train", 64), ("n_query", 8), ("seq", 64)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.child:
        return run_child(args)
    if args.repeats < 3 and not args.in_process:
        p.error("--repeats must be at least 3 (the minimum of 3 repeats is what the bench reports)")
    torch.set_num_threads(args.threads)
    work = prepare(args)
    for old in list((work / "times").glob("*.json")) + list(work.glob("parity_*.pt")):
        old.unlink()
    libs, skipped = ["floor", "infra_lib", "kronfluence"], {}
    if not args.quick and not args.in_process:
        for peer in PEERS:
            why = "no --peer-python given" if not args.peer_python else peer_ready(args.peer_python, peer)
            if why:
                skipped[peer] = why
            else:
                libs.append(peer)
    args.empirical = any(x in libs for x in PEERS)
    base = ["--work", args.work, "--n-train", str(args.n_train), "--n-query", str(args.n_query), "--seq", str(args.seq),
            "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    base += (["--quick"] if args.quick else []) + (["--empirical"] if args.empirical else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           # on shared, oversubscribed cores spinning OpenMP barriers waste whole time slices: wait passively
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "TQDM_DISABLE": "1"}  # progress bars of the peers' passes

    def child(lib: str, extra: list[str]) -> None:
        if args.in_process:
            ns = p.parse_args(base + ["--child", lib] + extra)
            ns.in_process = True
            return run_child(ns)
        py = args.peer_python if lib in PEERS else sys.executable
        subprocess.run([py, __file__, "--child", lib] + extra + base, check=True, env=env)

    for r in range(args.repeats):
        k = r % len(libs)
        for lib in libs[k:] + libs[:k]:  # round robin, the order rotating each repeat
            child(lib, ["--repeat", str(r)])
    for lib in [x for x in libs if x != "floor"]:
        print(f"[{lib}] parity (empirical Fisher, untimed)", flush=True)
        child(lib, ["--parity"])
    return report(args, work, libs, skipped)


if __name__ == "__main__":
    main()
