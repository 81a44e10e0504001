"""The method protocol, the registry entry's shape and what every method shares.

A method is one module under fade_cli/methods/ with an options dataclass, a pipeline class and a
`Method` entry registered by name in methods/__init__.py (`get_method(name)`). The CLI, the
runner, the Ray engine and the evaluation talk only to these objects and never branch on a
method's name; adding a method touches nothing else.

Method (the registry entry; stateless, picklable):
    name                   its registry name (the registry line also holds its one-line `--method` help)
    flags                  names of the CLI parameters the method reads (e.g. "windows"). The CLI
                           refuses, with exit 2, a flag set on the command line that another method
                           declares and this one does not ("--windows does not apply to --method fade")
    options(values, map_size=448) -> options
                           the method's options dataclass from those parameters' values (only the
                           declared ones, defaults included; absent ones take the method's defaults);
                           UsageError on bad values. `map_size`: the evaluation map size FiLo-style
                           smoothing is measured at (detect/segment: 448, eval: --eval-size)
    pipeline(backbone, options, class_name, reference_bank=None, text_cache=None, few_shot=None)
                           the Pipeline for one product class; few_shot=True without a bank gives a
                           pipeline that takes the bank later (`use_reference_bank`, or `score(e, bank)`)
    prompt_sets(options, class_name) -> list[PromptSet]
                           every (texts, frame) its pipeline encodes through the text cache, so that
                           `fade prompts embed --method NAME` warms exactly those keys
    scores_whole_batch     False: images are scored independently, in batches of --batch-size. True
                           (batch zero-shot methods such as MuSc): a score needs all images of a subset
                           at once, and the engines hand the whole subset to one embed/score call
                           (its pipelines carry the same attribute; the runner and evaluation read it)

Pipeline (one product class; FadePipeline, AlfaPipeline):
    method_label, banks    what result rows record ("fade", "filo[...]", "alfa+r2"; bank labels)
    config                 the resolved options (`as_dict()` goes into settings fingerprints)
    few_shot, reference_bank, backbone
    bank_layout            BankLayout: the scales and patch feature a reference bank must hold, and the
                           check of a bank against them. A method with its own vision backbone (a DINOv2
                           few-shot method) returns a BankLayout subclass whose `check` and `embed` use
                           that backbone (the CLIP backbone they are passed may then be ignored)
    embed_references(images, meta=None) -> MemoryBank      good images -> this method's reference bank
    use_reference_bank(bank)                                 check and keep a bank for scoring
    embed(images, extra_features=()) -> embeddings          opaque to callers; `extra_features` are patch
                           features a few-shot variant needs (`bank_layout.feature`), so that one embedding
                           serves every (shots, seed) run of an evaluation
    score(embeddings, reference_bank=None) -> list[Result]  maps on the patch grid, scores in [0, 1]
    few_shot_variant()     the same pipeline scoring with banks passed to `score`
    explain(images) -> list[dict]                           per image, {"banks": [...], state: [{text,
                           similarity, kept, ...}]}: the image-level prompts with their cosine to the image embedding and
                           whether scoring kept them for this image (`fade explain`)
    __call__(images) = score(embed(images))

Options dataclasses are frozen, picklable (they travel to Ray actors inside ScorerSpec) and have
`as_dict()` and `check() -> list[str]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence

import torch
from PIL import Image

from .. import __version__
from ..errors import UsageError
from ..model.backbone import Backbone, preprocess_batch
from .memory import MemoryBank


@dataclass(frozen=True)
class PromptSet:
    """Texts a method encodes in one text-cache call, and the frame they are put in."""

    texts: tuple[str, ...]
    frame: str


@dataclass(frozen=True)
class BankLayout:
    """What a method's reference bank holds: patch embeddings at `scales` of kind `feature`
    ('clip' or 'gem' patches of the CLIP backbone)."""

    scales: tuple[int, ...]
    feature: str

    def check(self, bank: MemoryBank, backbone) -> None:
        """MemoryBankError unless `bank` was built by this backbone with these scales and feature."""
        bank.check_compatible(backbone, self.scales, self.feature)

    def embed(self, backbone, images: Sequence[Image.Image], meta: dict | None = None) -> MemoryBank:
        return build_reference_bank(backbone, images, self.scales, self.feature, meta)


class Method(Protocol):
    """A registry entry (see the module docstring)."""

    name: str
    flags: frozenset[str]
    scores_whole_batch: bool

    def options(self, values: Mapping[str, object], map_size: int = 448): ...

    def pipeline(self, backbone, options, class_name: str, reference_bank: MemoryBank | None = None,
                 text_cache=None, few_shot: bool | None = None): ...

    def prompt_sets(self, options, class_name: str) -> list[PromptSet]: ...


class PipelineBase:
    """Shared behaviour of pipelines: reference banks through `bank_layout`, `__call__`."""

    scores_whole_batch = False
    backbone: Backbone
    reference_bank: MemoryBank | None
    few_shot: bool

    @property
    def bank_layout(self) -> BankLayout:
        raise NotImplementedError

    def embed_references(self, images: Sequence[Image.Image], meta: dict | None = None) -> MemoryBank:
        """This method's reference bank of good images."""
        return self.bank_layout.embed(self.backbone, images, meta)

    def use_reference_bank(self, bank: MemoryBank) -> None:
        self.bank_layout.check(bank, self.backbone)
        self.reference_bank = bank

    def embed(self, images, extra_features=()):
        raise NotImplementedError

    def score(self, embeddings, reference_bank: MemoryBank | None = None) -> list["Result"]:
        raise NotImplementedError

    def __call__(self, images: Sequence[Image.Image]) -> list["Result"]:
        return self.score(self.embed(images))


