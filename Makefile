# Every target bootstraps .venv first, so `make serve` and `make test` work on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: serve test check gen protoc check-generated bench clean

serve: $(VENV)/.installed
	$(BIN)/mesh serve

test: $(VENV)/.installed check
	PYTHONASYNCIODEBUG=1 $(BIN)/pytest

# Re-installs only when the dependency list changes; a second run is a no-op.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

gen: $(VENV)/.installed
	rm -rf generated/mesh
	$(MAKE) --no-print-directory OUT=generated protoc

# Writes messages, gRPC stubs and their mypy stubs for every contract into $(OUT).
protoc:
	mkdir -p $(OUT)
	$(BIN)/python -m grpc_tools.protoc -I proto -I third_party/proto \
	  --python_out=$(OUT) --grpc_python_out=$(OUT) \
	  --mypy_out=$(OUT) --mypy_grpc_out=$(OUT) $(PROTOS)
	find $(OUT)/mesh -type d -exec touch {}/__init__.py \;

check-generated: $(VENV)/.installed
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	{ $(MAKE) --no-print-directory -s OUT=$$tmp/out protoc >$$tmp/log 2>&1 || { cat $$tmp/log; exit 1; }; } && \
	{ diff -r -x __pycache__ generated/mesh $$tmp/out/mesh || \
	  { echo "generated/ is stale: run 'make gen' and commit the result"; exit 1; }; } && \
	echo "generated/ is up to date"

check: $(VENV)/.installed check-generated
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint
	@# Breaking changes are judged against the contracts of the last commit.
	@if git rev-parse --verify -q HEAD >/dev/null && [ -n "$$(git ls-tree -r HEAD proto)" ]; then \
	  echo "buf breaking proto --against .git#ref=HEAD,subdir=proto"; $(BIN)/buf breaking proto --against '.git#ref=HEAD,subdir=proto'; \
	else echo "buf breaking: no committed contracts yet"; fi

bench: $(VENV)/.installed
	$(BIN)/python tests/bench/run.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
