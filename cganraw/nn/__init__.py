"""Layers with parameters and a forward cache, named and laid out as torch.nn."""
from cganraw.nn import (
           init,
           utils,
)
from cganraw.nn.activation import LeakyReLU, ReLU, Sigmoid, Tanh
from cganraw.nn.batchnorm import BatchNorm1d, BatchNorm2d
from cganraw.nn.conv import Conv2d, ConvTranspose2d
from cganraw.nn.dropout import Dropout
from cganraw.nn.embedding import Embedding, LabelProjection
from cganraw.nn.film import FiLM
from cganraw.nn.instancenorm import InstanceNorm2d
from cganraw.nn.linear import Linear
from cganraw.nn.maxpool import MaxPool2d
from cganraw.nn.minibatch_std import MinibatchStdDev
from cganraw.nn.module import Module, Parameter, Sequential
from cganraw.nn.pooling import AvgPool2d, Upsample
from cganraw.nn.shape import Concat, Flatten, Reshape

__all__ = ["init", "utils", "Module", "Parameter", "Sequential", "Linear", "Conv2d", "ConvTranspose2d",
           "Embedding", "LabelProjection", "FiLM", "BatchNorm1d", "BatchNorm2d", "InstanceNorm2d", "LeakyReLU", "ReLU",
           "Tanh", "Sigmoid",
           "Dropout", "Flatten", "Reshape", "Concat", "MaxPool2d", "AvgPool2d", "Upsample", "MinibatchStdDev"]
