# The two commands of the README: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup demo test test-all clean

setup: $(STAMP)

# The CPU build of torch goes in first, so the range in pyproject.toml is already satisfied
# and pip never reaches for the multi-gigabyte CUDA build on a CPU machine.
$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,demo]"
	touch $(STAMP)

demo: setup
	$(BIN)/vggtk models
	$(BIN)/vggtk plugins

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

clean:
	rm -rf $(VENV) build dist *.egg-info
