# Two commands on a fresh machine: `make demo` (ingest the shared catalogue, serve the API)
# and `make test`. Both create the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv demo ingest serve test-tools test bench load gpu-check device-pack clean

# The settings default to real weights (MODEL_PRETRAINED unset = laion2b_s34b_b79k for ViT-B-32,
# downloaded once). These targets run offline unless you set it: the demo trains its own encoder
# from random init, tests and benchmarks need no download. MODEL_PRETRAINED=laion2b_s34b_b79k make
# demo starts from CLIP's weights instead.
demo test bench load gpu-check: export MODEL_PRETRAINED ?=

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# Fine-tune once with the recipe for this machine (--preset auto: small on a CPU, large on a GPU;
# cached by catalogue fingerprint), evaluate it, (re)index the
# catalogue with it, serve (ONNX Runtime: the checkpoint's export, no torch in the API; fp32 vectors
# equal ingest's). MODEL_CHECKPOINT=<dir> make demo skips training and uses that checkpoint.
demo: venv
	@set -e; \
	ckpt="$${MODEL_CHECKPOINT:-$$($(PY) -m finetune --preset auto --print-checkpoint)}"; \
	$(PY) -m finetune.evaluate --checkpoint "$$ckpt"; \
	MODEL_CHECKPOINT="$$ckpt" $(PY) -m ingest --reindex --drop-old; \
	echo; \
	echo "API on http://$(HOST):$(PORT) with MODEL_CHECKPOINT=$$ckpt -- try, in another terminal:"; \
	echo "  curl -s 'http://$(HOST):$(PORT)/v1/items/watch-c101_image_0001/similar?k=4&category=watch'"; \
	echo "  curl -s -F image=@../shared/data/catalogue/watch/c101_image_0002.jpg 'http://$(HOST):$(PORT)/v1/search?k=4&category=auto'"; \
	echo; \
	ENCODER_RUNTIME="$${ENCODER_RUNTIME:-onnx}" MODEL_CHECKPOINT="$$ckpt" BIND=$(HOST):$(PORT) \
	  exec $(VENV)/bin/gunicorn -c service/gunicorn.conf.py 'service:create_app()'

ingest: venv
	$(PY) -m ingest

serve: venv
	BIND=$(HOST):$(PORT) exec $(VENV)/bin/gunicorn -c service/gunicorn.conf.py 'service:create_app()'

# Test tools from Debian: chromium for the browser tests (playwright cannot download its own
# browser here), docker-compose to validate docker-compose.yml without a daemon, and nginx to run
# deploy/nginx.conf (the compose proxy) in front of the real server.
test-tools:
	@command -v chromium >/dev/null && command -v docker-compose >/dev/null && { command -v nginx || test -x /usr/sbin/nginx; } >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium docker-compose nginx >/dev/null; } \
	  || echo "could not install chromium/docker-compose/nginx (needs root): those tests will be skipped"

test: venv test-tools
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest

# Benchmarks (not tests): each prints one line per figure with its goal and baseline, and writes
# bench/results/<name>.json. Uses the MODEL_* settings (default ViT-B-32, random init).
bench: venv
	$(PY) -m bench.b1_ingest
	$(PY) -m bench.b2_search
	$(PY) -m bench.b3_http
	$(PY) -m bench.b4_coldstart
	$(PY) -m bench.b5_finetune
	$(PY) -m bench.b6_queries
	$(PY) -m bench.p0_encoder

# Issue 13's machine figures on whatever DEVICE resolves to (decode rate, forward throughput,
# fine-tuning the small and large presets, ingest vs decode). --quick checks it on a CPU.
gpu-check: venv
	$(PY) -m bench.gpu_check $(GPU_CHECK_ARGS)

# What gpu-check needs on a lent accelerator that has torch but not this project's packages:
# their wheels and a smaller copy of the catalogue in .device/ (< 64 MiB); prints the command.
device-pack: venv
	$(PY) -m bench.device_pack

# Bounded load run on loopback (50 clients, 60 s, mixed by-id / filtered / upload).
load: venv
	$(PY) -m bench.load

clean:
	rm -rf $(VENV) data/qdrant
