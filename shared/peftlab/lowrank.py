"""Low rank, numerically: why a rank-r update can be enough.

The best rank-k approximation of a matrix in Frobenius norm is its truncated
SVD (Eckart-Young), with error sqrt(sum of the squared dropped singular values).
"""

from __future__ import annotations

import torch


def rank_k_approximation(matrix: torch.Tensor, k: int) -> torch.Tensor:
    """U_k diag(S_k) V_k^T, the closest rank-k matrix to `matrix` (d_out, d_in)."""
    if not 1 <= k <= min(matrix.shape):
        raise ValueError(f"k={k} must lie in [1, {min(matrix.shape)}] for a {tuple(matrix.shape)} matrix.")
    U, S, Vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    return (U[:, :k] * S[:k]) @ Vh[:k]  # (d_out, k) @ (k, d_in)


def relative_errors(matrix: torch.Tensor, ranks: list[int]) -> dict[int, float]:
    """{k: ||M - M_k||_F / ||M||_F} for each rank k."""
    norm = torch.linalg.matrix_norm(matrix.float())
    return {k: float(torch.linalg.matrix_norm(matrix.float() - rank_k_approximation(matrix, k)) / norm) for k in ranks}


def low_rank_plus_noise(d_out: int, d_in: int, true_rank: int, noise: float = 0.01, seed: int = 0) -> torch.Tensor:
    """A matrix that is rank `true_rank` plus small noise, like a fine-tuning update."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(d_out, true_rank, generator=g)
    A = torch.randn(true_rank, d_in, generator=g)
    return B @ A / true_rank**0.5 + noise * torch.randn(d_out, d_in, generator=g)

