"""Few-shot vision guidance from DINOv2 patch features, as AnomalyDINO (Damm et al., WACV 2025).

Per query image (patch tokens from fade_cli/model/dino.py, L2-normalised for matching):
  distance  d(p) = 1 − max_r <p, r> over the reference patches r (sec. 3.1; cosine distance,
            twice FADE's ½(1 − cos));
  mask      optional foreground mask (sec. 3.2): patches outside it get d = 0, as AnomalyDINO;
  score     q(D) = mean of the ⌊1 % · N⌋ largest patch distances (the maximum when that is 0),
            over all N patches of the image, masked ones included (AnomalyDINO's mean_top1p);
  map       the (h, w) patch-distance grid resized bilinearly to the output grid G×G, then
            Gaussian-smoothed with σ = 4 pixels at the 448-px evaluation size (σ·G/448 cells).

References may be augmented with rotations by 0, 45, …, 315° (sec. 3.2, "agnostic" preset):
each reference's normalised input is rotated about its centre (bilinear, borders reflected
about the edge pixels as cv2's BORDER_DEFAULT), after resizing instead of before.

Foreground mask (our reading of sec. 3.2, documented in docs/methods.md): the first principal
component is fitted once on the (un-rotated) reference patches, not per image; its sign is
flipped when at most 35 % of the references' central patches (20 % border cut) score above the
threshold (10, AnomalyDINO's, in raw token units); a patch is foreground when its score
(token − mean)·component exceeds the threshold; the mask is then dilated and closed with 3×3
squares. `mask="auto"` follows AnomalyDINO's per-category choice: on for MVTec capsule,
hazelnut, pill, screw, toothbrush and every VisA class, off otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import MemoryBankError
from .memory import MemoryBank

ROTATION_ANGLES = tuple(range(0, 360, 45))
AUGMENTS = ("none", "rotate")
MASK_MODES = ("auto", "on", "off")
MASK_THRESHOLD = 10.0  # AnomalyDINO's threshold on the first principal component
CENTRE_BORDER = 0.2  # the central region cuts this fraction of the grid from each side
CENTRE_MIN_FOREGROUND = 0.35  # the foreground side must cover more of the centre than this
TOP_FRACTION = 0.01
SMOOTH_SIGMA = 4.0  # pixels at SMOOTH_SIZE
SMOOTH_SIZE = 448
# AnomalyDINO masks these categories (MVTec-AD: five objects on a plain background; VisA: all)
MASKED_CLASSES = frozenset({
    "capsule", "hazelnut", "pill", "screw", "toothbrush",
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
})


def masking_applies(mode: str, class_name: str) -> bool:
    """Whether the foreground mask is used: `on`, `off`, or `auto` = AnomalyDINO's per-category rule."""
    if mode == "auto":
        return class_name.strip().lower().replace(" ", "_") in MASKED_CLASSES
    return mode == "on"


def nearest_cosine_distance(query: torch.Tensor, bank: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q, D), (M, D) L2-normalised -> (Q,) 1 − the highest cosine similarity to a bank row.

    `chunk` query rows at a time (memory flat in Q); a row maximum, cheaper than top-k for k = 1."""
    if bank.shape[0] == 0:
        raise MemoryBankError("the DINOv2 reference bank is empty")
    return torch.cat([1.0 - (query[i : i + chunk] @ bank.T).amax(dim=1) for i in range(0, query.shape[0], chunk)])


def mean_top_fraction(distances: torch.Tensor, fraction: float = TOP_FRACTION) -> torch.Tensor:
    """(B, N) -> (B,) mean of each row's ⌊fraction·N⌋ largest values; the maximum when that is 0."""
    k = int(distances.shape[1] * fraction)
    if k == 0:
        return distances.amax(dim=1)
    return distances.topk(k, dim=1).values.mean(dim=1)


