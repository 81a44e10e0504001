"""The `fade` command: thin parsing and printing around the library; no method logic here.

Exit status: 0 every image processed, 1 some inputs failed (one stderr line each), 2 usage
or set-up errors (bad options, model or prompt bank cannot load), 130 interrupted.
Results go to stdout as JSON lines; logs and progress go to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import __version__
from .backbone import DEFAULT_MODEL, DEFAULT_PRETRAINED
from .config import FadeConfig
from .errors import FadeError, ImageError, UsageError
from .io import DEFAULT_MAX_PIXELS, InputItem, Manifest, atomic_write, common_base, expand_inputs, load_image

app = typer.Typer(
    name="fade",
    help="Training-free industrial anomaly detection and segmentation with CLIP (FADE).\n\n"
    "Zero-shot from language alone, or few-shot from a handful of good reference images (--refs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Failures:
    """Counts and reports per-input failures as `fade: <path>: <reason>` on stderr."""

    def __init__(self) -> None:
        self.count = 0

    def report(self, path: Path | str, reason: str) -> None:
        self.count += 1
        print(f"fade: {path}: {reason}", file=sys.stderr, flush=True)


def _split_list(values: list[str] | None) -> tuple[str, ...]:
    return tuple(v.strip() for value in values or [] for v in value.split(",") if v.strip())


def _parse_scales(text: str) -> tuple[int, ...]:
    try:
        scales = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--scales {text!r}: expected comma-separated integers like 240,448,896") from None
    if not scales:
        raise UsageError("--scales: at least one scale is needed")
    return scales


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
MultOpt = Annotated[Optional[float], typer.Option("--vision-multiplier", help="Calibration factor m of the vision map. Default: 80 zero-shot, 3.5 few-shot.", show_default=False)]
WeightOpt = Annotated[Optional[float], typer.Option("--vision-weight", min=0.0, max=1.0, help="Weight w of the vision map: map = (1-w)*language + w*m*vision. Default: 0.5 zero-shot, 0.85 few-shot.", show_default=False)]
VisFeatOpt = Annotated[Optional[str], typer.Option("--vision-feature", help="Patch features for vision guidance: gem or clip. Default: gem zero-shot, clip few-shot.", show_default=False)]
SegModeOpt = Annotated[str, typer.Option("--segmentation-mode", help="language, vision or both.")]
ClsModeOpt = Annotated[str, typer.Option("--classification-mode", help="language, vision (needs references) or both.")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", "-t", help="Image score at or above which an image is labelled anomalous.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per forward pass.")]
CacheOpt = Annotated[Optional[Path], typer.Option("--cache-dir", help="Where text embeddings are cached. Default: $FADE_CACHE_DIR or ~/.cache/fade.", show_default=False)]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not read or write the text-embedding cache.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse images with more pixels than this (decompression-bomb guard).")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Skip images the manifest records as finished (their outputs still present); their recorded lines are printed again.")]
ManifestOpt = Annotated[Optional[Path], typer.Option("--manifest", help="JSONL record of finished images, for --resume. Default for segment: OUT/manifest.jsonl.", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or log lines on stderr (errors are still printed).")]
# scale-out options (docs/scale-out.md)
EngineOpt = Annotated[str, typer.Option("--engine", help="local (this process) or ray (Ray Data actors on a local or existing Ray cluster; needs pip install \"fade-cli[ray]\"). Same rows, files and exit codes.")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="--engine ray: 'auto' or HOST:PORT joins a running cluster (ray start --head). Default: the cluster `ray start` runs on this machine ($RAY_ADDRESS), else a new local Ray for this run.", show_default=False)]
ActorsOpt = Annotated[Optional[int], typer.Option("--actors", min=1, help="--engine ray: model replicas (each loads the model once). Default: one per GPU, else one per node.", show_default=False)]
# method options
MethodOpt = Annotated[str, typer.Option("--method", help="fade (default), alfa (run-time prompt adaptation + fine-grained aligner) or filo (FADE with the training-free FiLo parts).")]
WindowsOpt = Annotated[str, typer.Option("--windows", help="alfa: aligner window sizes r in patches, comma-separated (paper: 2,3; 2,3,4 is slower).")]
NoAlignerOpt = Annotated[bool, typer.Option("--no-aligner", help="alfa ablation: local maps against the global prompt embeddings (no global-to-local projection).")]
NoRtpOpt = Annotated[bool, typer.Option("--no-rtp", help="alfa ablation: keep every prompt (same as --prompt-filter none).")]
FILO_PANEL = "FiLo parts (training-free; --method filo turns on all but --positions)"
PositionsOpt = Annotated[Optional[bool], typer.Option("--positions/--no-positions", help="FiLo: second language pass with the 'filo' bank's prompts filled with the region (of 9) where the first-pass map peaks, e.g. 'at top left'; averaged with the first pass. Default: off, also with --method filo (provisional preset).", show_default=False, rich_help_panel=FILO_PANEL)]
ObjectPriorOpt = Annotated[Optional[float], typer.Option("--object-prior", min=0.0, max=1.0, metavar="LAMBDA", help="FiLo: multiply maps outside the estimated object (GEM patches vs 'a photo of a CLASS' / background prompts) by LAMBDA; 0.7 is the official FiLo value, 1 = off. Default: 0.7 with --method filo, else off.", show_default=False, rich_help_panel=FILO_PANEL)]
MultiShapeOpt = Annotated[Optional[bool], typer.Option("--multi-shape/--no-multi-shape", help="FiLo: average patch features over 1x1, 3x3, 5x5, 7x7, 1x5, 5x1 neighbourhoods before text matching; the six language maps are averaged. Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
SmoothOpt = Annotated[Optional[float], typer.Option("--smooth", min=0.0, metavar="SIGMA", help="FiLo: Gaussian smoothing of the final map, σ in pixels of the 448 px evaluation map (eval: of --eval-size); 0 = off. Default: 4 with --method filo, else 0.", show_default=False, rich_help_panel=FILO_PANEL)]
FgMatchingOpt = Annotated[Optional[bool], typer.Option("--fg-matching/--no-fg-matching", help="FiLo++: few-shot vision scores count only inside the estimated object (no effect zero-shot). Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
PromptFilterOpt = Annotated[str, typer.Option("--prompt-filter", help="alfa: per-image prompt filter: alfa (contextual score > 0), filo (FiLo++ overlap interval) or none.")]


def _progress(total: int, quiet: bool) -> Progress | None:
    if quiet or not sys.stderr.isatty():
        return None
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=err, transient=True,
    )


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        err.print(f"fade: {message}")


def save_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def _resolve_model_name(model: str) -> str:
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


def _references(refs: list[str], shots: int | None, seed: int, images: list[InputItem]) -> list[Path]:
    items = expand_inputs(refs)
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
        from .memory import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, seed)]
    return paths


def _run(
    *,
    images: list[str],
    class_name: str,
    refs: list[str] | None,
    bank: Path | None,
    shots: int | None,
    shots_seed: int,
    model: str,
    pretrained: str,
    device: str,
    precision: str,
    scales: str,
    cls_scale: int,
    cls_prompts: list[str] | None,
    seg_prompts: list[str] | None,
    vision_multiplier: float | None,
    vision_weight: float | None,
    vision_feature: str | None,
    segmentation_mode: str,
    classification_mode: str,
    threshold: float,
    batch_size: int,
    cache_dir: Path | None,
    no_cache: bool,
    max_pixels: int,
    quiet: bool,
    out: Path | None = None,
    pixel_threshold: float = 0.5,
    resume: bool = False,
    manifest: Path | None = None,
    method: str = "fade",
    engine: str = "local",
    ray_address: str | None = None,
    actors: int | None = None,
    **method_options,
) -> int:
    from .pipeline import build_reference_bank
    from .prompts import TextEncoderCache
    from .runner import OutputSpec, build_pipeline, load_spec_backbone, score_paths

    if engine not in ("local", "ray"):
        raise UsageError(f"--engine {engine}: expected local or ray")
    if engine == "ray":
        from .ray_engine import RecordingTextCache, require_ray

        require_ray()  # before any work: without the extra, one line saying how to install it
    elif ray_address is not None or actors is not None:
        raise UsageError("--ray-address and --actors need --engine ray")
    items = expand_inputs(images)
    if not items:
        raise UsageError("no input images given")
    failures = Failures()
    for item in items:
        if item.error:
            failures.report(item.path, item.error)
    todo = [i.path for i in items if not i.error]
    ref_paths = _references(refs, shots, shots_seed, items) if refs else []
    if bank is not None and refs:
        raise UsageError("give either --refs or --bank, not both")

    spec = _scorer_spec(method, class_name, model, pretrained, device, precision, cache_dir, not no_cache,
                        scales=scales, cls_scale=cls_scale, cls_prompts=cls_prompts, seg_prompts=seg_prompts,
                        vision_multiplier=vision_multiplier, vision_weight=vision_weight, vision_feature=vision_feature,
                        segmentation_mode=segmentation_mode, classification_mode=classification_mode, **method_options)

    t0 = time.perf_counter()
    backbone = load_spec_backbone(spec)
    _log(quiet, f"loaded {spec.model} ({pretrained}) on {backbone.device}")
    # with --engine ray the driver's cache remembers the embeddings, for the actors (object store)
    cache = (RecordingTextCache if engine == "ray" else TextEncoderCache)(
        backbone, cache_dir, frame=spec.config.text_frame, enabled=not no_cache)
    reference_bank = None
    if bank is not None:
        from .memory import MemoryBank

        reference_bank = MemoryBank.load(bank)
        _log(quiet, f"reference bank {bank}: {reference_bank.meta.get('n_images')} image(s), class {reference_bank.meta.get('class')}")
    if ref_paths:
        scales_needed, feature = _bank_layout(spec)
        _log(quiet, f"embedding {len(ref_paths)} reference image(s) at {', '.join(map(str, scales_needed))} px")
        ref_images = []
        for p in ref_paths:
            try:
                ref_images.append(load_image(p, max_pixels))
            except ImageError as exc:
                raise UsageError(f"reference {p}: {exc}") from None
        reference_bank = build_reference_bank(backbone, ref_images, scales_needed, feature,
                                              meta={"class": class_name, "images": [str(p) for p in ref_paths]})
    pipeline = build_pipeline(spec, backbone, reference_bank, cache)
    _log(quiet, f"ready in {time.perf_counter() - t0:.1f} s ({pipeline.method_label}, "
                f"{'%s-shot' % reference_bank.meta.get('n_images') if reference_bank else 'zero-shot'}, "
                f"prompts {', '.join(pipeline.banks)}; text cache {cache.hits} hit(s), {cache.misses} miss(es))")

    output = OutputSpec(threshold=threshold, base=common_base(todo) if todo else Path.cwd(), out=out,
                        pixel_threshold=pixel_threshold, max_pixels=max_pixels,
                        shots=int(reference_bank.meta.get("n_images", 0)) if reference_bank else 0)
    if manifest is None and out is not None:
        manifest = out / "manifest.jsonl"
    if resume and manifest is None:
        raise UsageError("--resume needs --manifest FILE (or --out for segment)")
    record = None
    finished: dict[str, dict] = {}
    if manifest is not None:
        settings = {"model": backbone.model_name, "weights": backbone.weights_id, "method": pipeline.method_label,
                    "config": pipeline.config.as_dict(), "class": class_name, "banks": pipeline.banks,
                    "threshold": threshold, "pixel_threshold": pixel_threshold if out is not None else None,
                    "out": str(out) if out else None,
                    "references": reference_bank.meta.get("images") if reference_bank else None}
        record = Manifest(manifest, hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16])
        finished = record.finished() if resume else {}
    already = {p for p in todo if str(p.absolute()) in finished}
    if already:
        _log(quiet, f"resuming: {len(already)} image(s) already finished, {len(todo) - len(already)} to do")
    progress = _progress(len(todo), quiet)
    task = progress.add_task("scoring", total=len(todo)) if progress else None
    pending = [p for p in todo if p not in already]
    if engine == "ray":  # same outcomes, same order, scored by Ray Data actors (fade_cli/ray_engine.py)
        from .ray_engine import run_ray

        results = run_ray(spec, output, reference_bank, pending, batch_size=batch_size, actors=actors,
                          address=ray_address, text_embeddings=cache.memo, log=lambda m: _log(quiet, m), quiet=quiet)
    else:
        results = score_paths(pipeline, pending, spec, output, batch_size)
    if progress:
        progress.start()
    try:
        for p in todo:  # rows in input order, finished ones included
            if p in already:
                row = finished[str(p.absolute())]
                print(json.dumps({k: v for k, v in row.items() if k not in ("input", "settings")}), flush=True)
            else:
                outcome = next(results)
                assert outcome.path == p, (outcome.path, p)
                if outcome.error is not None:
                    failures.report(p, outcome.error)
                else:
                    if record is not None:
                        record.append(outcome.row, p)
                    print(json.dumps(outcome.row), flush=True)
            if progress:
                progress.update(task, advance=1)
    finally:
        results.close()  # --engine ray: stops the job and a Ray instance it started
        if progress:
            progress.stop()
    ok = len(items) - failures.count
    _log(quiet, f"{ok} ok, {failures.count} failed")
    return 1 if failures.count else 0


def _scorer_spec(method: str, class_name: str, model: str, pretrained: str, device: str, precision: str,
                 cache_dir: Path | None, use_cache: bool, *, scales: str, cls_scale: int, cls_prompts, seg_prompts,
                 vision_multiplier, vision_weight, vision_feature, segmentation_mode: str = "both",
                 classification_mode: str = "both", positions=None, object_prior=None, multi_shape=None, smooth=None, fg_matching=None, smooth_size: int = 448, **method_options):
    """Command-line options -> a validated ScorerSpec (method settings as data)."""
    from .runner import METHODS, ScorerSpec

    if method not in METHODS:
        raise UsageError(f"--method {method}: expected one of {', '.join(METHODS)}")
    defaults = FadeConfig()
    config = FadeConfig(
        cls_scale=cls_scale,
        seg_scales=_parse_scales(scales),
        cls_prompts=_split_list(cls_prompts) or defaults.cls_prompts,
        seg_prompts=_split_list(seg_prompts) or defaults.seg_prompts,
        classification=classification_mode,
        segmentation=segmentation_mode,
        vision_feature=vision_feature,
        vision_multiplier=vision_multiplier,
        vision_weight=vision_weight,
    )
    filo_flags = (positions, object_prior, multi_shape, smooth, fg_matching)
    if method == "alfa" and any(f is not None for f in filo_flags):
        raise UsageError("the FiLo switches (--positions, --object-prior, --multi-shape, --smooth, --fg-matching) "
                         "apply to --method fade or filo, not alfa")
    from .filo import resolve_switches

    config = replace(config, smooth_size=smooth_size, **resolve_switches(method, *filo_flags))
    problems = config.check()
    if problems:
        raise UsageError(problems[0])
    alfa = None
    if method == "alfa":
        from .alfa import alfa_config_from_options

        alfa = alfa_config_from_options(cls_prompts=_split_list(cls_prompts), image_size=cls_scale, **method_options)
    model_config = Path(model).absolute() if model.endswith(".json") else None
    return ScorerSpec(method=method, class_name=class_name, config=config, model=_resolve_model_name(model),
                      pretrained=pretrained, device=device, precision=precision, cache_dir=cache_dir,
                      use_cache=use_cache, model_config=model_config, alfa=alfa)


def _bank_layout(spec) -> tuple[tuple[int, ...], str]:
    """Scales and patch feature a reference bank needs for this method (few-shot)."""
    if spec.method == "alfa":
        from .alfa import AlfaConfig

        cfg = spec.alfa or AlfaConfig()
        return (cfg.image_size,), cfg.vision_feature
    few = spec.config.resolved(few_shot=True)
    return few.seg_scales, few.vision_feature


@app.command()
def detect(
    images: ImagesArg,
    class_name: ClassOpt = "object",
    refs: RefsOpt = None,
    bank: BankOpt = None,
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    threshold: ThresholdOpt = 0.5,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    cls_scale: ClsScaleOpt = 240,
    cls_prompts: ClsPromptsOpt = None,
    seg_prompts: SegPromptsOpt = None,
    vision_multiplier: MultOpt = None,
    vision_weight: WeightOpt = None,
    vision_feature: VisFeatOpt = None,
    segmentation_mode: SegModeOpt = "both",
    classification_mode: ClsModeOpt = "both",
    method: MethodOpt = "fade",
    windows: WindowsOpt = "2,3",
    no_aligner: NoAlignerOpt = False,
    no_rtp: NoRtpOpt = False,
    prompt_filter: PromptFilterOpt = "alfa",
    positions: PositionsOpt = None,
    object_prior: ObjectPriorOpt = None,
    multi_shape: MultiShapeOpt = None,
    smooth: SmoothOpt = None,
    fg_matching: FgMatchingOpt = None,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    resume: ResumeOpt = False,
    manifest: ManifestOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Score images: one JSON line per image on stdout (path, class, score, anomalous, threshold, ms)."""
    raise typer.Exit(_run(**{k: v for k, v in locals().items()}))


