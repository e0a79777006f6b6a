"""The paper's analysis figures as plot-friendly records (long format, one JSON list per
file, what `dvc plots` reads) and one PNG of the CKA heatmaps for a quick look.

Layers are 1-based block indices everywhere, as in the pairing record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from pipeline.core.artifacts import atomic_path


def cka_records(matrix: Sequence[Sequence[float]]) -> list[dict]:
    """matrix[i][j] = CKA(source layer i+1, target layer j+1) -> rows source_layer, target_layer, cka."""
    return [{"source_layer": i + 1, "target_layer": j + 1, "cka": round(float(v), 6)}
            for i, row in enumerate(matrix) for j, v in enumerate(row)]


def attribution_records(scores: Sequence[float]) -> list[dict]:
    return [{"source_layer": i + 1, "score": float(s)} for i, s in enumerate(scores)]


def pairing_records(pairing: Mapping) -> list[dict]:
    """One row per target block; `interpolate` pairings also give the mixed position a + λ."""
    rows = [{"target_layer": k + 1, "source_layer": int(s)} for k, s in enumerate(pairing["pairs"])]
    for row, it in zip(rows, pairing.get("interp") or []):
        row["source_mix"] = it["a"] + it["lam"]
    return rows


def loss_records(curves: Mapping[str, Sequence[float]]) -> list[dict]:
    """{stage key: per-step losses} -> rows layer, step, loss (the custom template facets by layer)."""
    return [{"layer": key, "step": step, "loss": float(loss)}
            for key, losses in curves.items() for step, loss in enumerate(losses)]


def paired_cka(matrix: Sequence[Sequence[float]], pairs: Sequence[int]) -> float:
    """Mean CKA of each target block with the source layer it was paired with."""
    return sum(matrix[s - 1][k] for k, s in enumerate(pairs)) / len(pairs)


def save_heatmaps(path: Path, panels: Mapping[str, Sequence[Sequence[float]]],
                  pairs: Sequence[int] | None = None, title: str = "") -> None:
    """Side-by-side source x target CKA heatmaps (shared colour scale 0..1), pairing overlaid."""
    import matplotlib

    matplotlib.use("Agg")  # stages run headless
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.2, 4.4), squeeze=False,
                             sharey=True, layout="constrained")
    image = None
    for i, (ax, (name, matrix)) in enumerate(zip(axes[0], panels.items())):
        n_s, n_t = len(matrix), len(matrix[0])
        image = ax.imshow(matrix, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                          interpolation="nearest", extent=(0.5, n_t + 0.5, 0.5, n_s + 0.5))
        if pairs:
            ax.plot(range(1, len(pairs) + 1), pairs, "o", color="white", markersize=4, markeredgecolor="black",
                    label="pairing")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(name)
        ax.set_xlabel("target layer")
        if i == 0:
            ax.set_ylabel("source layer")
            if pairs:
                ax.legend(loc="upper left", fontsize=7)
    fig.colorbar(image, ax=axes[0].tolist(), label="linear CKA (debiased)")
    if title:
        fig.suptitle(title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
