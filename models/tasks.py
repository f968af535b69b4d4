"""Task losses and predictions shared by every model, with their sign conventions.

Survival follows the discrete-time formulation of MCAT/SurvPath: the model emits 4 logits, one per
survival bin; ``hazards = sigmoid(logits)`` is the probability of the event in a bin given survival
to it, ``survival = cumprod(1 - hazards)`` the probability of surviving past each bin, and the
**risk** score is ``-sum(survival)`` — higher risk means shorter expected survival. Concordance
functions that expect a risk (scikit-survival's ``concordance_index_censored``) take it as is;
those that expect predicted times (lifelines' ``concordance_index``) must be given ``-risk``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

N_SURVIVAL_BINS = 4
EPS = 1e-7


def survival_nll(
    logits: torch.Tensor, survival_bin: torch.Tensor, event: torch.Tensor, alpha: float = 0.0
) -> torch.Tensor:
    """Discrete-time negative log-likelihood over the survival bins (mean over the batch).

    ``logits [B, 4]``, ``survival_bin long [B]``, ``event [B]`` (1 = died, 0 = censored).
    An uncensored patient contributes ``-log S(y-1) - log h(y)``; a censored one ``-log S(y)``.
    ``alpha`` up-weights the uncensored term as in SurvPath: ``(1 - alpha) * full + alpha * uncensored``.
    """
    y = survival_bin.long().view(-1, 1)
    censored = (1 - event.float()).view(-1, 1)
    hazards = torch.sigmoid(logits)
    survival = torch.cumprod(1 - hazards, dim=1)
    survival_padded = torch.cat([torch.ones_like(censored), survival], dim=1)
    s_prev = torch.gather(survival_padded, 1, y).clamp_min(EPS)
    h_this = torch.gather(hazards, 1, y).clamp_min(EPS)
    s_this = torch.gather(survival_padded, 1, y + 1).clamp_min(EPS)
    uncensored_loss = -(1 - censored) * (torch.log(s_prev) + torch.log(h_this))
    censored_loss = -censored * torch.log(s_this)
    full = censored_loss + uncensored_loss
    return ((1 - alpha) * full + alpha * uncensored_loss).mean()


def survival_risk(logits: torch.Tensor) -> torch.Tensor:
    """Risk score ``[B]`` from survival logits ``[B, 4]``: ``-sum(cumprod(1 - sigmoid(logits)))``."""
    survival = torch.cumprod(1 - torch.sigmoid(logits), dim=1)
    return -survival.sum(dim=1)


def task_loss(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: str, alpha: float = 0.0) -> torch.Tensor:
    """Cross-entropy for ``subtype`` (rare set, label -1, ignored), discrete NLL for ``survival``."""
    if task == "subtype":
        return F.cross_entropy(logits, batch["label"].long(), ignore_index=-1)
    if task == "survival":
        return survival_nll(logits, batch["survival_bin"], batch["event"], alpha=alpha)
    raise ValueError(f"unknown task {task!r}; expected 'subtype' or 'survival'")


def task_prediction(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class probabilities ``[B, K]`` for ``subtype``; risk ``[B]`` for ``survival``."""
    if task == "subtype":
        return torch.softmax(logits.float(), dim=-1)
    if task == "survival":
        return survival_risk(logits.float())
    raise ValueError(f"unknown task {task!r}; expected 'subtype' or 'survival'")
