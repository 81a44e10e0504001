"""`fade demo-data`: write a small synthetic MVTec-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import split_list


def demo_data(
    out: Annotated[Path, typer.Argument(help="Folder to create (must not exist or be empty).")],
    classes: Annotated[Optional[list[str]], typer.Option("--classes", help="Class names (textures: tiles, weave).")] = None,
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
) -> None:
    """Write a small synthetic MVTec-layout dataset (textures with painted defects and masks) for tests and demos."""
    from ..data.demo_data import make_demo_dataset

    names = split_list(classes) or ("tiles", "weave")
    make_demo_dataset(out, classes=names, size=size, seed=seed)
    print(f"wrote {out} ({', '.join(names)}): try `fade eval {out} --dataset mvtec --shots 0,1 --seeds 2`")
