#!/usr/bin/env bash
# The whole test suite (`make test`, which CI runs): bring up the local two-node Slurm cluster the Slurm tests
# need (tests/slurm/up.sh; root with apt-get), run the style check (ruff lint + format, as `make lint`) and
# pytest, and take down exactly what up.sh started. A style failure fails the run after the tests have run.
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
lint=0
"$VENV/bin/ruff" check --no-cache . && "$VENV/bin/ruff" format --check --no-cache . || lint=$?
[ "$lint" = 0 ] || echo "test: the style check failed (above); 'make format' fixes what ruff can" >&2

"$VENV/bin/python" -m pytest -q "$@"
status=$?
[ "$lint" = 0 ] || status=1
exit $status
