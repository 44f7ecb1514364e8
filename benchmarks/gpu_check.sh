#!/usr/bin/env bash
# The one-shot GPU check: the CUDA tests, throughput.py at batch 256/512/1024 and seed_grid.py on
# the GPU, in about 5 minutes, summed up in one Markdown table (docs/BENCHMARKS.md says how to run
# it with the device tool).
#
#   benchmarks/gpu_check.sh --fetch-wheels   # here, with internet: wheels for the GPU box into .whl/
#   benchmarks/gpu_check.sh                  # on the GPU box (no internet): the check itself
#   benchmarks/gpu_check.sh --dry-run        # anywhere, no GPU needed: the whole script, tiny, on the CPU
#
# A GPU box may have torch but not optuna, optuna-dashboard, pydantic...: the check installs what
# is missing from the wheels in .whl/ (pip --no-index, into a temporary folder on PYTHONPATH).
# Output: $OUT/gpu_check.md (the table) and $OUT/gpu_check.log (every step's output); without
# $OUT, a temporary folder it prints. Exit 0 when every step passed, 1 otherwise (the table is
# written either way).
#
# Options: --budget-s N (default 300: the whole check's time; each step gets at most its share),
# --python PY (default $PYTHON or python3), --wheels DIR (default .whl).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

MODE=check
BUDGET_S=300
PY="${PYTHON:-python3}"
WHEELS=.whl
# what the project needs beyond torch, torchvision, numpy, pandas, scikit-learn, pillow, pyyaml,
# tqdm, matplotlib, pyarrow and pytest (all on the GPU image; see .library/device/KINDS.md)
WHEEL_PACKAGES=(optuna optuna-dashboard alembic sqlalchemy mako colorlog bottle plotly pydantic
    pydantic-core annotated-types typing-inspection typing-extensions)
MODULES=(torch torchvision optuna optuna_dashboard sqlalchemy alembic pydantic yaml sklearn pandas tqdm
    PIL matplotlib pytest)
GPU_PYTHON_VERSION="${GPU_PYTHON_VERSION:-3.12}"  # the GPU image's python3

while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) MODE=dry ;;
        --fetch-wheels) MODE=fetch ;;
        --budget-s) BUDGET_S="$2"; shift ;;
        --python) PY="$2"; shift ;;
        --wheels) WHEELS="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "error: $1: unknown option. Fix: use --dry-run, --fetch-wheels, --budget-s N, --python PY or --wheels DIR" >&2; exit 2 ;;
    esac
    shift
done

# --------------------------------------------------------------------------- --fetch-wheels
if [ "$MODE" = fetch ]; then
    mkdir -p "$WHEELS"
    specs=()
    for name in "${WHEEL_PACKAGES[@]}"; do
        # the version tested here, so the GPU box runs what CI runs
        version="$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null)"
        specs+=("$name${version:+==$version}")
    done
    echo "fetching for Python $GPU_PYTHON_VERSION (manylinux x86_64) into $WHEELS: ${specs[*]}"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON_VERSION" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" "${specs[@]}" || exit 1
    ls -1 "$WHEELS"
    du -sh "$WHEELS"
    exit 0
fi

# --------------------------------------------------------------------------- the check
if [ -n "${OUT:-}" ]; then
    RESULTS="$OUT"
else
    RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")"
fi
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
TABLE="$RESULTS/gpu_check.md"
: >"$LOG"
ROWS=()
FAILED=0
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

note() { echo "$*" | tee -a "$LOG"; }
cell() { printf '%s' "$*" | tr '|\n' '/ '; }
row() { ROWS+=("| $(cell "$1") | $(cell "$2") | $(cell "$3") | $4 |"); }

# run NAME CAP_S CMD...: the command with at most CAP_S seconds (less if the budget is nearly spent);
# its output goes to the log and to $STEP_OUT; sets STEP_RC and STEP_S
run() {
    local name="$1" cap="$2"
    shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    [ "$cap" -gt "$left" ] && cap=$left
    STEP_OUT="$RESULTS/.step.out"
    if [ "$cap" -lt 5 ]; then
        note "== $name: not run (the ${BUDGET_S} s budget is spent)"
        STEP_RC=124 STEP_S=0
        : >"$STEP_OUT"
        return
    fi
    note "== $name (at most $cap s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$cap" "$@" >"$STEP_OUT" 2>&1
    STEP_RC=$?
    STEP_S=$((SECONDS - t0))
    cat "$STEP_OUT" >>"$LOG"
    note "== $name: exit $STEP_RC after $STEP_S s"
}

verdict() {  # RESULT: the result cell of the last step; counts failures
    case "$STEP_RC" in
        0) RESULT=ok ;;
        124|137) FAILED=1; RESULT="timed out after $STEP_S s" ;;
        *) FAILED=1; RESULT="failed (exit $STEP_RC; see gpu_check.log)" ;;
    esac
}

if [ "$MODE" = dry ]; then
    DEVICE=cpu
    note "DRY RUN: no GPU used; every step on the CPU with tiny sizes"
else
    DEVICE=cuda
fi

