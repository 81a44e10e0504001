"""Host-side work that must keep a GPU fed: threaded resizing and read-ahead of input files.

Both must give exactly what the one-at-a-time code gives: same tensors bit for bit, same
outcomes in the same order, same error lines."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import random_image
from fade_cli.data import io as fade_io
from fade_cli.model.backbone import CLIP_MEAN, CLIP_STD, preprocess, preprocess_batch, preprocess_scales
from fade_cli.errors import ImageError
from fade_cli.data.io import load_image
from fade_cli.engines.runner import OutputSpec, ScorerSpec, build_pipeline, score_chunk, score_paths
from fade_cli.methods.fade import FadeConfig


def direct_preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """The obvious version: resize, bytes to floats in [0, 1], subtract mean, divide by std."""
    resized = image.convert("RGB").resize((size, size), Image.BICUBIC)
    x = torch.tensor(list(resized.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1)
    x = x.float() / 255.0
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def test_threaded_multi_scale_preprocessing_is_bit_identical():
    images = [random_image(i, (50 + 9 * i, 40 + 3 * i)) for i in range(5)]
    images.append(random_image(9).convert("L"))  # converted to RGB like the others
    out = preprocess_scales(images, [48, 16, 32, 48])
    assert sorted(out) == [16, 32, 48]
    for size, batch in out.items():
        assert batch.shape == (len(images), 3, size, size) and batch.dtype == torch.float32
        assert torch.equal(batch, torch.stack([direct_preprocess(im, size) for im in images]))
    assert torch.equal(preprocess_batch(images[:1], 32), direct_preprocess(images[0], 32)[None])
    assert torch.equal(preprocess(images[2], 16), direct_preprocess(images[2], 16))


def test_preprocessing_is_safe_from_many_threads():
    images = [random_image(i) for i in range(4)]
    expected = preprocess_scales(images, [16, 32])
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: preprocess_scales(images, [16, 32]), range(8)))
    assert all(torch.equal(r[s], expected[s]) for r in results for s in (16, 32))


@pytest.fixture()
def mixed_inputs(tmp_path: Path) -> list[Path]:
    """Good images with broken ones between them, in an order the outcomes must keep."""
    paths = []
    for i in range(7):
        p = tmp_path / f"good{i}.png"
        random_image(i, (64 + 8 * i, 64)).save(p)
        paths.append(p)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "empty.png").write_bytes(b"")
    paths.insert(2, tmp_path / "corrupt.png")
    paths.insert(5, tmp_path / "missing.png")
    paths.append(tmp_path / "empty.png")
    return paths


@pytest.mark.parametrize("batch_size", [1, 3, 20])
def test_read_ahead_gives_the_outcomes_of_one_chunk_at_a_time(tiny_backbone, mixed_inputs, batch_size, monkeypatch):
    spec = ScorerSpec(method="fade", class_name="object", options=FadeConfig(seg_scales=(64,), cls_scale=64),
                      model="fade-tiny", pretrained="none")
    output = OutputSpec(threshold=0.5, base=mixed_inputs[0].parent)
    pipeline = build_pipeline(spec, tiny_backbone)
    expected = [o for s in range(0, len(mixed_inputs), batch_size)
                for o in score_chunk(pipeline, mixed_inputs[s : s + batch_size], spec, output)]

    readers = set()
    real_load = fade_io.load_image

    def recording_load(path, max_pixels):
        readers.add(threading.current_thread().name)
        return real_load(path, max_pixels)

    monkeypatch.setattr("fade_cli.engines.runner.load_image", recording_load)
    got = list(score_paths(pipeline, mixed_inputs, spec, output, batch_size))
    assert [o.path for o in got] == mixed_inputs
    assert [o.error for o in got] == [o.error for o in expected]
    assert sum(o.error is not None for o in got) == 3
    for g, e in zip(got, expected):
        if e.row is not None:
            assert {k: v for k, v in g.row.items() if k != "ms"} == {k: v for k, v in e.row.items() if k != "ms"}
    assert readers and all(name.startswith("fade-read") for name in readers)


def test_stopping_early_leaves_no_reader_threads(tiny_backbone, mixed_inputs):
    spec = ScorerSpec(method="fade", class_name="object", options=FadeConfig(seg_scales=(64,), cls_scale=64),
                      model="fade-tiny", pretrained="none")
    pipeline = build_pipeline(spec, tiny_backbone)
    results = score_paths(pipeline, mixed_inputs, spec, OutputSpec(threshold=0.5, base=mixed_inputs[0].parent), 2)
    assert next(results).path == mixed_inputs[0]
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("fade-read")]


def test_pixel_limits_hold_per_call_when_readers_run_in_threads(tmp_path):
    """PIL's limit is one global; each call must still apply its own limit, and the global comes back."""
    p = tmp_path / "img.png"
    random_image(0, (100, 100)).save(p)  # 10,000 pixels
    before = Image.MAX_IMAGE_PIXELS

    def read(limit: int) -> str:
        try:
            load_image(p, limit)
            return "ok"
        except ImageError as exc:
            return str(exc)

    limits = [5_000, 200_000_000, 10_000, 9_999] * 25
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(read, limits))
    for limit, res in zip(limits, got):
        assert (res == "ok") == (limit >= 10_000), (limit, res)
        if limit < 10_000:
            assert res.startswith("image is too large")
    assert Image.MAX_IMAGE_PIXELS == before


def test_read_ahead_keeps_order_bounds_the_lookahead_and_raises_at_the_failing_item():
    started = []
    lock = threading.Lock()

    def read(i: int) -> int:
        with lock:
            started.append(i)
        if i == 7:
            raise ValueError("bad item 7")
        return i * i

    reads = fade_io.read_ahead(range(20), read, ahead=4, workers=3)
    got = []
    with pytest.raises(ValueError, match="bad item 7"):
        for i, value in reads:
            got.append((i, value))
            with lock:
                assert max(started) <= i + 4  # never more than `ahead` items beyond the consumer
    assert got == [(i, i * i) for i in range(7)]
    assert max(started) <= 7 + 4
