"""The backward pass of the methods that only weight the task losses (equal, static, DWA)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def weighted_backward(losses: Mapping[str, torch.Tensor], weights: Mapping[str, float | torch.Tensor]) -> torch.Tensor:
    terms = [weights[task] * loss for task, loss in losses.items()]
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    total.backward()
    return total
