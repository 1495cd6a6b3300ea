# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch installed when the venv has none: the CPU build of 2.13.
# Users with a GPU can run e.g. `make TORCH_SPEC="torch==2.13.0" TORCH_INDEX=<their index>`.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
# What the tests need: dev tools and the training-loop integrations' extras (their tests
# skip without them). `make EXTRAS=dev test` leaves the integrations out.
EXTRAS ?= dev,lightning,hf,tensorboard

.PHONY: demo test lint imports typecheck pytest bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	@# keep the torch that is there: no extra may replace it (e.g. by a CUDA build)
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m hessian_spectra demo

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# The layering of docs/architecture.md (contracts in pyproject.toml).
imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(PY) -m mypy

pytest: $(STAMP)
	$(PY) -m pytest

test: lint imports typecheck pytest

bench: $(STAMP)
	$(PY) -m pip install -q -c $(VENV)/torch-constraint.txt -e ".[bench]"
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
