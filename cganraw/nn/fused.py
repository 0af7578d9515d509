"""Layer + LeakyReLU pairs run as one fused op inside nn.Sequential, with unchanged modules
and state dicts.

A Sequential whose child i is one of the layers below and child i + 1 a LeakyReLU with
negative_slope >= 0 runs the pair through a fused op (`Sequential(..., fuse=False)` or
`seq.fuse = False` turns it off):

    pattern                                      ops (forward / backward)
    BatchNorm1d/2d + LeakyReLU                   batchnorm_leaky_relu_forward / _backward
    BatchNorm1d/2d + ReLU                        batchnorm_relu_forward / _backward
      (numpy backend with Numba only: its kernels' one pass each way)
    InstanceNorm2d + LeakyReLU                   instancenorm_leaky_relu_forward / _backward
      (affine, input statistics; kernel backends only: one launch each way)
    Linear + LeakyReLU                           gemm + bias_leaky_relu_forward /
                                                 bias_leaky_relu_backward (the bias and the
                                                 activation in one pass each way)
    Conv2d + LeakyReLU                           ops.conv_leaky: the bias and the activation
    ConvTranspose2d + LeakyReLU                  in the pass that turns the GEMM's layout
                                                 (kernel backends; Conv2d on the host too)
                                                 or in col2im / im2col (ConvTranspose2d on
                                                 the host), else one pass each way
    Linear/Conv2d/ConvTranspose2d + Tanh         the GEMMs + bias_tanh_forward / bias_tanh_backward
      (with a bias; kernel backends only: one launch each way, G's last Conv2d)
    InstanceNorm2d + FiLM + LeakyReLU            instancenorm_film_leaky_relu_forward / _backward
      (affine, input statistics; numpy backend   (ops.instancenorm_film: one pass-pair each way;
      with Numba only; cgan-conv's G blocks)     FiLM's projection runs around it, as FiLM's own)

A spectrally normalised layer (nn.utils.spectral_norm) fuses too: the pair runs the spectral
norm's own steps around the fused op (prepare: W / sigma before the forward; finish: the raw
weight's gradient after the backward), exactly as its wrapped forward and backward do.

The modules stay where they are, so parameter names, checkpoints and PyTorch ports are
the same as unfused. On the numpy backend the fused ops repeat the unfused arithmetic
operation by operation: outputs and gradients are bit-identical (so a resumed run stays
bit-exact); on the kernel backends they save one pass over the activations each way.
The pair's forward cache lives in the Sequential (the pair's own modules keep none, so
calling their backward directly is the usual "backward without a forward" error).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.nn._check import accumulates_in_place, check_float_input, check_same_shape
from cganraw.nn.activation import LeakyReLU, ReLU, Tanh
from cganraw.nn.batchnorm import BatchNorm1d, BatchNorm2d, _BatchNorm
from cganraw.nn.conv import Conv2d, ConvTranspose2d
from cganraw.nn.film import FiLM
from cganraw.nn.instancenorm import InstanceNorm2d
from cganraw.nn.linear import Linear
from cganraw.nn.utils import only_spectral_norm_wraps, spectral_norm_hooks
from cganraw.ops import _cpu
from cganraw.ops.batchnorm import (
    batchnorm_leaky_relu_backward,
    batchnorm_leaky_relu_forward,
    batchnorm_relu_backward,
    batchnorm_relu_forward,
)
from cganraw.ops.bias import bias_leaky_relu_backward, bias_leaky_relu_forward, bias_tanh_backward, bias_tanh_forward
from cganraw.ops.conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_reads_batch_minor,
    conv_output_size,
    conv_transpose2d_backward,
    conv_transpose2d_forward,
)
from cganraw.ops.conv_leaky import (
    conv2d_bias_leaky_relu_backward,
    conv2d_bias_leaky_relu_forward,
    conv_transpose2d_bias_leaky_relu_backward,
    conv_transpose2d_bias_leaky_relu_forward,
)
from cganraw.ops.instancenorm import instancenorm_leaky_relu_backward, instancenorm_leaky_relu_forward
from cganraw.ops.instancenorm_film import instancenorm_film_leaky_relu_backward, instancenorm_film_leaky_relu_forward
from cganraw.ops.linear import linear_backward, linear_forward


def _plain(module):
    # no instance-level forward/backward (a test's spy, say): the fused op would skip it
    return "forward" not in vars(module) and "backward" not in vars(module)


def fusible(layer, act):
    """True when (layer, act) has a fused op: a supported layer (with a bias, for the
    GEMM layers) followed by a LeakyReLU whose slope is >= 0, neither wrapped by
    instance-level forward/backward other than spectral norm's (on the layer); or such a GEMM
    layer with a bias followed by Tanh, on the kernel backends (the numpy backend keeps the
    two layers: its numbers stay those of every earlier run); or a BatchNorm1d/2d followed by a
    ReLU, on the numpy backend with Numba (the kernel backends keep those two layers)."""
    if type(act) is ReLU:
        return (type(layer) in (BatchNorm1d, BatchNorm2d) and _plain(layer) and _plain(act) and not backend.uses_kernels()
                and _cpu.enabled())
    if not (_plain(layer) or (type(layer) in (Linear, Conv2d, ConvTranspose2d) and only_spectral_norm_wraps(layer))):
        return False
    if type(act) is Tanh:
        return (_plain(act) and type(layer) in (Linear, Conv2d, ConvTranspose2d) and layer.bias is not None
                and backend.uses_kernels() and layer.weight.dtype == np.float32)
    if type(act) is not LeakyReLU or not act.negative_slope >= 0 or not _plain(act):
        return False
    if isinstance(layer, _BatchNorm):
        return True
    if type(layer) is InstanceNorm2d:
        # with its own statistics always (no running ones), affine, float32, on a GPU (the
        # numpy backend keeps the two layers: its numbers stay those of every earlier run)
        return (_plain(layer) and layer.affine and not layer.track_running_stats and backend.uses_kernels()
                and layer.weight.dtype == np.float32)
    return type(layer) in (Linear, Conv2d, ConvTranspose2d) and layer.bias is not None


def fusible_film_block(norm, film, act):
    """True when (norm, film, act) is an InstanceNorm2d (affine, its own statistics always),
    a FiLM and a LeakyReLU, none wrapped, on the numpy backend with Numba: the fused op gives
    the three layers' bits there (the kernel backends keep the three layers)."""
    return (type(norm) is InstanceNorm2d and type(film) is FiLM and type(act) is LeakyReLU
            and _plain(norm) and _plain(film) and _plain(act) and norm.affine and not norm.track_running_stats
            and not backend.uses_kernels() and _cpu.enabled())


