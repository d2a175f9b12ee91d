#!/usr/bin/env bash
# The GPU check (issue 12, part 5): every CUDA path of QuAILoRA Studio in one unattended run
# of under 8 minutes on one H200-class GPU, all figures in ONE result file.
#
#   benchmarks/gpu_check.sh            # needs CUDA -> benchmarks/results/gpu_check.{json,md}
#   benchmarks/gpu_check.sh --tiny     # the same steps, tiny shapes, CPU -> gpu_check-tiny.{json,md}
#
# Options: --tiny (or QUAILORA_GPU_CHECK_TINY=1), --workdir DIR (models, adapters, logs; default a
# temp folder, deleted at the end), --keep (keep it), --out-dir DIR (default benchmarks/results),
# --budget SECONDS (the whole run's cap, default 470), --steps a,b,... (run only these; the
# others are recorded as skipped; with a --keep work folder a later step can be rerun alone).
# PYTHON=... picks the interpreter (default: python), in which the package must be installed
# (pip install -e ".[dev]").
#
# Without CUDA and without --tiny it stops at once: one line on stderr, exit code 2.
#
# Each step runs in its own process under its own `timeout` (SIGTERM, SIGKILL 10 s later),
# clipped to what is left of the whole run's budget; a step that fails or times out is recorded
# and the next step runs (steps that need its output are recorded as skipped). Exit code: 0 when
# every step (every selected step, with --steps) is ok, 1 otherwise; the result file is written
# either way, and its "all_ok" is true only when all steps ran and are ok.
#
# Time budget per step on one H200 (the timeout), and the estimate of its GPU time. The
# estimates are not measurements: no GPU has run this script yet.
#
#   step          timeout  estimate  what
#   preflight       30 s     10 s    versions, GPU, free disk
#   tests           75 s     35 s    python -m pytest -m cuda tests --ignore=tests/gui (test_cuda.py,
#                                    test_solvers.py): ~8 s collection, 5 demo-model engine runs, 4 training
#                                    steps, an eval
#   engine         190 s    140 s    gpu_llama8b.py --blocks 4: a Llama-3-8B-shaped model with 4 of its
#                                    32 blocks (1.9 B parameters, 3.6 GiB bf16) built on the GPU and
#                                    saved (~25 s), the engine on 128 x 2048 tokens at rank 64 with its
#                                    self-check (~110 s); seconds per block and peak GPU memory,
#                                    extrapolated to 32 blocks
#   train_init      80 s     50 s    a 1B-shaped Llama (hidden 2048, 16 blocks, intermediate 8192,
#                                    vocab 32000; 1.1 B parameters, 2.2 GB bf16) built and saved (~15 s),
#                                    `quailora init` on 32 x 512 tokens, rank 16 (~35 s)
#   train           75 s     45 s    `quailora train`: 30 steps of 4 x 512 tokens, bf16, paged 8-bit AdamW,
#                                    gradient checkpointing (load + 4-bit quantization ~15 s, steps ~20 s,
#                                    two evaluations and the save ~10 s)
#   adapter_load    45 s     20 s    the trained adapter on the 4-bit base (transformers +
#                                    BitsAndBytesConfig from quailora.json + peft); perplexity, finite logits
#   eval            45 s     25 s    `quailora eval` (fp, 4-bit, 4-bit + adapter) on 8 x 512 tokens
#   fsdp           110 s     80 s    FSDP-QLoRA as a user runs it: `quailora init` on train_init's model with
#                                    --dtype bfloat16 --quant-storage bfloat16 (8 x 256 tokens, self-check
#                                    on; ~25 s), `export-run --launch fsdp`, then the folder's launch.sh with
#                                    NUM_PROCESSES=2 (1 on a one-GPU machine): 10 steps of 2 x 512 tokens,
#                                    one sharded checkpoint, the trained adapter (~40 s with the loads),
#                                    then that adapter loaded back in one process as adapter_load does
#                                    (its tensors, lora_B moved by training, 4 x 512 tokens; ~10 s)
#   deepspeed      110 s     80 s    the same with --launch deepspeed (ZeRO-3); skipped when DeepSpeed is
#                                    not installed (the usual case: it is not a dependency)
#   report          20 s      3 s    the result file
#                  ------   ------
#                  780 s    418 s    (the timeouts are clipped to the 470 s cap of the whole run;
#                                    estimated ~7.0 min with every step, ~5.6 without DeepSpeed; the cap 7.8 min)
#
# fsdp and deepspeed need CUDA (bitsandbytes' 4-bit layers under FSDP / ZeRO-3): in tiny mode they
# are recorded as skipped "not on this machine", as deepspeed is without DeepSpeed; such a skip
# does not fail the check (exit code, "all_ok").
#
# Disk: ~3.6 GiB (8B-shaped model, deleted after its step) + ~2.2 GB (1B model) + checkpoints.

