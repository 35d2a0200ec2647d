#!/usr/bin/env bash
# The prepared device check (one `run` call on a lent GPU machine; also runs on CPU, where the GPU tests skip):
#   pytest -m gpu (the files holding GPU tests, so collection needs no audio/eval extras), the BridgeTower benchmark
#   with bf16 backends, ManagerTower vs BridgeTower cost (bf16 on CUDA, fp32 on CPU), the evaluation harnesses'
#   throughput, VidLA's video-tower frames/s at 8/12/32 frames (base size in bf16 on CUDA, tiny fp32 on CPU), RESTORE's
#   training step vs full CLIP fine-tuning, Zipper's generation with/without the KV caches, and LLaVA-OV-Manager vs
#   LLaVA-OneVision; logs and JSON under $OUT.
# Wheels the machine lacks go in .whl/ (git-excluded) and are installed to /tmp/site first.
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/towerzoo-gpu-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
# Make `towerzoo` importable without building: the package_dir mapping of setup.cfg, as symlinks.
rm -rf /tmp/tz && mkdir -p /tmp/tz/towerzoo
cp core/*.py /tmp/tz/towerzoo/
for part in models conversions evaluation hub_cards training; do ln -s "$PWD/$part" "/tmp/tz/towerzoo/$part"; done
export PYTHONPATH=/tmp/tz:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi || true; "$PY" -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"; } 2>&1 | tee "$OUT/env.log"
GPU_TESTS="tests/models/test_attention_backends.py tests/models/vidla/test_modeling_vidla.py tests/models/test_bf16_backends_on_gpu.py"
"$PY" -m pytest -m gpu -q -p no:cacheprovider $GPU_TESTS 2>&1 | tee "$OUT/pytest_gpu.log"
device=$("$PY" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
"$PY" benchmarks/bench_bridgetower.py --device "$device" --runs 10 --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
dtype=$([ "$device" = cuda ] && echo bf16 || echo fp32)
"$PY" benchmarks/bench_managertower.py --device "$device" --dtype "$dtype" --runs 10 --json "$OUT/bench_managertower.json" 2>&1 | tee "$OUT/bench_managertower.log"
size=$([ "$device" = cuda ] && echo base || echo tiny)
"$PY" benchmarks/bench_eval.py --device "$device" --dtype "$dtype" --size "$size" --json "$OUT/bench_eval.json" 2>&1 | tee "$OUT/bench_eval.log"
"$PY" benchmarks/bench_vidla.py --device "$device" --dtype "$dtype" --size "$size" --json "$OUT/bench_vidla.json" 2>&1 | tee "$OUT/bench_vidla.log"
"$PY" benchmarks/restore_training_step.py --device "$device" --dtype "$dtype" --size "$size" --json "$OUT/bench_restore.json" 2>&1 | tee "$OUT/bench_restore.log"
"$PY" benchmarks/zipper_generation.py --device "$device" --json "$OUT/bench_zipper.json" 2>&1 | tee "$OUT/bench_zipper.log"
"$PY" benchmarks/llava_ov_manager.py --device "$device" --json "$OUT/bench_llava_ov_manager.json" 2>&1 | tee "$OUT/bench_llava_ov_manager.log"
