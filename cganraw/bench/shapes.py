"""The real layer shapes of the models the benchmarks run at: cgan-conv at width 128 and
cgan-mlp (cganraw/models.py), and the im2col/col2im and GEMM calls those layers make."""
from __future__ import annotations

SMOKE_BATCH = 2
WIDTH = 128
SMOKE_WIDTH = 16   # the training-step smoke check builds the conv models this narrow


def model_width(mode: str) -> int:
    return SMOKE_WIDTH if mode == "smoke" else WIDTH


def batches_for(mode: str):
    return {"smoke": (SMOKE_BATCH,), "quick": (64,), "full": (64, 128)}[mode]


# name, kind, in channels, out channels, kernel, stride, padding, input size
CONV_LAYERS = [
    ("G.up1 ConvT(129->128,k4,s2,p1) 7->14", "convT", WIDTH + 1, WIDTH, 4, 2, 1, 7),
    ("G.up2 ConvT(128->128,k4,s2,p1) 14->28", "convT", WIDTH, WIDTH, 4, 2, 1, 14),
    ("G.out Conv2d(128->1,k7,p3) 28", "conv", WIDTH, 1, 7, 1, 3, 28),
    ("D.conv1 Conv2d(2->128,k3,s2,p1) 28->14", "conv", 2, WIDTH, 3, 2, 1, 28),
    ("D.conv2 Conv2d(128->128,k3,s2,p1) 14->7", "conv", WIDTH, WIDTH, 3, 2, 1, 14),
]

# name, in, out: the dense layers whose GEMMs are benchmarked
LINEAR_LAYERS = [
    ("G.fc Linear(100->6272)", 100, WIDTH * 49),
    ("D.label_fc Linear(50->784)", 50, 784),
    ("D.fc Linear(6272->1)", WIDTH * 49, 1),
    ("mlpG.fc4 Linear(1024->784)", 1024, 784),
    ("mlpD.fc1 Linear(794->1024)", 794, 1024),
]


def conv_out(h, k, s, p):
    return (h + 2 * p - k) // s + 1


def convT_out(h, k, s, p):
    return (h - 1) * s - 2 * p + k


def conv_layer_dims(layer, n):
    """(x shape, W shape, output shape, forward FLOPs) of a conv layer at batch n."""
    _, kind, c, o, k, s, p, h = layer
    if kind == "conv":
        ho = conv_out(h, k, s, p)
        return (n, c, h, h), (o, c, k, k), (n, o, ho, ho), 2 * n * ho * ho * o * c * k * k
    ho = convT_out(h, k, s, p)
    return (n, c, h, h), (c, o, k, k), (n, o, ho, ho), 2 * n * h * h * c * o * k * k


def im2col_calls(layer, n):
    """The im2col/col2im call a layer makes: (image shape, k, s, p, out_hw). A Conv2d
    im2cols its input (col2im in backward); a ConvTranspose2d col2ims into its output
    (im2col of dy in backward); G.out, a stride-1 conv with fewer outputs than inputs,
    runs as ConvTranspose2d(128->1, k7, p=k-1-3) (cganraw.ops.conv._expand_outputs)."""
    _, kind, c, o, k, s, p, h = layer
    if kind == "conv" and s == 1 and o < c:
        return (n, o, h, h), k, 1, k - 1 - p, (h, h)
    if kind == "conv":
        ho = conv_out(h, k, s, p)
        return (n, c, h, h), k, s, p, (ho, ho)
    ho = convT_out(h, k, s, p)
    return (n, o, ho, ho), k, s, p, (h, h)


def gemm_cases(n):
    """(label, M, N, K, trans_a, trans_b) of the GEMMs the layers run at batch n,
    in cganraw.ops.gemm's convention (a is (K, M) when trans_a, b is (N, K) when trans_b)."""
    cases = []
    for layer in CONV_LAYERS:
        name, kind, c, o, k, s, p, h = layer
        tag = name.split()[0]
        if kind == "conv" and s == 1 and o < c:   # expanded on the output side: a ConvT(c->o)
            kind, p = "convT", k - 1 - p
        if kind == "conv":
            ho = conv_out(h, k, s, p)
            L, R = n * ho * ho, c * k * k
            cases += [(f"{tag} fwd", o, L, R, False, False), (f"{tag} dW", o, R, L, False, True),
                      (f"{tag} dcols", R, L, o, True, False)]
        else:
            L, R = n * h * h, o * k * k
            cases += [(f"{tag} fwd cols", R, L, c, True, False), (f"{tag} dW", c, R, L, False, True),
                      (f"{tag} dx", c, L, R, False, False)]
    for name, fin, fout in LINEAR_LAYERS:
        tag = name.split()[0]
        cases += [(f"{tag} fwd", n, fout, fin, False, True), (f"{tag} dx", n, fin, fout, False, False),
                  (f"{tag} dW", fout, fin, n, True, False)]
    return cases


# shapes without the batch axis: the batch comes from the `batch` parameter
ELEMENTWISE = {
    "leaky_relu": [(WIDTH * 49,), (WIDTH, 14, 14), (WIDTH, 28, 28), (1024,)],
    "relu": [(256,), (512,), (1024,)],
    "tanh": [(1, 28, 28)],
    "sigmoid": [(1,), (1, 28, 28)],
}
DROPOUT = [((WIDTH * 49,), 0.4), ((1024,), 0.3)]
BIAS = [(WIDTH * 49,), (WIDTH, 14, 14), (WIDTH, 28, 28), (1, 28, 28), (1024,)]
BATCHNORM = [(256,), (512,), (1024,), (WIDTH, 14, 14), (WIDTH, 28, 28)]


def tail_id(tail):
    return "Nx" + "x".join(map(str, tail))


ADAM_TENSORS = [  # name, shape
    ("G.fc.weight", (WIDTH * 49, 100)),
    ("G.up2.weight", (WIDTH, WIDTH, 4, 4)),
    ("mlpD.fc1.weight", (1024, 794)),
]
