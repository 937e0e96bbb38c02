# Two commands on a fresh machine: `make demo` (ingest the shared catalogue, serve the API)
# and `make test`. Both create the virtual environment first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: venv demo ingest serve test lint clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

demo: venv
	$(PY) -m ingest
	@echo
	@echo "API on http://$(HOST):$(PORT) -- try, in another terminal:"
	@echo "  curl -s 'http://$(HOST):$(PORT)/v1/items/watch-c101_image_0001/similar?k=4&category=watch'"
	@echo "  curl -s -F image=@../shared/data/catalogue/watch/c101_image_0002.jpg 'http://$(HOST):$(PORT)/v1/search?k=4'"
	@echo
	BIND=$(HOST):$(PORT) exec $(VENV)/bin/gunicorn -c service/gunicorn.conf.py 'service:create_app()'

ingest: venv
	$(PY) -m ingest

serve: venv
	BIND=$(HOST):$(PORT) exec $(VENV)/bin/gunicorn -c service/gunicorn.conf.py 'service:create_app()'

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest

clean:
	rm -rf $(VENV) data/qdrant
