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
        return errs

    def as_dict(self) -> dict:
        return asdict(self)
