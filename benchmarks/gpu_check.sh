#!/usr/bin/env bash
# One prepared GPU check for a lent NVIDIA H200 machine (no network there). Stages, each guarded
# and timed, so one failure does not stop the others (all are reported at the end):
#   install     carried wheels (.whl/) into /tmp/site; the repo itself through PYTHONPATH
#   smoke       the quickstart training job for a few steps on the GPU
#   throughput  benchmarks/train_throughput.py --gpu (DDPM++ CIFAR-10, batch 512, bf16, MFU)
#   optimal     benchmarks/optimal_denoiser.py at full size (N=50,000, D=3,072, 2,048 queries)
# Everything that should come back is written under $OUT (at most 8 files):
#   gpu_check.log, env.txt, summary.txt, train_throughput_gpu.json, optimal_denoiser.json,
#   quickstart_metrics.jsonl, quickstart_samples.png
#
# jax: the machine's image has jax/jaxlib 0.11.2 with the CUDA 13 plugin (jax-cuda13-pjrt/plugin)
# under python3 3.12, and no package registry. jax[cuda] 0.10.2 (our pin) cannot be installed
# there (no registry; jaxlib + CUDA plugin wheels exceed the 64 MiB that can be carried), so the
# check runs on the image's jax and records its version in env.txt. Packages our code needs that
# the image lacks (ml_collections, tensorflow_datasets and its small deps, diffusers) travel as
# wheels in .whl/ at the repo root:
#
#   Here (with PyPI), once:  bash benchmarks/gpu_check.sh fetch     # fills .whl/ (~16 MB)
#   On the device:           run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# A rerun can pick stages and add options: GPU_CHECK_STAGES="throughput optimal" (install always
# runs), THROUGHPUT_ARGS="--repeats 3", OPTIMAL_CHUNKS="2048 16384" (one optimal_denoiser run and
# JSON per chunk size: optimal_denoiser_chunk<N>.json).
#
# Budget: about 8 minutes in all (install ~0.5 min, smoke <= 2, throughput <= 4, optimal <= 2.5;
# each stage has its own timeout). Local dry run on a CPU: GPU_CHECK_SMALL=1 SKIP_WHEELS=1
# OUT=/tmp/gc bash benchmarks/gpu_check.sh (small sizes; the throughput stage then runs without --gpu).

set -u
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
WHEEL_DIR="${WHEEL_DIR:-$REPO/.whl}"
PY="${PYTHON:-python3}"
export REPO WHEEL_DIR PY

# ---------------------------------------------------------------------------------------------
# `fetch`: download the wheels for the device's python 3.12 (run where PyPI is reachable).
if [ "${1:-}" = "fetch" ]; then
  set -e
  mkdir -p "$WHEEL_DIR"
  if [ "$WHEEL_DIR" = "$REPO/.whl" ] && [ -d "$REPO/.git" ]; then
    mkdir -p "$REPO/.git/info"
    grep -qx '/.whl/' "$REPO/.git/info/exclude" 2>/dev/null || echo '/.whl/' >> "$REPO/.git/info/exclude"
  fi
  PLATFORMS=""
  for p in manylinux_2_31_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
           manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS="$PLATFORMS --platform $p"
  done
  # Versions as in constraints.txt / as tested here; everything else they need is on the image.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $PLATFORMS -d "$WHEEL_DIR" \
    ml-collections==1.1.0 tensorflow-datasets==4.9.10 importlib_resources==7.1.0 array_record==0.8.6 \
    dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring_parser==0.18.0 \
    termcolor==3.3.0 toml==0.10.2 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 \
    diffusers==0.42.1 importlib_metadata==10.2.0
  # promise 2.3 (a tfds dependency) exists only as an sdist: build its pure-python wheel here.
  ls "$WHEEL_DIR"/promise-*.whl >/dev/null 2>&1 || "$PY" -m pip wheel -q --no-deps -w "$WHEEL_DIR" promise==2.3
  ls -la "$WHEEL_DIR"
  du -sh "$WHEEL_DIR"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1
