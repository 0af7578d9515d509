"""Pure forward/backward functions, one module per op family.

Every op is a pair `<op>_forward(...) -> (y, cache)` and `<op>_backward(dy, cache)`,
except the in-place optimiser update. Each family has three faces found by its name:
    kernels/<family>.cu       CUDA kernels (GPU, or the CPU emulator)
    cganraw/ops/<family>.py   NumPy reference + dispatch
    cganraw/nn/<family>.py    the layer holding parameters and the forward cache
"""
from cganraw.ops.activation import (leaky_relu_backward, leaky_relu_forward, relu_backward,
                                    relu_forward, sigmoid_backward, sigmoid_forward,
                                    tanh_backward, tanh_forward)
from cganraw.ops.adam import adam_update
from cganraw.ops.batchnorm import batchnorm_backward, batchnorm_forward, running_stats_update
from cganraw.ops.bce import bce_with_logits_backward, bce_with_logits_forward
from cganraw.ops.bias import bias_add, bias_grad
from cganraw.ops.conv import (col2im, conv2d_backward, conv2d_forward, conv_output_size,
                              conv_transpose2d_backward, conv_transpose2d_forward,
                              conv_transpose_output_size, im2col)
from cganraw.ops.cross_entropy import (log_softmax, softmax, softmax_cross_entropy_backward,
                                       softmax_cross_entropy_forward)
from cganraw.ops.dropout import dropout_backward, dropout_forward
from cganraw.ops.embedding import embedding_backward, embedding_forward
from cganraw.ops.gemm import gemm
from cganraw.ops.linear import linear_backward, linear_forward
from cganraw.ops.maxpool import maxpool2d_backward, maxpool2d_forward

__all__ = [name for name in dir() if not name.startswith("_")]
