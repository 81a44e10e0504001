"""A small synthetic dataset in MVTec AD layout, for tests and demos of k-shot anomaly detection.

Each class is a texture (a tile grid, a woven pattern) with a few good reference images, good
test images, and anomalous test images carrying one painted defect each: a "scratch" (a dark
thin line) or a "spot" (a coloured blob), with a ground-truth mask that covers exactly the
painted pixels. Everything is drawn from a numpy Generator seeded by `seed`, so the same
arguments always give the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .datasets import DatasetError

DEFECT_TYPES = ("scratch", "spot")
# Defects are painted with one flat colour that textures never produce (every texture channel
# is kept in [TEXTURE_MIN, 230]; each defect colour has a channel below TEXTURE_MIN), so the
# painted pixels are exactly the mask and can be recovered from the image alone.
DEFECT_COLORS = {"scratch": (28, 26, 24), "spot": (205, 45, 35)}
TEXTURE_MIN = 70
TEXTURES = ("tiles", "weave")


def _tiles(rng: np.random.Generator, size: int) -> np.ndarray:
    """A regular grid of beige tiles with darker grout; per-tile shade and pixel noise vary."""
    period = max(size // 8, 8)
    n = size // period + 1
    shade = rng.normal(0.0, 8.0, size=(n, n))
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.empty((size, size, 3))
    img[:] = (190.0, 175.0, 150.0)
    img += shade[yy // period, xx // period][..., None]
    grout = (yy % period < 2) | (xx % period < 2)
    img[grout] = (125.0, 118.0, 108.0)
    img += rng.normal(0.0, 4.0, size=img.shape)
    return img


def _weave(rng: np.random.Generator, size: int) -> np.ndarray:
    """Over-under woven threads: blue warp and tan weft alternate in a checkerboard of cells."""
    width = max(size // 16, 4)
    yy, xx = np.mgrid[0:size, 0:size]
    # Round threads: brightest along the thread's centre line.
    across_weft = 0.75 + 0.25 * np.sin(np.pi * ((yy % width) + 0.5) / width)
    across_warp = 0.75 + 0.25 * np.sin(np.pi * ((xx % width) + 0.5) / width)
    weft_on_top = ((yy // width + xx // width) % 2 == 0)[..., None]
    weft = np.array((200.0, 180.0, 130.0)) * across_weft[..., None]
    warp = np.array((120.0, 150.0, 200.0)) * across_warp[..., None]
    img = np.where(weft_on_top, weft, warp)
    img *= rng.uniform(0.95, 1.05)  # a slightly different light per image
    img += rng.normal(0.0, 4.0, size=img.shape)
    return img


def _texture(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    img = _tiles(rng, size) if kind == "tiles" else _weave(rng, size)
    return np.clip(np.rint(img), TEXTURE_MIN, 230).astype(np.uint8)


def _scratch_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Pixels within a half-width of a random segment: a thin (1-3 px) straight line."""
    start = rng.uniform(0.2, 0.8, size=2) * size
    angle = rng.uniform(0.0, np.pi)
    length = rng.uniform(0.25, 0.45) * size
    end = np.clip(start + length * np.array([np.cos(angle), np.sin(angle)]), 0, size - 1)
    half_width = rng.uniform(0.75, 1.25)  # >= 1/sqrt(2): the pixel nearest `start` is always hit
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    d = end - start
    t = np.clip(((xx - start[0]) * d[0] + (yy - start[1]) * d[1]) / (d @ d), 0.0, 1.0)
    dist = np.hypot(xx - (start[0] + t * d[0]), yy - (start[1] + t * d[1]))
    return dist <= half_width


def _spot_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """An irregular blob: a disc whose radius wobbles with the angle."""
    cx, cy = rng.uniform(0.25, 0.75, size=2) * size
    radius = rng.uniform(0.05, 0.1) * size
    lobes, phase, wobble = rng.integers(3, 7), rng.uniform(0, 2 * np.pi), rng.uniform(0.1, 0.3)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    theta = np.arctan2(yy - cy, xx - cx)
    return np.hypot(xx - cx, yy - cy) <= radius * (1.0 + wobble * np.sin(lobes * theta + phase))


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _check_args(out: Path, classes: Sequence[str], counts: dict[str, int], size: int) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out}: exists and is not an empty folder; choose a new output folder")
    if not classes or len(set(classes)) != len(classes):
        raise DatasetError(f"{out}: classes must be a non-empty list of distinct names, got {list(classes)}")
    for name in classes:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise DatasetError(f"{out}: {name!r} cannot be a class folder name")
    if counts["n_train"] < 1 or min(counts.values()) < 0 or counts["n_good"] + counts["n_bad"] < 1:
        raise DatasetError(f"{out}: need n_train >= 1 and at least one test image, got {counts}")
    if size < 32:
        raise DatasetError(f"{out}: size must be at least 32 pixels, got {size}")


def make_demo_dataset(
    out: Path,
    classes: Sequence[str] = TEXTURES,
    n_train: int = 4,
    n_good: int = 3,
    n_bad: int = 3,
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a synthetic MVTec-layout dataset under `out` (which must not exist or be empty).

    Per class: n_train good references in train/good/, n_good good test images in test/good/,
    and n_bad anomalous images PER defect type in test/scratch/ and test/spot/, each with
    ground_truth/<defect>/NNN_mask.png (0/255). Class "tiles" is a tile grid, "weave" a woven
    pattern; any other name gets them in turn by position. Returns `out`.
    """
    out = Path(out)
    _check_args(out, classes, {"n_train": n_train, "n_good": n_good, "n_bad": n_bad}, size)
    out.mkdir(parents=True, exist_ok=True)
    for position, name in enumerate(classes):
        kind = name if name in TEXTURES else TEXTURES[position % len(TEXTURES)]
        # Seeded by (seed, class name) so a class's images do not depend on the other classes.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        class_dir = out / name
        for i in range(n_train):
            _save(_texture(kind, rng, size), class_dir / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            _save(_texture(kind, rng, size), class_dir / "test" / "good" / f"{i:03d}.png")
        for defect in DEFECT_TYPES:
            for i in range(n_bad):
                img = _texture(kind, rng, size)
                mask = _scratch_mask(rng, size) if defect == "scratch" else _spot_mask(rng, size)
                img[mask] = DEFECT_COLORS[defect]
                _save(img, class_dir / "test" / defect / f"{i:03d}.png")
                mask_path = class_dir / "ground_truth" / defect / f"{i:03d}_mask.png"
                _save(np.where(mask, 255, 0).astype(np.uint8), mask_path)
    readme = (
        "Synthetic anomaly-detection demo data written by fade_cli.demo_data.make_demo_dataset\n"
        f"(seed={seed}, size={size}x{size}). Layout is MVTec AD:\n"
        "  <class>/train/good/NNN.png              good reference images\n"
        "  <class>/test/good/NNN.png               good test images\n"
        "  <class>/test/<defect>/NNN.png           anomalous test images\n"
        "  <class>/ground_truth/<defect>/NNN_mask.png  masks, 255 = defect\n"
        f"Classes: {', '.join(classes)}. Per class: {n_train} train, {n_good} good test,\n"
        f"{n_bad} per defect type ({', '.join(DEFECT_TYPES)}): a scratch is a dark thin line,\n"
        "a spot a red blob. Textures and defects are generated, not photographed: use them to\n"
        "try the tools, not to judge a model.\n"
    )
    (out / "README.txt").write_text(readme, encoding="utf-8")
    return out