export DIFFGEN_DATA_DIR="${DIFFGEN_DATA_DIR:-/tmp/diffgen_tfds}"
# jax preallocates a fraction of GPU memory; leave room for torch (benchmark comparisons).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.6}"
SMALL="${GPU_CHECK_SMALL:-0}"
export OUT SMALL
T_START=$(date +%s)
FAILED=()

stage() {  # stage NAME TIMEOUT_S COMMAND...: runs, times and records one stage
  local name="$1" limit="$2"; shift 2
  local t0 rc
  t0=$(date +%s.%N)
  echo
  echo "=== [$name] start $(date +%T) (limit ${limit}s, $(( $(date +%s) - T_START ))s elapsed): $*"
  # bash -c, so that the stage functions below (exported) can run under timeout too.
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}')
  if [ $rc -eq 0 ]; then
    echo "=== [$name] OK in ${dt}s"
    echo "$name OK ${dt}s" >> "$SUMMARY"
  else
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && rc="$rc (timeout after ${limit}s)"
    echo "=== [$name] FAILED rc=$rc in ${dt}s"
    echo "$name FAILED rc=$rc ${dt}s" >> "$SUMMARY"
    FAILED+=("$name")
  fi
}

# --- install ----------------------------------------------------------------------------------
install_stage() {
  if [ "${SKIP_WHEELS:-0}" != "1" ]; then
    if ls "$WHEEL_DIR"/*.whl >/dev/null 2>&1; then
      "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEEL_DIR"/*.whl || return 1
    else
      echo "no wheels in $WHEEL_DIR (carry .whl, made by 'bash benchmarks/gpu_check.sh fetch');" \
           "imports of ml_collections / tensorflow_datasets / diffusers may fail"
    fi
  fi
  # The package itself is imported from the checkout through PYTHONPATH: `pip install -e .` would
  # fetch setuptools for its build environment, and there is no registry there.
  "$PY" - <<'EOF'
import importlib, jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
for name in ("jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "tensorflow_datasets",
             "torch", "diffusers", "numpy", "diffgen_jax"):
  try:
    m = importlib.import_module(name)
    print(f"{name:22s} {getattr(m, '__version__', '?'):12s} {getattr(m, '__file__', '')}")
  except Exception as e:  # noqa
    print(f"{name:22s} IMPORT FAILED: {type(e).__name__}: {e}")
if jax.__version__ != "0.10.2":
  print(f"NOTE: running on the image's jax {jax.__version__}, not the pinned 0.10.2 "
        "(no registry on the device; see the header of gpu_check.sh)")
import diffgen_jax.trainer  # the training stack imports (tfds, orbax, ml_collections)
EOF
}
export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
[ "${SKIP_WHEELS:-0}" = "1" ] && export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

{
  echo "date: $(date -u)"; echo "host: $(uname -a)"; echo "python: $($PY --version 2>&1) at $(command -v $PY)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: none"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|orbax|numpy|torch|diffusers|ml.collections|tensorflow|protobuf|etils|huggingface)' || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

export -f install_stage
stage install 120 install_stage

# --- smoke: the quickstart job for a few steps on the GPU ---------------------------------------
smoke_stage() {
  local wd=/tmp/gpu_check_quickstart
  rm -rf "$wd"
  # Training only: skip the post-training evaluation where the config has that switch.
  local extra=()
  if "$PY" -c "import runpy, sys; c = runpy.run_path('configs/quickstart.py')['get_config'](); \
sys.exit(0 if 'evaluation' in c and 'after_training' in c.evaluation else 1)" 2>/dev/null; then
    extra=(--config.evaluation.after_training=False)
  fi
  "$PY" -m diffgen_jax.main --config=configs/quickstart.py --workdir="$wd" "${extra[@]}" \
    --config.training.total_images=1280 --config.log_every_steps=5 \
    --config.checkpoint.state_every_images=640 --config.checkpoint.snapshot_every_images=1280 \
    --config.sampling.grid_size=16 --config.sampling.num_steps=8 || return 1
  cp "$wd/metrics.jsonl" "$OUT/quickstart_metrics.jsonl" || return 1
  local png
  png=$(ls "$wd"/samples/*.png 2>/dev/null | tail -1)
  [ -n "$png" ] && cp "$png" "$OUT/quickstart_samples.png"
  "$PY" - "$OUT/quickstart_metrics.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert rows and rows[-1]["step"] == 20, f"expected 20 steps, got {rows[-1] if rows else None}"
assert all(math.isfinite(r["loss"]) for r in rows), "non-finite loss"
print(f"quickstart smoke: {len(rows)} metric rows, last step {rows[-1]['step']}, loss {rows[-1]['loss']:.4f}")
EOF
}
export -f smoke_stage
STAGES="${GPU_CHECK_STAGES:-smoke throughput optimal}"
wants() { [[ " $STAGES " == *" $1 "* ]]; }
wants smoke && stage smoke 150 smoke_stage

# --- throughput ----------------------------------------------------------------------------------
if [ "$SMALL" = "1" ]; then
  TT_ARGS=(--quick --families ddpmpp --devices 1 --batch 16 --steps 1 --repeats 1)
else
  TT_ARGS=(--gpu)
fi
# shellcheck disable=SC2206
TT_ARGS+=(${THROUGHPUT_ARGS:-})
wants throughput && stage throughput 240 "$PY" benchmarks/train_throughput.py "${TT_ARGS[@]}" \
  --out "$OUT/train_throughput_gpu.json"

# --- optimal denoiser, full size ------------------------------------------------------------------
if [ "$SMALL" = "1" ]; then
  OD_ARGS=(--small --repeats 1)
else
  OD_ARGS=()
fi
if wants optimal; then
  if [ -z "${OPTIMAL_CHUNKS:-}" ]; then
    stage optimal 150 "$PY" benchmarks/optimal_denoiser.py "${OD_ARGS[@]}" --out "$OUT/optimal_denoiser.json"
  else
    for chunk in $OPTIMAL_CHUNKS; do
      stage "optimal_chunk$chunk" 150 "$PY" benchmarks/optimal_denoiser.py "${OD_ARGS[@]}" \
        --chunk "$chunk" --out "$OUT/optimal_denoiser_chunk$chunk.json"
    done
  fi
fi

# --- summary ----------------------------------------------------------------------------------
echo
echo "=== gpu_check finished in $(( $(date +%s) - T_START ))s"
cat "$SUMMARY"
"$PY" - "$OUT" <<'EOF' || true
import json, os, sys
out = sys.argv[1]
p = os.path.join(out, "train_throughput_gpu.json")
if os.path.exists(p):
  r = json.load(open(p))
  for row in r["runs"]:
    mfu = row.get("mfu")
    print(f"throughput: {row['name']}: {row['img_per_s']:.0f} img/s, {1e3 * row['step_s']:.1f} ms/step"
          + (f", {row['tflops_per_s']:.1f} TFLOP/s, MFU {100 * mfu:.1f}%" if mfu else ""))
  for k, v in r.get("ratios", {}).items():
    print(f"throughput ratio {k}: {v:.2f}")
import glob
for p in sorted(glob.glob(os.path.join(out, "optimal_denoiser*.json"))):
  r = json.load(open(p))
  print(f"optimal denoiser ({os.path.basename(p)}): chunk {r['config']['chunk_size']}, "
        f"{r['ours']['gflops']:.0f} GFLOP/s, ours/GEMM {r['ratio_to_gemm']:.2f}, "
        f"ours/torch {r.get('torch', {}).get('ours_over_torch_speed', float('nan')):.2f}")
EOF
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "FAILED stages: ${FAILED[*]}"
  exit 1
fi
echo "all stages OK"
