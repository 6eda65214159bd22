"""infra_lib vs kronfluence 1.0.1: EK-FAC factors, example scores and token scores, side by side.

How to run (2 CPU threads per library, a few minutes):
    python bench/vs_kronfluence.py                       # trains/caches the tiny-shaped model under runs/bench/
    python bench/vs_kronfluence.py --model runs/tiny/model --json runs/tiny/bench.json
    python bench/vs_kronfluence.py --quick --model runs/tiny/model --json ...   # ~1 min: 64 x 64 tokens,
                                                 # factors + example scores only (the pipeline's stage)

Setting: a Qwen2 of the tiny model's shape (hidden 128, 4 layers, MLP 512, vocab 512), randomly
initialised and trained for a few hundred steps on a synthetic topic-Markov language (or loaded with
``--model``); 512 training and 32 query sequences of 128 tokens, each a masked prompt of 16-31 tokens
then a response in 4 segments; queries split into two "domains" (topic < 4 or not). Tracked
modules: the MLP linears on both sides.

Each library runs in its own child process (so peak RSS is its own), one after the other, and
measures the floor (a plain forward+backward over the same tokens, all weight gradients, in the same
process). Timings use each library's default curvature (sampled labels); parity (Pearson) uses the
empirical Fisher on both sides with kronfluence's heuristic damping (0.1 x mean Lambda) on both.
Phases: EK-FAC factors (covariance, eigendecomposition, Lambda) + example scores for 32 queries
(the pipeline), token scores for 32 full-rank queries, for two domain-mean queries, and for a
rank-r query store. Ratios are ours / theirs. The JSON also holds a seeded sample of the paired
example scores (empirical Fisher, both sides) for the validation chapter's scatter; ``--quick`` (the
pipeline's ``ensure_bench`` stage) times only the EK-FAC pipeline (factors + example scores).
"""
from __future__ import annotations

import argparse
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
        self._stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def reset(self):
        self.peak = self.proc.memory_info().rss


def timed(R: dict, mem: PeakRSS, name: str, fn, repeat: int = 1):
    """Wall and CPU seconds of ``fn`` (min over repeats), peak RSS while it ran."""
    walls, cpus, out = [], [], None
    mem.reset()
    for _ in range(repeat):
        c0, t0 = sum(os.times()[:2]), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(sum(os.times()[:2]) - c0)
    R[name] = {"s": min(walls), "all": [round(w, 3) for w in walls], "cpu_s": min(cpus),
               "peak_rss_mb": mem.peak / 2**20, "loadavg1": os.getloadavg()[0]}
    print(f"  {name:34s} {min(walls):8.2f} s  cpu {min(cpus):8.2f} s  peak RSS {mem.peak / 2**20:7.0f} MB"
          f"  load {os.getloadavg()[0]:.1f}", flush=True)
    return out


def floor_pass(model, train, bs):
    """Plain forward+backward over the same tokens: summed response NLL, every weight gradient."""
    import copy

    import torch.nn.functional as F

    m = copy.deepcopy(model).train()
    for p in m.parameters():
        p.requires_grad_(True)
    for i in range(0, len(train), bs):
        b = train[i:i + bs]
        ids = torch.stack([x["input_ids"] for x in b])
        lab = torch.stack([x["labels"] for x in b])
        logits = m(input_ids=ids, use_cache=False).logits.float()
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100,
                        reduction="sum").backward()


