"""The loss Hessian of a network as a matrix-free operator (Pearlmutter, 1994).

`HessianOperator` multiplies blocks of vectors by the Hessian of the mean loss
over a data set with respect to (a subset of) the model's parameters. It
never forms the matrix: each product is a double backward pass (or a
forward-over-reverse pass through `torch.func`). A block of b vectors costs
ONE forward pass and ONE gradient graph per batch, reused for all b columns,
which is where block algorithms get their speed.

The b columns are b backward passes over the retained gradient graph
(``hvp_mode="double_backward"``), or one backward pass vmapped over them
(``"batched_backward"``, autograd's ``is_grads_batched``), or a vmapped
forward-over-reverse pass (``"forward_over_reverse"``); ``"auto"`` picks by
the rule measured in ``docs/products.md`` (``benchmarks/hvp_modes.py``).

When the data are one batch, the gradient graph is kept between products
(``keep_graph``) while the parameters, buffers, modes and the batch are
unchanged, so a product costs only its backward passes; see
``operators/products.py`` for how "unchanged" is checked and what the kept
graph holds (`graph_bytes`).

The full-data Hessian is the weighted mean of the per-batch Hessians, a
batch's weight being the number of terms its mean loss averages over (its
samples, or its targets other than ``ignore_index``; see `ModelLoss.loss`),
so a short last batch, or one with many ignored targets, is not over-counted.

The model, its loss, the parameter selection and the data are handled by
`ModelLoss` (``operators/model.py``), data sharding across ranks by
``operators/sharding.py``, and the determinism checks by
``operators/determinism.py``; this module holds the Hessian product itself.

Precision follows the model: the operator works in the dtype of the selected
parameters. Call ``model.double()`` before building the operator for a
float64 Hessian; floating-point inputs are cast to that dtype and moved to the
parameters' device. Sums over several batches are accumulated in float64.
A model stored in bfloat16 or float16 computes its products in that dtype and
the operator works in float32; ``product_dtype=torch.bfloat16`` computes the
products of a float32 model under autocast (``"tf32"``: TF32 matmuls on
CUDA), summed in float32. `precision_dtype` then says how coarse the products
are, and the eigensolvers' precision floors follow it.

Data parallel: with a ``torch.distributed`` default group of more than one
rank, each rank multiplies by its shard of the data, and one ``all_reduce``
per block product sums the sample-weighted products and the sample count
(packed in one tensor), so every rank gets the full-data product and the
algorithms above run unchanged, and identically, on every rank. Whether the
data a rank holds are the full data (sharded here) or its own part (used
whole) is decided once by comparing a digest of the data across ranks.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from hessian_spectra import _distributed
from hessian_spectra.operators.autograd_support import (
    UnsupportedDerivativeError,
    derivatives_explained,
)
from hessian_spectra.operators.base import LinearOperator, digest
from hessian_spectra.operators.criteria import loss_identity
from hessian_spectra.operators.determinism import check_deterministic as _check_deterministic
from hessian_spectra.operators.determinism import check_first_product
from hessian_spectra.operators.finite_difference import FiniteDifference
from hessian_spectra.operators.grouping import group_parameters
from hessian_spectra.operators.model import (
    Criterion,
    LossFn,
    ModelLoss,
    ParamSpec,
    WeightFn,
    is_one_batch,
)
from hessian_spectra.operators.products import (
    GraphCache,
    auto_mode,
    backward_block,
    build_graph,
    resolve_precision,
)

__all__ = ["HessianOperator"]

_MODES = (
    "double_backward",
    "batched_backward",
    "forward_over_reverse",
    "auto",
    "finite_difference",
)
# the modes whose products come from a batch's first-order gradient graph
_GRAPH_MODES = ("double_backward", "batched_backward", "auto")


class _LossModule(nn.Module):
    """Wraps model + loss so that `torch.func.functional_call` can swap parameters."""

    def __init__(self, model: nn.Module, fn: Any) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(batch, self.model)


class HessianOperator(LinearOperator):
    """The Hessian of a model's mean loss over its data, known through products.

    Example:
        >>> import torch, hessian_spectra as hs
        >>> _ = torch.manual_seed(0)
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        >>> x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
        >>> op = hs.HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
        >>> op.shape
        (67, 67)
        >>> H = op.matmat(torch.eye(67, dtype=op.dtype))  # the dense Hessian, column by column
        >>> top = hs.eigsh(op, k=3, seed=0, tol=1e-8)
        >>> exact = torch.linalg.eigvalsh(H)[-3:].flip(0)
        >>> bool(torch.allclose(torch.as_tensor(top.eigenvalues), exact))
        True

    Args:
        model: the network. Must be in eval mode when it contains BatchNorm or
            Dropout (else the Hessian changes with every pass).
        criterion: called as ``criterion(model(inputs), targets)`` on each
            batch ``(inputs, targets)``, returning the batch's mean loss (e.g.
            ``nn.CrossEntropyLoss()``). At most one of criterion and loss_fn;
            with neither, the model's own loss: ``model(**batch).loss`` (or
            ``["loss"]``) for dict batches, as HuggingFace models return it
            when the batch holds ``labels``.
            The rule: every batch's loss is a MEAN, so a criterion with
            ``reduction='sum'`` (which would scale each batch's Hessian by
            its size) or ``reduction='none'`` is refused; use
            ``reduction='mean'`` (the default), or a loss_fn returning
            ``(mean_loss, n)``.
        data: one batch (a tuple or list of tensors, e.g. ``(inputs, targets)``,
            or a dict) or a re-iterable of batches (a list of batches, a
            DataLoader). One-shot iterators (generators) are refused: every
            product makes a full pass over the data; so are data without a
            length (a DataLoader over an IterableDataset) unless
            `max_batches` caps the pass. A batch's weight is the number of
            terms its mean loss averages over: the count that loss_fn
            returns; for ``CrossEntropyLoss``/``NLLLoss`` with class
            targets, the targets other than ``ignore_index`` (-100 by
            default), each counted with its class weight when the loss has
            ``weight=``; otherwise the leading dimension the batch's tensors
            share (see `model.batch_weight`).
        loss_fn: keyword-only alternative to criterion, called as
            ``loss_fn(model, batch)`` and returning the batch's mean loss or
            ``(mean_loss, num_samples)``. For dict inputs, language models,
            physics-informed losses.
        params: which parameters the Hessian is taken with respect to: None
            (all with ``requires_grad``), a list of parameter names, a regex
            string (``re.search`` on the names of the trainable parameters), a
            module or a list of modules (their parameters; per-layer
            Hessians), parameter tensors, or a mix of these (see
            `model.select_parameters`).
        hvp_mode: ``"double_backward"`` (default; reverse-over-reverse, a
            loop of backward passes over one gradient graph),
            ``"batched_backward"`` (one backward pass vmapped over the block:
            autograd's ``is_grads_batched``), ``"auto"`` (per block, the
            cheaper of these two by the rule measured in ``docs/products.md``),
            ``"forward_over_reverse"`` (``torch.func.jvp`` of ``torch.func.grad``,
            vmapped over the block; fails clearly on models torch.func cannot
            transform; builds its graph for every block), or
            ``"finite_difference"``: central differences of gradients, for
            models with an operation torch cannot differentiate twice
            (``nn.Hardsigmoid``); four gradients per column, with the
            relative error estimated in `fd_error_estimate` (see
            ``operators/finite_difference.py``). Products run with attention
            on its twice-differentiable (math) kernel; an operation without the
            derivative a mode needs is named, with its modules, in an
            `UnsupportedDerivativeError`.
        allow_train_mode: accept a model in train mode with BatchNorm, Dropout
            or an RNN built with ``dropout>0``. BatchNorm then uses batch
            statistics (its running statistics are restored after every pass)
            and Dropout draws new masks each pass, so the operator is not a
            fixed matrix (the determinism check then refuses it).
        check_finite: raise when an HVP contains NaN/inf, naming the batch.
        distributed: ``"auto"`` (default: on when a ``torch.distributed``
            default group with more than one rank is initialized), True (the
            same, but an error without such a group) or False (this rank's data
            only). Each rank takes a shard of the data, and no sample is
            counted twice: a DataLoader whose sampler is a
            ``DistributedSampler`` is the rank's shard as it is (a sampler that
            pads the data set with repeated samples is refused); any other
            re-iterable of batches is compared across ranks (see `shard`):
            the same full data on every rank are sharded by batch (rank r
            takes batches r, r + W, ...) and one batch is split into W
            contiguous slices of samples; data that differ between ranks are
            each rank's own shard. Every rank must call the same products
            (run the same algorithm with the same seed). See
            ``operators/sharding.py``.
        check_deterministic: whether the operator must prove to be a fixed
            matrix. ``"first"`` (default): the first product is taken twice
            for one of its vectors (the one of largest norm; one extra
            product, once in the operator's life, NOT counted in
            `num_matvecs` but in `check_matvecs`) and a difference beyond 100
            machine epsilons relative raises, naming the likely cause (noise
            drawn in forward, functional dropout in a train-mode model,
            random data augmentation, a stream that yields new data).
            True: the same check with a random probe, twice, when the
            operator is built (two products, in `check_matvecs`), before any
            algorithm runs. False: no check. A shuffled loader passes (only
            the summation order changes).
        shard: in a data-parallel run, ``"auto"`` (default: one pass hashing
            the data and one small all-reduce compare a digest of each
            rank's data; the same everywhere -> sharded, different -> each
            rank's data are its shard), ``"full"`` (the data are the full data
            on every rank: shard them) or ``"local"`` (each rank passed its
            own shard: use it whole). The choice is in `settings`.
        max_batches: use only the first this many batches of each pass over
            the data (needed for data without a length).
        weight_fn: ``weight_fn(batch)`` -> the number of terms the batch's
            mean loss averages over, replacing the rules above (for a model's
            own loss: its ``labels`` other than -100, shifted by one for a
            causal LM, see `criteria.is_causal_lm`).
        keep_graph: keep the gradient graph of a lone batch between products
            (None, the default: when the data are one batch and the products
            come from its gradient graph). It is reused only while every
            selected parameter, buffer and batch tensor is the same object
            with the same version counter and the same values and the
            modules' modes are the same (checked before each product, see
            ``operators/products.py``), else rebuilt; `graph_bytes` is the
            memory it holds, `free_graph` drops it. False: build the graph
            for every product (less memory between products). Data of
            several batches build one graph per batch per block either way.
        product_dtype: the dtype of the products: None (the model's),
            ``torch.bfloat16`` or ``torch.float16`` (a float32 model's
            forward and backward passes under ``torch.autocast``, results
            summed in float32) or ``"tf32"`` (TensorFloat-32 matmuls and
            convolutions of a float32 model on CUDA). The operator's dtype
            stays the model's; `precision_dtype` is the products' and sets
            the eigensolvers' precision floor. A model stored in bfloat16 or
            float16 computes in its own dtype and the operator works in
            float32.

    Attributes:
        param_names: names of the selected parameters, in vector order.
        params: the selected parameter tensors.
        blocks: ``{name: slice}`` of each parameter in a flat vector.
        is_distributed: whether products are summed over the ranks of the
            default ``torch.distributed`` group.
        model_loss: the `ModelLoss` (model, loss call, selection, prepared
            batches) the products pass over.
        num_samples: the samples (total batch weight) of the last product,
            over all ranks; ``local_num_samples``: this rank's share of them.
        check_matvecs: products the determinism check spent (not in
            `num_matvecs`).
        keep_graph: whether a lone batch's gradient graph is kept between products.
        product_dtype: the dtype products are computed in (a torch dtype, or ``"tf32"``).
        precision_dtype: the dtype whose machine epsilon is the products'
            rounding unit (float16 for TF32, whose epsilon is the same).
        graph_bytes: memory held by the kept gradient graph (0 when none).

    Every product leaves the model's buffers as they were (a forward that
    updates a buffer, or train-mode BatchNorm's running statistics, is undone
    after each pass), so each product starts from the same model.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: Criterion | None = None,
        data: Any = None,
        *,
        loss_fn: LossFn | None = None,
        params: ParamSpec = None,
        hvp_mode: str = "double_backward",
        allow_train_mode: bool = False,
        check_finite: bool = True,
        distributed: bool | str = "auto",
        check_deterministic: bool | Literal["first"] = "first",
        shard: str = "auto",
        max_batches: int | None = None,
        weight_fn: WeightFn | None = None,
        keep_graph: bool | None = None,
        product_dtype: torch.dtype | str | None = None,
    ) -> None:
        if hvp_mode not in _MODES:
            raise ValueError(f"hvp_mode must be one of {_MODES}, got {hvp_mode!r}")
        if not any(check_deterministic is c for c in (True, False)) and not (
            isinstance(check_deterministic, str) and check_deterministic == "first"
        ):
            raise ValueError(
                f"check_deterministic must be 'first', True or False, got {check_deterministic!r}"
            )
        if distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
        # whether products are reduced across the ranks of the default group
        self.is_distributed = _distributed.resolve_distributed(distributed)
        # the model, its loss, the selected parameters and this rank's prepared batches
        self.model_loss = ModelLoss(
            model,
            criterion,
            data,
            loss_fn=loss_fn,
            params=params,
            allow_train_mode=allow_train_mode,
            distributed=self.is_distributed,
            shard=shard,
            max_batches=max_batches,
            weight_fn=weight_fn,
        )
        self._fd = FiniteDifference(self.model_loss) if hvp_mode == "finite_difference" else None
        self.model = model
        self.criterion = criterion
        self.loss_fn = loss_fn
        self.data = data
        self.hvp_mode = hvp_mode
        self.allow_train_mode = bool(allow_train_mode)
        self.check_finite = bool(check_finite)
        self.distributed = distributed
        self.check_deterministic: bool | str = check_deterministic
        self.shard = shard
        self.max_batches = max_batches
        self.check_matvecs = 0
        self._first_product_checked = check_deterministic != "first"
        selection = self.model_loss.selection
        self.param_names: list[str] = selection.names
        self.params: list[torch.Tensor] = selection.params
        self.blocks: dict[str, slice] = selection.blocks
        # samples (batch weights) of the last product: all ranks', and this rank's
        self.num_samples = 0.0
        self.local_num_samples = 0.0
        self._gradients_checked = False  # forward_over_reverse: unused parameters checked
        self._precision = resolve_precision(
            product_dtype, self.model_loss.dtype, self.model_loss.device
        )
        self.product_dtype: torch.dtype | str = self._precision.product
        self._precision_dtype = self._precision.precision_dtype
        if keep_graph not in (None, True, False):
            raise ValueError(f"keep_graph must be None, True or False, got {keep_graph!r}")
        one_batch = is_one_batch(data) and self.model_loss.num_batches == 1
        # only the Hessian's own product uses the graph (GGN and Fisher replace it)
        own = type(self)._batch_product is HessianOperator._batch_product
        self.keep_graph = bool(
            own and one_batch and keep_graph is not False and hvp_mode in _GRAPH_MODES
        )
        self._graphs = GraphCache(self.keep_graph)
        super().__init__(selection.numel, self._precision.dtype, self.model_loss.device)
        if check_deterministic is True:
            _check_deterministic(
                self._fresh_product, self.model_loss, self.shape[0], self.dtype, self.device
            )
            self.check_matvecs += 2

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed on this operator.

        Type, size, dtype; a digest of the selected parameters' names and of
        their values; the loss (a criterion's type and settings such as
        reduction, ignore_index, label_smoothing and class weights, or a
        loss_fn's qualified name); and a digest of the data: every sample of
        every batch (all the data, not a sample of them, independent of batch
        order and grouping), hashed once, on the first call (one pass over the
        data, cheaper than one product; at construction in data-parallel
        runs, where it covers every rank's data).
        """
        return {
            **super().fingerprint(),
            "param_names": hashlib.sha256(",".join(self.param_names).encode()).hexdigest(),
            "params": digest(self.params),
            "loss": loss_identity(self.criterion, self.loss_fn),
            "data": self.model_loss.data_digest(),
        }

    @property
    def settings(self) -> dict[str, Any]:
        """How the operator was built and how it reads its data, for result records.

        ``shard`` is this rank's share of the data: ``"none"`` (no process
        group), ``"rows"`` or ``"batches"`` (the same data on every rank,
        sharded), ``"sampler"`` (a DistributedSampler's shard) or ``"local"``
        (each rank's own data, used whole).
        """
        return {
            "hvp_mode": self.hvp_mode,
            "check_deterministic": self.check_deterministic,
            "shard": self.model_loss.shard.mode,
            "max_batches": self.max_batches,
            "loss": loss_identity(self.criterion, self.loss_fn),
            **(self._fd.settings() if self._fd is not None else {}),
            "keep_graph": self.keep_graph,
            "product_dtype": str(self.product_dtype).replace("torch.", ""),
        }

    @property
    def graph_bytes(self) -> int:
        """Bytes held by the kept gradient graph between products (0 when none is kept).

        The tensors the graph's nodes saved for backward (activations), the
        gradient itself and the copies of the parameters, buffers and batch
        the graph is checked against before each reuse; the parameters and
        the batch themselves are not counted (they exist without the graph).
        """
        return self._graphs.nbytes

    def free_graph(self) -> None:
        """Drop the kept gradient graph now; the next product builds a new one."""
        self._graphs.free()

    @property
    def fd_error_estimate(self) -> float | None:
        """hvp_mode='finite_difference': the last product's relative error estimate, else None."""
        return None if self._fd is None else self._fd.error_estimate

    # --------------------------------------------------------------- products

    def _batch_hvp_double_backward(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[Any, float]:
        """H_batch @ V for one batch from its gradient graph; one graph for all columns.

        A lone batch's graph is kept for the next products (`keep_graph`)
        and reused while the model and the batch are unchanged.
        """
        b = Vt[0].shape[0]
        mode = auto_mode(self.device, b) if self.hvp_mode == "auto" else self.hvp_mode
        cache = self._graphs
        with torch.enable_grad(), derivatives_explained(self.model, "double_backward"):
            graph = cache.lookup(self.model, self.params, batch) if cache.enabled else None
            if graph is None:
                graph = build_graph(self.model_loss, batch)
                if cache.enabled:
                    cache.store(graph, self.model, self.params, batch)
            hv = backward_block(graph, self.params, Vt, mode, retain=cache.enabled)
        return hv, graph.weight

    def _batch_hvp_forward_over_reverse(
        self, batch: Any, Vt: list[torch.Tensor]
    ) -> tuple[Any, float]:
        """Per-parameter H_batch @ V for one batch by jvp of grad, vmapped over the columns."""
        if not self._gradients_checked:
            # torch.func gives zeros where autograd gives None: check once, as the
            # double-backward mode does on every batch
            with torch.enable_grad():
                self.model_loss.gradient(self.model_loss.loss(batch)[0])
            self._gradients_checked = True

        wrapper = _LossModule(self.model, self.model_loss.loss)
        primals = {
            f"model.{n}": p.detach() for n, p in zip(self.param_names, self.params, strict=True)
        }
        keys = list(primals)
        weights: list[float] = []  # filled while tracing: the weight is a Python float

        def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
            loss, weight = functional_call(wrapper, p, (batch,))
            weights.append(weight)
            return loss

        def hvp_column(*v: torch.Tensor) -> list[torch.Tensor]:
            hv = jvp(grad(loss_of), (primals,), (dict(zip(keys, v, strict=True)),))[1]
            return [hv[k] for k in keys]

        try:
            with warnings.catch_warnings():
                # torch's forward-mode AD loads its decompositions with torch.jit.script
                # on first use, which warns that torch.jit.script is deprecated
                warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
                with derivatives_explained(self.model, "forward_over_reverse"):
                    hv = vmap(hvp_column)(*Vt)
        except UnsupportedDerivativeError:
            raise
        except (RuntimeError, NotImplementedError) as err:
            raise RuntimeError(
                f"hvp_mode='forward_over_reverse' failed for this model ({err}); torch.func "
                "cannot transform it. Use hvp_mode='double_backward' (the default)"
            ) from err
        b = Vt[0].shape[0]
        return torch.cat([h.reshape(b, -1) for h in hv], 1).T, weights[0]

    def _batch_product(self, batch: Any, Vt: list[torch.Tensor]) -> tuple[Any, float]:
        """One batch's (n, b) product and weight: the only part that is the Hessian's own.

        The pass over the data around it (weights, float64 sums, the finiteness
        check, the reduction across ranks) is shared with the operators over
        other curvature matrices of the same loss (`GGNOperator`,
        `FisherOperator`), which replace only this method.
        """
        if self._fd is not None:
            return self._fd.batch_product(batch, Vt)
        if self.hvp_mode == "forward_over_reverse":
            return self._batch_hvp_forward_over_reverse(batch, Vt)
        return self._batch_hvp_double_backward(batch, Vt)

    def _accumulate(self, V: torch.Tensor) -> tuple[torch.Tensor, float]:
        """One pass over the data: (sum_k w_k H_k V, sum_k w_k), w_k = samples in batch k.

        Sums over more than one batch are kept in float64. Data-parallel
        reductions belong right after this loop.
        """
        b = V.shape[1]
        # in the model's dtype (a bfloat16 model's products take bfloat16 vectors)
        Vt_full = V.T.to(self.model_loss.dtype).contiguous()
        Vt = [
            Vt_full[:, s].view(b, *p.shape)
            for s, p in zip(self.blocks.values(), self.params, strict=True)
        ]
        total: torch.Tensor | None = None
        weight_sum = 0.0
        bad = -1  # the first batch whose product is not finite (distributed runs)
        for index, batch in enumerate(self.model_loss.batches()):
            with self._precision.context(self.device):
                hv, weight = self._batch_product(batch, Vt)
            hv = self._precision.accumulate(hv)  # float32 or wider
            if self.check_finite and not bool(torch.isfinite(hv).all()):
                if not self.is_distributed:
                    raise FloatingPointError(
                        f"the Hessian-vector product of batch {index} contains NaN or inf; check "
                        "that batch's data and the model's numerics (a float64 model, "
                        "model.double(), may help)"
                    )
                bad = index if bad < 0 else bad
                hv = torch.zeros_like(hv)
            if total is None:
                total = hv * weight
            else:
                if total.dtype != torch.float64:
                    total = total.to(torch.float64)
                total.add_(hv.to(torch.float64), alpha=weight)
            weight_sum += weight
        self.local_num_samples = weight_sum
        if self.is_distributed:
            total, weight_sum = self._reduce(total, weight_sum, b, bad)
        if total is None:
            raise ValueError("data yielded no batches; pass at least one batch")
        self.num_samples = weight_sum
        return total, weight_sum

    def _reduce(
        self, total: torch.Tensor | None, weight_sum: float, b: int, bad: int
    ) -> tuple[torch.Tensor, float]:
        """Sum the ranks' weighted products and sample counts: ONE all_reduce.

        The block, the sample count and the number of ranks with a non-finite
        product travel in one float64 tensor, so a failure is raised on every
        rank (no rank is left waiting in the next product).
        """
        n = self.shape[0]
        buf = torch.zeros(n * b + 2, dtype=torch.float64, device=self.device)
        if total is not None:
            buf[: n * b] = total.reshape(-1)
        buf[n * b] = weight_sum
        buf[n * b + 1] = 1.0 if bad >= 0 else 0.0
        _distributed.all_reduce_sum(buf)
        if buf[n * b + 1] > 0:
            here = (
                f"; on this rank (rank {self.model_loss.shard.rank}) its batch {bad}"
                if bad >= 0
                else ""
            )
            raise FloatingPointError(
                f"a Hessian-vector product contains NaN or inf on {int(buf[n * b + 1])} "
                f"rank(s){here}; check the data and the model's numerics (a float64 model, "
                "model.double(), may help)"
            )
        weight = float(buf[n * b])
        if weight <= 0:
            raise ValueError("no rank has data: give every rank the data (see distributed=)")
        return buf[: n * b].view(n, b), weight

    def _product(self, V: torch.Tensor) -> torch.Tensor:
        """H @ V, uncounted; the model's buffers are restored afterwards."""
        # a buffer the pass changed is written back, which bumps its version: a kept
        # graph then no longer matches (`GraphCache.lookup`) and is rebuilt
        with self.model_loss.state_kept():
            total, weight = self._accumulate(V.detach())
        return (total / weight).to(self.dtype)

    def _fresh_product(self, V: torch.Tensor) -> torch.Tensor:
        """`_product` from a newly built graph: what the determinism check must compare."""
        self._graphs.free()
        return self._product(V)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.model_loss.check_mode()
        if self.check_finite and not bool(torch.isfinite(V).all()):
            raise FloatingPointError("the input block contains NaN or inf")
        if self._first_product_checked:
            return self._product(V)
        # both passes build their graph, so the check compares two forward passes
        out, checked = check_first_product(self._fresh_product, self.model_loss, V)
        if checked:
            self._first_product_checked = True
            self.check_matvecs += 1
        return out

    # ---------------------------------------------------------------- helpers

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat (n,) vector into ``{name: tensor shaped like the parameter}``."""
        return self.model_loss.selection.unflatten(v)

    def flatten(self, tensors: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]) -> torch.Tensor:
        """Concatenate per-parameter tensors (a dict by name, or a list in order) to (n,)."""
        return self.model_loss.selection.flatten(tensors).to(self.dtype)

    def blocks_by(self, how: str) -> dict[str, slice | torch.Tensor]:
        """The flat vector's coordinates grouped by ``"layers"``, ``"modules"`` or
        ``"parameters"`` (see ``operators/grouping.py``): what ``blocks="layers"`` means."""
        return group_parameters(self.model, self.param_names, how)

    def __repr__(self) -> str:
        return (
            f"HessianOperator(n={self.shape[0]}, params={len(self.params)} tensors, "
            f"dtype={self.dtype}, device={self.device}, hvp_mode={self.hvp_mode!r})"
        )
