#!/usr/bin/env bash
# Install everything the demo and the tests need, idempotently:
#   1. the demo data from Debian (dataset-fashion-mnist) when it runs as root with apt-get, else the exact
#      command to run;
#   2. a virtual environment (.venv) with torch, this package and its test extras.
# `install.sh test` also installs what only the tests use: Debian's chromium (the report is checked in a
# real headless browser).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
if [ "${1:-}" = test ]; then
  command -v chromium >/dev/null || need_apt+=(chromium)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "install: apt-get install ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v apt-get >/dev/null; then
    echo "install: needs Debian's ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  else
    echo "install: no apt-get here; the fashion_mnist source will need torchvision's download (internet) or" \
         "a root holding FashionMNIST/raw/ (see README)" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "install: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  # torch's x86-64 wheel unpacks to ~5.5 GB and pip stages it in the temp folder first: a full disk would
  # otherwise stop pip half way with a bare "No space left on device".
  need_kb=$((8 * 1024 * 1024))
  for dir in "$VENV" "${TMPDIR:-/tmp}"; do
    free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
    if [ "${free_kb:-0}" -lt "$need_kb" ]; then
      echo "install: torch needs about 8 GB free for $dir (the venv) and the temp folder;" \
           "$((free_kb / 1024 / 1024)) GB free there. Free some space (old clones, results/, data/)" \
           "or set VENV / TMPDIR to a larger disk, then rerun." >&2
      exit 1
    fi
  done
  echo "install: torch + torchvision"
  pip_install "torch==2.14.1" "torchvision==0.29.1"
fi
stamp="$VENV/.esvit-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "install: esvit and its dependencies"
  pip_install -e ".[test]"
  "$VENV/bin/python" -c "import esvit, timm, webdataset, snakemake, submitit, sklearn, mlxtend" 
  touch "$stamp"
fi
echo "install: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
