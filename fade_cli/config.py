"""Method settings as data. The defaults reproduce the official FADE settings.

Zero-shot (no references): vision guidance from the query's own GEM patches (2nd nearest
neighbour), multiplier 80, weight 0.5 — the official README's zero-shot settings.
Few-shot (reference images or a saved bank): CLIP patches of the references (nearest
neighbour), multiplier 3.5, weight 0.85 — the official run script's defaults with the README's
few-shot feature choice. Every value is overridable; `resolved` fills the preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

MODES = ("language", "vision", "both")
FEATURES = ("clip", "gem")

ZERO_SHOT = {"vision_multiplier": 80.0, "vision_weight": 0.5, "vision_feature": "gem"}
FEW_SHOT = {"vision_multiplier": 3.5, "vision_weight": 0.85, "vision_feature": "clip"}


@dataclass(frozen=True)
class FadeConfig:
    cls_scale: int = 240
    seg_scales: tuple[int, ...] = (240, 448, 896)
    cls_prompts: tuple[str, ...] = ("winclip",)
    seg_prompts: tuple[str, ...] = ("winclip", "fade-llm")
    seg_class_name: str = "object"  # FADE's segmentation prompts are object-agnostic
    classification: str = "both"  # language | vision | both ("both" = language alone in 0-shot)
    segmentation: str = "both"
    seg_feature: str = "gem"
    vision_feature: str | None = None  # None: preset (gem 0-shot, clip few-shot)
    vision_multiplier: float | None = None
    vision_weight: float | None = None
    gem_iterations: int = 1
    text_frame: str = "a photo of a {prompt}."
    # FiLo / FiLo++ training-free switches (fade_cli/filo.py); these defaults are plain FADE.
    positions: bool = False  # second language pass with position-enhanced prompts
    position_prompts: tuple[str, ...] = ("filo",)  # banks whose {pos} prompts that pass uses
    object_prior: float | None = None  # λ: maps outside the estimated object multiplied by it
    multi_shape: bool = False  # patch features averaged over fixed kernels before text matching
    smooth_sigma: float = 0.0  # Gaussian σ in pixels of a smooth_size × smooth_size map; 0 = off
    smooth_size: int = 448  # the evaluation resolution σ is measured at
    fg_matching: bool = False  # few-shot vision scores count only inside the estimated object

    def resolved(self, few_shot: bool) -> "FadeConfig":
        preset = FEW_SHOT if few_shot else ZERO_SHOT
        return replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})

    def check(self) -> list[str]:
        """Problems with the settings, as one-line messages."""
        errs = []
        if self.classification not in MODES or self.segmentation not in MODES:
            errs.append(f"modes must be one of {', '.join(MODES)}")
        for name in ("seg_feature", "vision_feature"):
            value = getattr(self, name)
            if value is not None and value not in FEATURES:
                errs.append(f"{name} must be clip or gem, not {value!r}")
        if not self.seg_scales:
            errs.append("at least one segmentation scale is needed")
        if self.vision_weight is not None and not 0.0 <= self.vision_weight <= 1.0:
            errs.append(f"vision weight must be in [0, 1], not {self.vision_weight}")
        if self.gem_iterations < 0:
            errs.append("GEM iterations must be >= 0")
        if self.object_prior is not None and not 0.0 <= self.object_prior <= 1.0:
            errs.append(f"object prior λ must be in [0, 1], not {self.object_prior}")
        if self.smooth_sigma < 0 or self.smooth_size < 1:
            errs.append(f"smoothing σ must be >= 0 (0 = off), not {self.smooth_sigma}")
        if self.positions and self.segmentation == "vision":
            errs.append("position-enhanced prompts refine the language map: they need segmentation mode language or both")
        if self.positions and not self.position_prompts:
            errs.append("position-enhanced prompts need at least one prompt bank")
        return errs

    def as_dict(self) -> dict:
        return asdict(self)
