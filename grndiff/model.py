"""``GRNDiff``: the scanpy-facing model class (AnnData in, AnnData out).

Three thin layers, as in scvi-tools: torch math (:mod:`grndiff.nn`, :mod:`grndiff.flow`), the
training plan (:class:`grndiff.train.FlowModule`, where every flow and optimiser option is
written once), and this class bound to an AnnData.
"""
from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any

import anndata as ad
import lightning as L
import numpy as np
import pandas as pd
import torch

from . import __version__
from ._checks import check_count, check_sampling
from ._output import annotate_output, check_predict_input, var_from_state, var_to_state
from ._representation import TokenReadout
from .data import ExpressionProcessor, get_setup, ondisk, perturbed_genes, setup_anndata
from .data.conditions import warn_case_only_matches
from .data.normalize import COUNT_MODELS, library_quantiles
from .gate import ALPHAS, GATE_EULER_STEPS, GateSplit, alpha_means, choose_alpha, gate_split, score_alphas, warn_no_gate
from .graph import GeneGraph
from .train import FlowModule, LossHistory, ScoreStopping
from .train.checkpoint import read_model_file, upgrade_payload, write_model_dir
from .train.inputs import FLOW_OPTIONS, NET_OPTIONS, build_module, check_options, default_epochs, describe
from .train.quiet import console_kwargs, quiet
from .train.runtime import model_runtime

log = logging.getLogger("grndiff")

__all__ = ["GRNDiff", "NET_OPTIONS", "FLOW_OPTIONS"]


