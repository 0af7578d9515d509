"""G's block after each transposed convolution in cgan-conv's default model as one op on the
host: y = leaky_relu(film(instancenorm(x))), the layers InstanceNorm2d (affine, input
statistics), FiLM and LeakyReLU that nn.fused runs as one step on the numpy backend with Numba.

    u = xhat * gamma[c] + beta[c]             xhat = (x - mean) / sqrt(var + eps) per (n, c) plane
    v = u * (1 + film_gamma[n, c]) + film_beta[n, c]
    y = v if v > 0 else v * slope

    instancenorm_film_leaky_relu_forward   _numpy (the three references in turn), _numba
    instancenorm_film_leaky_relu_backward  _numpy, _numba -> dx, dgamma (C,), dbeta (C,),
                                           dfilm (N, 2C) = [dfilm_gamma | dfilm_beta]

The Numba kernels repeat the float steps of the three layers' own Numba kernels
(ops.instancenorm, ops.film, ops.activation) in the same order, so fused and unfused give the
same bits; they keep xhat only and recompute u and v where they are needed, so the forward
writes two arrays where the three layers write four and read three back, and the backward
makes two passes over a plane where the layers make five. One task per (n, c) plane, on x and
dy where they lie (NCHW or channel-major, the layout of G's convolutions). The kernel
backends run the three layers (no CUDA kernel: it would be the same launches' arithmetic).
"""
from __future__ import annotations

import numpy as np

from cganraw import backend
from cganraw.ops import _cpu
from cganraw.ops.activation import leaky_relu_backward_numpy, leaky_relu_forward_numpy
from cganraw.ops.film import film_backward_numpy, film_forward_numpy
from cganraw.ops.instancenorm import _dims, instancenorm_backward_numpy, instancenorm_forward_numpy


def _check(x, gamma, beta, film_gamma, film_beta, op):
    n, c, hw = _dims(x, op)
    if hw <= 1:
        raise ValueError(f"{op}: a plane needs more than 1 pixel for its statistics, got x of shape {tuple(x.shape)}")
    if tuple(gamma.shape) != (c,) or tuple(beta.shape) != (c,):
        raise ValueError(f"{op}: gamma and beta must have shape ({c},), got {tuple(gamma.shape)} and {tuple(beta.shape)}")
    if tuple(film_gamma.shape) != (n, c) or tuple(film_beta.shape) != (n, c):
        raise ValueError(f"{op}: film_gamma and film_beta must have shape ({n}, {c}), got "
                         f"{tuple(film_gamma.shape)} and {tuple(film_beta.shape)}")


def instancenorm_film_leaky_relu_forward_numpy(x, gamma, beta, film_gamma, film_beta, eps=1e-5, negative_slope=0.2):
    """x (N, C, H, W), gamma/beta (C,), film_gamma/film_beta (N, C) -> y (N, C, H, W), cache:
    the three references in turn."""
    _check(x, gamma, beta, film_gamma, film_beta, "instancenorm_film_leaky_relu_forward")
    u, in_cache, _, _ = instancenorm_forward_numpy(x, gamma, beta, eps)
    v, film_cache = film_forward_numpy(u, film_gamma, film_beta)
    y, act_cache = leaky_relu_forward_numpy(v, negative_slope)
    return y, ("layers", in_cache, film_cache, act_cache)


def instancenorm_film_leaky_relu_backward_numpy(dy, cache):
    """dy -> dx, dgamma (C,), dbeta (C,), dfilm (N, 2C) = [dfilm_gamma | dfilm_beta]."""
    _, in_cache, film_cache, act_cache = cache
    dv = leaky_relu_backward_numpy(dy, act_cache)
    du, dfg, dfb = film_backward_numpy(dv, film_cache)
    dx, dgamma, dbeta = instancenorm_backward_numpy(du, in_cache)
    return dx, dgamma, dbeta, np.concatenate([dfg, dfb], axis=1)


@_cpu.kernel
def _forward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def forward(x, x_cm, gamma, beta, film_gamma, film_beta, eps, slope, y, xhat, invstd):
        # x, y, xhat (N, C, HW), or (C, N, HW) when x_cm; invstd (N, C); film_* (N, C) any strides
        if x_cm:
            c, n, hw = x.shape
        else:
            n, c, hw = x.shape
        one = x.dtype.type(1)
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            xr = x[ch, i] if x_cm else x[i, ch]
            yr = y[ch, i] if x_cm else y[i, ch]
            hr = xhat[ch, i] if x_cm else xhat[i, ch]
            s = 0.0                                    # the statistics as instancenorm's kernel
            for p in range(hw):
                s += xr[p]
            m = s / hw
            q = 0.0
            for p in range(hw):
                d = xr[p] - m
                q += d * d
            inv = x.dtype.type(1.0 / np.sqrt(q / hw + eps))
            mf = x.dtype.type(m)
            g, b = gamma[ch], beta[ch]
            scale, shift = one + film_gamma[i, ch], film_beta[i, ch]
            for p in range(hw):
                h = (xr[p] - mf) * inv
                hr[p] = h
                v = (h * g + b) * scale + shift
                yr[p] = v if v > 0 else v * slope
            invstd[i, ch] = inv
    return forward


