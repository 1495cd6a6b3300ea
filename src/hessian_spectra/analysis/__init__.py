"""Questions about a model: per-layer traces, loss landscapes, spectra during training.

Modules here compose operators and algorithms; they hold no numerics of their own.
"""