set -u -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-python}
TINY=${QUAILORA_GPU_CHECK_TINY:-0}
KEEP=0
WORK=""
OUT_DIR="$ROOT/benchmarks/results"
BUDGET=470
ONLY=""

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --tiny) TINY=1 ;;
        --keep) KEEP=1 ;;
        --workdir) WORK=${2:?--workdir needs a folder}; shift ;;
        --out-dir) OUT_DIR=${2:?--out-dir needs a folder}; shift ;;
        --budget) BUDGET=${2:?--budget needs seconds}; shift ;;
        --steps) ONLY=${2:?--steps needs a list}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $TINY == 1 ]] || TINY=0
[[ $BUDGET =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: --budget must be whole seconds, not '$BUDGET'" >&2; exit 2; }

cd "$ROOT" || exit 2
if ! command -v timeout >/dev/null; then
    echo "gpu_check.sh: the 'timeout' command (coreutils) is missing; it is what keeps each step bounded" >&2
    exit 2
fi
if [[ $TINY == 0 ]]; then
    if ! timeout -k 5 60 "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)" 2>/dev/null; then
        echo "gpu_check.sh: needs a CUDA GPU (torch.cuda.is_available() is False, or torch does not import, in $PYTHON); use --tiny for the CPU dry run" >&2
        exit 2
    fi
fi

TEMP_WORK=0
if [[ -z $WORK ]]; then
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/quailora-gpu-check-XXXXXX") || exit 2
    TEMP_WORK=1
fi
mkdir -p "$WORK/steps" "$WORK/logs" || exit 2
WORK=$(cd "$WORK" && pwd)
STATUS="$WORK/status.jsonl"
: >"$STATUS"
cleanup() { if [[ $KEEP == 0 ]]; then rm -rf "$WORK/train" "$WORK/engine" "$WORK/fsdp" "$WORK/deepspeed"; [[ $TEMP_WORK == 1 ]] && rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'echo "gpu_check.sh: interrupted" >&2; exit 130' INT TERM

TINY_FLAG=()
[[ $TINY == 1 ]] && TINY_FLAG=(--tiny)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

REPORT_RESERVE=20   # seconds kept for the report at the end
MIN_STEP=15         # a step gets at least this much time, or is skipped
START=$SECONDS
declare -A STATE UNSELECTED

record() {  # step status rc seconds timeout budget reason
    printf '{"step": "%s", "status": "%s", "rc": %s, "seconds": %s, "timeout_s": %s, "budget_s": %s, "reason": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "$6" "$7" >>"$STATUS"
    STATE[$1]=$2
    printf '[gpu_check] %-12s %-8s %6s s (timeout %s s)%s\n' "$1" "$2" "$4" "$5" "${7:+  $7}"
}

# run_step NAME BUDGET NEEDS COMMAND...   (NEEDS: a step that must be ok first, or -)
run_step() {
    local name=$1 budget=$2 needs=$3
    shift 3
    if [[ -n $ONLY && ",$ONLY," != *",$name,"* ]]; then
        record "$name" skipped null 0 0 "$budget" "not selected (--steps)"; UNSELECTED[$name]=1; return
    fi
    # a needed step that was not selected is taken as done earlier (a rerun in a --keep work folder)
    if [[ $needs != - && ${STATE[$needs]:-} != ok && -z ${UNSELECTED[$needs]:-} ]]; then
        record "$name" skipped null 0 0 "$budget" "needs $needs, which is ${STATE[$needs]:-not run}"; return
    fi
    local left=$((BUDGET - (SECONDS - START) - REPORT_RESERVE))
    if ((left < MIN_STEP)); then
        record "$name" skipped null 0 0 "$budget" "no time left in the ${BUDGET} s budget"; return
    fi
    local limit=$((budget < left ? budget : left))
    echo "[gpu_check] $name: starting (timeout ${limit} s) ..."
    local t0 rc secs status
    t0=$(date +%s.%N)
    timeout -k 10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1 </dev/null
    rc=$?
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    case $rc in
        0) status=ok ;;
        124|137) status=timeout ;;
        *) status=failed ;;
    esac
    record "$name" "$status" "$rc" "$secs" "$limit" "$budget" ""
}

