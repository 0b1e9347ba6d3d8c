#!/usr/bin/env bash
# Every CUDA test and GPU measurement of the project in ONE run, for a GPU machine with little
# time on it (about 15 minutes in all, no network there, PyTorch CUDA and onnxruntime (CPU)
# present, no TensorRT). Nothing here has run yet: no GPU machine has been available so far.
#
# Here, first (fetches the serving/eval packages the device image lacks, as py3.12 wheels):
#     bash benchmarks/gpu_wheels.sh            # -> .whl/ (ignored by git; carry it)
# Then one device call, carrying .whl, with a timeout that leaves room for a rerun:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=480)
# Results come back under $OUT: gpu.txt, pytest_gpu.txt, bench_*.json/.txt,
# track_streams_*.json/.txt, train_cuda.txt, serve_swap_*.json/.txt.
#
# What it runs:
#   1. pytest -m gpu plus the CUDA training tests: PyTorch serve backend (float16, CUDA graphs
#      on/off against float32), trainer on CUDA; the TensorRT tests skip (no TensorRT there).
#   2. detector bench, torch backend on CUDA: nano@416 and s@640, batch 1 and 32, float32 and
#      float16, CUDA graphs off and on (the serving backends' GPU measurement), ONNX Runtime CPU beside it.
#   3. several live streams through `detector track` (benchmarks/track_streams.py): 8 and 32 MJPEG
#      streams at 30 fps, one process against one process per stream, nano@416 on the torch
#      backend (float16, its default on CUDA), then on a TensorRT engine (fp16, batch 1-32) where
#      TensorRT is installed; that case is skipped, with a line saying so, where it is not.
#   4. a short CUDA training run of the demo's recipe (time per epoch on the GPU).
#   5. hot swaps under load (benchmarks/serve_swap.py, explicit mode): 20 new versions of nano@416
#      loaded by load calls while 16 clients post, every answer counted, p99 and RSS before,
#      during and after; on the torch backend (float16 on CUDA), then on the TensorRT engine of
#      step 3 where TensorRT is installed (skipped, with a line saying so, where it is not).
set -uo pipefail
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=python3
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" \
    | tee -a "$OUT/gpu.txt"

# 1. CUDA tests (about 2-3 minutes)
{ timeout 150 $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests
  timeout 150 $PY -m pytest -q -rs -p no:cacheprovider tests/training/test_engine_train_cuda.py
} 2>&1 | tee "$OUT/pytest_gpu.txt"

# 2. detector bench on the GPU: random weights (speed does not depend on them)
models=$(mktemp -d)
$PY - "$models" <<'PYEOF'
import sys
from pathlib import Path

import torch

from detector.training.checkpoint import save_atomic
from detector.models import build_model
from export.onnx import export_onnx

out = Path(sys.argv[1])
for name, size in (("yolox_nano", 416), ("yolox_s", 640)):
    model = build_model(name, num_classes=80)
    meta = {"model_name": name, "num_classes": 80, "class_names": [f"c{i}" for i in range(80)],
            "input_size": [size, size]}
    weights = save_atomic({"model": model.state_dict(), "meta": meta}, out / f"{name}.pt")
    export_onnx(weights, out / f"{name}.onnx", dynamic=True)
PYEOF
for name in yolox_nano yolox_s; do
    for precision in fp16 fp32; do
        timeout 150 $PY -m detector bench --model "$models/$name.pt" --device cuda \
            --precision "$precision" --cuda-graphs both --batch 1,32 --repeats 50 --warmup 10 \
            --json "$OUT/bench_${name}_${precision}.json" 2>&1 | tee "$OUT/bench_${name}_${precision}.txt"
    done
done
timeout 120 $PY -m detector bench --model "$models/yolox_nano.onnx" --batch 1,32 --repeats 20 \
    --json "$OUT/bench_nano_ort_cpu.json" 2>&1 | tee "$OUT/bench_nano_ort_cpu.txt"

# 3. several streams at once on the GPU (about 2 minutes per backend; the stream server, the
#    JPEG decoding and the separate processes' start-up use the CPU cores)
streams="--streams 8 32 --seconds 6 --warmup 2 --repeats 1 --md="
timeout 200 $PY benchmarks/track_streams.py --model "$models/yolox_nano.pt" \
    --track-args="--device cuda" $streams --json "$OUT/track_streams_torch_fp16.json" 2>&1 \
    | tee "$OUT/track_streams_torch_fp16.txt"
# the real TensorRT, not only tensorrt-stubs (a namespace that imports too)
if $PY -c "from serve.runtime.backends.tensorrt import require_tensorrt; require_tensorrt()" \
    2>/dev/null; then
    # an FP16 ONNX, so that TensorRT 10.x (builder flag) and 11.x (the ONNX's own precision) agree
    { $PY -m detector export onnx --weights "$models/yolox_nano.pt" --dynamic --half --no-verify \
          --out "$models/yolox_nano_fp16.onnx" \
      && timeout 150 $PY -m detector export engine --onnx "$models/yolox_nano_fp16.onnx" \
          --out "$models/yolox_nano_fp16.engine" --precision fp16 --min-batch 1 --opt-batch 32 \
          --max-batch 32 --no-verify \
      && timeout 200 $PY benchmarks/track_streams.py --model "$models/yolox_nano_fp16.engine" \
          $streams --json "$OUT/track_streams_tensorrt_fp16.json"
    } 2>&1 | tee "$OUT/track_streams_tensorrt_fp16.txt"
else
    echo "TensorRT is not installed: the TensorRT multi-stream case is skipped" \
        | tee "$OUT/track_streams_tensorrt_fp16.txt"
fi

# 4. the demo's training on the GPU (epoch time; the demo's own steps need the serve wheels)
timeout 180 $PY -m detector demo --out /tmp/demo_gpu --device cuda 2>&1 | tail -40 \
    | tee "$OUT/demo_cuda.txt"

# 5. hot swaps under 16 clients on the GPU backends (about 1-2 minutes each): every answer 200?
swap="--parts swap --modes explicit --swaps 20 --warmup 5 --quiet 10"
timeout 240 $PY benchmarks/serve_swap.py --model "$models/yolox_nano.pt" $swap \
    --server-args "--device 0" --out "$OUT/serve_swap_torch_fp16.json" 2>&1 \
    | tee "$OUT/serve_swap_torch_fp16.txt"
if [ -f "$models/yolox_nano_fp16.engine" ]; then
    timeout 240 $PY benchmarks/serve_swap.py --model "$models/yolox_nano_fp16.engine" $swap \
        --server-args "--device 0" --out "$OUT/serve_swap_tensorrt_fp16.json" \
        2>&1 | tee "$OUT/serve_swap_tensorrt_fp16.txt"
else
    echo "no TensorRT engine (TensorRT is not installed): the TensorRT swap case is skipped" \
        | tee "$OUT/serve_swap_tensorrt_fp16.txt"
fi
