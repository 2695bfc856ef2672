"""Where the flow starts. Every source is one object that owns its fit, its draw, its training
pairing and its velocity constraint; one argument configures it (``source="gaussian"``,
``source={"name": "gaussian", "k": 50}`` or ``source=GaussianSource(k=50)``; ``class_path`` in YAML).

============================  =========================================================  ==========
source                        x₀                                                         predict()
============================  =========================================================  ==========
:class:`NoiseSource`          N(0, I)                                                    no
:class:`GaussianSource`       per-group Gaussian on ``k`` log-PCs, low-rank coupling     no
:class:`ControlSource`        a paired control cell                                      yes
:class:`~grndiff.flow.shifted_control.ShiftedControlSource`
                              a control cell moved by the cell-state-dependent shift     yes
                              estimated from the contexts seen in training
============================  =========================================================  ==========

Transporting control cells to perturbed cells, rather than noise to cells, follows the
"source = control population" formulation of CellFlow / conditional OT maps; the path and the
loss are the same either way.

The contract (:class:`Source`), in the model's per-gene standardised units, shapes ``(B, G)``:

- ``build(n_genes, condition_specs, gene_scale, context_keys)`` sizes the buffers (once, before
  training or loading weights);
- ``fit(x, cond, pert, control)`` on the training cells (``fitted`` then True);
- ``pair(x1, cond, pert, x_ctrl, generator)`` → ``x₀`` for training;
- ``draw(n, cond, pert, seed=, generator=)`` → ``x₀`` for generation;
- ``transport(x_ctrl, cond, pert)`` → ``x₀`` for counterfactual prediction (``can_transport``);
- ``constrain(v, cond=, pert=)`` → the velocity the flow may use (e.g. kept off the source's axes,
  for some cells).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .gaussian import PerGroupGaussian, seeded_noise
from .groups import group_ids, group_radix

__all__ = ["Source", "NoiseSource", "GaussianSource", "ControlSource", "PerGroupGaussian", "seeded_noise",
           "make_source", "register_source", "source_classes", "group_radix", "group_ids"]


_SOURCES: dict[str, type] = {}  # name → Source class (filled by Source.__init_subclass__ / register_source)


def register_source(cls: type) -> type:
    """Register a :class:`Source` subclass under its ``name`` (done automatically for a subclass that
    sets ``name``; usable as a decorator). A model saved with it loads back wherever the class is
    defined (imported) before :meth:`GRNDiff.load`. Returns ``cls``."""
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"register_source takes a Source subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or name == "source":
        raise ValueError(f"{cls.__name__} needs its own `name` (a non-empty string) to be registered")
    _SOURCES[name] = cls
    return cls


class Source(nn.Module):
    """Base class of the flow's sources (see the module docstring for the contract).

    Subclasses set ``name`` (the registry key), ``needs_control`` (training batches must carry a
    paired control cell ``x_ctrl``), ``can_transport`` and ``allows_ot_pairing``, and list their
    constructor options in ``options`` so :meth:`config` can write them as plain types.
    """

    name = "source"
    options: tuple[str, ...] = ()
    needs_control = False
    can_transport = False
    allows_ot_pairing = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a subclass naming itself is a source users can configure and load
            register_source(cls)

    def __init__(self):
        super().__init__()
        self.n_genes = 0
        self.register_buffer("_fitted", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------- plumbing
    def config(self) -> dict:
        """``{"name": ..., option: value, ...}``: plain types, enough to rebuild with :func:`make_source`."""
        return {"name": self.name, **{k: getattr(self, k) for k in self.options}}

    def build(self, n_genes: int, condition_specs=(), gene_scale: torch.Tensor | None = None,
              context_keys: Sequence[str] = ()) -> Source:
        """Size the buffers for ``n_genes`` genes and these conditions. Returns ``self``."""
        self.n_genes = int(n_genes)
        return self

    @property
    def fitted(self) -> bool:
        return bool(self._fitted)

    @property
    def needs_fit(self) -> bool:
        """True while a data-dependent source still has to be fitted on training cells."""
        return False

    def fit(self, x: torch.Tensor, cond: dict | None = None, pert: torch.Tensor | None = None,
            control: torch.Tensor | None = None) -> Source:
        """Fit on training cells ``x`` (N, G); ``cond`` {name: (N,)}, ``pert`` (N, S) gene indices
        (−1 = none), ``control`` (N,) bool. Sources without parameters ignore them."""
        self._fitted.fill_(True)
        return self

    # ------------------------------------------------------------- the flow
    def pair(self, x1: torch.Tensor, cond: dict | None, pert: torch.Tensor | None, x_ctrl: torch.Tensor | None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """``x₀`` (B, G) paired with the data cells ``x1`` (B, G) for training."""
        raise NotImplementedError

    def draw(self, n: int, cond: dict | None = None, pert: torch.Tensor | None = None, *, seed: int | None = None,
             generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> torch.Tensor:
        """``x₀`` (n, G) for generation."""
        raise NotImplementedError

    def transport(self, x_ctrl: torch.Tensor, cond: dict | None = None,
                  pert: torch.Tensor | None = None) -> torch.Tensor:
        """``x₀`` (B, G) from which control cells ``x_ctrl`` (B, G) flow to the target ``cond``/``pert``."""
        raise ValueError(
            f"this model's source ({self.name!r}) generates cells but cannot transport control cells, so "
            "predict() would return the control cells unchanged. Build the model with "
            "source='shifted_control' (or 'control'), after registering the control cells in setup_anndata "
            "(perturbation_key=... with control=..., or control_obs={'condition': 'ctrl'}).")

    def constrain(self, v: torch.Tensor, cond: dict | None = None, pert: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity (B, G) the flow may use for cells with conditions ``cond``/``pert``;
        identity unless the source fixes a low-rank state."""
        return v

    def unseen(self, cond: dict | None, n: int) -> torch.Tensor:
        """(n,) bool: cells whose condition group had no training cell, so :meth:`draw` falls back
        to the pooled distribution (none for sources without groups)."""
        return torch.zeros(n, dtype=torch.bool)


