"""Command line end to end: fit-factors -> score -> report on a micro Qwen2 saved with save_pretrained
(and at Qwen2.5-0.5B widths), scores equal to the library's, and the errors users meet first.

Run: ``pytest tests/lib/test_cli.py -q`` (about 40 s on 2 cores; the 0.5B-width test is most of it).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra_lib import cli
from infra_lib.factors import FactorConfig, fit_factors, load_factors
from infra_study.model import ModelConfig, build_model, load_model
from infra_lib.records import load_records
from infra_lib.scores import ScoreConfig, compute_scores, load_scores
from infra_study.tokenizer import load_tokenizer, train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLE = ROOT / "data" / "sample.jsonl"
TRAIN_IDX = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 18]
QUERY_IDX = [8, 9, 15, 16]


def _write(path: Path, lines) -> Path:
    path.write_text("".join(l if l.endswith("\n") else l + "\n" for l in lines))
    return path


def _save_model(folder: Path, tok, cfg: ModelConfig) -> Path:
    model = build_model(cfg, tok)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A micro Qwen2 + BPE tokenizer (320 tokens) saved like a real checkpoint, and JSONL splits."""
    d = tmp_path_factory.mktemp("cli")
    lines = SAMPLE.read_text().splitlines()
    recs = load_records(SAMPLE)
    tok = train_tokenizer(recs, 320, d / "tok")
    _save_model(d / "micro", tok, ModelConfig(hidden_size=32, num_layers=2, intermediate_size=64, num_heads=2,
                                              num_kv_heads=2))
    _write(d / "train.jsonl", [lines[i] for i in TRAIN_IDX])
    _write(d / "queries.jsonl", [lines[i] for i in QUERY_IDX])
    return d


def run(argv, capsys):
    """cli.main in this process (the CLI's --threads would change the session's thread count; the
    one_thread fixture restores it)."""
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def common(d: Path, model="micro"):
    return ["--model", d / model, "--train", d / "train.jsonl", "--max-length", 512, "--no-progress"]


def test_end_to_end_equals_the_library(setup, capsys):
    """fit-factors -> score (mean by domain, token + segment scores) -> report; factors and scores equal
    calling fit_factors / compute_scores directly on the same encoded data."""
    d = setup
    rc, _, err = run(["fit-factors", *common(d), "--out", d / "f", "--batch-size", 4], capsys)
    assert rc == 0, err
    assert "memory plan" in err and "stored factors" in err
    rc, _, err = run(["score", *common(d), "--factors", d / "f", "--queries", d / "queries.jsonl", "--out", d / "s",
                      "--aggregation", "mean", "--groups", "domain", "--token-scores", "--segment-scores",
                      "--batch-size", 5], capsys)
    assert rc == 0, err
    s = load_scores(d / "s")
    assert s.row_ids == ["math", "code"] and s.token is not None and s.segment is not None

    # the library, called directly on the same inputs
    from infra_lib.data import encode_records

    model, tok = load_model(d / "micro"), load_tokenizer(d / "micro")
    train = encode_records(load_records(d / "train.jsonl"), tok, 512)
    qrecs = load_records(d / "queries.jsonl")
    queries = encode_records(qrecs, tok, 512)
    f = fit_factors(model, train, FactorConfig(batch_size=4), progress=False)
    f_cli = load_factors(d / "f", model=model)
    assert f_cli.config == f.config and set(f_cli.tensors) == set(f.tensors)
    for k, t in f.tensors.items():
        torch.testing.assert_close(f_cli.tensors[k], t, rtol=1e-5, atol=1e-6 * float(t.abs().max()) + 1e-12)
    groups = {"math": [r["id"] for r in qrecs if r["domain"] == "math"],
              "code": [r["id"] for r in qrecs if r["domain"] == "code"]}
    lib = compute_scores(model, f_cli, queries, train, ScoreConfig(aggregation="mean", groups=groups, token_scores=True,
                                                                   segment_scores=True, batch_size=5), progress=False)
    torch.testing.assert_close(s.example, lib.example, rtol=1e-5, atol=1e-6 * float(lib.example.abs().max()))
    torch.testing.assert_close(s.token, lib.token, rtol=1e-5, atol=1e-6 * float(lib.token.abs().max()))
    assert s.train_ids == lib.train_ids

    rc, out, err = run(["report", "--scores", d / "s", "--top-k", 3, "--out", d / "r.md", "--json", d / "r.json",
                        "--heatmap", d / "h.html", "--heatmap-k", 2], capsys)
    assert rc == 0, err
    assert "== row math ==" in out and "top 3 helpful" in out and "mean score by training domain x difficulty" in out
    rep = json.loads((d / "r.json").read_text())
    best = rep["rows"][0]["helpful"]
    assert [e["score"] for e in best] == sorted((e["score"] for e in best), reverse=True)
    top = int(torch.argmax(s.example[0]))
    assert best[0]["id"] == s.train_ids[top]
    assert rep["rows"][0]["harmful"][0]["id"] == s.train_ids[int(torch.argmin(s.example[0]))]
    cell = rep["mean_by_domain_difficulty"][0]["buckets"]["math L1"]
    idx = [i for i, t in enumerate(s.train_ids) if t.startswith("math-1-")]
    assert cell["n"] == len(idx) and cell["mean"] == pytest.approx(float(s.example[0, idx].double().mean()), rel=1e-6)
    assert "| score | id |" in (d / "r.md").read_text()
    html = (d / "h.html").read_text()
    assert html.count('class="infra-heatmap ') == 4 and "top helpful training CoTs" in html


