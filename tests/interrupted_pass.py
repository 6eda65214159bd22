"""Worker of tests/test_interruption.py: fit factors then scores of a saved micro model, resuming
whatever a killed earlier run left in the output folders.

    python tests/interrupted_pass.py STATE.pt FACTORS_DIR SCORES_DIR

``STATE.pt`` holds the micro model's weights and the train/query examples. With
``INFRA_PAUSE_AT=<pass>:<batch>`` the run stops after that batch and waits to be killed (see
``infra_lib.checks.pause_point``).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import make_model  # noqa: E402

from infra_lib.factors import fit_factors  # noqa: E402
from infra_lib.scores import compute_scores  # noqa: E402

FACTOR_CONFIG = dict(dtype="float64", batch_size=2, save_every=2)
SCORE_CONFIG = dict(dtype="float64", batch_size=2, save_every=2, token_scores=True)


def main(state_path: str, factors_dir: str, scores_dir: str) -> None:
    from infra_lib.factors import FactorConfig
    from infra_lib.scores import ScoreConfig

    torch.set_num_threads(1)
    state = torch.load(state_path, weights_only=False)
    model = make_model(0)
    model.load_state_dict(state["weights"])
    # separate covariance and Λ passes: each resumes from its own checkpoints (the shared pass has no Λ chunks)
    f = fit_factors(model, state["train"], FactorConfig(**FACTOR_CONFIG), out_dir=factors_dir, progress=True,
                    shared_pass="off")
    compute_scores(model, f, state["queries"], state["train"], ScoreConfig(**SCORE_CONFIG), out_dir=scores_dir,
                   progress=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
