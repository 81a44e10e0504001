"""Shared pieces of the `fade` commands: option declarations, failure reporting, logging and parsing helpers."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..data.io import InputItem, expand_inputs
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
        print(f"fade: {path}: {reason}", file=sys.stderr, flush=True)


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
MethodOpt = Annotated[str, typer.Option("--method", help=f"{method_help()}. A flag of another method is refused (exit 2).")]
WindowsOpt = Annotated[str, typer.Option("--windows", help="alfa: aligner window sizes r in patches, comma-separated (paper: 2,3; 2,3,4 is slower).")]
NoAlignerOpt = Annotated[bool, typer.Option("--no-aligner", help="alfa ablation: local maps against the global prompt embeddings (no global-to-local projection).")]
NoRtpOpt = Annotated[bool, typer.Option("--no-rtp", help="alfa ablation: keep every prompt (same as --prompt-filter none).")]
FILO_PANEL = "FiLo parts (training-free; --method filo turns on all but --positions)"
PositionsOpt = Annotated[Optional[bool], typer.Option("--positions/--no-positions", help="FiLo: second language pass with the 'filo' bank's prompts filled with the region (of 9) where the first-pass map peaks, e.g. 'at top left'; averaged with the first pass. Default: off, also with --method filo (provisional preset).", show_default=False, rich_help_panel=FILO_PANEL)]
ObjectPriorOpt = Annotated[Optional[float], typer.Option("--object-prior", min=0.0, max=1.0, metavar="LAMBDA", help="FiLo: multiply maps outside the estimated object (GEM patches vs 'a photo of a CLASS' / background prompts) by LAMBDA; 0.7 is the official FiLo value, 1 = off. Default: 0.7 with --method filo, else off.", show_default=False, rich_help_panel=FILO_PANEL)]
MultiShapeOpt = Annotated[Optional[bool], typer.Option("--multi-shape/--no-multi-shape", help="FiLo: average patch features over 1x1, 3x3, 5x5, 7x7, 1x5, 5x1 neighbourhoods before text matching; the six language maps are averaged. Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
SmoothOpt = Annotated[Optional[float], typer.Option("--smooth", min=0.0, metavar="SIGMA", help="FiLo: Gaussian smoothing of the final map, σ in pixels of the 448 px evaluation map (eval: of --eval-size); 0 = off. Default: 4 with --method filo, else 0.", show_default=False, rich_help_panel=FILO_PANEL)]
FgMatchingOpt = Annotated[Optional[bool], typer.Option("--fg-matching/--no-fg-matching", help="FiLo++: few-shot vision scores count only inside the estimated object (no effect zero-shot). Default: on with --method filo.", show_default=False, rich_help_panel=FILO_PANEL)]
PromptFilterOpt = Annotated[Optional[str], typer.Option("--prompt-filter", help="alfa: per-image prompt filter: alfa (contextual score > 0, the default), filo (FiLo++ overlap interval) or none.", show_default=False)]


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


def reference_paths(refs: list[str], shots: int | None, seed: int, images: list[InputItem]) -> list[Path]:
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
        from ..data.datasets import sample_reference_indices

        if shots > len(paths):
            raise UsageError(f"--shots {shots}: only {len(paths)} reference images given")
        paths = [paths[i] for i in sample_reference_indices(len(paths), shots, seed)]
    return paths


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


def scorer_spec(ctx, method_name: str, class_name: str, model: str, pretrained: str, device: str, precision: str,
                values: dict, map_size: int = 448):
    """The command line -> a validated ScorerSpec: the method from the registry, its options built
    once from the flags it declares (`values`: every method flag's value, defaults included)."""
    from ..engines.runner import ScorerSpec
    from ..methods import get_method

    method = get_method(method_name)
    refuse_inapplicable_flags(ctx, method)
    options = method.options({k: v for k, v in values.items() if k in method.flags}, map_size)
    model_config = Path(model).absolute() if model.endswith(".json") else None
    return ScorerSpec(method=method.name, class_name=class_name, options=options, model=resolve_model_name(model),
                      pretrained=pretrained, device=device, precision=precision, model_config=model_config)