@_cpu.kernel
def _backward_numba(nb, parallel):
    @nb.njit(parallel=parallel, cache=True)
    def backward(dy, dy_cm, xhat, x_cm, invstd, gamma, beta, film_gamma, film_beta, slope, dx, dfilm, s1, s2):
        # dy and xhat each (N, C, HW) or (C, N, HW); dx in xhat's layout; dfilm (N, 2C), s1, s2
        # (N, C), float64: the sums of the film's and the norm's gradients, in pixel order
        if x_cm:
            c, n, hw = xhat.shape
        else:
            n, c, hw = xhat.shape
        one = xhat.dtype.type(1)
        for task in nb.prange(n * c):
            i, ch = task // c, task % c
            gr = dy[ch, i] if dy_cm else dy[i, ch]
            hr = xhat[ch, i] if x_cm else xhat[i, ch]
            dr = dx[ch, i] if x_cm else dx[i, ch]
            g, b = gamma[ch], beta[ch]
            scale, shift = one + film_gamma[i, ch], film_beta[i, ch]
            sum_dv = 0.0
            sum_dvu = 0.0
            a = 0.0
            q = 0.0
            for p in range(hw):
                h = hr[p]
                u = h * g + b
                v = u * scale + shift
                dv = gr[p] if v > 0 else gr[p] * slope       # LeakyReLU's gradient
                sum_dv += dv                                 # FiLM's
                sum_dvu += dv * u
                du = dv * scale
                dr[p] = du
                a += du                                      # then instancenorm's
                q += du * h
            dfilm[i, ch], dfilm[i, c + ch] = sum_dvu, sum_dv
            s1[i, ch], s2[i, ch] = a, q
            ma, mq = xhat.dtype.type(a / hw), xhat.dtype.type(q / hw)
            k = g * invstd[i, ch]
            for p in range(hw):
                dr[p] = (dr[p] - (hr[p] * mq + ma)) * k
    return backward


def instancenorm_film_leaky_relu_forward_numba(x, gamma, beta, film_gamma, film_beta, eps=1e-5, negative_slope=0.2):
    """As the reference, one task per plane: y and xhat in x's layout; the cache ("fused",
    xhat, invstd, gamma, beta, film_gamma, film_beta, slope) is instancenorm_film_leaky_relu_backward_numba's."""
    op = "instancenorm_film_leaky_relu_forward"
    _check(x, gamma, beta, film_gamma, film_beta, op)
    n, c, _ = _dims(x, op)
    x3, cm = _cpu.planes(x)
    y3, y = _cpu.empty_planes_like(x3, cm, x.shape)
    h3, xhat = _cpu.empty_planes_like(x3, cm, x.shape)
    invstd = np.empty((n, c), x.dtype)
    slope = x.dtype.type(negative_slope)
    gamma, beta = np.ascontiguousarray(gamma), np.ascontiguousarray(beta)
    _forward_numba(x3, cm, gamma, beta, film_gamma, film_beta, float(eps), slope, y3, h3, invstd, work=x.size)
    return y, ("fused", xhat, invstd, gamma, beta, film_gamma, film_beta, slope)


def instancenorm_film_leaky_relu_backward_numba(dy, cache):
    """As the reference (dx in xhat's layout), one task per plane, two passes."""
    _, xhat, invstd, gamma, beta, film_gamma, film_beta, slope = cache
    n, c, _ = _dims(dy, "instancenorm_film_leaky_relu_backward")
    if tuple(dy.shape) != tuple(xhat.shape):
        raise ValueError(f"instancenorm_film_leaky_relu_backward: dy has shape {tuple(dy.shape)}, the forward's "
                         f"input {tuple(xhat.shape)}")
    h3, cm = _cpu.planes(xhat)
    dx3, dx = _cpu.empty_planes_like(h3, cm, xhat.shape)
    dfilm, s1, s2 = np.empty((n, 2 * c)), np.empty((n, c)), np.empty((n, c))
    _backward_numba(*_cpu.planes(dy), h3, cm, invstd, gamma, beta, film_gamma, film_beta, slope, dx3, dfilm, s1, s2,
                    work=2 * dy.size)
    f = dy.dtype
    return dx, s2.sum(axis=0).astype(f), s1.sum(axis=0).astype(f), dfilm.astype(f)


def instancenorm_film_leaky_relu_forward(x, gamma, beta, film_gamma, film_beta, eps=1e-5, negative_slope=0.2):
    """-> y, cache. The Numba kernel where _cpu.host_planes holds, else the reference."""
    if backend.uses_kernels():
        raise ValueError("instancenorm_film_leaky_relu_forward: a host op (the kernel backends run the three layers)")
    if _cpu.host_planes(x, gamma, beta, film_gamma, film_beta):
        return instancenorm_film_leaky_relu_forward_numba(x, gamma, beta, film_gamma, film_beta, eps, negative_slope)
    return instancenorm_film_leaky_relu_forward_numpy(x, gamma, beta, film_gamma, film_beta, eps, negative_slope)


def instancenorm_film_leaky_relu_backward(dy, cache):
    """dy -> dx, dgamma (C,), dbeta (C,), dfilm (N, 2C), by the forward's path."""
    if backend.uses_kernels():
        raise ValueError("instancenorm_film_leaky_relu_backward: a host op (the kernel backends run the three layers)")
    if cache[0] == "fused":
        return instancenorm_film_leaky_relu_backward_numba(dy, cache)
    return instancenorm_film_leaky_relu_backward_numpy(dy, cache)