class NoiseSource(Source):
    """``x₀ ~ N(0, I)`` in the model's per-gene standardised units."""

    name = "noise"

    def pair(self, x1, cond, pert, x_ctrl, generator=None):
        return torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)

    def draw(self, n, cond=None, pert=None, *, seed=None, generator=None, device=None, dtype=torch.float32):
        if seed is not None:
            return seeded_noise((n, self.n_genes), seed, device=device, dtype=dtype)
        return torch.randn(n, self.n_genes, generator=generator, device=device, dtype=dtype)


class ControlSource(Source):
    """``x₀`` = the paired control cell (a random control cell of the same ``match_keys`` group,
    drawn afresh every epoch by the data module); :meth:`transport` returns the control cells."""

    name = "control"
    needs_control = True
    can_transport = True

    def pair(self, x1, cond, pert, x_ctrl, generator=None):
        return _checked_control(x1, x_ctrl, self.name)

    def draw(self, n, cond=None, pert=None, **kw):
        raise ValueError("a model with source='control' transports control cells: use predict(ctrl_cells, "
                         "conditions); to generate cells from nothing build it with source='gaussian'")

    def transport(self, x_ctrl, cond=None, pert=None):
        return x_ctrl


def _checked_control(x1: torch.Tensor, x_ctrl: torch.Tensor | None, name: str) -> torch.Tensor:
    if x_ctrl is None:
        raise KeyError(f"source={name!r} needs paired control cells (batch['x0']): the data module pairs them when "
                       "the source needs control cells (setup_anndata with a perturbation_key or control_obs)")
    if tuple(x_ctrl.shape) != tuple(x1.shape):
        raise ValueError(f"the paired control cells have shape {tuple(x_ctrl.shape)} but the batch is "
                         f"{tuple(x1.shape)}: pair one control cell with every data cell, over the same genes")
    return x_ctrl.to(x1.dtype)


