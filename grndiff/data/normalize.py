"""Expression values: validation, counts-vs-log detection, CP10k + log1p, per-gene scaling.

Detection rule (:func:`detect_kind`), applied to the stored values of the matrix:

* any NaN, ±inf or negative value → refused (not counts, not log1p; scaled data are not accepted);
* every value an integer → ``"counts"`` (log1p-normalised data are essentially never integers);
* otherwise, maximum ≤ ``LOG_MAX`` (20) → ``"log"``: log1p(CP10k) peaks near 9–10, log1p(CPM)
  near 14, log1p of raw counts near 12;
* otherwise refused: normalised but not log-transformed (CP10k, CPM), or something else.

Scaling (:class:`GeneScaler`): ``(x - mean) / max(std, min_std)`` per gene, on the log1p values.
``min_std = 0.1`` (log1p units). Why: one UMI in a typical 1,000-UMI cell is log1p(10) ≈ 2.4,
so a gene seen in one cell of 10,000 has std ≈ 0.024 and that cell a z-score near 100, an outlier
that dominates the flow's loss; the floor caps it near 24 and only touches genes detected in fewer
than ~0.2 % of cells (expressed genes in Kang 2018 have std 0.35–2.5). Genes constant in training
get std = min_std and scale to exactly 0, never inf.
"""
from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch

log = logging.getLogger("grndiff")

KINDS = ("counts", "log")
LOG_MAX = 20.0
MIN_STD = 0.1
_CHUNK = 1 << 24  # values checked at a time: bounded temporary memory on large matrices


def _values(X) -> np.ndarray:
    """The stored values (the non-zeros of a sparse matrix, everything of a dense one), flat."""
    if sp.issparse(X):
        return np.asarray(X.data).ravel()
    return np.asarray(X).ravel()


def _examples(v: np.ndarray, mask: np.ndarray, n: int = 3) -> str:
    return ", ".join(f"{x:g}" for x in v[mask][:n])


def check_values(X, *, field: str = "adata.X") -> tuple[float, int]:
    """Refuse NaN, ±inf and negative values.

    Parameters
    ----------
    X
        Expression (N, G), dense or scipy sparse.
    field
        Name used in error messages (``"adata.layers['counts']"``).

    Returns
    -------
    max, n_non_integer
        The largest value and how many stored values are not integers.
    """
    v = _values(X)
    if v.size and not np.issubdtype(v.dtype, np.number):
        raise TypeError(f"{field} has dtype {v.dtype}; expected numbers")
    n_nan = n_inf = n_neg = n_frac = 0
    vmax, ex = 0.0, ""
    for s in range(0, v.size, _CHUNK):
        c = v[s:s + _CHUNK]
        nan, inf = np.isnan(c), np.isinf(c)
        neg = c < 0
        n_nan, n_inf, n_neg = n_nan + int(nan.sum()), n_inf + int(inf.sum()), n_neg + int(neg.sum())
        if neg.any() and not ex:
            ex = _examples(c, neg)
        if not (nan.any() or inf.any()):
            vmax = max(vmax, float(c.max()) if c.size else 0.0)
            n_frac += int(np.count_nonzero(c != np.round(c)))
    is_counts = "'counts'" in field  # then advising layer='counts' would send the user in a circle
    if n_nan or n_inf:
        fix = ("Raw counts are never NaN or infinite: re-read or recompute this layer from the source files"
               if is_counts else "Fix the upstream step that produced them, or pass the raw counts layer "
               "(layer='counts')")
        raise ValueError(f"{field} has {n_nan} NaN and {n_inf} infinite values; expression must be finite. {fix}.")
    if n_neg and v.dtype.kind == "i" and v.dtype.itemsize <= 2:
        raise ValueError(f"{field} is stored as {v.dtype} and has {n_neg} negative values (e.g. {ex}): counts above "
                         f"{np.iinfo(v.dtype).max} wrapped around to negative numbers when converted to {v.dtype}. "
                         f"Re-read the counts as float32 or int32 (a lossless type) instead of "
                         f"{field} = {field}.astype(np.{v.dtype})")
    if n_neg:
        fix = ("Raw counts are never negative: re-read this layer from the source files" if is_counts else
               "Pass the counts layer (layer='counts') or the log1p layer saved before scaling")
        raise ValueError(f"{field} has {n_neg} negative values (e.g. {ex}); grndiff needs raw counts or log1p-"
                         f"normalised values, not scaled/centred data (sc.pp.scale). {fix}.")
    return vmax, n_frac