def plan(layers, fuse=True):
    """The steps a Sequential runs: (index,) for a single layer, (index, index + 1) for a
    fused pair, (index, index + 1, index + 2) for a fused InstanceNorm2d + FiLM + LeakyReLU,
    in order."""
    steps, i = [], 0
    while i < len(layers):
        if fuse and i + 2 < len(layers) and fusible_film_block(*layers[i:i + 3]):
            steps.append((i, i + 1, i + 2))
            i += 3
        elif fuse and i + 1 < len(layers) and fusible(layers[i], layers[i + 1]):
            steps.append((i, i + 1))
            i += 2
        else:
            steps.append((i,))
            i += 1
    return steps


def takes_need_dx(layer):
    """Whether layer.backward takes need_dx (the GEMM layers: Linear, Conv2d, ConvTranspose2d)."""
    return type(layer) in (Linear, Conv2d, ConvTranspose2d)


def hands_batch_minor(layers, step, consumer):
    """True when `step`'s forward may hand its output on as a batch-minor view
    (ops.conv.batch_minor_handoff): on the numpy backend with Numba, it is a Conv2d, alone or
    fused with its LeakyReLU, and `consumer`, the step after it, starts with a Conv2d that
    takes the host column path (not the expanded-outputs one), whose im2col reads that layout
    in place and whose backward hands the gradient back in it."""
    if backend.uses_kernels() or not _cpu.enabled() or consumer is None:
        return False
    first, nxt = layers[step[0]], layers[consumer[0]]
    return (type(first) is Conv2d and type(nxt) is Conv2d and len(consumer) <= 2
            and conv2d_reads_batch_minor(nxt.weight.data, nxt.stride, nxt.padding))


def hands_channel_major(layers, step, consumer):
    """True when `step`'s backward may hand its input gradient on as a channel-major view
    (ops.conv.channel_major_handoff): it is a convolution, alone or fused with its
    activation, and `consumer`, the step before it, an InstanceNorm2d + LeakyReLU pair or an
    InstanceNorm2d + FiLM + LeakyReLU step, whose kernel reads that layout in place (no layout
    copy between them)."""
    return (consumer is not None and len(consumer) >= 2 and type(layers[consumer[0]]) is InstanceNorm2d
            and type(layers[step[0]]) in (Conv2d, ConvTranspose2d))


# ---------------------------------------------------------------- forward / backward of a step

def step_forward(modules, x):
    """The fused step of `modules` (a pair, or an InstanceNorm2d + FiLM + LeakyReLU) on x:
    (y, cache for step_backward)."""
    if len(modules) == 3:
        return _film_block_forward(*modules, x)
    return forward(*modules, x)


