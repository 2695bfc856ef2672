"""Plots of a trained model: a module's regulatory sub-graph with learnt attention, loss curves."""
from __future__ import annotations

import numpy as np

from ._figure import finish, new_axes


def _module_genes(model, module, n_genes: int) -> tuple[str, np.ndarray]:
    """Name and gene indices of a module: prior members, or a learned module's top genes."""
    import torch

    pooling = getattr(model.module.net, "pooling", None)
    if pooling is None:
        raise ValueError("this model has no module tokens: build it with modules=... or n_learned_modules > 0")
    names = list(model.token_names)
    if isinstance(module, (int, np.integer)):
        if not 0 <= module < len(names):
            raise IndexError(f"module index {module} out of range: the model has {len(names)} modules")
        p = int(module)
    elif module in names:
        p = names.index(module)
    else:
        hits = [n for n in names if str(module).upper() in n.upper()]
        if len(hits) != 1:
            raise KeyError(f"module {module!r} not found (matches: {hits[:5]}); the model's tokens are "
                           f"{names[:8]}{'...' if len(names) > 8 else ''}")
        p = names.index(hits[0])
    with torch.no_grad():
        col = pooling.assignment()[:, p].cpu().numpy()  # (G,)
    idx = np.flatnonzero(col > 0) if p < pooling.n_prior else np.argsort(-col)[:n_genes]
    return names[p], idx


def module_graph(model, module, *, layer: int = 0, head: int | None = None, top_edges: int = 40,
                 regulators: bool = True, n_genes: int = 30, seed: int = 0, ax=None, show: bool | None = None,
                 save=None, figsize=(7, 6)):
    """A module's genes and the prior edges between them, edge width = learnt shared attention.

    Parameters
    ----------
    model
        A trained :class:`~grndiff.GRNDiff` (``backbone="grn"``, ``mode="shared"``).
    module
        Token name (``"HALLMARK_INTERFERON_ALPHA_RESPONSE"``), a unique substring
        (``"INTERFERON_ALPHA"``), or an index into ``model.token_names``.
    layer
        Which graph-attention layer (``model.module.net.graph_layers()``).
    head
        Attention head; ``None`` averages the heads.
    top_edges
        Draw the strongest edges only.
    regulators
        Also draw regulators outside the module that target its genes (grey nodes).
    n_genes
        Genes taken for a learned module (largest assignment weight).
    seed
        Spring-layout seed.
    ax, show, save, figsize
        scanpy-style figure options.

    Returns
    -------
    The Axes when ``show=False`` (or when drawing into a given ``ax``), else ``None``. Edge colours:
    red = activation, blue = repression, grey = unsigned prior edge; the attention weight of edge
    ``j → i`` is the share of target ``i``'s incoming messages that comes from ``j``.
    """
    import matplotlib.pyplot as plt
    import networkx as nx
    import torch

    layers = model.module.net.graph_layers() if hasattr(model.module.net, "graph_layers") else []
    if not layers:
        raise ValueError("this model has no graph-attention layers (backbone must be 'grn')")
    if not -len(layers) <= layer < len(layers):
        raise IndexError(f"layer {layer} out of range: the model has {len(layers)} graph layers")
    gat = layers[layer]
    if gat.mode != "shared":
        raise ValueError("module_graph draws the shared attention weights; this model uses mode='dynamic'")
    with torch.no_grad():
        alpha = gat.shared_weights().cpu().numpy()  # (E, H)
    if head is not None and not 0 <= head < alpha.shape[1]:
        raise IndexError(f"head {head} out of range: the layer has {alpha.shape[1]} heads")
    w = alpha.mean(1) if head is None else alpha[:, head]  # (E,)
    src, dst = gat.src.cpu().numpy(), gat.dst.cpu().numpy()
    sign = gat.sign_idx.cpu().numpy() - 1  # {-1, 0, +1}
    name, idx = _module_genes(model, module, n_genes)
    members = np.zeros(model.graph.n_nodes, dtype=bool)  # latent nodes (unmeasured genes) may regulate
    members[idx] = True
    keep = (src != dst) & members[dst] & (members[src] | regulators)
    order = np.flatnonzero(keep)[np.argsort(-w[keep])][:top_edges]
    genes = np.asarray(list(model.var_names) + list(model.graph.latent_genes))

    ax, own = new_axes(ax, figsize)
    G = nx.DiGraph()
    for e in order:
        G.add_edge(genes[src[e]], genes[dst[e]], weight=float(w[e]), sign=int(sign[e]))
    if G.number_of_nodes() == 0:  # no prior edges inside the module: show its genes alone
        G.add_nodes_from(genes[idx[:n_genes]])
    pos = nx.spring_layout(G, seed=seed, k=1.5 / np.sqrt(max(G.number_of_nodes(), 1)))
    in_module = set(genes[idx].tolist())
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=260,
                           node_color=["#f4a259" if n in in_module else "#d0d0d0" for n in G.nodes])
    nx.draw_networkx_labels(G, pos, ax=ax, font_size=7)
    if G.number_of_edges():
        ws = np.array([d["weight"] for *_, d in G.edges(data=True)])
        widths = 0.5 + 4.5 * ws / ws.max()
        colors = [{1: "#c0392b", -1: "#2e6fba"}.get(d["sign"], "0.5") for *_, d in G.edges(data=True)]
        nx.draw_networkx_edges(G, pos, ax=ax, width=widths, edge_color=colors, arrows=True, arrowsize=8,
                               node_size=260, connectionstyle="arc3,rad=0.08")
    head_txt = "mean over heads" if head is None else f"head {head}"
    ax.set_title(f"{name}\nlayer {layer}, {head_txt}; {G.number_of_edges()} edges", fontsize=9)
    ax.set_axis_off()
    plt.setp(ax.spines.values(), visible=False)
    return finish(ax, own=own, show=show, save=save)


def loss_curves(model, *, x: str = "step", log: bool = True, ax=None, show: bool | None = None, save=None,
                figsize=(5, 3.5)):
    """Training and validation loss per epoch from ``model.history``.

    Parameters
    ----------
    model
        A :class:`~grndiff.GRNDiff` after :meth:`~grndiff.GRNDiff.train`.
    x
        ``"step"`` or ``"epoch"`` on the x axis.
    log
        Logarithmic y axis.
    ax, show, save, figsize
        scanpy-style figure options.

    Returns
    -------
    The Axes when ``show=False`` (or when drawing into a given ``ax``), else ``None``.
    """
    h = getattr(model, "history", None)
    if h is None or len(h) == 0:
        raise ValueError("model.history is empty: train the model first (model.train(...))")
    if x not in h.columns:
        raise KeyError(f"x must be a column of model.history {list(h.columns)}, got {x!r}")
    curves = [c for c in ("train_loss", "val_loss") if c in h.columns]
    if not curves:
        raise ValueError(f"model.history has no loss columns: {list(h.columns)}")
    ax, own = new_axes(ax, figsize)
    for c in curves:
        d = h[[x, c]].dropna()
        ax.plot(d[x].to_numpy(), d[c].to_numpy(), marker="o" if len(d) < 30 else None, ms=3,
                label=c.replace("_", " "))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("flow-matching loss")
    ax.legend(frameon=False)
    return finish(ax, own=own, show=show, save=save)