@app.command()
def segment(
    images: ImagesArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; the input tree is mirrored under it.")],
    class_name: ClassOpt = "object",
    refs: RefsOpt = None,
    bank: BankOpt = None,
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    threshold: ThresholdOpt = 0.5,
    pixel_threshold: Annotated[float, typer.Option("--pixel-threshold", help="Map value at or above which a pixel is in the binary mask.")] = 0.5,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    cls_scale: ClsScaleOpt = 240,
    cls_prompts: ClsPromptsOpt = None,
    seg_prompts: SegPromptsOpt = None,
    vision_multiplier: MultOpt = None,
    vision_weight: WeightOpt = None,
    vision_feature: VisFeatOpt = None,
    segmentation_mode: SegModeOpt = "both",
    classification_mode: ClsModeOpt = "both",
    method: MethodOpt = "fade",
    windows: WindowsOpt = "2,3",
    no_aligner: NoAlignerOpt = False,
    no_rtp: NoRtpOpt = False,
    prompt_filter: PromptFilterOpt = "alfa",
    positions: PositionsOpt = None,
    object_prior: ObjectPriorOpt = None,
    multi_shape: MultiShapeOpt = None,
    smooth: SmoothOpt = None,
    fg_matching: FgMatchingOpt = None,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    no_cache: NoCacheOpt = False,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    resume: ResumeOpt = False,
    manifest: ManifestOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    actors: ActorsOpt = None,
) -> None:
    """Score and segment images. Per image, under --out: NAME.overlay.png (heatmap over the image),
    NAME.map.npy (float32 anomaly map at the image's size, values in [0, 1]) and NAME.mask.png
    (pixels with map >= --pixel-threshold). One JSON line per image on stdout."""
    raise typer.Exit(_run(**{k: v for k, v in locals().items()}))


