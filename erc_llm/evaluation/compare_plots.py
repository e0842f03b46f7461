"""The figures of `erc-llm compare`: per-class F1 bars and row-normalised confusion matrices, written as PNG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from erc_llm.io import atomic_write_bytes

_PNG_DPI = 120


def render_png(figure: Any, path: Path, trim_margins: bool = True) -> None:
    """Rasterise a matplotlib Figure with the Agg canvas and write it atomically.

    ``trim_margins`` crops to the drawn content, which costs a second draw; figures laid out by hand skip it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PNG_DPI, bbox_inches="tight" if trim_margins else None)
    atomic_write_bytes(path, buffer.getvalue())


def plot_per_class_f1(
    path: Path,
    labels: Sequence[str],
    supports: Sequence[int],
    names: Sequence[str],
    f1_by_system: np.ndarray,
    title: str,
) -> None:
    """Grouped bar chart: one group per label, one bar per system, F1 in percent."""
    from matplotlib.figure import Figure

    n_systems = len(names)
    figure = Figure(figsize=(max(7.0, 1.1 * len(labels) + 0.6 * n_systems), 4.8))
    axes = figure.add_subplot(1, 1, 1)
    bar_width = 0.8 / n_systems
    positions = np.arange(len(labels), dtype=float)
    for system_index, name in enumerate(names):
        offsets = positions - 0.4 + bar_width * (system_index + 0.5)
        bars = axes.bar(offsets, 100.0 * f1_by_system[system_index], width=bar_width, label=name)
        if n_systems <= 4 and len(labels) <= 10:
            axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(positions)
    axes.set_xticklabels([f"{label}\n(n={support})" for label, support in zip(labels, supports)], fontsize=9)
    axes.set_ylabel("F1 (%)")
    axes.set_ylim(0, 120)  # headroom so the legend never hides a bar
    axes.set_yticks(range(0, 101, 20))
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    axes.legend(fontsize=8, loc="upper right", ncols=min(n_systems, 3))
    render_png(figure, path)


def plot_confusion(path: Path, labels: Sequence[str], confusion: np.ndarray, title: str) -> None:
    """Row-normalised confusion matrix heat map with each cell's count and row share annotated."""
    from matplotlib.figure import Figure

    n_labels = len(labels)
    row_totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        row_shares = np.where(row_totals > 0, confusion / np.maximum(row_totals, 1), 0.0)
    # Laid out by hand, in inches, so one draw suffices (cropping to content would draw twice).
    label_chars = max(len(label) for label in labels)
    cell = 0.75 if n_labels <= 10 else 0.55
    matrix_side = max(4.0, cell * n_labels)
    left = 0.7 + 0.085 * label_chars
    bottom = 0.55 + 0.065 * label_chars
    right, top, colorbar_gap, colorbar_width = 1.1, 0.55, 0.2, 0.2
    width = left + matrix_side + colorbar_gap + colorbar_width + right
    height = bottom + matrix_side + top
    figure = Figure(figsize=(width, height))
    axes = figure.add_axes((left / width, bottom / height, matrix_side / width, matrix_side / height))
    colorbar_axes = figure.add_axes(
        (
            (left + matrix_side + colorbar_gap) / width,
            bottom / height,
            colorbar_width / width,
            matrix_side / height,
        )
    )
    image = axes.imshow(row_shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    figure.colorbar(image, cax=colorbar_axes, label="share of gold row")
    font_size = 8 if n_labels <= 8 else 6
    for row in range(n_labels):
        for column in range(n_labels):
            share = row_shares[row, column]
            axes.text(
                column,
                row,
                f"{int(confusion[row, column])}\n{100.0 * share:.0f}%",
                ha="center",
                va="center",
                fontsize=font_size,
                color="white" if share > 0.55 else "black",
            )
    axes.set_xticks(range(n_labels))
    axes.set_yticks(range(n_labels))
    axes.set_xticklabels(labels, rotation=45, ha="right")
    axes.set_yticklabels(labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(title)
    render_png(figure, path, trim_margins=False)
