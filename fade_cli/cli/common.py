"""Shared pieces of the `fade` commands: option declarations, failure reporting, logging and parsing helpers."""

from __future__ import annotations

import functools
import inspect

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data.inputs import InputItem, Inputs, scan_inputs, shown
from ..errors import UsageError
from ..methods import method_help
from ..methods.base import parse_scales, split_list  # noqa: F401 - the commands' parsing helpers


err = Console(stderr=True, highlight=False, soft_wrap=True)


class Failures:
    """Counts and reports per-input failures as `fade: <path>: <reason>` on stderr."""

    def __init__(self) -> None:
        self.count = 0
        self.lines: list[dict] = []  # {input, error}, for segment's run.json (the review page lists them)

    def report(self, path: Path | str, reason: str) -> None:
        self.count += 1
        self.lines.append({"input": str(path), "error": reason})
        print(f"fade: {shown(path)}: {reason}", file=sys.stderr, flush=True)


def report_skipped(inputs: Inputs, verbose: bool) -> None:
    """Files the input folders hold but that are not read: a count by reason, each with -v.
    Printed even with -q: a skipped file is never silent (docs/limits.md)."""
    summary = inputs.summary()
    if summary is None:
        return
    if verbose:
        for s in inputs.skipped:
            print(f"fade: skipped {shown(s.path)}: {s.reason}", file=sys.stderr)
    print(f"fade: {summary}{'' if verbose else '; -v lists them'}", file=sys.stderr, flush=True)


def checked_number(value: float | str, flag: str, low: float | None = None, high: float | None = None,
                   allow_auto: bool = False) -> float | str:
    """A finite number in [low, high], or the word 'auto' where `allow_auto`; else a usage error.

    Click's float ranges let nan through (every comparison with nan is false), so each float
    option that reaches a method passes here; a str value (an option that also takes a word)
    is parsed here too."""
    if allow_auto and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {value}: expected a number{' or auto' if allow_auto else ''}") from None
    text = value if isinstance(value, str) else f"{number:g}"
    if not math.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
        if low is not None and high is not None:
            wanted = f"a finite number between {low:g} and {high:g}"
        elif low is not None:
            wanted = f"a finite number of at least {low:g}"
        else:
            wanted = "a finite number"
        raise UsageError(f"{flag} {text}: expected {wanted}{' or auto' if allow_auto else ''}")
    return number


