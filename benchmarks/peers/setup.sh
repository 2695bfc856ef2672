#!/usr/bin/env bash
# Create one virtual environment per peer under benchmarks/peers/.venvs/<name> (git-ignored).
# None of these is a dependency of grndiff: each peer runs in its own environment and only
# exchanges .h5ad files with the benchmark.
#
#   bash benchmarks/peers/setup.sh                 # all: scgen cpa cellflow celleval gears
#   bash benchmarks/peers/setup.sh scgen celleval  # a subset
#   bash benchmarks/peers/setup.sh gears           # GEARS only (benchmarks/knockouts_gears.py)
#
# Interpreters (override when they are not on PATH under these names):
#   PYTHON311  Python 3.11 for cellflow, celleval, gears   (default: python3.11)
#   PYTHON310  Python 3.10 for cpa and scgen (both need an old torch / scvi-tools)  (default: python3.10)
# Versions of the peers are pinned below (the ones measured); override with e.g. SCGEN_SPEC=scgen.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENVS="${PEER_VENVS:-$HERE/.venvs}"
PYTHON311="${PYTHON311:-python3.11}"
PYTHON310="${PYTHON310:-python3.10}"
SCGEN_SPEC="${SCGEN_SPEC:-scgen==2.1.0}"
CPA_SPEC="${CPA_SPEC:-cpa-tools==0.8.1}"
CELLFLOW_SPEC="${CELLFLOW_SPEC:-cellflow-tools==0.0.9}"
CELLEVAL_SPEC="${CELLEVAL_SPEC:-cell-eval==0.8.2}"
GEARS_SPEC="${GEARS_SPEC:-cell-gears==0.1.2}"
GEARS_TORCH="${GEARS_TORCH:-torch==2.13.0}"
# The 2023 stack that torch 1.13 + scvi-tools 0.20 import with (cpa).
OLD_STACK='numpy<2 anndata<0.10 scipy<1.12 jax<0.4.24 jaxlib<0.4.24 scanpy<1.10'

mkvenv() {  # mkvenv NAME PYTHON [PIP_SPEC]
    local name="$1" py="$2" pipspec="${3:-pip}"
    if [ ! -x "$VENVS/$name/bin/python" ]; then
        mkdir -p "$VENVS"
        "$py" -m venv "$VENVS/$name"
    fi
    "$VENVS/$name/bin/python" -m pip install -q --upgrade "$pipspec"
}

setup_scgen() {
    # scgen 2.1.0 (its latest release) imports scvi._compat.Literal and LossRecorder, which
    # scvi-tools dropped in 0.20: with today's scvi-tools it fails at import. So scgen gets the
    # last scvi-tools it works with: 0.19.0 (pytorch-lightning 1.7), torch 1.13, numpy 1.26, Python 3.10.
    # pytorch-lightning 1.7 has metadata that pip >= 24.1 refuses, hence the older pip.
    mkvenv scgen "$PYTHON310" "pip<24.1"
    # The versions are pinned exactly: with ranges, pip's resolver backtracks for tens of minutes.
    # (jax/flax are those that work with scvi-tools 0.20 in the cpa venv; jaxlib < 0.4.13 is gone from PyPI.)
    "$VENVS/scgen/bin/python" -m pip install "$SCGEN_SPEC" "scvi-tools==0.19.0" "torch==${SCGEN_TORCH:-1.13.1}" \
        pytorch-lightning==1.7.7 torchmetrics==0.10.3 jax==0.4.23 jaxlib==0.4.23 flax==0.8.4 optax==0.2.2 \
        chex==0.1.86 numpyro==0.15.0 orbax-checkpoint==0.5.16 etils==1.13.0 tensorstore==0.1.78 \
        numpy==1.26.4 scipy==1.11.4 pandas==2.3.3 anndata==0.9.2 scanpy==1.9.8 mudata==0.2.3 \
        ipywidgets==8.1.9 "setuptools<70"
}

setup_cpa() {
    # cpa-tools pins torch < 2 and scvi-tools 0.20; left alone, pip pairs them with numpy 2,
    # anndata 0.11 and a recent jax/scipy, and `import cpa` fails: the old stack is pinned too.
    mkvenv cpa "$PYTHON310"
    "$VENVS/cpa/bin/python" -m pip install "$CPA_SPEC" $OLD_STACK
}

setup_cellflow() {
    mkvenv cellflow "$PYTHON311"
    # cellflow-tools 0.0.9 imports requests without declaring it
    "$VENVS/cellflow/bin/python" -m pip install "$CELLFLOW_SPEC" requests
}

setup_celleval() {
    mkvenv celleval "$PYTHON311"
    "$VENVS/celleval/bin/python" -m pip install "$CELLEVAL_SPEC"
}

setup_gears() {
    mkvenv gears "$PYTHON311"
    # torch first, on its own: GEARS would otherwise let pip pick a torch (and maybe a CUDA one).
    # GEARS runs on the CPU here (benchmarks/peers/run_gears.py).
    "$VENVS/gears/bin/python" -m pip install "$GEARS_TORCH"
    # cell-gears 0.1.2 imports torch_geometric without declaring it
    "$VENVS/gears/bin/python" -m pip install "$GEARS_SPEC" torch-geometric
    # gears.py indexes a scipy sparse matrix with a pandas Series (GEARS.__init__, the control mean);
    # today's scipy refuses that: index with the Series' values instead. Idempotent; nothing else is changed.
    "$VENVS/gears/bin/python" - <<'PY'
import pathlib, gears
p = pathlib.Path(gears.__file__).with_name("gears.py")
s = p.read_text()
old = "self.adata.X[self.adata.obs.condition == 'ctrl']"
new = "self.adata.X[(self.adata.obs.condition == 'ctrl').values]"
if old in s:
    p.write_text(s.replace(old, new))
    print(f"patched {p}")
elif new not in s:
    raise SystemExit(f"{p}: the line to patch was not found (another cell-gears version?)")
PY
}

peers=("$@")
if [ ${#peers[@]} -eq 0 ]; then peers=(scgen cpa cellflow celleval gears); fi
for p in "${peers[@]}"; do
    case "$p" in
        scgen|cpa|cellflow|celleval|gears) ;;
        *) echo "unknown peer '$p' (choose from scgen cpa cellflow celleval gears)" >&2; exit 2 ;;
    esac
done
for p in "${peers[@]}"; do
    start=$(date +%s)
    echo "== $p: installing into $VENVS/$p"
    "setup_$p"
    echo "== $p: done in $(( $(date +%s) - start )) s"
    "$VENVS/$p/bin/python" -m pip list 2>/dev/null | grep -i -E "^(torch|jax|scvi-tools|scgen|cpa-tools|cellflow-tools|cell-eval|cell-gears|torch.geometric|anndata|scanpy|lightning) " || true
done