def test_per_query_rank_and_damping_options(setup, capsys):
    d = setup
    if not (d / "f" / "factors.json").is_file():
        assert run(["fit-factors", *common(d), "--out", d / "f", "--batch-size", 4], capsys)[0] == 0
    rc, _, err = run(["score", *common(d), "--factors", d / "f", "--queries", d / "queries.jsonl", "--out", d / "s2",
                      "--rank", 2, "--damping", 0.5], capsys)
    assert rc == 0, err
    s = load_scores(d / "s2")
    assert s.row_ids == [json.loads(l)["id"] for l in (d / "queries.jsonl").read_text().splitlines()]
    assert s.config.rank == 2


def test_every_config_field_is_an_option_with_its_docstring():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction)).choices
    for cmd, cls, skip in (("fit-factors", FactorConfig, ()), ("score", ScoreConfig, ("groups",))):
        opts = {o: a for a in subs[cmd]._actions for o in a.option_strings}
        for name, doc in cli.field_docs(cls).items():
            if name in skip:
                continue
            act = opts["--" + name.replace("_", "-")]
            assert doc.replace("``", "").replace("%", "%%") in act.help, (cmd, name)
    assert "--groups" in {o for a in subs["score"]._actions for o in a.option_strings}


def test_help_from_module_and_console_script():
    out = subprocess.run([sys.executable, "-m", "infra_lib", "score", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0 and "--aggregation" in out.stdout and "--token-scores" in out.stdout
    assert "--profile NAME" in out.stdout and "paper" in out.stdout  # read before argparse, still listed
    script = Path(sys.executable).parent / "infra"
    if script.exists():
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "fit-factors" in out.stdout


def test_errors_before_expensive_work(setup, capsys, tmp_path):
    d = setup
    lines = (d / "train.jsonl").read_text().splitlines()
    # a bad JSON line, named by file and line
    bad = _write(tmp_path / "bad.jsonl", lines[:2] + ["{not json"] + lines[3:])
    rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", bad, "--out", tmp_path / "f"], capsys)
    assert rc == 1 and f"{bad}:3" in err and "bad JSON" in err
    # a bad field, named
    rec = json.loads(lines[0])
    rec["difficulty"] = 9
    bad = _write(tmp_path / "bad2.jsonl", [json.dumps(rec)])
    rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", bad, "--out", tmp_path / "f"], capsys)
    assert rc == 1 and f"{bad}:1: field 'difficulty'" in err
    # missing files
    rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", tmp_path / "nope.jsonl", "--out", tmp_path / "f"],
                     capsys)
    assert rc == 1 and "no such file" in err
    rc, _, err = run(["fit-factors", *common(d, "nope"), "--out", tmp_path / "f"], capsys)
    assert rc == 1 and "--model" in err
    rc, _, err = run(["score", *common(d), "--factors", tmp_path, "--queries", d / "queries.jsonl", "--out", tmp_path / "s"],
                     capsys)
    assert rc == 1 and "no factors there" in err
    # unknown option and bad values
    with pytest.raises(SystemExit) as ex:
        cli.main(["fit-factors", "--model", "m", "--train", "t", "--out", "o", "--bogus"])
    assert ex.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ex:
        cli.main(["fit-factors", "--model", "m", "--train", "t", "--out", "o", "--strategy", "exact"])
    assert ex.value.code == 2
    rc, _, err = run(["fit-factors", *common(d), "--out", tmp_path / "f", "--damping-scale", -1], capsys)
    assert rc == 1 and "damping_scale must be > 0" in err
    rc, _, err = run(["fit-factors", *common(d), "--out", tmp_path / "f", "--modules", "nothing_like_this"], capsys)
    assert rc == 1 and "matches no nn.Linear" in err
    assert not (tmp_path / "f").exists()  # nothing was started


def test_mismatched_tokenizer_is_refused(setup, capsys, tmp_path):
    d = setup
    big = train_tokenizer(load_records(SAMPLE), 400, tmp_path / "big")
    assert len(big) > 320
    rc, _, err = run(["fit-factors", *common(d), "--tokenizer", tmp_path / "big", "--out", tmp_path / "f"], capsys)
    assert rc == 1 and "tokenizer does not match the model" in err and "embedding only 320 rows" in err


def test_factors_of_another_model_are_refused(setup, capsys, tmp_path):
    d = setup
    if not (d / "f" / "factors.json").is_file():
        assert run(["fit-factors", *common(d), "--out", d / "f", "--batch-size", 4], capsys)[0] == 0
    tok = load_tokenizer(d / "micro")
    _save_model(tmp_path / "other", tok, ModelConfig(hidden_size=32, num_layers=2, intermediate_size=64, num_heads=2,
                                                     num_kv_heads=2, seed=1))
    rc, _, err = run(["score", "--model", tmp_path / "other", "--train", d / "train.jsonl", "--max-length", 512,
                      "--factors", d / "f", "--queries", d / "queries.jsonl", "--out", tmp_path / "s", "--no-progress"],
                     capsys)
    assert rc == 1 and "another model" in err
    _save_model(tmp_path / "wide", tok, ModelConfig(hidden_size=48, num_layers=2, intermediate_size=64, num_heads=2,
                                                    num_kv_heads=2))
    rc, _, err = run(["score", "--model", tmp_path / "wide", "--train", d / "train.jsonl", "--max-length", 512,
                      "--factors", d / "f", "--queries", d / "queries.jsonl", "--out", tmp_path / "s"], capsys)
    assert rc == 1 and "another model" in err and "shape" in err  # refused from the config, before loading weights


def test_max_length_skip_warning_and_plan_gate(setup, capsys, tmp_path):
    d = setup
    rc, out, err = run(["fit-factors", "--model", d / "micro", "--train", d / "train.jsonl", "--max-length", 120,
                        "--out", tmp_path / "f", "--plan-only"], capsys)
    assert rc == 0 and "memory plan" in out and "peak:" in out
    assert "skipped" in err and "longer than --max-length 120 tokens" in err and "never truncated" in err
    n = int(err.split("skipped ")[1].split(" of ")[0])
    assert 0 < n < len(d.joinpath("train.jsonl").read_text().splitlines())
    rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", d / "train.jsonl", "--max-length", 120,
                      "--on-too-long", "error", "--out", tmp_path / "f", "--plan-only"], capsys)
    assert rc == 1 and "exceed max_length=120" in err
    rc, out, _ = run(["fit-factors", *common(d), "--out", tmp_path / "f", "--plan-only"], capsys)
    peak = out.split("peak: ")[1].split(" (")[0]  # e.g. "25.2 MiB"
    budget = f"{float(peak.split()[0]) * 0.6:.1f}{peak.split()[1]}"
    rc, _, err = run(["fit-factors", *common(d), "--out", tmp_path / "f", "--memory-budget", budget], capsys)
    assert rc == 1 and "does not fit" in err and "--batch-size" in err
    assert not (tmp_path / "f").exists()


def _bad_files(d: Path, tmp_path: Path) -> list[tuple[Path, str]]:
    """Malformed --train files and the words their error must contain (file:line first)."""
    lines = (d / "train.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    cases = {
        "truncated.jsonl": ("\n".join(lines[:3] + [lines[3][: len(lines[3]) // 2]]).encode(), ":4: bad JSON"),
        "latin1.jsonl": ("\n".join(lines[:1]).encode() + b"\n" + lines[1].encode()[:30] + b"\xe9" + b"\n", ":2: not valid UTF-8"),
        "empty.jsonl": (b"\n\n", "empty file: no records"),
        "dup.jsonl": ("\n".join([lines[0], lines[1], lines[0]]).encode(), ":3: field 'id': duplicate id"),
        "type.jsonl": (json.dumps({**rec, "difficulty": "3"}).encode(), ":1: field 'difficulty': must be an integer"),
        "blank.jsonl": (json.dumps({**rec, "response": "  \n "}).encode(), ":1: field 'response': is empty"),
        "array.jsonl": (b"[1, 2]\n", ":1: a record must be a JSON object"),
    }
    out = []
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data)
        out.append((tmp_path / name, words))
    return out


def test_bad_input_files_are_named_before_any_work(setup, capsys, tmp_path):
    """Every malformed --train / --queries file stops fit-factors and score with its file:line, and no
    output folder is made."""
    d = setup
    assert run(["fit-factors", *common(d), "--out", tmp_path / "f", "--batch-size", 4], capsys)[0] == 0
    for path, words in _bad_files(d, tmp_path):
        rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", path, "--out", tmp_path / "f2"], capsys)
        assert rc == 1 and f"--train: bad record: {path}" in err and words in err, err
        rc, _, err = run(["score", *common(d), "--factors", tmp_path / "f", "--queries", path, "--out", tmp_path / "s"],
                         capsys)
        assert rc == 1 and f"--queries {path}: bad record: {path}" in err and words in err, err
    assert not (tmp_path / "f2").exists() and not (tmp_path / "s").exists()


def test_sequences_beyond_the_model_and_broken_artifacts(setup, capsys, tmp_path):
    d = setup
    tok = load_tokenizer(d / "micro")
    _save_model(tmp_path / "short", tok, ModelConfig(hidden_size=32, num_layers=2, intermediate_size=64, num_heads=2,
                                                     num_kv_heads=2, max_position_embeddings=48))
    rc, _, err = run(["fit-factors", "--model", tmp_path / "short", "--train", d / "train.jsonl", "--max-length", 512,
                      "--out", tmp_path / "f0"], capsys)
    assert rc == 1 and "InputError: --train: example" in err and "exceed the model's max_position_embeddings=48" in err
    assert not (tmp_path / "f0").exists()
    # a cut factors or scores file is refused with how to rebuild it
    assert run(["fit-factors", *common(d), "--out", tmp_path / "f", "--batch-size", 4], capsys)[0] == 0
    assert run(["score", *common(d), "--factors", tmp_path / "f", "--queries", d / "queries.jsonl",
                "--out", tmp_path / "s"], capsys)[0] == 0
    for p in (tmp_path / "f" / "factors.safetensors", tmp_path / "s" / "scores.safetensors"):
        p.write_bytes(p.read_bytes()[:100])
    rc, _, err = run(["score", *common(d), "--factors", tmp_path / "f", "--queries", d / "queries.jsonl",
                      "--out", tmp_path / "s2"], capsys)
    assert rc == 1 and "truncated or corrupt" in err and "re-run fit_factors" in err
    rc, _, err = run(["report", "--scores", tmp_path / "s"], capsys)
    assert rc == 1 and "truncated or corrupt" in err and "recompute the scores" in err


def test_qwen25_05b_widths(setup, capsys, tmp_path):
    """Qwen2.5-0.5B widths (hidden 896, MLP 4864, 14/2 heads), 2 layers, 512-token vocabulary, saved and
    loaded with from_pretrained: EK-FAC on layer 1's attention linears (a float64 eigh of the 4864-wide
    MLP blocks takes minutes here) with per-query token scores, and the diagonal curvature on the default
    MLP linears; the EK-FAC plan of the MLP linears is printed (--plan-only)."""
    d = setup
    recs = load_records(SAMPLE)
    tok = train_tokenizer(recs, 512, tmp_path / "tok")
    _save_model(tmp_path / "w05", tok, ModelConfig(hidden_size=896, num_layers=2, intermediate_size=4864, num_heads=14,
                                                   num_kv_heads=2, tie_word_embeddings=True))
    lines = SAMPLE.read_text().splitlines()
    _write(tmp_path / "train.jsonl", [lines[i] for i in (0, 2, 3)])
    _write(tmp_path / "q.jsonl", [lines[i] for i in (10, 12)])
    base = ["--model", tmp_path / "w05", "--train", tmp_path / "train.jsonl", "--max-length", 256, "--no-progress"]
    rc, out, err = run(["fit-factors", *base, "--out", tmp_path / "plan", "--plan-only"], capsys)
    assert rc == 0 and "6 tracked, 4 input groups" in out and "(4864 x 4864)" in out, err
    rc, _, err = run(["fit-factors", *base, "--out", tmp_path / "f", "--modules", r"layers\.1\.self_attn\.",
                      "--batch-size", 3], capsys)
    assert rc == 0, err
    f = json.loads((tmp_path / "f" / "factors.json").read_text())
    assert f["shapes"]["model.layers.1.self_attn.q_proj"] == [896, 897]  # bias column
    run_info = json.loads((tmp_path / "f" / "cli.json").read_text())
    assert run_info["stored_bytes"] == run_info["planned_stored_bytes"]
    rc, _, err = run(["score", *base, "--factors", tmp_path / "f", "--queries", tmp_path / "q.jsonl",
                      "--out", tmp_path / "s", "--token-scores"], capsys)
    assert rc == 0 and "skipped" not in err, err
    s = load_scores(tmp_path / "s")
    assert tuple(s.example.shape) == (2, 3) and torch.isfinite(s.example).all()
    sums = torch.stack([s.tokens_of(i).sum(1) for i in range(3)], 1)
    torch.testing.assert_close(sums, s.example, rtol=1e-3, atol=1e-4 * float(s.example.abs().max()))
    # the default MLP modules at these widths, with the diagonal curvature (no 4864-wide eigh)
    rc, _, err = run(["fit-factors", *base, "--out", tmp_path / "fd", "--strategy", "diagonal", "--batch-size", 3],
                     capsys)
    assert rc == 0, err
    run_info = json.loads((tmp_path / "fd" / "cli.json").read_text())
    assert run_info["stored_bytes"] == run_info["planned_stored_bytes"] == 2 * 3 * 896 * 4864 * 4
    rc, _, err = run(["score", *base, "--factors", tmp_path / "fd", "--queries", tmp_path / "q.jsonl",
                      "--out", tmp_path / "sd"], capsys)
    assert rc == 0, err
    assert torch.isfinite(load_scores(tmp_path / "sd").example).all()


def test_paper_profile_on_a_local_model(setup, capsys, tmp_path):
    """--profile paper sets the paper's defaults (bf16 weights and autocast, gradient checkpointing,
    4096 tokens); options given on the command line win; the model loads from a local folder with
    from_pretrained and its own chat template; too-long records are counted and skipped."""
    d = setup
    rc, out, err = run(["fit-factors", "--profile", "paper", "--model", d / "micro", "--train", d / "train.jsonl",
                        "--out", tmp_path / "plan", "--plan-only"], capsys)
    assert rc == 0 and "model_dtype=bfloat16" in out and "skipped" not in err, err
    rc, _, err = run(["fit-factors", "--profile", "paper", "--model", d / "micro", "--train", d / "train.jsonl",
                      "--max-length", 120, "--device", "cpu", "--batch-size", 2, "--no-progress",
                      "--out", tmp_path / "f"], capsys)
    assert rc == 0, err
    n = int(err.split("skipped ")[1].split(" of ")[0])
    assert 0 < n < len(TRAIN_IDX) and f"of {len(TRAIN_IDX)} records longer than --max-length 120 tokens" in err
    info = json.loads((tmp_path / "f" / "cli.json").read_text())
    assert info["args"]["max_length"] == 120 and info["args"]["model_dtype"] == "bfloat16"
    f = json.loads((tmp_path / "f" / "factors.json").read_text())
    assert f["fingerprint"]["autocast"] == "bfloat16" and f["config"]["batch_size"] == 2
    rc, _, err = run(["score", "--profile", "paper", "--model", d / "micro", "--train", d / "train.jsonl",
                      "--max-length", 512, "--device", "cpu", "--no-progress", "--factors", tmp_path / "f",
                      "--queries", d / "queries.jsonl", "--out", tmp_path / "s"], capsys)
    assert rc == 0, err
    s = load_scores(tmp_path / "s")
    assert s.meta["autocast"] == "bfloat16" and torch.isfinite(s.example).all()
    with pytest.raises(SystemExit):
        cli.main(["fit-factors", "--profile", "tiny", "--out", str(tmp_path / "x")])
    assert "no real-model settings" in capsys.readouterr().err


def test_torchrun_two_processes_equal_one(setup, capsys, tmp_path):
    """torchrun --nproc_per_node 2 -m infra_lib score (gloo, float64) writes the scores one process
    writes (allclose: the two shards batch the examples differently); rank 0 alone writes. (Factors
    under torchrun: tests/lib/test_distributed.py.)"""
    d = setup
    base = [*common(d), "--model-dtype", "float64", "--dtype", "float64", "--batch-size", 3]
    score = ["--queries", d / "queries.jsonl", "--aggregation", "mean", "--groups", "domain", "--token-scores",
             "--factors", tmp_path / "f"]
    assert run(["fit-factors", *base, "--fisher", "empirical", "--out", tmp_path / "f"], capsys)[0] == 0
    assert run(["score", *base, *score, "--out", tmp_path / "s1"], capsys)[0] == 0
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    tr = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "infra_lib"]
    p = subprocess.run(tr + [str(a) for a in ["score", *base, *score, "--out", tmp_path / "s2"]], env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "s2" / "cli.json").read_text())["world_size"] == 2
    assert p.stderr.count("score: (2, ") == 1  # one summary: rank 0 speaks
    s1, s2 = load_scores(tmp_path / "s1"), load_scores(tmp_path / "s2")
    assert s1.row_ids == s2.row_ids and s1.train_ids == s2.train_ids
    torch.testing.assert_close(s2.example, s1.example, rtol=1e-4, atol=1e-6 * float(s1.example.abs().max()))
    torch.testing.assert_close(s2.token, s1.token, rtol=1e-4, atol=1e-6 * float(s1.token.abs().max()))


def test_partitions_and_merge_factors(setup, capsys, tmp_path):
    """fit-factors --partition 1/2 and 2/2, then merge-factors: the factors of a fit of all modules at
    once; --device cuda without CUDA is refused with one line."""
    d = setup
    base = [*common(d), "--dtype", "float64", "--model-dtype", "float64", "--batch-size", 4]
    for k in (1, 2):
        rc, _, err = run(["fit-factors", *base, "--partition", f"{k}/2", "--out", tmp_path / f"p{k}"], capsys)
        assert rc == 0 and "(3 tracked" in err, err  # the plan is the part's: one layer's 3 MLP linears
    assert run(["fit-factors", *base, "--out", tmp_path / "all"], capsys)[0] == 0
    rc, _, err = run(["merge-factors", "--parts", tmp_path / "p1", tmp_path / "p2", "--out", tmp_path / "m"], capsys)
    assert rc == 0, err
    m, whole = load_factors(tmp_path / "m"), load_factors(tmp_path / "all")
    assert m.modules == whole.modules and set(m.tensors) == set(whole.tensors)
    for k, v in whole.tensors.items():
        torch.testing.assert_close(m.tensors[k], v, rtol=1e-10, atol=1e-13, msg=k)
    rc, _, err = run(["merge-factors", "--parts", tmp_path / "p1", tmp_path / "p1", "--out", tmp_path / "x"], capsys)
    assert rc == 1 and "several parts" in err
    rc, _, err = run(["fit-factors", *base, "--partition", "3/2", "--out", tmp_path / "x"], capsys)
    assert rc == 1 and "--partition 3/2" in err
    if not torch.cuda.is_available():
        rc, _, err = run(["fit-factors", *base, "--device", "cuda", "--out", tmp_path / "x"], capsys)
        assert rc == 1 and "no CUDA device" in err


# --------------------------------------------------------------------------- careless users
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_results_of_another_run_are_never_overwritten_silently(setup, capsys, tmp_path):
    """fit-factors into another run's factors (or scores), score into another run's scores or into
    the factors folder: refused with exit 1 naming what is there, files untouched, also with
    --no-progress; the same command resumes (reuses); --overwrite replaces."""
    d = setup
    f, s = tmp_path / "f", tmp_path / "s"
    assert run(["fit-factors", *common(d), "--out", f, "--batch-size", 4], capsys)[0] == 0
    before = _snapshot(f)
    stamp = (f / "factors.safetensors").stat().st_mtime_ns
    rc, _, err = run(["fit-factors", *common(d)[:-1], "--out", f, "--batch-size", 4], capsys)  # the same run
    assert rc == 0 and "[factors] reusing" in err and (f / "factors.safetensors").stat().st_mtime_ns == stamp
    rc, _, err = run(["fit-factors", *common(d), "--out", f, "--strategy", "diagonal"], capsys)
    assert rc == 1 and err.count("\n") == 1, err
    assert f"--out {f} holds results of another fit-factors run (its config differ" in err and "--overwrite" in err
    assert "factors.safetensors" in err and _snapshot(f) == {**before, "cli.json": _snapshot(f)["cli.json"]}
    assert _snapshot(f)["factors.safetensors"] == before["factors.safetensors"]
    other = _write(tmp_path / "other.jsonl", (d / "train.jsonl").read_text().splitlines()[:6])
    rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", other, "--max-length", 512, "--no-progress",
                      "--out", f, "--batch-size", 4], capsys)
    assert rc == 1 and "(its train differ" in err

    score = ["score", *common(d), "--factors", f, "--queries", d / "queries.jsonl"]
    assert run([*score, "--out", s], capsys)[0] == 0
    scores_before = _snapshot(s)
    rc, _, err = run([*score, "--out", s, "--aggregation", "mean"], capsys)
    assert rc == 1 and f"--out {s} holds results of another score run (its options differ" in err
    assert _snapshot(s) == scores_before
    rc, _, err = run(["fit-factors", *common(d), "--out", s, "--batch-size", 4], capsys)
    assert rc == 1 and "holds results of infra score, not fit-factors" in err and _snapshot(s) == scores_before
    for into in (f, tmp_path / "f" / ".", tmp_path / "f" / ".." / "f"):
        for extra in ([], ["--overwrite"]):
            rc, _, err = run([*score, "--out", into, *extra], capsys)
            assert rc == 1 and "score never writes into a factors folder" in err, err
    (tmp_path / "link").symlink_to(f)
    rc, _, err = run([*score, "--out", tmp_path / "link"], capsys)
    assert rc == 1 and "is the --factors folder" in err
    assert _snapshot(f)["factors.safetensors"] == before["factors.safetensors"]

    rc, _, err = run([*score, "--out", s, "--aggregation", "mean", "--overwrite"], capsys)
    assert rc == 0 and "removed" in err and load_scores(s).row_ids == ["math", "code"]
    rc, _, err = run(["fit-factors", *common(d), "--out", f, "--strategy", "diagonal", "--overwrite"], capsys)
    assert rc == 0 and load_factors(f).config.strategy == "diagonal"


