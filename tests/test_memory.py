"""Memory bank: k-th nearest-neighbour distances, save/load without pickle, reference choice."""

import numpy as np
import pytest
import torch

from fade_cli.errors import MemoryBankError
from fade_cli.data.datasets import sample_reference_indices
from fade_cli.methods.memory import MemoryBank, knn_distance, self_knn_distance

from reference import kth_nn_distance, l2n


@pytest.mark.parametrize("k", [1, 2, 3])
def test_knn_distance_matches_brute_force(k):
    torch.manual_seed(k)
    q, bank = l2n(torch.randn(37, 8, dtype=torch.float64)), l2n(torch.randn(23, 8, dtype=torch.float64))
    ours = knn_distance(q, bank, k, chunk=5)  # several chunks
    np.testing.assert_allclose(ours.numpy(), kth_nn_distance(q.numpy(), bank.numpy(), k), atol=1e-12)


def test_self_bank_uses_second_neighbour():
    torch.manual_seed(0)
    p = l2n(torch.randn(2, 30, 8, dtype=torch.float64))
    ours = self_knn_distance(p, k=2)
    for b in range(2):
        np.testing.assert_allclose(ours[b].numpy(), kth_nn_distance(p[b].numpy(), p[b].numpy(), 2), atol=1e-12)
    assert (ours > 1e-6).all()  # not the patch itself


def test_bank_save_load_roundtrip(tmp_path):
    bank = MemoryBank({32: l2n(torch.randn(10, 4)), 64: l2n(torch.randn(40, 4))}, {"model": "m", "weights_id": "w", "feature": "clip"})
    path = tmp_path / "b.fadebank"
    bank.save(path)
    back = MemoryBank.load(path)
    assert sorted(back.patches) == [32, 64] and back.meta["model"] == "m" and back.meta["format"] == 1
    torch.testing.assert_close(back.patches[64], bank.patches[64])
    assert not list(tmp_path.glob(".*tmp"))


def test_bank_load_refuses_pickles_and_other_formats(tmp_path):
    evil = tmp_path / "evil.npz"
    np.savez(evil, meta_json=np.array([{"a": 1}], dtype=object))
    with pytest.raises(MemoryBankError, match="not a fade reference bank"):
        MemoryBank.load(evil)
    newer = tmp_path / "newer.npz"
    np.savez(newer, meta_json=np.array('{"format": 99}'))
    with pytest.raises(MemoryBankError, match="format 99"):
        MemoryBank.load(newer)


def test_reference_choice_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = sample_reference_indices(20, 4, seed=0)
    assert torch.equal(before, torch.get_rng_state())
    assert a == sample_reference_indices(20, 4, seed=0)
    assert a != sample_reference_indices(20, 4, seed=1)
    assert len(set(a)) == 4 and all(0 <= i < 20 for i in a)
    # the official recipe, literally: seed, then a shuffling DataLoader's first k items
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(list(range(20)), batch_size=1, shuffle=True)
    assert a == [int(x) for x, _ in zip(loader, range(4))]
