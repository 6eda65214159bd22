"""The prefix cache of partial tracking against the same code with the cache off.

How to run (2 CPU threads; about 10 minutes on a busy 2-core machine):
    python bench/prefix_cache.py --json runs/bench/prefix_cache.json
At the pretrained setting's size (300 examples of about 220 tokens; about 15 minutes):
    python bench/prefix_cache.py --n-train 300 --seq 222 --prompt 100 --repeats 1 \
        --modes "cache on" "cache off" --json runs/bench/prefix_cache_300.json

Setting: a SmolLM2-135M-shaped Llama (30 layers, hidden 576, MLP 1536, 9 heads / 3 KV heads,
vocabulary 49152, tied embeddings) built randomly from a ``LlamaConfig`` with a fixed seed (real
weights do not change the timing), the MLPs of its last 4 layers tracked, 16 training examples of
128 tokens (a masked prompt of 32, then the response) and 8 queries in two groups. The attribution
stage is what the pretrained setting runs: EK-FAC factors (sampled labels) then example and token
scores of the two group means.

Modes, each in a fresh child process (so no cache survives from one to the next), repeats
interleaved round robin, the minimum of ``--repeats`` reported with CPU-seconds beside it:
- ``cache on``: ``prefix_cache="on"`` (the planner's shared covariance + Λ pass as chosen);
- ``cache off``: ``prefix_cache="off"``, everything else the same;
- ``cache off, two passes``: also ``shared_pass="off"`` (the stage as it ran before either).
Scores of ``cache on`` and ``cache off`` are compared (float32 here; the float64 equality is a test).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"cache on": dict(prefix_cache="on"), "cache off": dict(prefix_cache="off"),
         "cache off, two passes": dict(prefix_cache="off", shared_pass="off")}
TRACKED = r"layers\.(26|27|28|29)\.mlp\."


def build_model(layers: int = 30, seed: int = 0):
    """A SmolLM2-135M-shaped Llama, randomly initialised from ``seed`` (float32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    return LlamaForCausalLM(cfg).float().eval()


def make_examples(n: int, seq: int, prompt: int, prefix: str, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, 49152, (seq,), generator=g)
        labels = ids.clone()
        labels[:prompt] = -100
        out.append({"id": f"{prefix}{i:03d}", "input_ids": ids, "labels": labels})
    return out


def run_child(args) -> None:
    torch.set_num_threads(args.threads)
    import infra_lib.factors as fm
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.scores import ScoreConfig, compute_scores

    model = build_model()
    train = make_examples(args.n_train, args.seq, args.prompt, "tr", 1)
    queries = make_examples(8, args.seq, args.prompt, "q", 2)
    groups = {"math": [q["id"] for q in queries[:4]], "code": [q["id"] for q in queries[4:]]}
    opts = MODES[args.child]
    fc = FactorConfig(modules=TRACKED, batch_size=args.batch_size)
    sc = ScoreConfig(aggregation="mean", groups=groups, token_scores=True, batch_size=args.batch_size)
    warm = make_examples(2, 32, 8, "warm", 3)  # other ids: the warm-up never fills the cache for the timed data
    f = fit_factors(model, warm, fc, progress=False, **opts)
    compute_scores(model, f, warm, warm, ScoreConfig(token_scores=True), progress=False,
                   prefix_cache=opts["prefix_cache"])
    phases: dict[str, float] = {}
    real = fm.run_pass

    def run_pass(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        phases[k["desc"]] = time.perf_counter() - t0
        return out

    fm.run_pass = run_pass
    c0, t0 = sum(os.times()[:2]), time.perf_counter()
    f = fit_factors(model, train, fc, progress=False, **opts)
    t_fit = time.perf_counter() - t0
    s = compute_scores(model, f, queries, train, sc, progress=False, prefix_cache=opts["prefix_cache"])
    wall, cpu = time.perf_counter() - t0, sum(os.times()[:2]) - c0
    R = {"s": wall, "cpu_s": cpu, "fit_s": t_fit, "phases": phases, "plan": f.diagnostics["plan"],
         "score_plan": s.meta["plan"], "loadavg1": os.getloadavg()[0]}
    print(f"  {args.child:24s} {wall:7.2f} s  cpu {cpu:7.2f} s  load {R['loadavg1']:.1f}  "
          + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), flush=True)
    work = Path(args.work)
    (work / "times").mkdir(parents=True, exist_ok=True)
    tag = args.child.replace(" ", "_").replace(",", "")
    (work / "times" / f"{tag}.{args.repeat}.json").write_text(json.dumps(R, indent=1))
    if args.repeat == 0:
        torch.save({"example": s.example, "token": s.token}, work / f"scores_{tag}.pt")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(ROOT / "runs/bench/prefix_cache"))
    p.add_argument("--json", default=None)
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                   help="modes to time (default all; the ratios need 'cache on' and 'cache off')")
    p.add_argument("--child", choices=list(MODES), default=None, help=argparse.SUPPRESS)
    p.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for old in (work / "times").glob("*.json"):
        old.unlink()
    base = ["--work", args.work, "--n-train", str(args.n_train), "--seq", str(args.seq), "--prompt", str(args.prompt),
            "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    modes = list(dict.fromkeys(args.modes))
    if not {"cache on", "cache off"} <= set(modes):
        p.error("--modes must include 'cache on' and 'cache off'")
    for r in range(args.repeats):
        k = r % len(modes)
        for m in modes[k:] + modes[:k]:
            subprocess.run([sys.executable, __file__, "--child", m, "--repeat", str(r)] + base, check=True, env=env)
    best = {}
    for m in modes:
        tag = m.replace(" ", "_").replace(",", "")
        runs = [json.loads(q.read_text()) for q in sorted((work / "times").glob(f"{tag}.*.json"))]
        b = min(runs, key=lambda v: v["s"])
        best[m] = {**b, "s_all": [round(v["s"], 2) for v in runs], "loadavg1_all": [round(v["loadavg1"], 1) for v in runs]}
    on = torch.load(work / "scores_cache_on.pt")
    off = torch.load(work / "scores_cache_off.pt")
    J = {"n_train": args.n_train, "seq": args.seq, "prompt": args.prompt, "tracked": TRACKED, "layers": 30,
         "repeats": args.repeats, "threads": args.threads,
         "stage_s": {m: best[m]["s"] for m in modes}, "stage_cpu_s": {m: best[m]["cpu_s"] for m in modes},
         "cache_ratio": best["cache on"]["s"] / best["cache off"]["s"],
         "cache_cpu_ratio": best["cache on"]["cpu_s"] / best["cache off"]["cpu_s"],
         "cache_and_shared_ratio_vs_two_passes": (best["cache on"]["s"] / best["cache off, two passes"]["s"]
                                                  if "cache off, two passes" in best else None),
         "max_rel_diff_example": float((on["example"] - off["example"]).abs().max() / off["example"].abs().max()),
         "max_rel_diff_token": float((on["token"] - off["token"]).abs().max() / off["token"].abs().max()),
         "timings": best}
    for m in modes:
        print(f"{m:24s} {best[m]['s']:7.2f} s (all {best[m]['s_all']}, load {best[m]['loadavg1_all']})  "
              f"cpu {best[m]['cpu_s']:7.2f} s  phases " + ", ".join(f"{k} {v:.1f}" for k, v in best[m]["phases"].items()))
    two = J["cache_and_shared_ratio_vs_two_passes"]
    print(f"cache on / off: {J['cache_ratio']:.3f} wall, {J['cache_cpu_ratio']:.3f} CPU (target <= 0.5); "
          + (f"on + shared / off two passes: {two:.3f}; " if two is not None else "")
          + f"scores rel. diff example {J['max_rel_diff_example']:.2e}, token {J['max_rel_diff_token']:.2e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(J, indent=1, default=str))
    return J


if __name__ == "__main__":
    main()
