"""Write a few sample part images (good references, and test images with painted defects).

    python examples/make_sample_images.py samples/
Creates samples/good/*.png and samples/line3/*.png. Synthetic: for trying the commands, not
for judging accuracy.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def part(rng: np.random.Generator, size: int = 320) -> Image.Image:
    """A brushed-metal disc with a bore, on a dark background."""
    y, x = np.mgrid[:size, :size]
    brushed = 150 + 25 * np.sin(x / 3.0 + rng.normal(0, 0.3, (size, size)).cumsum(axis=1) * 0.05)
    img = np.zeros((size, size, 3))
    r = np.hypot(x - size / 2, y - size / 2)
    disc = (r < size * 0.42) & (r > size * 0.12)
    img[disc] = brushed[disc, None] * np.array([1.0, 0.98, 0.95])
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main(out: Path) -> None:
    rng = np.random.default_rng(0)
    (out / "good").mkdir(parents=True, exist_ok=True)
    (out / "line3").mkdir(parents=True, exist_ok=True)
    for i in range(4):
        part(rng).save(out / "good" / f"ref_{i:03d}.png")
    for i in range(4):
        img = part(rng)
        if i % 2:  # every other test image gets a scratch and a stain
            d = ImageDraw.Draw(img)
            d.line([(90 + 10 * i, 100), (190, 170 + 5 * i)], fill=(40, 35, 30), width=4)
            d.ellipse([200, 200, 228, 222], fill=(120, 70, 30))
        img.save(out / "line3" / f"part_{i:03d}.png")
    print(f"wrote {out}/good (4 references) and {out}/line3 (4 test images, 2 with defects)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write good/ and line3/ into")
    main(ap.parse_args().out)
