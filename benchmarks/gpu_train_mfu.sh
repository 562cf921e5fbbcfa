#!/usr/bin/env bash
# Training and inference MFU of the paper preset on one GPU (bf16, torch.compile, fused Adam), in under 10 min.
#   bash benchmarks/gpu_train_mfu.sh    # writes ${OUT:-out}/gpu_mfu.json, gpu_mfu.log, folder_cuda.json/.log
# Run from the repository root on the GPU machine; installs this checkout into the current Python if needed.
set -euo pipefail
out="${OUT:-out}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import ipt" 2>/dev/null || python -m pip install -q --no-deps --no-build-isolation -e .
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
# 440 s hard limit (the session allows 10 min per command, the folder step below takes up to 120 s); the script
# stops measuring at --time-budget itself.
timeout 440 python benchmarks/gpu_train_mfu.py --device cuda --preset paper --batch 64 --infer-batch 256 \
    --steps 50 --warmup 5 --time-budget 390 --json "$out/gpu_mfu.json" 2>&1 | tee "$out/gpu_mfu.log"
# Issue 15 item 2 on the GPU: 100 images of 128x128, one by one vs the stream of ipt restore (FOLDER_BENCH=0 skips).
if [ "${FOLDER_BENCH:-1}" = 1 ]; then
    timeout 120 python benchmarks/folder_throughput.py --device cuda --images 100 --repeats 2 \
        --json "$out/folder_cuda.json" 2>&1 | tee "$out/folder_cuda.log" || true
fi
