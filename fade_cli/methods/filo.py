"""FiLo / FiLo++ without training: the parts of their localisation that need no learned weights.

FiLo (Gu et al., ACM MM 2024) and FiLo++ learn text templates, convolution kernels and an
adapter; this project trains nothing, so each learned part is replaced by a fixed counterpart
and every part is a switch on top of FADE (all off = FADE, bit for bit):

- Position-enhanced prompts (FiLo sec. 3.3.2): a first pass of FADE gives the likely anomaly
  region, one of nine ("top left" ... "bottom right", the official code's words, the image cut
  in equal thirds); the language map is computed again with the anomalous prompts of a
  position bank (`filo`: "... with {anomaly} {pos}") filled with "at <region>" for that region,
  and averaged with the first pass. FiLo takes the region from the centre of Grounding DINO's
  best box; here it is the peak of the first-pass map.
- Object prior (FiLo sec. 3.3.1, "scores outside all boxes multiplied by λ"): without Grounding
  DINO, the object is estimated per patch from GEM patch-text similarity to "a photo of a
  {class}" against background prompts; maps are multiplied by λ + (1 − λ)·foreground.
  λ = 0.7 as in the official FiLo test code.
- Multi-shape aggregation (FiLo's MMCI, sec. 3.3.3, with fixed instead of learned kernels):
  patch features averaged over 1×1, 3×3, 5×5, 7×7, 1×5 and 5×1 neighbourhoods (neighbours
  inside the grid), re-normalised, matched to the text, the maps averaged. FiLo's kernels act
  on a 37×37 grid; on each of our grids they are scaled to span the same fraction of the side
  (k·G/37, nearest odd size, distinct shapes once), so a 7×7 never covers half of a 15×15 grid.
- Gaussian smoothing of the final maps (FiLo eq. 4, FiLo++ eq. 7; σ = 4 pixels at the
  evaluation resolution), applied on the patch grid with σ·G/size grid cells.
- Foreground-restricted matching (FiLo++ few-shot branch, eqs. 5–6, "suppressing the scores of
  regions outside the boxes"): the reference-bank vision map × (λ + (1 − λ)·foreground), once,
  with the object prior's λ (0.7 when that is off), after the image score as FiLo does.
- FiLo's image score (official code): ½(text probability + max of the map), the map taken
  before the suppression; an option instead of FADE's score.

Maps here are (B, G, G) patch-grid maps in [0, 1]; patches are (B, g·g, D), L2-normalised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ..errors import PromptBankError
from ..prompts.banks import load_bank
from ..prompts.text import TextClassifier, TextEncoderCache
from .base import PromptSet
from .guidance import fuse_scales, language_score, to_grid

# FiLo's nine regions, in the official code's order and words ("... at top left.")
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
CENTER = POSITIONS.index("center")
# FiLo's MMCI kernel shapes (appendix C.5: the combination the paper settles on)
MULTI_SHAPE_KERNELS = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))
MULTI_SHAPE_GRID = 37  # FiLo's patch grid (ViT-L/14 at 518 px), on which those kernels are defined
DEFAULT_OBJECT_PRIOR = 0.7  # λ of the official FiLo test code (scores outside boxes × 0.7)
DEFAULT_SMOOTH_SIGMA = 4.0  # σ of FiLo / FiLo++ (pixels at the evaluation resolution)
# Foreground estimate: object vs background prompts (embedded in the config's text frame,
# "a photo of a {prompt}."). Few and plain on purpose: they only separate object from backdrop.
OBJECT_PROMPTS = ("{class}", "close-up of a {class}", "part of a {class}")
BACKGROUND_PROMPTS = ("background", "plain background", "empty surface", "blank table top")

# What `--method filo` switches on; explicit flags override each entry. Provisional: chosen on
# the synthetic set with random weights (docs/ablation-filo.md), where the position pass cost
# 7 points of zero-shot pixel AUROC and PRO and the others helped or were neutral. Random
# weights say nothing about text-driven parts: revisit with the real checkpoint.
FILO_PRESET = {
    "positions": False,
    "object_prior": DEFAULT_OBJECT_PRIOR,
    "multi_shape": True,
    "smooth_sigma": DEFAULT_SMOOTH_SIGMA,
    "fg_matching": True,
    "filo_score": False,
}


def position_phrase(position: str) -> str:
    """The {pos} filling for one region, as the official code appends it: 'at top left'."""
    return f"at {position}"


# ---- positions -------------------------------------------------------------------------------
def region_grid(g: int) -> torch.Tensor:
    """(g, g) index into POSITIONS of each cell: the image cut in equal thirds, cell centres decide."""
    third = torch.clamp(((torch.arange(g, dtype=torch.float64) + 0.5) * 3 / g).floor().long(), max=2)
    return third[:, None] * 3 + third[None, :]


def peak_region(maps: torch.Tensor) -> torch.Tensor:
    """(B, G, G) first-pass maps -> (B,) region index of each map's maximum.

    A flat map points nowhere: it gets the centre, as FiLo does when no box is found."""
    b, g, _ = maps.shape
    flat = maps.reshape(b, -1)
    regions = region_grid(g).to(maps.device).reshape(-1)[flat.argmax(dim=1)]
    span = flat.amax(dim=1) - flat.amin(dim=1)
    return torch.where(span > 0, regions, torch.full_like(regions, CENTER))


def position_language_map(patches: torch.Tensor, h_normal: torch.Tensor, h_anomalous: torch.Tensor,
                          multi_shape: bool, reference_grid: int = MULTI_SHAPE_GRID) -> torch.Tensor:
    """Second language pass: (B, N, D) patches against h− and each image's own h+ (B, D) -> (B, g, g)."""
    maps = []
    for i in range(patches.shape[0]):  # each image has its own region, hence its own h+
        text = TextClassifier(h_normal=h_normal, h_anomalous=h_anomalous[i], counts=(0, 0), banks=())
        maps.append(language_map(patches[i : i + 1], text, multi_shape, reference_grid))
    return torch.cat(maps)


