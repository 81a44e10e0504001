"""weights_fingerprint: same weights -> same string; any change of a name, shape, dtype or value -> another."""

from __future__ import annotations

import copy
import hashlib

import open_clip
import pytest
import torch

from conftest import TINY
from fade_cli.model import fingerprint as fp
from fade_cli.model.fingerprint import weights_fingerprint


def small_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3))


def reference_fingerprint(module: torch.nn.Module) -> str:
    """The definition, written out: per tensor sha256(name, shape, dtype, bytes), then sha256 of those in order."""
    items = [(n, t) for n, t in module.named_parameters()] + [("buffer:" + n, t) for n, t in module.named_buffers()]
    outer = hashlib.sha256(fp.FINGERPRINT_VERSION.encode())
    outer.update(len(items).to_bytes(8, "little"))
    for name, t in items:
        inner = hashlib.sha256(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        inner.update(bytes(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).tolist()))
        outer.update(inner.digest())
    return outer.hexdigest()


def test_matches_the_written_out_definition():
    net = small_net()
    assert weights_fingerprint(net, cache=False) == reference_fingerprint(net)
    assert len(weights_fingerprint(net)) == 64


def test_same_weights_same_fingerprint_in_separate_objects():
    assert weights_fingerprint(small_net(0)) == weights_fingerprint(small_net(0))
    net = small_net(0)
    assert weights_fingerprint(copy.deepcopy(net)) == weights_fingerprint(net)
    assert weights_fingerprint(small_net(0)) != weights_fingerprint(small_net(1))


def test_one_changed_value_changes_it_and_the_cache_notices():
    net = small_net()
    before = weights_fingerprint(net)
    with torch.no_grad():
        net[2].weight[1, 2] += 1e-6  # in place: bumps the tensor's version counter
    after = weights_fingerprint(net)
    assert after != before
    assert after == weights_fingerprint(net, cache=False)
    with torch.no_grad():
        net[2].weight[1, 2] -= 1e-6
        net[2].weight.copy_(small_net()[2].weight)  # exact original values again
    assert weights_fingerprint(net) == before


def test_replaced_tensor_is_seen_by_the_cache():
    net = small_net()
    before = weights_fingerprint(net)
    net[0].bias = torch.nn.Parameter(net[0].bias.detach() + 1)
    assert weights_fingerprint(net) != before


def test_write_through_data_needs_cache_off():
    net = small_net()
    before = weights_fingerprint(net)
    net[0].bias.data.add_(1)  # bypasses the version counter (documented)
    assert weights_fingerprint(net, cache=False) != before


def test_buffers_names_shapes_and_dtypes_count():
    base = weights_fingerprint(small_net(), cache=False)
    net = small_net()
    net[1].running_mean += 0.5  # a buffer, not a parameter
    assert weights_fingerprint(net, cache=False) != base
    # same values under other names
    a = torch.nn.Module()
    a.register_parameter("w", torch.nn.Parameter(torch.ones(6)))
    b = torch.nn.Module()
    b.register_parameter("v", torch.nn.Parameter(torch.ones(6)))
    assert weights_fingerprint(a) != weights_fingerprint(b)
    # same bytes, other shape
    c = torch.nn.Module()
    c.register_parameter("w", torch.nn.Parameter(torch.ones(2, 3)))
    assert weights_fingerprint(a) != weights_fingerprint(c)
    # other dtype (a half copy is other weights); bf16 and bool hash without numpy support for them
    assert weights_fingerprint(small_net().to(torch.bfloat16)) != base
    d = torch.nn.Module()
    d.register_buffer("flag", torch.tensor([True, False]))
    e = torch.nn.Module()
    e.register_buffer("flag", torch.tensor([True, True]))
    assert weights_fingerprint(d) != weights_fingerprint(e)


def test_independent_of_memory_layout_and_thread_count(monkeypatch):
    a = torch.nn.Module()
    a.register_parameter("w", torch.nn.Parameter(torch.arange(12.0).reshape(3, 4)))
    b = torch.nn.Module()
    b.register_parameter("w", torch.nn.Parameter(torch.arange(12.0).reshape(3, 4).T.contiguous().T))  # column-major
    assert not b.w.is_contiguous() and torch.equal(a.w, b.w)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    net = small_net()
    many = weights_fingerprint(net, cache=False)
    monkeypatch.setattr(fp.os, "cpu_count", lambda: 1)
    assert weights_fingerprint(net, cache=False) == many


def test_meta_device_is_refused():
    with torch.device("meta"):
        net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="meta"):
        weights_fingerprint(net)


def test_inference_mode_tensors_are_hashed_uncached():
    with torch.inference_mode():
        net = small_net()
        got = weights_fingerprint(net)
    assert got == reference_fingerprint(net)


def test_tiny_clip_same_seed_same_fingerprint():
    torch.manual_seed(3)
    m1 = open_clip.create_model(TINY, pretrained=None)
    torch.manual_seed(3)
    m2 = open_clip.create_model(TINY, pretrained=None)
    torch.manual_seed(4)
    m3 = open_clip.create_model(TINY, pretrained=None)
    assert weights_fingerprint(m1) == weights_fingerprint(m2) != weights_fingerprint(m3)
    # a change deep inside the vision tower (not the first or last layers)
    with torch.no_grad():
        m2.visual.transformer.resblocks[3].mlp.c_fc.bias[0] += 1
    assert weights_fingerprint(m2) != weights_fingerprint(m1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_on_cuda_as_on_cpu():
    net = small_net()
    cpu = weights_fingerprint(net, cache=False)
    assert weights_fingerprint(copy.deepcopy(net).cuda()) == cpu
