#!/usr/bin/env bash
# One device call: with SWEEP=1 the dev-scored sweep and the protocol it writes (the first session
# did that: experiments/converged.yaml), else the committed protocol; then the converged grid in its
# priority order, 16 runs at a time on one GPU (one per core), until DEADLINE seconds have passed; results come back as
# tarballs in $OUT (run folders without weights and checkpoints). The grid writes into runs/gpu/grid (ignored,
# so a warm device keeps its checkpoints and the same command run again resumes half-finished runs), seeded
# with the cells already finished in results/converged-gpu. Expects the carried folder .gpu_carry/ with
# data/ (a copy of ../shared/data) and minilm/ (the default backbone as a bf16 safetensors copy, loaded as fp32).
#   SMOKE=1 OUT=/tmp/out bash experiments/gpu/converged.sh     # a 1-minute check on a CPU
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CLEARPEFT_DATA=$PWD/.gpu_carry/data
DEADLINE=${DEADLINE:-540}; WORKERS=${WORKERS:-16}; START=$(date +%s)
RES=results/converged-gpu; SWEEP_ARGS=(--rank-epochs 3 --confirm-epochs 15)
[ "${SMOKE:-0}" = 1 ] && RES=runs/gpu-smoke SWEEP_ARGS=(--rank-epochs 1 --confirm-epochs 2 --max-train-samples 64 \
  --max-eval-samples 64 --methods lora,full --datasets sst5)
left() { echo $(( DEADLINE - ($(date +%s) - START) )); }
mkdir -p $RES runs/gpu
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, transformers, peft, accelerate, sklearn; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'sklearn', sklearn.__version__, 'cuda', torch.cuda.is_available())"
  nproc; date -u; } >> $RES/device.txt 2>&1
tail -5 $RES/device.txt
if [ "${SWEEP:-0}" = 1 ] || [ "${SMOKE:-0}" = 1 ]; then  # the sweep that wrote experiments/converged.yaml
  timeout --signal=TERM $(left) python3 experiments/lr_sweep_full.py "${SWEEP_ARGS[@]}" --workers $WORKERS \
    --model .gpu_carry/minilm --out runs/gpu/lr_sweep_full --results $RES/lr_sweep_full.csv \
    --write-protocol $RES/converged.yaml 2>&1 | grep -v Warning | tee $RES/sweep.log
else  # later sessions: the committed protocol; the grid skips the cells already in results/converged-gpu
  PROTOCOL=experiments/converged.yaml
fi
PROTOCOL=${PROTOCOL:-$RES/converged.yaml}
if [ -f $PROTOCOL ]; then
  # The GPU copy of the protocol reads the carried backbone.
  sed 's|^base:|base:\n  model: .gpu_carry/minilm|' $PROTOCOL > runs/gpu/converged-gpu.yaml
  [ "${SMOKE:-0}" = 1 ] && sed -i 's|^base:|base:\n  max_train_samples: 64\n  max_eval_samples: 64|; s|^  epochs: .*|  epochs: 2|; s|warmup_epochs: 3|warmup_epochs: 1|; s|^methods: .*|methods: [lora, full]|; s|^datasets: .*|datasets: [sst5]|; /^extra:/,$d' runs/gpu/converged-gpu.yaml
  GRID=runs/gpu/grid; mkdir -p $GRID
  for d in $RES/*/; do [ "$(basename $d)" != unfinished ] && cp -rn $d $GRID/ 2>/dev/null; done  # -n: never overwrite
  # Seed 0 runs first in a grid, so P3 (the extra cells with seeds) would wait behind the seed-0 extras:
  # run a copy without them first, then the whole protocol; results.csv is rebuilt from the whole one.
  python3 -c "import yaml; s = yaml.safe_load(open('runs/gpu/converged-gpu.yaml'))
s['extra'] = [e for e in s.get('extra') or [] if 'seed' in e] or None
if s['extra'] is None: del s['extra']
yaml.safe_dump(s, open('runs/gpu/converged-gpu-p123.yaml', 'w'), sort_keys=False)"
  for protocol in runs/gpu/converged-gpu-p123.yaml runs/gpu/converged-gpu.yaml; do
    [ $(left) -gt 30 ] || break
    # a process group of its own: the pool's workers outlive a TERM to the grid, so the whole group is
    # stopped before packing (and before a rerun resumes), and nothing else on the machine is touched
    setsid bash -c "timeout --signal=TERM $(left) python3 -m clearpeft grid $protocol --out $GRID \
      --workers $WORKERS 2>&1 | grep -v Warning | tee -a $RES/grid.log" &
    group=$!; wait $group
    kill -TERM -- -$group 2>/dev/null; sleep 3; kill -KILL -- -$group 2>/dev/null
  done
  python3 -c "from pathlib import Path; from clearpeft.study.grid import load_grid, write_results
write_results(Path('$GRID'), load_grid('runs/gpu/converged-gpu.yaml'))"
fi
tar czf $OUT/converged-gpu.tgz --exclude=checkpoints --exclude=weights --exclude=noisy_labels.csv \
  --exclude=clean_probs.csv --exclude=status.json $RES runs/gpu
tar czf $OUT/clean-probs-gpu.tgz $(find $RES runs/gpu/grid -name clean_probs.csv -o -name noisy_labels.csv) 2>/dev/null
ls -la $OUT
