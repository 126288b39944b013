# `make test` and `make demo` create .venv when it is missing (or pyproject.toml changed),
# installing qexact editable with its torch, pt2e, test and fast extras, then run. `make test`
# runs the suite on the default (fast) backend, then the kernels' differential tests again as an
# install without the fast extra (numba hidden: the NumPy backend).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qexact-installed

.PHONY: test test-all demo bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[torch,pt2e,test,fast]'
	touch $(STAMP)

WITHOUT_FAST_EXTRA := tests/ops/test_conv.py tests/test_models.py tests/kernels \
	tests/test_accumulate.py tests/test_requantize.py

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"
	QEXACT_HIDE_NUMBA=1 $(BIN)/python -m pytest -m "not slow" $(WITHOUT_FAST_EXTRA)

test-all: $(STAMP)
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/qexact demo

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_linear.py

clean:
	rm -rf $(VENV) build src/*.egg-info
