"""A source of one's own is one class in one file (this one): subclass grndiff.flow.Source, give it
a name and options; it trains, saves, loads back and predicts like a shipped source."""
import numpy as np
import pytest
import torch

import grndiff as gd
from grndiff.flow import Source, make_source, source_classes


class DampedControlSource(Source):
    """x₀ = the paired control cell pulled towards 0 by ``damping`` (a toy with one option)."""

    name = "damped_control"
    options = ("damping",)
    needs_control = True
    can_transport = True

    def __init__(self, damping: float = 0.5):
        super().__init__()
        self.damping = float(damping)

    def pair(self, x1, cond, pert, x_ctrl, generator=None):
        return (1.0 - self.damping) * x_ctrl.to(x1.dtype)

    def transport(self, x_ctrl, cond=None, pert=None):
        return (1.0 - self.damping) * x_ctrl


def test_a_user_source_is_registered_trains_saves_loads_and_predicts(tmp_path):
    assert source_classes()["damped_control"] is DampedControlSource
    assert isinstance(make_source({"name": "damped_control", "damping": 0.25}), DampedControlSource)
    a = gd.datasets.krumsiek11()
    a.obs["treat"] = np.where(np.arange(a.n_obs) % 2 == 0, "ctrl", "drug")
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type", "treat"], control_obs={"treat": "ctrl"})
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, depth=1, token_depth=0,
                   source={"name": "damped_control", "damping": 0.25})
    m.train(max_steps=5, batch_size=32, progress_bar=False, gate=False)
    ctrl = a[(a.obs["treat"] == "ctrl").to_numpy()][:12].copy()
    x_ctrl = torch.as_tensor(m.processor.scaled_dense(ctrl))
    pred = m.predict(ctrl, {"treat": "drug"}, n_steps=3, clip=False)
    alone = m.predict(ctrl, {"treat": "drug"}, flow=False, clip=False)
    expect = m.processor.scaler.inverse(0.75 * x_ctrl.numpy())
    np.testing.assert_allclose(alone.X, expect, atol=1e-5)  # the source's own transport
    m.save(tmp_path / "m")
    back = gd.GRNDiff.load(tmp_path / "m")
    assert isinstance(back.module.source, DampedControlSource) and back.module.source.damping == 0.25
    np.testing.assert_array_equal(back.predict(ctrl, {"treat": "drug"}, n_steps=3, clip=False).X, pred.X)


def test_a_source_without_its_own_name_is_refused():
    class Nameless(Source):
        pass
    with pytest.raises(ValueError, match="own `name`"):
        gd.flow.register_source(Nameless)
    with pytest.raises(ValueError, match="subclassing"):
        make_source("no_such_source")
