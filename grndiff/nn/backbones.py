"""The velocity networks a model can use, by name: ``GRNDiff(adata, backbone=name, **options)``.

A backbone is a builder ``builder(inputs: dict, **options) -> VelocityField`` registered with
:func:`register_backbone`. Its keyword arguments are the options users may pass
(``GRNDiff(..., hidden=64)``, the CLI's ``model.net_kwargs``); :func:`backbone_options` reads them from
the builder's signature, so a user backbone owns and validates its own options. ``inputs`` holds
what the data decide: ``n_genes``, ``n_latent``, ``condition_specs`` (list of dicts),
``perturbation`` (number of perturbation kinds, 0 = none), ``edge_index`` (2, E) / ``edge_sign`` /
``edge_weight`` / ``edge_type`` (E,) and ``membership`` (G, P) or ``None``.
"""
from __future__ import annotations

import inspect

from torch import nn

from .ablations import MLPVelocity, gene_token_transformer, modules_only
from .transformer import GRNTransformer
from .velocity import VelocityField

__all__ = ["BACKBONES", "NET_OPTIONS", "backbone_options", "build_backbone", "register_backbone"]

NET_OPTIONS = tuple(n for n, p in inspect.signature(GRNTransformer.__init__).parameters.items()
                    if p.kind is p.KEYWORD_ONLY and n not in ("perturbation", "n_latent"))  # set from the data

BACKBONES: dict = {}  # name → builder(inputs, **architecture options) -> VelocityField


def register_backbone(name: str):
    """Register ``builder(inputs: dict, **options) -> VelocityField`` as ``backbone=name``.

    ``inputs`` holds ``n_genes``, ``condition_specs`` (list of dicts), ``perturbation`` (number of
    perturbation kinds, 0 = none; ``True`` = one),
    ``edge_index``/``edge_sign``/``edge_weight``/``edge_type`` and ``membership`` (G, P) or ``None``.
    The builder's keyword arguments are the options users may pass (``GRNDiff(..., hidden=64)``).
    """
    def deco(builder):
        BACKBONES[name] = builder
        return builder
    return deco


def build_backbone(backbone: str, inputs: dict, **hparams) -> nn.Module:
    """Build the velocity network registered as ``backbone`` from data-derived ``inputs``."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    net = BACKBONES[backbone](inputs, **hparams)
    if not isinstance(net, VelocityField):
        raise TypeError(f"backbone {backbone!r} built a {type(net).__name__}, not a grndiff.nn.VelocityField")
    return net


def _graph(inputs: dict) -> tuple:
    return tuple(inputs.get(k) for k in ("edge_index", "edge_sign", "edge_weight", "edge_type"))


def _common(inputs: dict) -> dict:
    return {"condition_specs": inputs.get("condition_specs", []), "perturbation": int(inputs.get("perturbation") or 0)}


@register_backbone("grn")
def _grn(inputs, **options):
    return GRNTransformer(inputs["n_genes"], *_graph(inputs), membership=inputs.get("membership"), **_common(inputs),
                          **options)


@register_backbone("mlp")
def _mlp(inputs, hidden: int = 512, depth: int = 3, cond_dropout: float = 0.1, **_graph_options):
    # the other backbones' architecture options (heads, mode, ...) have no meaning here
    return MLPVelocity(inputs["n_genes"], inputs.get("condition_specs", []), hidden=hidden, depth=depth,
                       cond_dropout=cond_dropout, perturbation=int(inputs.get("perturbation") or 0))


@register_backbone("gene_tokens")
def _gene_tokens(inputs, **options):
    return gene_token_transformer(inputs["n_genes"], **_common(inputs), **options)


@register_backbone("modules_only")
def _modules_only(inputs, **options):
    if inputs.get("membership") is None and not options.get("n_learned_modules"):
        raise ValueError("backbone='modules_only' needs gene sets (modules=...) or n_learned_modules > 0")
    return modules_only(inputs["n_genes"], inputs.get("membership"), **_common(inputs), **options)


def backbone_options(backbone: str = "grn") -> tuple[str, ...]:
    """The architecture options backbone ``backbone`` takes: its builder's own keyword arguments
    (:func:`register_backbone`), plus the graph transformer's when the builder
    passes ``**options`` on to it."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    params = list(inspect.signature(BACKBONES[backbone]).parameters.values())[1:]  # after `inputs`
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        named += list(NET_OPTIONS)
    return tuple(dict.fromkeys(named))
