"""Conv2d or ConvTranspose2d + bias + LeakyReLU, the pairs nn.fused runs for a convolution
followed by a LeakyReLU (D's convolutions, the plain G's upsampling), with the convolution's
layout copies folded into the passes the bias and the activation make anyway.

The im2col convolution's GEMMs work channel-major on the kernel backends: the forward GEMM
writes (O, N*Ho*Wo), and the backward GEMMs take dy as (O, N*Ho*Wo). Unfused, a copy turns
the first into NCHW and another turns dy back; the fused bias + LeakyReLU kernels do it in
their pass (kernels/bias.cu bias_leaky_relu_forward_v2 and bias_leaky_relu_backward_partial_v2).
On the host (numpy with Numba) the columns are batch-minor, (O, Ho*Wo*N) (ops.conv), and the
fused pass turns that layout (the layout turns of ops.conv, with the bias and the slope) for Conv2d;
for ConvTranspose2d col2im adds the bias and applies the slope as it writes the output, and
im2col reads dy through the activation's gradient (summing the bias's) as it builds dy's
columns. Two passes over the activations fewer per layer and step, either way. The arithmetic
is the same (the same GEMMs, the same sums, in the same order): the unfused layers' bits.

    conv2d_bias_leaky_relu_forward(x, W, b, stride, padding, negative_slope) -> y, cache
    conv2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None, need_dx=True) -> dx, dW, db
    conv_transpose2d_bias_leaky_relu_forward(x, W, b, stride, padding, output_padding, negative_slope)
    conv_transpose2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None, need_dx=True)

Elsewhere (numpy without Numba, a convolution on its expanded-outputs or phase-split path)
they are the convolution without a bias and bias_leaky_relu_forward / _backward, op for op.
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import conv as C
from cganraw.ops.bias import (
    _accumulate,
    _check_slope,
    bias_leaky_relu_backward,
    bias_leaky_relu_backward_to_channel_major_cuda,
    bias_leaky_relu_forward,
    bias_leaky_relu_forward_from_channel_major_cuda,
)
from cganraw.ops.gemm import gemm


def conv2d_bias_leaky_relu_forward(x, W, b, stride, padding, negative_slope):
    """x (N, C, H, W), W (O, C, k, k), b (O,) -> leaky_relu(conv2d(x, W) + b) (N, O, Ho, Wo)."""
    host_columns = C._batch_minor(x, W) and b.dtype == x.dtype == W.dtype
    if C._expand_outputs(W, stride, padding) or not (backend.uses_kernels() or host_columns):
        y, cache = C.conv2d_forward(x, W, None, stride, padding)
        y, act_cache = bias_leaky_relu_forward(y, b, negative_slope)
        return y, ("nchw", cache, act_cache)
    n, _, h, w = x.shape
    o, c, k, _ = W.shape
    ho, wo = C.conv_output_size(h, k, stride, padding), C.conv_output_size(w, k, stride, padding)
    if host_columns:
        _check_slope("conv2d_bias_leaky_relu_forward", negative_slope)
        cols = C.im2col_batch_minor(x, k, stride, padding)       # (C*k*k, Ho*Wo*N)
        y2 = gemm(W.reshape(o, c * k * k), cols)                 # (O, Ho*Wo*N)
        y = C._from_batch_minor(y2, n, ho, wo, bias=b, negative_slope=negative_slope)
        return y, ("batch_minor", ("batch_minor", C.batch_minor_cache(cols, x, W, stride, padding, False)),
                   (y, negative_slope))
    cols = C.im2col(x, k, stride, padding)                      # (C*k*k, N*Ho*Wo)
    y2 = gemm(W.reshape(o, c * k * k), cols)                    # (O, N*Ho*Wo)
    y, act_cache = bias_leaky_relu_forward_from_channel_major_cuda(y2, n, ho, wo, b, negative_slope)
    return y, ("channel_major", ("im2col", (cols, x.shape, W, stride, padding, False)), act_cache)


def conv2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None, need_dx=True):
    """dy (gradient of the activated output) -> dx, dW, db (dW None with dW_out, db None
    with db_out or without need_dW: added into them, as conv2d_backward does; dx None without
    need_dx: its GEMM and col2im are skipped)."""
    kind, conv_cache, act_cache = cache
    if kind == "nchw":
        dpre, db = bias_leaky_relu_backward(dy, act_cache, need_db=need_dW, out=db_out)
        dx, dW, _ = C.conv2d_backward(dpre, conv_cache, need_dx=need_dx, need_dW=need_dW, dW_out=dW_out)
        return dx, dW, db
    if kind == "batch_minor":
        W = conv_cache[1][2]                                     # (O, C, k, k)
        db = np.empty(W.shape[0]) if need_dW else None
        dpre2 = C._to_batch_minor(dy, channel_sums=db, leaky=act_cache)     # (O, Ho*Wo*N)
        dx, dW, _ = C._batch_minor_backward(None, conv_cache[1], need_dx, need_dW, dW_out, None, dy2=dpre2)
        return dx, dW, _accumulate(db_out, None if db is None else db.astype(dy.dtype))
    dpre2, db = bias_leaky_relu_backward_to_channel_major_cuda(dy, act_cache, need_db=need_dW, out=db_out)
    dx, dW, _ = C.conv2d_backward(None, conv_cache, need_dx=need_dx, need_dW=need_dW, dW_out=dW_out,
                                  dy_channel_major=dpre2)
    return dx, dW, db


def conv_transpose2d_bias_leaky_relu_forward(x, W, b, stride, padding, output_padding, negative_slope):
    """x (N, Cin, H, W), W (Cin, Cout, k, k), b (Cout,) -> leaky_relu(conv_transpose2d(x, W) + b)."""
    k = W.shape[2]
    if not (C._batch_minor(x, W) and b.dtype == x.dtype == W.dtype) or \
            C.uses_phase_split(k, stride, padding, output_padding):
        y, cache = C.conv_transpose2d_forward(x, W, None, stride, padding, output_padding)
        y, act_cache = bias_leaky_relu_forward(y, b, negative_slope)
        return y, ("nchw", cache, act_cache)
    _check_slope("conv_transpose2d_bias_leaky_relu_forward", negative_slope)
    n, cin, h, w = x.shape
    cout = W.shape[1]
    ho = C.conv_transpose_output_size(h, k, stride, padding, output_padding)
    wo = C.conv_transpose_output_size(w, k, stride, padding, output_padding)
    x2 = C._to_batch_minor(x)                                    # (Cin, H*W*N)
    cols = gemm(W.reshape(cin, cout * k * k), x2, trans_a=True)  # (Cout*k*k, H*W*N)
    y = C.col2im_batch_minor(cols, (n, cout, ho, wo), k, stride, padding, out_hw=(h, w), bias=b,
                             negative_slope=negative_slope)
    return y, ("batch_minor", ("batch_minor", (x2, x.shape, W, stride, padding, False)), (y, negative_slope))


def conv_transpose2d_bias_leaky_relu_backward(dy, cache, need_dW=True, dW_out=None, db_out=None, need_dx=True):
    """dy (gradient of the activated output) -> dx, dW, db, as conv2d_bias_leaky_relu_backward."""
    kind, conv_cache, act_cache = cache
    if kind == "nchw":
        dpre, db = bias_leaky_relu_backward(dy, act_cache, need_db=need_dW, out=db_out)
        dx, dW, _ = C.conv_transpose2d_backward(dpre, conv_cache, need_dx=need_dx, need_dW=need_dW, dW_out=dW_out)
        return dx, dW, db
    y, slope = act_cache
    _, (_, x_shape, W, stride, padding, _) = conv_cache
    h, w = x_shape[2:]
    k = W.shape[2]
    db = np.empty(W.shape[1] if need_dW else 0, np.float64)
    dcols = C.im2col_batch_minor(dy, k, stride, padding, out_hw=(h, w), leaky=(y, slope),
                                 channel_sums=db if need_dW else None)
    dx, dW = C.conv_transpose2d_columns_backward(dcols, conv_cache, need_dx, need_dW, dW_out)
    return dx, dW, _accumulate(db_out, db.astype(dy.dtype) if need_dW else None)
