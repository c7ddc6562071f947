#!/usr/bin/env bash
# The GPU checks in one run on a GPU machine (one H200, no network):
# the gpu-marked test, then bench/bench_recipe_gpu.py on a QLoRA recipe of each method family — PAD, ADPA+, PLaD —
# and the Gemma-2 PAD recipe (random weights of the real architectures, measured peak memory beside
# workbench.memory's estimate, phase times, MFU), then bench/bench_chunked_head.py at LLaMA-3's vocabulary on what
# is left. The recipes keep within $BUDGET seconds (default 540): each gets at most 240 s and what is left, and one
# that would start with under 90 s is skipped (said so in the output). JSON and logs go to $OUT.
#
# The device image (Python 3.12, torch 2.11 cu130, transformers 5.17) lacks bitsandbytes, datasets, dill and
# multiprocess; carry them as wheels, with the stack the suite runs here (transformers 5.25 and what it needs that the
# image has older) in a second layer the script drops if it will not import. Once, here, in the repo root
# (`.whl/` is ignored through .git/info/exclude; the working tree that travels is capped at 64 MiB, so the
# bitsandbytes wheel keeps only its CUDA 13 and CPU libraries):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl bitsandbytes==0.50.2 datasets==5.2.0 dill==0.4.1 \
#     multiprocess==0.70.19 peft==0.21.2 accelerate==1.16.0 trl==1.16.0 transformers==5.25.0 tokenizers==0.23.3 \
#     huggingface_hub==2.4.0 hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 kernels==0.19.1 \
#     tomlkit==0.15.3 regex==2026.5.9 fsspec==2026.9.0
#   zip -d .whl/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[12]*.so' 'bitsandbytes/libbitsandbytes_rocm*'
#   (then drop those files' lines from the wheel's RECORD, or pip refuses it)
# then: device run, command "bash bench/device_check.sh", carry [".whl"], timeout_s 600.
set -uo pipefail
OUT=${OUT:-/tmp/device_check}
LOGS=/tmp/device_check_logs  # tarred into $OUT/logs.tgz at the end (the device returns 8 files)
mkdir -p "$OUT" "$LOGS"
CORE="bitsandbytes datasets dill multiprocess peft accelerate trl"
pip_target() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  core=() stack=()
  for w in .whl/*.whl; do
    name=$(basename "$w" | cut -d- -f1)
    if [[ " $CORE " == *" $name "* ]]; then core+=("$w"); else stack+=("$w"); fi
  done
  pip_target /tmp/site "${core[@]}" || exit 1
  if [ ${#stack[@]} -gt 0 ]; then pip_target /tmp/site_stack "${stack[@]}" || exit 1; fi
fi
export PYTHONUNBUFFERED=1 WORKBENCH_CACHE=/tmp/wbc
imports="import transformers, peft, accelerate, bitsandbytes, datasets, torch; import workbench.models, \
workbench.memory, workbench.scoring, workbench.topk_cache, workbench.methods.pad, workbench.methods.adpa, \
workbench.methods.plad; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, 'bitsandbytes', \
bitsandbytes.__version__, 'datasets', datasets.__version__)"
stack_ok=0
for path in "/tmp/site_stack:/tmp/site:$PWD" "/tmp/site:$PWD"; do
  if PYTHONPATH=$path python3 -c "$imports" 2>"$LOGS/imports.log"; then stack_ok=1; export PYTHONPATH=$path; break; fi
  echo "imports failed with PYTHONPATH=$path:"; tail -5 "$LOGS/imports.log"
done
[ "$stack_ok" = 1 ] || exit 1
{ echo "PYTHONPATH=$PYTHONPATH"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "$imports"; df -h /tmp | tail -1; } 2>&1 | tee "$LOGS/versions.txt"
if [ "${TESTS:-1}" = 1 ]; then
  timeout 100 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_memory.py 2>&1 | tee "$OUT/gpu_tests.log" \
    | tail -3
fi
BUDGET=${BUDGET:-540}
# the recipes first (the measurements the GPU checks are for); 8B/13B random checkpoints are built, saved and loaded per recipe:
# that and the sampling phases (512 decode steps each), not the training steps, are most of the time; 2 timed steps
# do. Each phase is logged as it is measured, so a recipe stopped by its cap still leaves its phases in its log
# (logs.tgz)
# (2026-12-04 on an H200, in this order, all four in 539 s: 174 s with the installs, then 131, 146 and 88 s;
# results/device/2026-12-04-h200/)
for recipe in ${RECIPES:-adpa_plus_llama3_8b_to_1b_qlora pad_llama3_8b_to_3b_qlora plad_llama2_13b_to_7b_qlora \
                         pad_gemma2_9b_to_2b_qlora}; do
  left=$((BUDGET - SECONDS))
  if [ "$left" -lt 90 ]; then
    echo "$recipe: skipped, ${left} s of the ${BUDGET} s budget left"; continue
  fi
  # a recipe killed by timeout leaves its random checkpoints (PLaD: ~40 GB): its own folder, removed after it
  work=$(mktemp -d /tmp/bench_recipe.XXXXXX)
  timeout $((left < 240 ? left : 240)) python3 bench/bench_recipe_gpu.py "recipes/$recipe.yaml" --steps "${STEPS:-2}" \
    --workdir "$work" > "$OUT/$recipe.json" 2> "$LOGS/$recipe.log"
  rc=$?
  rm -rf "$work"
  echo "$recipe: rc $rc at ${SECONDS} s"; grep -E '^\{"(phase|built)' "$LOGS/$recipe.log" | cut -c1-400
  [ "$rc" = 0 ] || tail -n 15 "$LOGS/$recipe.log"
done
# the chunked head's trade-off at LLaMA-3's vocabulary (DCKD step, full logits vs logits_chunk 128), if time is left
left=$((BUDGET + 20 - SECONDS))
if [ "${CHUNKED:-1}" = 1 ] && [ "$left" -ge 45 ]; then
  timeout "$left" python3 bench/bench_chunked_head.py --vocab 128256 --hidden 2048 --layers 2 --batch 4 --seq 1024 \
    --dtype bfloat16 > "$OUT/chunked_head.json" 2> "$LOGS/chunked_head.log"; tail -c 600 "$OUT/chunked_head.json"
else
  echo "chunked head: skipped (CHUNKED=${CHUNKED:-1}, ${left} s left)"
fi
tar -czf "$OUT/logs.tgz" -C "$LOGS" .
echo "done at ${SECONDS} s"
