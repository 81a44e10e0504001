"""Run-time prompt adaptation (ALFA sec. 4.2) and FiLo++'s runtime prompt filter.

Per image, d(t) = cos(f(x), g(t)) for every prompt t. I+ = [min, max] of d over the normal
prompts, I− over the anomalous ones. With D(d, I) = max(0, min I − d, d − max I), the distance
from a point to an interval,

    D±(t) = |D(d(t), I+) − D(d(t), I−)|,    S_c(t) = D± / (D± + exp(−k·D±))    (ALFA eq. 4, k = 1)

and ALFA keeps the prompts with S_c > 0. FiLo++ drops the prompts whose d falls in the overlap
[max(min I+, min I−), min(max I+, max I−)]. A normal prompt's d always lies in I+, so it has
S_c > 0 exactly when it lies outside I−, i.e. outside the overlap (and the same for anomalous
prompts): the two rules keep the same prompts. Both are implemented from their own papers'
formulas and the tests check they agree.

When a rule keeps no prompt of a state for an image, that state falls back to all its prompts
(an image score needs both states).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FILTERS = ("alfa", "filo", "none")


def interval_distance(d: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Distance from points d (..., T) to intervals [lo, hi] (...,), 0 inside."""
    return torch.clamp(torch.maximum(lo[..., None] - d, d - hi[..., None]), min=0.0)


def contextual_scores(sim_normal: torch.Tensor, sim_anomalous: torch.Tensor, k: float = 1.0) -> torch.Tensor:
    """ALFA eq. 4 for every prompt. sim_*: (B, T_n), (B, T_a) cosines -> (B, T_n + T_a) in [0, 1)."""
    d = torch.cat([sim_normal, sim_anomalous], dim=-1)
    to_normal = interval_distance(d, sim_normal.amin(-1), sim_normal.amax(-1))
    to_anomalous = interval_distance(d, sim_anomalous.amin(-1), sim_anomalous.amax(-1))
    gap = (to_normal - to_anomalous).abs()
    return gap / (gap + torch.exp(-k * gap))


def keep_mask(sim_normal: torch.Tensor, sim_anomalous: torch.Tensor, rule: str = "alfa") -> torch.Tensor:
    """(B, T_n + T_a) bool: the prompts a rule keeps for each image."""
    if rule == "none":
        return torch.ones(sim_normal.shape[0], sim_normal.shape[1] + sim_anomalous.shape[1], dtype=torch.bool,
                          device=sim_normal.device)
    if rule == "alfa":
        return contextual_scores(sim_normal, sim_anomalous) > 0
    if rule == "filo":
        d = torch.cat([sim_normal, sim_anomalous], dim=-1)
        lo = torch.maximum(sim_normal.amin(-1), sim_anomalous.amin(-1))[:, None]
        hi = torch.minimum(sim_normal.amax(-1), sim_anomalous.amax(-1))[:, None]
        return ~((d >= lo) & (d <= hi))  # an empty overlap (lo > hi) keeps everything
    raise ValueError(f"prompt filter must be one of {', '.join(FILTERS)}, not {rule!r}")


def adapted_text(image_emb: torch.Tensor, normal: torch.Tensor, anomalous: torch.Tensor, rule: str = "alfa"):
    """Per-image normal and anomalous text embeddings from the kept prompts.

    image_emb: (B, D) L2-normalised; normal: (T_n, D), anomalous: (T_a, D) prompt embeddings.
    Returns h_normal (B, D), h_anomalous (B, D) — the L2-normalised means of each state's kept
    prompts (all prompts of a state when none is kept) — and the (B, T_n + T_a) mask of the
    prompts used (fallback included).
    """
    sim_n = image_emb @ normal.T
    sim_a = image_emb @ anomalous.T
    keep = keep_mask(sim_n, sim_a, rule)
    t_n = normal.shape[0]
    h, used = [], []
    for mask, prompts in ((keep[:, :t_n], normal), (keep[:, t_n:], anomalous)):
        mask = mask.clone()
        mask[~mask.any(dim=-1)] = True  # fallback: a state with no kept prompt uses all of them
        w = mask.to(prompts.dtype)
        h.append(F.normalize((w @ prompts) / w.sum(-1, keepdim=True), dim=-1))
        used.append(mask)
    return h[0], h[1], torch.cat(used, dim=-1)