def detect_kind(X, *, field: str = "adata.X", declared: str | None = None) -> str:
    """Whether ``X`` holds raw counts or log1p-normalised values (rule in the module docstring).

    Parameters
    ----------
    X
        Expression (N, G), dense or scipy sparse.
    field
        Name used in messages.
    declared
        ``"counts"`` / ``"log"`` when the user declared the kind; checked instead of guessed.

    Returns
    -------
    ``"counts"`` or ``"log"``.
    """
    vmax, n_frac = check_values(X, field=field)
    return decide_kind(vmax, n_frac, _values(X).size, field=field, declared=declared)


def decide_kind(vmax: float, n_frac: int, n: int, *, field: str = "adata.X", declared: str | None = None) -> str:
    """:func:`detect_kind`'s rule from the summary of :func:`check_values` (largest value, number
    of non-integer values, ``n`` stored values), so a streamed matrix is judged the same way."""
    if vmax == 0:
        raise ValueError(f"{field} holds only zeros; pass the layer with expression values")
    if declared == "counts":
        if n_frac:
            raise ValueError(f"{field} is declared as raw counts (value_kind='counts' or a layer named 'counts') but "
                             f"{n_frac:,} of {n:,} stored values are not integers. If it holds log1p-normalised "
                             "values, pass value_kind='log'; if these are corrected counts (e.g. SoupX), round them: "
                             f"{field}.data = np.round({field}.data)")
        return "counts"
    if declared == "log":
        if vmax > LOG_MAX:
            raise ValueError(f"{field} is declared log1p-normalised (value_kind='log') but its maximum is {vmax:g} "
                             f"(> {LOG_MAX:g}); log-transform it first (sc.pp.normalize_total; sc.pp.log1p) or "
                             "pass value_kind='counts' for raw counts")
        if n_frac == 0:
            log.warning("grndiff: %s is declared log1p but holds only integers; are these raw counts?", field)
        return "log"
    if declared is not None:
        raise ValueError(f"value_kind must be one of {KINDS} or None, got {declared!r}")
    if n_frac == 0:
        return "counts"
    if vmax <= LOG_MAX:
        return "log"
    raise ValueError(f"{field} is neither raw counts ({n_frac:,} non-integer values) nor log1p-normalised (maximum "
                     f"{vmax:g} > {LOG_MAX:g}): it looks normalised but not log-transformed. Run sc.pp.log1p on it, "
                     "or pass the raw counts layer (layer='counts').")