# ---- shared options -------------------------------------------------------------------------
ImagesArg = Annotated[list[str], typer.Argument(help="Image files, directories (searched recursively), globs, or - to read paths from stdin.", show_default=False)]
ClassOpt = Annotated[str, typer.Option("--class", "-c", help="Product class name used in the classification prompts (underscores become spaces), e.g. bottle, metal_nut.")]
RefsOpt = Annotated[Optional[list[str]], typer.Option("--refs", "-r", help="Good reference image(s) for few-shot mode: a file, a directory or a quoted glob ('good/*.png'). Repeat for more.", show_default=False)]
BankOpt = Annotated[Optional[Path], typer.Option("--bank", help="Saved reference bank from `fade bank build` (instead of --refs).", show_default=False)]
ShotsOpt = Annotated[Optional[int], typer.Option("--shots", "-k", min=1, help="Use k of the --refs images, chosen as the official FADE code does for --shots-seed (sorted by path, then a seeded shuffle). Default: all.")]
SeedOpt = Annotated[int, typer.Option("--shots-seed", help="Seed that chooses the --shots references.")]
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="open_clip model name, or a path to an open_clip model-config JSON.")]
PretrainedOpt = Annotated[str, typer.Option("--pretrained", "-p", help="open_clip pretrained tag (downloaded once into the hub cache), a local checkpoint file (.pt/.bin/.safetensors), or 'none' for random weights (testing only).")]
DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="auto, cpu, cuda or cuda:N.")]
PrecisionOpt = Annotated[str, typer.Option("--precision", help="fp32; bf16 autocast (CUDA or CPU, fast on CPUs with AVX512-BF16/AMX); fp16 autocast (CUDA only). Within 1e-2 of fp32.")]
ScalesOpt = Annotated[str, typer.Option("--scales", help="Segmentation input sizes in pixels (multiples of the patch size), comma-separated.")]
ClsScaleOpt = Annotated[int, typer.Option("--cls-scale", help="Input size for the image-level (CLS) classification.")]
ClsPromptsOpt = Annotated[Optional[list[str]], typer.Option("--cls-prompts", help="Prompt banks for classification: shipped names or JSON paths (ours or the official FADE format), comma-separated or repeated. Default: winclip.", show_default=False)]
SegPromptsOpt = Annotated[Optional[list[str]], typer.Option("--seg-prompts", help="Prompt banks for segmentation. Default: winclip,fade-llm.", show_default=False)]
MultOpt = Annotated[Optional[float], typer.Option("--vision-multiplier", help="Calibration factor m of the vision map. Default: 80 zero-shot, 3.5 few-shot (dino: 1). alfa: m of the few-shot memory-bank distance, map = clip((S_L + m*M)/2, 0, 1); default 3.5.", show_default=False)]
WeightOpt = Annotated[Optional[float], typer.Option("--vision-weight", min=0.0, max=1.0, help="Weight w of the vision map: map = (1-w)*language + w*m*vision. Default: 0.5 zero-shot, 0.85 few-shot (dino: 0.85).", show_default=False)]
VisFeatOpt = Annotated[Optional[str], typer.Option("--vision-feature", help="Patch features for vision guidance: gem or clip. Default: gem zero-shot, clip few-shot. alfa: the few-shot memory bank's feature, clip (patches, default) or window (the aligner's window embeddings, WinCLIP+-style).", show_default=False)]
SegModeOpt = Annotated[str, typer.Option("--segmentation-mode", help="language, vision or both.")]
ClsModeOpt = Annotated[str, typer.Option("--classification-mode", help="language, vision (needs references) or both.")]
ThresholdOpt = Annotated[str, typer.Option("--threshold", "-t", metavar="T|auto", help="Image score at or above which an image is labelled anomalous, or auto: calibrated from good images at --false-alarm-rate (docs/calibration.md).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Where text embeddings are cached. Default: $FADE_CACHE_DIR or ~/.cache/fade.", show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the text-embedding cache.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels than this (decompression-bomb guard).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip images the manifest records as finished (their outputs still present); their recorded lines are printed again.")]
ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", help="JSONL record of finished images, for --resume. Default for segment: OUT/manifest.jsonl.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log lines on stderr (errors are still printed).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Also list each file the input folders hold that is not read, with the reason (a count is always printed).")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace outputs that exist already (without it a run that would replace any is refused; --resume keeps finished ones).")]
# scale-out options (docs/scale-out.md)
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray Data actors on a local or existing Ray cluster; needs pip install \"fade-cli[ray]\"). Same rows, files and exit codes.")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="--engine ray: 'auto' or HOST:PORT joins a running cluster (ray start --head). Default: the cluster `ray start` runs on this machine ($RAY_ADDRESS), else a new local Ray for this run.", show_default=False)]
ActorsOpt = Annotated[Optional[int], typer.Option("--actors", min=1, help="--engine ray: model replicas (each loads the model once). Default: one per GPU, else one per node.", show_default=False)]
# method options
MethodOpt = Annotated[str, typer.Option("--method", help=f"{method_help()}. A flag of another method is refused (exit 2).")]
WindowsOpt = Annotated[str, typer.Option("--windows", help="alfa: aligner window sizes r in patches, comma-separated (paper: 2,3; 2,3,4 is slower).")]
NoAlignerOpt = Annotated[bool, typer.Option("--no-aligner", help="alfa ablation: local maps against the global prompt embeddings (no global-to-local projection).")]
NoRtpOpt = Annotated[bool, typer.Option("--no-rtp", help="alfa ablation: keep every prompt (same as --prompt-filter none).")]
RidgeOpt = Annotated[Optional[float], typer.Option("--ridge", metavar="LAMBDA", help="alfa: ridge λ of the aligner's global-to-local fit (large = close to --no-aligner). Default: 0.1; docs/methods.md has a sweep procedure.", show_default=False)]
FILO_PANEL = "FiLo parts (training-free; --method filo turns on all but --positions)"
PositionsOpt = Annotated[Optional[bool], typer.Option("--positions/--no-positions", help="FiLo: second language pass with the 'filo' bank's prompts filled with the region (of 9) where the first-pass map peaks, e.g. 'at top left'; averaged with the first pass. Default: off, also with --method filo (provisional preset).", show_default=False, rich_help_panel=FILO_PANEL)]
ObjectPriorOpt = Annotated[Optional[float], typer.Option("--object-prior", min=0.0, max=1.0, metavar="LAMBDA", help="FiLo: multiply maps outside the estimated object (GEM patches vs 'a photo of a CLASS' / background prompts) by LAMBDA; 0.7 is the official FiLo value, 1 = off. Default: 0.7 with --method filo, else off.", show_default=False, rich_help_panel=FILO_PANEL)]
MultiShapeOpt = Annotated[Optional[bool], typer.Option("--multi-shape/--no-multi-shape", help="FiLo: average patch features over 1x1, 3x3, 5x5, 7x7, 1x5, 5x1 neighbourhoods (sized for FiLo's 37x37 grid, scaled to each scale's grid) before text matching; the language maps are averaged. Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
MultiShapeGridOpt = Annotated[Optional[int], typer.Option("--multi-shape-grid", min=0, metavar="G", help="FiLo: the patch grid the multi-shape kernels are sized for; on a grid of side n a side k becomes the odd size nearest k*n/G. Default: 37 (FiLo's); 0 = the same kernels on every grid.", show_default=False, rich_help_panel=FILO_PANEL)]
SmoothOpt = Annotated[Optional[float], typer.Option("--smooth", min=0.0, metavar="SIGMA", help="FiLo: Gaussian smoothing of the final map, σ in pixels of the 448 px evaluation map (eval: of --eval-size); 0 = off. Default: 4 with --method filo, else 0.", show_default=False, rich_help_panel=FILO_PANEL)]
FgMatchingOpt = Annotated[Optional[bool], typer.Option("--fg-matching/--no-fg-matching", help="FiLo++: the few-shot vision map outside the estimated object x LAMBDA (of --object-prior, else 0.7), once, after the image score (no effect zero-shot). Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
FiloScoreOpt = Annotated[Optional[bool], typer.Option("--filo-score/--no-filo-score", help="FiLo: image score = (CLS language score + max of the map before suppression) / 2, FiLo's own, instead of FADE's. Default: off.", show_default=False, rich_help_panel=FILO_PANEL)]
PromptFilterOpt = Annotated[Optional[str], typer.Option("--prompt-filter", help="alfa: per-image prompt filter: alfa (contextual score > 0, the default), filo (FiLo++ overlap interval) or none.", show_default=False)]
DINO_PANEL = "DINOv2 vision bank (--method dino, AnomalyDINO-style; few-shot)"
VisionBackboneOpt = Annotated[Optional[str], typer.Option("--vision-backbone", help="dino: timm DINOv2 model for the vision bank: vit_small_patch14_dinov2 (ViT-S/14, the default) or vit_base_patch14_dinov2 (ViT-B/14).", show_default=False, rich_help_panel=DINO_PANEL)]
VisionPretrainedOpt = Annotated[Optional[str], typer.Option("--vision-pretrained", help="dino: timm pretrained tag (lvd142m, the default; downloaded by timm), a local .safetensors or .pt/.pth file (official DINOv2 checkpoints too), or 'none' for random weights (testing only).", show_default=False, rich_help_panel=DINO_PANEL)]
VisionSizeOpt = Annotated[Optional[int], typer.Option("--vision-size", help="dino: short side of the DINOv2 input in pixels, a multiple of 14 (aspect kept). Default: 448.", show_default=False, rich_help_panel=DINO_PANEL)]
AugmentRefsOpt = Annotated[Optional[str], typer.Option("--augment-refs", help="dino: rotate (each reference also at 45°, 90°, ..., 315°; the default) or none.", show_default=False, rich_help_panel=DINO_PANEL)]
MaskOpt = Annotated[Optional[str], typer.Option("--mask", help="dino: foreground mask from the references' first principal component: auto (AnomalyDINO's classes: MVTec capsule, hazelnut, pill, screw, toothbrush and all VisA classes; the default), on or off.", show_default=False, rich_help_panel=DINO_PANEL)]

MUSC_PANEL = "MuSc (--method musc: zero-shot, the images scored against each other)"
MuscScaleOpt = Annotated[int, typer.Option("--musc-scale", help="musc: input size in pixels (a multiple of the patch size); 512 gives a 32x32 patch grid.", rich_help_panel=MUSC_PANEL)]
LayersOpt = Annotated[Optional[str], typer.Option("--layers", help="musc: 0-based ViT blocks whose patch tokens are compared, comma-separated. Default: the last block of each quarter (2,5,8,11 for ViT-B-16-plus-240, as MuSc's scripts).", show_default=False, rich_help_panel=MUSC_PANEL)]
RValuesOpt = Annotated[str, typer.Option("--r-values", help="musc: aggregation degrees r (mean over r x r neighbourhoods), odd, comma-separated.", rich_help_panel=MUSC_PANEL)]
LowestFractionOpt = Annotated[float, typer.Option("--lowest-fraction", help="musc: a patch scores the mean of its nearest-patch distances to this fraction of the other images, the closest ones.", rich_help_panel=MUSC_PANEL)]
RscinWindowsOpt = Annotated[str, typer.Option("--rscin-windows", help="musc: RsCIN window sizes k (each image's k most similar images by CLS embedding, itself included), comma-separated; none = no re-ranking. MuSc: 1,2,3 for MVTec-AD, 1,8,9 for VisA.", rich_help_panel=MUSC_PANEL)]
LanguageWeightOpt = Annotated[float, typer.Option("--language-weight", help="musc: weight w of FADE's language map and score (--scales, --cls-scale, --seg-prompts shape them): map = (1-w)*mutual + w*language. 0: MuSc alone, no language pass.", rich_help_panel=MUSC_PANEL)]
SubsetSizeOpt = Annotated[int, typer.Option("--subset-size", help="musc: images scored together; more inputs are cut, in order, into subsets of balanced size. Scoring costs N^2 per subset; memory about 15 MB per image at the defaults.", rich_help_panel=MUSC_PANEL)]


# Every method's flags, declared once: the commands that build a method take them all
# (`with_method_flags`), and `scorer_spec` hands each method the ones it declares; a flag of
# another method given on the command line is refused there. A new method adds its flags here.
METHOD_FLAGS: dict[str, tuple[object, object]] = {
    "cls_scale": (ClsScaleOpt, 240),
    "cls_prompts": (ClsPromptsOpt, None),
    "seg_prompts": (SegPromptsOpt, None),
    "vision_multiplier": (MultOpt, None),
    "vision_weight": (WeightOpt, None),
    "vision_feature": (VisFeatOpt, None),
    "segmentation_mode": (SegModeOpt, "both"),
    "classification_mode": (ClsModeOpt, "both"),
    "windows": (WindowsOpt, "2,3"),
    "no_aligner": (NoAlignerOpt, False),
    "no_rtp": (NoRtpOpt, False),
    "ridge": (RidgeOpt, None),
    "prompt_filter": (PromptFilterOpt, None),
    "positions": (PositionsOpt, None),
    "object_prior": (ObjectPriorOpt, None),
    "multi_shape": (MultiShapeOpt, None),
    "multi_shape_grid": (MultiShapeGridOpt, None),
    "smooth": (SmoothOpt, None),
    "fg_matching": (FgMatchingOpt, None),
    "filo_score": (FiloScoreOpt, None),
    "musc_scale": (MuscScaleOpt, 512),
    "layers": (LayersOpt, None),
    "r_values": (RValuesOpt, "1,3,5"),
    "lowest_fraction": (LowestFractionOpt, 0.3),
    "rscin_windows": (RscinWindowsOpt, "1,2,3"),
    "language_weight": (LanguageWeightOpt, 0.0),
    "subset_size": (SubsetSizeOpt, 200),
    "vision_backbone": (VisionBackboneOpt, None),
    "vision_pretrained": (VisionPretrainedOpt, None),
    "vision_size": (VisionSizeOpt, None),
    "augment_refs": (AugmentRefsOpt, None),
    "mask": (MaskOpt, None),
}


def with_method_flags(*, exclude: tuple[str, ...] = ()):
    """Decorator: the command also takes every METHOD_FLAGS option (but `exclude`), passed to it
    in its `**method_flags`. Typer reads the signature and annotations set here."""
    def decorate(command):
        signature = inspect.signature(command, eval_str=True)  # Annotated[...] objects, not strings
        params = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        extra = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
                 for name, (annotation, default) in METHOD_FLAGS.items() if name not in exclude]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            return command(*args, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*params, *extra])
        wrapper.__annotations__ = {p.name: p.annotation for p in [*params, *extra]
                                   if p.annotation is not inspect.Parameter.empty}
        return wrapper

    return decorate


def command_values(local_vars: dict, method_flags: dict) -> dict:
    """A command's parameter values, its method flags included (for `scorer_spec`)."""
    return {**{k: v for k, v in local_vars.items() if k not in ("ctx", "method_flags")}, **method_flags}


def progress_bar(total: int, quiet: bool) -> Progress | None:
    if quiet or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err, transient=True,
    )


def log(quiet: bool, message: str) -> None:
    if not quiet:
        err.print(f"fade: {message}")


def resolve_model_name(model: str) -> str:
    """A path to a model-config JSON registers it with open_clip under its file stem."""
    path = Path(model)
    if model.endswith(".json"):
        if not path.is_file():
            raise UsageError(f"--model {model}: no such model-config file")
        import open_clip

        open_clip.add_model_config(path)
        return path.stem
    return model


def _next_sibling(path: Path) -> Path | None:
    siblings = sorted(p.absolute() for p in path.absolute().parent.glob(f"*{path.suffix}"))
    here = siblings.index(path.absolute()) if path.absolute() in siblings else -1
    return siblings[here + 1] if 0 <= here < len(siblings) - 1 else None


def reference_paths(refs: list[str], shots: int | None, seed: int, images: list[InputItem], verbose: bool = False) -> list[Path]:
    scanned = scan_inputs(refs)
    report_skipped(scanned, verbose)
    items = scanned.items
    bad = [i for i in items if i.error]
    if bad:
        raise UsageError(f"--refs {bad[0].path}: {bad[0].error}")
    paths = sorted({i.path for i in items})
    # A shell-expanded `--refs good/*.png` gives --refs only the first match and turns the other
    # matches into query images. Its signature: one --refs file, and the first query image is
    # the next file of the same folder. Refuse that instead of silently doing the wrong thing.
    first = next((i.path for i in images if not i.error), None)
    if len(refs) == 1 and len(paths) == 1 and first is not None and _next_sibling(paths[0]) == first.absolute():
        raise UsageError(
            f"--refs {refs[0]}: the next file of its folder is the first input image; did the shell expand a glob? "
            f"Quote it (--refs '{paths[0].parent}/*{paths[0].suffix}') or pass the folder (--refs {paths[0].parent}/)"
        )
    if shots is not None:
        from ..data.datasets import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, seed)]
    return paths