# ---- multi-shape aggregation -----------------------------------------------------------------
def multi_shape_features(patches: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """(B, g·g, D) -> (B, g·g, D): each patch averaged with its kh×kw neighbourhood on the grid.

    The averages are re-normalised, since the language score assumes unit vectors (FiLo
    normalises too). Borders average the neighbours inside the grid (count_include_pad=False);
    after re-normalisation that is the same as zero padding, as zeros add no direction."""
    kh, kw = kernel
    if (kh, kw) == (1, 1):
        return patches
    b, n, d = patches.shape
    g = int(round(n**0.5))
    x = patches.transpose(1, 2).reshape(b, d, g, g)
    y = F.avg_pool2d(x, (kh, kw), stride=1, padding=(kh // 2, kw // 2), count_include_pad=False)
    return F.normalize(y.reshape(b, d, n).transpose(1, 2), dim=-1)


def grid_kernels(grid: int, reference_grid: int = MULTI_SHAPE_GRID,
                 kernels: Sequence[tuple[int, int]] = MULTI_SHAPE_KERNELS) -> tuple[tuple[int, int], ...]:
    """FiLo's kernels for a grid×grid patch grid: each side k becomes k·grid/reference_grid rounded
    to the nearest odd size ≥ 1 (so the window keeps its centre and its share of the image side);
    shapes that coincide after scaling are kept once. reference_grid 0: the kernels unchanged."""
    if not reference_grid:
        return tuple(kernels)

    def side(k: int) -> int:
        return 2 * round((max(1.0, k * grid / reference_grid) - 1) / 2) + 1

    return tuple(dict.fromkeys((side(kh), side(kw)) for kh, kw in kernels))


def multi_shape_map(patches: torch.Tensor, text: TextClassifier, kernels: Sequence[tuple[int, int]] | None = None,
                    reference_grid: int = MULTI_SHAPE_GRID) -> torch.Tensor:
    """Language map of each kernel's aggregated features, averaged over kernels: (B, N, D) -> (B, g, g).

    kernels None: FiLo's, scaled to this grid (`grid_kernels`)."""
    if kernels is None:
        kernels = grid_kernels(int(round(patches.shape[1] ** 0.5)), reference_grid)
    return torch.stack([to_grid(language_score(multi_shape_features(patches, k), text)) for k in kernels]).mean(dim=0)


def language_map(patches: torch.Tensor, text: TextClassifier, multi_shape: bool,
                 reference_grid: int = MULTI_SHAPE_GRID) -> torch.Tensor:
    """FADE's language map of one scale, (B, N, D) -> (B, g, g), multi-shape or per patch."""
    if multi_shape:
        return multi_shape_map(patches, text, reference_grid=reference_grid)
    return to_grid(language_score(patches, text))


# ---- object prior, smoothing -----------------------------------------------------------------
def object_prior(maps: torch.Tensor, foreground: torch.Tensor, lam: float) -> torch.Tensor:
    """Scores outside the object multiplied by λ: maps · (λ + (1 − λ)·foreground), foreground in [0, 1]."""
    return maps * (lam + (1.0 - lam) * foreground)


def smoothing_sigma(sigma_px: float, grid: int, size: int) -> float:
    """σ in pixels of a size×size map -> σ in cells of the G×G grid it is upsampled from."""
    return sigma_px * grid / size


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) -> (B, H, W), each map filtered with a Gaussian of σ cells (scipy, truncated at
    4σ, borders reflected so that a constant map stays constant)."""
    if sigma <= 0:
        return maps
    arr = maps.detach().float().cpu().numpy()
    out = ndimage.gaussian_filter(arr, sigma=(0.0, sigma, sigma), mode="reflect", truncate=4.0)
    return torch.from_numpy(np.ascontiguousarray(out)).to(maps.device, maps.dtype)


# ---- text ------------------------------------------------------------------------------------
@dataclass
class FiloText:
    """Text embeddings the switches need, computed once per class (cached on disk by the encoder)."""

    h_normal: torch.Tensor | None = None  # (D,) mean normal prompt of the position banks
    h_positions: torch.Tensor | None = None  # (9, D) mean anomalous prompt for each region
    foreground: TextClassifier | None = None  # h_normal = background, h_anomalous = object
    banks: tuple[str, ...] = ()


def needs_foreground(config) -> bool:
    return config.object_prior is not None or config.fg_matching


def any_switch(config) -> bool:
    return bool(config.positions or config.object_prior is not None or config.multi_shape
                or config.smooth_sigma > 0 or config.fg_matching or config.filo_score)


def _position_texts(config, class_name: str) -> tuple[list, list[str], list[list[str]]]:
    """(banks, normal texts, anomalous texts per region) of the position pass."""
    banks = [load_bank(b) for b in config.position_prompts]
    normal = [t for b in banks for t in b.texts("normal", class_name, pos="")]
    anomalous = [[t for b in banks for t in b.texts("anomalous", class_name, pos=position_phrase(p))]
                 for p in POSITIONS]
    if not normal or not anomalous[0]:
        names = ", ".join(b.label for b in banks)
        raise PromptBankError(f"position banks {names} give no {'normal' if not normal else 'anomalous'} "
                              f"prompts for class '{class_name}'")
    return banks, normal, anomalous


def _foreground_texts(class_name: str) -> tuple[list[str], list[str]]:
    """(object prompts, background prompts) of the object estimate."""
    name = class_name.replace("_", " ")
    return [p.replace("{class}", name) for p in OBJECT_PROMPTS], list(BACKGROUND_PROMPTS)


def filo_prompt_sets(config, class_name: str) -> list[PromptSet]:
    """The texts `build_text_classifier` encodes for the switched-on parts (for `fade prompts embed`)."""
    sets = []
    if config.positions:
        _, normal, anomalous = _position_texts(config, class_name)
        sets.append(PromptSet(tuple(normal + [t for texts in anomalous for t in texts]), config.text_frame))
    if needs_foreground(config):
        objects, background = _foreground_texts(class_name)
        sets.append(PromptSet(tuple(objects + background), config.text_frame))
    return sets


def build_filo_text(config, class_name: str, encoder: TextEncoderCache) -> FiloText:
    """The position prompts of all nine regions (one encoder call) and the object/background prompts."""
    out = FiloText()
    if config.positions:
        banks, normal, anomalous = _position_texts(config, class_name)
        emb = encoder.encode(normal + [t for texts in anomalous for t in texts], config.text_frame)
        n, a = len(normal), len(anomalous[0])
        out.h_normal = emb[:n].mean(dim=0)
        out.h_positions = emb[n:].reshape(len(POSITIONS), a, -1).mean(dim=1)
        out.banks = tuple(b.label for b in banks)
    if needs_foreground(config):
        objects, background = _foreground_texts(class_name)
        emb = encoder.encode(objects + background, config.text_frame)
        out.foreground = TextClassifier(h_normal=emb[len(objects):].mean(dim=0), h_anomalous=emb[: len(objects)].mean(dim=0),
                                        counts=(len(background), len(objects)), banks=())
    return out


# ---- the refinement stage --------------------------------------------------------------------
class FiloRefinement:
    """Applies the switched-on FiLo parts to FADE's fused language and vision maps, in two steps.

    `refine` (before the image score; each step only when its switch is on):
      1. foreground F (B, G, G) = GEM patch-text p(object), fused over scales like the maps;
      2. positions: first-pass map = clip((1 − w)·language + w·vision) (× the object prior),
         region of its peak, language ← ½(language + position-enhanced language);
      3. language, vision ← Gaussian-smoothed (σ·G/size cells).
    The pipeline takes the image score from these maps, then `suppress` (FiLo: outside the boxes
    × λ, after the image score; FiLo++ eqs. 5–7 for the few-shot map, once):
      4. language ← × (λ + (1 − λ)·F) (object prior);
      5. vision ← × (λ + (1 − λ)·F) once, with the object prior's λ, or with λ = 0.7 for
         foreground matching alone (few-shot vision only).
    The pipeline then fuses and clips as FADE does."""

    def __init__(self, config, text: FiloText):
        self.config = config
        self.text = text

    def _patches(self, emb):
        return emb.gem if self.config.seg_feature == "gem" else emb.clip

    def refine(self, embeddings: dict, language: torch.Tensor | None, vision: torch.Tensor | None,
               few_shot: bool) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """(language, vision, foreground F or None), before any suppression."""
        del few_shot  # the refinement before the score is the same zero- and few-shot
        cfg = self.config
        ref = language if language is not None else vision
        grid = ref.shape[-1]
        fg = None
        if needs_foreground(cfg):
            fg = fuse_scales([to_grid(language_score(self._patches(embeddings[s]), self.text.foreground))
                              for s in cfg.seg_scales]).to(ref.dtype)
        if cfg.positions and language is not None:
            first = self._fuse(language, vision)
            if cfg.object_prior is not None:
                first = object_prior(first, fg, cfg.object_prior)
            region = peak_region(first)
            h_a = self.text.h_positions.to(ref.device)[region.to(ref.device)]
            second = fuse_scales([position_language_map(self._patches(embeddings[s]), self.text.h_normal.to(ref.device),
                                                        h_a, cfg.multi_shape, cfg.multi_shape_grid)
                                  for s in cfg.seg_scales])
            language = 0.5 * (language + second.to(language.dtype))
        if cfg.smooth_sigma > 0:
            sigma = smoothing_sigma(cfg.smooth_sigma, grid, cfg.smooth_size)
            language = gaussian_smooth(language, sigma) if language is not None else None
            vision = gaussian_smooth(vision, sigma) if vision is not None else None
        return language, vision, fg

    def suppress(self, language: torch.Tensor | None, vision: torch.Tensor | None, fg: torch.Tensor | None,
                 few_shot: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Outside the estimated object × λ: each map once (after the image score)."""
        cfg = self.config
        lam = cfg.object_prior
        if lam is not None and language is not None:
            language = object_prior(language, fg, lam)
        lam_vision = lam if lam is not None else (DEFAULT_OBJECT_PRIOR if cfg.fg_matching and few_shot else None)
        if lam_vision is not None and vision is not None:
            vision = object_prior(vision, fg, lam_vision)
        return language, vision

    def _fuse(self, language: torch.Tensor, vision: torch.Tensor | None) -> torch.Tensor:
        """The map FADE itself would output (the pipeline's fusion, before any FiLo step)."""
        cfg = self.config
        if cfg.segmentation == "both" and vision is not None:
            w = cfg.vision_weight
            return ((1.0 - w) * language + w * vision).clamp(0.0, 1.0)
        return language.clamp(0.0, 1.0)


# ---- labels and presets ----------------------------------------------------------------------
def switches(config) -> list[str]:
    """The switched-on parts, as result rows record them."""
    out = []
    if config.positions:
        out.append("positions")
    if config.object_prior is not None:
        out.append(f"object-prior={config.object_prior:g}")
    if config.multi_shape:
        grid = config.multi_shape_grid
        out.append("multi-shape" if grid == MULTI_SHAPE_GRID else ("multi-shape=fixed" if not grid else f"multi-shape={grid}"))
    if config.smooth_sigma > 0:
        out.append(f"smooth={config.smooth_sigma:g}")
    if config.fg_matching:
        out.append("fg-matching")
    if config.filo_score:
        out.append("filo-score")
    return out


def method_label(config) -> str:
    """'fade' when no FiLo part is on, else 'filo[<switches>]' (FADE plus those parts)."""
    on = switches(config)
    return f"filo[{','.join(on)}]" if on else "fade"


def resolve_switches(preset: bool, positions: bool | None = None, object_prior: float | None = None,
                     multi_shape: bool | None = None, smooth: float | None = None,
                     fg_matching: bool | None = None, filo_score: bool | None = None,
                     multi_shape_grid: int | None = None) -> dict:
    """Command-line FiLo options -> FadeConfig fields. None = the method's default: FILO_PRESET
    with `preset` (`--method filo`), off otherwise. λ = 1 is the identity and counts as off."""
    base = FILO_PRESET if preset else {"positions": False, "object_prior": None, "multi_shape": False,
                                       "smooth_sigma": 0.0, "fg_matching": False, "filo_score": False}
    lam = base["object_prior"] if object_prior is None else float(object_prior)
    return {
        "positions": base["positions"] if positions is None else positions,
        "object_prior": None if lam is None or lam == 1.0 else lam,
        "multi_shape": base["multi_shape"] if multi_shape is None else multi_shape,
        "smooth_sigma": float(base["smooth_sigma"] if smooth is None else smooth),
        "fg_matching": base["fg_matching"] if fg_matching is None else fg_matching,
        "filo_score": base["filo_score"] if filo_score is None else filo_score,
        "multi_shape_grid": MULTI_SHAPE_GRID if multi_shape_grid is None else int(multi_shape_grid),
    }
