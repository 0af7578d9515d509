"""Conv2d + bias + LeakyReLU, the pair nn.fused runs for a Conv2d followed by a LeakyReLU
(D's convolutions), with the convolution's layout copies folded into the fused bias kernels.

The im2col convolution's GEMMs work channel-major: the forward GEMM writes (O, N*Ho*Wo), and
the backward GEMMs take dy as (O, N*Ho*Wo). Unfused, a copy turns the first into NCHW and
another turns dy back. On the kernel backends the fused bias + LeakyReLU kernels do it in the
pass they make anyway (kernels/bias.cu bias_leaky_relu_forward_v2 and
bias_leaky_relu_backward_partial_v2): two launches and two passes over the activations fewer
per layer and step. The arithmetic is the same (the same GEMMs, the same sums).

    conv2d_bias_leaky_relu_forward(x, W, b, stride, padding, negative_slope) -> y, cache
    conv2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None) -> dx, dW, db

Elsewhere (numpy, or a convolution on its expanded-outputs path) they are conv2d_forward /
conv2d_backward without a bias and bias_leaky_relu_forward / _backward, op for op.
"""
from __future__ import annotations

from cganraw import backend
from cganraw.ops import conv as C
from cganraw.ops.bias import (
    bias_leaky_relu_backward,
    bias_leaky_relu_backward_to_channel_major_cuda,
    bias_leaky_relu_forward,
    bias_leaky_relu_forward_from_channel_major_cuda,
)
from cganraw.ops.gemm import gemm


def conv2d_bias_leaky_relu_forward(x, W, b, stride, padding, negative_slope):
    """x (N, C, H, W), W (O, C, k, k), b (O,) -> leaky_relu(conv2d(x, W) + b) (N, O, Ho, Wo)."""
    if not backend.uses_kernels() or C._expand_outputs(W, stride, padding):
        y, cache = C.conv2d_forward(x, W, None, stride, padding)
        y, act_cache = bias_leaky_relu_forward(y, b, negative_slope)
        return y, ("nchw", cache, act_cache)
    n, _, h, w = x.shape
    o, c, k, _ = W.shape
    ho, wo = C.conv_output_size(h, k, stride, padding), C.conv_output_size(w, k, stride, padding)
    cols = C.im2col(x, k, stride, padding)                      # (C*k*k, N*Ho*Wo)
    y2 = gemm(W.reshape(o, c * k * k), cols)                    # (O, N*Ho*Wo)
    y, act_cache = bias_leaky_relu_forward_from_channel_major_cuda(y2, n, ho, wo, b, negative_slope)
    return y, ("channel_major", ("im2col", (cols, x.shape, W, stride, padding, False)), act_cache)


def conv2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None):
    """dy (gradient of the activated output) -> dx, dW, db (dW None with dW_out, db None
    with db_out or without need_dW: added into them, as conv2d_backward does)."""
    kind, conv_cache, act_cache = cache
    if kind == "nchw":
        dpre, db = bias_leaky_relu_backward(dy, act_cache, need_db=need_dW, out=db_out)
        dx, dW, _ = C.conv2d_backward(dpre, conv_cache, need_dW=need_dW, dW_out=dW_out)
        return dx, dW, db
    dpre2, db = bias_leaky_relu_backward_to_channel_major_cuda(dy, act_cache, need_db=need_dW, out=db_out)
    dx, dW, _ = C.conv2d_backward(None, conv_cache, need_dW=need_dW, dW_out=dW_out, dy_channel_major=dpre2)
    return dx, dW, db