def test_results_without_a_fingerprint_are_refused(setup, capsys, tmp_path):
    """Factors saved by the library (no cli.json) are results of an unknown run: refused too."""
    d = setup
    f = tmp_path / "lib"
    assert run(["fit-factors", *common(d), "--out", f, "--batch-size", 4], capsys)[0] == 0
    (f / "cli.json").unlink()
    rc, _, err = run(["fit-factors", *common(d), "--out", f, "--batch-size", 4], capsys)
    assert rc == 1 and "results without a fingerprint" in err


def test_output_folders_that_cannot_be_made_are_named_before_the_records_load(setup, capsys, tmp_path):
    d = setup
    (tmp_path / "file").write_text("x")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    bad_train = _write(tmp_path / "bad.jsonl", ["{not json"])  # would fail if the records loaded first
    cases = [(tmp_path / "file", "exists and is not a folder (a regular file)"),
             (tmp_path / "file" / "f", f"cannot be created: {tmp_path / 'file'} is not a folder"),
             (tmp_path / "dangling", "is a broken link")]
    for out, words in cases:
        for cmd in (["fit-factors", "--model", d / "micro", "--train", bad_train],
                    ["score", "--model", d / "micro", "--train", bad_train, "--factors", d / "f", "--queries", bad_train]):
            if cmd[0] == "score" and not (d / "f" / "factors.json").is_file():
                assert run(["fit-factors", *common(d), "--out", d / "f", "--batch-size", 4], capsys)[0] == 0
            rc, _, err = run([*cmd, "--out", out], capsys)
            assert rc == 1 and f"--out {out}: {words}" in err and "Traceback" not in err, err


