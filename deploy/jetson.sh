#!/usr/bin/env bash
# The Jetson flow in one command, run ON THE BOARD (an engine only runs on the GPU and TensorRT
# version that built it): a venv with the torch-free serving install, a TensorRT engine built
# here from the ONNX you copied over, then `detector serve` on it.
#
#   scp dist/detector-0.1.0-py3-none-any.whl runs/export/model.onnx jetson:
#   ssh jetson bash jetson.sh detector-0.1.0-py3-none-any.whl model.onnx [fp16|int8|fp32]
#
# JetPack 6 (L4T r36, TensorRT 10.3, CUDA 12) and JetPack 7 (L4T r38, TensorRT 10.13, CUDA 13)
# are told apart from /etc/nv_tegra_release. For int8, pass the ONNX that `detector export int8`
# wrote. Settings (environment): VENV (~/detector), MAX_BATCH (4), WORKSPACE (GiB; 1, for 8 GB
# boards), PORT (8000), HOST (127.0.0.1: this board only), DRY_RUN=1 prints the commands instead
# of running them.
#
# Fails closed: another HOST (0.0.0.0 for the network) needs API keys in DETECTOR_API_KEYS
# (comma-separated; clients send "Authorization: Bearer KEY"), which `detector serve` reads from
# the environment; without them the script stops before building anything, as the server would
# at start. DETECTOR_ALLOW_INSECURE=1 serves the network without keys (a trusted, isolated
# network only).
# Not yet run on a Jetson (the project has none); see deploy/README.md for memory and power modes.
set -euo pipefail

usage() { echo "usage: $0 WHEEL MODEL.onnx [fp16|int8|fp32]" >&2; exit 2; }
[ $# -ge 2 ] || usage
wheel=$1 onnx=$2 precision=${3:-fp16}
case $precision in fp16 | int8 | fp32) ;; *) usage ;; esac
venv=${VENV:-$HOME/detector}
max_batch=${MAX_BATCH:-4} workspace=${WORKSPACE:-1} port=${PORT:-8000} host=${HOST:-127.0.0.1}
release_file=${TEGRA_RELEASE:-/etc/nv_tegra_release}

run() {
    if [ "${DRY_RUN:-0}" = 1 ]; then echo "+ $*"; else "$@"; fi
}

[ -f "$wheel" ] || { echo "error: $wheel: no such wheel (make it with 'pip wheel --no-deps -w dist .')" >&2; exit 2; }
[ -f "$onnx" ] || { echo "error: $onnx: no such ONNX file" >&2; exit 2; }
[ -f "$release_file" ] || { echo "error: $release_file missing: this is not a Jetson (L4T) system" >&2; exit 2; }

case $host in
    127.* | ::1 | localhost) ;;
    *)
        case ${DETECTOR_ALLOW_INSECURE:-} in 1 | true | True | TRUE | yes) insecure=1 ;; *) insecure=0 ;; esac
        if [ -z "${DETECTOR_API_KEYS:-}" ] && [ "$insecure" != 1 ]; then
            echo "error: HOST=$host would serve the network without authentication: set DETECTOR_API_KEYS=KEY[,KEY...] (or DETECTOR_ALLOW_INSECURE=1 on a trusted, isolated network), or leave HOST unset for 127.0.0.1" >&2
            exit 2
        fi
        ;;
esac

# "# R36 (release), REVISION: 4.0, ..." -> 36
l4t=$(sed -n 's/^# R\([0-9]*\) .*/\1/p' "$release_file" | head -n 1)
case $l4t in
    36) jetpack=6 cuda_python='cuda-python>=12.6,<13' ;;
    38) jetpack=7 cuda_python='cuda-python>=13,<14' ;;
    *) echo "error: L4T r$l4t: this script knows JetPack 6 (r36) and 7 (r38)" >&2; exit 2 ;;
esac
echo "JetPack $jetpack (L4T r$l4t): $cuda_python"

if [ ! -x "$venv/bin/python" ]; then
    # --system-site-packages: the venv sees JetPack's own TensorRT Python bindings
    run python3 -m venv --system-site-packages "$venv"
fi
run "$venv/bin/python" -m pip install --quiet "$wheel[serve]" "$cuda_python" onnx
if [ "${DRY_RUN:-0}" != 1 ]; then
    "$venv/bin/python" -c "import tensorrt; print('TensorRT', tensorrt.__version__)" || {
        echo "error: no TensorRT Python bindings; install them with: sudo apt install nvidia-jetpack" >&2
        exit 2
    }
fi

engine=${onnx%.onnx}.engine
run "$venv/bin/detector" export engine --onnx "$onnx" --out "$engine" --precision "$precision" \
    --max-batch "$max_batch" --workspace "$workspace"
run "$venv/bin/detector" serve --model "$engine" --host "$host" --port "$port" --max-batch "$max_batch"
