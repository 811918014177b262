#!/usr/bin/env bash
# The whole test suite (`make test`, which CI runs): bring up the local two-node Slurm cluster the Slurm tests
# need (tests/slurm/up.sh; root with apt-get), run pytest, and take down exactly what up.sh started.
# Without root the Slurm tests skip with the reason (on CI, where CI=true, they fail instead).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  trap 'bash tests/slurm/down.sh' EXIT
  bash tests/slurm/up.sh || echo "test: the local Slurm cluster did not come up (see above); the Slurm tests will say so" >&2
else
  echo "test: not root on Debian: the Slurm tests will be skipped (run 'sudo tests/slurm/up.sh' first to include them)"
fi
"$VENV/bin/python" -m pytest -q "$@"
