#!/usr/bin/env bash
# When does the tiny CPU model start to use the conversation? configs/train_cpu.yaml trained on one GPU
# for fixed step counts (a 10-minute CPU run is a step count: docs/BENCHMARKS.md), several variants at
# once, each scored by `fizzbot eval` on 1,000 validation rows. The GPU stands in for hours of the
# 2-core box: the same config, the same effective batch (1 worker x 16 rows x 2 accumulation steps =
# 2 CPU workers x 8 x 2), float32; names-807 gives the CPU run's figures (docs/BENCHMARKS.md).
#
# Prepare the Ubuntu logs here (fizzbot prepare --config configs/train_cpu.yaml data.min_context_messages=0,
# with data.name_others=true for NAMES and false for PLAIN), tar each folder, carry them, then on the GPU:
#   NAMES=/tmp/d/names0 PLAIN=/tmp/d/plain0 CTX6=/tmp/d/ctx6 SET=1 bash benchmarks/gpu_context_steps.sh
# SET picks a group of runs (1-4, as in docs/bench_gpu_context_steps.json); $OUT/context_steps.json gets
# every run's figures.
set -uo pipefail
export PYTHONUNBUFFERED=1
SET=${SET:-1}
RUNS=${RUNS:-/tmp/context-steps}
mkdir -p "$RUNS/results"
run() {
  local name=$1 data=$2 steps=$3; shift 3
  python3 -m fizzbot.cli train --no-ray --config configs/train_cpu.yaml data.path="$data" run.dir="$RUNS" run.name="$name" \
    training.use_gpu=true training.num_workers=1 training.batch_size=16 training.grad_accum_steps=2 training.max_steps="$steps" \
    training.eval_steps=1000000 training.save_steps=1000000 training.log_steps=200 "$@" > "$RUNS/$name.log" 2>&1 \
    || { echo "$name: training failed"; tail -30 "$RUNS/$name.log"; return; }
  local ck; ck=$(ls -d "$RUNS/$name"/*/checkpoint-* | sort -V | tail -1)
  python3 -m fizzbot.cli eval --model-dir "$ck" eval.max_rows=1000 eval.style_speakers=0 eval.conversations=2 \
    eval.conversation_turns=4 >> "$RUNS/$name.log" 2>&1 || { echo "$name: eval failed"; tail -30 "$RUNS/$name.log"; return; }
  cp "$ck/eval/eval.json" "$RUNS/results/$name.json"
  echo "$name done $(date +%T)"
}
S="model.tiny.hidden_size=128 model.tiny.intermediate_size=384 model.tiny.vocab_size=2048"
H96="model.tiny.hidden_size=96 model.tiny.intermediate_size=256 model.tiny.vocab_size=2048"
case $SET in
  1)  # names against none, and the step count
    run names-807 "$NAMES" 807 & run names-2400 "$NAMES" 2400 & run names-8000 "$NAMES" 8000 & run plain-2400 "$PLAIN" 2400 &
    run names-lr4e-3-807 "$NAMES" 807 training.learning_rate=4e-3 &
    run names-2layer-h256-807 "$NAMES" 807 model.tiny.num_layers=2 model.tiny.hidden_size=256 model.tiny.intermediate_size=768 &
    run names-heads8-807 "$NAMES" 807 model.tiny.num_heads=8 model.tiny.num_kv_heads=8 &
    run names-batch64-807 "$NAMES" 807 training.grad_accum_steps=4 & ;;
  2)  # smaller, faster shapes at the steps 10 CPU minutes give them
    run h128-v2k-1760 "$NAMES" 1760 $S & run h96-v2k-2360 "$NAMES" 2360 $H96 & run h128-L3-v2k-2030 "$NAMES" 2030 $S model.tiny.num_layers=3 &
    run h128-v2k-lr3e-3-1760 "$NAMES" 1760 $S training.learning_rate=3e-3 & run h128-v2k-lr1e-3-1760 "$NAMES" 1760 $S training.learning_rate=1e-3 &
    run h128-v2k-b16-3520 "$NAMES" 3520 $S training.grad_accum_steps=1 & run cur-1600 "$NAMES" 1600 &
    run h96-v2k-lr3e-3-2360 "$NAMES" 2360 $H96 training.learning_rate=3e-3 & run h128-v2k-ctx6-1360 "$CTX6" 1360 $S & ;;
  3)  # batch size and learning rate at the same rows
    run b16-1614 "$NAMES" 1614 training.grad_accum_steps=1 & run b8-3228 "$NAMES" 3228 training.batch_size=8 training.grad_accum_steps=1 &
    run b16-1614-lr3e-3 "$NAMES" 1614 training.grad_accum_steps=1 training.learning_rate=3e-3 &
    run b16-1614-lr1e-3 "$NAMES" 1614 training.grad_accum_steps=1 training.learning_rate=1e-3 &
    run b8-3228-lr1e-3 "$NAMES" 3228 training.batch_size=8 training.grad_accum_steps=1 training.learning_rate=1e-3 &
    run b16-1614-seed1 "$NAMES" 1614 training.grad_accum_steps=1 training.seed=1 & run b32-1200 "$NAMES" 1200 &
    run ctx6-b16-1245 "$CTX6" 1245 training.grad_accum_steps=1 & ;;
  4)  # cheaper shapes at 1,200 steps, and the seed
    run cur-1200 "$NAMES" 1200 & run cur-1200-seed1 "$NAMES" 1200 training.seed=1 &
    run i256-1200 "$NAMES" 1200 model.tiny.intermediate_size=256 & run L3-1200 "$NAMES" 1200 model.tiny.num_layers=3 &
    run i384-1200 "$NAMES" 1200 model.tiny.intermediate_size=384 & run v2k-1200 "$NAMES" 1200 model.tiny.vocab_size=2048 & ;;
esac
wait
python3 - "$RUNS/results" <<'PY'
import glob, json, os, sys
runs = {os.path.basename(f)[:-5]: json.load(open(f))["figures"] for f in sorted(glob.glob(sys.argv[1] + "/*.json"))}
for name, f in runs.items():
    print(f"{name:24s} loss {f['val_loss']:.3f}  context gain {f['context_gain']:.3f}  loss/bigram {f['loss_vs_bigram']:.3f}  "
          f"named acc {f['named_speaker_acc']:.3f} (turn-taking {f['named_bigram_acc']:.3f})")
out = os.environ.get("OUT")
if out:
    json.dump(runs, open(os.path.join(out, "context_steps.json"), "w"), indent=1)
PY