def test_input_paths_that_are_not_files_are_named(setup, capsys, tmp_path):
    """A FIFO (which would block forever), a folder or a device as --train or --mapping."""
    d = setup
    os.mkfifo(tmp_path / "fifo.jsonl")
    (tmp_path / "folder.jsonl").mkdir()
    for path, kind in ((tmp_path / "fifo.jsonl", "a FIFO (named pipe)"), (tmp_path / "folder.jsonl", "a folder"),
                       (Path("/dev/zero"), "a character device")):
        rc, _, err = run(["fit-factors", "--model", d / "micro", "--train", path, "--out", tmp_path / "f"], capsys)
        assert rc == 1 and f"--train: {path}: is {kind}, not a regular file" in err, err
        rc, _, err = run(["fit-factors", *common(d), "--mapping", path, "--out", tmp_path / "f"], capsys)
        assert rc == 1 and f"mapping file {path} is {kind}, not a regular file" in err, err
    assert not (tmp_path / "f").exists()


def test_hostile_records_get_one_line_naming_file_line_and_field(setup, capsys, tmp_path):
    d = setup
    lines = (d / "queries.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    cases = {
        "deep.jsonl": ([lines[0], '{"a": ' + "[" * 50_000 + "]" * 50_000 + "}"], ":2: JSON nested too deeply"),
        "surrogate.jsonl": ([lines[0], json.dumps({**rec, "prompt": "x\ud800"})],
                            ":2: field 'prompt': holds a lone surrogate U+D800 at character 2"),
        "digits.jsonl": ([lines[0], json.dumps(rec).replace(f'"difficulty": {rec["difficulty"]}', '"difficulty": ' + "7" * 5000)],
                         ":2: field 'difficulty': a number of 5000 digits"),
        "zwsp.jsonl": ([lines[0], json.dumps({**rec, "id": lines[0].split('"')[3] + "\u200b"})],
                       ":2: field 'id':"),
    }
    for name, (rows, words) in cases.items():
        path = _write(tmp_path / name, rows)
        rc, _, err = run(["score", *common(d), "--factors", d / "f", "--queries", path, "--out", tmp_path / "s"], capsys)
        assert rc == 1 and err.count("\n") == 1 and f"{path}{words}" in err and "Traceback" not in err, err
    # two query files whose ids differ only by NFC form: refused, not scored as two queries
    first = json.loads(lines[0])
    a = _write(tmp_path / "a.jsonl", [json.dumps({**first, "id": "caf\u00e9"})])
    b = _write(tmp_path / "b.jsonl", [json.dumps({**first, "id": "cafe\u0301"})])
    rc, _, err = run(["score", *common(d), "--factors", d / "f", "--queries", a, b, "--out", tmp_path / "s"], capsys)
    assert rc == 1 and f"{b}:1: field 'id'" in err and "NFC" in err


