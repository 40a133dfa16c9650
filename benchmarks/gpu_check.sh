#!/usr/bin/env bash
# benchmarks/gpu_check.sh OUTDIR -- fairret's CUDA kernels on a real GPU: correctness first, then the figures.
#
# How to launch it with the device tool (the tool runs the command in the repository root of a copy of the working
# tree and brings back what is written under $OUT; one run at a time; 15 minutes of device time in all, start-up
# included, so this script needs no network, installs nothing big, and caps each part: the caps add up to 9.5
# minutes, a whole run should take 6 to 8 (an estimate: it has not run on a GPU yet)):
#
#     run(command="bash benchmarks/gpu_check.sh $OUT", carry=[".whl"], timeout_s=590)
#
# It runs under the machine's own python3 (PYTHON=... to change): that image has torch with CUDA, pytest,
# pytest-xdist, hypothesis, lightning, numpy, scipy and matplotlib; fairret is imported from the checkout
# (PYTHONPATH), not installed. The few test-only packages the image lacks (dcor, array-api-compat, jsonargparse,
# docstring-parser, typeshed-client; ~1.1 MB of pure-Python wheels) travel in .whl/ (git-ignored): make it once,
# here, on a machine with network, with
#
#     bash benchmarks/gpu_check.sh --fetch-wheels
#
# and name ".whl" in carry, as above. Without .whl/ the test files that import those packages fail to collect and
# say so; everything else runs.
#
# Parts (GPU_CHECK_PARTS="emulation tests files nvcc sanitize bench crossover quant" selects some, e.g. for a
# second run; each has a time cap, and what it printed is kept even when the cap stops it):
#   emulation  the kernels' self-check through the CPU emulation of CUDA threads (g++; any machine)
#   tests      pytest -m gpu: tests/test_cuda_kernels.py (NVRTC build, self-check, kernels against dense and tiled
#              float64 references up to n = 262,144, opcheck, torch.compile, streams, a wrong launcher refused)
#              and tests/test_gpu.py (functionals, losses, metrics and a Lightning run on CUDA tensors, every
#              backend, against the CPU)
#   files      the distance, loss, metric and Lightning test files (not slow, not distributed) on this machine
#   nvcc       the nvcc route (FAIRRET_CUDA_BUILD=nvcc: the torch extension built here), if nvcc is there
#   sanitize   compute-sanitizer memcheck (allocator caching off, so every tensor is its own allocation) and
#              racecheck over the self-check and two kernel calls, if compute-sanitizer is there
#   bench      benchmarks/bench_dependence.py --device cuda --part B: n in {4,096, 16,384, 65,536, 262,144}, 1-D
#              predictions against 8-D attributes, value+grad, cuda / tiled / dense (where it fits), float32 and
#              float64, peak GPU memory, TFLOP/s and fraction of the FP32 peak
#   crossover  benchmarks/bench_cuda_crossover.py: dense / tiled / cuda from n = 128 to 8,192 (CUDA_MIN_N)
#   quant      benchmarks/bench_quant.py --part time --device cuda: one 4096x4096 Fair-GPTQ layer against GPTQ
# Parts 2-8 need CUDA: without it each says "SKIP ... no CUDA device" and the script exits 0.
#
# Writes to OUTDIR (at most 3 files, as the device tool brings back 8): gpu_check.log (every part's output, in
# order), results_gpu.csv (the benchmarks' rows, benchmarks/results.csv's columns plus tflops and
# fp32_peak_fraction) and summary.txt (one line a part; also printed last). Exit status: 1 if a part failed, else 0.
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2

if [ "${1:-}" = "--fetch-wheels" ]; then  # on a machine with network: the test-only wheels for the device image
    mkdir -p .whl
    exec "${PYTHON:-python3}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
        dcor==0.7 array-api-compat==1.16.0 jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
fi
if [ $# -lt 1 ]; then
    echo "usage: bash benchmarks/gpu_check.sh OUTDIR   (or --fetch-wheels)" >&2
    exit 2
fi
OUTDIR="$1"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
LOG="$OUTDIR/gpu_check.log"
SUMMARY="$OUTDIR/summary.txt"
CSV="$OUTDIR/results_gpu.csv"
: >"$LOG"
: >"$SUMMARY"
TMPD="$(mktemp -d)"
trap 'rm -rf "$TMPD"' EXIT
PARTS="${GPU_CHECK_PARTS:-emulation tests files nvcc sanitize bench crossover quant}"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
[ -d /usr/local/cuda/bin ] && export PATH="$PATH:/usr/local/cuda/bin"
T0=$(date +%s)
FAILED=0

log() { echo "$*" | tee -a "$LOG"; }
want() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
# result PART RC SECONDS DETAIL: one summary line (rc 124/137: the time cap stopped it)
result() {
    local what status
    what="$1"
    case "$2" in
        0) status=PASS ;;
        124 | 137) status=TIMEOUT; FAILED=1 ;;
        skip) status=SKIP ;;
        *) status=FAIL; FAILED=1 ;;
    esac
    printf '%-8s %-10s %4ss  %s\n' "$status" "$what" "$3" "$4" | tee -a "$SUMMARY" >>"$LOG"
}
# run_part NAME CAP LOGFILE CMD...: run CMD under a time cap, output to LOGFILE; sets RC and SECS
run_part() {
    local name="$1" cap="$2" out="$3"
    shift 3
    local t=$(date +%s)
    timeout -k 10 "$cap" "$@" >"$out" 2>&1
    RC=$?
    SECS=$(($(date +%s) - t))
}
append() {  # append a part's log to the main log, with a header
    { echo; echo "===== $1 ====="; cat "$2"; } >>"$LOG"
}
pytest_tail() { grep -E "(passed|failed|error|skipped|no tests ran)" "$1" | tail -1; }

