"""Interruption: a factor pass and a score pass killed mid-way (SIGTERM and SIGKILL) and restarted
give results bitwise equal (``torch.equal``) to an uninterrupted run, and no half-written artifact
is ever visible.

Why bitwise: every pass runs in float64 on one thread in a fixed batch order, and a checkpoint
stores the running sums exactly (safetensors), so the resumed sums add the same numbers in the
same order as the uninterrupted ones. The kills are deterministic: ``INFRA_PAUSE_AT`` makes the
worker (tests/interrupted_pass.py) stop after a chosen batch and its checkpoint, write a flag
file and wait; the test kills it only then.

Run: ``python -m pytest tests/lib/test_interruption.py -q`` (about 20-30 s: three worker processes).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infra_lib.factors import FactorConfig, factors_exist, fit_factors, load_factors
from infra_lib.scores import ScoreConfig, compute_scores, load_scores, scores_exist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from interrupted_pass import FACTOR_CONFIG, SCORE_CONFIG, main  # noqa: E402

WORKER = Path(__file__).resolve().parents[1] / "interrupted_pass.py"
ROOT = Path(__file__).resolve().parents[2]


def _visible_artifacts_are_whole(*folders: Path) -> None:
    """Every file a reader could pick up opens completely; no temporary file is left beside them."""
    from safetensors import safe_open

    for d in folders:
        if not d.exists():
            continue
        for p in d.iterdir():
            assert not p.name.endswith(".tmp"), f"temporary file left: {p}"
            if p.suffix == ".safetensors":
                with safe_open(str(p), framework="pt") as fh:
                    for k in fh.keys():
                        fh.get_tensor(k)
            elif p.suffix == ".json":
                import json

                json.loads(p.read_text())


def _run(state: Path, fdir: Path, sdir: Path, pause: str | None, sig: int | None, flag: Path) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "INFRA_PAUSE_FILE": str(flag)}
    env.pop("INFRA_PAUSE_AT", None)
    if pause:
        env["INFRA_PAUSE_AT"] = pause
    flag.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(WORKER), str(state), str(fdir), str(sdir)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if pause:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, f"the worker ended before pausing at {pause}: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"the worker never paused at {pause}"
            time.sleep(0.05)
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_killed_passes_resume_to_identical_results(micro, tmp_path, capfd):
    model, train, queries = micro
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_f = fit_factors(model, train, FactorConfig(**FACTOR_CONFIG), progress=False)
        ref_s = compute_scores(model, ref_f, queries, train, ScoreConfig(**SCORE_CONFIG), progress=False)
    finally:
        torch.set_num_threads(was)
    state = tmp_path / "state.pt"
    torch.save({"weights": model.state_dict(), "train": train, "queries": queries}, state)
    fdir, sdir, flag = tmp_path / "factors", tmp_path / "scores", tmp_path / "paused"

    # 1. SIGTERM in the covariance pass, after batch 4 of 12 (checkpointed)
    rc, _ = _run(state, fdir, sdir, "covariance:4", signal.SIGTERM, flag)
    assert rc == -signal.SIGTERM
    assert (fdir / ".partial_covariance.safetensors").is_file() and not factors_exist(fdir)
    _visible_artifacts_are_whole(fdir, sdir)

    # 2. restart; SIGKILL in the lambda pass after batch 6 (covariance and eigendecomposition done)
    rc, err = _run(state, fdir, sdir, "lambda:6", signal.SIGKILL, flag)
    assert rc == -signal.SIGKILL and "[covariance] resuming after batch 4/12" in err
    assert (fdir / ".partial_eigen.safetensors").is_file() and (fdir / ".partial_lambda.safetensors").is_file()
    assert not factors_exist(fdir)
    _visible_artifacts_are_whole(fdir, sdir)

    # 3. restart; SIGTERM in the score pass after batch 4
    rc, err = _run(state, fdir, sdir, "scores:4", signal.SIGTERM, flag)
    assert rc == -signal.SIGTERM
    assert "reusing the saved eigendecomposition" in err and "[lambda] resuming after batch 6/12" in err
    assert factors_exist(fdir) and not scores_exist(sdir) and (sdir / ".partial_scores.safetensors").is_file()
    assert not list(fdir.glob(".partial_*"))  # finished factors leave no checkpoint
    _visible_artifacts_are_whole(fdir, sdir)

    # 4. restart to the end, in this process (same code as the worker; saves a process start)
    capfd.readouterr()
    torch.set_num_threads(1)
    try:
        main(str(state), str(fdir), str(sdir))
    finally:
        torch.set_num_threads(was)
    err = capfd.readouterr().err
    assert "[factors] reusing" in err and "[scores] resuming after batch 4/12" in err
    assert not list(fdir.glob(".partial_*")) and not list(sdir.glob(".partial_*"))
    _visible_artifacts_are_whole(fdir, sdir)

    got_f = load_factors(fdir, model=model)
    assert set(got_f.tensors) == set(ref_f.tensors)
    for k, v in ref_f.tensors.items():
        assert torch.equal(got_f.tensors[k], v), k
    got_s = load_scores(sdir)
    assert got_s.row_ids == ref_s.row_ids and got_s.train_ids == ref_s.train_ids
    assert torch.equal(got_s.example, ref_s.example) and torch.equal(got_s.token, ref_s.token)
    assert got_f.counts == ref_f.counts
