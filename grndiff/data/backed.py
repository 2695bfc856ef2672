"""Out-of-core training data: cells streamed from an ``.h5ad`` on disk, never loaded whole.

The expression matrix of an ``.h5ad`` written by anndata is a CSR group (``X`` or
``layers/<name>``) with three 1-D datasets ``data``, ``indices``, ``indptr``. A *contiguous* block
of rows ``[a, b)`` is one read of ``indptr[a:b+1]`` and one read of each of
``data[indptr[a]:indptr[b]]`` and ``indices[...]``, so the reader only ever does large sequential
reads. Random access per cell would be one seek per cell; instead, shuffling is done at two
levels (the "block shuffle" used by out-of-core loaders such as scDataset, Gao et al. 2025):

1. the order of blocks of ``block_size`` consecutive cells is permuted every epoch, and
2. ``blocks_per_fetch`` blocks are read together, their cells permuted among themselves, and cut
   into batches.

Memory is bounded by ``block_size × blocks_per_fetch`` cells, independent of the number of cells
in the file. The per-gene scaler statistics are computed by streaming the same blocks
(:func:`streaming_scaler`). Under DDP each rank reads a disjoint, equally sized share of the blocks.

::

    scaler = streaming_scaler("big.h5ad", value_kind="counts")
    dm = BackedDataModule("big.h5ad", scaler, value_kind="counts", batch_size=64,
                          cond={"cell_type": codes})   # (N,) int64 codes, 0 = null token

Only :mod:`numpy`, :mod:`scipy`, :mod:`h5py`, :mod:`torch` and the normalisation helpers of this
package are used; the model is never imported.
"""
from __future__ import annotations

import logging
import os

import lightning as L
import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .normalize import MIN_STD, GeneScaler, check_values, decide_kind, log1p_cp10k

log = logging.getLogger("grndiff")

KINDS = ("counts", "log")


