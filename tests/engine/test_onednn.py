import pytest
import torch

from r1lab.engine.onednn import available, onednn_linears
from r1lab.packing import pack_samples, token_logprobs

pytestmark = pytest.mark.skipif(not available(), reason="this torch build has no oneDNN linear")


def grads(model, fn):
    model.zero_grad()
    fn().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_onednn_linears_give_the_same_loss_and_gradients(tiny):
    model, tok = tiny
    model.train()
    rows = [[(tok("[user]hi\n", add_special_tokens=False)["input_ids"], tok("hello", add_special_tokens=False)["input_ids"]),
             (tok("[user]2+2\n", add_special_tokens=False)["input_ids"], tok("4", add_special_tokens=False)["input_ids"])]]
    packed = pack_samples(rows, tok.pad_token_id)
    loss = lambda: -token_logprobs(model, packed).sum()  # noqa: E731
    plain = grads(model, loss)
    with onednn_linears(model):
        fast = grads(model, loss)
    assert plain.keys() == fast.keys() and len(plain) > 5
    for name in plain:
        assert torch.allclose(plain[name], fast[name], atol=1e-4, rtol=1e-4), name
    assert all("forward" not in m.__dict__ for m in model.modules())  # restored


def test_bias_and_leading_dims():
    layer = torch.nn.Linear(6, 5)
    x = torch.randn(2, 3, 6, requires_grad=True)
    ref = layer(x)
    ref.sum().backward()
    want = (x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone())
    x.grad = layer.weight.grad = layer.bias.grad = None
    with onednn_linears(layer):
        out = layer(x)
        out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    for got, expected in zip((x.grad, layer.weight.grad, layer.bias.grad), want):
        assert torch.allclose(got, expected, atol=1e-5)
