"""fp32 linear layers through oneDNN on the CPU, for training (forward and backward).

PyTorch's CPU matrix product is MKL's, and on AMD processors MKL runs a generic code path: measured on a
2-core AMD EPYC (AVX-512), a 2048^3 fp32 product takes 177-199 GFLOP/s in MKL and 392-433 GFLOP/s in oneDNN,
and the training shapes of a 135M model (1024 x 576 x 960 ...) 152-189 against 371-399. oneDNN ships inside
PyTorch; :func:`onednn_linears` routes every ``nn.Linear`` of a model through it for the duration of a
``with`` block (LoRA's base and adapter layers included), with a hand-written backward of the same products:

    y = x W^T + b        dx = dy W        dW = dy^T x        db = sum(dy)

Outside CPU fp32, or where the op is missing or disagrees with ``torch.mm`` on a probe, nothing is changed.
"""

from __future__ import annotations

import contextlib

import torch

_AVAILABLE: bool | None = None


def available() -> bool:
    """Probe the private oneDNN ops once per process: present in this build, and the same numbers as ``mm``
    for a plain weight and for one packed in oneDNN's layout (as the decoder uses)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            g = torch.Generator().manual_seed(0)
            w, b, x = torch.randn(24, 40, generator=g), torch.randn(24, generator=g), torch.randn(5, 40, generator=g)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, 8)
            want = x @ w.t() + b
            _AVAILABLE = bool(torch.allclose(torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], ""), want,
                                             atol=1e-4) and torch.allclose(_mm(x, w) + b, want, atol=1e-4))
        except (RuntimeError, AttributeError, NotImplementedError):
            _AVAILABLE = False
    return _AVAILABLE


def _mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """``a @ b_t.T`` by oneDNN (``b_t``: (out, in), like a linear weight)."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = x.reshape(-1, x.shape[-1]).contiguous()  # (N, in)
        out = _mm(x2, weight.contiguous())  # (N, out)
        if bias is not None:
            out = out + bias
        ctx.save_for_backward(x2, weight)
        ctx.has_bias = bias is not None
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()  # (N, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _mm(g, weight.t().contiguous()).view(*grad.shape[:-1], weight.shape[1])  # dy W
        if ctx.needs_input_grad[1]:
            grad_w = _mm(g.t().contiguous(), x2.t().contiguous())  # dy^T x: (out, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b


def _forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return OneDNNLinear.apply(x, module.weight, module.bias)


def applies(model) -> bool:
    """oneDNN linears for this model: CPU, fp32, and the ops present and correct here; not with activation
    checkpointing, whose recomputation in the backward pass runs outside the ``with`` block (the plain linears)
    and must save what the forward saved."""
    param = next(model.parameters())
    recomputes = getattr(model, "is_activation_checkpointing", None)
    recomputes = getattr(model, "is_gradient_checkpointing", False) if recomputes is None else recomputes
    return param.device.type == "cpu" and param.dtype == torch.float32 and not recomputes and available()


@contextlib.contextmanager
def onednn_linears(model):
    """Within the block, the model's ``nn.Linear`` layers multiply through oneDNN (CPU fp32 only)."""
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear and "forward" not in m.__dict__]
    patched = linears if applies(model) else []
    for m in patched:
        m.forward = _forward.__get__(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward
