#!/bin/bash
# On the lent GPU machine, from the repo root, with the kit (.gpu) and results/runs carried:
#   PART=all|main|curve|groups  JOBS=8  LIMIT=450  CHECK="bitfit full"  BENCH=1  bash benchmarks/gpu_kit/go.sh
# Runs the comparison study's missing runs JOBS at a time (their times are then not reported), optionally
# repeats seed-0 main runs into /tmp/check (device_check), and optionally runs bench_bitfit.py alone afterwards.
set -u
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/.gpu/site BITFIT_DATA_DIR=$PWD/.gpu/mrpc OMP_NUM_THREADS=2 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 benchmarks/gpu_kit/unpack.py .gpu/model /tmp/minilm || exit 4
nvidia-smi -L
python3 -c "import torch, transformers, datasets, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'datasets', datasets.__version__, 'peft', peft.__version__)" || exit 5
echo "setup took $(( $(date +%s) - T0 )) s; $(ls results/runs | wc -l) runs already done"
(while sleep 15; do tar czf $OUT/runs.tgz.tmp -C results runs && mv $OUT/runs.tgz.tmp $OUT/runs.tgz; done) &
SNAPSHOTS=$!
mkdir -p /tmp/check/runs
for m in ${CHECK:-}; do
  spec="{\"part\": \"main\", \"method\": \"$m\", \"seed\": 0, \"fraction\": 1.0, \"name\": \"main-$m-s0-f1.0\"}"
  timeout ${LIMIT:-450} python3 benchmarks/compare_methods.py --run "$spec" --out /tmp/check --jobs 10 > /tmp/check/$m.log 2>&1 &
done
timeout ${LIMIT:-450} python3 benchmarks/compare_methods.py --part ${PART:-all} --jobs ${JOBS:-8} --out results > $OUT/study.log 2>&1
echo "study rc $? after $(( $(date +%s) - T0 )) s"
kill $SNAPSHOTS; wait
tar czf $OUT/runs.tgz -C results runs
[ -n "${CHECK:-}" ] && tar czf $OUT/check.tgz -C /tmp check
echo "$(ls results/runs | wc -l) runs done"; tail -12 $OUT/study.log
if [ -n "${BENCH:-}" ]; then
  timeout ${BENCH_LIMIT:-200} python3 benchmarks/bench_bitfit.py --shapes minilm bert-base --json $OUT/bench_gpu.json > $OUT/bench_gpu.txt 2>&1
  echo "bench rc $? after $(( $(date +%s) - T0 )) s"; cat $OUT/bench_gpu.txt
fi
echo "total $(( $(date +%s) - T0 )) s"
