"""How good are generated or predicted cells? Numpy/scipy/POT cores and one AnnData entry point.

- :func:`evaluate` — the generation-fidelity protocol (``docs/evaluation.md``) on two AnnData.
- distances on ``(B, D)`` arrays: :func:`energy_distance`, :func:`mmd_rbf`,
  :func:`wasserstein2`, :func:`classifier_auc`.
- gene space ``(B, G)``: :func:`mean_pearson`, :func:`var_pearson`, :func:`zero_frac_error`,
  :func:`marker_overlap`, :func:`tf_target_corr`.
- perturbations: :func:`pearson_delta`, :func:`pearson_delta_all`, :func:`direction_accuracy`,
  :func:`split_half_ceiling`, :func:`evaluate_perturbation`, :func:`top_changes` (a table).
- the shared PC space: :func:`fit_pca` → :class:`PCAProjection`.
"""
from .distances import classifier_auc, energy_distance, mmd_rbf, wasserstein2
from .evaluate import ALL_METRICS, evaluate, to_records
from .gene_level import marker_overlap, mean_pearson, rank_markers, tf_target_corr, var_pearson, zero_frac_error
from .pca import PCAProjection, fit_pca
from .perturbation import (
    direction_accuracy,
    evaluate_perturbation,
    pearson_delta,
    pearson_delta_all,
    split_half_ceiling,
    top_changes,
)

__all__ = ["evaluate", "to_records", "ALL_METRICS",
           "energy_distance", "mmd_rbf", "wasserstein2", "classifier_auc",
           "mean_pearson", "var_pearson", "zero_frac_error", "marker_overlap", "rank_markers", "tf_target_corr",
           "pearson_delta", "pearson_delta_all", "direction_accuracy", "split_half_ceiling",
           "evaluate_perturbation", "top_changes", "fit_pca", "PCAProjection"]