def log1p_cp10k(X, target_sum: float = 1e4):
    """Library-size normalise each cell to ``target_sum`` and take log1p.

    Parameters
    ----------
    X
        Raw counts (N, G), dense or scipy sparse.
    target_sum
        Counts per cell after normalisation (1e4: CP10k).

    Returns
    -------
    (N, G) float32: CSR if ``X`` is sparse (sparsity kept: log1p(0) = 0), else a dense array.
    Cells without counts stay all-zero.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        total = np.asarray(X.sum(axis=1, dtype=np.float64)).ravel()  # (N,)
        scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
        data = np.log1p(np.asarray(X.data, dtype=np.float64) * np.repeat(scale, np.diff(X.indptr)))
        out = sp.csr_matrix((data.astype(np.float32), X.indices.copy(), X.indptr.copy()), shape=X.shape)
        out.eliminate_zeros()
        return out
    X = np.asarray(X, dtype=np.float64)
    total = X.sum(axis=1, keepdims=True)  # (N, 1)
    scale = np.divide(target_sum, total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(X * scale).astype(np.float32)


def log1p_normalized_copy(adata, layer: str | None = None, *, value_kind: str | None = None, target_sum: float = 1e4):
    """A new AnnData whose ``X`` is log1p(CP10k) of ``layer`` (or the layer itself if already log1p).

    Used to put real and generated cells in the same space for evaluation; ``obs`` and ``var``
    are copied, layers are not. The input is not modified.

    Returns
    -------
    AnnData (N, G) with float32 ``X`` (sparse stays sparse).
    """
    import anndata as ad

    X = adata.layers[layer] if layer is not None else adata.X
    field = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
    found = detect_kind(X, field=field, declared=value_kind)
    if found == "counts":
        X = log1p_cp10k(X, target_sum)
    else:
        X = sp.csr_matrix(X, dtype=np.float32) if sp.issparse(X) else np.asarray(X, dtype=np.float32)
    return ad.AnnData(X=X, obs=adata.obs.copy(), var=adata.var.copy())


class GeneScaler:
    """Per-gene standardisation ``(x - mean) / std`` for the flow, and its exact inverse.

    Parameters
    ----------
    mean, std
        (G,) per-gene statistics; ``std`` is floored at ``min_std`` (see the module docstring).
    min_std
        Floor on ``std`` in log1p units (default 0.1).
    """

    def __init__(self, mean=None, std=None, min_std: float = MIN_STD):
        self.min_std = float(min_std)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32)  # (G,)
        self.std = None if std is None else np.maximum(np.asarray(std, dtype=np.float32), self.min_std)  # (G,)

    @property
    def n_genes(self) -> int:
        self._check_fitted()
        return int(self.mean.shape[0])

    def fit(self, X) -> GeneScaler:
        """Fit on log1p values (N, G), dense or sparse; a sparse matrix is never densified."""
        if sp.issparse(X):
            X = sp.csr_matrix(X)
            n, g = X.shape
            s1 = np.zeros(g, dtype=np.float64)
            s2 = np.zeros(g, dtype=np.float64)
            for a in range(0, X.nnz, _CHUNK):  # column sums of x and x² over the stored values
                d = np.asarray(X.data[a:a + _CHUNK], dtype=np.float64)
                idx = X.indices[a:a + _CHUNK]
                s1 += np.bincount(idx, weights=d, minlength=g)
                s2 += np.bincount(idx, weights=d * d, minlength=g)
        else:
            X = np.asarray(X, dtype=np.float64)
            n, g = X.shape
            s1, s2 = X.sum(0), (X * X).sum(0)
        if n == 0:
            raise ValueError("cannot fit the gene scaler on 0 cells")
        mean = s1 / n
        var = np.maximum(s2 / n - mean * mean, 0.0)  # float64: cancellation is negligible on log1p values
        n_floor = int((np.sqrt(var) < self.min_std).sum())
        if n_floor:
            log.info("grndiff: %d of %d genes have std < %g (rare or constant); floored", n_floor, g, self.min_std)
        self.mean = mean.astype(np.float32)
        self.std = np.maximum(np.sqrt(var), self.min_std).astype(np.float32)
        return self

    def _stats_like(self, x):
        self._check_fitted()
        if isinstance(x, torch.Tensor):
            return (torch.as_tensor(self.mean, device=x.device, dtype=x.dtype),
                    torch.as_tensor(self.std, device=x.device, dtype=x.dtype))
        return self.mean, self.std

    def transform(self, x):
        """log1p values (B, G) → scaled (B, G); numpy (float32) or torch (same device/dtype)."""
        if sp.issparse(x):
            x = x.toarray()
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x, dtype=np.float32)
        self._check_width(x)
        mean, std = self._stats_like(x)
        return (x - mean) / std

    def inverse(self, x):
        """Scaled (B, G) → log1p values (B, G); numpy or torch."""
        if not isinstance(x, torch.Tensor):
            x = np.asarray(x, dtype=np.float32)
        self._check_width(x)
        mean, std = self._stats_like(x)
        return x * std + mean

    def _check_fitted(self):
        if self.mean is None:
            raise RuntimeError("GeneScaler is not fitted; call .fit(X) first")

    def _check_width(self, x):
        if x.shape[-1] != self.n_genes:
            raise ValueError(f"expected {self.n_genes} genes (last axis), got array of shape {tuple(x.shape)}")

    def to_state(self) -> dict:
        """Plain types: ``{"mean": FloatTensor (G,), "std": FloatTensor (G,), "min_std": float}``."""
        self._check_fitted()
        return {"mean": torch.from_numpy(self.mean.copy()), "std": torch.from_numpy(self.std.copy()),
                "min_std": self.min_std}

    @classmethod
    def from_state(cls, state: dict) -> GeneScaler:
        as_np = lambda v: v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)  # noqa: E731
        return cls(as_np(state["mean"]), as_np(state["std"]), min_std=state.get("min_std", MIN_STD))


# ---------------------------------------------------------------------------- counts from log1p values
COUNT_MODELS = ("nearest", "poisson")
N_LIBRARY_QUANTILES = 101  # the library-size distribution a model keeps (0 %, 1 %, …, 100 %)


def library_quantiles(totals) -> list[float]:
    """The 0 %, 1 %, …, 100 % quantiles of the counts per cell ``totals`` (N,): what a model keeps
    to draw the library sizes of generated cells (:func:`draw_library_sizes`)."""
    totals = np.asarray(totals, dtype=np.float64).ravel()
    totals = totals[totals > 0]
    if not totals.size:
        return [1e4] * N_LIBRARY_QUANTILES
    return np.quantile(totals, np.linspace(0.0, 1.0, N_LIBRARY_QUANTILES)).tolist()


def draw_library_sizes(quantiles, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` library sizes (n,) drawn from the distribution whose quantiles are ``quantiles``
    (inverse-CDF sampling, linear between the stored quantiles)."""
    q = np.asarray(quantiles, dtype=np.float64)
    return np.interp(rng.uniform(0.0, 1.0, n), np.linspace(0.0, 1.0, q.size), q)


