# Everything a researcher runs. `make demo` and `make test` set the environment up themselves.
PYTHON      ?= python3
VENV        ?= .venv
# A GPU user picks another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed

DATA        ?= data/synthetic
STORE       ?= data/nymeria.zarr
RUN         ?= runs/$(shell date +%Y%m%d-%H%M%S)
STEPS       ?=
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
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The main job end to end on synthetic data shaped like the exporter's files (clips of varying
# length, 1% of frames skipped, video kept elsewhere): clips -> store -> a few minutes of CPU
# training of the default model (28.4M parameters) -> evaluation table and pictures.
DEMO_DIR    ?= data/demo
DEMO_RUN    ?= runs/demo
DEMO_STEPS  ?= 240
demo: $(STAMP)
	rm -rf $(DEMO_DIR) $(DEMO_RUN)
	$(BIN)/python -m preprocess synth $(DEMO_DIR)/hdf5 --recordings 16 --participants 8 --seed 0 \
		--drop-frames 0.01 --no-video
	$(BIN)/python -m preprocess build $(DEMO_DIR)/hdf5 --out $(DEMO_DIR)/nymeria.zarr
	$(BIN)/python -m preprocess info $(DEMO_DIR)/nymeria.zarr
	$(BIN)/python -m train fit --store $(DEMO_DIR)/nymeria.zarr --out $(DEMO_RUN) --steps $(DEMO_STEPS) \
		--batch-size 16 --lr 5e-4 --warmup-steps 20 --val-every 80 --log-every 10 --val-windows 64
	$(BIN)/python -m train eval --ckpt $(DEMO_RUN)/checkpoints/best.pt --store $(DEMO_DIR)/nymeria.zarr \
		--out $(DEMO_RUN)/eval --max-windows 64

preprocess: $(STAMP)
	$(BIN)/python -m preprocess build $(DATA) --out $(STORE) $(if $(WORKERS),--workers $(WORKERS),)

train: $(STAMP)
	$(BIN)/python -m train fit --store $(STORE) --out $(RUN) $(if $(STEPS),--steps $(STEPS),)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_DIR) $(DEMO_RUN) .pytest_cache
