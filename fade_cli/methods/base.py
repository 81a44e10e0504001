"""What every method shares: the per-image Result, batch tensors to Results, reference banks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from PIL import Image

from .. import __version__
from ..errors import UsageError
from ..model.backbone import Backbone, preprocess_batch
from .memory import MemoryBank


@dataclass
class Result:
    """One image's outcome. `map` is the fused patch-grid map (G×G, values in [0, 1])."""

    score: float
    map: torch.Tensor | None
    language_score: float | None = None
    vision_score: float | None = None
    extras: dict = field(default_factory=dict)


PerImage = dict[str, tuple[torch.Tensor, Callable]]  # extras name -> (batch tensor (B, ...), format one row)


def to_results(score: torch.Tensor, maps: torch.Tensor, language: torch.Tensor | None = None,
               vision: torch.Tensor | None = None, per_image: PerImage | None = None) -> list[Result]:
    """Per-image Results from a batch's tensors: score (B,), maps (B, G, G), optional language and
    vision scores (B,), and `per_image` extras, each a batch tensor with the function that turns
    one image's row (a Python number or list) into its `extras` value. Every tensor is copied to
    the host once per batch: on a GPU one synchronisation per tensor, not per image and value."""
    score, maps = score.float().cpu(), maps.float().cpu()
    language = language.float().cpu().tolist() if language is not None else None
    vision = vision.float().cpu().tolist() if vision is not None else None
    rows = {name: (values.cpu().tolist(), fmt) for name, (values, fmt) in (per_image or {}).items()}
    return [
        Result(
            score=float(score[i]),
            map=maps[i],
            language_score=language[i] if language is not None else None,
            vision_score=vision[i] if vision is not None else None,
            extras={name: fmt(values[i]) for name, (values, fmt) in rows.items()},
        )
        for i in range(score.shape[0])
    ]


def build_reference_bank(
    backbone: Backbone, images: Sequence[Image.Image], scales: Sequence[int], feature: str, meta: dict | None = None
) -> MemoryBank:
    """Patch embeddings of good reference images at each scale (FADE Fig. 2d)."""
    if not images:
        raise UsageError("no reference images")
    patches: dict[int, torch.Tensor] = {}
    for scale in sorted(set(scales)):
        chunks = []
        for img in images:  # one at a time: memory stays flat in the number of references
            emb = backbone.encode_images(
                preprocess_batch([img], scale, backbone.device), want_cls=False, want_clip=feature == "clip", want_gem=feature == "gem"
            )
            chunks.append((emb.clip if feature == "clip" else emb.gem)[0])
        patches[scale] = torch.cat(chunks)
    info = {
        "model": backbone.model_name,
        "weights_id": backbone.weights_id,
        "feature": feature,
        "n_images": len(images),
        "fade_version": __version__,
    }
    return MemoryBank(patches=patches, meta={**info, **(meta or {})})


def bank_for_scoring(pipeline, reference_bank: MemoryBank | None) -> MemoryBank | None:
    """The reference bank a `score` call uses: the one passed in (checked against the pipeline's
    model, scales and feature) or the pipeline's own; few-shot scoring needs one."""
    bank = reference_bank if reference_bank is not None else pipeline.reference_bank
    if pipeline.few_shot and bank is None:
        raise UsageError("few-shot scoring needs a reference bank")
    if reference_bank is not None:
        reference_bank.check_compatible(pipeline.backbone, *pipeline.bank_layout)
    return bank
