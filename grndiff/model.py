"""``GRNDiff``: the scanpy-facing model class (AnnData in, AnnData out).

Three thin layers, as in scvi-tools: torch math (:mod:`grndiff.nn`, :mod:`grndiff.flow`), the
training plan (:class:`grndiff.train.FlowModule`), and this class bound to an AnnData.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import torch

from . import __version__, flow
from .data import ExpressionProcessor, GRNDataModule, get_setup, setup_anndata
from .graph import GeneGraph
from .train import FlowModule, LossHistory

log = logging.getLogger("grndiff")

FORMAT = "grndiff-model"
FORMAT_VERSION = 1
_NET_KEYS = ("hidden", "heads", "depth", "token_depth", "cell_token", "n_learned_modules", "init_learned_from_prior",
             "mode", "mlp_ratio", "value_embedding", "cond_dropout", "perturbation_hops")


class GRNDiff:
    """Graph-based gene-regulatory rectified-flow model of single-cell expression.

    Parameters
    ----------
    adata
        Registered with :meth:`setup_anndata`. Not modified.
    prior
        Regulatory graph: a shipped name (``"collectri"``, ``"dorothea"``), a path, a long
        ``source,target,weight`` DataFrame, a :class:`~grndiff.graph.GeneGraph`, or ``None``
        (no gene–gene edges: self-loops only).
    modules
        Gene sets pooled into pathway tokens (``"hallmark"``, ``"reactome"``, path, DataFrame) or
        ``None``.
    backbone
        ``"grn"`` (graph transformer), or a baseline: ``"mlp"``, ``"gene_tokens"``, ``"modules_only"``.
    organism
        For shipped priors.
    graph_kwargs
        Extra options for :meth:`GeneGraph.from_prior` (``add_reverse``, ``isolated``, module sizes...).
    source
        ``"noise"`` (generate from N(0, I)), ``"gaussian"`` (generate from a Gaussian per group of
        categorical conditions, fitted to the training cells: the flow starts as that low-rank
        baseline and learns what it misses; see :class:`grndiff.flow.GaussianSource`) or
        ``"control"`` (transport control cells; needs ``perturbation_key``/``control`` or
        ``control_obs`` in setup).
    source_comps, source_residual, source_coupling, source_space
        Principal axes, residual-noise scale, training coupling and the space of the axes
        (``"log"``: log1p units, or ``"scaled"``) of the ``"gaussian"`` source
        (see :class:`~grndiff.train.FlowModule`).
    time_schedule, ot_pairing, lr, weight_decay, warmup_steps, ema_decay, prediction
        Flow and optimiser options (see :class:`~grndiff.train.FlowModule`).
    **net_kwargs
        Architecture: ``hidden`` (32), ``heads`` (4), ``depth`` (2), ``token_depth`` (2),
        ``cell_token`` (True), ``n_learned_modules`` (0), ``mode`` (``"shared"``),
        ``cond_dropout`` (0.1) ...
    """

    setup_anndata = staticmethod(setup_anndata)

    def __init__(self, adata: ad.AnnData, prior: Any = "collectri", modules: Any = "hallmark",
                 backbone: str = "grn", *, organism: str = "human", graph_kwargs: dict | None = None,
                 source: str = "gaussian", time_schedule: str = "logit_normal", ot_pairing: bool = False,
                 lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 100, ema_decay: float = 0.999,
                 token_aux_weight: float = 0.1, match_keys: list[str] | None = None, prediction: str | None = None,
                 source_comps: int = 100, source_residual: float = 0.5, source_coupling: str = "lowrank",
                 source_space: str = "log", **net_kwargs):
        unknown = set(net_kwargs) - set(_NET_KEYS)
        if unknown:
            raise TypeError(f"unknown model options {sorted(unknown)}; architecture options are {list(_NET_KEYS)}")
        self.setup = get_setup(adata)
        self._adata = adata  # a reference for .train(); never modified
        self.processor = ExpressionProcessor().fit(adata)
        self.graph = self._build_graph(adata, prior, modules, organism, graph_kwargs or {})
        self.config = {
            "backbone": backbone, "prior": _describe(prior), "modules": _describe(modules), "organism": organism,
            "source": source, "time_schedule": time_schedule, "ot_pairing": ot_pairing, "lr": lr,
            "weight_decay": weight_decay, "warmup_steps": warmup_steps, "ema_decay": ema_decay,
            "token_aux_weight": token_aux_weight, "prediction": prediction, "source_comps": source_comps,
            "source_residual": source_residual, "source_coupling": source_coupling,
            "source_space": source_space, "match_keys": list(match_keys) if match_keys else None, "net_kwargs": dict(net_kwargs),
        }
        self.module = self._build_module()
        self._ensure_source(adata)  # an untrained model samples its source; train() refits on its training split
        self.history: pd.DataFrame = pd.DataFrame()
        self.is_trained = False
        self._library_size = _median_library_size(adata, self.setup)

    # ----------------------------------------------------------- construction
    def _build_graph(self, adata, prior, modules, organism, kw) -> GeneGraph:
        if isinstance(prior, GeneGraph):
            if list(prior.genes) != list(adata.var_names):
                raise ValueError("the GeneGraph's genes differ from adata.var_names; build it with "
                                 "GeneGraph.from_prior(prior, adata.var_names)")
            return prior
        symbols = None
        if self.setup.get("symbol_key"):
            symbols = adata.var[self.setup["symbol_key"]].astype(str).tolist()
        if prior is None:  # no regulatory edges: self-loops only, gene sets still allowed
            prior = pd.DataFrame({"source": [], "target": [], "weight": []})
            kw = {"allow_empty": True, **kw}
        return GeneGraph.from_prior(prior, list(adata.var_names), symbols=symbols, organism=organism,
                                    modules=modules, **kw)

    def _build_module(self) -> FlowModule:
        c = self.config
        return FlowModule(module_inputs(self.graph, self.processor), backbone=c["backbone"], net_kwargs=c["net_kwargs"], source=c["source"],
                          time_schedule=c["time_schedule"], ot_pairing=c["ot_pairing"], lr=c["lr"],
                          weight_decay=c["weight_decay"], warmup_steps=c["warmup_steps"], ema_decay=c["ema_decay"],
                          token_aux_weight=c.get("token_aux_weight", 0.1), prediction=c.get("prediction"),
                          source_comps=c.get("source_comps", 30), source_residual=c.get("source_residual", 0.5),
                          source_coupling=c.get("source_coupling", "independent"),
                          source_space=c.get("source_space", "scaled"))  # saved before the option: scaled

    @property
    def var_names(self) -> list[str]:
        return list(self.processor.genes)

    def __repr__(self) -> str:
        n_par = sum(p.numel() for p in self.module.net.parameters())
        return (f"GRNDiff(backbone={self.config['backbone']!r}, genes={self.graph.n_genes}, "
                f"edges={self.graph.n_edges}, modules={self.graph.n_modules}, parameters={n_par:,}, "
                f"trained={self.is_trained})")

    # ---------------------------------------------------------------- training
    def train(self, max_epochs: int | None = None, *, max_steps: int = -1, batch_size: int = 64,
              val_fraction: float = 0.1, split_seed: int = 0, stratify_key: str | None = None,
              holdout: dict | None = None, accelerator: str = "auto", devices: Any = 1,
              precision: Any = None, seed: int = 0, progress_bar: bool = True, logger: Any = False,
              default_root_dir: str | None = None, enable_checkpointing: bool = False, callbacks=None,
              adata: ad.AnnData | None = None, **trainer_kwargs) -> "GRNDiff":
        """Train with Lightning (CPU or GPU, ``accelerator="auto"``).

        ``adata`` defaults to the AnnData the model was built on (a reference; it is not modified).
        ``holdout`` ({obs key: [values]}) removes those groups from training. Returns ``self``.
        """
        if adata is None:
            adata = getattr(self, "_adata", None)
        if adata is None:
            raise ValueError("pass the training AnnData: model.train(adata=adata, ...)")
        if max_epochs is None and max_steps in (-1, None):
            max_epochs = _default_epochs(adata.n_obs)
        L.seed_everything(seed, workers=True, verbose=False)
        dm = self.datamodule(adata, batch_size=batch_size, val_fraction=val_fraction, split_seed=split_seed,
                             stratify_key=stratify_key, holdout=holdout)
        history = LossHistory()
        if self.module.source_dist is not None:  # refit on exactly the training split (holdout/val excluded)
            self.module.source_dist.fitted.fill_(False)
        trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator=accelerator, devices=devices,
                            precision=precision, logger=logger, enable_progress_bar=progress_bar,
                            enable_checkpointing=enable_checkpointing, enable_model_summary=False,
                            default_root_dir=default_root_dir, gradient_clip_val=1.0,
                            callbacks=[history] + list(callbacks or []), deterministic=False, **trainer_kwargs)
        trainer.fit(self.module, datamodule=dm)
        self.module.cpu()
        self.history = pd.concat([self.history, pd.DataFrame(history.records)], ignore_index=True)
        self.is_trained = True
        return self

    def datamodule(self, adata: ad.AnnData, **kw) -> GRNDataModule:
        """The :class:`~grndiff.data.GRNDataModule` this model trains on."""
        cell_data = self.processor.prepare(adata)
        return GRNDataModule(cell_data, self.processor.scaler, adata.obs, source=self.config["source"],
                             match_keys=self.config["match_keys"], control_mask=self.processor.control_mask(adata),
                             **kw)

    # ---------------------------------------------------------------- sampling
    def _encode_conditions(self, conditions, n: int) -> tuple[dict, torch.Tensor | None, pd.DataFrame]:
        if conditions is None:
            conditions = {}
        if isinstance(conditions, pd.DataFrame):
            if len(conditions) != n:
                raise ValueError(f"conditions has {len(conditions)} rows but n_cells={n}")
            conditions = {k: conditions[k].to_numpy() for k in conditions.columns}
        cond, pert = self.processor.conditions.encode_dict(conditions, n)
        obs = pd.DataFrame({k: (np.repeat(v, n) if np.ndim(v) == 0 else np.asarray(v)) for k, v in conditions.items()})
        cond_t = {k: torch.as_tensor(v) for k, v in cond.items()}
        return cond_t, (None if pert is None else torch.as_tensor(pert)), obs

    def _integrate(self, x0, cond, pert, *, n_steps, method, guidance, batch_size, progress, t_span=(0.0, 1.0)):
        out = []
        net = self.module.sampling_net
        net.eval()
        for s in range(0, x0.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            c = {k: v[sl] for k, v in cond.items()}
            p = None if pert is None else pert[sl]

            def f(x, t, c=c, p=p):
                return self.module.velocity(net, x, t, c, p, guidance=guidance)
            with torch.no_grad():
                out.append(flow.sample_ode(f, x0[sl], method=method, n_steps=n_steps, t0=t_span[0], t1=t_span[1],
                                           progress=progress and s == 0))
        return torch.cat(out)

    def sample(self, n_cells: int, conditions: dict | pd.DataFrame | None = None, *, n_steps: int = 50,
               method: str = "euler", guidance: float = 1.0, seed: int = 0, batch_size: int = 1024,
               counts: bool = False, clip: bool = True, progress: bool = False) -> ad.AnnData:
        """Generate ``n_cells`` cells.

        Parameters
        ----------
        conditions
            ``{key: value}`` (one value for all cells, or one per cell) or a DataFrame with
            ``n_cells`` rows. Keys left out are sampled unconditionally (null token).
        n_steps, method
            ODE solver (``"euler"``, ``"heun"``, ``"dopri5"``).
        guidance
            Classifier-free guidance weight (1 = plain conditional).
        seed
            Same seed → bitwise identical cells on CPU.
        counts
            Also draw a Poisson ``layers["counts"]`` at the training median library size.
        clip
            Clip the log1p values at 0 (default; expression is non-negative). ``clip=False``
            returns the flow's end points as they are — what a benchmark should score when the
            other generators are not clipped either: clipping symmetric errors around 0 lifts the
            mean of every lowly expressed gene (on kang2018, unit noise per gene scores an energy
            distance of 0.20 unclipped and 4.9 clipped; ``benchmarks/results/generation.md``).

        Returns
        -------
        AnnData (n_cells × G): log1p-normalised expression in ``.X``, the conditions in ``.obs``,
        run parameters in ``.uns["grndiff"]``.
        """
        if n_cells < 1:
            raise ValueError(f"n_cells must be ≥ 1, got {n_cells}")
        cond, pert, obs = self._encode_conditions(conditions, n_cells)
        self._ensure_source()
        x0 = self.module.draw_source(cond, n_cells, seed=seed)  # N(0, I), or the fitted per-group Gaussian
        x = self._integrate(x0, cond, pert, n_steps=n_steps, method=method, guidance=guidance,
                            batch_size=batch_size, progress=progress)
        params = {"n_steps": n_steps, "method": method, "guidance": guidance, "seed": seed, "mode": "sample",
                  "clip": clip}
        return self._to_anndata(x, obs, params, counts=counts, seed=seed, clip=clip)

    def _ensure_source(self, adata: ad.AnnData | None = None) -> None:
        """An untrained model samples from its source too: fit the Gaussian source on the AnnData
        the model was built on if training has not done it yet."""
        src = self.module.source_dist
        if src is None or bool(src.fitted):
            return
        adata = adata if adata is not None else getattr(self, "_adata", None)
        if adata is None:
            raise RuntimeError("the model's Gaussian source is not fitted and no training AnnData is attached; "
                               "train the model first (model.train(adata=...))")
        self.module.fit_source(self.datamodule(adata, batch_size=1024, val_fraction=0.0).train_dataloader())
        self.module.cpu()

    def predict(self, adata_ctrl: ad.AnnData, conditions: dict, *, n_steps: int = 50, method: str = "euler",
                guidance: float = 1.0, seed: int = 0, batch_size: int = 1024, clip: bool = True,
                progress: bool = False) -> ad.AnnData:
        """Counterfactual: what would these (control) cells look like under ``conditions``?

        With ``source="control"`` the cells are transported along the learned flow. With
        ``source="noise"`` each cell is first inverted to its latent noise under its own
        conditions (integrating t = 1 → 0), then integrated forward under the new conditions.
        Conditions not given in ``conditions`` are taken from ``adata_ctrl.obs``.
        """
        x_ctrl = torch.as_tensor(self.processor.scaled_dense(adata_ctrl))  # (B, G)
        n = x_ctrl.shape[0]
        keys = self.processor.conditions.keys
        own = {k: adata_ctrl.obs[k].to_numpy() for k in keys if k in adata_ctrl.obs.columns}
        new = {**own, **{k: (np.repeat(v, n) if np.ndim(v) == 0 else np.asarray(v)) for k, v in conditions.items()}}
        cond, pert, obs = self._encode_conditions(new, n)
        if self.config["source"] == "control":
            x0 = x_ctrl
        else:
            cond0, pert0, _ = self._encode_conditions(own, n)
            x0 = self._integrate(x_ctrl, cond0, pert0, n_steps=n_steps, method=method, guidance=1.0,
                                 batch_size=batch_size, progress=False, t_span=(1.0, 0.0))
        x = self._integrate(x0, cond, pert, n_steps=n_steps, method=method, guidance=guidance,
                            batch_size=batch_size, progress=progress)
        obs.index = adata_ctrl.obs_names.astype(str) + "-pred"
        params = {"n_steps": n_steps, "method": method, "guidance": guidance, "seed": seed, "mode": "predict",
                  "clip": clip}
        return self._to_anndata(x, obs, params, counts=False, seed=seed, clip=clip)

    def _to_anndata(self, x_scaled: torch.Tensor, obs: pd.DataFrame, params: dict, *, counts: bool, seed: int,
                    clip: bool = True):
        X = self.processor.scaler.inverse(x_scaled.numpy()).astype(np.float32)
        if clip:
            X = np.clip(X, 0.0, None)  # log1p-normalised values are ≥ 0
        obs = obs.copy()
        if obs.index.dtype != object or not len(obs.index) or obs.index[0] == 0:
            obs.index = [f"gen-{i}" for i in range(X.shape[0])]
        for k in obs.columns:
            if obs[k].dtype == object:
                obs[k] = pd.Categorical(obs[k].astype(str))
        out = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(self.var_names, dtype=str)))
        out.uns["grndiff"] = {"params": {**params, "backbone": self.config["backbone"], "version": __version__}}
        if counts:
            rng = np.random.default_rng(seed)
            rate = np.expm1(np.clip(X, 0.0, None)) / 1e4 * self._library_size
            out.layers["counts"] = rng.poisson(rate).astype(np.float32)
        return out

    # ---------------------------------------------------------- representations
    @torch.no_grad()
    def _token_pass(self, adata: ad.AnnData, t: float, use_conditions: bool, batch_size: int):
        net = self.module.sampling_net
        net.eval()
        x = torch.as_tensor(self.processor.scaled_dense(adata))  # (B, G)
        n = x.shape[0]
        keys = self.processor.conditions.keys
        own = {k: adata.obs[k].to_numpy() for k in keys if use_conditions and k in adata.obs.columns}
        cond, pert, _ = self._encode_conditions(own, n)
        acts, toks = [], []
        for s in range(0, n, batch_size):
            sl = slice(s, s + batch_size)
            c = {k: v[sl] for k, v in cond.items()}
            p = None if pert is None else pert[sl]
            tt = torch.full((x[sl].shape[0],), float(t))
            _, extras = net(x[sl], tt, c, p, return_tokens=True)
            if not extras:
                raise ValueError("this model has no module tokens: build it with modules=... or n_learned_modules > 0")
            acts.append(extras["activity"])
            toks.append(extras["tokens"].mean(1))
        return torch.cat(acts).numpy(), torch.cat(toks).numpy()

    def get_token_activities(self, adata: ad.AnnData, *, t: float = 1.0, use_conditions: bool = True,
                             batch_size: int = 512) -> pd.DataFrame:
        """Per-cell module-token activities (cells × P), columns = module names.

        Cells enter at flow time ``t`` (1 = the observed expression); the activity is the token's
        read-out, trained to estimate the module's mean scaled expression of the clean cell.
        """
        acts, _ = self._token_pass(adata, t, use_conditions, batch_size)
        return pd.DataFrame(acts, index=adata.obs_names, columns=self.token_names)

    def get_latent_representation(self, adata: ad.AnnData, *, t: float = 1.0, batch_size: int = 512) -> np.ndarray:
        """Mean token state per cell (cells × D): a pathway-level embedding for neighbours/UMAP."""
        _, lat = self._token_pass(adata, t, True, batch_size)
        return lat

    @property
    def token_names(self) -> list[str]:
        net = self.module.net
        pooling = getattr(net, "pooling", None)
        if pooling is None:
            return []
        learned = [f"learned_{i}" for i in range(pooling.n_learned)]
        return list(self.graph.module_names or [])[: pooling.n_prior] + learned

    # ----------------------------------------------------------- save / load
    def save(self, dir_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write a self-contained model directory (``model.pt`` + readable ``config.json``).

        The file holds only tensors and plain types, so :meth:`load` uses
        ``torch.load(weights_only=True)``; it is written atomically (temp file + rename).
        """
        d = Path(dir_path)
        if d.exists() and any(d.iterdir()) and not overwrite:
            raise FileExistsError(f"{d} exists and is not empty; pass overwrite=True to replace it")
        d.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "grndiff_version": __version__,
            "config": self.config, "setup": self.setup, "processor": self.processor.to_state(),
            "graph": self.graph.to_state(), "state_dict": self.module.state_dict(),
            "history": self.history.to_dict(orient="list"), "is_trained": self.is_trained,
            "library_size": float(self._library_size),
        }
        _atomic_torch_save(payload, d / "model.pt")
        (d / "config.json").write_text(json.dumps({k: payload[k] for k in ("format", "format_version",
                                       "grndiff_version", "config", "setup")}, indent=2, default=str))

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: ad.AnnData | None = None) -> "GRNDiff":
        """Load a model saved by :meth:`save` (safe: ``weights_only=True``).

        If ``adata`` is given, its genes must match the model's (same names; order may differ).
        """
        path = Path(dir_path)
        path = path / "model.pt" if path.is_dir() else path
        if not path.exists():
            raise FileNotFoundError(f"no saved grndiff model at {path}")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupted, or carrying non-tensor pickles
            raise ValueError(f"cannot load {path}: the file is corrupted, truncated, or not a grndiff model "
                             f"saved with plain tensors ({type(e).__name__}: {e}). Re-save or retrain the model.") from e
        if isinstance(payload, dict) and "grndiff" in payload and "state_dict" in payload:  # Lightning .ckpt
            model = cls.from_state({**payload["grndiff"], "state_dict": payload["state_dict"], "is_trained": True})
            if adata is not None:
                model.processor.check_genes(adata)
            return model
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a grndiff model file")
        if payload.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} was written with model format {payload.get('format_version')} "
                             f"(grndiff {payload.get('grndiff_version')}); this grndiff {__version__} reads format "
                             f"{FORMAT_VERSION}. Load it with the grndiff version that wrote it, or retrain.")
        model = cls.from_state(payload)
        if adata is not None:
            model.processor.check_genes(adata)
        return model

    @classmethod
    def from_state(cls, payload: dict) -> "GRNDiff":
        """Rebuild from a state dict: ``config``, ``setup``, ``processor``, ``graph``, ``state_dict``."""
        self = cls.__new__(cls)
        self.config, self.setup = payload["config"], payload["setup"]
        self.processor = ExpressionProcessor.from_state(payload["processor"])
        self.graph = GeneGraph.from_state(payload["graph"])
        self.module = self._build_module()
        self.module.load_state_dict(payload["state_dict"])
        self.history = pd.DataFrame(payload.get("history") or {})
        self.is_trained = bool(payload.get("is_trained"))
        self._library_size = payload.get("library_size", 1e4)
        self._adata = None
        return self

    def to(self, device) -> "GRNDiff":
        self.module.to(device)
        return self


