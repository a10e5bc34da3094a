#!/usr/bin/env bash
# The wheels bench/seq_study.py needs on the GPU machine beyond what its image holds (torch,
# numpy, pandas, scikit-learn, pyarrow, tqdm, cloudpickle are there): Optuna and colorlog for
# the study, DuckDB for ml.dataset. Fetched here into .whl/ (git-ignored through
# .git/info/exclude), for the device tool's `carry: [".whl"]`. Versions: the project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
pinned() { .venv/bin/python -c "from importlib.metadata import version; print(version('$1'))"; }
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "optuna==$(pinned optuna)" "colorlog==$(pinned colorlog)" "duckdb==$(pinned duckdb)"
ls -l .whl
