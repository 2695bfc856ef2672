"""What a :class:`~grndiff.train.FlowModule` is built from, written once for the Python API and the CLI.

``FLOW_OPTIONS`` is read from the signature of :class:`~grndiff.train.FlowModule` and a backbone's
options from its builder's (:mod:`grndiff.nn.backbones`), so an option is written in exactly one
signature.
"""
from __future__ import annotations

import inspect
from typing import Any

import pandas as pd
import torch

from ..data import ExpressionProcessor
from ..graph import GeneGraph
from ..nn.backbones import NET_OPTIONS, backbone_options  # noqa: F401  (re-exported)
from .flow_module import FlowModule

FLOW_OPTIONS = tuple(n for n in inspect.signature(FlowModule.__init__).parameters
                     if n not in ("self", "inputs", "backbone", "net_kwargs", "source", "max_steps"))


def check_options(options: dict, backbone: str = "grn") -> None:
    """Raise a ``TypeError`` naming the valid options if ``options`` has a key that neither the
    backbone nor the flow takes."""
    net = backbone_options(backbone)
    unknown = set(options) - set(net) - set(FLOW_OPTIONS)
    if unknown:
        raise TypeError(f"unknown model options {sorted(unknown)}; backbone {backbone!r} takes {list(net)}, "
                        f"the flow {list(FLOW_OPTIONS)}")


def module_inputs(graph: GeneGraph, processor: ExpressionProcessor, match_keys=None) -> dict:
    """The data-derived ``inputs`` of :class:`~grndiff.train.FlowModule` (sizes, graph, condition
    vocabularies, ``gene_scale`` (G,) — the scaler's per-gene std: scaled data → log1p units — and
    the context keys of sources that use control cells; ``n_latent``, the graph's latent nodes)."""
    g = graph
    return {"n_genes": g.n_genes, "n_latent": g.n_latent, "edge_index": g.edge_index, "edge_sign": g.edge_sign,
            "edge_weight": g.edge_weight, "edge_type": g.edge_type, "membership": g.membership,
            "condition_specs": processor.conditions.specs(),
            "perturbation": processor.conditions.perturbation.n_kinds if processor.has_gene_perturbations else 0,
            "gene_scale": torch.as_tensor(processor.scaler.std, dtype=torch.float32),
            "match_keys": list(match_keys or [])}


def build_module(config: dict, graph: GeneGraph, processor: ExpressionProcessor, source=None) -> FlowModule:
    """A FlowModule from a GRNDiff ``config`` (``backbone``, ``source``, ``options``, ``match_keys``)."""
    opts = config["options"]
    net_kwargs = {k: v for k, v in opts.items() if k not in FLOW_OPTIONS}
    if graph.n_latent:  # unmeasured perturbed genes: nodes of the graph network only
        if config["backbone"] != "grn":
            raise ValueError(f"the graph has {graph.n_latent} latent nodes (perturbed genes that are not measured, and "
                             f"the prior genes linking them to measured ones); backbone={config['backbone']!r} has no "
                             "graph to hold them. Use backbone='grn', or perturb measured genes only.")
        net_kwargs["n_latent"] = graph.n_latent
    return FlowModule(module_inputs(graph, processor, config.get("match_keys")), backbone=config["backbone"],
                      net_kwargs=net_kwargs,
                      source=source if source is not None else config["source"],
                      **{k: v for k, v in opts.items() if k in FLOW_OPTIONS})


def config_from_hparams(hp: dict, **extra) -> dict:
    """GRNDiff config from a :class:`~grndiff.train.FlowModule`'s hyper-parameters (CLI export)."""
    options = {k: hp[k] for k in FLOW_OPTIONS if k in hp}
    options.update(dict(hp.get("net_kwargs") or {}))
    cfg = {"backbone": hp.get("backbone", "grn"), "source": dict(hp["source"]), "options": options,
           "seed": int(extra.pop("seed", 0) or 0)}
    match = extra.pop("match_keys", None)
    cfg["match_keys"] = list(match) if isinstance(match, (list, tuple)) else None
    cfg.update({k: (v if isinstance(v, (str, type(None))) else describe(v)) for k, v in extra.items()})
    return cfg


def describe(x) -> Any:
    """A JSON-safe description of a prior/modules argument for the config."""
    if x is None or isinstance(x, (str, int, float)):
        return x
    if isinstance(x, (list, tuple)):  # a union of priors
        return [describe(v) for v in x]
    if isinstance(x, pd.DataFrame):
        return f"DataFrame({len(x)} rows)"
    return type(x).__name__


def default_epochs(n_obs: int) -> int:
    """Epochs when ``train()`` is given neither: ~3,000 optimiser steps at batch 64, within 10–400."""
    return int(min(max(3000 * 64 // max(n_obs, 1), 10), 400))
