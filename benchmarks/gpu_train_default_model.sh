#!/usr/bin/env bash
# The default model's GPU training run (issue 17) followed by the GPU MFU measurement (issue 15), as one command
# that fits one 10-minute call on the lent GPU machine (H200):
#
#   bash benchmarks/gpu_train_default_model.sh      # writes ${OUT:-out}/{model/,train.log,log.jsonl,gpu_mfu.*}
#
# Expects, beside the checkout (ignored paths, carried to the GPU machine):
#   .gpu/pool/        the 400 BSDS500 training photos (shared/data/extract.sh; disjoint from B100 and CBSD68)
#   .gpu/rain/        Rain100L training pairs (rain/ + norain/, same names), lossless WebP to fit the transfer limit
#   .whl/ (optional)  wheels of packages the machine lacks (pydantic, datasets, ...), .whl/alt/ a fallback datasets
# Environment: TRAIN_MINUTES (default 5.0) of training after a short probe that measures the step rate (so the lr
# schedule's --max-steps matches the time budget), MFU_SECONDS (default 120, 0 = skip) for the MFU benchmark,
# DEVICE_FLAGS (e.g. --cpu for a smoke run here), PROBE_STEPS (default 120).
set -uo pipefail
out="${OUT:-out}"
mkdir -p "$out"
minutes="${TRAIN_MINUTES:-5.0}"
probe_steps="${PROBE_STEPS:-120}"
mfu_s="${MFU_SECONDS:-120}"
workers="${WORKERS:-12}"
batch="${BATCH:-64}"
t0=$(date +%s)
say() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$out/train.log"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$out/train.log"
if [ -z "${NO_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
  if ! python3 -c "import datasets, pydantic" 2>>"$out/train.log"; then
    say "datasets from .whl failed to import; trying .whl/alt"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site2 \
      .whl/alt/*.whl && export PYTHONPATH=/tmp/site2:/tmp/site
  fi
fi
python3 -c "import importlib.metadata as m; m.version('ipt-framework')" 2>/dev/null || python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
python3 -c "import torch, datasets, pydantic, pyarrow; print('torch', torch.__version__, 'datasets', datasets.__version__,
'pydantic', pydantic.VERSION, 'pyarrow', pyarrow.__version__, 'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$out/train.log"

# The run: 12 heads (spandrel and the official layout assume 12), token dim 24*9 = 216, 2+2 layers: 4.0M
# parameters, 16 MB in fp32 (the card's limit is 20 MB). Seven tasks, one per step, BSDS500 photos degraded on the
# fly (colour augmentation for saturated colours, case 21), derain on stored Rain100L training pairs.
common=(--tasks sr2,sr3,sr4,denoise30,denoise50,derain,deblur --preset tiny
        --model n_feats=24,num_heads=12,num_enc_layers=2,num_dec_layers=2
        --data .gpu/pool --task-data derain=.gpu/rain --color-augment --crops-per-image 8
        --batch-size "$batch" --num-workers "$workers" --mixed-precision bf16 --lr 4e-4 --warmup-steps 500
        --ema-decay 0.999 --seed 0 --no-progress ${DEVICE_FLAGS:-})

say "probe: $probe_steps steps to measure the step rate"
rm -rf /tmp/ipt-probe
timeout 150 python3 core/train.py "${common[@]}" --max-steps "$probe_steps" --log-every 20 --val-every 0 \
  --save-every 100000 --save-every-minutes 0 --output-dir /tmp/ipt-probe > "$out/probe.log" 2>&1
say "probe exit $?"
steps=$(python3 - "$minutes" "$batch" <<'EOF'
import json, sys, statistics
minutes, batch = float(sys.argv[1]), int(sys.argv[2])
recs = [json.loads(l) for l in open("/tmp/ipt-probe/log.jsonl") if '"patches_per_s"' in l]
rate = statistics.median(r["patches_per_s"] for r in recs[len(recs) // 2:]) / batch  # steps/s, warm half
print(max(200, int(rate * minutes * 60 * 0.95)))
EOF
)
steps=${steps:-3000}
say "training $steps steps (budget $minutes min)"
timeout $(python3 -c "print(int($minutes * 60 + 90))") python3 core/train.py "${common[@]}" --max-steps "$steps" \
  --max-minutes "$minutes" --log-every 100 --val-every 1000 --val-patches 16 --save-every 100000 \
  --save-every-minutes 2 --keep-last 1 --output-dir /tmp/ipt-gpu-run >> "$out/train.log" 2>&1
say "training exit $?"
mkdir -p "$out/model"
cp /tmp/ipt-gpu-run/model/config.json /tmp/ipt-gpu-run/model/model.safetensors "$out/model/" 2>/dev/null
cp /tmp/ipt-gpu-run/log.jsonl "$out/log.jsonl" 2>/dev/null
if [ ! -f "$out/model/model.safetensors" ]; then  # killed before the export: keep the newest checkpoint's EMA
  ck=$(ls -d /tmp/ipt-gpu-run/checkpoints/step-* 2>/dev/null | sort -t- -k2 -n | tail -1)
  [ -n "$ck" ] && tar -C "$ck" -cf "$out/checkpoint.tar" . && say "no final model; checkpoint $ck saved"
fi

if [ "$mfu_s" != 0 ]; then
  say "MFU benchmark, paper preset, $mfu_s s"
  timeout $((mfu_s + 40)) python3 benchmarks/gpu_train_mfu.py --device cuda --preset paper --batch 64 \
    --infer-batch 256 --steps 30 --warmup 5 --time-budget "$mfu_s" --json "$out/gpu_mfu.json" > "$out/gpu_mfu.log" 2>&1
  say "MFU exit $?"
fi
say "done"
