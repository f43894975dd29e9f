import pytest
import torch

from r1lab.engine import onednn
from r1lab.engine.fast_decode import Linear, PackedLinear


def test_linear_is_x_times_weight_transposed_plus_bias():
    g = torch.Generator().manual_seed(0)
    w, b, x = torch.randn(7, 5, generator=g), torch.randn(7, generator=g), torch.randn(3, 5, generator=g)
    assert torch.allclose(Linear(w, b)(x), x @ w.t() + b)
    assert torch.allclose(Linear(w)(x), x @ w.t())


@pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear")
@pytest.mark.parametrize("rows", [1, 5, 32, 33])
def test_packed_linear_matches_mm_for_any_row_count(rows):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    packed = PackedLinear(w, b, batch_hint=32)  # packed for 32 rows, used with others
    x = torch.randn(rows, 64, generator=g)
    assert torch.allclose(packed(x), x @ w.t() + b, atol=1e-4)
    assert torch.allclose(PackedLinear(w, None, 32)(x), x @ w.t(), atol=1e-4)


def test_factory_uses_plain_mm_off_fp32(tiny):
    model, _ = tiny
    model64 = type(model)(model.config).double()
    assert PackedLinear.factory(model64, 8) is Linear
    assert PackedLinear.factory(model, 8, torch.bfloat16) is Linear  # fp32 weights computing in bf16
    if onednn.available():
        assert PackedLinear.factory(model, 8) is not Linear


def test_factory_falls_back_when_the_probe_fails(tiny, monkeypatch):
    model, _ = tiny
    monkeypatch.setattr(onednn, "_AVAILABLE", False)
    assert PackedLinear.factory(model, 8) is Linear
