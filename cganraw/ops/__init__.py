"""Pure forward/backward functions, one module per op family.

Every op is a pair `<op>_forward(...) -> (y, cache)` and `<op>_backward(dy, cache)`,
except the single-direction ops (adam_update, im2col, col2im, gemm,
batchnorm_running_update). One grep on the op's name finds all of its faces:
    kernels/<family>.cu       <op>_forward_v1, <op>_forward_v2, <op>_backward_v1, ...
                              (the dispatch name plus the version; GPU or the CPU emulator)
    cganraw/ops/<family>.py   <op>_forward_numpy (reference), <op>_forward_cuda(...,
                              version=None) (launcher), <op>_forward (dispatch on backend)
    cganraw/nn/<family>.py    the layer, whose docstring names its ops
Launch helpers shared by every launcher live in cganraw.ops._launch.

op                      kernels (kernels/)             layer / user
leaky_relu, relu,       activation.cu                  nn.LeakyReLU, ReLU, Tanh, Sigmoid
  tanh, sigmoid
dropout                 dropout.cu                     nn.Dropout
bias_add                bias.cu                        nn.Linear, Conv2d, ConvTranspose2d
bias_leaky_relu         bias.cu (fused)                nn.Sequential: Linear/Conv + LeakyReLU
batchnorm               batchnorm.cu                   nn.BatchNorm1d, BatchNorm2d
batchnorm_leaky_relu    batchnorm.cu (fused)           nn.Sequential: BatchNorm + LeakyReLU
embedding               embedding.cu                   nn.Embedding
label_projection        label_projection.cu            nn.LabelProjection
film                    film.cu                        nn.FiLM (G's --g-film)
maxpool2d               maxpool.cu                     nn.MaxPool2d
avgpool2d               avgpool.cu                     nn.AvgPool2d
upsample_nearest2d      upsample.cu                    nn.Upsample
instancenorm            instancenorm.cu (+ batchnorm   nn.InstanceNorm2d
                          eval with running stats)
minibatch_std           minibatch_std.cu               nn.MinibatchStdDev
spectral_norm           spectral_norm.cu               nn.utils.spectral_norm
gemm                    gemm.cu (or cuBLAS)            nn.Linear, Conv2d, ConvTranspose2d
im2col, col2im          im2col.cu                      nn.Conv2d, ConvTranspose2d
linear                  none: gemm + bias_add          nn.Linear
conv2d,                 none: im2col/col2im + gemm     nn.Conv2d, ConvTranspose2d
  conv_transpose2d        + bias_add (k4 s2 p1: phase-split GEMMs, no col2im)
bce_with_logits         bce.cu                         losses.bce_with_logits
softmax_cross_entropy   cross_entropy.cu               losses.softmax_cross_entropy
adam_update             adam.cu                        optim.Adam
"""
from cganraw.ops.activation import (
                                    leaky_relu_backward,
                                    leaky_relu_forward,
                                    relu_backward,
                                    relu_forward,
                                    sigmoid_backward,
                                    sigmoid_forward,
                                    tanh_backward,
                                    tanh_forward,
)
from cganraw.ops.adam import adam_update
from cganraw.ops.avgpool import avgpool2d_backward, avgpool2d_forward
from cganraw.ops.batchnorm import (
                                    batchnorm_backward,
                                    batchnorm_forward,
                                    batchnorm_leaky_relu_backward,
                                    batchnorm_leaky_relu_forward,
                                    batchnorm_running_update,
)
from cganraw.ops.bce import bce_with_logits_backward, bce_with_logits_forward
from cganraw.ops.bias import bias_add_backward, bias_add_forward, bias_leaky_relu_backward, bias_leaky_relu_forward
from cganraw.ops.conv import (
                                    col2im,
                                    conv2d_backward,
                                    conv2d_forward,
                                    conv_output_size,
                                    conv_transpose2d_backward,
                                    conv_transpose2d_forward,
                                    conv_transpose_output_size,
                                    im2col,
)
from cganraw.ops.cross_entropy import (
                                    log_softmax,
                                    softmax,
                                    softmax_cross_entropy_backward,
                                    softmax_cross_entropy_forward,
)
from cganraw.ops.dropout import dropout_backward, dropout_forward
from cganraw.ops.embedding import embedding_backward, embedding_forward
from cganraw.ops.film import film_backward, film_forward
from cganraw.ops.gemm import gemm
from cganraw.ops.instancenorm import instancenorm_backward, instancenorm_forward, instancenorm_running_update
from cganraw.ops.label_projection import label_projection_backward, label_projection_forward
from cganraw.ops.linear import linear_backward, linear_forward
from cganraw.ops.maxpool import maxpool2d_backward, maxpool2d_forward
from cganraw.ops.minibatch_std import minibatch_std_backward, minibatch_std_forward
from cganraw.ops.spectral_norm import spectral_norm_backward, spectral_norm_forward
from cganraw.ops.upsample import upsample_nearest2d_backward, upsample_nearest2d_forward

__all__ = [name for name in dir() if not name.startswith("_")]
