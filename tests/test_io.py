"""Image reading: every kind of bad or unusual input, generated here (no committed binaries)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from fade_cli.errors import ImageError
from fade_cli.data.io import expand_inputs, load_image, output_stem, to_rgb

from helpers import make_corpus


@pytest.fixture()
def corpus(tmp_path):
    c = make_corpus(tmp_path)
    yield tmp_path, c
    os.chmod(tmp_path / "locked.png", 0o644)


def test_every_corpus_file_reads_or_fails_with_its_reason(corpus):
    d, c = corpus
    for name, (fname, expected) in c.items():
        if name == "locked" and os.geteuid() == 0:
            continue  # root reads any file: nothing to refuse
        if expected is None:
            img = load_image(d / fname, max_pixels=1_000_000)
            assert img.mode == "RGB" and min(img.size) >= 16, name
        else:
            with pytest.raises(ImageError, match=expected):
                load_image(d / fname, max_pixels=1_000_000)


def test_conversions_keep_content(corpus):
    d, _ = corpus
    assert load_image(d / "rotated.jpg").size == (40, 60)  # EXIF orientation applied
    assert np.asarray(load_image(d / "rgba.png")).max() == 0  # fully transparent -> black background
    sixteen = np.asarray(load_image(d / "16bit.png"))[..., 0].astype(int)
    raw = np.asarray(Image.open(d / "16bit.png")).astype(float) / 257.0
    assert np.abs(sixteen - np.rint(raw)).max() <= 1  # 16-bit scaled, not clipped
    flt = np.asarray(load_image(d / "float.tif"))[..., 0]
    assert flt.min() == 0 and flt.max() == 255  # [0, 1] floats scaled up
    assert load_image(d / "bomb.png", max_pixels=10_000_000).size == (3000, 3000)  # the limit can be raised


def test_missing_and_directory():
    with pytest.raises(ImageError, match="no such file"):
        load_image(__import__("pathlib").Path("/nonexistent/x.png"))


def test_expand_inputs(tmp_path):
    (tmp_path / "a").mkdir(); (tmp_path / "a" / "sub").mkdir(); (tmp_path / "empty").mkdir()
    for p in ["a/1.png", "a/sub/2.jpg", "a/notes.txt", "b.png"]:
        (tmp_path / p).write_bytes(b"x")
    items = expand_inputs([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "empty"),
                           str(tmp_path / "nope.png"), str(tmp_path / "b.png"), "-"],
                          stdin=io.StringIO(f"{tmp_path / 'a' / '1.png'}\n{tmp_path / 'c*.png'}\n"))
    got = [(i.path.relative_to(tmp_path).as_posix(), i.error) for i in items]
    assert got == [("a/1.png", None), ("a/sub/2.jpg", None), ("b.png", None),
                   ("empty", "directory contains no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp)"),
                   ("nope.png", "no such file or directory"), ("c*.png", "pattern matches no files")]


def test_output_stems_mirror_the_tree(tmp_path):
    a, b = tmp_path / "x" / "img.png", tmp_path / "y" / "img.png"
    assert output_stem(a, tmp_path).as_posix() == "x/img"
    assert output_stem(b, tmp_path) != output_stem(a, tmp_path)


def test_to_rgb_palette_with_transparency():
    p = Image.new("P", (20, 20)); p.putpalette([255, 0, 0] * 256); p.info["transparency"] = 0
    assert np.asarray(to_rgb(p)).max() == 0  # the transparent index composites to black


def test_unreadable_file_reports_permission_denied_even_as_root(corpus, monkeypatch):
    """Root reads any file, so the denial is simulated where the file is opened."""
    import fade_cli.data.io as io_mod

    d, _ = corpus
    real_open = io_mod.Image.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(io_mod.Image, "open", deny)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(d / "locked.png")
    assert load_image(d / "gray.png").mode == "RGB"  # other files unaffected
