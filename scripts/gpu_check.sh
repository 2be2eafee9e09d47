#!/usr/bin/env bash
# The GPU check of issue 18, as one command on a machine with CUDA (docs/cost.md, "On a GPU"):
#   scripts/gpu_check.sh --out DIR        (or with the environment variable OUT set)
# It uses the machine's own python (torch with CUDA, transformers, peft, timm, torchvision
# preinstalled; nothing is installed) with PYTHONPATH=src, runs each stage under its own time
# limit so that one failure does not eat the budget (8 minutes in all on one H200), and writes
# into DIR: gpu_check.log (everything printed), pytest.xml, bench_cuda.json, bench_cuda_bf16.json,
# bench_compile_bf16.json, finetune_vit.json and summary.json (versions, each stage's status,
# the goals met or not). Seven files, no folders: remote runners often bring back only a few.
#
#   --dry-run     print the plan, check that every file it needs is here and that what travels
#                 (the working tree plus the data file) stays under 64 MiB; runs nothing
#   --smoke       run every stage on the CPU at toy sizes (checks the plumbing, not the GPU)
#   --data FILE   the fine-tune's images (default runs/gpu-data/fashion_mnist.npz, made by
#                 `benchmarks/bench_finetune_vit.py --prepare FILE`; missing: digits)
#   --budget S    seconds for all stages together (default 460)
#   --only A,B    run only these stages (a rerun of what failed or timed out), e.g. --only finetune
set -uo pipefail
{ # read whole before it runs: an edit of this file during a run does not change that run
cd "$(dirname "$0")/.."
ROOT="$PWD"

OUT_DIR="${OUT:-}"
DRY=0
SMOKE=0
DATA=runs/gpu-data/fashion_mnist.npz
BUDGET=""
ONLY=""
LIMIT_BYTES=$((64 * 1024 * 1024))
die() { printf 'gpu_check: %s\n' "$*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT_DIR="$2"; shift 2 ;;
    --data) [ $# -ge 2 ] || die "--data needs a file"; DATA="$2"; shift 2 ;;
    --budget) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || die "--budget needs whole seconds"
              BUDGET="$2"; shift 2 ;;
    --only) [ $# -ge 2 ] || die "--only needs stage names"; ONLY=",$2,"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1'; see scripts/gpu_check.sh --help" ;;
  esac
done

# The machine's python: $PYTHON, else the first of python3 / python that imports torch.
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
      PY="$cand"; break
    fi
  done
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
  TRANSFORMERS_OFFLINE=1 DIPNET_NO_DOWNLOAD=1 TOKENIZERS_PARALLELISM=false

if [ "$SMOKE" = 1 ]; then
  DEV=cpu; BF16=""; HF_EAGER=tiny; HF_COMPILE=tiny; BACKEND=aot_eager; ROUNDS="--repeats 1 --number 1"
  FP32_SECTIONS=hf; BF16_SECTIONS=hf
  SCALE=4  # a shared CPU compiles and trains slowly: the limits are the GPU's times four
  FT="--size tiny --steps 3 --warmup 1 --batch 8"; PYTEST_MARK="not gpu"
  PYTEST_PATHS=tests/core/test_gpu.py; PYTEST_K=regenerate_by_default
else
  DEV=cuda; BF16="--bf16"; HF_EAGER=base; HF_COMPILE=small; BACKEND=inductor; ROUNDS="--repeats 7 --number 4"
  FP32_SECTIONS=hf,offload,memory,floor; BF16_SECTIONS=hf,memory
  SCALE=1
  FT="--size small --steps 200 --warmup 20 --batch 256"; PYTEST_MARK="gpu"; PYTEST_PATHS=tests/core/test_gpu.py; PYTEST_K=""
fi
BUDGET="${BUDGET:-$((460 * SCALE))}"
DATA_ARG=""
[ -f "$DATA" ] && DATA_ARG="--data $DATA"
export PY DEV BF16 FP32_SECTIONS BF16_SECTIONS HF_EAGER HF_COMPILE BACKEND ROUNDS FT PYTEST_MARK PYTEST_PATHS PYTEST_K DATA_ARG

# One function per stage, each run under `timeout` in a fresh bash; $O is the output folder,
# $TMPD a scratch folder (not brought back). Word splitting of the option strings is wanted.
stage_versions() { "$PY" benchmarks/gpu_summary.py versions "$TMPD/versions.json"; }
stage_pytest() { "$PY" -m pytest $PYTEST_PATHS -m "$PYTEST_MARK" -k "$PYTEST_K" -q -rs -p no:cacheprovider --timeout 120 --junitxml "$O/pytest.xml"; }
stage_bench_fp32() { "$PY" benchmarks/bench_overhead.py --device $DEV --sections $FP32_SECTIONS --hf-size $HF_EAGER $ROUNDS --json "$O/bench_cuda.json"; }
stage_bench_bf16() { "$PY" benchmarks/bench_overhead.py --device $DEV $BF16 --sections $BF16_SECTIONS --hf-size $HF_EAGER $ROUNDS --json "$O/bench_cuda_bf16.json"; }
stage_compile_bf16() { "$PY" benchmarks/bench_overhead.py --device $DEV $BF16 --sections hf_compile --hf-size $HF_COMPILE --compile-backend $BACKEND $ROUNDS --json "$O/bench_compile_bf16.json"; }
stage_finetune() { "$PY" benchmarks/bench_finetune_vit.py --device $DEV $BF16 $FT $DATA_ARG --json "$O/finetune_vit.json"; }
export -f stage_versions stage_pytest stage_bench_fp32 stage_bench_bf16 stage_compile_bf16 stage_finetune
# name and time limit in seconds, in the order they run
STAGES=("versions 30" "pytest 130" "bench_fp32 60" "bench_bf16 60" "compile_bf16 130" "finetune 50")
if [ -n "$ONLY" ]; then
  picked=()
  for spec in "${STAGES[@]}"; do
    [[ "$ONLY" == *",${spec%% *},"* ]] && picked+=("$spec")
  done
  [ ${#picked[@]} -gt 0 ] || die "--only names no stage; the stages: ${STAGES[*]%% *}"
  [[ "$ONLY" == *",versions,"* ]] || picked=("versions 30" "${picked[@]}")  # the summary needs it
  STAGES=("${picked[@]}")
fi
body() { declare -f "stage_$1" | sed -n 3p | sed 's/^ *//; s/;$//'; }

NEEDED=(scripts/gpu_check.sh tests/core/test_gpu.py tests/core/test_perf_noise.py tests/core/test_hf_trainer.py
        benchmarks/bench_overhead.py benchmarks/bench_finetune_vit.py benchmarks/gpu_summary.py
        src/dipnet/__init__.py src/dipnet/noise.py src/dipnet/hf.py pyproject.toml)

if [ "$DRY" = 1 ]; then
  status=0
  echo "gpu_check plan ($([ "$SMOKE" = 1 ] && echo 'smoke, CPU' || echo 'CUDA')), budget ${BUDGET}s, output ${OUT_DIR:-from --out or OUT}:"
  echo "  python: ${PY:-none importing torch here (on the GPU machine: python3)} (PYTHONPATH=src)"
  echo "  device $DEV, hf sizes $HF_EAGER (eager) / $HF_COMPILE (compiled, $BACKEND), ${BF16:-float32}, $ROUNDS"
  for spec in "${STAGES[@]}"; do
    read -r name secs <<<"$spec"
    secs=$((secs * SCALE))
    printf '  %-13s <= %3ss  %s\n' "$name" "$secs" "$(body "$name")"
  done
  for f in "${NEEDED[@]}"; do
    [ -f "$f" ] || { echo "  MISSING: $f"; status=1; }
  done
  tree=0
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # What the device tool sends: tracked files and untracked ones git does not ignore.
    tree=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
           | awk '{s += $1} END {print s + 0}')
  fi
  data=0
  if [ -f "$DATA" ]; then
    data=$(stat -c %s "$DATA")
    kib=$((data / 1024)); folder=$(dirname "$DATA")
    echo "  fine-tune data: $DATA, $kib KiB (carry its folder, $folder)"
  else
    folder=$(dirname "$DATA")
    echo "  fine-tune data: $DATA not here: the fine-tune uses scikit-learn's digits (make it with"
    echo "    benchmarks/bench_finetune_vit.py --prepare $DATA, then carry $folder)"
  fi
  total=$((tree + data))
  echo "  travels: working tree $((tree / 1024)) KiB + data $((data / 1024)) KiB = $((total / 1024)) KiB (limit $((LIMIT_BYTES / 1024)) KiB)"
  if [ "$total" -gt "$LIMIT_BYTES" ]; then echo "  TOO LARGE to travel"; status=1; fi
  [ "$status" = 0 ] && echo "dry run: ok" || echo "dry run: FAILED"
  exit "$status"
fi

[ -n "$OUT_DIR" ] || die "no output folder: pass --out DIR or set OUT"
[ -n "$PY" ] || die "no python that imports torch (set PYTHON=...)"
mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
O="$(cd "$OUT_DIR" && pwd)"
TMPD="$(mktemp -d)"
trap 'rm -rf "$TMPD"' EXIT
LOG="$O/gpu_check.log"
: >"$LOG"
START=$SECONDS
export O TMPD
for spec in "${STAGES[@]}"; do
  read -r name secs <<<"$spec"
  secs=$((secs * SCALE))
  left=$((BUDGET - (SECONDS - START)))
  [ "$secs" -gt "$left" ] && secs=$left
  cmd="$(body "$name")"
  if [ "$secs" -lt 5 ]; then
    printf '%s\t%s\t%s\n' "$name" 124 0 >>"$TMPD/stages.tsv"
    echo "=== $name: skipped, the budget is spent" | tee -a "$LOG"
    continue
  fi
  echo "=== $name (<= ${secs}s): $cmd" | tee -a "$LOG"
  t0=$SECONDS
  timeout -k 10 "$secs" bash -c "stage_$name" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$TMPD/stages.tsv"
  echo "=== $name: exit $rc after $((SECONDS - t0))s" | tee -a "$LOG"
done
"$PY" benchmarks/gpu_summary.py summarize "$O" "$TMPD/stages.tsv" "$TMPD/versions.json" 2>&1 \
  | tee -a "$LOG"
! grep -qv $'\t0\t' "$TMPD/stages.tsv"
exit
}
