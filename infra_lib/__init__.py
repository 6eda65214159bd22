"""infra_lib: influence-based attribution of a causal LM's reasoning to training examples,
CoT segments and tokens (EK-FAC, K-FAC, diagonal, identity).

Stages, one module each: :mod:`~infra_lib.tracking` (which modules, hooks), :mod:`~infra_lib.factors`
(covariances, eigendecompositions, eigenvalue correction), :mod:`~infra_lib.scores` (example,
token and segment scores), :mod:`~infra_lib.distributed` (torchrun sharding), :mod:`~infra_lib.planner`
(memory plan), :mod:`~infra_lib.records` and :mod:`~infra_lib.data` (the JSONL schema and its
encoding), :mod:`~infra_lib.cli` (``infra fit-factors | score | report``); :mod:`~infra_lib.testing`
holds the micro model that tests and benchmarks share.

Score convention everywhere: ``score[q, i] = g_q^T (F + lambda I)^{-1} g_i`` with ``g`` the gradient of
the summed response NLL; **positive = helpful** (upweighting training example ``i`` lowers the loss
of query ``q``).
"""
__version__ = "0.1.0"
