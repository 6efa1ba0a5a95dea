#!/usr/bin/env bash
# The quickstart, end to end: sweep -> datamodels -> LDS on held-out models.
# Run from the repository root (make demo does). Re-running resumes the sweep
# (nothing is retrained) and refits.
set -euo pipefail
DMSWEEP=${DMSWEEP:-.venv/bin/dmsweep}
STORE=runs/quickstart.zarr
mkdir -p runs
start=$(date +%s)

echo "== 1/3 sweep: 1,280 mnist1d-cnn models, each on a random half of 1,000 training signals (local Ray)"
$DMSWEEP run examples/quickstart.yaml
sweep_done=$(date +%s)

echo "== 2/3 fit: one LASSO per test example on models 0..1023, at the defaults: the lambda path on the Gram matrix"
echo "   (--engine auto: 1,000 features, 922 rows), lambda by validation MSE on the last 10% of the rows, refit on all 1,024"
$DMSWEEP fit "$STORE" --name quickstart --rows 0:1024 --overwrite
fit_done=$(date +%s)

echo "== 3/3 eval: LDS on the 256 held-out models 1024..1279"
$DMSWEEP eval "$STORE" --name quickstart --rows 1024:1280
end=$(date +%s)

echo "== done in $((end - start))s (sweep $((sweep_done - start))s, fit $((fit_done - sweep_done))s, eval $((end - fit_done))s)"
