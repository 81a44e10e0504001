"""DINOv2 backbone and AnomalyDINO vision guidance, each against a direct, slow implementation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from fade_cli.errors import BackboneError
from fade_cli.methods import anomalydino as dino
from fade_cli.model.dino import IMAGENET_MEAN, IMAGENET_STD, input_size, load_dino_backbone

from conftest import TINY_DINO, random_image


@pytest.fixture(scope="module")
def tiny_dino():
    return load_dino_backbone(TINY_DINO, "none", "cpu", size=56)


# ---- backbone ------------------------------------------------------------------------------------
def test_input_size_keeps_aspect_and_patch_multiple():
    assert input_size(700, 700, 448, 14) == (448, 448)
    assert input_size(1000, 700, 448, 14) == (644, 448)  # 640 -> nearest multiple of 14
    assert input_size(300, 600, 448, 14) == (448, 896)
    w, h = input_size(333, 517, 448, 14)
    assert w == 448 and h % 14 == 0 and abs(h - 517 * 448 / 333) <= 7


def test_preprocess_is_pil_bicubic_and_imagenet_normalisation(tiny_dino):
    img = random_image(3, (90, 60))
    x = tiny_dino.preprocess(img)
    w, h = input_size(90, 60, 56, 14)
    expected = np.asarray(img.resize((w, h), Image.BICUBIC), dtype=np.float64) / 255.0
    expected = (expected - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert x.shape == (3, h, w)
    np.testing.assert_allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("hw", [(112, 112), (56, 84)])
def test_patch_tokens_equal_timms_forward_features(tiny_dino, hw):
    # An independent timm model built at this input size, with the same weights loaded through
    # timm's checkpoint filter (positional embedding resampled at load time, not per forward).
    from timm.models.vision_transformer import checkpoint_filter_fn

    fixed = timm.create_model(TINY_DINO, pretrained=False, num_classes=0, img_size=hw).eval()
    fixed.load_state_dict(checkpoint_filter_fn(tiny_dino.model.state_dict(), fixed))
    pixels = torch.randn(2, 3, *hw)
    with torch.no_grad():
        expected = fixed.forward_features(pixels)[:, fixed.num_prefix_tokens :]
    got = tiny_dino.encode(pixels)
    assert got.shape == (2, (hw[0] // 14) * (hw[1] // 14), tiny_dino.embed_dim)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_encode_images_groups_sizes_and_reports_grids(tiny_dino):
    imgs = [random_image(0, (56, 56)), random_image(1, (84, 56)), random_image(2, (56, 56))]
    out = tiny_dino.encode_images(imgs)
    assert [g for _, g in out] == [(4, 4), (4, 6), (4, 4)]
    alone = tiny_dino.encode(tiny_dino.preprocess(imgs[1])[None])[0]
    torch.testing.assert_close(out[1][0], alone, atol=1e-5, rtol=1e-5)


def test_unknown_model_tag_and_file_are_one_line_errors(tmp_path):
    with pytest.raises(BackboneError, match="unknown vision backbone"):
        load_dino_backbone("no_such_dinov2", "none")
    with pytest.raises(BackboneError, match="unknown pretrained tag 'nope'"):
        load_dino_backbone("vit_small_patch14_dinov2", "nope")
    bad = tmp_path / "w.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read"):
        load_dino_backbone(TINY_DINO, str(bad))


def test_checkpoint_file_round_trips_safely(tiny_dino, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_dino.model.state_dict().items()}, str(path))
    pt = tmp_path / "tiny.pt"
    torch.save(tiny_dino.model.state_dict(), pt)
    pixels = torch.randn(1, 3, 56, 56)
    for file in (path, pt):
        loaded = load_dino_backbone(TINY_DINO, str(file), size=56)
        torch.testing.assert_close(loaded.encode(pixels), tiny_dino.encode(pixels))


# ---- kNN, image score ----------------------------------------------------------------------------
def test_nearest_cosine_distance_matches_direct():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(37, 16, generator=g), dim=-1)
    bank = F.normalize(torch.randn(1500, 16, generator=g), dim=-1)
    got = dino.nearest_cosine_distance(q, bank)
    for i in range(q.shape[0]):
        best = max(float(q[i] @ bank[j]) for j in range(bank.shape[0]))
        assert abs(float(got[i]) - (1.0 - best)) < 1e-5


@pytest.mark.parametrize("n", [50, 100, 250, 1024])
def test_mean_top_fraction_matches_direct(n):
    d = torch.rand(3, n, generator=torch.Generator().manual_seed(n))
    got = dino.mean_top_fraction(d)
    for row in range(3):
        values = sorted(d[row].tolist(), reverse=True)
        k = int(n * 0.01)
        expected = max(values) if k == 0 else sum(values[:k]) / k
        assert abs(float(got[row]) - expected) < 1e-6


def test_patch_distances_zero_outside_foreground():
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(12, 8, generator=g) * 5
    bank = F.normalize(torch.randn(30, 8, generator=g), dim=-1)
    fg = torch.tensor([True, False] * 6)
    full = dino.patch_distances(tokens, bank)
    masked = dino.patch_distances(tokens, bank, fg)
    torch.testing.assert_close(masked[fg], full[fg])
    assert torch.all(masked[~fg] == 0)


# ---- rotation ------------------------------------------------------------------------------------
def _reflect101(v: float, n: int) -> float:
    if n == 1:
        return 0.0
    period = 2 * (n - 1)
    v = abs(v) % period
    return period - v if v > n - 1 else v


def _rotate_slow(img: np.ndarray, angle: float) -> np.ndarray:
    """Per output pixel: inverse-rotate about the centre, reflect about the edge pixels, bilinear."""
    c, h, w = img.shape
    out = np.zeros_like(img)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    t = math.radians(angle)
    for y in range(h):
        for x in range(w):
            sx = math.cos(t) * (x - cx) - math.sin(t) * (y - cy) + cx
            sy = math.sin(t) * (x - cx) + math.cos(t) * (y - cy) + cy
            sx, sy = _reflect101(sx, w), _reflect101(sy, h)
            x0, y0 = min(int(math.floor(sx)), w - 1), min(int(math.floor(sy)), h - 1)
            x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
            fx, fy = sx - x0, sy - y0
            out[:, y, x] = ((1 - fx) * (1 - fy) * img[:, y0, x0] + fx * (1 - fy) * img[:, y0, x1]
                            + (1 - fx) * fy * img[:, y1, x0] + fx * fy * img[:, y1, x1])
    return out


def test_rotation_matches_direct_and_rot90():
    img = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = dino.rotate_images(img)
    assert out.shape == (16, 3, 9, 7)
    for b in range(2):
        for a, angle in enumerate(dino.ROTATION_ANGLES):
            np.testing.assert_allclose(out[b * 8 + a].numpy(), _rotate_slow(img[b].numpy(), angle), atol=1e-9)
    square = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    rot = dino.rotate_images(square, (0, 90, 180))
    torch.testing.assert_close(rot[0], square[0])
    torch.testing.assert_close(rot[1], torch.rot90(square[0], 1, dims=(1, 2)))  # counter-clockwise as shown
    torch.testing.assert_close(rot[2], torch.rot90(square[0], 2, dims=(1, 2)))


# ---- foreground mask -----------------------------------------------------------------------------
def _morph_slow(mask: np.ndarray, op: str) -> np.ndarray:
    h, w = mask.shape
    out = np.zeros_like(mask)
    for y in range(h):
        for x in range(w):
            window = [mask[j, i] for j in range(y - 1, y + 2) for i in range(x - 1, x + 2) if 0 <= j < h and 0 <= i < w]
            out[y, x] = any(window) if op == "dilate" else all(window)
    return out


def _mask_slow(refs, grids, query, qgrid, threshold):
    x = np.concatenate(refs).astype(np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    v = vt[0]
    kept = total = 0
    for t, (h, w) in zip(refs, grids):
        s = ((t - mean) @ v).reshape(h, w)
        centre = s[int(h * 0.2):int(h * 0.8), int(w * 0.2):int(w * 0.8)]
        kept += int((centre > threshold).sum())
        total += centre.size
    if kept <= 0.35 * total:
        v = -v
    raw = ((query - mean) @ v).reshape(qgrid) > threshold
    return _morph_slow(_morph_slow(_morph_slow(raw, "dilate"), "dilate"), "erode")


def _blob(grid, offset):
    """A central disc of the grid (the 'object'), shifted down by `offset` rows."""
    h, w = grid
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - h / 2 - offset) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pca_mask_matches_direct(seed):
    rng = np.random.default_rng(seed)
    grids = [(10, 10), (10, 12)]
    # one object direction shared by the references and the query, as within one product class
    shared = rng.normal(size=16)
    shared /= np.linalg.norm(shared)
    refs = []
    for g in grids:
        blob = _blob(g, 0)
        t = rng.normal(size=(g[0] * g[1], 16))
        t[blob.reshape(-1)] += 30 * shared
        refs.append(t)
    qblob = _blob((9, 11), 1)
    query = rng.normal(size=(99, 16))
    query[qblob.reshape(-1)] += 30 * shared
    threshold = 10.0
    pca = dino.ForegroundPCA.fit([torch.from_numpy(r).float() for r in refs], grids, threshold)
    got = pca.mask(torch.from_numpy(query).float(), (9, 11)).numpy()
    expected = _mask_slow(refs, grids, query, (9, 11), threshold)
    np.testing.assert_array_equal(got, expected)
    assert got[qblob].all() and got.mean() < 0.8  # the object is found, not the whole image


def test_pca_sign_follows_the_centre_rule():
    rng = np.random.default_rng(5)
    shared = rng.normal(size=8)
    shared /= np.linalg.norm(shared)
    blob = _blob((10, 10), 0)
    t = rng.normal(size=(100, 8))
    t[blob.reshape(-1)] += 30 * shared
    pca = dino.ForegroundPCA.fit([torch.from_numpy(t).float()], [(10, 10)])
    assert float(pca.component @ torch.from_numpy(shared).float()) > 0.9  # object side is positive
    scores = pca.scores(torch.from_numpy(t).float()).view(10, 10).numpy()
    assert scores[blob].min() > scores[~blob].max()


def test_morphology_matches_direct():
    rng = np.random.default_rng(3)
    m = rng.random((7, 9)) > 0.6
    np.testing.assert_array_equal(dino.dilate(torch.from_numpy(m)).numpy(), _morph_slow(m, "dilate"))
    np.testing.assert_array_equal(dino.erode(torch.from_numpy(m)).numpy(), _morph_slow(m, "erode"))


def test_mask_auto_is_anomalydinos_category_rule():
    assert dino.masking_applies("auto", "screw") and dino.masking_applies("auto", "pcb1")
    assert not dino.masking_applies("auto", "bottle") and not dino.masking_applies("auto", "carpet")
    assert dino.masking_applies("on", "bottle") and not dino.masking_applies("off", "screw")


# ---- map ---------------------------------------------------------------------------------------
def test_distance_map_resizes_then_smooths_with_sigma_at_448():
    # a delta on a 448 grid spreads with the Gaussian's σ = 4 cells (second moment)
    d = torch.zeros(448 * 448)
    d[224 * 448 + 224] = 1.0
    m = dino.distance_map(d, (448, 448), 448).numpy().astype(np.float64)
    ys = np.arange(448)
    var = (m.sum(axis=1) * (ys - 224) ** 2).sum() / m.sum()
    assert abs(math.sqrt(var) - 4.0) < 0.05
    # at a coarser output grid σ shrinks with it: G = 56 -> 0.5 cells
    small = torch.rand(4 * 6, generator=torch.Generator().manual_seed(0))
    got = dino.distance_map(small, (4, 6), 56)
    up = F.interpolate(small.view(1, 1, 4, 6).double(), size=(56, 56), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(got.numpy(), ndimage.gaussian_filter(up, 0.5, mode="reflect", truncate=4.0), atol=1e-5)


def test_references_match_themselves(tiny_dino):
    refs = [random_image(i, (56, 56)) for i in range(2)]
    encoded = tiny_dino.encode_images(refs)
    bank = F.normalize(torch.cat([t for t, _ in encoded]), dim=-1)
    d = dino.patch_distances(encoded[0][0], bank)
    assert float(d.abs().max()) < 1e-5
    other = tiny_dino.encode_images([random_image(9, (56, 56))])[0][0]
    assert float(dino.patch_distances(other, bank).max()) > 1e-3


def test_bank_and_scores(tiny_dino):
    refs = [random_image(i, (56, 56)) for i in range(2)]
    plain = dino.build_dino_bank(tiny_dino, refs, augment="none")
    rotated = dino.build_dino_bank(tiny_dino, refs, augment="rotate")
    assert plain.patches[56].shape == (2 * 16, tiny_dino.embed_dim)
    assert rotated.patches[56].shape == (8 * 2 * 16, tiny_dino.embed_dim)
    torch.testing.assert_close(rotated.patches[56].norm(dim=-1), torch.ones(8 * 2 * 16))
    # the un-rotated copies are the plain bank's, and the PCA is fitted on them alone
    torch.testing.assert_close(rotated.patches[56][:16], plain.patches[56][:16])
    torch.testing.assert_close(dino.foreground_pca(rotated).component, dino.foreground_pca(plain).component)
    assert rotated.meta["weights_id"] == tiny_dino.weights_id and rotated.meta["n_images"] == 2
    queries = [refs[0], random_image(7, (70, 56))]
    maps, scores = dino.score_images(tiny_dino, plain, queries, None, out_grid=8)
    assert maps.shape == (2, 8, 8) and float(scores[0]) < 1e-5 < float(scores[1])
    # the score is the top-1 % mean of the unsmoothed distances
    tokens, grid = tiny_dino.encode_images(queries[1:])[0]
    d = dino.patch_distances(tokens, plain.patches[56])
    torch.testing.assert_close(scores[1], d.max())  # 20 patches: ⌊0.2⌋ = 0 -> maximum
    pca = dino.foreground_pca(plain)
    _, masked_scores = dino.score_images(tiny_dino, plain, queries[1:], pca, out_grid=8)
    torch.testing.assert_close(masked_scores[0], (d * pca.mask(tokens, grid).flatten()).max())


def test_joined_banks_equal_one_bank_and_round_trip(tiny_dino, tmp_path):
    from fade_cli.methods.memory import MemoryBank

    refs = [random_image(i, (56 + 14 * i, 56)) for i in range(3)]
    whole = dino.build_dino_bank(tiny_dino, refs, augment="rotate")
    joined = MemoryBank.concat([dino.build_dino_bank(tiny_dino, [r], augment="rotate") for r in refs])
    torch.testing.assert_close(joined.patches[56], whole.patches[56])
    for name in ("tokens", "grids"):
        torch.testing.assert_close(joined.arrays[name], whole.arrays[name])
    assert joined.meta["n_images"] == 3
    path = tmp_path / "refs.fadebank"
    whole.save(path)
    loaded = MemoryBank.load(path)
    torch.testing.assert_close(loaded.patches[56], whole.patches[56])
    assert loaded.arrays["grids"].tolist() == [[4, 4], [4, 5], [4, 6]] and loaded.arrays["grids"].dtype == torch.int64
    a, b = dino.foreground_pca(loaded), dino.foreground_pca(whole)
    torch.testing.assert_close(a.component, b.component)
    torch.testing.assert_close(a.mean, b.mean)


def test_weights_id_tells_weights_apart():
    a = load_dino_backbone(TINY_DINO, "none", seed=0, size=56)
    b = load_dino_backbone(TINY_DINO, "none", seed=1, size=56)
    assert a.weights_id != b.weights_id
    assert a.weights_id == load_dino_backbone(TINY_DINO, "none", seed=0, size=56).weights_id