# float flags whose value must be finite and in range (click's min/max let nan through)
FLOAT_FLAGS = {"vision_multiplier": ("--vision-multiplier", 0.0, None), "vision_weight": ("--vision-weight", 0.0, 1.0),
               "object_prior": ("--object-prior", 0.0, 1.0), "smooth": ("--smooth", 0.0, None)}


def check_float_flags(values: dict) -> None:
    for name, (flag, low, high) in FLOAT_FLAGS.items():
        if values.get(name) is not None:
            checked_number(values[name], flag, low, high)


def _flag_spelling(ctx, param) -> str:
    """The flag as the user typed it: '--no-positions' for the off side of a --x/--no-x pair."""
    secondary = getattr(param, "secondary_opts", None) or []
    if secondary and ctx.params.get(param.name) is False:
        return secondary[0]
    return max(param.opts, key=len)


def refuse_inapplicable_flags(ctx, method) -> None:
    """UsageError (exit 2) for a flag given on the command line that some method reads but `method` does not."""
    from ..methods import method_flags

    foreign = method_flags() - method.flags
    for param in ctx.command.params:
        if param.name in foreign and _given(ctx, param.name):
            raise UsageError(f"{_flag_spelling(ctx, param)} does not apply to --method {method.name}")


def _given(ctx, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def refuse_references(method_name: str, **flags) -> None:
    """UsageError (exit 2) for --refs / --bank / --shots with a method that is zero-shot only."""
    from ..methods import get_method

    method = get_method(method_name)
    if getattr(method, "zero_shot_only", False):
        for name, value in flags.items():
            if value:
                raise UsageError(f"--{name} does not apply to --method {method.name}: it is zero-shot "
                                 f"(it scores the images against each other)")


def scorer_spec(ctx, method_name: str, class_name: str, model: str, pretrained: str, device: str, precision: str,
                values: dict, map_size: int = 448):
    """The command line -> a validated ScorerSpec: the method from the registry, its options built
    once from the flags it declares (`values`: every method flag's value, defaults included)."""
    from ..engines.runner import ScorerSpec
    from ..methods import get_method

    method = get_method(method_name)
    refuse_inapplicable_flags(ctx, method)
    check_float_flags(values)
    options = method.options({k: v for k, v in values.items() if k in method.flags}, map_size)
    model_config = Path(model).absolute() if model.endswith(".json") else None
    return ScorerSpec(method=method.name, class_name=class_name, options=options, model=resolve_model_name(model),
                      pretrained=pretrained, device=device, precision=precision, model_config=model_config)
