"""infra_lib: influence-based attribution of a causal LM's reasoning to training examples,
CoT segments and tokens (EK-FAC, K-FAC, diagonal, identity), and the pipeline of the infra-study book.

Score convention everywhere: ``score[q, i] = g_q^T (F + lambda I)^{-1} g_i`` with ``g`` the gradient of
the summed response NLL; **positive = helpful** (upweighting training example ``i`` lowers the loss
of query ``q``).
"""
__version__ = "0.1.0"
