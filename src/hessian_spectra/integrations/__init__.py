"""Connections to the training loops people use: Lightning, the HuggingFace Trainer, TensorBoard.

Each integration is an optional extra (``pip install hessian-spectra[lightning]``,
``[hf]``, ``[tensorboard]``); its module imports the framework at the top and
raises an ImportError saying which extra to install when it is absent.
"""
