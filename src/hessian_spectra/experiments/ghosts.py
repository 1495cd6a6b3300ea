"""Ghost copies of plain (un-reorthogonalized) Lanczos, counted against a reference.

The study reported that "by iteration 45 the top 20 eigenvalues had all
converged", reading the 20 largest Ritz values of 45 plain Lanczos steps. In
floating point the plain three-term recurrence loses orthogonality once a Ritz
value converges and then finds the same eigenvalue again (Paige 1971): those
"ghost" copies filled the study's list (6 copies of 168.01 at step 45). This
module runs the shared kernel `hessian_spectra.lanczos` with `reorth="none"` or
`"full"` and counts, for each reference eigenvalue, how many of the top Ritz
values sit on it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

import hessian_spectra as hs
from hessian_spectra import history as hkeys
from hessian_spectra.operators import LinearOperator


@dataclass(frozen=True)
class GhostCount:
    """How the top Ritz values of one Lanczos run match a reference spectrum.

    Attributes:
        num_steps: Lanczos steps (= HVPs) taken.
        reorth: "none" (plain recurrence) or "full".
        ritz_top: the k largest Ritz values, descending.
        reference: the reference eigenvalues (descending) they are matched to.
        copies: for each reference eigenvalue, how many of `ritz_top` lie within
            `rtol` relative of it (matched to the nearest reference value).
        rtol: the relative tolerance of a match.
        unmatched: how many of `ritz_top` match no reference eigenvalue.
        orthogonality_loss: max |Q^T Q - I| of the Lanczos basis.
        history: per step: `step`, `matvecs`, `seconds` (wall, since the start)
            and `ritz_top` (the k largest Ritz values so far, descending).
    """

    num_steps: int
    reorth: str
    ritz_top: list[float]
    reference: list[float]
    copies: list[int]
    rtol: float
    unmatched: int
    orthogonality_loss: float
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def distinct(self) -> int:
        """Reference eigenvalues found at least once among the top Ritz values."""
        return int(sum(c > 0 for c in self.copies))

    @property
    def ghosts(self) -> int:
        """Extra copies: matched Ritz values beyond the first of each eigenvalue."""
        return int(sum(max(c - 1, 0) for c in self.copies))

    @property
    def top_copies(self) -> int:
        """Copies of the largest reference eigenvalue."""
        return int(self.copies[0]) if self.copies else 0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(distinct=self.distinct, ghosts=self.ghosts, top_copies=self.top_copies)
        return out


def count_copies(values: np.ndarray, reference: np.ndarray, rtol: float) -> tuple[list[int], int]:
    """Match each value to its nearest reference value; count matches within `rtol`.

    Returns:
        (copies per reference value, number of values that matched none).
    """
    values = np.asarray(values, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if reference.size == 0:
        raise ValueError("the reference spectrum is empty")
    copies = [0] * reference.size
    unmatched = 0
    for v in values:
        j = int(np.argmin(np.abs(reference - v)))
        if abs(v - reference[j]) <= rtol * abs(reference[j]):
            copies[j] += 1
        else:
            unmatched += 1
    return copies, unmatched


def lanczos_ghosts(
    op: LinearOperator,
    reference: np.ndarray,
    *,
    num_steps: int = 45,
    k: int = 20,
    reorth: str = "none",
    rtol: float = 1e-3,
    seed: int = 0,
) -> GhostCount:
    """Run `num_steps` Lanczos steps and count copies of the reference among the top k.

    Args:
        op: the symmetric operator.
        reference: reference eigenvalues, descending (e.g. a converged `eigsh`).
        num_steps: Lanczos steps (the study read its list at 45).
        k: how many of the largest Ritz values to read (the study read 20).
        reorth: "none" (the study's recurrence) or "full".
        rtol: relative distance within which a Ritz value is a copy.
        seed: seed of the Gaussian starting vector.
    """
    if reorth not in ("none", "full"):
        raise ValueError(f"reorth must be 'none' or 'full', got {reorth!r}")
    if k > num_steps:
        raise ValueError(f"k={k} Ritz values need at least k Lanczos steps, got {num_steps}")
    gen = torch.Generator().manual_seed(int(seed))
    v0 = torch.randn(op.shape[0], generator=gen, dtype=torch.float64).to(op.dtype)
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()

    def record(proc: Any) -> bool:
        theta, _, _ = proc.ritz()
        history.append(
            {
                "step": proc.num_steps,
                hkeys.MATVECS: proc.num_matvecs,
                hkeys.SECONDS: time.perf_counter() - t0,
                "ritz_top": [float(x) for x in np.sort(theta)[::-1][:k]],
            }
        )
        return False

    dec = hs.lanczos(
        op,
        v0,
        num_steps,
        reorth=reorth,  # type: ignore[arg-type]
        generator=gen,
        callback=record,
    )
    theta, _ = dec.ritz(eigvals_only=True)
    top = np.sort(theta)[::-1][:k]
    ref = np.sort(np.asarray(reference, dtype=np.float64))[::-1]
    copies, unmatched = count_copies(top, ref, rtol)
    return GhostCount(
        num_steps=dec.num_steps,
        reorth=reorth,
        ritz_top=[float(x) for x in top],
        reference=[float(x) for x in ref],
        copies=copies,
        rtol=float(rtol),
        unmatched=unmatched,
        orthogonality_loss=float(dec.orthogonality_loss),
        history=history,
    )
