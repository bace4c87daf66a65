#!/usr/bin/env bash
# The "restricted, fast inner loop" variant of the training issue on the embedded default:
# MAML that adapts only the mapper's learned prefix vectors, with learned per-element inner
# learning rates (Meta-SGD), 10 inner steps. Validation logs the support-fit accuracy (can the
# adapted mapper name its own support images?), then the held-out classes are evaluated.
# Usage: bash experiments/fashion_variants.sh [RUN_ROOT] [EVAL_TASKS]   (needs `make setup` first)
set -euo pipefail
ROOT=${1:-runs/variants}
TASKS=${2:-200}
MM=.venv/bin/metamapper
PAPER_MAPPER="mapper.ff_dim=null mapper.norm_first=false mapper.standardize=false mapper.output_norm=false"
$MM train --config configs/fashion_maml.yaml --out "$ROOT/metasgd_prefix" --resume \
    train.inner.adapt=prefix train.inner.meta_sgd=true train.inner.steps=10 train.inner.lr=0.1 \
    train.updates=30 train.val_every=30 train.val_tasks=100 train.lm_dtype=bfloat16 $PAPER_MAPPER
$MM evaluate --checkpoint "$ROOT/metasgd_prefix" --dataset fashion-open-ended --ways 2 \
    --shots 1 --tasks "$TASKS" --out "$ROOT/metasgd_prefix/oe_1shot.json"
grep val_support_fit "$ROOT/metasgd_prefix/metrics.jsonl" | tail -1