def step_backward(modules, dy, cache, need_dx=True):
    """dy (gradient of the step's output) -> dx; accumulates the modules' gradients. Without
    need_dx a GEMM layer's step skips its input gradient's GEMM and returns None (the other
    steps compute theirs anyway)."""
    if len(modules) == 3:
        return _film_block_backward(*modules, dy, cache)
    return backward(*modules, dy, cache, need_dx)


def _check_instancenorm_input(norm, x):
    # InstanceNorm2d.forward's checks on input statistics, for the fused steps that start with it
    check_float_input(norm, x, 4, channels=norm.num_features, dtype=norm.weight.dtype)
    if x.shape[2] * x.shape[3] <= 1:
        raise ValueError(f"InstanceNorm2d: expected more than 1 spatial element when using the input's "
                         f"statistics, got input of shape {tuple(x.shape)}")


def _film_block_forward(norm, film, act, x):
    # as InstanceNorm2d.forward, FiLM.forward and LeakyReLU.forward in turn
    _check_instancenorm_input(norm, x)
    film_gamma, film_beta = film.modulation(x)
    y, cache = instancenorm_film_leaky_relu_forward(x, norm.weight.data, norm.bias.data, film_gamma, film_beta,
                                                    norm.eps, act.negative_slope)
    return y, (cache, y.shape)


def _film_block_backward(norm, film, act, dy, cache):
    cache, shape = cache
    check_same_shape(norm, dy, shape)
    dx, dgamma, dbeta, dfilm = instancenorm_film_leaky_relu_backward(dy, cache)
    norm.weight.accumulate(dgamma)
    norm.bias.accumulate(dbeta)
    film.modulation_backward(dfilm)
    return dx


def forward(layer, act, x):
    """act(layer(x)) through the fused op: (y, cache for `backward`)."""
    if isinstance(layer, _BatchNorm):     # slope None: ReLU
        return _batchnorm_forward(layer, x, None if type(act) is ReLU else act.negative_slope)
    slope = None if type(act) is Tanh else act.negative_slope        # None: tanh
    if type(layer) is InstanceNorm2d:
        _check_instancenorm_input(layer, x)
        # y channel-major (an NCHW view): the convolution after it takes that layout for free
        y, cache, _, _ = instancenorm_leaky_relu_forward(x, layer.weight.data, layer.bias.data, layer.eps, slope,
                                                         channel_major=True)
        return y, ("instance", cache, y.shape)
    hooks = spectral_norm_hooks(layer)
    sn_caches = hooks.prepare() if hooks is not None else None
    y, cache = _gemm_forward(layer, x, slope)
    return y, cache + (sn_caches,)


def _gemm_forward(layer, x, slope):
    # slope None: the activation is tanh
    if type(layer) is Linear:
        check_float_input(layer, x, 2, dtype=layer.weight.dtype)
        if x.shape[1] != layer.in_features:
            raise ValueError(f"Linear: expected input of shape (N, {layer.in_features}), got shape {tuple(x.shape)}")
        y, cache = linear_forward(x, layer.weight.data, None)
    elif type(layer) is Conv2d:
        layer._check(x)
        h, w = x.shape[2:]
        if min(conv_output_size(h, layer.kernel_size, layer.stride, layer.padding),
               conv_output_size(w, layer.kernel_size, layer.stride, layer.padding)) <= 0:
            raise ValueError(f"Conv2d: input of spatial size {h}x{w} is smaller than the kernel "
                             f"({layer.kernel_size}) with padding {layer.padding}")
        if slope is None:
            y, cache = conv2d_forward(x, layer.weight.data, None, layer.stride, layer.padding)
            y, act_cache = bias_tanh_forward(y, layer.bias.data)
            return y, (cache, act_cache, y.shape)
        # the bias and activation in the kernels that also turn the GEMM's layout
        y, cache = conv2d_bias_leaky_relu_forward(x, layer.weight.data, layer.bias.data, layer.stride,
                                                  layer.padding, slope)
        return y, (cache, None, y.shape)
    else:
        layer._check(x)
        if slope is not None:
            # on the host, the bias and activation in the column passes (ops.conv_leaky)
            y, cache = conv_transpose2d_bias_leaky_relu_forward(x, layer.weight.data, layer.bias.data, layer.stride,
                                                                layer.padding, layer.output_padding, slope)
            _check_transposed_output(y)
            return y, (cache, None, y.shape)
        y, cache = conv_transpose2d_forward(x, layer.weight.data, None, layer.stride, layer.padding,
                                            layer.output_padding)
        _check_transposed_output(y)
    if slope is None:
        y, act_cache = bias_tanh_forward(y, layer.bias.data)
    else:
        y, act_cache = bias_leaky_relu_forward(y, layer.bias.data, slope)
    return y, (cache, act_cache, y.shape)