def child_ours(args, model, train, queries, groups, mem, R):
    import infra_lib.factors as fm
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.scores import ScoreConfig, compute_scores

    phases = {}
    real_pass, real_eig = fm.run_pass, fm._eigendecompose

    def run_pass(*a, **k):
        t0 = time.perf_counter()
        out = real_pass(*a, **k)
        phases[k["desc"]] = time.perf_counter() - t0
        return out

    def eig(*a, **k):
        t0 = time.perf_counter()
        out = real_eig(*a, **k)
        phases["eigendecomposition"] = time.perf_counter() - t0
        return out

    fm.run_pass, fm._eigendecompose = run_pass, eig
    bs = args.batch_size
    kw = dict(progress=False)
    # warm-up on a slice (first MKL / allocator paths)
    f = fit_factors(model, train[:bs], FactorConfig(batch_size=bs), **kw)
    compute_scores(model, f, queries[:4], train[:bs], ScoreConfig(batch_size=bs, token_scores=True), **kw)
    f = timed(R, mem, "factors (sampled)", lambda: fit_factors(model, train, FactorConfig(batch_size=bs), **kw))
    R["factors (sampled)"]["phases"] = dict(phases)
    s = timed(R, mem, "example scores (32 queries)",
              lambda: compute_scores(model, f, queries, train, ScoreConfig(batch_size=bs), **kw))
    out = {"example_sampled": s.example}
    fe = timed(R, mem, "factors (empirical)",
               lambda: fit_factors(model, train, FactorConfig(batch_size=bs, fisher="empirical"), **kw))
    s = timed(R, mem, "example scores (empirical)",
              lambda: compute_scores(model, fe, queries, train, ScoreConfig(batch_size=bs), **kw))
    out["example"] = s.example
    if args.quick:
        return out
    s = timed(R, mem, "token scores (32 queries)",
              lambda: compute_scores(model, fe, queries, train, ScoreConfig(batch_size=bs, token_scores=True), **kw))
    out["token"] = torch.stack([s.tokens_of(i) for i in range(len(train))], 1)  # (Q, N, T)
    out["token_example"] = s.example
    mean = dict(aggregation="mean", groups=groups, batch_size=bs)
    s = timed(R, mem, "example scores (2 domain means)",
              lambda: compute_scores(model, fe, queries, train, ScoreConfig(**mean), **kw))
    out["example_mean"] = s.example
    s = timed(R, mem, "token scores (2 domain means)",
              lambda: compute_scores(model, fe, queries, train, ScoreConfig(token_scores=True, **mean), **kw))
    out["token_mean"] = torch.stack([s.tokens_of(i) for i in range(len(train))], 1)
    s = timed(R, mem, f"token scores (rank {args.rank})",
              lambda: compute_scores(model, fe, queries, train,
                                     ScoreConfig(batch_size=bs, token_scores=True, rank=args.rank), **kw))
    out["token_rank"] = torch.stack([s.tokens_of(i) for i in range(len(train))], 1)
    out["example_rank"] = s.example
    return out


