# Everything a researcher runs. `make demo` and `make test` set the environment up themselves.
PYTHON      ?= python3
VENV        ?= .venv
# A GPU user picks another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed

DATA        ?= data/synthetic
STORE       ?= data/nymeria.zarr
RUN         ?= runs/default
STEPS       ?= 2000
WORKERS     ?=
PYTEST_ARGS ?=

.PHONY: install test demo preprocess train bench clean

install: $(STAMP)

# Re-run only when the project's metadata changes; costs nothing when the venv is up to date.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/python -m preprocess demo --workdir data/demo

preprocess: $(STAMP)
	$(BIN)/python -m preprocess build $(DATA) --out $(STORE) $(if $(WORKERS),--workers $(WORKERS),)

train: $(STAMP)
	$(BIN)/python -m train fit --store $(STORE) --out $(RUN) --steps $(STEPS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf data/demo runs/demo .pytest_cache