class GaussianSource(Source):
    r"""A per-group Gaussian on ``k`` principal axes, fitted to the training cells, with the
    low-rank coupling: the flow starts as that strong low-rank baseline and the network learns
    the gene-level residual (:class:`PerGroupGaussian` holds the math).

    A flow from N(0, I) generates far worse cells at the same budget (30-PC energy distance of
    held-out kang2018 cells: ``benchmarks/results/generation.md`` and ``docs/benchmarks.md``).

    Parameters
    ----------
    k
        Principal axes (capped by cells − 1 and genes at fit time).
    residual
        Scale of the per-gene residual noise off the axes.
    coupling
        ``"lowrank"``: ``x₀`` keeps ``x₁``'s ``k`` coordinates and the velocity is projected off the
        axes (:meth:`PerGroupGaussian.couple`); ``"independent"``: ``x₀`` drawn afresh.
    space
        ``"log"``: axes in log1p units (the scaled data times the scaler's per-gene std: the usual
        PCA of expression); ``"scaled"``: in per-gene standardised units.
    """

    name = "gaussian"
    options = ("k", "residual", "coupling", "space")

    def __init__(self, k: int = 100, residual: float = 0.5, coupling: str = "lowrank", space: str = "log"):
        super().__init__()
        if coupling not in ("lowrank", "independent"):
            raise ValueError(f"GaussianSource coupling must be 'lowrank' or 'independent', got {coupling!r}")
        if space not in ("log", "scaled"):
            raise ValueError(f"GaussianSource space must be 'log' or 'scaled', got {space!r}")
        if int(k) < 1:
            raise ValueError(f"GaussianSource k must be ≥ 1, got {k}")
        self.k, self.residual, self.coupling, self.space = int(k), float(residual), coupling, space
        self.allows_ot_pairing = coupling == "independent"  # the low-rank coupling pairs each x₀ with its own x₁
        self.radix: list[tuple[str, int]] = []
        self.dist: PerGroupGaussian | None = None
        self._scale = None

    def build(self, n_genes, condition_specs=(), gene_scale=None, context_keys=()):
        super().build(n_genes)
        # the per-group (k, k) covariance factors are held for every combination: 50M floats at most
        self.radix = group_radix(condition_specs, max_groups=min(100_000, max(50_000_000 // self.k ** 2, 1)))
        n_groups = 1
        for _, r in self.radix:
            n_groups *= max(r, 1)
        self.dist = PerGroupGaussian(self.n_genes, n_groups + 1, self.k, self.residual)
        self._scale = None if gene_scale is None or self.space == "scaled" else torch.as_tensor(gene_scale).float()
        return self

    @property
    def fitted(self) -> bool:
        return self.dist is not None and bool(self.dist.fitted)

    @property
    def needs_fit(self) -> bool:
        return not self.fitted

    def groups(self, cond, n, device=None) -> torch.Tensor:
        return group_ids(self.radix, cond, n, device=device)

    def fit(self, x, cond=None, pert=None, control=None):
        self.dist.fit(x.float().cpu(), self.groups({k: v.cpu() for k, v in (cond or {}).items()}, x.shape[0]),
                      scale=self._scale)
        return self

    def pair(self, x1, cond, pert, x_ctrl, generator=None):
        g = self.groups(cond, x1.shape[0], device=x1.device)
        if self.coupling == "lowrank":
            return self.dist.couple(x1, g, generator=generator)
        return self.dist.sample(g, generator=generator, device=x1.device, dtype=x1.dtype)

    def draw(self, n, cond=None, pert=None, *, seed=None, generator=None, device=None, dtype=torch.float32):
        return self.dist.sample(self.groups(cond, n), seed=seed, generator=generator, device=device, dtype=dtype)

    def constrain(self, v, cond=None, pert=None):
        return self.dist.project_off(v) if self.coupling == "lowrank" else v

    def unseen(self, cond, n):
        if not self.fitted:
            return super().unseen(cond, n)
        g = self.groups(cond, n)
        # a group without training cells keeps the pooled mean (PerGroupGaussian.fit) exactly
        return (g > 0) & (self.dist.mean[g] == self.dist.mean[0]).all(1)


def source_classes() -> dict[str, type[Source]]:
    """The registry: name → class of every registered source (the shipped ones, and every
    subclass of :class:`Source` that sets its own ``name``)."""
    return dict(_SOURCES)


def make_source(spec: str | dict | Source) -> Source:
    """A source from its name (``"gaussian"``), its config (``{"name": "gaussian", "k": 50}``, as
    :meth:`Source.config` writes it) or a :class:`Source` (returned as is)."""
    if isinstance(spec, Source):
        return spec
    classes = source_classes()
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or spec.get("name") not in classes:
        name = spec.get("name") if isinstance(spec, dict) else spec
        raise ValueError(f"source must be one of {sorted(classes)} (a name, a config dict with 'name', or a Source "
                         f"object), got {name!r}. A source of your own is registered by subclassing "
                         "grndiff.flow.Source with a `name`; define (import) it before GRNDiff.load")
    kw = {k: v for k, v in spec.items() if k != "name"}
    cls = classes[spec["name"]]
    unknown = set(kw) - set(cls.options)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)} for source {spec['name']!r}; it takes {list(cls.options)}")
    return cls(**kw)