class GRNDiff(TokenReadout):
    """Graph-based gene-regulatory rectified-flow model of single-cell expression.

    Parameters
    ----------
    adata
        Registered with :meth:`setup_anndata`. Not modified.
    prior
        Regulatory graph: a shipped name (``"collectri"``, ``"dorothea"``, ``"omnipath_signaling"``,
        ``"krumsiek11"``), a path, a long ``source,target,weight`` DataFrame, a networkx graph, a list
        of these (their union, e.g. ``["collectri", "omnipath_signaling"]``: TF → target regulation
        and protein signalling edges, typed apart; :func:`grndiff.priors.combine`), a
        :class:`~grndiff.graph.GeneGraph`, or ``None`` (no gene–gene edges: self-loops only).
        Perturbed genes (``setup_anndata(perturbation_key=...)``) need not be measured: a perturbed
        prior gene that is not among the genes becomes a *latent node* (no expression, no loss, no
        output; a learned state that carries the perturbation flag and passes messages), together
        with the unmeasured prior genes on paths of at most ``graph_kwargs["latent_hops"]`` (3)
        edges from it to measured genes; ``model.graph.summary()`` reports how many. A perturbed
        gene in neither the data nor the prior is an error naming it.
    modules
        Gene sets pooled into pathway tokens (``"hallmark"``, ``"reactome"``, path, DataFrame) or ``None``.
    backbone
        ``"grn"`` (graph transformer), ``"latent_tokens"`` (Perceiver IO: learned latent tokens, no
        graph), ``"ssm"`` (state-space long convolution over the genes in a graph order,
        :class:`~grndiff.nn.SequenceVelocity`), or a baseline: ``"mlp"``, ``"gene_tokens"``, ``"modules_only"``.
    source
        Where the flow starts (:mod:`grndiff.flow.sources`): ``"auto"`` (default:
        ``"shifted_control"`` when setup registered control cells — a perturbation key or
        ``control_obs`` — so :meth:`predict` transports them; else ``"gaussian"``), a name, a config
        dict (``{"name": "gaussian", "k": 50}``) or a :class:`~grndiff.flow.Source`.
    organism
        For shipped priors.
    graph_kwargs
        Extra options for :meth:`GeneGraph.from_prior` (``add_reverse``, ``isolated``, module sizes,
        ``latent_hops``, ``perturbed``: more genes to make nodes so they can be perturbed later...).
    match_keys
        ``obs`` keys a control cell must share with the cell it is paired with (the *context*, e.g.
        ``["cell_type"]``). Default for sources that use control cells: the categorical condition
        keys that do not define the control cells.
    seed
        Fixes the initial weights here, the random subsets of a seeded source (the shifted control's
        control cells, unless ``source`` names its own ``seed``) and, unless :meth:`train` is given
        another, the data split, batches and noise of training: the same seed gives bitwise
        identical models on CPU.
    **options
        Architecture (``hidden`` 32, ``heads`` 4, ``depth`` 2, ``token_depth`` 2, ``cell_token``,
        ``n_learned_modules``, ``mode`` …: :class:`~grndiff.nn.GRNTransformer`) and flow/optimiser
        options (``lr``, ``time_schedule``, ``ema_decay`` …: :class:`~grndiff.train.FlowModule`).

    Notes
    -----
    :meth:`train`'s first argument counts epochs, as in scvi-tools: ``model.train(30)`` is 30
    passes over the cells (its progress shows the steps that makes). For a budget in optimiser
    steps, as the README and the benchmarks give it, pass ``model.train(max_steps=3000)``.
    """

    setup_anndata = staticmethod(setup_anndata)

    def __init__(self, adata: ad.AnnData, prior: Any = "collectri", modules: Any = "hallmark", backbone: str = "grn",
                 *, source: Any = "auto", organism: str = "human", graph_kwargs: dict | None = None,
                 match_keys: list[str] | None = None, seed: int = 0, **options):
        check_options(options, backbone)
        self.setup = get_setup(adata)
        self._adata = adata  # a reference for .train(); never modified
        gkw = dict(graph_kwargs or {})
        perturbed = list(dict.fromkeys(perturbed_genes(adata, self.setup) + list(gkw.pop("perturbed", None) or [])))
        if perturbed and not isinstance(prior, GeneGraph):  # unmeasured perturbed genes become latent nodes
            gkw = {"perturbed": perturbed, "allow_missing_perturbed": bool(self.setup.get("allow_missing_genes")),
                   **gkw}
        self.graph = GeneGraph.for_anndata(adata, prior, modules, symbol_key=self.setup.get("symbol_key"),
                                          organism=organism, **gkw)
        warn_case_only_matches(self.graph, organism)  # e.g. a human prior on mouse genes: say so
        self.processor = ExpressionProcessor().fit(adata, latent_genes=self.graph.latent_genes)
        has_control = bool(self.setup.get("perturbation_key") or self.setup.get("control_obs"))
        if isinstance(source, str) and source == "auto":
            source = "shifted_control" if has_control else "gaussian"
        from .flow import make_source
        src = make_source(source)
        if "seed" in src.options and not _names_seed(source):
            src.seed = int(seed)  # a seeded source (its control subsets) follows the model's seed
        if match_keys is None and src.needs_control:
            ctrl_keys = set(self.setup.get("control_obs") or {})
            match_keys = [s["name"] for s in self.processor.conditions.specs()
                          if s["kind"] == "categorical" and s["name"] not in ctrl_keys]
        self.config = {"backbone": backbone, "prior": describe(prior), "modules": describe(modules),
                       "organism": organism, "match_keys": list(match_keys) if match_keys else None, "seed": int(seed),
                       "source": src.config(), "options": dict(options)}
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed alone
            torch.manual_seed(int(seed))
            self.module = self._build_module(src)
        # the source is fitted once, where it is used: train() on its training split, or sample()/
        # predict() of an untrained model on this AnnData (_ensure_source)
        ondisk.check_pairing(self.processor, adata, self.module.source.needs_control)  # fail before training
        totals = ondisk.library_totals(adata, self.setup)  # None for log1p data
        self._set_results(library_size=float(np.median(totals)) if totals is not None and totals.size else None,
                          library_quantiles=None if totals is None else library_quantiles(totals))

    # What training adds to a model, as saved (the keys of the model file): one list for __init__,
    # save and from_state.
    def _set_results(self, history=None, is_trained: bool = False, gate: dict | None = None, validation=None,
                     library_size: float | None = None, library_quantiles: list | None = None) -> None:
        self.history: pd.DataFrame = pd.DataFrame(history or {})
        self.is_trained = bool(is_trained)
        self.gate_: dict | None = gate  # set by train(): the validation gate's choice (grndiff.gate)
        self.validation_: pd.DataFrame = pd.DataFrame(validation or {})
        self._library_size = 1e4 if library_size is None else float(library_size)
        # the training cells' counts per cell (0 %, 1 %, …, 100 % quantiles): generated cells' depths
        self._library_quantiles = None if library_quantiles is None else [float(q) for q in library_quantiles]

    def _results(self) -> dict:
        return {"history": self.history.to_dict(orient="list"), "is_trained": self.is_trained, "gate": self.gate_,
                "validation": self.validation_.to_dict(orient="list"), "library_size": self._library_size,
                "library_quantiles": self._library_quantiles}

    def _build_module(self, source=None) -> FlowModule:
        return build_module(self.config, self.graph, self.processor, source)

    @property
    def var_names(self) -> list[str]:
        return list(self.processor.genes)

    def __repr__(self) -> str:
        n_par = sum(p.numel() for p in self.module.net.parameters())
        latent = f", latent={self.graph.n_latent}" if self.graph.n_latent else ""
        return (f"GRNDiff(backbone={self.config['backbone']!r}, source={self.config['source']['name']!r}, "
                f"genes={self.graph.n_genes}{latent}, edges={self.graph.n_edges}, modules={self.graph.n_modules}, "
                f"parameters={n_par:,}, trained={self.is_trained}{self._gate_repr()})")

    def _gate_repr(self) -> str:
        gate = getattr(self, "gate_", None)
        if not gate:
            return ""
        if gate.get("unit") is None:
            return ", gate: transport only (no group could be hidden)"
        stopped = f", stopped early at step {gate['stopped_step']}" if gate.get("stopped_step") else ""
        return (f", gate: flow weight {gate['alpha']:g} (hidden {gate['unit']}s: transport {gate['transport']:.3f}, "
                f"flow {gate['flow']:.3f}{stopped})")

    # ---------------------------------------------------------------- training
    @model_runtime  # every usable core, freed memory kept mapped when small (grndiff/train/runtime.py)
    def train(self, max_epochs: int | None = None, *, max_steps: int = -1, batch_size: int = 64,
              val_fraction: float = 0.1, split_seed: int | None = None, stratify_key: str | None = None,
              holdout: dict | None = None, accelerator: str = "auto", devices: Any = 1,
              precision: Any = None, seed: int | None = None, progress_bar: bool = True, logger: Any = False,
              default_root_dir: str | None = None, enable_checkpointing: bool = False, callbacks=None,
              adata: ad.AnnData | None = None, verbose: bool = False, gate: bool | str = "auto",
              gate_fraction: float = 0.2, early_stopping: bool = True, check_every: int = 25, patience: int = 3,
              compile: bool | None = None, **trainer_kwargs) -> GRNDiff:
        """Train with Lightning (CPU or GPU, ``accelerator="auto"``).

        ``adata`` defaults to the AnnData the model was built on (a reference; it is not modified).
        ``holdout`` ({obs key: [values]}) removes those groups from training. ``seed`` (default: the
        model's) seeds batches, pairing and noise, ``split_seed`` the split; quiet unless ``verbose``.

        ``gate`` (``"auto"``: on for a model that transports control cells) hides ``gate_fraction``
        of the contexts — or, for knock-outs, of the perturbations — from the network, then measures
        on them how much of the learned flow :meth:`predict` should apply (:mod:`grndiff.gate`);
        the source is refitted on every training cell afterwards. The choice is ``model.gate_``, its
        scores ``model.validation_``; both are saved with the model.

        ``early_stopping`` (with the gate, on CPU): every ``check_every`` steps the flow is scored on
        the hidden groups; training stops once ``patience`` checks in a row have not beaten the best
        so far — which starts at the transport's own score, so a network that does not add to its
        starting point stops early — and the network of the best check is kept
        (``model.gate_["checks"]``, ``["best_step"]``, ``["stopped_step"]``). The default schedule
        (every 25 steps, patience 3: at least 75 steps) scored as the former 50 / 3 on Kang and
        Papalexi in half the time (``benchmarks/results/perturbation_es_schedule.md``); patience 2
        stopped a simulated knock-out split at step 50 whose flow first beat the transport at 75.

        ``precision`` (Lightning's: ``None``/``"32-true"`` float32; ``"bf16"``/``"bf16-mixed"``
        bfloat16 autocast, weights and optimizer state in float32) and ``compile`` (the blocks'
        element-wise passes through ``torch.compile``, :mod:`grndiff.nn.fused`; kept for sampling,
        ``None`` keeps the model's setting) are the speed switches; ratios measured on CPU are in
        ``benchmarks/results/speed_precision.md``.
        """
        adata = adata if adata is not None else getattr(self, "_adata", None)
        if adata is None:
            raise ValueError("pass the training AnnData: model.train(adata=adata, ...)")
        if gate not in ("auto", True, False):
            raise ValueError(f"gate must be 'auto', True or False, got {gate!r}")
        if not 0.0 < float(gate_fraction) < 1.0:
            raise ValueError(f"gate_fraction must be in (0, 1), got {gate_fraction}")
        if int(check_every) < 1 or int(patience) < 1:
            raise ValueError(f"check_every and patience must be ≥ 1, got {check_every} and {patience}")
        if precision == "bf16":
            precision = "bf16-mixed"  # Lightning's name for bfloat16 autocast
        if compile is not None:  # the model's setting from now on (sampling too), saved with it
            self.module.hparams["compile"] = self.config["options"]["compile"] = bool(compile)
        split = None
        if gate is True or (gate == "auto" and self.module.source.can_transport):
            if not self.module.source.can_transport:
                raise ValueError(f"gate=True needs a model that transports control cells; this model's source "
                                 f"({self.config['source']['name']!r}) only generates")
            split = self._gate_split(adata, gate_fraction)
        train_on = adata[~split.hidden] if split is not None and not isinstance(split, str) else adata
        if max_epochs is None and max_steps in (-1, None):
            max_epochs = default_epochs(adata.n_obs)
        seed = self.config.get("seed", 0) if seed is None else int(seed)
        L.seed_everything(seed, workers=True, verbose=False)
        dm = self.datamodule(train_on, batch_size=batch_size, val_fraction=val_fraction,
                             split_seed=seed if split_seed is None else split_seed,
                             stratify_key=stratify_key, holdout=holdout)
        history = LossHistory()
        self.module.fit_source(dm)  # on exactly the training split (holdout/val excluded)
        stopper = None
        if early_stopping and isinstance(split, GateSplit) and _on_cpu(accelerator):
            stopper = self._gate_stopper(adata, split, check_every, patience)
        extra = [history, *([stopper] if stopper is not None else []), *(callbacks or [])]
        with quiet(verbose):  # no Lightning banners; one progress bar, on a terminal only
            trainer = L.Trainer(max_epochs=max_epochs, max_steps=max_steps, accelerator=accelerator, devices=devices,
                                precision=precision, logger=logger, enable_checkpointing=enable_checkpointing,
                                enable_model_summary=False, default_root_dir=default_root_dir, gradient_clip_val=1.0,
                                deterministic=False, **console_kwargs(progress_bar, extra),
                                **trainer_kwargs)
            trainer.fit(self.module, datamodule=dm)
        self.module.cpu()
        self.history = pd.concat([self.history, pd.DataFrame(history.records)], ignore_index=True)
        self.is_trained = True
        if isinstance(split, str):
            warn_no_gate(split)
            self.gate_, self.validation_ = {"alpha": 0.0, "unit": None, "groups": [], "reason": split}, pd.DataFrame()
        elif split is not None:
            self._run_gate(adata, split, stopper)
            self.module.fit_source(self.datamodule(adata, batch_size=1024, val_fraction=0.0))  # every context
            self.module.cpu()
        else:
            self.gate_, self.validation_ = None, pd.DataFrame()
        return self

    def _gate_split(self, adata: ad.AnnData, fraction: float):
        control = self.processor.control_mask(adata)
        if control is None:
            return "no control cells registered"
        return gate_split(adata.obs, control, self.setup, self.config.get("match_keys"), fraction=fraction,
                          seed=self.config.get("seed", 0))

    def _gate_inputs(self, adata: ad.AnnData, split) -> list:
        """Per hidden group what stays fixed while the network trains: (name, control cells,
        conditions, transport (cells × G), truth (cells × G), control (cells × G)), log1p units."""
        out = []
        for name, truth_rows, ctrl_rows, conditions in split.groups:
            ctrl_ad = adata[ctrl_rows]
            x_t = self.predict(ctrl_ad, conditions, flow=False, clip=False).X
            truth = self.processor.log_expression(adata[truth_rows]).toarray()
            out.append((name, ctrl_ad, conditions, x_t, truth, self.processor.log_expression(ctrl_ad).toarray()))
        return out

    def _gate_table(self, inputs: list) -> pd.DataFrame:
        """Pearson Δ top-20 of every α of :data:`~grndiff.gate.ALPHAS` on each hidden group."""
        rows = []
        for name, ctrl_ad, conditions, x_t, truth, ctrl in inputs:
            x_f = self.predict(ctrl_ad, conditions, flow=True, clip=False, n_steps=GATE_EULER_STEPS).X
            for a, v in zip(ALPHAS, score_alphas(x_t, x_f, truth, ctrl)):
                rows.append({"group": name, "alpha": a, "pearson_delta_top20": v})
        return pd.DataFrame(rows)

    def _gate_stopper(self, adata: ad.AnnData, split, every: int, patience: int) -> ScoreStopping:
        """Early stopping on the gate's hidden groups: the score is the best α's mean, the baseline
        the transport's (α = 0); each check's table is kept for :meth:`_run_gate`."""
        inputs = self._gate_inputs(adata, split)
        tables: dict = {}

        def score(step: int) -> float:  # the best α's mean
            tables[step] = self._gate_table(inputs)
            mean = alpha_means(tables[step])
            return float(mean.max()) if not mean.empty else float("-inf")

        transport = np.array([score_alphas(x_t, x_t, truth, ctrl, alphas=(0.0,))[0]
                              for *_, x_t, truth, ctrl in inputs])
        base = float(np.nanmean(transport)) if np.isfinite(transport).any() else float("-inf")
        stopper = ScoreStopping(score, every=every, patience=patience, baseline=base)
        stopper.inputs, stopper.tables = inputs, tables
        return stopper

    def _run_gate(self, adata: ad.AnnData, split, stopper: ScoreStopping | None = None) -> None:
        """Score transport vs transport + flow on the hidden groups; set ``gate_`` and ``validation_``.

        After early stopping the table of the kept network's check is reused (the best check, or
        the last one when none beat the transport); otherwise the groups are scored now."""
        checks = stopper.checks if stopper is not None else []
        if checks:
            step = stopper.best_step if stopper.best_step is not None else checks[-1]["step"]
            table = stopper.tables[step]
        else:
            table = self._gate_table(stopper.inputs if stopper is not None else self._gate_inputs(adata, split))
        alpha = choose_alpha(table)
        mean = table.groupby("alpha")["pearson_delta_top20"].mean()
        self.validation_ = table
        self.gate_ = {"alpha": alpha, "unit": split.unit, "groups": [g[0] for g in split.groups], "reason": None,
                      "transport": float(mean.get(0.0, np.nan)), "flow": float(mean.get(1.0, np.nan)),
                      "chosen": float(mean.get(alpha, np.nan))}
        if stopper is not None:
            self.gate_.update({"checks": checks, "best_step": stopper.best_step, "stopped_step": stopper.stopped_step})
        log.info("grndiff gate: α = %.2f on %d hidden %s group(s) (transport %.3f, flow %.3f)", alpha,
                 len(split.groups), split.unit, self.gate_["transport"], self.gate_["flow"])

    def datamodule(self, adata: ad.AnnData, **kw) -> L.LightningDataModule:
        """The data module this model trains on (streamed from disk for a backed AnnData)."""
        return ondisk.datamodule(self.processor, adata, with_controls=self.module.source.needs_control,
                                 match_keys=self.config["match_keys"], **kw)

    def _ensure_source(self, adata: ad.AnnData | None = None) -> None:
        """An untrained model uses its source too: fit it on the AnnData the model was built on."""
        if not self.module.source.needs_fit:
            return
        adata = adata if adata is not None else getattr(self, "_adata", None)
        if adata is None:
            raise RuntimeError("the model's source is not fitted and no training AnnData is attached; "
                               "train the model first (model.train(adata=...))")
        self.module.fit_source(self.datamodule(adata, batch_size=1024, val_fraction=0.0))
        self.module.cpu()

    # ---------------------------------------------------------------- sampling
    @model_runtime  # every usable core, freed memory kept mapped when small (grndiff/train/runtime.py)
    def sample(self, n_cells: int, conditions: dict | pd.DataFrame | None = None, *, n_steps: int = 50,
               method: str = "euler", guidance: float = 1.0, seed: int = 0, batch_size: int = 1024,
               counts: bool | str = False, clip: bool = True, progress: bool = True,
               precision: str | None = None) -> ad.AnnData:
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
            Also write ``layers["counts"]``: integer counts for each cell at its own library size,
            read off its values and kept within the training cells' depths
            (:func:`grndiff.data.normalize.estimate_library_sizes`). ``True`` or ``"nearest"``:
            the expected count rounded to the nearest integer (the lattice real counts lie on; a
            value below half a count is 0); ``"poisson"``: a Poisson draw around it (more zeros
            than real cells). Models trained on log1p data know no library size: 10,000 counts
            per cell.
        clip
            Clip the log1p values at 0 (default). ``clip=False`` returns the flow's end points as
            they are, for benchmarks whose other generators are not clipped either.
        progress
            Show progress (default): a bar on a terminal or in Jupyter once a call takes more than
            2 s, an occasional line in a log file; ``False``: nothing.
        precision
            ``"bf16"``: the network under bfloat16 autocast (faster on a CPU with AVX512-BF16 or a
            GPU; the solver stays float32); ``None`` (default): float32.

        Returns
        -------
        AnnData (n_cells × G): log1p-normalised expression in ``.X``, the conditions in ``.obs``,
        the training data's gene annotations in ``.var``, run parameters in ``.uns["grndiff"]``.
        """
        n_cells = check_count("n_cells", n_cells)
        counts = _count_model(counts)
        check_sampling(n_steps=n_steps, batch_size=batch_size, guidance=guidance, method=method, seed=seed)
        cond, pert, obs = self.processor.conditions.request(conditions, n_cells)
        self._ensure_source()
        self.processor.conditions.warn_unseen(obs, self.module.source.unseen(cond, n_cells))
        x0 = self.module.source.draw(n_cells, cond, pert, seed=seed)
        x = self.module.generate(x0, cond, pert, n_steps=n_steps, method=method, guidance=guidance,
                                 batch_size=batch_size, progress=progress, precision=precision)
        params = {"n_steps": n_steps, "method": method, "guidance": guidance, "seed": seed, "mode": "sample",
                  "clip": clip, "precision": precision}
        return self._to_anndata(x, obs, params, counts=counts, seed=seed, clip=clip)

    @model_runtime  # every usable core, freed memory kept mapped when small (grndiff/train/runtime.py)
    def predict(self, adata_ctrl: ad.AnnData, conditions: dict, *, n_steps: int = 50, method: str = "euler",
                guidance: float = 1.0, seed: int = 0, batch_size: int = 1024, clip: bool = True,
                progress: bool = False, flow: bool | None = None, precision: str | None = None) -> ad.AnnData:
        """Counterfactual: what would these control cells look like under ``conditions``?

        The model's source moves each control cell (``shifted_control``: by the cell-state-dependent
        shift estimated from the training contexts; ``control``: not at all) and the learned flow
        carries it to the target conditions. ``flow=None`` (default) applies what the validation
        gate chose (``x_T + α·(x_flow − x_T)``, ``model.gate_["alpha"]``; the whole flow for a model
        trained with ``gate=False``); ``flow=False`` returns the source's estimate alone (no network),
        ``flow=True`` the whole flow. Conditions not given in ``conditions`` are taken from ``adata_ctrl.obs``. A model
        whose source only generates (``gaussian``, ``noise``) raises a ``ValueError`` naming what to set.
        The prediction is deterministic (an ODE from the given cells): ``seed`` changes nothing and is
        kept for the signature ``sample`` shares. ``precision="bf16"``: as in :meth:`sample`.

        Returns
        -------
        AnnData (cells of ``adata_ctrl`` × G), log1p-normalised, obs names suffixed ``-pred``.
        """
        check_sampling(n_steps=n_steps, batch_size=batch_size, guidance=guidance, method=method, seed=seed)
        check_predict_input(self, adata_ctrl, conditions)  # 0 cells; condition columns missing (a warning)
        x_ctrl = torch.as_tensor(self.processor.scaled_dense(adata_ctrl))  # (B, G)
        n = x_ctrl.shape[0]
        own = {k: adata_ctrl.obs[k].to_numpy() for k in self.processor.conditions.keys if k in adata_ctrl.obs.columns}
        self.processor.conditions.request(own, n)  # the control cells' own labels must be known too
        new = {**own, **{k: (np.repeat(v, n) if np.ndim(v) == 0 else np.asarray(v)) for k, v in conditions.items()}}
        cond, pert, obs = self.processor.conditions.request(new, n)  # bad input is reported before the source is asked
        self._ensure_source()
        x0 = self.module.source.transport(x_ctrl, cond, pert)  # a generative source says what to set instead
        alpha = self.flow_weight if flow is None else float(bool(flow))
        x = x0
        if alpha > 0:
            x = self.module.generate(x0, cond, pert, n_steps=n_steps, method=method, guidance=guidance,
                                     batch_size=batch_size, progress=progress, precision=precision)
            x = x0 + alpha * (x - x0) if alpha < 1 else x
        obs.index = adata_ctrl.obs_names.astype(str) + "-pred"
        params = {"n_steps": n_steps, "method": method, "guidance": guidance, "seed": seed, "mode": "predict",
                  "clip": clip, "flow": flow, "flow_weight": alpha, "precision": precision}
        return self._to_anndata(x, obs, params, counts=None, seed=seed, clip=clip, like=adata_ctrl)

    @property
    def flow_weight(self) -> float:
        """``α`` of :meth:`predict`'s default: the gate's choice, 1 (the whole flow) without a gate."""
        gate = getattr(self, "gate_", None)
        return 1.0 if not gate else float(gate["alpha"])

    def _to_anndata(self, x_scaled: torch.Tensor, obs: pd.DataFrame, params: dict, *, counts: str | None, seed: int,
                    clip: bool = True, like: ad.AnnData | None = None) -> ad.AnnData:
        """The output AnnData; ``.var`` keeps the gene annotations (of ``like``, the cells given to
        ``predict``, else of the training data) and ``.obs`` the other columns of ``like.obs``."""
        uns = {"params": {**params, "backbone": self.config["backbone"], "source": self.config["source"]["name"],
                          "version": __version__}}
        library, quantiles = None, None
        if counts:
            # each cell's own depth, within the training cells' range; a model saved before the depths
            # were kept (or trained on log1p data: 1e4 everywhere) uses its median depth
            quantiles = getattr(self, "_library_quantiles", None)
            library = None if quantiles else self._library_size
            uns["params"]["counts"] = counts
        out = self.processor.to_anndata(x_scaled.numpy(), obs, uns, clip=clip, seed=seed, library_size=library,
                                        count_model=counts or "nearest", library_quantiles=quantiles)
        return annotate_output(out, var=like.var if like is not None else self._training_var(), like=like)

    def _training_var(self) -> pd.DataFrame | None:
        """The training AnnData's ``var`` (kept by :meth:`save`), or ``None`` when unknown."""
        if getattr(self, "_var", None) is None and getattr(self, "_adata", None) is not None:
            self._var = self._adata.var
        return getattr(self, "_var", None)

    # ----------------------------------------------------------- save / load
    def save(self, dir_path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write a self-contained model directory (``model.pt`` + readable ``config.json``).

        The file holds only tensors and plain types, so :meth:`load` uses
        ``torch.load(weights_only=True)``. The folder is written as a whole, atomically (a temporary
        folder, fsynced, then renamed into place), ``config.json`` carries ``model.pt``'s SHA-256,
        which :meth:`load` verifies, and concurrent saves take turns (``overwrite=False``: one wins,
        the others raise ``FileExistsError``). ``overwrite=True`` replaces a saved model, never a
        folder holding other files.
        """
        if getattr(self, "_adata", None) is not None:
            self._ensure_source()  # an untrained model's saved source must sample after loading, without the data
        write_model_dir({"grndiff_version": __version__, "config": self.config, "setup": self.setup,
                         "processor": self.processor.to_state(), "graph": self.graph.to_state(),
                         "state_dict": self.module.state_dict(), **self._results(),
                         "var": var_to_state(self._training_var(), self.processor.genes)},
                        dir_path, overwrite=overwrite)

    @classmethod
    def from_h5ad(cls, path: str | os.PathLike, setup: dict | None = None, **kwargs) -> GRNDiff:
        """Cells streamed from disk (:mod:`grndiff.data.ondisk`); ``setup``: :meth:`setup_anndata`'s arguments."""
        return cls(ondisk.open_h5ad(path, setup), **kwargs)

    @classmethod
    def load(cls, dir_path: str | os.PathLike, adata: ad.AnnData | None = None) -> GRNDiff:
        """Load a model saved by :meth:`save` or a CLI checkpoint (safe: ``weights_only=True``).

        If ``adata`` is given, its genes must match the model's (same names; order may differ).
        """
        model = cls.from_state(read_model_file(Path(dir_path), __version__))
        if adata is not None:
            model.processor.check_genes(adata)
        return model

    @classmethod
    def from_state(cls, payload: dict) -> GRNDiff:
        """Rebuild from a state dict: ``config``, ``setup``, ``processor``, ``graph``, ``state_dict``."""
        payload = upgrade_payload(payload)
        self = cls.__new__(cls)
        self.config, self.setup = payload["config"], payload["setup"]
        self.processor = ExpressionProcessor.from_state(payload["processor"])
        self.graph = GeneGraph.from_state(payload["graph"])
        self.module = self._build_module()
        self.module.load_state_dict(payload["state_dict"])
        self._set_results(**{k: payload.get(k) for k in inspect.signature(self._set_results).parameters})
        self._adata = None
        self._var = var_from_state(payload.get("var"))
        return self

    def to(self, device) -> GRNDiff:
        self.module.to(device)
        return self


def _on_cpu(accelerator) -> bool:
    """Whether Lightning trains on the CPU (the gate's checks predict there)."""
    if str(accelerator) == "cpu":
        return True
    return str(accelerator) == "auto" and not torch.cuda.is_available() and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available())


def _names_seed(source) -> bool:
    """Whether ``source`` fixes its own seed (a Source object, or a config dict with ``seed``)."""
    from .flow import Source
    return isinstance(source, Source) or (isinstance(source, dict) and "seed" in source)


def _count_model(counts) -> str | None:
    """``sample(counts=...)`` → a count model name, or ``None`` for no counts layer."""
    if counts is False or counts is None:
        return None
    if counts is True:
        return "nearest"
    if isinstance(counts, str) and counts in COUNT_MODELS:
        return counts
    raise ValueError(f"counts={counts!r}: pass False, True (= 'nearest') or one of {COUNT_MODELS}")
