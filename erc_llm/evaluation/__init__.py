"""Shared evaluation layer: metrics, bootstrap statistics, run directories and system comparison."""

from erc_llm.evaluation.bootstrap import bootstrap_ci, bootstrap_metric_samples, ci_description, paired_bootstrap
from erc_llm.evaluation.compare import REFERENCE_RESULTS, ReferenceResult, compare_runs, register_cli
from erc_llm.evaluation.metrics import METRIC_NAMES, compute_metrics
from erc_llm.evaluation.rundir import (
    METRICS_FILENAME,
    METRICS_SCHEMA,
    PREDICTIONS_FILENAME,
    PredictionRecord,
    RunFormatError,
    evaluate_run,
    read_metrics,
    read_predictions,
    write_metrics,
    write_predictions,
)

__all__ = [
    "METRICS_FILENAME",
    "METRICS_SCHEMA",
    "METRIC_NAMES",
    "PREDICTIONS_FILENAME",
    "REFERENCE_RESULTS",
    "PredictionRecord",
    "ReferenceResult",
    "RunFormatError",
    "bootstrap_ci",
    "bootstrap_metric_samples",
    "ci_description",
    "compare_runs",
    "compute_metrics",
    "evaluate_run",
    "paired_bootstrap",
    "read_metrics",
    "read_predictions",
    "register_cli",
    "write_metrics",
    "write_predictions",
]
