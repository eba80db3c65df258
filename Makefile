# trapedge — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= ../shared/data
BUNDLE ?= bundles/default
# pin torch first: anything else pulls the CUDA build (several GB)
PINS   := torch==2.13.0 torchvision==0.28.0

# the run folder: RUN=..., else the training config's `out:` (read when a recipe needs it), else runs/trained
RUN    ?= $(if $(CONFIG),$(shell $(BIN)/python -m train.config $(CONFIG)),runs/trained)
# the Debian packages beside the venv (mosquitto, chromium, ...): installed when missing, see the script
SYSDEPS ?= sh deploy/sysdeps.sh
.PHONY: sysdeps setup models export train demo test lint reliability security clean docker-jetson arm64-check

sysdeps:
	@PYTHON='$(PYTHON)' $(SYSDEPS)

setup: $(VENV)/.installed

# order-only: every target below setup checks the system packages first, without rebuilding the venv
$(VENV)/.installed: pyproject.toml | sysdeps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[edge,train,dev,central]' $(PINS)
	touch $@

models: setup
	$(BIN)/python -m train.pretrained --dest models

$(BUNDLE)/manifest.json: $(VENV)/.installed
	$(MAKE) models
	$(BIN)/trapedge export --data $(DATA) --out $(BUNDLE)

# the default bundle from the pretrained weights (not with CONFIG=: your photos need no sample data), and
# bundles/<run folder's name> from the run when `make train` ran (calibrated and gated on its own split)
export: models
	$(if $(CONFIG),,$(BIN)/trapedge export --data $(DATA) --out $(BUNDLE))
	if [ -f $(RUN)/classifier.pt ]; then $(BIN)/trapedge export --trained $(RUN) --out bundles/$(notdir $(RUN)); fi

# species classifier, re-ID embedder and detector: the shared data by default; CONFIG=train.yaml for
# your own photos (see deploy/train.example.yaml), or DATA=root for the default layout elsewhere;
# QUICK=1 for the fast profile. The default bundle comes first: its detector cuts the classifier's
# training crops (crops: detector)
train: models $(if $(CONFIG),,$(BUNDLE)/manifest.json)
	$(BIN)/trapedge train $(if $(CONFIG),--config $(CONFIG),--data $(DATA)) --out $(RUN) $(if $(QUICK),--quick,)

demo: $(BUNDLE)/manifest.json
	$(BIN)/python -m edge.cli.demo --frames $(DATA)/frames --bundle $(BUNDLE) --workdir results/demo

test: $(BUNDLE)/manifest.json
	$(BIN)/pytest -q

# ruff everywhere; mypy on common, edge and the command line (settings in pyproject.toml); shellcheck
lint: setup
	$(BIN)/ruff check common edge train export central trapedge tests
	$(BIN)/mypy
	$(BIN)/shellcheck deploy/sysdeps.sh deploy/arm64-check.sh .ci/run .ci/fresh-root docker/jetson/entrypoint.sh

# fault scenarios against the real service (tests/reliability/): broker outage, kill -9, full disk,
# fuzzed payloads at central, bad images; RELIABILITY_SHORT=1 for the CI size, RELIABILITY_JSON=path
reliability: $(BUNDLE)/manifest.json
	TRAPEDGE_RELIABILITY=1 RELIABILITY_SHORT=$(RELIABILITY_SHORT) RELIABILITY_JSON=$(RELIABILITY_JSON) \
		$(BIN)/pytest -s -q -p no:cacheprovider tests/reliability

# the attack suite (tests/attacks/ and tests/test_security.py) with its long fuzz variant; its table of
# attempts, rejections, crashes, failed restarts and bytes stored goes to results/security.{md,json}
# (`make test`, and so CI, runs the short variant)
security: $(BUNDLE)/manifest.json
	SECURITY_FULL=1 SECURITY_REPORT=results/security $(BIN)/pytest -q -p no:cacheprovider tests/attacks tests/test_security.py

clean:
	rm -rf bundles results .pytest_cache

# the INT8 bundle on a Debian bookworm arm64 root under qemu-user-static against this machine: box recall,
# label agreement and embedding cosine on fixed real frames, and install facts (as root; the root is cached
# in .cache/arm64-root; README "arm64"); results in results/arm64-check/
arm64-check: $(BUNDLE)/manifest.json
	DATA='$(DATA)' BUNDLE='$(BUNDLE)' PYTHON='$(BIN)/python' bash deploy/arm64-check.sh

# the Jetson image (JetPack 6, TensorRT, onnxruntime-gpu): needs Docker with buildx, and an arm64
# host or QEMU binfmt; IMAGE=... to name it (docker/jetson/README.md)
docker-jetson:
	docker buildx build --platform linux/arm64 -f docker/jetson/Dockerfile -t $(or $(IMAGE),trapedge:jetson) --load .
