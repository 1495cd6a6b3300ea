"""Connections to the training loops people use: Lightning, the HuggingFace Trainer, TensorBoard.

- `lightning.SpectrumCallback`: a ``lightning.pytorch.Callback``;
- `transformers.SpectrumCallback`: a ``transformers.TrainerCallback`` (the
  model's own loss by default, `transformers.model_loss`);
- `tensorboard`: a writer for `SpectrumMonitor` in plain loops
  (``SpectrumMonitor(..., writer=...)``) and readers of the event files.

Both callbacks measure every N steps or epochs, or as often as a time budget
allows (``max_overhead=0.05``), on a fixed probe batch: the warm-started top-k
eigenvalues, the trace with its standard error, optionally per-layer traces
and a density, and, with an adaptive optimizer, the preconditioned sharpness
beside the raw one with the optimizer's stability threshold. They leave the
training run exactly as it was (``_state.training_state_kept``) and share
their schedule and monitor (``_core.CallbackCore``).

Each integration is an optional extra (``pip install hessian-spectra[lightning]``,
``[hf]``, ``[tensorboard]``); its module imports the framework at the top and
raises an ImportError saying which extra to install when it is absent.
"""
