#!/usr/bin/env bash
# Issue 6's GPU checks in one run on a lent device machine (see the device tool's README; one H200, no network):
# the gpu-marked tests, then bench/bench_recipe_gpu.py on the PAD recipes (random weights of the real architectures,
# measured peak memory beside workbench.memory's estimate, phase times, MFU). ~6-8 min; JSON and logs go to $OUT.
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
for recipe in ${RECIPES:-pad_llama3_8b_to_3b_qlora pad_gemma2_9b_to_2b_qlora}; do
  timeout 240 python3 bench/bench_recipe_gpu.py "recipes/$recipe.yaml" --workdir /tmp > "$OUT/$recipe.json" \
    2> "$OUT/$recipe.log"
  echo "$recipe: rc $?"; tail -c 2000 "$OUT/$recipe.json"
done