def rotate_images(pixels: torch.Tensor, angles: Sequence[float] = ROTATION_ANGLES) -> torch.Tensor:
    """(B, C, H, W) -> (B·A, C, H, W): each image rotated counter-clockwise (as shown, y down) by
    every angle about its centre, same canvas; bilinear, out-of-canvas samples reflected about
    the edge pixels. Image-major: all angles of image 0 first."""
    b, c, h, w = pixels.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    dx, dy = xs - (w - 1) / 2, ys - (h - 1) / 2
    grids = []
    for angle in angles:
        t = math.radians(angle)
        # output pixel (dx, dy) samples the source at the inverse rotation
        sx = math.cos(t) * dx - math.sin(t) * dy + (w - 1) / 2
        sy = math.sin(t) * dx + math.cos(t) * dy + (h - 1) / 2
        # align_corners=True: -1 and 1 are the centres of the edge pixels, which reflection mirrors about
        gx = sx * 2 / max(w - 1, 1) - 1
        gy = sy * 2 / max(h - 1, 1) - 1
        grids.append(torch.stack([gx, gy], dim=-1))
    grid = torch.stack(grids).to(pixels.device, pixels.dtype)  # (A, H, W, 2)
    n = len(grids)
    src = pixels.repeat_interleave(n, dim=0)
    return F.grid_sample(src, grid.repeat(b, 1, 1, 1), mode="bilinear", padding_mode="reflection", align_corners=True)


def dilate(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) bool -> (h, w): 3×3 square dilation; outside the grid counts as background."""
    return F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def erode(mask: torch.Tensor) -> torch.Tensor:
    """(h, w) bool -> (h, w): 3×3 square erosion; outside the grid never erodes (cv2's default)."""
    return F.max_pool2d(-mask[None, None].float(), 3, stride=1, padding=1)[0, 0] < -0.5


def close_holes(mask: torch.Tensor) -> torch.Tensor:
    """3×3 morphological closing (dilation, then erosion)."""
    return erode(dilate(mask))


def central_region(grid: tuple[int, int], border: float = CENTRE_BORDER) -> tuple[slice, slice]:
    h, w = grid
    return slice(int(h * border), int(h * (1 - border))), slice(int(w * border), int(w * (1 - border)))


@dataclass
class ForegroundPCA:
    """First principal component of reference patch tokens, oriented so that the object is positive."""

    mean: torch.Tensor  # (D,)
    component: torch.Tensor  # (D,), unit length
    threshold: float = MASK_THRESHOLD

    @classmethod
    def fit(cls, tokens: Sequence[torch.Tensor], grids: Sequence[tuple[int, int]],
            threshold: float = MASK_THRESHOLD) -> "ForegroundPCA":
        """tokens: per reference image (h·w, D) raw patch tokens, with its grid (h, w)."""
        x = torch.cat(list(tokens)).double()
        mean = x.mean(dim=0)
        centred = x - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
        component = vectors[:, -1]
        pca = cls(mean=mean.float(), component=component.float(), threshold=threshold)
        kept = total = 0
        for t, grid in zip(tokens, grids):
            rows, cols = central_region(grid)
            centre = (pca.scores(t) > threshold).view(grid)[rows, cols]
            kept, total = kept + int(centre.sum()), total + centre.numel()
        if kept <= CENTRE_MIN_FOREGROUND * total:  # AnomalyDINO: objects sit in the centre
            pca.component = -pca.component
        return pca

    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) projection on the first principal component."""
        return (tokens - self.mean.to(tokens)) @ self.component.to(tokens)

    def mask(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(h·w, D) raw tokens -> (h, w) bool foreground: score > threshold, dilated, closed."""
        return close_holes(dilate((self.scores(tokens) > self.threshold).view(grid)))


def patch_distances(tokens: torch.Tensor, bank: torch.Tensor, foreground: torch.Tensor | None = None) -> torch.Tensor:
    """(N, D) raw query tokens, (M, D) L2-normalised bank -> (N,) distances, 0 outside `foreground` (N,)."""
    d = nearest_cosine_distance(F.normalize(tokens, dim=-1), bank.to(tokens))
    return d * foreground.to(d.dtype) if foreground is not None else d


