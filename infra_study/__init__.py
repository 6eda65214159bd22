"""infra_study: the Infra study reproduced on top of :mod:`infra_lib`.

Everything the book needs beside the attribution kernels: the generated corpus and its sandbox,
the tokenizer and tiny model, training, evaluation, the retrained arms, the cached pipeline and
its profiles, analysis and verdicts, plots and HTML views, the validation chapter's experiments,
and the runner of the notebooks (``python -m infra_study.reproduce``).

Score convention (from :mod:`infra_lib`): ``score[q, i] = g_q^T (F + lambda I)^{-1} g_i``;
**positive = helpful**.
"""
