# Two commands: `make demo` and `make test`. Both (re)build .venv from
# requirements.txt when it is missing or older than requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= workdirs/demo
CONFIG ?= configs/demo.py

# Offline MedMNIST copy: used when present, else the loader downloads
# (official URLs, md5-checked) into $SSL_JAX_DATA_DIR or the user cache.
MEDMNIST_MIRROR ?= $(if $(wildcard ../shared/data/medmnist),$(abspath ../shared/data/medmnist),)
ifneq ($(strip $(MEDMNIST_MIRROR)),)
export SSL_JAX_DATA_DIR ?= $(MEDMNIST_MIRROR)
endif
export TF_CPP_MIN_LOG_LEVEL ?= 2

# tcmalloc (Debian: libtcmalloc-minimal4) when installed: it keeps freed
# memory for reuse, where glibc unmaps every large buffer XLA:CPU frees at
# the end of a step and the next step page-faults it back in (README
# "Performance"). Without it everything runs the same, only slower.
TCMALLOC ?= $(firstword $(wildcard /usr/lib/*/libtcmalloc_minimal.so.4))
RUN := $(if $(TCMALLOC),env LD_PRELOAD=$(TCMALLOC),)

.PHONY: demo test venv clean

$(BIN)/.installed: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(RUN) $(BIN)/python run.py --config=$(CONFIG) --workdir=$(WORKDIR)

# Two workers (pytest-xdist), a test file each at a time so module fixtures
# run once: XLA compiles on one thread, and compiling is most of the suite.
# Files go out in collection order, the slowest first (tests/conftest.py).
TEST_WORKERS ?= 2

test: venv
	$(RUN) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder tests

clean:
	rm -rf workdirs
