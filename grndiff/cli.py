"""Command line: ``grndiff fit`` (LightningCLI), ``grndiff sample``, ``grndiff evaluate``, ``grndiff demo``.

::

    grndiff fit --config configs/kang.yaml
    grndiff sample --ckpt runs/kang/model --n-cells 500 --conditions cell_type="B cells" condition=stim --out gen.h5ad
    grndiff evaluate --real real.h5ad --generated gen.h5ad --groupby cell_type
    grndiff demo --out runs/demo

Quiet by default (no Lightning banners, one progress bar on a terminal, none in a log); every
error is one line on stderr with exit status 2. ``--verbose`` shows Lightning's output,
``--debug`` the traceback of an error.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def __getattr__(name: str):
    # AnnDataModule subclasses a Lightning class: built on first use, so `grndiff sample --help`
    # does not wait for torch and Lightning to import
    if name == "AnnDataModule":
        cls = _data_module_class()
        globals()["AnnDataModule"] = cls
        return cls
    raise AttributeError(f"module 'grndiff.cli' has no attribute {name!r}")


def _data_module_class():
    import lightning as L

    class AnnDataModule(L.LightningDataModule):
        """The CLI's data: loads an AnnData, registers it, fits the processor and builds the gene graph.

        Sizes the model needs (genes, graph, condition vocabularies) are exposed as ``model_inputs``
        and linked into the model by :class:`GRNDiffCLI`, never typed into YAML.

        Parameters
        ----------
        dataset
            A shipped dataset (``kang2018``, ``kang2018_ctrl``, ``kang2018_tiny``, ``krumsiek11``) or an
            ``.h5ad`` path.
        prior, modules
            Regulatory graph and gene sets (shipped names, paths, or ``null``).
        """

        def __init__(self, dataset: str = "kang2018", layer: str | None = None, value_kind: str | None = None,
                     condition_keys: list[str] | None = None, continuous_keys: list[str] | None = None,
                     set_keys: list[str] | None = None, hierarchy: list[str] | None = None,
                     perturbation_key: str | None = None, control: str = "control", control_obs: dict | None = None,
                     symbol_key: str | None = None, prior: str | list[str] | None = "collectri",
                     modules: str | None = "hallmark",
                     organism: str = "human", add_reverse: bool = False, batch_size: int = 128,
                     val_fraction: float = 0.1, split_seed: int = 0, stratify_key: str | None = None,
                     match_keys: list[str] | None = None, num_workers: int = 0):
            super().__init__()
            from .data import ExpressionProcessor, setup_anndata
            from .graph import GeneGraph

            self.save_hyperparameters()
            adata = load_adata(dataset)
            setup_anndata(adata, layer=layer, value_kind=value_kind, condition_keys=condition_keys,
                          continuous_keys=continuous_keys,
                          set_keys=set_keys, hierarchy=hierarchy, perturbation_key=perturbation_key, control=control,
                          control_obs=control_obs, symbol_key=symbol_key)
            self.adata = adata
            self.processor = ExpressionProcessor().fit(adata)
            self.graph = GeneGraph.for_anndata(adata, prior, modules, symbol_key=symbol_key, organism=organism,
                                               add_reverse=add_reverse)
            from .data.conditions import warn_case_only_matches
            warn_case_only_matches(self.graph, organism)
            self.with_controls = False  # set from the model's source by GRNDiffCLI before fitting
            self._inner = None

        @property
        def model_inputs(self) -> dict:
            from .train.inputs import module_inputs
            return module_inputs(self.graph, self.processor, self.hparams.match_keys)

        def export_state(self, model_hparams: dict) -> dict:
            from .data import get_setup
            from .train.inputs import config_from_hparams
            hp = self.hparams
            cfg = config_from_hparams(model_hparams, prior=hp.prior, modules=hp.modules, organism=hp.organism,
                                      match_keys=hp.match_keys)
            from ._output import var_to_state
            return {"config": cfg, "setup": get_setup(self.adata), "processor": self.processor.to_state(),
                    "graph": self.graph.to_state(), "var": var_to_state(self.adata.var, self.processor.genes)}

        def _dm(self):
            if self._inner is None:  # the factory the Python API uses (grndiff.data.ondisk.datamodule)
                from .data import ondisk
                hp = self.hparams
                self._inner = ondisk.datamodule(self.processor, self.adata, with_controls=self.with_controls,
                                                match_keys=hp.match_keys, batch_size=hp.batch_size,
                                                val_fraction=hp.val_fraction, split_seed=hp.split_seed,
                                                stratify_key=hp.stratify_key, num_workers=hp.num_workers)
            return self._inner

        @property
        def inner(self):
            """The in-memory / streaming data module this one wraps (built on first use)."""
            return self._dm()

        def setup(self, stage: str | None = None):
            self._dm().setup(stage)

        def train_dataloader(self):
            return self._dm().train_dataloader()

        def val_dataloader(self):
            return self._dm().val_dataloader()

    AnnDataModule.__qualname__ = "AnnDataModule"  # jsonargparse names it grndiff.cli.AnnDataModule
    return AnnDataModule


def load_adata(dataset: str):
    """A shipped dataset by name, or an ``.h5ad`` file."""
    import anndata as ad

    from . import datasets
    if hasattr(datasets, dataset) and not dataset.startswith("_"):
        return getattr(datasets, dataset)()
    p = Path(dataset)
    if p.suffix == ".h5ad" and p.exists():
        return ad.read_h5ad(p)
    names = [n for n in ("kang2018", "kang2018_ctrl", "kang2018_tiny", "krumsiek11")]
    raise FileNotFoundError(f"dataset {dataset!r} is neither a shipped dataset ({names}) nor an existing .h5ad file")


def _cli_class():
    from lightning.pytorch.cli import LightningCLI

    from .train import AtomicCheckpointIO, FlowModule

    class GRNDiffCLI(LightningCLI):
        """LightningCLI with data-derived sizes linked into the model and a self-contained export."""

        def add_arguments_to_parser(self, parser):
            parser.link_arguments("data.model_inputs", "model.inputs", apply_on="instantiate")
            parser.add_argument("--export", type=str | None, default=None,
                                help="directory to save the trained model for `grndiff sample` (GRNDiff.save)")

        def before_instantiate_classes(self):
            # the YAML may write the source as ``class_path`` + ``init_args``; FlowModule takes a name,
            # a config dict or a Source, so turn it into the config dict here
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            src = cfg.get("model.source") if "model" in cfg else None
            if src is not None and not isinstance(src, str):
                cfg["model.source"] = source_config(src)
            export = cfg.get("export") if "export" in cfg else None
            if export and self.subcommand == "fit":
                check_export_dir(export)  # before training: a bad path must not cost the run

        def _parse_ckpt_path(self):
            # LightningCLI reads --ckpt_path with a bare torch.load; check it first so a truncated or
            # unsafe file gets the same message as GRNDiff.load
            sub = self.config.get("subcommand")
            path = self.config[sub].get("ckpt_path") if sub else None
            if path and Path(path).is_file():
                from .train.checkpoint import safe_load
                safe_load(path)
            super()._parse_ckpt_path()

        def before_fit(self):
            from .train.quiet import one_progress_bar
            self.datamodule.with_controls = self.model.source.needs_control  # the data follow the model
            one_progress_bar(self.trainer)  # one bar per fit, none when stderr is a log file
            self.model.export_state = self.datamodule.export_state(dict(self.model.hparams))

        def after_fit(self):
            export = self.config.get(self.subcommand, {}).get("export")
            if export:
                from .model import GRNDiff
                model = GRNDiff.from_state({**self.model.export_state, "state_dict": self.model.state_dict(),
                                            "is_trained": True})
                model.save(export, overwrite=True)
                print(f"saved model to {export}")

    return GRNDiffCLI, FlowModule, AtomicCheckpointIO


def source_config(spec) -> dict | str:
    """A source as the CLI's YAML writes it — ``{"class_path": "grndiff.flow.GaussianSource",
    "init_args": {"k": 100}}`` (a dict or a jsonargparse Namespace) — as the plain config dict
    ``{"name": "gaussian", "k": 100}`` that :func:`grndiff.flow.make_source` takes. A name or a config
    dict with ``name`` is returned as is."""
    import importlib

    from .flow.sources import Source, source_classes
    if hasattr(spec, "as_dict"):  # jsonargparse Namespace
        spec = spec.as_dict()
    if isinstance(spec, str) or not isinstance(spec, dict) or "class_path" not in spec:
        return spec
    path = str(spec["class_path"])
    init = dict(spec.get("init_args") or {})
    unknown = set(spec) - {"class_path", "init_args", "dict_kwargs"}
    if unknown:
        raise ValueError(f"model.source: unexpected keys {sorted(unknown)} next to class_path; put the options "
                         "under init_args")
    init.update(spec.get("dict_kwargs") or {})
    by_class = {c.__name__: c for c in source_classes().values()}
    cls = None
    if "." in path:
        mod, _, attr = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError):
            cls = None
    else:
        cls = by_class.get(path)
    if not (isinstance(cls, type) and issubclass(cls, Source) and cls.name in source_classes()):
        raise ValueError(f"model.source: class_path {path!r} is not a grndiff source; use one of "
                         f"{['grndiff.flow.' + n for n in sorted(by_class)]} (or a name such as 'gaussian')")
    return {"name": cls.name, **init}


def check_export_dir(path) -> None:
    """Refuse, before any training, an ``--export`` directory that could not be written: a file, a
    folder without write permission, or a non-empty folder that is not a saved grndiff model."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--export {str(path)!r} is a file; give a directory for the saved model")
    if p.is_dir() and any(p.iterdir()):
        from .train.checkpoint import MODEL_FILES
        names = [q.name for q in p.iterdir()]
        other = sorted(n for n in names if n not in MODEL_FILES and not n.startswith(".tmp-"))
        if other or "model.pt" not in names:
            raise FileExistsError(f"--export {str(path)!r} is a non-empty directory that holds no saved grndiff model "
                                  f"({(other or names)[:5]}); choose a new or empty directory (a saved model there is "
                                  "replaced)")
    parent = p if p.is_dir() else next((q for q in p.parents if q.exists()), Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--export {str(path)!r}: cannot write in {str(parent)!r} (no permission)")


def cli_fit(argv: list[str] | None, verbose: bool = False):
    """``grndiff fit``/``validate``; ``argv=None`` reads ``sys.argv`` (as LightningCLI expects from a shell)."""
    from .train.runtime import cpu_runtime
    GRNDiffCLI, FlowModule, AtomicCheckpointIO = _cli_class()
    with cpu_runtime():  # every usable core, large tensors kept mapped (as GRNDiff.train)
        return GRNDiffCLI(FlowModule, __getattr__("AnnDataModule"), args=argv, save_config_kwargs={"overwrite": True},
                          trainer_defaults={"plugins": [AtomicCheckpointIO()], "gradient_clip_val": 1.0,
                                            "enable_model_summary": verbose})


def _parse_conditions(items: list[str]) -> dict:
    out = {}
    for it in items or []:
        if "=" not in it:
            raise ValueError(f"--conditions expects key=value pairs such as cell_type=\"B cells\", got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip().strip('"').strip("'")
    return out


def check_out_file(flag: str, path: str, suffixes: tuple[str, ...], what: str) -> None:
    """Refuse, before any work, an output path with the wrong extension or in a folder that is
    missing or not writable."""
    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path!r}: this command writes {what}; name the file *{suffixes[0]} "
                         f"(e.g. {p.with_suffix(suffixes[0]).name})")
    if p.is_dir():
        raise ValueError(f"{flag} {path!r} is a directory; give a file name ending in {suffixes[0]}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"{flag} {path!r}: the folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path!r}: cannot write in {str(parent)!r} (no permission)")


