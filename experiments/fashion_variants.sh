#!/usr/bin/env bash
# The "restricted, fast inner loop" variant of the training issue on the embedded default:
# MAML that adapts only the prefix vectors, with learned per-element inner learning rates
# (Meta-SGD), 10 inner steps. Logs the support-fit accuracy (can the adapted mapper name its own
# support images?) at the end of training, then evaluates on the held-out classes.
# Usage: bash experiments/fashion_variants.sh [RUN_ROOT]   (needs `make setup` first)
set -euo pipefail
ROOT=${1:-runs/variants}
MM=.venv/bin/metamapper
PAPER_MAPPER="mapper.ff_dim=null mapper.norm_first=false mapper.standardize=false mapper.output_norm=false"
$MM train --config configs/fashion_maml.yaml --out "$ROOT/metasgd_prefix" --resume \
    train.inner.adapt=prefix train.inner.meta_sgd=true train.inner.steps=10 train.inner.lr=0.1 \
    train.updates=30 train.val_every=30 train.val_tasks=100 $PAPER_MAPPER
for shots in 1 5; do
  $MM evaluate --checkpoint "$ROOT/metasgd_prefix" --dataset fashion-open-ended --ways 2 \
      --shots $shots --tasks 200 --out "$ROOT/metasgd_prefix/oe_${shots}shot.json"
done
grep val_support_fit "$ROOT/metasgd_prefix/metrics.jsonl" | tail -1
