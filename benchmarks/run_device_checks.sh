#!/usr/bin/env bash
# The CUDA checks, as one run on a GPU machine that has torch and PyG but not this project's
# other requirements (the H200 lent to some sessions: no Ray, MLflow or pydantic there).
# Wheels for what the scripts import beyond torch and PyG are carried in .whl/ (pydantic and its
# three dependencies, for Python 3.12); each benchmark writes its JSON to $OUT (default
# benchmarks/results/cuda) and its table to $OUT/log.txt.
#   bash benchmarks/run_device_checks.sh
set -o pipefail
OUT=${OUT:-benchmarks/results/cuda}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/log.txt"
python3 -c 'import torch, torch_geometric as g; print("torch", torch.__version__, "pyg", g.__version__, torch.cuda.get_device_name(0))' | tee -a "$OUT/log.txt"
status=0
for bench in bench_latency bench_lsp_step_ppi bench_lsp_step_dgcnn bench_lsp_vs_naive bench_cuda_paths; do
  echo "== $bench" | tee -a "$OUT/log.txt"
  timeout "${BENCH_TIMEOUT:-100}" python3 "benchmarks/$bench.py" --device cuda --out "$OUT/$bench.json" 2>&1 \
    | tail -40 | tee -a "$OUT/log.txt" || status=1
done
exit $status
