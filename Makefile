# Two commands do all the set-up on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# Quiet TensorFlow's C++ start-up chatter; it hides real test output.
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Two workers: the suite is mostly Python-bound tracing, and CI machines have 2 cores.
PYTEST_ARGS ?= -n 2

.PHONY: install demo test test-tf test-jax test-torch lint docs docs-check dist bench clean

$(STAMP): pyproject.toml constraints-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[dev,tensorflow,jax,torch,recipes,parity,boosting,docs]"
	# The keras-hub extra without tensorflow-text (it requires the full `tensorflow` wheel, which
	# would replace tensorflow-cpu); the models import only regex and tokenizers besides.
	$(PY) -m pip install --quiet -c constraints-dev.txt regex tokenizers
	$(PY) -m pip install --quiet -c constraints-dev.txt --no-deps "keras-hub>=0.32,<0.33"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/losskit run all

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples docs/_ext

test-tf: install
	KERAS_BACKEND=tensorflow $(PY) -m pytest $(PYTEST_ARGS)

test-jax: install
	KERAS_BACKEND=jax $(PY) -m pytest $(PYTEST_ARGS)

test-torch: install
	KERAS_BACKEND=torch $(PY) -m pytest $(PYTEST_ARGS)

# The site, strictly: a broken link, a missing reference or math that does not render fails.
# The API pages import losskit.losses (each loss's declared parameter domains): any backend will do.
docs: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

# Opens the built site in headless Chromium (Debian's `chromium`), screenshots in site-check/.
docs-check: docs
	$(PY) -m pip install --quiet -c constraints-dev.txt -e ".[browser]"
	$(PY) docs/_ext/browser_check.py site site-check

# The wheel and sdist users would get, checked as PyPI would.
dist: install
	rm -rf dist && $(PY) -m build --outdir dist . && $(VENV)/bin/twine check --strict dist/*

test: lint docs test-tf test-jax test-torch

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist site site-check src/*.egg-info .pytest_cache runs
