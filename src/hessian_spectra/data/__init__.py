"""Data loaders for the reference problems: scikit-learn digits and CIFAR-10."""

from hessian_spectra.data.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar10
from hessian_spectra.data.digits import digits

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "cifar10", "digits"]
