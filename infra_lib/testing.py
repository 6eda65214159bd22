"""Micro Qwen2 models and a seeded toy language, for exactness checks, the validation chapter and tests.

A 1-2-layer ``Qwen2ForCausalLM`` (hidden 16, MLP 32, vocab 48 by default), float64, with RoPE and
RMSNorm recomputed in float64 so that float64 checks hold at 1e-7, trained for a few dozen steps
on a "topic Markov chain" language so that gradients and curvature have structure. Examples have
a prompt (masked out of the loss), a response split into segments, and varied lengths.

Also here: :func:`kronfluence_scores`, kronfluence 1.0.1's pairwise scores for the same summed
response NLL (kronfluence is imported lazily; it is a test, bench and validation dependency only).
"""
from __future__ import annotations

import copy
import types

import torch

__all__ = ["VOCAB", "N_TOPICS", "make_model", "make_float64_exact", "make_examples", "train_briefly",
           "kronfluence_scores", "KronfluenceDataset"]

VOCAB, N_TOPICS = 48, 4


def make_model(seed: int = 0, hidden: int = 16, inter: int = 32, layers: int = 2, vocab: int = VOCAB):
    """A float64 micro ``Qwen2ForCausalLM`` (eval mode), initialised from ``seed``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    model = Qwen2ForCausalLM(cfg).double().eval()
    make_float64_exact(model)
    return model


def make_float64_exact(model):
    """HF's Qwen2 computes RoPE and RMSNorm in float32 even for a float64 model; the float32 rounding
    then depends on the batch shape (vectorised vs scalar tails), which would blur float64 checks at
    1e-7. Replace them, on this instance only, by the same formulas in float64."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

    def rope(self, x, position_ids):
        freqs = position_ids[..., None].double() * self.inv_freq.double()
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    def norm(self, h):
        var = h.pow(2).mean(-1, keepdim=True)
        return self.weight * (h * torch.rsqrt(var + self.variance_epsilon))

    # bound methods: copy.deepcopy rebinds them to the copied modules
    model.model.rotary_emb.forward = types.MethodType(rope, model.model.rotary_emb)
    for m in model.modules():
        if isinstance(m, Qwen2RMSNorm):
            m.forward = types.MethodType(norm, m)


def make_examples(n: int, seed: int, prefix: str, min_len: int = 10, max_len: int = 20, vocab: int = VOCAB):
    """Topic-chain sequences: prompt of 3-5 tokens (masked), response in 2-3 segments."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(N_TOPICS, vocab, vocab, generator=torch.Generator().manual_seed(123)) ** 8
    out = []
    for i in range(n):
        T = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        topic = int(torch.randint(0, N_TOPICS, (1,), generator=g))
        ids = [topic, int(torch.randint(N_TOPICS, vocab, (1,), generator=g))]
        while len(ids) < T:
            ids.append(int(torch.multinomial(trans[topic, ids[-1]], 1, generator=g)))
        ids = torch.tensor(ids)
        p = int(torch.randint(3, 6, (1,), generator=g))
        labels = ids.clone()
        labels[:p] = -100
        seg = torch.full((T,), -1)
        n_seg = 2 + i % 2
        cuts = torch.linspace(p, T, n_seg + 1).long()
        for k in range(n_seg):
            seg[cuts[k]:cuts[k + 1]] = k
        out.append({"id": f"{prefix}{i:03d}", "input_ids": ids, "labels": labels, "segment_ids": seg, "topic": topic})
    return out


def train_briefly(model, data, steps: int = 40, lr: float = 3e-2):
    """A few Adam steps, one example per step, on the response NLL (mean over tokens); returns ``model``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for s in range(steps):
        ex = data[s % len(data)]
        out = model(input_ids=ex["input_ids"][None]).logits[0]
        loss = torch.nn.functional.cross_entropy(out[:-1], ex["labels"][1:], ignore_index=-100)
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


