# The two commands of the README: `make demo` and `make test`. Both set up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup demo test test-all clean gpu-wheels

setup: $(STAMP)

# The CPU build of torch goes in first, so the range in pyproject.toml is already satisfied
# and pip never reaches for the multi-gigabyte CUDA build on a CPU machine.
$(STAMP): pyproject.toml Makefile
	@# The Debian data packages let the tests rebuild the bundled shards from their sources; without
	@# them (no root, no apt) those few tests skip and everything else still runs on the bundled shards.
	@dpkg -s dataset-fashion-mnist labelme-examples >/dev/null 2>&1 || \
	  { apt-get install -y -q dataset-fashion-mnist labelme-examples >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist labelme-examples >/dev/null 2>&1; } || \
	    echo "note: could not install the Debian data packages; tests that rebuild shards from them will skip"; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,demo,export]"
	touch $(STAMP)

# Trains a VGG-A sized for 32x32 on the bundled Fashion-MNIST shards with the paper's recipe
# (SGD, scale jittering, flips, colour shift), then evaluates it with the paper's four test protocols.
# Then localisation: garments pasted on real photos (Debian's Fashion-MNIST, else the bundled subset),
# a classifier, and a single-class regression head fine-tuned from it, whose run ends with its
# localisation error beside the centre-box baseline's.
FASHION_MNIST := /usr/share/datasets/fashion-mnist
demo: setup
	$(BIN)/vggtk models
	rm -rf runs/demo
	$(BIN)/vggtk train --run-dir runs/demo/fashion --epochs 25 --batch-size 64 --lr 0.02
	$(BIN)/vggtk eval runs/demo/fashion/best --out runs/demo/fashion/eval.json --confusion runs/demo/fashion/confusion.png
	@# Without the Debian package the garments come from the bundled subset (other images, other figures).
	@root=$${VGGTK_FASHION_MNIST:-$(FASHION_MNIST)}; [ -d "$$root" ] || root=shards/fashion-mnist; \
	  $(BIN)/vggtk shards create garments-on-photos runs/demo/garments --data-root "$$root" \
	    --source-option train=4000 --source-option val=500 --source-option test=1000 --samples-per-shard 2000 && \
	  $(BIN)/vggtk train --data runs/demo/garments --run-dir runs/demo/garments-cls --epochs 10 \
	    --batch-size 64 --lr 0.02 && \
	  $(BIN)/vggtk train --data runs/demo/garments --run-dir runs/demo/garments-scr --head scr \
	    --init-from runs/demo/garments-cls/best --epochs 10 --batch-size 64 --lr 0.01

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m "slow or not slow"

# What benchmarks/gpu_check.sh installs on a bare GPU machine that has torch and triton (Python 3.12):
# this package and webdataset with braceexpand, as wheels in .whl/.
GPU_PIP := $(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
	--implementation cp --platform any -d .whl
gpu-wheels: setup
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .whl .
	$(GPU_PIP) "webdataset==$$($(BIN)/python -c 'import webdataset; print(webdataset.__version__)')"
	$(GPU_PIP) braceexpand==0.1.7
	ls .whl

clean:
	rm -rf $(VENV) build dist *.egg-info .whl