def estimate_library_sizes(X, quantiles, *, target_sum: float = 1e4, percentile: float = 25.0,
                           rng: np.random.Generator | None = None) -> np.ndarray:
    """Each cell's library size, read off its own log1p values (N,).

    A real cell's values lie on a lattice: ``expm1(x) = k · target_sum / L`` for counts ``k``, and
    in shallow data most detected genes hold one or two counts. So ``target_sum / L`` is estimated
    as the ``percentile`` of ``expm1(x)`` over the cell's clearly detected values (above half the
    lowest one-count level of the training cells), and ``L`` is clipped to the training cells' 1–99 %
    range. A cell with no detected value gets a depth drawn from ``quantiles``. Rounding with the
    cell's own depth matters: a depth drawn independently of the cell puts its one-count genes off
    the lattice (kang2018's own held-out cells, rounded at drawn depths: energy distance 0.002 →
    0.51).

    Parameters
    ----------
    X
        (N, G) log1p-normalised values.
    quantiles
        The training cells' counts per cell (:func:`library_quantiles`, 101 values).
    """
    q = np.asarray(quantiles, dtype=np.float64)
    X = np.clip(np.asarray(X, dtype=np.float64), 0.0, None)
    tau = 0.5 * np.log1p(target_sum / q[-1])  # half the one-count level of the deepest training cell
    level = np.where(X > tau, np.expm1(X), np.nan)  # (N, G)
    found = np.isfinite(level).any(axis=1)
    out = draw_library_sizes(q, X.shape[0], rng or np.random.default_rng(0))
    if found.any():
        one = np.nanpercentile(level[found], percentile, axis=1)  # ≈ target_sum / L
        out[found] = target_sum / np.maximum(one, 1e-12)
    lo, hi = q[min(1, q.size - 1)], q[max(q.size - 2, 0)]
    return np.clip(out, lo, hi)


def counts_from_log1p(X, library_size, *, model: str = "nearest", target_sum: float = 1e4,
                      rng: np.random.Generator | None = None) -> np.ndarray:
    """Counts for cells given as log1p(CP``target_sum``) values: the inverse of :func:`log1p_cp10k`.

    Parameters
    ----------
    X
        (N, G) log1p-normalised values; negative values are read as 0.
    library_size
        Counts per cell: a number, or (N,) one per cell.
    model
        ``"nearest"``: the expected count ``expm1(x) · library / target_sum`` rounded to the nearest
        integer, the value a real cell on that lattice would hold (a generated value below half a
        count becomes 0). ``"poisson"``: a Poisson draw with that mean (adds sampling noise on
        top of the cell's own: more zeros than real cells at low counts).
    rng
        The random generator for ``"poisson"``.

    Returns
    -------
    (N, G) float32 non-negative integers.
    """
    if model not in COUNT_MODELS:
        raise ValueError(f"count model {model!r}: choose one of {COUNT_MODELS}")
    X = np.clip(np.asarray(X, dtype=np.float64), 0.0, None)
    lib = np.asarray(library_size, dtype=np.float64)
    lib = lib.reshape(-1, 1) if lib.ndim else lib
    mean = np.expm1(X) * (lib / target_sum)  # (N, G)
    if model == "nearest":
        return np.floor(mean + 0.5).astype(np.float32)
    return (rng or np.random.default_rng(0)).poisson(mean).astype(np.float32)
