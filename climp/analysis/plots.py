"""PNG plots of Hessian analyses, one or several models overlaid: spectral density (log scale),
1D loss slice, 2D loss contours."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Results = Mapping[str, Mapping[str, Any]]


def plot_density(results: Results, path: Path) -> Path:
    """Smoothed eigenvalue density of each model on a log scale, zero and each model's
    negative-mass threshold marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        grid, density = np.asarray(r["density"]["grid"]), np.asarray(r["density"]["density"])
        floor = density.max() * 1e-8
        negative = r.get("negative_mass")
        note = "" if negative is None else (f"\nfraction below -{negative['threshold_rel']:g} max|λ| (dotted): "
                                            f"{negative['fraction']:.2g}, bounds [{negative['bounds'][0]:.2g}, "
                                            f"{negative['bounds'][1]:.2g}]")
        (line,) = ax.semilogy(grid, np.maximum(density, floor), label=label + note)
        if negative is not None and negative.get("threshold"):
            ax.axvline(-negative["threshold"], color=line.get_color(), linewidth=0.8, linestyle=":")
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density (log)")
    ax.set_title("Hessian eigenvalue density (SLQ)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_landscape_1d(results: Results, path: Path) -> Path:
    """Loss along the first slice direction for each model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, r in results.items():
        land = r["landscape"]
        ax.plot(land["coordinates"], land["loss"], marker=".", label=label)
    ax.set_xlabel("step along " + ("top eigenvector" if land["directions"] == "eigen" else "filter-normalised direction"))
    ax.set_ylabel("loss")
    ax.set_title("1D loss landscape")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_landscape_2d(results: Results, path: Path) -> Path:
    """Loss contours on the plane of the two slice directions, one panel per model."""
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False)
    for ax, (label, r) in zip(axes[0], results.items()):
        land = r["landscape"]
        coords = np.asarray(land["coordinates"])
        contour = ax.contourf(coords, coords, np.asarray(land["loss"]).T, levels=20, cmap="viridis")
        ax.contour(coords, coords, np.asarray(land["loss"]).T, levels=20, colors="k", linewidths=0.3)
        fig.colorbar(contour, ax=ax, label="loss")
        ax.plot(0, 0, "r+")
        ax.set_title(label)
        names = ("eigenvector 1", "eigenvector 2") if land["directions"] == "eigen" else ("direction 1", "direction 2")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_results(results: Results, out_dir: Path | str) -> List[Path]:
    """Write density.png and, when the analyses include a slice, landscape_1d.png or
    landscape_2d.png into out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_density(results, out / "density.png")]
    with_landscape = {k: r for k, r in results.items() if "landscape" in r}
    modes = {r["landscape"]["mode"] for r in with_landscape.values()}
    if "1d" in modes:
        paths.append(plot_landscape_1d({k: r for k, r in with_landscape.items() if r["landscape"]["mode"] == "1d"},
                                       out / "landscape_1d.png"))
    if "2d" in modes:
        paths.append(plot_landscape_2d({k: r for k, r in with_landscape.items() if r["landscape"]["mode"] == "2d"},
                                       out / "landscape_2d.png"))
    return paths
