"""Benchmark readers: MVTec AD, VisA and plain folders as per-class lists of samples.

FADE / ALFA are evaluated one object class at a time: k-shot good reference images drawn from
the class's train split (the few-shot memory bank), and the whole test split, good and
anomalous images with their ground-truth masks. Readers only list files and check that the
layout is complete; images are opened later by the pipeline, masks by `load_mask`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import FadeError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DATASETS = ("mvtec", "visa", "folder")

MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip
VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip

VISA_COLUMNS = ("object", "split", "label", "image", "mask")


class DatasetError(FadeError, ValueError):
    """A dataset folder or split file is missing, incomplete or malformed (one-line message)."""


@dataclass(frozen=True)
class Sample:
    """One image of a benchmark class."""

    image: Path
    label: int  # 0 good, 1 anomalous
    mask: Path | None  # None: all-zero mask (good images; anomalous ones of a mask-less folder)
    defect: str  # "good" or the defect type name
    class_name: str


@dataclass
class ClassSplit:
    """A class's good reference pool (train) and its test images.

    Test images are sorted by path. The train pool is in the order the official FADE code draws
    k-shot references from: sorted by path (MVTec, folders: its sorted glob), the split file's
    row order for VisA (it reads 1cls.csv as is)."""

    class_name: str
    train: list[Sample]
    test: list[Sample]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in `folder` (not recursive), sorted; [] if it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _by_path(samples: Iterable[Sample]) -> list[Sample]:
    # Path order (component-wise) is the official code's sorted(glob) order.
    return sorted(samples, key=lambda s: s.image)


def _require_dir(root: Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: {what} folder not found")
    return root


# --------------------------------------------------------------------------- MVTec AD


def _mvtec_class_dirs(root: Path) -> list[str]:
    return sorted(
        d.name for d in root.iterdir() if d.is_dir() and ((d / "train").is_dir() or (d / "test").is_dir())
    )


def read_mvtec(root: Path, class_name: str) -> ClassSplit:
    """One class of an MVTec-AD-layout dataset.

    root/class/train/good/*, root/class/test/<defect>/*, and for every anomalous test image
    root/class/ground_truth/<defect>/<stem>_mask.png (another image extension is accepted).
    """
    root = _require_dir(root, "dataset")
    class_dir = root / class_name
    if not class_name or not class_dir.is_dir():
        found = ", ".join(_mvtec_class_dirs(root)) or "none"
        raise DatasetError(f"{class_dir}: no such class folder; classes found under {root}: {found}")

    train_dir = class_dir / "train" / "good"
    train = [Sample(p, 0, None, "good", class_name) for p in _images_in(train_dir)]
    if not train:
        raise DatasetError(f"{train_dir}: no good training images")

    test_dir = class_dir / "test"
    defect_dirs = sorted(d for d in test_dir.iterdir() if d.is_dir()) if test_dir.is_dir() else []
    test: list[Sample] = []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        images = _images_in(defect_dir)
        if defect == "good":
            test += [Sample(p, 0, None, "good", class_name) for p in images]
            continue
        gt_dir = class_dir / "ground_truth" / defect
        # Masks are looked up by name (not paired by sorted order as the official code does),
        # so a missing mask is reported instead of silently shifting the pairs.
        masks = {p.name.lower(): p for p in _images_in(gt_dir)}
        for image in images:
            names = (f"{image.stem}_mask{ext}".lower() for ext in IMAGE_EXTENSIONS)
            mask = next((masks[n] for n in names if n in masks), None)
            if mask is None:
                expected = gt_dir / f"{image.stem}_mask.png"
                raise DatasetError(f"{image}: anomalous test image has no mask (expected {expected})")
            test.append(Sample(image, 1, mask, defect, class_name))
    if not test:
        raise DatasetError(f"{test_dir}: no test images")
    return ClassSplit(class_name, _by_path(train), _by_path(test))


# --------------------------------------------------------------------------- VisA


def _visa_csv_path(root: Path, split_csv: Path | None) -> Path:
    return Path(split_csv) if split_csv is not None else Path(root) / "split_csv" / "1cls.csv"


def _read_visa_csv(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row; values stripped."""
    if not path.is_file():
        raise DatasetError(f"{path}: VisA split file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in VISA_COLUMNS if c not in header]
            if missing:
                raise DatasetError(f"{path}: split file lacks column(s) {', '.join(missing)}")
            reader.fieldnames = header
            return [
                (reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None})
                for row in reader
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"{path}: cannot read split file ({e})") from e


def read_visa(root: Path, class_name: str, split_csv: Path | None = None) -> ClassSplit:
    """One class of VisA from its split file (default root/split_csv/1cls.csv).

    Columns object,split,label,image,mask; label normal/anomaly; paths relative to root;
    mask empty for normal rows. Anomalous train rows (2-class split files) are not references
    and are skipped. VisA has no defect types: anomalous samples get defect "anomaly". The train
    pool keeps the file's row order, from which the official code picks k-shot references.
    """
    root = _require_dir(root, "dataset")
    csv_path = _visa_csv_path(root, split_csv)
    rows = _read_visa_csv(csv_path)
    mine = [(line, r) for line, r in rows if r["object"] == class_name]
    if not mine:
        found = ", ".join(sorted({r["object"] for _, r in rows})) or "none"
        raise DatasetError(f"{csv_path}: no rows for class {class_name!r}; classes in the file: {found}")

    train: list[Sample] = []
    test: list[Sample] = []
    for line, r in mine:
        where = f"{csv_path}:{line}"
        split, label = r["split"].lower(), r["label"].lower()
        if split not in ("train", "test"):
            raise DatasetError(f"{where}: split must be train or test, got {r['split']!r}")
        if label not in ("normal", "anomaly"):
            raise DatasetError(f"{where}: label must be normal or anomaly, got {r['label']!r}")
        if not r["image"]:
            raise DatasetError(f"{where}: empty image path")
        if split == "train" and label == "anomaly":
            continue
        image = root / r["image"]
        if not image.is_file():
            raise DatasetError(f"{image}: image listed in {where} not found")
        if label == "normal":
            (train if split == "train" else test).append(Sample(image, 0, None, "good", class_name))
            continue
        if not r["mask"]:
            raise DatasetError(f"{image}: anomalous test image has no mask (mask column empty in {where})")
        mask = root / r["mask"]
        if not mask.is_file():
            raise DatasetError(f"{image}: anomalous test image has no mask (expected {mask})")
        test.append(Sample(image, 1, mask, "anomaly", class_name))
    if not train:
        raise DatasetError(f"{csv_path}: no normal train images for class {class_name!r}")
    if not test:
        raise DatasetError(f"{csv_path}: no test images for class {class_name!r}")
    return ClassSplit(class_name, train, _by_path(test))


# --------------------------------------------------------------------------- plain folder


def read_folder(root: Path, class_name: str | None = None) -> ClassSplit:
    """A plain folder: root/good/ and root/bad/ test images, optional root/masks/, root/train/.

    A bad image's mask is masks/<stem>.<ext> or masks/<stem>_mask.<ext>; masks are optional,
    but when masks/ exists every bad image needs exactly one. train/ holds good references
    (none: zero-shot only). class_name defaults to the folder's name.
    """
    root = _require_dir(root, "dataset")
    name = class_name or root.name or root.resolve().name
    good_dir, bad_dir, mask_dir, train_dir = (root / d for d in ("good", "bad", "masks", "train"))
    if not good_dir.is_dir() and not bad_dir.is_dir():
        raise DatasetError(f"{root}: expected good/ and/or bad/ folders of test images")

    masks: dict[str, list[Path]] | None = None
    if mask_dir.is_dir():
        masks = {}
        for p in _images_in(mask_dir):
            masks.setdefault(p.stem, []).append(p)

    test = [Sample(p, 0, None, "good", name) for p in _images_in(good_dir)]
    for image in _images_in(bad_dir):
        mask = None
        if masks is not None:
            found = masks.get(image.stem, []) + masks.get(f"{image.stem}_mask", [])
            if not found:
                expected = mask_dir / f"{image.stem}.png"
                alt = f"{image.stem}_mask.png"
                raise DatasetError(f"{image}: bad image has no mask (expected {expected} or {alt})")
            if len(found) > 1:
                raise DatasetError(f"{image}: several masks match: {', '.join(p.name for p in found)}")
            mask = found[0]
        test.append(Sample(image, 1, mask, "bad", name))
    if not test:
        raise DatasetError(f"{root}: no test images in good/ or bad/")

    train: list[Sample] = []
    if train_dir.is_dir():
        train = [Sample(p, 0, None, "good", name) for p in _images_in(train_dir)]
        if not train:
            raise DatasetError(f"{train_dir}: no reference images")
    return ClassSplit(name, _by_path(train), _by_path(test))


# --------------------------------------------------------------------------- common


def list_classes(root: Path, dataset: str, split_csv: Path | None = None) -> list[str]:
    """Class names available under root: class folders (mvtec), split-file objects (visa),
    or the folder's own name (folder)."""
    root = _require_dir(root, "dataset")
    if dataset == "mvtec":
        return _mvtec_class_dirs(root)
    if dataset == "visa":
        rows = _read_visa_csv(_visa_csv_path(root, split_csv))
        return sorted({r["object"] for _, r in rows if r["object"]})
    if dataset == "folder":
        if not (root / "good").is_dir() and not (root / "bad").is_dir():
            raise DatasetError(f"{root}: expected good/ and/or bad/ folders of test images")
        return [root.name or root.resolve().name]
    raise DatasetError(f"unknown dataset kind {dataset!r}; expected one of {', '.join(DATASETS)}")


def read_split(
    root: Path, dataset: str, class_name: str | None = None, split_csv: Path | None = None
) -> ClassSplit:
    """Dispatch to read_mvtec / read_visa / read_folder (class_name required except for folder)."""
    if dataset == "folder":
        return read_folder(root, class_name)
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset kind {dataset!r}; expected one of {', '.join(DATASETS)}")
    if not class_name:
        raise DatasetError(f"{root}: a class name is needed for {dataset}")
    return read_mvtec(root, class_name) if dataset == "mvtec" else read_visa(root, class_name, split_csv)


def load_mask(path: Path | None, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth mask as a bool (H, W) array; size is the image's (W, H); None -> all False.

    Single-band masks (L, 1, P, I;16) are tested nonzero on their raw values, as the official
    code's pil_to_tensor(mask) != 0; multi-band ones are converted to L first.
    """
    width, height = size
    if path is None:
        return np.zeros((height, width), dtype=bool)
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (width, height):
                w, h = im.size
                raise DatasetError(f"{path}: mask is {w}x{h} but its image is {width}x{height}")
            arr = np.asarray(im if len(im.getbands()) == 1 else im.convert("L"))
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{path}: cannot read mask ({e})") from e
    return arr != 0


def sample_reference_indices(n: int, k: int, seed: int) -> list[int]:
    """The official FADE choice of k references among n train images (in their order) for a seed.

    The official code calls torch.manual_seed(seed) and takes the first k items a shuffling
    DataLoader yields; we run exactly that, inside fork_rng so the caller's RNG is untouched.
    """
    import torch  # here: reading a split needs no torch

    if not 0 < k <= n:
        raise ValueError(f"cannot choose {k} of {n} reference images")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(range(n), batch_size=1, shuffle=True)
        return [int(batch[0]) for batch, _ in zip(loader, range(k))]


def sample_references(train: list[Sample], shots: int, seed: int) -> list[Sample]:
    """The k-shot references the official FADE code picks for this seed.

    Train images in the given order, the reader's (sorted by path; VisA: split-file rows);
    torch.manual_seed(seed); the first `shots` items a
    DataLoader(batch_size=1, shuffle=True) yields (see sample_reference_indices, which
    runs exactly that inside fork_rng, leaving the caller's RNG state untouched).
    """
    if shots < 0:
        raise DatasetError(f"shots must be >= 0, got {shots}")
    if shots > len(train):
        raise DatasetError(f"cannot take {shots} reference images: only {len(train)} good training images")
    if shots == 0:
        return []
    return [train[i] for i in sample_reference_indices(len(train), shots, seed)]
