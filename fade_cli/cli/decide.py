"""How `fade detect` / `fade segment` decide: fixed or calibrated thresholds (`--threshold auto`),
their source, the normalised score, and the options that set them (docs/calibration.md)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..decisions.calibration import DEFAULT_FALSE_ALARM_RATE, NormalScores
from ..decisions.formats import FORMATS
from ..errors import UsageError
from .common import log

FalseAlarmOpt = Annotated[Optional[float], typer.Option("--false-alarm-rate", metavar="RATE", help=f"With --threshold/--pixel-threshold auto: the fraction of good images (pixels) allowed to be flagged. Default: {DEFAULT_FALSE_ALARM_RATE:g}.", show_default=False)]
CalibrationOpt = Annotated[Optional[Path], typer.Option("--calibration", help="Normal scores from `fade calibrate` for --threshold auto (default: the --bank's own, or leave-one-out over --refs).", show_default=False)]
NormalisedOpt = Annotated[bool, typer.Option("--normalised-score", help="Add normalised_score to rows: 0.5 = the calibrated threshold (needs --threshold auto).")]
FormatOpt = Annotated[str, typer.Option("--format", help="Rows on stdout: jsonl (every field) or csv (one row per image, fixed columns).")]
MinRegionOpt = Annotated[int, typer.Option("--min-region-area", min=1, metavar="PIXELS", help="List only mask regions of at least this many pixels in rows (the mask file keeps every pixel).")]
PIXEL_THRESHOLD_HELP = "Map value at or above which a pixel is in the binary mask, or auto: calibrated from good images' pixels."


def parse_threshold(text: str, flag: str) -> float | None:
    """A number, or None for 'auto'."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected a number or auto") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} {text}: expected a finite number or auto")
    return value


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: expected {' or '.join(FORMATS)}")
    return fmt


def warn(message: str) -> None:
    """Warnings are shown even with --quiet: they change what the rows mean."""
    print(f"fade: warning: {message}", file=sys.stderr, flush=True)


def check_decision_flags(threshold: str, pixel_threshold: str | None, false_alarm_rate: float | None,
                         calibration: Path | None, normalised: bool) -> None:
    """Refuse bad or inapplicable threshold flags before any work (one line, exit 2)."""
    image_value = parse_threshold(threshold, "--threshold")
    pixel_value = parse_threshold(pixel_threshold, "--pixel-threshold") if pixel_threshold is not None else 0.5
    if image_value is not None and pixel_value is not None:
        for flag, given in (("--false-alarm-rate", false_alarm_rate is not None), ("--calibration", calibration is not None),
                            ("--normalised-score", normalised)):
            if given:
                raise UsageError(f"{flag} applies to --threshold auto{' or --pixel-threshold auto' if pixel_threshold is not None else ''}")
    if normalised and image_value is not None:
        raise UsageError("--normalised-score needs --threshold auto (0.5 is the calibrated threshold)")
    if false_alarm_rate is not None and not 0.0 < false_alarm_rate < 1.0:
        raise UsageError(f"--false-alarm-rate {false_alarm_rate}: expected a number between 0 and 1 (e.g. 0.01)")


def resolve_thresholds(*, threshold: str, pixel_threshold: str | None, false_alarm_rate: float | None,
                       calibration: Path | None, normalised: bool, bank_path: Path | None, pipeline,
                       ref_images: list, ref_paths: list, class_name: str, quiet: bool) -> dict:
    """The OutputSpec fields for the thresholds: value and source of each, the rate asked for
    and, for --normalised-score, the calibrated image threshold."""
    check_decision_flags(threshold, pixel_threshold, false_alarm_rate, calibration, normalised)
    image_value = parse_threshold(threshold, "--threshold")
    pixel_value = parse_threshold(pixel_threshold, "--pixel-threshold") if pixel_threshold is not None else 0.5
    auto = [flag for flag, v in (("--threshold", image_value), ("--pixel-threshold", pixel_value)) if v is None]
    if not auto:
        return {"threshold": image_value, "pixel_threshold": pixel_value}
    rate = DEFAULT_FALSE_ALARM_RATE if false_alarm_rate is None else false_alarm_rate
    scores, source = normal_scores(calibration, bank_path, pipeline, ref_images, ref_paths, class_name, auto, quiet)
    from ..decisions.normals import check_settings

    check_settings(scores, pipeline, source.split(":", 1)[-1])
    out = {"threshold": image_value, "pixel_threshold": pixel_value, "false_alarm_rate": rate}
    if image_value is None:
        t = scores.image_threshold(rate)
        _report(t, "threshold", source, "images", quiet)
        out.update(threshold=round(t.value, 6), threshold_source=source, normalise=t if normalised else None)
    if pixel_value is None:
        t = scores.pixel_threshold(rate)
        _report(t, "pixel threshold", source, "pixel samples", quiet)
        out.update(pixel_threshold=round(t.value, 6), pixel_threshold_source=source)
    return out


def normal_scores(calibration: Path | None, bank_path: Path | None, pipeline, ref_images: list, ref_paths: list,
                  class_name: str, auto: list[str], quiet: bool) -> tuple[NormalScores, str]:
    """The normal scores and their source label, in order of preference: --calibration FILE,
    the --bank's leave-one-out scores, leave-one-out over --refs now."""
    if calibration is not None:
        return NormalScores.load(calibration), f"calibration:{calibration}"
    bank = getattr(pipeline, "reference_bank", None)
    if bank_path is not None:
        stored = NormalScores.of_bank(bank)
        if stored is None:
            raise UsageError(f"{' and '.join(auto)} auto: the bank {bank_path} holds no normal scores "
                             "(build it with this fade's `fade bank build` from 2 or more images, or give --calibration FILE)")
        return stored, f"bank:{bank_path}"
    if len(ref_images) >= 2:
        from ..decisions.normals import leave_one_out

        log(quiet, f"calibrating: each of the {len(ref_images)} references scored against the others (leave-one-out)")
        return leave_one_out(pipeline, ref_images, ref_paths, class_name), "refs:leave-one-out"
    raise UsageError(f"{' and '.join(auto)} auto needs normal scores: --calibration FILE (from `fade calibrate`), "
                     "a --bank from `fade bank build`, or 2 or more --refs")


def _report(t, what: str, source: str, unit: str, quiet: bool) -> None:
    lo, hi = t.interval
    log(quiet, f"{what} {t.value:.6g} from {source}: {t.estimator} estimate from {t.n} normal {unit}; "
               f"false-alarm rate {t.false_alarm_rate:g} asked, {lo:.2g} to {hi:.2g} expected (90 %)")
    message = t.warning(unit)
    if message:
        warn(message)