@app.command("eval")
def eval_command(
    root: Annotated[Path, typer.Argument(help="Dataset root (MVTec-AD, VisA, or a folder with good/ bad/ [masks/] [train/]).")],
    dataset: Annotated[str, typer.Option("--dataset", help="mvtec, visa or folder.")] = "mvtec",
    classes: Annotated[Optional[list[str]], typer.Option("--classes", help="Classes to evaluate, comma-separated or repeated. Default: all found.", show_default=False)] = None,
    method: MethodOpt = "fade",
    shots: Annotated[str, typer.Option("--shots", help="Shot counts, comma-separated; 0 = zero-shot.")] = "0",
    seeds: Annotated[int, typer.Option("--seeds", min=1, help="Seeds 0..N-1 that choose the few-shot references.")] = 5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for results.json, results.csv, per_image.csv and per-class checkpoints.")] = Path("fade-eval"),
    eval_size: Annotated[int, typer.Option("--eval-size", min=16, help="Maps and masks are compared at this size (official: 448).")] = 448,
    split_csv: Annotated[Optional[Path], typer.Option("--split-csv", help="VisA split file. Default: ROOT/split_csv/1cls.csv.", show_default=False)] = None,
    save_maps: Annotated[bool, typer.Option("--save-maps", help="Also write every map (.npy at the evaluation size) under OUT/maps.")] = False,
    save_overlays: Annotated[bool, typer.Option("--save-overlays", help="Also write heatmap overlays under OUT/overlays.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Keep classes already finished in OUT with the same settings.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    cls_scale: ClsScaleOpt = 240,
    cls_prompts: ClsPromptsOpt = None,
    seg_prompts: SegPromptsOpt = None,
    vision_multiplier: MultOpt = None,
    vision_weight: WeightOpt = None,
    vision_feature: VisFeatOpt = None,
    windows: WindowsOpt = "2,3",
    no_aligner: NoAlignerOpt = False,
    no_rtp: NoRtpOpt = False,
    prompt_filter: PromptFilterOpt = "alfa",
    positions: PositionsOpt = None,
    object_prior: ObjectPriorOpt = None,
    multi_shape: MultiShapeOpt = None,
    smooth: SmoothOpt = None,
    fg_matching: FgMatchingOpt = None,
    batch_size: BatchOpt = 1,
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Reproduce the papers' tables: per-class image AUROC/AUPR/F1-max, pixel AUROC/F1-max and PRO,
    mean ± std over seeds, as a Markdown table on stdout and JSON/CSV files under --out."""
    from .datasets import DATASETS, list_classes, read_split
    from .evaluation import evaluate_class, markdown_table, runs_for, summarize
    from .prompts import TextEncoderCache
    from .runner import build_pipeline, load_spec_backbone

    if dataset not in DATASETS:
        raise UsageError(f"--dataset {dataset}: expected one of {', '.join(DATASETS)}")
    try:
        shot_list = sorted({int(s) for s in shots.split(",") if s.strip()})
    except ValueError:
        raise UsageError(f"--shots {shots!r}: expected comma-separated integers like 0,1,2,4") from None
    if not shot_list or min(shot_list) < 0:
        raise UsageError("--shots: give one or more counts >= 0")
    available = list_classes(root, dataset, split_csv)
    wanted = list(_split_list(classes)) or available
    unknown = [c for c in wanted if c not in available]
    if unknown:
        raise UsageError(f"unknown class(es) {', '.join(unknown)} under {root} (found: {', '.join(available)})")
    spec = _scorer_spec(method, "object", model, pretrained, device, precision, cache_dir, True, scales=scales,
                        cls_scale=cls_scale, cls_prompts=cls_prompts, seg_prompts=seg_prompts,
                        vision_multiplier=vision_multiplier, vision_weight=vision_weight, vision_feature=vision_feature,
                        windows=windows, no_aligner=no_aligner, no_rtp=no_rtp, prompt_filter=prompt_filter,
                        positions=positions, object_prior=object_prior, multi_shape=multi_shape, smooth=smooth, fg_matching=fg_matching, smooth_size=eval_size)
    runs = runs_for(shot_list, seeds)
    backbone = load_spec_backbone(spec)
    cache = TextEncoderCache(backbone, cache_dir, frame=spec.config.text_frame)
    built: dict = {}  # the first class's pipeline, built early for the settings record, is used once more

    def make_pipeline(name: str):
        return built.pop(name, None) or build_pipeline(replace(spec, class_name=name), backbone, None, cache)

    probe = built[wanted[0]] = make_pipeline(wanted[0])
    banks = probe.banks
    settings = {"dataset": dataset, "root": str(root.absolute()), "method": probe.method_label, "model": backbone.model_name,
                "pretrained": pretrained, "weights_id": backbone.weights_id, "config": probe.config.as_dict(), "banks": banks,
                "shots": shot_list, "seeds": seeds, "eval_size": eval_size, "fade_version": __version__}
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]
    checkpoints = out / "classes"
    results = []
    for name in wanted:
        ckpt = checkpoints / f"{name}.json"
        if resume and ckpt.is_file():
            saved = json.loads(ckpt.read_text())
            if saved.get("settings") == fingerprint:
                _log(quiet, f"{name}: finished earlier, kept")
                results.append(saved)
                continue
        split = read_split(root, dataset, name if dataset != "folder" else None, split_csv)
        progress = _progress(len(split.test), quiet)
        task = progress.add_task(name, total=len(split.test)) if progress else None
        t0 = time.perf_counter()
        if progress:
            progress.start()
        try:
            res = evaluate_class(backbone, make_pipeline, split, runs, eval_size, batch_size,
                                 out / "maps" if save_maps else None, out / "overlays" if save_overlays else None,
                                 on_image=(lambda: progress.update(task, advance=1)) if progress else None)
        finally:
            if progress:
                progress.stop()
        seconds = time.perf_counter() - t0
        record = {**res.as_dict(), "settings": fingerprint, "seconds": round(seconds, 2),
                  "seconds_per_image": round(seconds / len(split.test), 3)}
        save_bytes(ckpt, json.dumps(record, indent=1).encode())
        _log(quiet, f"{name}: {len(split.test)} test images, {seconds:.1f} s ({seconds / len(split.test):.2f} s/image)")
        results.append(record)
    summary = summarize(results, runs)
    save_bytes(out / "results.json", json.dumps({"settings": settings, "summary": summary,
                                                 "classes": [{k: v for k, v in r.items() if k != "images"} for r in results]},
                                                indent=1).encode())
    _write_eval_csvs(out, results)
    print(markdown_table(summary))
    _log(quiet, f"wrote {out / 'results.json'}, {out / 'results.csv'}, {out / 'per_image.csv'}")


def _write_eval_csvs(out: Path, results: list[dict]) -> None:
    import csv
    import io as _io

    from .evaluation import METRIC_KEYS

    table = _io.StringIO()
    w = csv.writer(table)
    w.writerow(["class", "shots", "seed", *METRIC_KEYS, "references"])
    for r in results:
        for run in r["runs"]:
            w.writerow([r["class"], run["shots"], run["seed"], *[run["metrics"].get(m, "") for m in METRIC_KEYS],
                        ";".join(run["references"])])
    save_bytes(out / "results.csv", table.getvalue().encode())
    per_image = _io.StringIO()
    w = csv.writer(per_image)
    w.writerow(["class", "run", "path", "label", "defect", "score"])
    for r in results:
        for img in r["images"]:
            for run, score in img["scores"].items():
                w.writerow([r["class"], run, img["path"], img["label"], img["defect"], score])
    save_bytes(out / "per_image.csv", per_image.getvalue().encode())


@app.command("demo-data")
def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    classes: Annotated[Optional[list[str]], typer.Option("--classes", help="Class names (textures: tiles, weave).")] = None,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Write a small synthetic MVTec-layout dataset (textures with painted defects and masks) for tests and demos."""
    from .demo_data import make_demo_dataset

    names = _split_list(classes) or ("tiles", "weave")
    make_demo_dataset(out, classes=names, size=size, seed=seed)
    print(f"wrote {out} ({', '.join(names)}): try `fade eval {out} --dataset mvtec --shots 0,1 --seeds 2`")


bank_app = typer.Typer(help="Build and inspect saved reference banks (few-shot memory banks).", no_args_is_help=True)
app.add_typer(bank_app, name="bank")


@bank_app.command("build")
def bank_build(
    images: ImagesArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Bank file to write (e.g. bottle.fadebank).")],
    class_name: ClassOpt = "object",
    shots: ShotsOpt = None,
    shots_seed: SeedOpt = 0,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "fp32",
    scales: ScalesOpt = "240,448,896",
    feature: Annotated[str, typer.Option("--feature", help="Patch features stored: clip (FADE few-shot) or gem.")] = "clip",
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """Embed good reference images once and save them; reuse with `--bank FILE`.

    The bank stores each scale's patch embeddings and the model, weights fingerprint,
    scales, feature kind and fade version; it is read without pickle."""
    from .backbone import load_backbone
    from .pipeline import build_reference_bank

    if feature not in ("clip", "gem"):
        raise UsageError(f"--feature {feature}: expected clip or gem")
    items = expand_inputs(images)
    bad = [i for i in items if i.error]
    if bad:
        raise UsageError(f"{bad[0].path}: {bad[0].error}")
    paths = sorted(i.path for i in items)
    if shots is not None:
        from .memory import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, shots_seed)]
    loaded = []
    for p in paths:
        try:
            loaded.append(load_image(p, max_pixels))
        except ImageError as exc:
            raise UsageError(f"{p}: {exc}") from None
    backbone = load_backbone(_resolve_model_name(model), pretrained, device, precision)
    seg_scales = _parse_scales(scales)
    for s in seg_scales:
        backbone.check_scale(s)
    result = build_reference_bank(backbone, loaded, seg_scales, feature,
                                  meta={"class": class_name, "pretrained": pretrained, "images": [str(p) for p in paths]})
    result.save(output)
    _log(quiet, f"wrote {output}: {len(paths)} image(s), scales {', '.join(map(str, seg_scales))}, {feature} patches")


@bank_app.command("info")
def bank_info(bank: Annotated[Path, typer.Argument(help="A bank file from `fade bank build`.")]) -> None:
    """Print a bank's metadata and patch counts as JSON."""
    from .memory import MemoryBank

    loaded = MemoryBank.load(bank)
    info = {k: v for k, v in loaded.meta.items() if k != "images"}
    info["patches"] = {str(s): list(t.shape) for s, t in sorted(loaded.patches.items())}
    info["images"] = loaded.meta.get("images", [])
    print(json.dumps(info, indent=2))


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="The image to explain.")],
    class_name: ClassOpt = "object",
    banks: Annotated[Optional[list[str]], typer.Option("--prompts", help="Banks whose descriptions are ranked. Default: winclip,fade-llm (fade) or alfa (alfa).", show_default=False)] = None,
    method: Annotated[str, typer.Option("--method", help="fade: rank by similarity; alfa: also the contextual score of each description and whether run-time prompt adaptation keeps it.")] = "fade",
    top: Annotated[int, typer.Option("--top", min=1, help="How many descriptions per state.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout instead of a table.")] = False,
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    scale: ClsScaleOpt = 240,
    cache_dir: CacheOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
) -> None:
    """The prompt descriptions that match an image best (cosine of the CLIP image embedding with
    each prompt); with --method alfa, also each one's contextual score (ALFA eq. 4) and whether
    run-time prompt adaptation keeps it for this image."""
    from .backbone import load_backbone, preprocess_batch
    from .prompts import DEFAULT_FRAME, TextEncoderCache, load_bank

    if method not in ("fade", "alfa"):
        raise UsageError(f"--method {method}: explain supports fade and alfa")
    try:
        img = load_image(image, max_pixels)
    except ImageError as exc:
        raise UsageError(f"{image}: {exc}") from None
    default_banks = ("alfa",) if method == "alfa" else ("winclip", "fade-llm")
    loaded = [load_bank(b) for b in (_split_list(banks) or default_banks)]
    backbone = load_backbone(_resolve_model_name(model), pretrained, device)
    if method == "alfa":
        from .alfa import ALFA_FRAME as frame
    else:
        frame = DEFAULT_FRAME
    cache = TextEncoderCache(backbone, cache_dir, frame=frame)
    emb = backbone.encode_images(preprocess_batch([img], scale), want_clip=False, want_gem=False).cls[0].cpu()
    texts = {state: list(dict.fromkeys(t for b in loaded for t in b.texts(state, class_name))) for state in ("normal", "anomalous")}
    sims = {state: cache.encode(texts[state]) @ emb for state in texts}
    context = None
    if method == "alfa":
        from .rtp import contextual_scores

        both = contextual_scores(sims["normal"][None], sims["anomalous"][None])[0]
        context = {"normal": both[: len(texts["normal"])].tolist(), "anomalous": both[len(texts["normal"]):].tolist()}
    ranked = {}
    for state in ("anomalous", "normal"):
        values = sims[state].tolist()
        order = sorted(range(len(values)), key=lambda i: -values[i])[:top]
        ranked[state] = [{"text": texts[state][i], "similarity": round(values[i], 6)} for i in order]
        if context is not None:
            for entry, i in zip(ranked[state], order):
                entry["contextual_score"] = round(context[state][i], 6)
                entry["kept"] = context[state][i] > 0
    result = {"path": str(image), "class": class_name, "method": method, "banks": [b.label for b in loaded], **ranked}
    if context is not None:
        result["kept"] = {state: sum(v > 0 for v in context[state]) for state in context}
        result["prompts"] = {state: len(texts[state]) for state in texts}
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    columns = ("state", "similarity", "context", "kept", "description") if context else ("state", "similarity", "description")
    table = Table(*columns, title=f"{image} ({class_name})")
    for state in ("anomalous", "normal"):
        for r in ranked[state]:
            extra = (f"{r['contextual_score']:.4f}", "yes" if r["kept"] else "no") if context else ()
            table.add_row(state, f"{r['similarity']:.4f}", *extra, r["text"])
    Console().print(table)