def distance_map(distances: torch.Tensor, grid: tuple[int, int], out_grid: int, sigma_px: float = SMOOTH_SIGMA,
                 smooth_size: int = SMOOTH_SIZE) -> torch.Tensor:
    """(h·w,) patch distances -> (G, G) map: bilinear resize (half-pixel centres), Gaussian σ·G/size cells."""
    from .filo import gaussian_smooth, smoothing_sigma

    grid_map = distances.view(1, 1, *grid)
    resized = F.interpolate(grid_map, size=(out_grid, out_grid), mode="bilinear", align_corners=False)[0]
    return gaussian_smooth(resized, smoothing_sigma(sigma_px, out_grid, smooth_size))[0]


FEATURE = "dinov2"  # the `feature` a DINOv2 reference bank records


def build_dino_bank(backbone, images: Sequence, augment: str = "rotate", meta: dict | None = None) -> MemoryBank:
    """Good reference images (PIL) -> a MemoryBank whose one "scale" (the DINOv2 input size) holds
    their L2-normalised patch tokens, with `augment="rotate"` also those of the 45°, …, 315°
    rotations; `arrays` keeps the un-rotated raw tokens and each image's grid, from which the
    foreground PCA is fitted (`foreground_pca`), so that banks joined with `MemoryBank.concat`
    give the PCA of all their references. One image at a time: memory flat in their number."""
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, not {augment!r}")
    if not images:
        raise ValueError("no reference images")
    angles = ROTATION_ANGLES if augment == "rotate" else (0,)
    patches, raw, grids = [], [], []
    p = backbone.patch_size
    for image in images:
        pixels = backbone.preprocess(image)[None].to(backbone.device)  # rotated on the device
        grids.append((pixels.shape[-2] // p, pixels.shape[-1] // p))
        tokens = backbone.encode(rotate_images(pixels, angles) if len(angles) > 1 else pixels)  # (A, N, D), 0° first
        raw.append(tokens[0].cpu())
        patches.append(F.normalize(tokens.flatten(0, 1), dim=-1).cpu())
    info = {"model": backbone.model_name, "weights_id": backbone.weights_id, "feature": FEATURE,
            "pretrained": backbone.pretrained, "augment_refs": augment, "n_images": len(raw)}
    return MemoryBank(patches={backbone.size: torch.cat(patches)}, meta={**info, **(meta or {})},
                      arrays={"tokens": torch.cat(raw), "grids": torch.tensor(grids, dtype=torch.int64)})


def foreground_pca(bank: MemoryBank, threshold: float = MASK_THRESHOLD) -> ForegroundPCA:
    """The foreground PCA of a DINOv2 bank's un-rotated reference tokens."""
    grids = [tuple(int(v) for v in g) for g in bank.arrays["grids"]]
    tokens = torch.split(bank.arrays["tokens"], [h * w for h, w in grids])
    return ForegroundPCA.fit(tokens, grids, threshold)


def score_images(backbone, bank: MemoryBank, images: Sequence, pca: ForegroundPCA | None, out_grid: int,
                 sigma_px: float = SMOOTH_SIGMA, smooth_size: int = SMOOTH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Query images (PIL) -> (maps (B, G, G) smoothed distances, scores (B,) mean of the top 1 %);
    `pca`: the foreground PCA to mask with, None = no mask. Distances are 1 − cos: in [0, 2]."""
    return score_tokens(backbone.encode_images(images), bank.patches[backbone.size].to(backbone.device), pca,
                        out_grid, sigma_px, smooth_size)


def score_tokens(encoded: Sequence[tuple[torch.Tensor, tuple[int, int]]], bank_patches: torch.Tensor,
                 pca: ForegroundPCA | None, out_grid: int, sigma_px: float = SMOOTH_SIGMA,
                 smooth_size: int = SMOOTH_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """`score_images` from encoded queries: per image (raw tokens (N, D), grid (h, w))."""
    maps, scores = [], []
    for tokens, grid in encoded:
        foreground = pca.mask(tokens, grid).flatten() if pca is not None else None
        d = patch_distances(tokens, bank_patches, foreground)
        scores.append(mean_top_fraction(d[None])[0])
        maps.append(distance_map(d, grid, out_grid, sigma_px, smooth_size))
    return torch.stack(maps), torch.stack(scores)
