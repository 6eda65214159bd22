"""Worker of tests/test_distributed.py, started by ``torchrun`` (or plain ``python``):
fits EK-FAC factors and scores on the saved micro model and data, under gloo when several ranks.

Usage: python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py FOLDER
(FOLDER holds model/ and data.pt; factors/ and scores/ are written there by rank 0, and every rank
saves the scores it returns as rank<r>.pt so that the test sees what each rank got).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import make_float64_exact  # noqa: E402
from infra_lib import distributed as dist  # noqa: E402
from infra_lib.factors import FactorConfig, fit_factors  # noqa: E402
from infra_lib.scores import ScoreConfig, compute_scores  # noqa: E402

torch.set_num_threads(1)


def main(folder: Path) -> None:
    from transformers import Qwen2ForCausalLM

    dist.init_distributed(torch.device("cpu"))
    model = Qwen2ForCausalLM.from_pretrained(folder / "model", dtype=torch.float64).eval()
    make_float64_exact(model)
    data = torch.load(folder / "data.pt")
    f = fit_factors(model, data["train"], FactorConfig(**data["factor_config"]), out_dir=folder / "factors",
                    progress=False)
    s = compute_scores(model, f, data["queries"], data["train"], ScoreConfig(**data["score_config"]),
                       out_dir=folder / "scores", progress=False)
    torch.save({"example": s.example, "token": s.token, "segment": s.segment, "query_segment": s.query_segment,
                "world": dist.world_size()}, folder / f"rank{dist.rank()}.pt")
    dist.barrier()
    if dist.world_size() > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