# --- environment -------------------------------------------------------------------------------------------------
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$TMPD/site" \
        .whl/*.whl >>"$LOG" 2>&1 && WHEELS="installed $(ls .whl/*.whl | wc -l) wheels from .whl/" \
        || WHEELS="installing .whl/ failed (see the log)"
    export PYTHONPATH="$ROOT:$TMPD/site${PYTHONPATH:+:$PYTHONPATH}"
else
    WHEELS="no .whl/: dcor, jsonargparse and their needs are missing unless the image has them"
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
{
    echo "gpu_check.sh $(date -u +%FT%TZ) in $ROOT (git $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "parts: $PARTS"
    echo "wheels: $WHEELS"
    uname -a
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,temperature.gpu \
            --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    command -v nvcc >/dev/null && nvcc --version | tail -2 || echo "nvcc: not found"
    command -v compute-sanitizer >/dev/null && echo "compute-sanitizer: $(command -v compute-sanitizer)" \
        || echo "compute-sanitizer: not found"
    "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"cc {p.major}.{p.minor}", p.multi_processor_count, "SMs",
          round(p.total_memory / 2**30, 1), "GiB")
import fairret
print("fairret", fairret.__version__, fairret.__file__)
EOF
} >>"$LOG" 2>&1
if "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    HAVE_CUDA=1
else
    HAVE_CUDA=0
fi
cat "$LOG"
NO_CUDA="no CUDA device (torch.cuda.is_available() is False)"

# --- part 1: the self-check through the CPU emulation ------------------------------------------------------------
if want emulation; then
    if command -v g++ >/dev/null; then
        run_part emulation 60 "$TMPD/emulation.log" "$PY" tests/cuda_emulation.py --build "$TMPD/emu"
        append "emulation: self-check through the CPU emulation, guard pages on" "$TMPD/emulation.log"
        result emulation "$RC" "$SECS" "$(tail -1 "$TMPD/emulation.log" | cut -c1-160)"
    else
        result emulation skip 0 "g++ not found"
    fi
fi

# --- parts 2-5: correctness on the device (the GPU tests in front, the rest beside them) -------------------------
if [ "$HAVE_CUDA" = 1 ]; then
    PIDS=""
    if want files; then
        XDIST=""
        "$PY" -c "import xdist" 2>/dev/null && XDIST="-n 8"
        ( run_part files 180 "$TMPD/files.log" "$PY" -m pytest -q -p no:cacheprovider $XDIST \
            -m "not slow and not distributed and not gpu" tests/test_distance.py tests/test_loss.py \
            tests/test_metric.py tests/test_lightning.py; echo "$RC $SECS" >"$TMPD/files.rc" ) &
        PIDS="$PIDS $!"
    fi
    if want nvcc; then
        if command -v nvcc >/dev/null; then
            ( FAIRRET_CUDA_BUILD=nvcc run_part nvcc 180 "$TMPD/nvcc.log" "$PY" -m pytest -q -p no:cacheprovider -m gpu \
                tests/test_cuda_kernels.py -k "build_and_pass or auto_uses or float64_equals_dense or wrong_launcher"
              echo "$RC $SECS" >"$TMPD/nvcc.rc" ) &
            PIDS="$PIDS $!"
        else
            result nvcc skip 0 "nvcc not found: the NVRTC route only"
        fi
    fi
    if want sanitize; then
        if command -v compute-sanitizer >/dev/null; then
            cat >"$TMPD/sanitize.py" <<'EOF'
import sys, torch
from fairret.ops import cuda_status, product_sum
ok, why = cuda_status()
print(ok, why)
if sys.argv[1:] == ["calls"]:
    for n, ws, gv, c, u in [(1000, (1, 8), (0,), 0.0, False), (777, (2, 3, 1), (0, 1), 1.0, True)]:
        g = torch.Generator().manual_seed(n)
        xs = [torch.randn(n, w, generator=g).cuda().requires_grad_(k in gv) for k, w in enumerate(ws)]
        product_sum(xs, c, u, backend="cuda").backward()
    torch.cuda.synchronize()
    print("kernel calls done")
sys.exit(0 if ok else 3)
EOF
            ( run_part sanitize 110 "$TMPD/memcheck.log" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer \
                  --tool memcheck --leak-check no --error-exitcode 9 "$PY" "$TMPD/sanitize.py" calls
              echo "$RC $SECS" >"$TMPD/memcheck.rc"
              run_part sanitize 70 "$TMPD/racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 9 \
                  "$PY" "$TMPD/sanitize.py"
              echo "$RC $SECS" >"$TMPD/racecheck.rc" ) &
            PIDS="$PIDS $!"
        else
            result sanitize skip 0 "compute-sanitizer not found"
        fi
    fi
    if want tests; then
        run_part tests 180 "$TMPD/tests.log" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs --maxfail=40 \
            tests/test_cuda_kernels.py tests/test_gpu.py
        append "tests: pytest -m gpu (NVRTC route)" "$TMPD/tests.log"
        result tests "$RC" "$SECS" "$(pytest_tail "$TMPD/tests.log")"
    fi
    for p in $PIDS; do wait "$p"; done
    if want files; then
        read -r RC SECS <"$TMPD/files.rc"
        append "files: distance, loss, metric and Lightning tests" "$TMPD/files.log"
        result files "$RC" "$SECS" "$(pytest_tail "$TMPD/files.log")"
    fi
    if want nvcc && [ -f "$TMPD/nvcc.rc" ]; then
        read -r RC SECS <"$TMPD/nvcc.rc"
        append "nvcc: FAIRRET_CUDA_BUILD=nvcc" "$TMPD/nvcc.log"
        result nvcc "$RC" "$SECS" "$(pytest_tail "$TMPD/nvcc.log")"
    fi
    if want sanitize && [ -f "$TMPD/memcheck.rc" ]; then
        read -r RC SECS <"$TMPD/memcheck.rc"
        append "sanitize: compute-sanitizer memcheck" "$TMPD/memcheck.log"
        result memcheck "$RC" "$SECS" "$(grep -E 'ERROR SUMMARY' "$TMPD/memcheck.log" | tail -1)"
        if [ -f "$TMPD/racecheck.rc" ]; then
            read -r RC SECS <"$TMPD/racecheck.rc"
            append "sanitize: compute-sanitizer racecheck" "$TMPD/racecheck.log"
            result racecheck "$RC" "$SECS" "$(grep -E 'RACECHECK SUMMARY|ERROR SUMMARY' "$TMPD/racecheck.log" | tail -1)"
        fi
    fi
else
    for p in tests files nvcc sanitize; do want "$p" && result "$p" skip 0 "$NO_CUDA"; done
fi

# --- parts 6-8: figures (one at a time, nothing else on the GPU) -------------------------------------------------
if [ "$HAVE_CUDA" = 1 ]; then
    if want bench; then
        run_part bench 180 "$TMPD/bench.log" "$PY" benchmarks/bench_dependence.py --device cuda --part B \
            --dtypes float32 float64 --timeout 100 --csv "$CSV"
        append "bench: bench_dependence.py --device cuda --part B" "$TMPD/bench.log"
        result bench "$RC" "$SECS" "$(grep -c '"provider"' "$TMPD/bench.log") rows; errors: $(grep -c '"error": "[^"]' "$TMPD/bench.log")"
    fi
    if want crossover; then
        run_part crossover 60 "$TMPD/crossover.log" "$PY" benchmarks/bench_cuda_crossover.py --device cuda \
            --csv "$CSV"
        append "crossover: bench_cuda_crossover.py" "$TMPD/crossover.log"
        result crossover "$RC" "$SECS" "$(grep 'cuda fastest from' "$TMPD/crossover.log" | tr '\n' ' ' | cut -c1-160)"
    fi
    if want quant; then
        run_part quant 80 "$TMPD/quant.log" "$PY" benchmarks/bench_quant.py --part time --device cuda --reps 3 \
            --csv "$CSV"
        append "quant: bench_quant.py --part time --device cuda" "$TMPD/quant.log"
        result quant "$RC" "$SECS" "$(grep 'Fair-GPTQ overhead' "$TMPD/quant.log" | tail -1)"
    fi
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw \
        --format=csv >>"$LOG" 2>&1
else
    for p in bench crossover quant; do want "$p" && result "$p" skip 0 "$NO_CUDA"; done
fi

{
    echo
    echo "===== summary ($(($(date +%s) - T0)) s in all; log: $LOG) ====="
    cat "$SUMMARY"
} | tee -a "$LOG"
if [ -f "$CSV" ]; then
    "$PY" - "$CSV" <<'EOF' | tee -a "$LOG"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
print(f"\n{len(rows)} rows in {sys.argv[1]}")
for r in rows:
    if r["benchmark"] == "dependence_B":
        extra = f"  {float(r['tflops']):.1f} TFLOP/s" if r.get("tflops") else ""
        frac = f" ({100 * float(r['fp32_peak_fraction']):.0f}% of FP32 peak)" if r.get("fp32_peak_fraction") else ""
        t = f"{float(r['median_ms']):.2f} ms" if r["median_ms"] else r["error"][:60]
        mem = f"  {float(r['extra_mem_mib']):.0f} MiB" if r.get("extra_mem_mib") else ""
        print(f"  {r['provider']:6s} n={int(r['n']):>7d} {r['dtype']:8s} {t}{mem}{extra}{frac}")
EOF
fi
exit $FAILED
