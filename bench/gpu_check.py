"""GPU check: throughput and peak memory of each EK-FAC pass, infra_lib and kronfluence side by side,
then a projection to the paper's setting. Started by ``bench/gpu_check.sh`` (which puts the project
and the kronfluence wheels on the path); ``--cpu --tiny`` runs the same code end to end on a CPU.

Setting (GPU): a randomly initialised Qwen2 with 2 decoder layers at Qwen2.5-1.5B widths (hidden
1536, MLP 8960, 12 heads / 2 key-value heads, tied embeddings), with the vocabulary reduced from
151,936 to 32,768 rows to keep the LM head's share of the run small; bf16 weights and autocast on
both sides, float32 factors; N random sequences of T tokens, each a masked prompt of T/8 tokens then
a response. Tracked: the MLP linears of the last layer (gate/up/down: two 8960-wide gradient
covariances and one 8960-wide activation covariance, the blocks that dominate a 28-layer run),
sampled-label Fisher, two domain-mean queries (mean of 4 queries each).

Each library runs in its own child process, one after the other, within a time budget. Per pass:
wall seconds, tokens per second (covariance, Lambda, scores; the eigendecomposition does not
depend on tokens: seconds and blocks), and peak memory (GPU: ``max_memory_allocated`` per pass;
CPU: the process's peak RSS so far). Our child also times the floor, one plain forward+backward
over the same tokens.

Projection (100k training examples x 4,096 tokens, two domain-mean queries, 28 layers at these
widths, i.e. Qwen2.5-1.5B's depth, all MLP linears tracked): per pass, the untracked part scales
with the layers run (the floor x 28/2) and the tracked part with the layers tracked (pass - floor,
x 28); eigendecompositions x 28, split round-robin over GPUs; passes split over GPUs by torchrun;
plus one all-reduce of the factors per pass at an assumed 100 GB/s. A projection, not a measurement.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GPU = dict(hidden=1536, inter=8960, heads=12, kv=2, layers=2, vocab=32768, n_train=64, seq=512, n_query=8, batch=8)
TINY = dict(hidden=64, inter=256, heads=4, kv=2, layers=2, vocab=512, n_train=16, seq=64, n_query=8, batch=4)
TARGET = dict(n_train=100_000, seq=4096, layers=28, query_rows=2)
PASSES = ("covariance", "eigendecomposition", "lambda", "scores")


def setting(args) -> dict:
    s = dict(TINY if args.tiny else GPU)
    s["device"] = "cpu" if args.cpu else "cuda"
    s["autocast"] = "none" if args.cpu else "bfloat16"
    s["model_dtype"] = "float32" if args.cpu else "bfloat16"
    s["tracked"] = [f"model.layers.{s['layers'] - 1}.mlp.{m}" for m in ("gate_proj", "up_proj", "down_proj")]
    return s


def build(s: dict):
    """The random model (seeded, identical in both children) and the data."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv"],
                      max_position_embeddings=max(4096, s["seq"]), tie_word_embeddings=True, use_sliding_window=False)
    model = Qwen2ForCausalLM(cfg).to(getattr(torch, s["model_dtype"])).eval().to(s["device"])
    g = torch.Generator().manual_seed(1)

    def data(n, prefix):
        out = []
        for i in range(n):
            ids = torch.randint(0, s["vocab"], (s["seq"],), generator=g)
            lab = ids.clone()
            lab[: s["seq"] // 8] = -100
            out.append({"id": f"{prefix}{i:05d}", "input_ids": ids, "labels": lab})
        return out

    return model, data(s["n_train"], "tr"), data(s["n_query"], "q")


class Meter:
    """Wall time and peak memory of one pass."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
        self.s = time.perf_counter() - self.t0
        self.peak = (torch.cuda.max_memory_allocated() if self.cuda
                     else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def record(R: dict, name: str, m: Meter, tokens: int | None) -> None:
    R[name] = {"s": round(m.s, 4), "peak_bytes": int(m.peak)}
    if tokens:
        R[name]["tokens_per_s"] = round(tokens / m.s, 1)
    print(f"  {name:20s} {m.s:8.2f} s  peak {m.peak / 2**30:6.2f} GiB"
          + (f"  {tokens / m.s:10.0f} tok/s" if tokens else ""), flush=True)


# --------------------------------------------------------------------------- children
def child_ours(s: dict) -> dict:
    import torch.nn.functional as F

    import infra_lib.factors as fm
    import infra_lib.scores as sm
    from infra_lib.distributed import ExecConfig
    from infra_lib.factors import FactorConfig, fit_factors
    from infra_lib.scores import ScoreConfig, compute_scores

    model, train, queries = build(s)
    tokens = s["n_train"] * s["seq"]
    R: dict = {}
    run = ExecConfig(device=s["device"], autocast=s["autocast"])
    fcfg = FactorConfig(modules=tuple(s["tracked"]), batch_size=s["batch"])
    groups = {"a": [q["id"] for q in queries[: len(queries) // 2]], "b": [q["id"] for q in queries[len(queries) // 2:]]}
    scfg = ScoreConfig(aggregation="mean", groups=groups, batch_size=s["batch"])
    # warm-up (kernels, allocator, cuSOLVER handle) without the big eigendecompositions
    f = fit_factors(model, train[: s["batch"]], dataclasses.replace(fcfg, strategy="diagonal"), progress=False,
                    execution=run)
    compute_scores(model, f, queries[:2], train[: s["batch"]], ScoreConfig(batch_size=s["batch"]), progress=False,
                   execution=run)
    torch.linalg.eigh(torch.eye(64, dtype=torch.float64, device=s["device"]))

    with Meter(s["device"]) as m:  # floor: plain forward+backward, every weight gradient
        for i in range(0, len(train), s["batch"]):
            b = train[i:i + s["batch"]]
            ids = torch.stack([x["input_ids"] for x in b]).to(s["device"])
            lab = torch.stack([x["labels"] for x in b]).to(s["device"])
            with torch.autocast(s["device"], dtype=torch.bfloat16, enabled=s["autocast"] != "none"):
                logits = model(input_ids=ids, use_cache=False).logits.float()
            F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100,
                            reduction="sum").backward()
        model.zero_grad(set_to_none=True)
    record(R, "floor (fwd+bwd)", m, tokens)

    real_pass, real_eig = fm.run_pass, fm._eigendecompose

    def timed_pass(*a, **k):
        with Meter(s["device"]) as mm:
            out = real_pass(*a, **k)
        record(R, "score pass" if k["desc"] == "scores" else k["desc"], mm, tokens)
        return out

    def timed_eig(*a, **k):
        with Meter(s["device"]) as mm:
            out = real_eig(*a, **k)
        record(R, "eigendecomposition", mm, None)
        R["eigendecomposition"]["blocks"] = len(s["tracked"]) + 1  # gate+up share A: 2 A + 3 S, 3 of them 8960-wide
        return out

    fm.run_pass, sm.run_pass, fm._eigendecompose = timed_pass, timed_pass, timed_eig
    f = fit_factors(model, train, fcfg, progress=False, execution=run)
    with Meter(s["device"]) as m:
        compute_scores(model, f, queries, train, scfg, progress=False, execution=run)
    record(R, "scores", m, tokens)  # query gradients + the score pass (the pass alone is R["scores"] before)
    return R


def child_kronfluence(s: dict, work: Path) -> dict:
    import copy

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from infra_lib.testing import KronfluenceDataset as ListDataset, kronfluence_task as summed_nll_task

    model, train, queries = build(s)
    tokens = s["n_train"] * s["seq"]
    names = list(s["tracked"])

    DS = ListDataset
    task = summed_nll_task(names)
    an = Analyzer(analysis_name="gpu_check", model=prepare_model(copy.deepcopy(model), task), task=task,
                  cpu=s["device"] == "cpu", disable_tqdm=True, output_dir=str(work / "kronfluence"))
    amp = torch.bfloat16 if s["autocast"] != "none" else None
    fa = FactorArguments(strategy="ekfac", amp_dtype=amp)
    bs, tr = s["batch"], DS(train)
    an.fit_all_factors(factors_name="warm", dataset=DS(train[:bs]), per_device_batch_size=bs,
                       factor_args=FactorArguments(strategy="diagonal", amp_dtype=amp), overwrite_output_dir=True)
    torch.linalg.eigh(torch.eye(64, dtype=torch.float64, device=s["device"]))
    R: dict = {}
    for phase, fn in (("covariance", an.fit_covariance_matrices), ("eigendecomposition", an.perform_eigendecomposition),
                      ("lambda", an.fit_lambda_matrices)):
        with Meter(s["device"]) as m:
            if phase == "eigendecomposition":
                fn(factors_name="f", factor_args=fa, overwrite_output_dir=True)
            else:
                fn(factors_name="f", dataset=tr, per_device_batch_size=bs, factor_args=fa, overwrite_output_dir=True)
        record(R, phase, m, None if phase == "eigendecomposition" else tokens)
    half = len(queries) // 2
    with Meter(s["device"]) as m:  # two domain means: aggregated query gradients, one call per domain
        for k, qs in enumerate((queries[:half], queries[half:])):
            an.compute_pairwise_scores(scores_name=f"mean{k}", factors_name="f", query_dataset=DS(qs), train_dataset=tr,
                                       per_device_query_batch_size=len(qs), per_device_train_batch_size=bs,
                                       score_args=ScoreArguments(damping_factor=None, aggregate_query_gradients=True,
                                                                 amp_dtype=amp), overwrite_output_dir=True)
    record(R, "scores", m, tokens)
    return R


# --------------------------------------------------------------------------- projection
def project(ours: dict, s: dict) -> dict:
    """Hours for the target setting on 1 and 8 GPUs from the measured passes (see the module docstring)."""
    tok_m = s["n_train"] * s["seq"]
    tok_t = TARGET["n_train"] * TARGET["seq"]
    floor = ours["floor (fwd+bwd)"]["s"] / tok_m  # s per token, 2 layers run, all weight gradients
    per_tok = {}
    for p in ("covariance", "lambda", "scores"):
        t = ours[p]["s"] / tok_m
        per_tok[p] = floor * TARGET["layers"] / s["layers"] + max(t - floor, 0.0) * TARGET["layers"]
    eig = ours["eigendecomposition"]["s"] * TARGET["layers"]
    # factors of one layer's MLP: A of the hidden (d^2) and of the MLP width (I^2), S of gate, up (I^2), down (d^2)
    layer_bytes = 4 * (2 * s["hidden"] ** 2 + 3 * s["inter"] ** 2 + 3 * s["hidden"] * s["inter"])
    allreduce_s = 2 * layer_bytes * TARGET["layers"] / 100e9
    out = {}
    for n in (1, 8):
        passes = {p: per_tok[p] * tok_t / n for p in per_tok}
        eig_n = eig / n + (allreduce_s if n > 1 else 0.0)
        total = sum(passes.values()) + eig_n + (2 * allreduce_s if n > 1 else 0.0)
        out[f"{n}_gpu"] = {"hours": round(total / 3600, 2), **{f"{p}_h": round(v / 3600, 2) for p, v in passes.items()},
                           "eigendecomposition_h": round(eig_n / 3600, 3)}
    out["setting"] = dict(TARGET, widths=f"hidden {s['hidden']}, MLP {s['inter']} (measured model's)",
                          tokens=tok_t, assumption="passes split evenly over GPUs; 100 GB/s all-reduce")
    return out


# --------------------------------------------------------------------------- driver
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (checks the script end to end)")
    ap.add_argument("--tiny", action="store_true", help="a tiny model and data (seconds on a CPU)")
    ap.add_argument("--json", default=str(ROOT / "runs/bench/gpu_check.json"), help="where the results go")
    ap.add_argument("--budget-s", type=float, default=220.0, help="wall budget of both children together")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--child", choices=("ours", "kronfluence"), help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    s = setting(args)
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible (use --cpu to check the script on a CPU)", file=sys.stderr)
        return 1
    if args.child:
        work = Path(args.child_out).parent
        R = child_ours(s) if args.child == "ours" else child_kronfluence(s, work)
        Path(args.child_out).write_text(json.dumps(R, indent=1))
        return 0

    t0 = time.time()
    out_path = Path(args.json)
    work = out_path.parent / "gpu_check_work"
    work.mkdir(parents=True, exist_ok=True)
    res = {"setting": {k: v for k, v in s.items()}, "vocab_note": "vocabulary reduced from 151,936 (Qwen2.5) to "
           f"{s['vocab']} rows", "torch": torch.__version__, "python": platform.python_version(),
           "device_name": torch.cuda.get_device_name(0) if not args.cpu else platform.processor() or "cpu",
           "threads": torch.get_num_threads(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for lib in ("ours", "kronfluence"):
        left = args.budget_s - (time.time() - t0)
        if lib == "kronfluence":
            try:
                import kronfluence  # noqa: F401
            except ImportError:
                res[lib] = {"error": "kronfluence is not importable (bash bench/prepare_wheels.sh, then rerun)"}
                continue
        if left < 10:
            res[lib] = {"error": f"not run: the {args.budget_s:.0f} s budget was spent"}
            continue
        print(f"[{lib}] ({left:.0f} s left)", flush=True)
        cmd = [sys.executable, __file__, "--child", lib, "--child-out", str(work / f"{lib}.json"), "--json", args.json]
        cmd += (["--cpu"] if args.cpu else []) + (["--tiny"] if args.tiny else [])
        cmd += ["--threads", str(args.threads)] if args.threads else []
        try:
            p = subprocess.run(cmd, timeout=left, capture_output=True, text=True)
            sys.stdout.write(p.stdout)
            if p.returncode:
                res[lib] = {"error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}"}
                sys.stderr.write(p.stderr[-4000:])
                continue
            res[lib] = json.loads((work / f"{lib}.json").read_text())
        except subprocess.TimeoutExpired:
            res[lib] = {"error": f"timed out after {left:.0f} s (budget {args.budget_s:.0f} s)"}
    if "error" not in res["ours"]:
        res["projection"] = project(res["ours"], s)
    res["wall_s"] = round(time.time() - t0, 1)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from infra_lib.io import atomic_write_json

    atomic_write_json(out_path, res)
    print(table(res))
    print(f"-> {out_path} ({res['wall_s']} s)")
    return 0 if "error" not in res["ours"] else 1


def table(res: dict) -> str:
    lines = [f"{'pass':20s} {'ours tok/s':>12s} {'kf tok/s':>12s} {'ours s':>8s} {'kf s':>8s} "
             f"{'ours peak':>10s} {'kf peak':>10s}"]
    o, k = res.get("ours", {}), res.get("kronfluence", {})
    for p in ("floor (fwd+bwd)",) + PASSES:
        a, b = o.get(p, {}), k.get(p, {})
        f = (lambda d, key, fmt: format(d[key], fmt) if key in d else "-")
        lines.append(f"{p:20s} {f(a, 'tokens_per_s', '12.0f'):>12s} {f(b, 'tokens_per_s', '12.0f'):>12s} "
                     f"{f(a, 's', '8.2f'):>8s} {f(b, 's', '8.2f'):>8s} "
                     f"{(format(a['peak_bytes'] / 2**30, '.2f') + ' GiB') if 'peak_bytes' in a else '-':>10s} "
                     f"{(format(b['peak_bytes'] / 2**30, '.2f') + ' GiB') if 'peak_bytes' in b else '-':>10s}")
    for lib in ("ours", "kronfluence"):
        if "error" in res.get(lib, {}):
            lines.append(f"{lib}: {res[lib]['error']}")
    if "projection" in res:
        pr = res["projection"]
        lines.append(f"projection ({TARGET['n_train']:,} x {TARGET['seq']} tokens, 2 domain-mean queries, "
                     f"{TARGET['layers']} layers): 1 GPU {pr['1_gpu']['hours']} h, 8 GPUs {pr['8_gpu']['hours']} h")
        if res["setting"]["device"] == "cpu":
            lines.append("  (from CPU measurements of the measured model's widths: this checks the arithmetic, "
                         "it is not a GPU figure)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