prompts_app = typer.Typer(help="List, show, validate and pre-embed prompt banks.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("list")
def prompts_list(as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False) -> None:
    """The shipped banks with versions and prompt counts (for the class 'object')."""
    from rich.table import Table

    from .prompts import load_bank, shipped_banks

    rows = []
    for name in sorted(shipped_banks()):
        b = load_bank(name)
        classes = sorted(b.data.get("classes", {}))
        rows.append({"name": b.name, "version": b.version, "normal": len(b.texts("normal", "object")),
                     "anomalous": len(b.texts("anomalous", "object")), "classes": len(classes),
                     "method": b.data["generation"].get("method"), "description": b.data["description"]})
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table("bank", "version", "normal", "anomalous", "classes", "method")
    for r in rows:
        table.add_row(r["name"], r["version"], str(r["normal"]), str(r["anomalous"]), str(r["classes"]), r["method"] or "")
    Console().print(table)


@prompts_app.command("show")
def prompts_show(
    bank: Annotated[str, typer.Argument(help="Shipped bank name or JSON path.")],
    class_name: ClassOpt = "object",
    state: Annotated[Optional[str], typer.Option("--state", help="normal or anomalous (default: both).")] = None,
) -> None:
    """Print the composed prompts of a bank for a class, one per line, as `state<TAB>text`."""
    from .prompts import STATES, load_bank

    if state is not None and state not in STATES:
        raise UsageError(f"--state {state}: expected normal or anomalous")
    b = load_bank(bank)
    for s in [state] if state else STATES:
        for text in b.texts(s, class_name):
            print(f"{s}\t{text}")


@prompts_app.command("validate")
def prompts_validate(files: Annotated[list[Path], typer.Argument(help="Bank JSON files to check.")]) -> None:
    """Check bank files against the schema; every error is printed with its JSON path. Exit 1 if any is invalid."""
    from .prompts import _is_official, validate_bank

    bad = 0
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            print(f"fade: {f}: cannot read as JSON ({exc})", file=sys.stderr)
            bad += 1
            continue
        errs = [] if _is_official(data) else validate_bank(data)
        for e in errs:
            print(f"fade: {f}: {e}", file=sys.stderr)
        bad += bool(errs)
        if not errs:
            print(f"{f}: ok" + (" (official FADE format)" if _is_official(data) else ""))
    raise typer.Exit(1 if bad else 0)


@prompts_app.command("generate")
def prompts_generate(
    class_name: Annotated[str, typer.Option("--class", "-c", help="The new product class, e.g. gear_wheel.")],
    llm_url: Annotated[str, typer.Option("--llm-url", help="Base URL of an OpenAI-compatible chat endpoint, e.g. http://localhost:8000/v1.")],
    llm_model: Annotated[str, typer.Option("--model", help="Model name the endpoint serves.")] = "gpt-4o-mini",
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Name of the environment variable holding the API key (never pass keys on the command line).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Bank file to write. Default: CLASS-llm.json.", show_default=False)] = None,
    per_state: Annotated[int, typer.Option("--per-state", min=1, help="Items asked for in each instruction.")] = 50,
    timeout: Annotated[float, typer.Option("--timeout", min=1.0, help="Seconds per request.")] = 60.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Extra attempts on connection errors, timeouts, 429 and 5xx.")] = 3,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a new versioned prompt bank for a product class by asking an LLM with the FADE, ALFA and FiLo recipes."""
    import os

    from .generate import LLMClient, generate_bank, write_bank

    key = None
    if api_key_env:
        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"--api-key-env {api_key_env}: that environment variable is not set")
    client = LLMClient(url=llm_url, model=llm_model, api_key=key, timeout=timeout, retries=retries)
    _log(quiet, f"asking {client.endpoint} ({llm_model}) for '{class_name}' prompts")
    bank = generate_bank(client, class_name, per_state=per_state)
    path = output or Path(f"{bank['name']}.json")
    write_bank(bank, path, overwrite=overwrite)
    cls_section = bank.get("classes", {}).get(class_name, {})
    _log(quiet, f"wrote {path}: {len(bank['prompts']['normal'])} + {len(cls_section.get('normal', []))} normal, "
                f"{len(bank['prompts']['anomalous'])} + {len(cls_section.get('anomalous', []))} anomalous prompts "
                f"(object-agnostic + per-class); check it with `fade prompts show {path} --class {class_name}`")
    print(str(path))


@prompts_app.command("embed")
def prompts_embed(
    banks: Annotated[list[str], typer.Argument(help="Bank names or paths to pre-embed.")],
    class_name: ClassOpt = "object",
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    device: DeviceOpt = "auto",
    cache_dir: CacheOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Compute and cache the text embeddings of banks (e.g. before going offline or on a new machine)."""
    from .backbone import load_backbone
    from .prompts import TextEncoderCache, build_text_classifier, load_bank

    loaded = [load_bank(b) for b in banks]
    backbone = load_backbone(_resolve_model_name(model), pretrained, device)
    cache = TextEncoderCache(backbone, cache_dir)
    t = time.perf_counter()
    text = build_text_classifier(loaded, class_name, cache)
    _log(quiet, f"{', '.join(text.banks)}: {text.counts[0]} normal + {text.counts[1]} anomalous prompts, "
                f"{'cached already' if cache.hits else 'embedded and cached'} in {time.perf_counter() - t:.1f} s under {cache.dir}")


def _version(value: bool) -> None:
    if value:
        print(f"fade {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Training-free industrial anomaly detection and segmentation with CLIP (FADE)."""


def _terminate(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's ClickException and Abort classes: newer typer releases vendor click as
    `typer._click`, older ones use `click` itself; usage errors may come from either."""
    import importlib

    errors, aborts = [], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        errors += [c for c in (getattr(module, "ClickException", None),) if c is not None]
        aborts += [c for c in (getattr(module, "Abort", None),) if c is not None]
    return tuple(errors), tuple(aborts)


def main() -> None:
    """Console entry point: FadeErrors become one stderr line and exit status 2."""
    # cron and batch systems stop jobs with SIGTERM: handle it like Ctrl-C (clean stop, exit 130)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    try:
        code = app(standalone_mode=False)
    except FadeError as exc:
        print(f"fade: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("fade: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        usage_errors, aborts = _click_exception_types()
        if isinstance(exc, usage_errors):  # one line, like every other fade error
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"fade: error: {exc.format_message()}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        if isinstance(exc, aborts):
            print("fade: interrupted", file=sys.stderr)
            sys.exit(130)
        if os.environ.get("FADE_DEBUG"):
            raise
        # a bug or an environment failure (out of memory, CUDA error): one line, exit 70 (EX_SOFTWARE)
        reason = "out of memory" if isinstance(exc, MemoryError) else f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        print(f"fade: internal error: {reason} (FADE_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(70)
    code = code if isinstance(code, int) else 0
    if code == 130:  # typer turns Ctrl-C into exit status 130 without a word
        print("fade: interrupted", file=sys.stderr)
    sys.exit(code)
