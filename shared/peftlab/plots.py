"""Plots the course shows: loss curves and low-rank approximation error."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
        matplotlib.use("Agg")  # headless (CI, papermill) unless a notebook set inline
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path | None):
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_loss(history, path: str | Path | None = None, title: str = "Training loss"):
    """Train loss per logged step, held-out loss per epoch. Returns the figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if history.train:
        steps, losses = zip(*history.train)
        ax.plot(steps, losses, label="train loss", marker=".")
    if history.eval:
        steps, _, losses = zip(*history.eval)
        ax.plot(steps, losses, label="held-out loss", marker="o")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    return _save(fig, path)


def plot_rank_errors(errors: dict[int, float], true_rank: int | None = None, path: str | Path | None = None):
    """Relative approximation error against rank k (log scale)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks, errs = zip(*sorted(errors.items()))
    ax.semilogy(ks, errs, marker="o")
    if true_rank:
        ax.axvline(true_rank, color="grey", linestyle="--", label=f"true rank {true_rank}")
        ax.legend()
    ax.set_xlabel("rank k of the approximation")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title("Truncated SVD: error against rank")
    return _save(fig, path)


def plot_sweep(rows, x: str, y: str, group: str, path: str | Path | None = None, logx: bool = True, title: str = ""):
    """One line per value of `group`: y against x (rows are dicts or a DataFrame)."""
    plt = _pyplot()
    records = rows.to_dict("records") if hasattr(rows, "to_dict") else list(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name in dict.fromkeys(r[group] for r in records):
        pts = sorted((r[x], r[y]) for r in records if r[group] == name)
        ax.plot(*zip(*pts), marker="o", label=str(name))
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title or f"{y} against {x}")
    ax.legend(title=group, fontsize=8)
    return _save(fig, path)


def plot_interpolation(rows, measures: list[str], path: str | Path | None = None, xlabel: str = "mixing weight",
                       title: str = "Mixing two adapters"):
    """Each measure (a key of the row dicts, 0..1) against the row's 'weight'."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for m in measures:
        ax.plot([r["weight"] for r in rows], [r[m] for r in rows], marker="o", label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of outputs in the style")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)
