"""Input and output: image reading that fails one file at a time, atomic writers, the --resume manifest.

Every problem with one input becomes an `ImageError` whose message names the problem (the
caller adds the path), so a batch can go on with the other files. Outputs are written to a
temporary file in the destination folder and renamed into place, so a crash or Ctrl-C never
leaves a half-written file under its final name.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import stat
import threading
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageError, UsageError
from .inputs import IMAGE_EXTENSIONS, InputItem, expand_inputs  # noqa: F401 - the input side lives there
from .outputs import common_base, relative_input  # noqa: F401

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_MAX_PIXELS = 100_000_000  # 10k × 10k; raise with --max-pixels
MIN_SIDE = 16  # one ViT patch: smaller images hold no patch of real content
ALPHA_BACKGROUND = (0, 0, 0)  # transparent pixels are composited onto black


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images -> 8-bit grayscale, keeping relative intensity."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16") or (im.mode == "I" and arr.max(initial=0) > 255):
        arr = np.clip(arr.astype(np.float64), 0, 65535) / 257.0
    elif im.mode == "F":
        arr = arr.astype(np.float64)
        finite = arr[np.isfinite(arr)]
        # float images in [0, 1] are scaled up; others are read as 0..255 values
        top = finite.max(initial=0.0) if finite.size else 0.0
        arr = np.nan_to_num(arr * (255.0 if top <= 1.0 else 1.0))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: EXIF rotation applied, alpha composited on ALPHA_BACKGROUND."""
    im = ImageOps.exif_transpose(im)
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        im = _to_8bit(im)
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


_limit_lock = threading.Lock()
_active_limits: dict[int, int] = {}  # max_pixels -> readers using it now
_default_limit = Image.MAX_IMAGE_PIXELS


@contextlib.contextmanager
def _pixel_limit(max_pixels: int):
    """Let PIL decode up to `max_pixels` while any reader needs it (load_image checks each image
    against its own limit). PIL's limit is one global and readers run in threads, so it is the
    largest active limit, and PIL's default again when none is active."""
    global _default_limit
    with _limit_lock:
        if not _active_limits:
            _default_limit = Image.MAX_IMAGE_PIXELS
            # PIL only warns between its limit and twice that; make it an error. Once, process-wide:
            # swapping warning filters per call (catch_warnings) is not thread-safe.
            warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
        _active_limits[max_pixels] = _active_limits.get(max_pixels, 0) + 1
        Image.MAX_IMAGE_PIXELS = max(_active_limits)
    try:
        yield
    finally:
        with _limit_lock:
            _active_limits[max_pixels] -= 1
            if not _active_limits[max_pixels]:
                del _active_limits[max_pixels]
            Image.MAX_IMAGE_PIXELS = max(_active_limits) if _active_limits else _default_limit


def load_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file as RGB, or raise ImageError saying what is wrong with it."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as exc:
        raise ImageError(f"cannot access ({exc.strerror or exc.__class__.__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError("is a directory")
    if not stat.S_ISREG(info.st_mode):  # opening a FIFO would block; a device never ends
        raise ImageError("not a regular file (FIFO, socket or device)")
    if info.st_size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with _pixel_limit(max_pixels), Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise Image.DecompressionBombError
            im.load()
            rgb = to_rgb(im)
    except PermissionError:
        raise ImageError("permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image is too large (over {max_pixels} pixels; raise the limit with --max-pixels)") from None
    except UnidentifiedImageError:
        raise ImageError("not an image, or an unsupported format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"truncated or corrupt image data ({str(exc).strip() or exc.__class__.__name__})") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageError(f"image is {rgb.size[0]}×{rgb.size[1]} pixels, smaller than one {MIN_SIDE}-pixel patch")
    return rgb


def read_ahead(items: Iterable[T], read: Callable[[T], R], ahead: int = 16,
               workers: int | None = None) -> Iterator[tuple[T, R]]:
    """(item, read(item)) in the items' order, with up to `ahead` reads running in threads
    before the consumer gets there: decoding (PIL releases the GIL) overlaps the consumer's
    work. An exception raised by `read` is raised here, at its item. Closing the iterator
    cancels the reads not started and waits for the running ones."""
    todo = iter(items)
    window: deque = deque()
    pool = ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1), thread_name_prefix="fade-read")
    try:
        while True:
            while len(window) < max(1, ahead) and (item := next(todo, _END)) is not _END:
                window.append((item, pool.submit(read, item)))
            if not window:
                return
            item, future = window.popleft()
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_END = object()


_tmp_counter = itertools.count()


def temporary_name(path: Path) -> Path:
    """A short hidden name beside `path`, unique per process, thread and call: two writers never
    share one, and it stays short whatever the length of `path`'s name."""
    return path.with_name(f".fade-{os.getpid()}-{threading.get_ident()}-{next(_tmp_counter)}.tmp")


def atomic_write(path: Path, write) -> None:
    """Call write(file_object) on a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "xb") as fh:
            write(fh)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))


def save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array))


# A perceptual blue -> cyan -> yellow -> red ramp for heatmaps (no plotting library needed).
_RAMP = np.array([[0, 0, 128], [0, 90, 255], [0, 220, 220], [255, 230, 0], [255, 60, 0], [180, 0, 0]], dtype=np.float64)


def heatmap_colors(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 colours."""
    x = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_RAMP) - 2)
    frac = (x - lo)[..., None]
    return np.rint(_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).astype(np.uint8)


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend a heatmap of `anomaly_map` (same H×W as the image) over the image."""
    heat = Image.fromarray(heatmap_colors(anomaly_map), mode="RGB")
    return Image.blend(image.convert("RGB"), heat, alpha)


def output_stem(path: Path, base: Path) -> Path:
    """An input's path under `base`, suffix dropped: where its outputs go with no collision in
    the run (`data.outputs.plan_stems` gives the stems of a whole run)."""
    rel = relative_input(path, base)
    return rel.with_suffix("") if rel.suffix else rel


class Manifest:
    """A JSONL record of finished images, for --resume.

    A row is appended (flushed and fsynced) only after all of an image's outputs exist, so an
    interruption never records unfinished work. Every row carries the run's settings
    fingerprint: resuming with other settings is refused instead of mixing results.
    """

    def __init__(self, path: Path, fingerprint: str):
        self.path = path
        self.fingerprint = fingerprint

    def finished(self) -> dict[str, dict]:
        """Absolute input path -> recorded row, for rows whose output files all still exist."""
        if not self.path.is_file():
            return {}
        done: dict[str, dict] = {}
        with open(self.path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line torn by a crash: that image is simply redone
                if row.get("settings") != self.fingerprint:
                    raise UsageError(
                        f"{self.path}: line {n} was written with other settings; use another output or drop --resume"
                    )
                if all(Path(p).is_file() for p in row.get("outputs", {}).values()):
                    done[row["input"]] = row
        return done

    def append(self, row: dict, input_path: Path) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({**row, "input": str(input_path.absolute()), "settings": self.fingerprint}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def restart(self) -> None:
        """Start an empty record (--overwrite: the outputs it listed are being replaced)."""
        if os.path.lexists(self.path):
            atomic_write(self.path, lambda fh: None)

    def _drop_torn_tail(self) -> None:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if not data.endswith(b"\n"):
                fh.truncate(data.rfind(b"\n") + 1)