# skip_step NAME BUDGET REASON: a step this machine cannot run (no CUDA, DeepSpeed not installed),
# recorded as skipped "not on this machine"; it does not fail the check
declare -A NOT_HERE
skip_step() {
    if [[ -n $ONLY && ",$ONLY," != *",$1,"* ]]; then
        record "$1" skipped null 0 0 "$2" "not selected (--steps)"; UNSELECTED[$1]=1; return
    fi
    record "$1" skipped null 0 0 "$2" "not on this machine: $3"; NOT_HERE[$1]=1
}

STEP="$HERE/gpu_check.py"
echo "[gpu_check] mode: $([[ $TINY == 1 ]] && echo 'tiny (CPU smoke test)' || echo GPU); work folder $WORK; budget ${BUDGET} s"
run_step preflight 30 - "$PYTHON" "$STEP" preflight --work "$WORK" --out "$WORK/steps/preflight.json" "${TINY_FLAG[@]}"
run_step tests 75 - "$PYTHON" "$STEP" tests --work "$WORK" --out "$WORK/steps/tests.json" "${TINY_FLAG[@]}"
if [[ $TINY == 1 ]]; then
    ENGINE=(--tiny --blocks 2 --full-blocks 8)
else
    ENGINE=(--blocks 4)
fi
run_step engine 190 - "$PYTHON" "$HERE/gpu_llama8b.py" "${ENGINE[@]}" --no-write --workdir "$WORK/engine" \
    --json "$WORK/steps/engine.json"
run_step train_init 80 - "$PYTHON" "$STEP" train_init --work "$WORK" --out "$WORK/steps/train_init.json" "${TINY_FLAG[@]}"
run_step train 75 train_init "$PYTHON" "$STEP" train --work "$WORK" --out "$WORK/steps/train.json" "${TINY_FLAG[@]}"
run_step adapter_load 45 train "$PYTHON" "$STEP" adapter_load --work "$WORK" --out "$WORK/steps/adapter_load.json" "${TINY_FLAG[@]}"
run_step eval 45 train "$PYTHON" "$STEP" eval --work "$WORK" --out "$WORK/steps/eval.json" "${TINY_FLAG[@]}"
# the sharded run kinds (issue 15), through the exported run folder's launch.sh
if [[ $TINY == 1 ]]; then
    skip_step fsdp 110 "FSDP-QLoRA needs CUDA (bitsandbytes under FSDP); tiny mode runs on the CPU"
    skip_step deepspeed 110 "DeepSpeed ZeRO-3 QLoRA needs CUDA; tiny mode runs on the CPU"
else
    run_step fsdp 110 train_init "$PYTHON" "$STEP" sharded --kind fsdp --work "$WORK" --out "$WORK/steps/fsdp.json"
    if timeout -k 5 60 "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
        run_step deepspeed 110 train_init "$PYTHON" "$STEP" sharded --kind deepspeed --work "$WORK" \
            --out "$WORK/steps/deepspeed.json"
    else
        skip_step deepspeed 110 "DeepSpeed is not installed (pip install deepspeed)"
    fi
fi

TOTAL=$((SECONDS - START))
STEM="gpu_check$([[ $TINY == 1 ]] && echo -tiny)"
mkdir -p "$OUT_DIR"
if ! timeout -k 5 "$REPORT_RESERVE" "$PYTHON" "$STEP" report --work "$WORK" --out-dir "$OUT_DIR" \
        --total-seconds "$TOTAL" --budget "$BUDGET" "${TINY_FLAG[@]}" >"$WORK/logs/report.log" 2>&1; then
    # the report itself failed: still one result file, with every step's status
    echo "[gpu_check] the report failed (see below); writing the bare statuses" >&2
    tail -n 5 "$WORK/logs/report.log" >&2
    { printf '{"benchmark": "%s", "report_failed": true, "total_seconds": %s, "steps": [\n' "$STEM" "$TOTAL"
      sed '$!s/$/,/' "$STATUS"
      printf ']}\n'; } >"$OUT_DIR/$STEM.json"
    printf '# GPU check\n\nThe report step failed; the statuses are in %s.json.\n' "$STEM" >"$OUT_DIR/$STEM.md"
fi
echo "[gpu_check] total ${TOTAL} s; results in $OUT_DIR/$STEM.json and .md"
for s in "${!STATE[@]}"; do [[ ${STATE[$s]} == ok || -n ${UNSELECTED[$s]:-} || -n ${NOT_HERE[$s]:-} ]] || exit 1; done
exit 0
