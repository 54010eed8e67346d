# Everything a researcher runs. `make demo` and `make test` set the environment up themselves.
PYTHON      ?= python3
VENV        ?= .venv
# A GPU user picks another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed

# `make preprocess` without DATA builds from synthetic clips, written to SYNTH_DATA first if missing.
SYNTH_DATA  ?= data/synthetic
SYNTH_ARGS  ?= --recordings 16 --participants 8 --seed 0 --drop-frames 0.01 --no-video
DATA        ?= $(SYNTH_DATA)
STORE       ?= data/nymeria.zarr
RUN         ?= runs/$(shell date +%Y%m%d-%H%M%S)
STEPS       ?=
WORKERS     ?=
# The suite runs on up to 4 processes (one per core); TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= auto --maxprocesses 4
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
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The main job end to end on synthetic data shaped like the exporter's files (clips of varying
# length, 1% of frames skipped, video kept elsewhere): clips -> store -> a few CPU-minutes of
# training -> evaluation table and pictures, ending on the one line that matters (world and
# head-frame MPJPE on a participant the model never saw). The demo trains a
# reduced width (DEMO_WIDTH / DEMO_LATENT channels, the quality benchmark's; the default model is
# 512 / 768) so that it converges on a CPU in minutes; the code path is the same.
DEMO_DIR    ?= data/demo
DEMO_RUN    ?= runs/demo
DEMO_STEPS  ?= 1000
DEMO_WIDTH  ?= 128
DEMO_LATENT ?= 64
demo: $(STAMP)
	rm -rf $(DEMO_DIR) $(DEMO_RUN)
	$(BIN)/python -m preprocess synth $(DEMO_DIR)/hdf5 $(SYNTH_ARGS)
	$(BIN)/python -m preprocess build $(DEMO_DIR)/hdf5 --out $(DEMO_DIR)/nymeria.zarr
	$(BIN)/python -m preprocess info $(DEMO_DIR)/nymeria.zarr
	$(BIN)/python -m train fit --store $(DEMO_DIR)/nymeria.zarr --out $(DEMO_RUN) --steps $(DEMO_STEPS) \
		--hidden-dim $(DEMO_WIDTH) --latent-dim $(DEMO_LATENT) --batch-size 16 --lr 2e-3 \
		--warmup-steps 50 --val-every 250 --val-windows 64 --num-workers 0
	@echo "demo model: width $(DEMO_WIDTH) / latent $(DEMO_LATENT) (default 512 / 768), $(DEMO_STEPS) steps;" \
		"val = a participant never trained on; pictures in $(DEMO_RUN)/eval"
	$(BIN)/python -m train eval --ckpt $(DEMO_RUN)/checkpoints/last.pt --store $(DEMO_DIR)/nymeria.zarr \
		--out $(DEMO_RUN)/eval --max-windows 64

preprocess: $(STAMP)
ifeq ($(origin DATA),file)
	@echo "make preprocess: no DATA given, so synthetic clips from $(DATA) (the real dataset:" \
		"make preprocess DATA=/path/to/nymeria/hdf5 STORE=$(STORE))"
	test -d $(DATA) || $(BIN)/python -m preprocess synth $(DATA) $(SYNTH_ARGS)
endif
	$(BIN)/python -m preprocess build $(DATA) --out $(STORE) $(if $(WORKERS),--workers $(WORKERS),)

train: $(STAMP)
	$(BIN)/python -m train fit --store $(STORE) --out $(RUN) $(if $(STEPS),--steps $(STEPS),)

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(DEMO_DIR) $(DEMO_RUN) .pytest_cache