def cmd_sample(args) -> None:
    from .model import GRNDiff
    check_out_file("--out", args.out, (".h5ad",), "an AnnData (HDF5)")  # before the model is loaded
    conditions = _parse_conditions(args.conditions)
    model = GRNDiff.load(args.ckpt)
    gen = model.sample(args.n_cells, conditions, n_steps=args.n_steps, method=args.method,
                       guidance=args.guidance, seed=args.seed, counts=args.counts, progress=True)
    gen.write_h5ad(args.out)
    print(f"wrote {gen.n_obs} cells × {gen.n_vars} genes to {args.out}")


def cmd_evaluate(args) -> None:
    import anndata as ad

    from .data import log1p_normalized_copy
    from .metrics import evaluate
    for flag, path in (("--real", args.real), ("--generated", args.generated)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no .h5ad file at {path!r}")
    if args.out:
        check_out_file("--out", args.out, (".csv",), "a CSV table")
    real = log1p_normalized_copy(ad.read_h5ad(args.real), layer=args.layer)
    gen = log1p_normalized_copy(ad.read_h5ad(args.generated))
    report = evaluate(real, gen, groupby=args.groupby)
    print(report.to_string())
    if args.out:
        report.to_csv(args.out)


def main(argv: list[str] | None = None) -> None:
    """Every error ends as one line on stderr and exit code 2 (``--debug``: the traceback);
    Lightning's banners and known-harmless warnings are silenced (``--verbose``: shown)."""
    from_shell = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, verbose = "--debug" in argv, "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    fit = bool(argv) and argv[0] in ("fit", "validate")
    # sample/evaluate/demo: arguments (and --help) are parsed before torch and Lightning are imported
    args = None if fit else _parser().parse_args(argv)
    try:
        from .train.quiet import quiet
        with quiet(verbose):
            if fit:
                _run_fit(argv, from_shell, verbose)
            else:
                _run(args)
    except Exception as e:  # noqa: BLE001 — the one place where errors become a message for people
        if debug:
            raise
        print(f"grndiff: error: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        raise SystemExit(2) from None


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    msg = " ".join(str(msg).split()) or type(e).__name__
    plain = (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError, PermissionError)
    return msg if isinstance(e, plain) else f"{type(e).__name__}: {msg}"


def _run_fit(argv: list[str], from_shell: bool, verbose: bool) -> None:
    if from_shell:  # LightningCLI reads sys.argv itself; give it the arguments without our flags
        sys.argv[1:] = argv
    cli_fit(None if from_shell else argv, verbose=verbose)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grndiff", description="graph-based gene-regulatory diffusion models. "
                                "`grndiff fit --help` for training (LightningCLI). Global flags: --verbose "
                                "(Lightning's banners and warnings), --debug (tracebacks).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fit", help="train from a YAML config (LightningCLI)")
    s = sub.add_parser("sample", help="generate cells from a saved model")
    s.add_argument("--ckpt", required=True, help="model directory (GRNDiff.save / --export) or Lightning .ckpt")
    s.add_argument("--n-cells", type=int, default=500)
    s.add_argument("--conditions", nargs="*", default=[],
                   help='key=value pairs, e.g. cell_type="B cells" condition=stim')
    s.add_argument("--n-steps", type=int, default=50)
    s.add_argument("--method", default="euler", choices=["euler", "heun", "dopri5"])
    s.add_argument("--guidance", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    # the choices are grndiff.data.normalize.COUNT_MODELS, not imported here: the CLI starts without torch
    s.add_argument("--counts", nargs="?", const="nearest", default=False, choices=["nearest", "poisson"],
                   help="also write layers['counts'] (default model 'nearest': expected counts rounded; "
                        "'poisson': a Poisson draw)")
    s.add_argument("--out", required=True)
    e = sub.add_parser("evaluate", help="compare generated with real cells")
    e.add_argument("--real", required=True)
    e.add_argument("--generated", required=True)
    e.add_argument("--groupby", default=None)
    e.add_argument("--layer", default=None)
    e.add_argument("--out", default=None, help="CSV path for the table")
    d = sub.add_parser("demo", help="the main job: train on Kang, generate, evaluate, write a report")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--quick", action="store_true", help="a small run for CI (about a minute)")
    d.add_argument("--seed", type=int, default=0)
    return p


def _run(args) -> None:
    if args.cmd == "sample":
        cmd_sample(args)
    elif args.cmd == "evaluate":
        cmd_evaluate(args)
    elif args.cmd == "demo":
        from .demo import run_demo
        run_demo(args.out, quick=args.quick, seed=args.seed)


if __name__ == "__main__":
    main()