def child_kronfluence(args, model, train, queries, groups, mem, R, work):
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from infra_lib.testing import KronfluenceDataset as ListDataset, kronfluence_task as summed_nll_task

    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".mlp." in n]

    DS = ListDataset
    task = summed_nll_task(names)
    an = Analyzer(analysis_name="bench", model=prepare_model(copy.deepcopy(model), task), task=task, cpu=True,
                  disable_tqdm=True, output_dir=str(work / "kronfluence"))
    bs = args.kf_batch_size
    tr, qs = DS(train), DS(queries)

    def fit(name, empirical):
        fa = FactorArguments(strategy="ekfac", use_empirical_fisher=empirical)
        t = {}
        for phase, fn in (("covariance", an.fit_covariance_matrices), ("eigendecomposition", an.perform_eigendecomposition),
                          ("lambda", an.fit_lambda_matrices)):
            t0 = time.perf_counter()
            if phase == "eigendecomposition":
                fn(factors_name=name, factor_args=fa, overwrite_output_dir=True)
            else:
                fn(factors_name=name, dataset=tr, per_device_batch_size=bs, factor_args=fa, overwrite_output_dir=True)
            t[phase] = time.perf_counter() - t0
        return t

    def scores(name, factors, query_ds=qs, **sa):
        an.compute_pairwise_scores(scores_name=name, factors_name=factors, query_dataset=query_ds, train_dataset=tr,
                                   per_device_query_batch_size=len(query_ds), per_device_train_batch_size=bs,
                                   score_args=ScoreArguments(**{"damping_factor": None, **sa}),
                                   overwrite_output_dir=True)  # None: 0.1 x mean(Lambda), as ours (its default is 1e-8)
        return an.load_pairwise_scores(name)["all_modules"]

    # warm-up on a slice
    an.fit_all_factors(factors_name="warm", dataset=DS(train[:bs]), per_device_batch_size=bs,
                       factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
    an.compute_pairwise_scores(scores_name="warm", factors_name="warm", query_dataset=DS(queries[:4]),
                               train_dataset=DS(train[:bs]), per_device_query_batch_size=4,
                               per_device_train_batch_size=bs, overwrite_output_dir=True)
    ph = timed(R, mem, "factors (sampled)", lambda: fit("sampled", False))
    R["factors (sampled)"]["phases"] = ph
    out = {"example_sampled": timed(R, mem, "example scores (32 queries)", lambda: scores("ex_s", "sampled"))}
    timed(R, mem, "factors (empirical)", lambda: fit("empirical", True))
    out["example"] = timed(R, mem, "example scores (empirical)", lambda: scores("ex_e", "empirical"))
    if args.quick:
        return out
    out["token"] = timed(R, mem, "token scores (32 queries)",
                         lambda: scores("tok", "empirical", compute_per_token_scores=True))
    by_dom = {d: DS([q for q in queries if q["domain"] == d]) for d in groups}
    mean_ex, mean_tok = {}, {}

    def mean_scores(per_token):
        res = {}
        for d, ds in by_dom.items():
            res[d] = scores(f"mean_{d}_{int(per_token)}", "empirical", query_ds=ds, aggregate_query_gradients=True,
                            compute_per_token_scores=per_token) / len(ds)
        return torch.cat([res[d] for d in groups])

    out["example_mean"] = timed(R, mem, "example scores (2 domain means)", lambda: mean_scores(False))
    out["token_mean"] = timed(R, mem, "token scores (2 domain means)", lambda: mean_scores(True))
    out["token_rank"] = timed(R, mem, f"token scores (rank {args.rank})",
                              lambda: scores("rank", "empirical", compute_per_token_scores=True,
                                             query_gradient_low_rank=args.rank))
    del mean_ex, mean_tok
    return out


def run_child(args):
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers import AutoModelForCausalLM

    work = Path(args.work)
    data = torch.load(work / "data.pt", weights_only=False)
    train, queries = data["train"], data["queries"]
    model = AutoModelForCausalLM.from_pretrained(work / "model").float().eval()
    groups = {d: [q["id"] for q in queries if q["domain"] == d] for d in ("math", "code")}
    mem = PeakRSS()
    R: dict = {"threads": torch.get_num_threads()}
    print(f"[{args.child}] floor, then phases", flush=True)
    floor_pass(model, train[:args.batch_size], args.batch_size)  # warm-up
    timed(R, mem, "floor (fwd+bwd)", lambda: floor_pass(model, train, args.batch_size), repeat=2)
    if args.child == "ours":
        out = child_ours(args, model, train, queries, groups, mem, R)
    else:
        out = child_kronfluence(args, model, train, queries, groups, mem, R, work)
    R["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(out, work / f"out_{args.child}.pt")
    path = work / f"timing_{args.child}.json"
    if args.round > 0 and path.is_file():  # later rounds: keep each phase's fastest round
        old = json.loads(path.read_text())
        for k, v in R.items():
            if isinstance(v, dict) and k in old and old[k]["s"] < v["s"]:
                R[k] = old[k]
        R["ru_maxrss_mb"] = max(R["ru_maxrss_mb"], old.get("ru_maxrss_mb", 0))
    path.write_text(json.dumps(R, indent=1))


# --------------------------------------------------------------------------- report
def pearson(x, y):
    return float(torch.corrcoef(torch.stack([x.flatten().double(), y.flatten().double()]))[0, 1])


def flops(n_tok, n_seq, q, shapes):
    dd = sum(o * i for o, i in shapes)
    return {"example": 2 * n_tok * dd + 2 * n_seq * q * dd, "token": 2 * n_tok * q * dd}


def paired_sample(x: torch.Tensor, y: torch.Tensor, n: int = 4096, seed: int = 0) -> dict:
    """A seeded sample of at most ``n`` paired entries of two equal-shape score tensors (for a scatter)."""
    x, y = x.flatten().double(), y.flatten().double()
    idx = torch.randperm(x.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return {"ours": x[idx].tolist(), "kronfluence": y[idx].tolist()}


def report_quick(args, work: Path) -> dict:
    """The quick mode's JSON: the EK-FAC pipeline (factors + example scores) of both libraries against
    the floor, and parity of example scores (empirical Fisher both sides) with a sample of the pairs."""
    tim = {c: json.loads((work / f"timing_{c}.json").read_text()) for c in ("ours", "kronfluence")}
    out = {c: torch.load(work / f"out_{c}.pt", weights_only=False) for c in ("ours", "kronfluence")}
    o, k = tim["ours"], tim["kronfluence"]
    s = lambda R, name: R[name]["s"]  # noqa: E731
    pipe_o = s(o, "factors (sampled)") + s(o, "example scores (32 queries)")
    pipe_k = s(k, "factors (sampled)") + s(k, "example scores (32 queries)")
    ko, kk = out["ours"], out["kronfluence"]
    J = {
        "quick": True, "model": args.model, "n_train": args.n_train, "n_query": args.n_query, "seq": args.seq,
        "threads": o["threads"],
        "pipeline_s_ours": pipe_o, "pipeline_s_kronfluence": pipe_k, "pipeline_ratio_vs_kronfluence": pipe_o / pipe_k,
        "floor_s_ours": s(o, "floor (fwd+bwd)"), "floor_s_kronfluence": s(k, "floor (fwd+bwd)"),
        "pipeline_floor_multiple": pipe_o / s(o, "floor (fwd+bwd)"),
        "kronfluence_pipeline_floor_multiple": pipe_k / s(k, "floor (fwd+bwd)"),
        "pearson_example": pearson(ko["example"], kk["example"]),
        "pearson_example_sampled_labels": pearson(ko["example_sampled"], kk["example_sampled"]),
        "paired_example_scores": paired_sample(ko["example"], kk["example"]),
        "timings": {"infra_lib": o, "kronfluence": k},
    }
    print(f"EK-FAC pipeline {pipe_o:.2f} s vs {pipe_k:.2f} s (ratio {J['pipeline_ratio_vs_kronfluence']:.3f}); "
          f"floor multiple {J['pipeline_floor_multiple']:.2f} vs {J['kronfluence_pipeline_floor_multiple']:.2f}; "
          f"Pearson (empirical Fisher) {J['pearson_example']:.6f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(J, indent=1))
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return J


def report(args, work: Path):
    tim = {c: json.loads((work / f"timing_{c}.json").read_text()) for c in ("ours", "kronfluence")}
    out = {c: torch.load(work / f"out_{c}.pt", weights_only=False) for c in ("ours", "kronfluence")}
    o, k = tim["ours"], tim["kronfluence"]
    s = lambda R, name: R[name]["s"]  # noqa: E731
    rows = ["factors (sampled)", "example scores (32 queries)", "factors (empirical)", "example scores (empirical)",
            "token scores (32 queries)", "example scores (2 domain means)", "token scores (2 domain means)",
            f"token scores (rank {args.rank})"]
    print("\nphase                               infra_lib  kronfluence   ratio   peak RSS MB (ours / theirs)"
          "   CPU-s ratio")
    print(f"{'floor (fwd+bwd, same tokens)':34s} {s(o, 'floor (fwd+bwd)'):9.2f}  {s(k, 'floor (fwd+bwd)'):9.2f}")
    for r in rows:
        print(f"{r:34s} {s(o, r):9.2f}  {s(k, r):9.2f}  {s(o, r) / s(k, r):7.3f}   "
              f"{o[r]['peak_rss_mb']:6.0f} / {k[r]['peak_rss_mb']:6.0f}   {o[r]['cpu_s'] / k[r]['cpu_s']:7.3f}")
    for c, R in (("infra_lib", o), ("kronfluence", k)):
        print(f"  {c} factor phases: " + ", ".join(f"{p} {v:.2f} s" for p, v in R["factors (sampled)"]["phases"].items()))
    pipe_o = s(o, "factors (sampled)") + s(o, "example scores (32 queries)")
    pipe_k = s(k, "factors (sampled)") + s(k, "example scores (32 queries)")
    ko, kk = out["ours"], out["kronfluence"]
    T = args.seq
    tok_o = ko["token"][:, :, 1:]
    tok_k = kk["token"][:, :, :T - 1]
    tokm_o, tokm_k = ko["token_mean"][:, :, 1:], kk["token_mean"][:, :, :T - 1]
    tokr_o, tokr_k = ko["token_rank"][:, :, 1:], kk["token_rank"][:, :, :T - 1]
    n_tok = sum(int((x["labels"] != -100).sum()) for x in torch.load(work / "data.pt", weights_only=False)["train"])
    fl = flops(args.n_train * args.seq, args.n_train, args.n_query, [(512, 128), (512, 128), (128, 512)] * 4)
    J = {
        "pipeline_s_ours": pipe_o, "pipeline_s_kronfluence": pipe_k,
        "pipeline_ratio_vs_kronfluence": pipe_o / pipe_k,
        "floor_s_ours": s(o, "floor (fwd+bwd)"), "floor_s_kronfluence": s(k, "floor (fwd+bwd)"),
        "pipeline_floor_multiple": pipe_o / s(o, "floor (fwd+bwd)"),
        "pipeline_cpu_ratio_vs_kronfluence": (o["factors (sampled)"]["cpu_s"] + o["example scores (32 queries)"]["cpu_s"])
        / (k["factors (sampled)"]["cpu_s"] + k["example scores (32 queries)"]["cpu_s"]),
        "token_cpu_ratio_vs_kronfluence": o["token scores (32 queries)"]["cpu_s"] / k["token scores (32 queries)"]["cpu_s"],
        "kronfluence_pipeline_floor_multiple": pipe_k / s(k, "floor (fwd+bwd)"),
        "token_ratio_vs_kronfluence": s(o, "token scores (32 queries)") / s(k, "token scores (32 queries)"),
        "token_over_example_ratio_aggregated": s(o, "token scores (2 domain means)") / s(o, "example scores (2 domain means)"),
        "token_aggregated_over_example_32_queries": s(o, "token scores (2 domain means)") / s(o, "example scores (32 queries)"),
        "token_aggregated_ratio_vs_kronfluence": s(o, "token scores (2 domain means)") / s(k, "token scores (2 domain means)"),
        "token_rank_ratio_vs_kronfluence": s(o, f"token scores (rank {args.rank})") / s(k, f"token scores (rank {args.rank})"),
        "token_rank_over_example": s(o, f"token scores (rank {args.rank})") / s(o, "example scores (32 queries)"),
        "flop_predicted_token_over_example_32": fl["token"] / fl["example"],
        "measured_token_over_example_32": s(o, "token scores (32 queries)") / s(o, "example scores (32 queries)"),
        "token_gflop_per_s_ours": fl["token"] / 1e9 / s(o, "token scores (32 queries)"),
        "token_gflop_per_s_kronfluence": fl["token"] / 1e9 / s(k, "token scores (32 queries)"),
        "peak_rss_mb_ours": o["ru_maxrss_mb"], "peak_rss_mb_kronfluence": k["ru_maxrss_mb"],
        "peak_rss_ratio_vs_kronfluence": o["ru_maxrss_mb"] / k["ru_maxrss_mb"],
        "pearson_example": pearson(ko["example"], kk["example"]),
        "paired_example_scores": paired_sample(ko["example"], kk["example"]),
        "pearson_token": pearson(tok_o, tok_k),
        "pearson_example_sampled_labels": pearson(ko["example_sampled"], kk["example_sampled"]),
        "pearson_example_mean": pearson(ko["example_mean"], kk["example_mean"]),
        "pearson_token_mean": pearson(tokm_o, tokm_k),
        "pearson_token_rank": pearson(tokr_o, tokr_k),
        "max_rel_err_token_sum_vs_example": float((ko["token"].sum(-1) - ko["token_example"]).abs().max()
                                                  / ko["token_example"].abs().max()),
        "n_response_tokens": n_tok, "threads": o["threads"],
        "timings": {"infra_lib": o, "kronfluence": k},
    }
    print(f"\nEK-FAC pipeline (factors + example scores, sampled labels): {pipe_o:.2f} s vs {pipe_k:.2f} s "
          f"-> ratio {J['pipeline_ratio_vs_kronfluence']:.3f} (target <= 0.6)")
    print(f"pipeline / floor: infra_lib {J['pipeline_floor_multiple']:.2f}x (target <= 4), "
          f"kronfluence {J['kronfluence_pipeline_floor_multiple']:.2f}x")
    print(f"token scores, 32 full-rank queries: ratio {J['token_ratio_vs_kronfluence']:.3f} (target <= 0.4); "
          f"{J['token_gflop_per_s_ours']:.0f} vs {J['token_gflop_per_s_kronfluence']:.0f} GFLOP/s on the bilinear forms")
    print(f"token / example (32 queries): measured {J['measured_token_over_example_32']:.2f}, "
          f"FLOP-predicted (score matmuls only) {J['flop_predicted_token_over_example_32']:.2f}")
    print(f"token scores, 2 domain means / our example pass (2 means): {J['token_over_example_ratio_aggregated']:.3f} "
          f"(target <= 1.3); / example pass (32 queries): {J['token_aggregated_over_example_32_queries']:.3f}")
    print(f"token scores rank {args.rank}: ratio vs kronfluence {J['token_rank_ratio_vs_kronfluence']:.3f}, "
          f"/ our example pass {J['token_rank_over_example']:.3f}")
    print(f"peak RSS: {o['ru_maxrss_mb']:.0f} MB vs {k['ru_maxrss_mb']:.0f} MB -> {J['peak_rss_ratio_vs_kronfluence']:.3f}")
    print(f"Pearson (empirical Fisher both sides): example {J['pearson_example']:.6f}, token {J['pearson_token']:.6f}; "
          f"domain means {J['pearson_example_mean']:.6f} / {J['pearson_token_mean']:.6f}; "
          f"rank {args.rank} tokens {J['pearson_token_rank']:.4f}; sampled labels (example) {J['pearson_example_sampled_labels']:.4f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(J, indent=1))
        print(f"wrote {args.json}")
    return J


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="from_pretrained path (default: runs/tiny/model if present, else train one)")
    p.add_argument("--work", default=str(ROOT / "runs/bench/vs_kronfluence"))
    p.add_argument("--json", default=None)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-query", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=16, help="infra_lib batch size (and the floor's)")
    p.add_argument("--kf-batch-size", type=int, default=32)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--seq", type=int, default=SEQ, help="tokens per synthetic sequence")
    p.add_argument("--quick", action="store_true",
                   help="64 training and 8 query sequences of 64 tokens, factors + example scores only (about a minute)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the children this many times; each phase keeps its fastest round (shared CPUs)")
    p.add_argument("--only", choices=["ours", "kronfluence"], default=None, help="run one child, then report if both exist")
    p.add_argument("--in-process", action="store_true",
                   help="run both libraries in this process, one after the other (saves process starts; "
                        "peak memory is then not each library's own)")
    p.add_argument("--child", choices=["ours", "kronfluence"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; sizes given on the command line win
        for name, value in (("n_train", 64), ("n_query", 8), ("seq", 64)):
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
        args.rounds = 1
    if args.child:
        return run_child(args)
    torch.set_num_threads(args.threads)
    work = prepare(args)
    passthrough = ["--work", args.work, "--n-train", str(args.n_train), "--n-query", str(args.n_query),
                   "--batch-size", str(args.batch_size), "--kf-batch-size", str(args.kf_batch_size),
                   "--rank", str(args.rank), "--threads", str(args.threads), "--seq", str(args.seq)]
    passthrough += ["--quick"] if args.quick else []
    for r in range(args.rounds):
        for c in ([args.only] if args.only else ["ours", "kronfluence"]):
            print(f"[{c}] child process, round {r + 1}/{args.rounds}", flush=True)
            if args.in_process:
                run_child(argparse.Namespace(**{**vars(args), "child": c, "round": r}))
                continue
            subprocess.run([sys.executable, __file__, "--child", c, "--round", str(r)] + passthrough, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(args.threads),
                                # on shared, oversubscribed cores, spinning OpenMP barriers waste whole
                                # time slices (10x+ slowdowns seen here); passive waiting is fair to both
                                "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")})
    if all((work / f"timing_{c}.json").is_file() for c in ("ours", "kronfluence")):
        (report_quick if args.quick else report)(args, work)


if __name__ == "__main__":
    main()