class BackedCSR:
    """Row-block reader of a CSR matrix stored in an ``.h5ad`` file (opened read-only, lazily).

    Parameters
    ----------
    path
        ``.h5ad`` file.
    layer
        ``None`` for ``X``, else the name of a layer in ``layers/``.

    The file handle is opened on first use in each process, so the reader can be pickled into
    ``DataLoader`` workers and DDP processes.
    """

    def __init__(self, path: str | os.PathLike, layer: str | None = None):
        self.path, self.layer = os.fspath(path), layer
        self.key = "X" if layer is None else f"layers/{layer}"
        self._file = None
        g = self._group()
        self.shape = tuple(int(s) for s in g.attrs["shape"])
        self.nnz = int(g["indptr"][-1])
        self.close()  # reopened lazily in each process

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None  # h5py handles do not pickle; reopened in the worker
        return state

    @property
    def n_obs(self) -> int:
        return self.shape[0]

    @property
    def n_vars(self) -> int:
        return self.shape[1]

    def _group(self):
        if self._file is None:
            import h5py  # noqa: PLC0415

            self._file = h5py.File(self.path, "r")
        f = self._file
        if self.key not in f:
            where = "adata.X" if self.layer is None else f"adata.layers[{self.layer!r}]"
            raise KeyError(f"{self.path}: no {where} in this file (layers: {list(f.get('layers', {}))})")
        g = f[self.key]
        enc = g.attrs.get("encoding-type", "")
        enc = enc.decode() if isinstance(enc, bytes) else enc
        if enc != "csr_matrix":
            raise ValueError(f"{self.path}: {self.key} is stored as {enc or 'a dense array'}, but backed training "
                             "reads CSR rows. Rewrite it as CSR: adata.X = scipy.sparse.csr_matrix(adata.X); "
                             "adata.write_h5ad(path)")
        return g

    def read_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as a CSR matrix (stop − start, G): three contiguous reads."""
        start, stop = max(int(start), 0), min(int(stop), self.n_obs)
        g = self._group()
        indptr = np.asarray(g["indptr"][start:stop + 1], dtype=np.int64)
        a, b = int(indptr[0]), int(indptr[-1])
        data = g["data"][a:b]
        indices = g["indices"][a:b]
        return sp.csr_matrix((data, indices, indptr - a), shape=(stop - start, self.n_vars))

    def blocks(self, block_size: int):
        """Yield ``(start, csr)`` over consecutive row blocks, in file order."""
        for s in range(0, self.n_obs, block_size):
            yield s, self.read_rows(s, s + block_size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _to_log(block: sp.csr_matrix, value_kind: str, target_sum: float) -> sp.csr_matrix:
    """A block of stored values → (n, G) float32 CSR log1p values."""
    if value_kind == "counts":
        return log1p_cp10k(block, target_sum)
    return sp.csr_matrix(block, dtype=np.float32)


def streaming_scaler(path, layer: str | None = None, *, value_kind: str = "counts", block_size: int = 20_000,
                     rows=None, target_sum: float = 1e4, min_std: float = MIN_STD) -> GeneScaler:
    """Per-gene mean / std of the log1p values, accumulated block by block (float64 sums).

    Parameters
    ----------
    path, layer
        The ``.h5ad`` and its layer (``None``: ``X``).
    value_kind
        ``"counts"`` (CP10k + log1p applied per block) or ``"log"`` (values used as stored).
    block_size
        Rows read at a time; memory ~ ``block_size × G × density`` values.
    rows
        Optional ``(start, stop)`` range of cells to fit on (default all).
    target_sum, min_std
        As in :class:`~grndiff.data.ExpressionProcessor`.

    Returns
    -------
    A fitted :class:`~grndiff.data.GeneScaler` (G genes), identical (up to float rounding) to
    ``GeneScaler().fit`` on the whole matrix.
    """
    if value_kind not in KINDS:
        raise ValueError(f"value_kind must be one of {KINDS}, got {value_kind!r}")
    reader = BackedCSR(path, layer)
    start, stop = (0, reader.n_obs) if rows is None else (int(rows[0]), min(int(rows[1]), reader.n_obs))
    G = reader.n_vars
    s1, s2, n = np.zeros(G), np.zeros(G), 0
    for s in range(start, stop, block_size):
        X = _to_log(reader.read_rows(s, min(s + block_size, stop)), value_kind, target_sum)
        d = X.data.astype(np.float64)
        s1 += np.bincount(X.indices, weights=d, minlength=G)
        s2 += np.bincount(X.indices, weights=d * d, minlength=G)
        n += X.shape[0]
    reader.close()
    if n == 0:
        raise ValueError(f"{path}: no cells in rows [{start}, {stop})")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0.0))
    return GeneScaler(mean, std, min_std=min_std)


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class BackedCellDataset(IterableDataset):
    """Batches of scaled cells streamed from a backed CSR, block-shuffled (module docstring).

    Parameters
    ----------
    reader
        A :class:`BackedCSR`.
    scaler
        Fitted :class:`~grndiff.data.GeneScaler` (e.g. from :func:`streaming_scaler`).
    batch_size
        ``B`` cells per batch.
    rows
        ``(start, stop)``: the range of cells this dataset covers.
    value_kind, target_sum
        How stored values become log1p values (``"counts"``: CP10k + log1p).
    cond
        ``{name: (N,) or (N, S) array}`` condition codes of ALL cells of the file (small: held in
        memory), sliced per batch like :class:`~grndiff.data.CellDataset`.
    pert
        Optional (N, S) int64 perturbed-gene indices (-1 padded) of all cells: the batches' ``pert``.
    block_size, blocks_per_fetch
        Shuffling granularity: contiguous reads of ``block_size`` cells, ``blocks_per_fetch`` of
        them mixed per fetch. ``block_size=1`` is a full per-cell shuffle (slow on disk).
    shuffle, drop_last, seed
        Epoch ``e`` uses ``numpy.random.default_rng([seed, e])``; the epoch advances after each
        pass or through :meth:`set_epoch`.

    Each DDP rank (``torch.distributed``) and each ``DataLoader`` worker takes a disjoint share of
    the blocks; every rank yields the same number of batches, so collective ops stay in step.
    """

    def __init__(self, reader: BackedCSR, scaler: GeneScaler, batch_size: int = 64, *, rows=None,
                 value_kind: str = "counts", target_sum: float = 1e4, cond: dict | None = None, pert=None,
                 block_size: int = 1024, blocks_per_fetch: int = 8, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0):
        if value_kind not in KINDS:
            raise ValueError(f"value_kind must be one of {KINDS}, got {value_kind!r}")
        if scaler.n_genes != reader.n_vars:
            raise ValueError(f"the scaler has {scaler.n_genes} genes but {reader.path} has {reader.n_vars}")
        self.reader, self.scaler, self.value_kind, self.target_sum = reader, scaler, value_kind, float(target_sum)
        self.batch_size, self.block_size = int(batch_size), int(block_size)
        self.blocks_per_fetch = int(blocks_per_fetch)
        self.rows = (0, reader.n_obs) if rows is None else (int(rows[0]), min(int(rows[1]), reader.n_obs))
        self.cond = {k: np.asarray(v) for k, v in (cond or {}).items()}
        self.pert = None if pert is None else np.asarray(pert, dtype=np.int64)
        for k, v in {**self.cond, **({} if self.pert is None else {"pert": self.pert})}.items():
            if v.shape[0] != reader.n_obs:
                raise ValueError(f"{k!r} has {v.shape[0]} rows but the file has {reader.n_obs} cells")
        self.shuffle, self.drop_last, self.seed, self.epoch = shuffle, drop_last, int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _block_starts(self) -> np.ndarray:
        starts = np.arange(self.rows[0], self.rows[1], self.block_size, dtype=np.int64)
        if _rank_world()[1] > 1 and (self.rows[1] - self.rows[0]) % self.block_size:
            starts = starts[:-1]  # DDP: full blocks only, so every rank yields the same number of batches
        return starts

    def _my_blocks(self, rng: np.random.Generator) -> np.ndarray:
        """This rank's (and worker's) block starts for the epoch: equal counts on every rank."""
        starts = self._block_starts()
        if self.shuffle:
            starts = rng.permutation(starts)
        rank, world = _rank_world()
        per_rank = len(starts) // world  # the remainder is dropped: equal shares
        mine = starts[rank * per_rank:(rank + 1) * per_rank]
        info = get_worker_info()
        if info is not None:
            mine = mine[info.id::info.num_workers]
        return mine

    def __len__(self) -> int:
        """Batches per epoch on this rank without workers (may differ by one when the file's short
        last block moves between fetches)."""
        starts = self._block_starts()
        n_blocks = len(starts) // _rank_world()[1]
        sizes = np.minimum(starts[:n_blocks] + self.block_size, self.rows[1]) - starts[:n_blocks]
        total = 0
        for f in range(0, n_blocks, self.blocks_per_fetch):
            c = int(sizes[f:f + self.blocks_per_fetch].sum())
            total += c // self.batch_size if self.drop_last else -(-c // self.batch_size)
        return total

    def _scaled(self, X: sp.csr_matrix) -> torch.Tensor:
        dense = _to_log(X, self.value_kind, self.target_sum).toarray()  # (B, G)
        return torch.from_numpy(np.ascontiguousarray(self.scaler.transform(dense), dtype=np.float32))

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch if self.shuffle else 0])
        if self.shuffle:
            self.epoch += 1
        mine = self._my_blocks(rng)
        B = self.batch_size
        for f in range(0, len(mine), self.blocks_per_fetch):
            starts = mine[f:f + self.blocks_per_fetch]
            if self.shuffle:
                starts = np.sort(starts)  # read in file order: sequential I/O
            parts, rows = [], []
            for s in starts:
                stop = min(s + self.block_size, self.rows[1])
                parts.append(self.reader.read_rows(s, stop))
                rows.append(np.arange(s, stop, dtype=np.int64))
            X = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]  # (n, G) raw
            rows = np.concatenate(rows)
            order = rng.permutation(rows.size) if self.shuffle else np.arange(rows.size)
            n_batches = rows.size // B if self.drop_last else -(-rows.size // B)
            for b in range(n_batches):
                sel = order[b * B:(b + 1) * B]
                out = {"x": self._scaled(X[sel]),
                       "cond": {k: torch.from_numpy(np.ascontiguousarray(v[rows[sel]])) for k, v in self.cond.items()}}
                if self.pert is not None:
                    out["pert"] = torch.from_numpy(np.ascontiguousarray(self.pert[rows[sel]]))
                yield out


class BackedDataModule(L.LightningDataModule):
    """Train / validation loaders streamed from an ``.h5ad`` on disk (memory independent of N).

    Parameters
    ----------
    path, layer, value_kind
        The file, its layer (``None``: ``X``), and whether it holds ``"counts"`` or ``"log"`` values.
    scaler
        Fitted :class:`~grndiff.data.GeneScaler`; ``None`` computes it with
        :func:`streaming_scaler` on the training rows.
    batch_size, block_size, blocks_per_fetch, seed
        See :class:`BackedCellDataset`.
    val_fraction
        The LAST ``val_fraction`` of the rows (whole blocks) are the validation cells: a range,
        so both parts stay contiguous on disk. Shuffle the file once beforehand if its rows are
        sorted by a covariate.
    cond, pert
        ``{name: (N,) codes}`` and (N, S) perturbed-gene indices for all cells of the file, e.g.
        from ``ExpressionProcessor.conditions.encode(obs)`` fitted on the obs table.
    num_workers
        ``DataLoader`` workers; each opens its own file handle and reads its own blocks.
    """

    def __init__(self, path: str | os.PathLike, scaler: GeneScaler | None = None, *, layer: str | None = None,
                 value_kind: str = "counts", batch_size: int = 64, val_fraction: float = 0.0, cond: dict | None = None,
                 pert=None, block_size: int = 1024, blocks_per_fetch: int = 8, seed: int = 0, num_workers: int = 0,
                 target_sum: float = 1e4):
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.reader = BackedCSR(path, layer)
        N = self.reader.n_obs
        n_val = int(round(val_fraction * N / block_size)) * block_size if val_fraction > 0 else 0
        n_val = min(max(n_val, block_size if val_fraction > 0 else 0), N - 1)
        self.train_rows, self.val_rows = (0, N - n_val), (N - n_val, N)
        if scaler is None:
            scaler = streaming_scaler(path, layer, value_kind=value_kind, rows=self.train_rows, target_sum=target_sum)
        self.scaler, self.num_workers = scaler, int(num_workers)
        common = dict(value_kind=value_kind, target_sum=target_sum, cond=cond, pert=pert, block_size=block_size,
                      blocks_per_fetch=blocks_per_fetch, seed=seed)
        self.train_set = BackedCellDataset(self.reader, scaler, batch_size, rows=self.train_rows, shuffle=True,
                                           drop_last=True, **common)
        self.val_set = BackedCellDataset(self.reader, scaler, batch_size, rows=self.val_rows, shuffle=False,
                                         drop_last=False, **common) if n_val else None
        log.info("grndiff: backed %s: %d training, %d validation cells", path, N - n_val, n_val)

    def _loader(self, ds) -> DataLoader:
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set)

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self._loader(self.val_set)


# ------------------------------------------------- streamed checks (used by the processor and setup_anndata)
BLOCK = 20_000  # rows read at a time by the streamed checks


def streams(adata, layer: str | None) -> bool:
    """True when the expression of ``adata`` stays on disk (backed, read from ``X``)."""
    return bool(getattr(adata, "isbacked", False)) and layer is None


def detect_kind_streamed(path, *, layer: str | None = None, field: str = "adata.X", declared: str | None = None) -> str:
    """:func:`~grndiff.data.detect_kind` of a matrix on disk, block by block (same rule, same errors)."""
    reader = BackedCSR(path, layer)
    vmax, n_frac, n = 0.0, 0, 0
    try:
        for _, block in reader.blocks(BLOCK):
            v, f = check_values(block, field=field)
            vmax, n_frac, n = max(vmax, v), n_frac + f, n + block.nnz
    finally:
        reader.close()
    return decide_kind(vmax, n_frac, n, field=field, declared=declared)


def fit_scaler(processor, adata):
    """The processor's per-gene scaler, streamed from the backed file."""
    return streaming_scaler(adata.filename, processor.layer, value_kind=processor.value_kind,
                            target_sum=processor.target_sum, min_std=processor.min_std)


def library_totals(adata, setup: dict) -> np.ndarray | None:
    """Counts per cell (N,) of the registered layer, streamed when backed; ``None`` for log1p data
    (their library sizes are gone)."""
    if setup.get("value_kind", "counts") != "counts":
        return None
    layer = setup.get("layer")
    if streams(adata, layer):
        reader = BackedCSR(adata.filename, None)
        try:
            return np.concatenate([np.asarray(b.sum(1)).ravel() for _, b in reader.blocks(BLOCK)])
        finally:
            reader.close()
    X = adata.layers[layer] if layer else adata.X
    return np.asarray(X.sum(1)).ravel()

