"""The FADE method as a composition of backbone, prompts, memory bank and guidance.

Per image (FADE sec. 3, official defaults):
  AC, language: CLIP CLS at 240 against the class-named WinCLIP prompts.
  AS, language: GEM patches at 240/448/896 against WinCLIP + LLM prompts with class "object".
  AS, vision:   0-shot: the query's own GEM patches, 2nd nearest neighbour;
                k-shot: the references' CLIP patches per scale, nearest neighbour.
  Each scale's map is resized to the largest grid (56×56) and averaged.
  map   = clip((1 − w)·language + w·m·vision, 0, 1)
  score = language AC (0-shot), or clip(½(language AC + max(m·vision)), 0, 1) (k-shot).

FiLo / FiLo++ training-free parts (fade_cli/filo.py) are switches in FadeConfig; with all
off (the default) this is FADE, bit for bit.

The pipeline does no file I/O: it takes PIL images and returns tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image

from . import __version__
from .backbone import Backbone, ImageEmbeddings, preprocess_batch, preprocess_scales
from .config import FadeConfig
from .errors import UsageError
from .filo import FiloRefinement, FiloText, any_switch, build_filo_text, method_label, multi_shape_map, needs_foreground
from .guidance import fuse_scales, language_score, to_grid
from .memory import MemoryBank, self_knn_distance
from .prompts import PromptBank, TextClassifier, TextEncoderCache, build_text_classifier, load_bank


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


class FadePipeline:
    """FADE for one product class: `pipeline(images) -> list[Result]`."""

    def __init__(
        self,
        backbone: Backbone,
        config: FadeConfig,
        class_name: str,
        cls_text: TextClassifier | None,
        seg_text: TextClassifier | None,
        reference_bank: MemoryBank | None = None,
        few_shot: bool | None = None,
        filo_text: FiloText | None = None,
    ):
        self.backbone = backbone
        # few_shot without a bank: the bank comes with each `score` call (evaluation over seeds)
        self.few_shot = reference_bank is not None if few_shot is None else few_shot
        self.config = config.resolved(self.few_shot)
        self.class_name = class_name
        self.cls_text = cls_text
        self.seg_text = seg_text
        self.reference_bank = reference_bank
        if reference_bank is not None:
            reference_bank.check_compatible(backbone, *self.bank_layout)
        # FiLo / FiLo++ training-free parts (fade_cli/filo.py); None = plain FADE
        self.filo_text = filo_text
        self.filo = None
        if any_switch(self.config):
            if (self.config.positions or needs_foreground(self.config)) and filo_text is None:
                raise UsageError("these FiLo switches need their text embeddings: build the pipeline with from_config")
            self.filo = FiloRefinement(self.config, filo_text or FiloText())

    @classmethod
    def from_config(
        cls,
        backbone: Backbone,
        config: FadeConfig,
        class_name: str,
        reference_bank: MemoryBank | None = None,
        text_cache: TextEncoderCache | None = None,
    ) -> "FadePipeline":
        errs = config.check()
        if errs:
            raise UsageError(errs[0])
        for scale in (config.cls_scale, *config.seg_scales):
            backbone.check_scale(scale)
        encoder = text_cache or TextEncoderCache(backbone, frame=config.text_frame)
        cls_text = seg_text = None
        if config.classification != "vision":
            cls_text = build_text_classifier(_banks(config.cls_prompts), class_name, encoder)
        if config.segmentation != "vision":
            seg_text = build_text_classifier(_banks(config.seg_prompts), config.seg_class_name, encoder)
        filo_text = build_filo_text(config, class_name, encoder) if any_switch(config) else None
        return cls(backbone, config, class_name, cls_text, seg_text, reference_bank, filo_text=filo_text)

    @property
    def method_label(self) -> str:
        """What result rows record as their method: 'fade', or 'filo[...]' with the FiLo switches on."""
        return method_label(self.config)

    def few_shot_variant(self) -> "FadePipeline":
        """The same pipeline scoring with reference banks passed to `score` (evaluation over seeds)."""
        return FadePipeline(self.backbone, self.config, self.class_name, self.cls_text, self.seg_text, few_shot=True,
                            filo_text=self.filo_text)

    @property
    def bank_layout(self) -> tuple[tuple[int, ...], str]:
        """Scales and patch feature of the reference bank this pipeline's few-shot mode uses."""
        few = self.config.resolved(few_shot=True) if not self.few_shot else self.config
        return tuple(few.seg_scales), few.vision_feature

    @property
    def banks(self) -> list[str]:
        labels = []
        for text in (self.cls_text, self.seg_text, self.filo_text):
            for b in text.banks if text else ():
                if b not in labels:
                    labels.append(b)
        return labels

    def _features(self, scale: int) -> tuple[bool, set[str]]:
        """What this configuration needs at one scale: (CLS?, patch features)."""
        cfg = self.config
        feats = set()
        if scale in cfg.seg_scales:
            if cfg.segmentation != "vision" or needs_foreground(cfg):  # FiLo's object prior reads them too
                feats.add(cfg.seg_feature)
            if cfg.segmentation != "language" or (self.few_shot and cfg.classification != "language"):
                feats.add(cfg.vision_feature)
        return scale == cfg.cls_scale and cfg.classification != "vision", feats

    def embed(self, images: Sequence[Image.Image], extra_features: Iterable[str] = ()) -> dict[int, ImageEmbeddings]:
        """One forward per scale. `extra_features` ('clip', 'gem') adds patches at the segmentation
        scales so that other configurations can score the same embeddings."""
        cfg = self.config
        out = {}
        pixels = preprocess_scales(images, {cfg.cls_scale, *cfg.seg_scales}, self.backbone.device)
        for scale, batch in pixels.items():
            want_cls, feats = self._features(scale)
            if scale in cfg.seg_scales:
                feats |= set(extra_features)
            out[scale] = self.backbone.encode_images(
                batch, want_cls=want_cls, want_clip="clip" in feats,
                want_gem="gem" in feats, gem_iterations=cfg.gem_iterations,
            )
        return out

    def score(self, embeddings: dict[int, ImageEmbeddings], reference_bank: MemoryBank | None = None) -> list[Result]:
        """Scores and fused maps from embeddings (FADE sec. 3); `reference_bank` overrides the pipeline's."""
        cfg = self.config
        bank = bank_for_scoring(self, reference_bank)
        if cfg.classification == "vision" and not self.few_shot:
            raise UsageError("vision-guided classification needs reference images (--refs or --bank)")
        seg_lang = cfg.segmentation != "vision"
        cls_lang = cfg.classification != "vision"
        cls_vis = cfg.classification != "language" and self.few_shot
        need_vis = cfg.segmentation != "language" or cls_vis

        lang_maps, vis_maps = [], []
        ac = language_score(embeddings[cfg.cls_scale].cls, self.cls_text) if cls_lang else None
        for scale in cfg.seg_scales:
            emb = embeddings[scale]
            if seg_lang:
                patches = emb.gem if cfg.seg_feature == "gem" else emb.clip
                lang_maps.append(multi_shape_map(patches, self.seg_text) if cfg.multi_shape
                                 else to_grid(language_score(patches, self.seg_text)))
            if need_vis:
                patches = emb.gem if cfg.vision_feature == "gem" else emb.clip
                vis = bank.score(scale, patches) if self.few_shot else self_knn_distance(patches, k=2)
                vis_maps.append(to_grid(vis))

        m, w = cfg.vision_multiplier, cfg.vision_weight
        vision = fuse_scales(vis_maps) * m if vis_maps else None
        language = fuse_scales(lang_maps) if lang_maps else None
        per_image = {}
        if self.filo is not None:  # FiLo: object prior, positions, smoothing (fade_cli/filo.py)
            language, vision, per_image = self.filo.refine(embeddings, language, vision, self.few_shot)
        if cfg.segmentation == "both":
            fused = (1.0 - w) * language + w * vision
        else:
            fused = language if cfg.segmentation == "language" else vision
        fused = fused.clamp(0.0, 1.0)

        # the official code takes the max of the vision map after the multiplier
        vis_score = vision.amax(dim=(1, 2)) if vision is not None else None
        if cls_lang and cls_vis:
            score = 0.5 * (ac + vis_score)
        elif cls_vis:
            score = vis_score
        else:
            score = ac
        score = score.clamp(0.0, 1.0)
        return to_results(score, fused, ac, vis_score, per_image)

    def __call__(self, images: Sequence[Image.Image]) -> list[Result]:
        return self.score(self.embed(images))


def bank_for_scoring(pipeline, reference_bank: MemoryBank | None) -> MemoryBank | None:
    """The reference bank a `score` call uses: the one passed in (checked against the pipeline's
    model, scales and feature) or the pipeline's own; few-shot scoring needs one."""
    bank = reference_bank if reference_bank is not None else pipeline.reference_bank
    if pipeline.few_shot and bank is None:
        raise UsageError("few-shot scoring needs a reference bank")
    if reference_bank is not None:
        reference_bank.check_compatible(pipeline.backbone, *pipeline.bank_layout)
    return bank


def _banks(specs: Sequence[str]) -> list[PromptBank]:
    return [load_bank(s) for s in specs]
