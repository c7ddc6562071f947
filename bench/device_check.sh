#!/usr/bin/env bash
# Issue 6's GPU checks in one run on a lent device machine (see the device tool's README; one H200, no network):
# the gpu-marked tests, bench/bench_chunked_head.py at LLaMA-3's vocabulary, then bench/bench_recipe_gpu.py on a
# QLoRA recipe of each method family — PAD, ADPA+, PLaD
# (random weights of the real architectures, measured peak memory beside workbench.memory's estimate, phase times,
# MFU) — and the second PAD recipe if time is left. The whole script keeps within $BUDGET seconds (default 530, under
# 9 min): each recipe gets at most 240 s and what is left, and a recipe that would start with under 90 s is skipped
# (said so in the output). JSON and logs go to $OUT.
#
# The device image has torch, transformers, peft, accelerate, pytest but not these; carry them as wheels (once,
# here, in the repo root; `.whl/` is ignored through .git/info/exclude):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2 datasets==5.2.0 dill multiprocess
# then: device run, command "bash bench/device_check.sh", carry [".whl"], timeout_s 590.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1 WORKBENCH_CACHE=/tmp/wbc
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, peft, bitsandbytes; print(torch.__version__, transformers.__version__, \
peft.__version__, bitsandbytes.__version__)"; } 2>&1 | tee "$OUT/versions.txt"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_memory.py tests/test_accelerate.py 2>&1 \
  | tee "$OUT/gpu_tests.log"
# the chunked head's trade-off at LLaMA-3's vocabulary (DCKD step, full logits vs logits_chunk 128; seconds)
timeout 90 python3 bench/bench_chunked_head.py --vocab 128256 --hidden 2048 --layers 2 --batch 4 --seq 1024 \
  --dtype bfloat16 > "$OUT/chunked_head.json" 2> "$OUT/chunked_head.log"; tail -c 600 "$OUT/chunked_head.json"
BUDGET=${BUDGET:-530}
# 8B/13B checkpoints are built and loaded per recipe: that, not the training steps, is the time; 2 timed steps do
for recipe in ${RECIPES:-pad_llama3_8b_to_3b_qlora adpa_plus_llama3_8b_to_1b_qlora plad_llama2_13b_to_7b_qlora \
                         pad_gemma2_9b_to_2b_qlora}; do
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 90 ]; then
    echo "$recipe: skipped, ${left} s of the ${BUDGET} s budget left"; continue
  fi
  # a recipe killed by timeout leaves its random checkpoints (PLaD: ~40 GB): its own folder, removed after it
  work=$(mktemp -d /tmp/bench_recipe.XXXXXX)
  timeout $((left < 240 ? left : 240)) python3 bench/bench_recipe_gpu.py "recipes/$recipe.yaml" --steps "${STEPS:-2}" \
    --workdir "$work" > "$OUT/$recipe.json" 2> "$OUT/$recipe.log"
  rc=$?
  rm -rf "$work"
  echo "$recipe: rc $rc at ${SECONDS} s"; tail -c 2000 "$OUT/$recipe.json"
done
