#!/usr/bin/env bash
# One device call: benchmarks/long_run.py on the GPU, eager then compiled twice (cold and warm
# Inductor cache), each a fresh process; the JSON line and the machine's description come back in
# $OUT/long-run-gpu/ (copy them to results/long-run-gpu/). Expects the carried folder .gpu_carry/ with data/ (a copy
# of ../shared/data) and minilm/ (the default backbone as a bf16 safetensors copy, loaded as fp32), as
# experiments/gpu/converged.sh does. About 5-8 minutes on an H100 (not yet run there).
#   SMOKE=1 OUT=/tmp/out bash benchmarks/gpu/long_run.sh        # a few-minute check on a CPU (64 samples)
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export CLEARPEFT_DATA=$PWD/.gpu_carry/data
RES=$OUT/long-run-gpu; mkdir -p $RES
ARGS=(--epochs "${EPOCHS:-3}" --model .gpu_carry/minilm)
[ "${SMOKE:-0}" = 1 ] && ARGS=(--epochs 2 --max-train-samples 64 --model .gpu_carry/minilm)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  python3 -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'cuda', torch.cuda.is_available())"
  nproc; date -u; } > $RES/device.txt 2>&1
cat $RES/device.txt
python3 benchmarks/long_run.py "${ARGS[@]}" 2> >(grep -v -i warn > $RES/stderr.txt) | tee $RES/long_run.jsonl
ls -la $RES
