"""The training plan: EMA, the learning-rate schedule, source groups, and the backbone contract
(a new backbone is one registered builder: shown here with a toy one, in this file alone)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

import grndiff as gd
from grndiff.flow.groups import group_ids, group_radix
from grndiff.nn import ConditionEmbedder, VelocityField
from grndiff.train import BACKBONES, EMA, register_backbone


def test_ema_ramps_up_then_follows_decay_and_copies_buffers():
    net = nn.BatchNorm1d(3)
    ema = EMA(net, decay=0.9)
    with torch.no_grad():
        net.weight.fill_(2.0)
        net.running_mean.fill_(5.0)
    ema.update(net)  # first update: effective decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.shadow.weight, torch.full((3,), 1 + 0.9 * 1.0))
    assert torch.equal(ema.shadow.running_mean, net.running_mean)
    for _ in range(200):
        ema.update(net)
    assert torch.allclose(ema.shadow.weight, net.weight, atol=1e-6)  # converges to a constant target


def test_lr_warms_up_linearly_then_decays_by_cosine_to_five_percent(krumsiek_model):
    module = krumsiek_model.module
    module.hparams.max_steps, module.hparams.warmup_steps, module.hparams.lr = 200, 10, 1e-2
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(200):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)  # (step + 1) / warm
    assert lrs[10] == pytest.approx(1e-2) and all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    mid = 10 + 95  # half-way through the cosine
    assert lrs[mid] == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 95 / 190))))
    assert lrs[-1] == pytest.approx(1e-2 * 0.05, rel=0.02)


def test_source_groups_are_mixed_radix_over_categorical_codes_with_null_pooled():
    specs = [{"name": "a", "kind": "categorical", "n_categories": 2},
             {"name": "b", "kind": "categorical", "n_categories": 3},
             {"name": "dose", "kind": "continuous", "n_categories": 0}]
    radix = group_radix(specs)
    assert radix == [("a", 2), ("b", 3)]
    cond = {"a": torch.tensor([1, 1, 2, 2, 0]), "b": torch.tensor([1, 3, 1, 3, 2]), "dose": torch.zeros(5)}
    ids = group_ids(radix, cond, 5)
    assert ids.tolist() == [1, 3, 4, 6, 0]  # (a-1)*3 + (b-1) + 1; a null code → pooled group 0
    assert group_radix(specs, max_groups=5) == []  # too many combinations → one pooled group


# --------------------------------------------------------------- a toy backbone, this file only
class LinearVelocity(VelocityField):
    """v = W x + c-dependent bias: the smallest velocity field that honours the contract."""

    def __init__(self, n_genes, condition_specs, width=8):
        super().__init__()
        self.n_genes = n_genes
        self.cond_embed = ConditionEmbedder(condition_specs, width)
        self.lin = nn.Linear(n_genes, n_genes)
        self.bias = nn.Linear(width, n_genes)

    def velocity(self, x, t, cond, pert, force_drop):
        c = self.cond_embed(cond, x.shape[0], device=x.device, force_drop=force_drop)
        return self.lin(x) * t[:, None] + self.bias(c), {}


@pytest.fixture
def toy_backbone():
    register_backbone("toy_linear")(lambda inputs, width=8: LinearVelocity(inputs["n_genes"],
                                                                            inputs["condition_specs"], width))
    yield "toy_linear"
    BACKBONES.pop("toy_linear")


def test_a_registered_toy_backbone_trains_samples_and_round_trips(toy_backbone, tmp_path):
    a = gd.datasets.krumsiek11()
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, backbone=toy_backbone, seed=0,
                   width=16)  # the backbone's own option
    assert m.module.net.bias.in_features == 16
    with pytest.raises(TypeError, match="width"):  # the error lists what this backbone takes
        gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, backbone=toy_backbone, depth_of_field=2)
    before = m.module.net.lin.weight.detach().clone()
    m.train(max_steps=20, batch_size=32, progress_bar=False)
    assert not torch.equal(before, m.module.net.lin.weight)
    gen = m.sample(10, {"cell_type": "Mk"}, n_steps=3, guidance=2.0)  # guidance comes from the base class
    assert gen.shape == (10, a.n_vars) and np.isfinite(gen.X).all()
    m.save(tmp_path / "toy")
    back = gd.GRNDiff.load(tmp_path / "toy")
    assert back.module.net.bias.in_features == 16
    again = back.sample(10, {"cell_type": "Mk"}, n_steps=3, guidance=2.0)
    assert np.array_equal(gen.X, again.X)


def test_a_backbone_that_breaks_the_contract_is_refused():
    register_backbone("not_a_field")(lambda inputs: nn.Linear(inputs["n_genes"], inputs["n_genes"]))
    try:
        a = gd.datasets.krumsiek11()
        gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
        with pytest.raises(TypeError, match="VelocityField"):
            gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, backbone="not_a_field")
    finally:
        BACKBONES.pop("not_a_field")
    with pytest.raises(ValueError, match="backbone must be one of"):
        gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, backbone="nope")


@pytest.fixture
def krumsiek_model():
    a = gd.datasets.krumsiek11()
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type"])
    return gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, depth=1, token_depth=0)


# ------------------------------------------------------- a toy condition kind, this file only
class CyclicEncoder:
    """An angle in degrees (cell-cycle phase, time of day) → (N, 2) codes (sin, cos); NaN = null."""

    kind = "cyclic"

    def __init__(self, name):
        self.name = name

    def fit(self, values):
        return self

    def encode(self, values):
        a = np.deg2rad(np.asarray(values, dtype=np.float64))
        return np.stack([np.sin(a), np.cos(a)], axis=1).astype(np.float32)  # (N, 2)

    def null(self, n):
        return np.full((n, 2), np.nan, dtype=np.float32)

    def spec(self):
        return {"name": self.name, "kind": self.kind, "n_categories": 0}

    def to_state(self):
        return {"name": self.name, "kind": self.kind}

    @classmethod
    def from_state(cls, state):
        return cls(state["name"])


class CyclicEmbedder(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(2, hidden)
        self.null = nn.Parameter(torch.zeros(hidden))

    def forward(self, v):  # (B, 2) → (B, D)
        isnull = torch.isnan(v).any(-1, keepdim=True)
        e = self.lin(torch.nan_to_num(v))
        return torch.where(isnull, self.null.expand_as(e), e)


@pytest.fixture
def cyclic_kind():
    from grndiff.data.conditions import ENCODERS
    from grndiff.nn.conditions import EMBEDDERS, NULL_CODES
    gd.data.register_condition_kind(CyclicEncoder)
    gd.nn.register_condition_embedder("cyclic", null=float("nan"))(lambda spec, hidden: CyclicEmbedder(hidden))
    yield "cyclic"
    ENCODERS.pop("cyclic"), EMBEDDERS.pop("cyclic"), NULL_CODES.pop("cyclic")


def test_a_registered_toy_condition_kind_trains_samples_and_round_trips(cyclic_kind, tmp_path):
    a = gd.datasets.krumsiek11()
    a.obs["phase"] = np.random.default_rng(0).uniform(0, 360, a.n_obs)
    gd.GRNDiff.setup_anndata(a, condition_keys=["cell_type"], condition_kinds={"phase": cyclic_kind})
    m = gd.GRNDiff(a, prior=gd.datasets.krumsiek11_network(), modules=None, hidden=8, depth=1, token_depth=0,
                   seed=0)
    assert isinstance(m.module.net.cond_embed.embedders["phase"], CyclicEmbedder)
    before = m.module.net.cond_embed.embedders["phase"].lin.weight.detach().clone()
    m.train(max_steps=20, batch_size=32, progress_bar=False)
    assert not torch.equal(before, m.module.net.cond_embed.embedders["phase"].lin.weight)  # it was trained
    gen = m.sample(10, {"cell_type": "Mk", "phase": 90.0}, n_steps=3, guidance=2.0)
    free = m.sample(10, {"cell_type": "Mk"}, n_steps=3)  # phase left out: its null token
    assert gen.shape == free.shape == (10, a.n_vars) and np.isfinite(gen.X).all() and np.isfinite(free.X).all()
    m.save(tmp_path / "cyc")
    again = gd.GRNDiff.load(tmp_path / "cyc").sample(10, {"cell_type": "Mk", "phase": 90.0}, n_steps=3, guidance=2.0)
    assert np.array_equal(gen.X, again.X)
    with pytest.raises(ValueError, match="unknown kind"):
        gd.GRNDiff.setup_anndata(a, condition_kinds={"phase": "spiral"})


def test_bf16_mixed_precision_trains_on_cpu_with_fp32_weights():
    """``train(precision="bf16-mixed")``: autocast on the CPU (AVX512-BF16 where present); the
    weights and the optimiser state stay float32, the loss is finite and the model samples."""
    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior="collectri", modules="hallmark", hidden=8, depth=1, token_depth=1, seed=0)
    m.train(max_steps=4, batch_size=32, precision="bf16-mixed", progress_bar=False, gate=False)
    assert np.isfinite(m.history["train_loss"].dropna()).all() and len(m.history)
    assert all(p.dtype == torch.float32 for p in m.module.net.parameters())
    X = m.sample(6, n_steps=2).X
    assert np.isfinite(X.toarray() if hasattr(X, "toarray") else X).all()


def test_bf16_sampling_is_close_to_float32_and_bad_precision_is_refused():
    """``sample(precision="bf16")`` runs the network under autocast: the cells stay float32 and close
    to the float32 run (bfloat16 keeps ~3 significant digits); an unknown precision names the choices."""
    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior="collectri", modules="hallmark", hidden=8, depth=1, token_depth=1, seed=0)
    m.train(max_steps=6, batch_size=32, progress_bar=False, gate=False)
    x32 = m.sample(8, n_steps=3, seed=1, clip=False).X
    x16 = m.sample(8, n_steps=3, seed=1, clip=False, precision="bf16").X
    assert x16.dtype == np.float32
    moved = np.abs(x32 - m.sample(8, n_steps=1, seed=1, clip=False).X).mean()
    assert np.abs(x16 - x32).mean() < 0.1 * max(moved, 1e-3)
    assert m.sample(2, n_steps=1, precision="bf16").uns["grndiff"]["params"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        m.sample(2, n_steps=1, precision="fp8")


@pytest.mark.slow
def test_compiled_blocks_match_eager_and_survive_save_load(tmp_path):
    """``train(compile=True)``: the blocks' element-wise passes run through ``torch.compile``
    (grndiff.nn.fused); the velocity equals the eager one to float rounding, the setting is saved
    with the model, and a model built without it is unchanged."""
    from grndiff.nn import fused

    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior="collectri", modules="hallmark", hidden=8, depth=1, token_depth=1, seed=0)
    m.train(max_steps=3, batch_size=32, progress_bar=False, gate=False, compile=True)
    assert m.module.compiled and np.isfinite(m.history["train_loss"].dropna()).all()
    built = dict(fused._compiled)
    assert set(built) == {"ln_modulate", "mlp_residual"}
    m.train(max_steps=2, batch_size=32, progress_bar=False, gate=False)  # the model's setting is kept ...
    assert fused._compiled == built  # ... and the compiled functions are built once per process
    net = m.module.net.eval()
    x, t = torch.randn(5, m.graph.n_genes), torch.full((5,), 0.3)
    cond = {"condition": torch.tensor([0, 1, 0, 1, 0])}
    with torch.no_grad():
        eager = net(x, t, cond, None)
        with fused.compiled(True):
            assert fused.is_enabled()
            comp = net(x, t, cond, None)
    assert not fused.is_enabled()
    torch.testing.assert_close(comp, eager, rtol=1e-4, atol=1e-5)
    assert float(eager.abs().max()) > 0  # trained: the velocity is not the zero of the init
    m.save(tmp_path / "m")
    assert gd.GRNDiff.load(tmp_path / "m").module.compiled


def test_cross_attention_conditioning_trains_guides_and_round_trips(tmp_path):
    """``GRNDiff(conditioning="cross_attention")``: trains, samples with guidance, and a saved model
    gives the same cells for the same seed."""
    a = gd.datasets.kang2018_tiny()
    gd.GRNDiff.setup_anndata(a, layer="counts", condition_keys=["condition"])
    m = gd.GRNDiff(a, prior="collectri", modules="hallmark", hidden=8, depth=1, token_depth=1, seed=0,
                   conditioning="cross_attention")
    m.train(max_steps=5, batch_size=32, progress_bar=False, gate=False)
    assert np.isfinite(m.history["train_loss"].dropna()).all()
    cells = m.sample(6, {"condition": "stim"}, n_steps=3, guidance=2.0, seed=3).X
    m.save(tmp_path / "m")
    again = gd.GRNDiff.load(tmp_path / "m").sample(6, {"condition": "stim"}, n_steps=3, guidance=2.0, seed=3).X
    np.testing.assert_array_equal(np.asarray(cells), np.asarray(again))
