"""Reference models: the study's CIFAR ResNet20 and a small CNN on the digits."""

from hessian_spectra.models.digits import digits_cnn, train_digits_cnn
from hessian_spectra.models.resnet import CifarResNet, resnet20

__all__ = ["CifarResNet", "digits_cnn", "resnet20", "train_digits_cnn"]
