# The two Quick start commands (README): `make demo` and `make test`. Both install what they need first.
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test test-fast lint format bench-shard clean

install:
	@bash scripts/install.sh

## Run the whole pipeline on the embedded default config (real data, CPU, minutes).
demo: install
	snakemake --profile local
	@echo "demo: shards in data/shards/, runs in results/pretrain/, metrics in results/{knn,probe}/, logs in results/logs/"
	@echo "demo: report in results/report/report.html (tables in results/report/summary.md)"

## The whole test suite (what CI runs), the Slurm tests on a local two-node cluster included.
test:
	@bash scripts/install.sh test
	@bash scripts/test.sh

test-fast: install
	python -m pytest -q -m "not slow"

## The style check CI runs (ruff lint + format, configured in pyproject.toml); `make format` applies the fixes.
lint: install
	ruff check . && ruff format --check .

format: install
	ruff check --fix . && ruff format .

bench-shard: install
	esvit bench shard

clean:
	rm -rf data results/logs results/benchmarks .snakemake