def split_list(values: Sequence[str] | None) -> tuple[str, ...]:
    """Repeated and comma-separated flag values as one tuple: ['a,b', 'c'] -> ('a', 'b', 'c')."""
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def parse_scales(text: str) -> tuple[int, ...]:
    """'240,448,896' -> (240, 448, 896); UsageError naming --scales otherwise."""
    try:
        scales = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--scales {text!r}: expected comma-separated integers like 240,448,896") from None
    if not scales:
        raise UsageError("--scales: at least one scale is needed")
    return scales


@dataclass
class Result:
    """One image's outcome. `map` is the fused patch-grid map (G×G, values in [0, 1])."""

    score: float
    map: torch.Tensor | None
    language_score: float | None = None
    vision_score: float | None = None


def to_results(score: torch.Tensor, maps: torch.Tensor, language: torch.Tensor | None = None,
               vision: torch.Tensor | None = None) -> list[Result]:
    """Per-image Results from a batch's tensors: score (B,), maps (B, G, G), optional language and
    vision scores (B,). Every tensor is copied to the host once per batch: on a GPU one
    synchronisation per tensor, not per image and value."""
    score, maps = score.float().cpu(), maps.float().cpu()
    language = language.float().cpu().tolist() if language is not None else None
    vision = vision.float().cpu().tolist() if vision is not None else None
    return [
        Result(
            score=float(score[i]),
            map=maps[i],
            language_score=language[i] if language is not None else None,
            vision_score=vision[i] if vision is not None else None,
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
    return MemoryBank(patches=patches, meta={**reference_bank_info(backbone, feature, len(images)), **(meta or {})})


def reference_bank_info(backbone: Backbone, feature: str, n_images: int) -> dict:
    """The metadata every reference bank records: what produced it."""
    return {
        "model": backbone.model_name,
        "weights_id": backbone.weights_id,
        "weights_fingerprint": backbone.weights_fingerprint,
        "feature": feature,
        "n_images": n_images,
        "fade_version": __version__,
    }


def bank_for_scoring(pipeline, reference_bank: MemoryBank | None) -> MemoryBank | None:
    """The reference bank a `score` call uses: the one passed in (checked by the pipeline's bank
    layout) or the pipeline's own; few-shot scoring needs one."""
    bank = reference_bank if reference_bank is not None else pipeline.reference_bank
    if pipeline.few_shot and bank is None:
        raise UsageError("few-shot scoring needs a reference bank")
    if reference_bank is not None:
        pipeline.bank_layout.check(reference_bank, pipeline.backbone)
    return bank


def subsets(n: int, size: int) -> list[range]:
    """Subsets for a method that scores whole batches (`scores_whole_batch`; its options carry
    `subset_size`): n inputs in order -> ⌈n/size⌉ consecutive subsets whose sizes differ by at most one.

    Balanced rather than "size, size, ..., rest": no tiny last subset with few images to score
    against, and two sizes that give the same number of subsets give the same subsets."""
    if n == 0:
        return []
    count = math.ceil(n / size)
    base, extra = divmod(n, count)
    bounds, start = [], 0
    for s in range(count):
        stop = start + base + (1 if s < extra else 0)
        bounds.append(range(start, stop))
        start = stop
    return bounds