class KronfluenceDataset(torch.utils.data.Dataset):
    """Examples (dicts with ``input_ids`` and ``labels``) as the map-style dataset kronfluence reads."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i]["input_ids"], "labels": self.items[i]["labels"]}


def kronfluence_task(names, sampler: str = "multinomial"):
    """A kronfluence ``Task`` for infra_lib's loss: the summed next-token cross-entropy on float
    logits (float64 kept) over response tokens (labels -100 elsewhere), labels drawn from the
    model when kronfluence asks for the true Fisher (``sampler``: ``multinomial``, as kronfluence's
    examples do, or ``inverse-cdf``, infra_lib's algorithm: one uniform per position and a
    ``searchsorted`` on the cumulative probabilities), and the loss positions (labels[t+1] != -100)
    as its attention mask, so its covariances run over the same positions as ours."""
    if sampler not in ("multinomial", "inverse-cdf"):
        raise ValueError(f"sampler must be 'multinomial' or 'inverse-cdf', got {sampler!r}")
    import torch.nn.functional as F
    from kronfluence.task import Task

    def logits_of(batch, m):
        out = m(input_ids=batch["input_ids"], use_cache=False).logits
        return out if out.dtype == torch.float64 else out.float()

    class SummedNLL(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = logits_of(batch, model)[:, :-1]
            labels = batch["labels"][:, 1:]
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), -1).reshape(-1, logits.shape[-1])
                    if sampler == "multinomial":
                        drawn = torch.multinomial(probs, 1).view(labels.shape)
                    else:
                        cdf = probs.double().cumsum(-1)
                        u = torch.rand(cdf.shape[0], 1, dtype=torch.float64) * cdf[:, -1:]
                        drawn = torch.searchsorted(cdf, u).clamp_(max=probs.shape[-1] - 1).view(labels.shape)
                    labels = torch.where(labels != -100, drawn, labels)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                   reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model, sample=False)

        def get_influence_tracked_modules(self):
            return list(names)

        def get_attention_mask(self, batch):
            m = torch.zeros_like(batch["labels"])
            m[:, :-1] = (batch["labels"][:, 1:] != -100).long()
            return m

    return SummedNLL()


def kronfluence_scores(model, train, queries, names, out_dir, *, strategy="ekfac", empirical=True, damping=None,
                       per_token=False, pad_to=None, batch_size=8, dtype=torch.float64):
    """kronfluence 1.0.1 pairwise scores (Q, N) or per-token (Q, N, T) for the same summed response NLL.

    The task returns a summed token cross-entropy on float logits; its attention mask is the
    loss-position mask (position t is in the loss when labels[t+1] != -100), so its activation
    covariance runs over the same positions as infra_lib's.
    """
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    def collate(items):
        T = pad_to or max(len(x["input_ids"]) for x in items)
        ids = torch.zeros(len(items), T, dtype=torch.long)
        lab = torch.full((len(items), T), -100, dtype=torch.long)
        for b, x in enumerate(items):
            ids[b, :len(x["input_ids"])] = torch.as_tensor(x["input_ids"])
            lab[b, :len(x["labels"])] = torch.as_tensor(x["labels"])
        return {"input_ids": ids, "labels": lab}

    DS = KronfluenceDataset
    task = kronfluence_task(names)
    kmodel = prepare_model(copy.deepcopy(model), task)
    an = Analyzer(analysis_name="t", model=kmodel, task=task, cpu=True, disable_tqdm=True, output_dir=str(out_dir))
    an.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate))
    fa = FactorArguments(strategy=strategy, use_empirical_fisher=empirical, activation_covariance_dtype=dtype,
                         gradient_covariance_dtype=dtype, per_sample_gradient_dtype=dtype, lambda_dtype=dtype)
    an.fit_all_factors("f", dataset=DS(train), per_device_batch_size=batch_size, factor_args=fa,
                       overwrite_output_dir=True)
    sa = ScoreArguments(damping_factor=damping, compute_per_token_scores=per_token, per_sample_gradient_dtype=dtype,
                        precondition_dtype=dtype, score_dtype=dtype)
    an.compute_pairwise_scores("s", "f", query_dataset=DS(queries), train_dataset=DS(train),
                               per_device_query_batch_size=len(queries), per_device_train_batch_size=batch_size,
                               score_args=sa, overwrite_output_dir=True)
    return an.load_pairwise_scores("s")["all_modules"]
