"""Plots the course shows: loss curves, low-rank approximation error, sweeps, and serving speed.

`pyplot()` and `save_figure()` are the two steps every plot shares; other modules'
plots (methods, bench) use them too.
"""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot, headless (Agg) unless a notebook set the inline backend."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("module://matplotlib_inline.backend_inline",):
        matplotlib.use("Agg")  # headless (CI, papermill) unless a notebook set inline
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path | None):
    """Tight layout; saved at `path` (folders made) unless None. Returns the figure."""
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def plot_loss(history, path: str | Path | None = None, title: str = "Training loss"):
    """Train loss per logged step, held-out loss per epoch. Returns the figure."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_rank_errors(errors: dict[int, float], true_rank: int | None = None, path: str | Path | None = None):
    """Relative approximation error against rank k (log scale)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ks, errs = zip(*sorted(errors.items()))
    ax.semilogy(ks, errs, marker="o")
    if true_rank:
        ax.axvline(true_rank, color="grey", linestyle="--", label=f"true rank {true_rank}")
        ax.legend()
    ax.set_xlabel("rank k of the approximation")
    ax.set_ylabel("relative Frobenius error")
    ax.set_title("Truncated SVD: error against rank")
    return save_figure(fig, path)


def plot_sweep(rows, x: str, y: str, group: str, path: str | Path | None = None, logx: bool = True, title: str = ""):
    """One line per value of `group`: y against x (rows are dicts or a DataFrame)."""
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_interpolation(rows, measures: list[str], path: str | Path | None = None, xlabel: str = "mixing weight",
                       title: str = "Mixing two adapters"):
    """Each measure (a key of the row dicts, 0..1) against the row's 'weight', with error bars where the rows
    carry its interval ('<task>: 95% interval' beside '<task>: <measure>', as multitask.interpolate writes)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for m in measures:
        x, y = [r["weight"] for r in rows], [r[m] for r in rows]
        key = m.split(":")[0] + ": 95% interval"
        if all(key in r for r in rows):
            err = [[max(0.0, v - r[key][0]) for v, r in zip(y, rows)], [max(0.0, r[key][1] - v) for v, r in zip(y, rows)]]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{m} (95% interval)")
        else:
            ax.plot(x, y, marker="o", label=m)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of outputs in the style")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_throughput(records: list[dict], path: str | Path | None = None):
    """tokens/s against batch size, one line per variant, one panel per KV cache setting (min-max as bars)."""
    plt = pyplot()
    settings = [c for c in (True, False) if any(r["use_cache"] == c for r in records)]
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.6), squeeze=False)
    for ax, cache in zip(axes[0], settings):
        for name in dict.fromkeys(r["variant"] for r in records):
            rows = sorted((r for r in records if r["variant"] == name and r["use_cache"] == cache),
                          key=lambda r: r["batch_size"])
            med = [r["tokens_per_s"]["median"] for r in rows]
            err = [[m - r["tokens_per_s"]["min"] for m, r in zip(med, rows)],
                   [r["tokens_per_s"]["max"] - m for m, r in zip(med, rows)]]
            ax.errorbar([r["batch_size"] for r in rows], med, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("generated tokens/s")
        ax.set_title(f"KV cache {'on' if cache else 'off'}")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_cache_curve(curve: dict, path: str | Path | None = None):
    """Milliseconds between consecutive tokens against the token's position, KV cache on and off."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for key in ("on", "off"):
        gaps = curve[key]["gap_ms"]
        ax.plot(range(2, len(gaps) + 2), gaps, marker=".", label=f"KV cache {key}")
    ax.set_xlabel("position of the generated token")
    ax.set_ylabel("ms since the previous token")
    ax.set_title(f"{curve['variant']}, batch {curve['batch_size']}, prompt {curve['prompt_tokens']} tokens")
    ax.legend()
    return save_figure(fig, path)