def _check_transposed_output(y):
    if min(y.shape[2:]) <= 0:
        raise ValueError(f"ConvTranspose2d: output size {tuple(y.shape[2:])} is not positive")


def backward(layer, act, dy, cache, need_dx=True):
    """dy (gradient of the activated output) -> dx; accumulates the layer's gradients. A GEMM
    layer without need_dx skips dx's GEMM and returns None."""
    if isinstance(layer, _BatchNorm):
        return _batchnorm_backward(layer, dy, cache)
    if type(layer) is InstanceNorm2d:
        _, in_cache, shape = cache
        check_same_shape(layer, dy, shape)
        into = accumulates_in_place(layer.weight, dy) and accumulates_in_place(layer.bias, dy)
        dx, dgamma, dbeta = instancenorm_leaky_relu_backward(dy, in_cache, out=(layer.weight.grad, layer.bias.grad)
                                                             if into else None)
        layer.weight.accumulate(dgamma)
        layer.bias.accumulate(dbeta)
        return dx
    layer_cache, act_cache, shape, sn_caches = cache
    check_same_shape(layer, dy, shape)
    need_dW = layer.weight.requires_grad
    db_out = layer.bias.grad if accumulates_in_place(layer.bias, dy) else None
    # the weight GEMM adds into .grad (beta = 1) where it can, as the unfused layers do
    dW_out = layer.weight.grad if accumulates_in_place(layer.weight, dy) else None
    if type(act) is Tanh:
        dpre, db = bias_tanh_backward(dy, act_cache, need_db=need_dW, out=db_out)
        backward_op = {Linear: linear_backward, Conv2d: conv2d_backward}.get(type(layer), conv_transpose2d_backward)
        dx, dW, _ = backward_op(dpre, layer_cache, need_dx=need_dx, need_dW=need_dW, dW_out=dW_out)
    elif type(layer) is not Linear:     # the activation's gradient comes out in the GEMMs' layout
        backward_op = conv2d_bias_leaky_relu_backward if type(layer) is Conv2d else \
            conv_transpose2d_bias_leaky_relu_backward
        dx, dW, db = backward_op(dy, layer_cache, need_dW=need_dW, dW_out=dW_out, db_out=db_out, need_dx=need_dx)
    else:
        dpre, db = bias_leaky_relu_backward(dy, act_cache, need_db=need_dW, out=db_out)
        dx, dW, _ = linear_backward(dpre, layer_cache, need_dx=need_dx, need_dW=need_dW, dW_out=dW_out)
    layer.weight.accumulate(dW)
    layer.bias.accumulate(db)
    hooks = spectral_norm_hooks(layer)
    if hooks is not None:
        hooks.finish(sn_caches)
    return dx


def _batchnorm_forward(layer, x, slope):
    # as _BatchNorm.forward, through the fused op
    check_float_input(layer, x, layer.ndim, channels=layer.num_features, dtype=layer.weight.dtype)
    if layer.training:
        if x.size // layer.num_features < 2:
            raise ValueError(f"{type(layer).__name__}: training needs more than one value per channel, "
                             f"got input of shape {tuple(x.shape)}")
        # the running statistics updated by the op (on the kernel backends in its last pass)
        running = (layer.running_mean, layer.running_var, layer.momentum)
        if slope is None:       # ReLU
            y, cache, _, _ = batchnorm_relu_forward(x, layer.weight.data, layer.bias.data, eps=layer.eps,
                                                    running=running)
        else:
            y, cache, _, _ = batchnorm_leaky_relu_forward(x, layer.weight.data, layer.bias.data, eps=layer.eps,
                                                          negative_slope=slope, running=running)
        layer.num_batches_tracked += 1
    elif slope is None:
        y, cache, _, _ = batchnorm_relu_forward(x, layer.weight.data, layer.bias.data, layer.running_mean,
                                                layer.running_var, layer.eps)
    else:
        y, cache, _, _ = batchnorm_leaky_relu_forward(x, layer.weight.data, layer.bias.data, layer.running_mean,
                                                      layer.running_var, layer.eps, slope)
    return y, (cache, y.shape, slope is None)


def _batchnorm_backward(layer, dy, cache):
    cache, shape, relu = cache
    check_same_shape(layer, dy, shape)
    # the kernel adds dgamma, dbeta into .grad where both can take it
    into = accumulates_in_place(layer.weight, dy) and accumulates_in_place(layer.bias, dy)
    op = batchnorm_relu_backward if relu else batchnorm_leaky_relu_backward
    dx, dgamma, dbeta = op(dy, cache, out=(layer.weight.grad, layer.bias.grad) if into else None)
    layer.weight.accumulate(dgamma)
    layer.bias.accumulate(dbeta)
    return dx
