"""kronfluence's side of the benches: the summed response NLL as a kronfluence ``Task`` and a list dataset.

Shared by ``bench/vs_kronfluence.py`` and ``bench/gpu_check.py`` (kronfluence is imported lazily,
inside :func:`summed_nll_task`, so that importing this module needs only torch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def summed_nll_task(names: list[str]):
    """A kronfluence Task: summed next-token CE on float logits over response tokens (labels -100
    elsewhere), labels drawn from the model for the true Fisher, the loss positions as attention mask."""
    from kronfluence.task import Task

    class SummedNLL(Task):
        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], use_cache=False).logits.float()[:, :-1]
            labels = batch["labels"][:, 1:]
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach(), -1).reshape(-1, logits.shape[-1])
                    drawn = torch.multinomial(probs, 1).view(labels.shape)
                    labels = torch.where(labels != -100, drawn, labels)
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                   reduction="sum")

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

        def get_influence_tracked_modules(self):
            return names

        def get_attention_mask(self, batch):  # loss positions: labels[t+1] != -100
            m = torch.zeros_like(batch["labels"])
            m[:, :-1] = (batch["labels"][:, 1:] != -100).long()
            return m

    return SummedNLL()


class ListDataset(torch.utils.data.Dataset):
    """Examples (dicts with ``input_ids`` and ``labels``) as a torch Dataset of those two fields."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return {"input_ids": self.items[i]["input_ids"], "labels": self.items[i]["labels"]}
