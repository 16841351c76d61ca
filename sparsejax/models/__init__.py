"""Flax models: linen (hidden activations sown into "intermediates") and NNX versions."""

from sparsejax.models.cnn import ConvNet, ConvSpec, cnn8, cnn_2conv_mnist, init_model, lenet5, rvsm_cnn
from sparsejax.models.dcgan import Discriminator, Generator, dcgan_28, dcgan_64
from sparsejax.models.mlp import MLP, init_mlp
from sparsejax.models.nnx_models import NNXMLP, NNXConvNet
from sparsejax.models.rbm import RBM
from sparsejax.models.resnet import BasicBlock, ResNet, resnet20
from sparsejax.models.transformer import EncoderBlock, TransformerClassifier

__all__ = ["MLP", "init_mlp", "ConvNet", "ConvSpec", "cnn_2conv_mnist", "lenet5", "rvsm_cnn", "cnn8",
           "init_model", "RBM", "Generator", "Discriminator", "dcgan_28", "dcgan_64", "ResNet", "BasicBlock",
           "resnet20", "TransformerClassifier", "EncoderBlock", "NNXMLP", "NNXConvNet"]
