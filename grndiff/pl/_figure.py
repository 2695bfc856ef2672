"""The scanpy-style ending shared by every plot: save and/or show, else hand back the Axes."""
from __future__ import annotations

from pathlib import Path


def new_axes(ax, figsize):
    """``ax`` or a new single-panel figure's Axes; also says whether the figure is ours."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax, False
    fig, ax = plt.subplots(figsize=figsize)
    return ax, True


def finish(obj, *, own: bool, show: bool | None, save):
    """Save ``obj``'s figure to ``save`` (parent folders created), show it, and return ``obj``
    unless it was shown (scanpy: ``show=None`` shows a figure we created when nothing is saved)."""
    import matplotlib.pyplot as plt

    fig = obj if hasattr(obj, "savefig") else obj.figure
    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight", dpi=150)
    if show is None:
        show = own and save is None
    if show:
        plt.show()
        return None
    return obj