# ---- packages
missing() { "$PY" - "${MODULES[@]}" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}
absent="$(missing)"
if [ -z "$absent" ]; then
    row "packages" "ok" "all importable: ${MODULES[*]}" 0
elif [ "$MODE" = dry ]; then
    FAILED=1
    row "packages" "missing" "dry run installs nothing; missing: $absent" 0
elif ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    FAILED=1
    row "packages" "missing" "missing: $absent; no wheels in $WHEELS (run --fetch-wheels where pip works, carry $WHEELS)" 0
else
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site-XXXXXX")"
    run "install wheels" 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$SITE" "$WHEELS"/*.whl
    export PYTHONPATH="$REPO:$SITE${PYTHONPATH#"$REPO"}"
    still="$(missing)"
    if [ "$STEP_RC" -eq 0 ] && [ -z "$still" ]; then
        row "packages" "ok" "installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS for: $absent" "$STEP_S"
    else
        FAILED=1
        row "packages" "failed" "pip exit $STEP_RC; still missing: ${still:-none}" "$STEP_S"
    fi
fi

note "python: $("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())' 2>&1)"
if [ "$MODE" = check ] && ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    note "error: no CUDA GPU visible to $PY. Fix: run on a GPU machine, or use --dry-run"
    FAILED=1
fi

# ---- 1. the CUDA tests
run "CUDA tests" 100 "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/engine/test_cuda.py
summary="$(grep -E '[0-9]+ (passed|failed|skipped|error)' "$STEP_OUT" | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
verdict
[ "$STEP_RC" -eq 0 ] && [ "$MODE" = dry ] && RESULT="ok (dry run: skipped without CUDA)"
row "CUDA tests: pytest -m cuda tests/engine/test_cuda.py" "$RESULT" "${summary:-no summary}" "$STEP_S"

# ---- 2. throughput, seed-style pipeline against ours
if [ "$MODE" = dry ]; then
    THROUGHPUT_BATCHES=(8)
    THROUGHPUT_ARGS=(--quick --seed-workers 0)
else
    THROUGHPUT_BATCHES=(256 512 1024)
    THROUGHPUT_ARGS=(--steps 30 --repeats 3)
fi
for bs in "${THROUGHPUT_BATCHES[@]}"; do
    run "throughput batch $bs" 40 "$PY" benchmarks/throughput.py --device "$DEVICE" --batch-size "$bs" \
        "${THROUGHPUT_ARGS[@]}"
    verdict
    seed="$(awk -F'|' '/^\| seed-style: PIL/ {gsub(/ /, "", $3); print $3; exit}' "$STEP_OUT")"
    ours="$(awk -F'|' '/^\| ours: uint8/ {gsub(/ /, "", $3); print $3; exit}' "$STEP_OUT")"
    speedup="$(grep -E '^speedup: ' "$STEP_OUT" | tail -1 | cut -d' ' -f2)"
    machine_line="${machine_line:-$(grep -m1 '^machine: ' "$STEP_OUT" | cut -d' ' -f2-)}"
    row "throughput.py --device $DEVICE --batch-size $bs" "$RESULT" \
        "seed-style ${seed:-?} img/s, ours ${ours:-?} img/s, speedup ${speedup:-?}" "$STEP_S"
done
if [ "$MODE" = dry ]; then
    note "dry run: throughput at batch 256, 512 and 1024 not run (one tiny CPU run above instead)"
    row "throughput.py at batch 256 / 512 / 1024" "skipped (dry run)" "runs on the GPU only" 0
fi

# ---- 3. the seed's grid end to end, and fit's images/s at 256/512/1024
if [ "$MODE" = dry ]; then
    GRID_ARGS=(--quick --batch-sizes 8)
else
    GRID_ARGS=(--repeats 1)
fi
run "seed grid" 600 "$PY" benchmarks/seed_grid.py --device "$DEVICE" "${GRID_ARGS[@]}"
verdict
grid="$(grep -E '^grid: ' "$STEP_OUT" | tail -1)"
rates="$(awk -F'|' '$2 ~ /^ *[0-9]+ *$/ {gsub(/ /, "", $2); gsub(/ /, "", $3); printf "%s%s: %s", sep, $2, $3; sep="; "}' "$STEP_OUT")"
row "seed_grid.py --device $DEVICE ${GRID_ARGS[*]}" "$RESULT" \
    "${grid:-no grid line}; fit img/s by batch: ${rates:-?}" "$STEP_S"

# ---- the table
commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")"
{
    echo "GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $commit$([ "$MODE" = dry ] && echo ', DRY RUN (CPU, tiny sizes: not a measurement)')"
    echo
    echo "machine: ${machine_line:-unknown}"
    echo
    echo "| step | result | figures | s |"
    echo "| --- | --- | --- | --- |"
    printf '%s\n' "${ROWS[@]}"
    echo
    echo "total: $((SECONDS - START)) s; $([ "$FAILED" -eq 0 ] && echo 'every step passed' || echo 'SOME STEPS FAILED: see gpu_check.log')"
} >"$TABLE"
rm -f "$RESULTS/.step.out"
echo
cat "$TABLE"
echo
echo "table: $TABLE"
echo "log: $LOG"
exit "$FAILED"
