"""The Fréchet distance between two Gaussians, exact, in float64:

    FID = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)

The hard term is tr sqrt(S1 S2) = sum of sqrt(lambda) over the eigenvalues of a symmetric PSD matrix
with the same spectrum as S1 S2. We never call scipy.linalg.sqrtm (seconds to minutes at d=2048,
and one release returned large imaginary parts) and never take eigvalsh of the non-symmetric
S1 S2 (eigvalsh reads one triangle and is simply wrong there). Instead, with any factor S1 = L L^T:

    spectrum(S1 S2) = spectrum(L^T S2 L)          (symmetric, PSD)

- both sets have n <= d images: S_i = F_i^T F_i with F_i the centred rows / sqrt(n_i - 1), and
  tr sqrt(S1 S2) is the nuclear norm (sum of singular values) of the n1 x n2 cross matrix C = F1 F2^T,
  taken as the square roots of the eigenvalues of the symmetric m x m matrix C C^T (or C^T C), m the
  smaller set: ~9x faster than an SVD of C at n = 1,000. Eigenvalues under m * eps * lambda_max are
  round-off of zero (C always has one zero singular value: both factors' rows sum to 0) and count 0;
  a singular value that small contributes at most ~sqrt(m * eps) * sigma_max to the sum;
- one set small: eigenvalues of the n1 x n1 matrix F1 S2 F1^T;
- both large: L = Cholesky factor of S1 (an eigendecomposition when S1 is singular), eigenvalues of
  L^T S2 L.
Round-off negatives of the eigenvalues are clamped to 0, and so is a final value of -1e-12.

``device``: where the float64 linear algebra runs, and in which array library (``_Linalg``): a torch
device (the FID's: a job's CUDA GPU, or the CPU, the default) or ``NUMPY`` (numpy's LAPACK on the CPU,
which never imports torch: the FRD's, whose job may not load torch at all). The algorithm is the same
in both; every route gives the same number on each within round-off (tests/test_cuda.py checks the GPU
against the CPU at 1e-9 relative, tests/test_frechet.py numpy against torch at 1e-12).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .stats import Gaussian

if TYPE_CHECKING:
    import torch

CPU = "cpu"  # torch on the CPU
NUMPY = "numpy"  # numpy on the CPU, without torch


class _Linalg:
    """The array library of one computation: numpy (``NUMPY``) or torch on a device. numpy 2 and torch
    share the calls the algorithm makes (``linalg.eigvalsh``, ``linalg.eigh``, ``clip(min=)``, ``sqrt``,
    ``where``, ``stack``, ``finfo``, ``.mT``); what differs is here."""

    def __init__(self, device: str | torch.device):
        if str(device) == NUMPY:
            self.xp, self.device = np, None
        else:
            import torch

            self.xp, self.device = torch, torch.device(device)

    def array(self, a: np.ndarray):
        a = np.ascontiguousarray(a, dtype=np.float64)
        return a if self.device is None else self.xp.from_numpy(a).to(self.device)

    def host(self, a) -> np.ndarray:
        return a if self.device is None else a.cpu().numpy()

    def cholesky(self, s):
        """(L, failed) for a matrix or a stack of them, as torch.linalg.cholesky_ex: ``failed`` true where
        a matrix is not positive definite (its L is then unusable)."""
        if self.device is not None:
            L, info = self.xp.linalg.cholesky_ex(s)
            return L, info != 0
        stack = s.reshape(-1, *s.shape[-2:])
        L, failed = np.zeros_like(stack), np.zeros(len(stack), dtype=bool)
        for k, m in enumerate(stack):
            try:
                L[k] = np.linalg.cholesky(m)
            except np.linalg.LinAlgError:
                failed[k] = True
        return L.reshape(s.shape), failed.reshape(s.shape[:-2])


def _sqrt_sum(xp, eigenvalues) -> float:
    return float(xp.sqrt(xp.clip(eigenvalues, min=0)).sum())


def _nuclear_norms(xp, c):
    """Sum of the singular values of each (..., n1, n2) matrix, from the eigenvalues of the smaller
    Gram matrix (module docstring)."""
    g = c @ c.mT if c.shape[-2] <= c.shape[-1] else c.mT @ c
    lam = xp.linalg.eigvalsh(g)
    floor = xp.clip(lam[..., -1:], min=0) * (g.shape[-1] * xp.finfo(g.dtype).eps)
    return xp.sqrt(xp.where(lam > floor, lam, xp.zeros_like(lam))).sum(-1)


def _psd_factor(la: _Linalg, sigma):
    """L with L L^T = sigma."""
    L, failed = la.cholesky(sigma)
    if not bool(failed):
        return L
    lam, v = la.xp.linalg.eigh(sigma)  # singular (e.g. repeated images): symmetric square root
    return v * la.xp.sqrt(la.xp.clip(lam, min=0))


def trace_sqrt_product(g1: Gaussian, g2: Gaussian, device: str | torch.device = CPU) -> float:
    """tr sqrt(S1 S2) for two Gaussians, choosing the cheapest exact route."""
    la = _Linalg(device)
    xp = la.xp
    f1, f2 = g1.factor(), g2.factor()
    if f1 is not None and f2 is not None:
        return float(_nuclear_norms(xp, la.array(f1) @ la.array(f2).T))
    if f2 is not None:  # symmetric in the two sets: make set 1 the small one
        f1, g2 = f2, g1
    if f1 is not None:
        F = la.array(f1)
        return _sqrt_sum(xp, xp.linalg.eigvalsh(F @ la.array(g2.covariance()) @ F.T))
    L = _psd_factor(la, la.array(g1.covariance()))
    return _sqrt_sum(xp, xp.linalg.eigvalsh(L.T @ la.array(g2.covariance()) @ L))


def _fid(g1: Gaussian, g2: Gaussian, trace_sqrt: float) -> float:
    if g1.mu.shape != g2.mu.shape:
        raise ValueError(f"feature dimensions differ: {g1.mu.shape} vs {g2.mu.shape}")
    diff = g1.mu - g2.mu
    return max(float(diff @ diff) + g1.trace() + g2.trace() - 2.0 * trace_sqrt, 0.0)


def frechet_distance(g1: Gaussian, g2: Gaussian, device: str | torch.device = CPU) -> float:
    return _fid(g1, g2, trace_sqrt_product(g1, g2, device))


def frechet_distances(pairs: list[tuple[Gaussian, Gaussian]], group: int = 8,
                      device: str | torch.device = CPU) -> list[float]:
    """Many Fréchet distances (one per MC pass), batched per group of ``group`` passes: passes of
    two large sets share one batched Cholesky, matmul and eigvalsh; passes of two small sets of the
    same sizes one batched cross-matrix Gram eigvalsh; mixed cases take the per-pair routes above."""
    la = _Linalg(device)
    xp = la.xp
    out: list[float | None] = [None] * len(pairs)
    large = [i for i, (a, b) in enumerate(pairs) if a.sigma is not None and b.sigma is not None]
    for start in range(0, len(large), group):
        idx = large[start:start + group]
        s1 = xp.stack([la.array(pairs[i][0].sigma) for i in idx])
        s2 = xp.stack([la.array(pairs[i][1].sigma) for i in idx])
        L, failed = la.cholesky(s1)
        for k in np.flatnonzero(la.host(failed)).tolist():  # singular: symmetric square root instead
            L[k] = _psd_factor(la, s1[k])
        lam = xp.linalg.eigvalsh(L.mT @ s2 @ L)
        for k, i in enumerate(idx):
            out[i] = _fid(*pairs[i], _sqrt_sum(xp, lam[k]))
    small: dict[tuple[int, int], list[int]] = {}
    for i, (a, b) in enumerate(pairs):
        shape = (a.factor_rows(), b.factor_rows())
        if None not in shape:
            small.setdefault(shape, []).append(i)
    for idx_all in small.values():
        for start in range(0, len(idx_all), group):
            idx = idx_all[start:start + group]
            f1 = xp.stack([la.array(pairs[i][0].factor()) for i in idx])
            f2 = xp.stack([la.array(pairs[i][1].factor()) for i in idx])
            norms = la.host(_nuclear_norms(xp, f1 @ f2.mT))
            for k, i in enumerate(idx):
                out[i] = _fid(*pairs[i], float(norms[k]))
    for i, (a, b) in enumerate(pairs):
        if out[i] is None:
            out[i] = frechet_distance(a, b, device)
    return out
