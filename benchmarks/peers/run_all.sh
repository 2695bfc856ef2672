#!/usr/bin/env bash
# Run the peers on Kang one after another (one CPU thread each), each in its own venv.
#
#   bash benchmarks/peers/run_all.sh [OUT_DIR]          # default OUT_DIR: benchmarks/peers/_out
#   PEERS="scgen cellflow" bash benchmarks/peers/run_all.sh
#   SEEDS="0 1 2" bash benchmarks/peers/run_all.sh    # seed s > 0 writes into OUT_DIR/seed<s>
#
# Peers run seed after seed (all peers for one seed, then the next), so a run cut short still has
# whole seeds. peer_scores.py (and perturbation.py --peers) read OUT_DIR and its seed<s> folders.
#
# Per-peer extra arguments (the caps used for the committed results are the defaults here):
#   SCGEN_ARGS (none), CPA_ARGS (--max-minutes 8), CELLFLOW_ARGS (see run_cellflow.py defaults)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:-$HERE/_out}"
VENVS="${PEER_VENVS:-$HERE/.venvs}"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMEXPR_NUM_THREADS=1
SCGEN_ARGS="${SCGEN_ARGS:-}"
CPA_ARGS="${CPA_ARGS:---max-minutes 8}"
CELLFLOW_ARGS="${CELLFLOW_ARGS:-}"
for seed in ${SEEDS:-0}; do
    out="$OUT"
    [ "$seed" = 0 ] || out="$OUT/seed$seed"
    mkdir -p "$out"
    for peer in ${PEERS:-scgen cpa cellflow}; do
        case "$peer" in
            scgen) args="$SCGEN_ARGS" ;;
            cpa) args="$CPA_ARGS" ;;
            cellflow) args="$CELLFLOW_ARGS" ;;
            *) echo "unknown peer '$peer'" >&2; exit 2 ;;
        esac
        echo "== $peer seed $seed ($(date -u +%H:%M:%S))"
        # shellcheck disable=SC2086
        "$VENVS/$peer/bin/python" "$HERE/run_$peer.py" --out "$out" --seed "$seed" $args
    done
done
echo "== done ($(date -u +%H:%M:%S)); score with: python benchmarks/peer_scores.py $OUT"