def module_inputs(graph: GeneGraph, processor: ExpressionProcessor) -> dict:
    """The data-derived ``inputs`` of :class:`~grndiff.train.FlowModule` (sizes, graph, condition
    vocabularies, and ``gene_scale`` (G,), the scaler's per-gene std: scaled data → log1p units);
    shared by the Python API and the CLI's data module."""
    g = graph
    return {"n_genes": g.n_genes, "edge_index": g.edge_index, "edge_sign": g.edge_sign,
            "edge_weight": g.edge_weight, "edge_type": g.edge_type, "membership": g.membership,
            "condition_specs": processor.conditions.specs(),
            "perturbation": processor.has_gene_perturbations,
            "gene_scale": torch.as_tensor(processor.scaler.std, dtype=torch.float32)}


def config_from_hparams(hp: dict, **extra) -> dict:
    """GRNDiff config from a :class:`~grndiff.train.FlowModule`'s hyper-parameters (CLI export)."""
    keys = ("backbone", "net_kwargs", "source", "time_schedule", "ot_pairing", "lr", "weight_decay",
            "warmup_steps", "ema_decay", "token_aux_weight", "prediction", "source_comps", "source_residual",
            "source_coupling", "source_space")
    cfg = {k: hp.get(k) for k in keys if k in hp}
    cfg["net_kwargs"] = dict(cfg["net_kwargs"] or {})
    cfg.update({k: (v if isinstance(v, (str, type(None))) else _describe(v)) for k, v in extra.items()})
    if isinstance(extra.get("match_keys"), (list, tuple)):
        cfg["match_keys"] = list(extra["match_keys"])
    return cfg


def _describe(x) -> Any:
    if x is None or isinstance(x, (str, int, float)):
        return x
    if isinstance(x, pd.DataFrame):
        return f"DataFrame({len(x)} rows)"
    return type(x).__name__


def _median_library_size(adata, setup) -> float:
    layer = setup.get("layer")
    X = adata.layers[layer] if layer else adata.X
    tot = np.asarray(X.sum(1)).ravel()
    return float(np.median(tot)) if setup.get("kind", "counts") == "counts" and tot.size else 1e4


def _default_epochs(n_obs: int) -> int:
    # aim for ~3,000 optimiser steps at batch 64, between 10 and 400 epochs
    return int(np.clip(3000 * 64 / max(n_obs, 1), 10, 400))


def _atomic_torch_save(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pt")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        from .train.checkpoint import file_mode
        os.chmod(tmp, file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)  # atomic on POSIX: never a truncated model.pt
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