def test_ctrl_c_prints_one_line_exits_130_and_resumes_bit_identical(setup, capsys, tmp_path):
    """SIGINT in the middle of the covariance pass (after its second checkpoint): one line on stderr
    saying what was interrupted and how to resume, exit 130; the same command then finishes, and
    its factors equal an uninterrupted run's bit for bit."""
    import signal
    import time

    d = setup
    args = ["fit-factors", *common(d), "--batch-size", 2, "--save-every", 1, "--threads", 1]
    flag = tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INFRA_PAUSE_AT": "covariance:2",
           "INFRA_PAUSE_FILE": str(flag)}
    # SIGINT back to its default in the child: a test run started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "infra_lib", *map(str, args), "--out", str(tmp_path / "f")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:  # a failed wait must not leave the child running (later tests count our children)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert last == (f"infra fit-factors: interrupted (Ctrl-C) while fitting factors; what was done is checkpointed "
                    f"in {tmp_path / 'f'}: run the same command again to resume"), last
    assert (tmp_path / "f" / ".partial_covariance.safetensors").is_file()

    rc, _, err = run([a for a in args if a != "--no-progress"] + ["--out", tmp_path / "f"], capsys)
    assert rc == 0 and "[covariance] resuming after batch 2/" in err, err
    assert run([*args, "--out", tmp_path / "ref"], capsys)[0] == 0
    got, ref = load_factors(tmp_path / "f"), load_factors(tmp_path / "ref")
    assert set(got.tensors) == set(ref.tensors)
    for k, t in ref.tensors.items():
        assert torch.equal(got.tensors[k], t), k


def test_ctrl_c_before_any_work_says_nothing_was_written(setup, capsys, monkeypatch, tmp_path):
    d = setup

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_source", interrupted)
    rc, _, err = run(["fit-factors", *common(d), "--out", tmp_path / "f"], capsys)
    assert rc == 130 and err == "infra fit-factors: interrupted (Ctrl-C) while checking the inputs; nothing was written\n"
