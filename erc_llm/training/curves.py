"""Training curves: training loss and dev scores per evaluation, plotted into the run folder at the end of training.

The numbers are the trainer's own log history (`state.log_history`): `loss` from each logging step and
`eval_weighted_f1` / `eval_macro_f1` from each dev evaluation (label scoring). The same logs reach TensorBoard
when the recipe sets `report_to: tensorboard` (installed by the `dev` or `curves` extra; `tensorboard --logdir
<output_dir>/runs`). `TrainingCurvesCallback` writes `<output_dir>/training_curves.png` on the main process.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

CURVES_FILENAME = "training_curves.png"


def curve_points(log_history: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """{series: [(step, value), ...]} for training loss and the dev scores found in a trainer's log history."""
    series: dict[str, list[tuple[int, float]]] = {"loss": [], "eval_weighted_f1": [], "eval_macro_f1": []}
    for entry in log_history:
        step = int(entry.get("step", 0))
        for key in series:
            value = entry.get(key)
            if isinstance(value, (int, float)):
                series[key].append((step, float(value)))
    return series


def plot_curves(points: Mapping[str, list[tuple[int, float]]], title: str = "") -> bytes:
    """PNG bytes: training loss (left) and dev weighted/macro-F1 in percent (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if points.get("loss"):
        steps, values = zip(*points["loss"])
        left.plot(steps, values, color="tab:blue", linewidth=1.2)
    left.set(title="training loss (label tokens)", xlabel="step", ylabel="loss")
    for key, name, style in (("eval_weighted_f1", "weighted-F1", "o-"), ("eval_macro_f1", "macro-F1", "s--")):
        if points.get(key):
            steps, values = zip(*points[key])
            right.plot(steps, [100 * v for v in values], style, label=name, markersize=4)
    right.set(title="dev (label scoring)", xlabel="step", ylabel="%")
    if points.get("eval_weighted_f1") or points.get("eval_macro_f1"):
        right.legend(loc="best", fontsize=8)
    for axis in (left, right):
        axis.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_curves(output_dir: str | Path, log_history: Sequence[Mapping[str, Any]], title: str = "") -> Path:
    """Write `<output_dir>/training_curves.png` from a log history; return its path."""
    from erc_llm.io import atomic_write_bytes

    target = Path(output_dir) / CURVES_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, plot_curves(curve_points(log_history), title))
    return target


class TrainingCurvesCallback(TrainerCallback):
    """At the end of training, plot loss and dev scores into the run folder (main process only)."""

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and args.output_dir:
            write_curves(args.output_dir, state.log_history, title=Path(args.output_dir).name)
        return control
