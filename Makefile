# The two entry points of the README. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench dist clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/treadle demo

# Two workers on two cores (pytest-xdist); suites that share one heavy resource stay on one worker
# (tests/conftest.py's XDIST_GROUPS, --dist loadgroup).
test: $(STAMP)
	.ci/install-deps
	$(PY) -m pytest -q -n auto --dist loadgroup

# The gates CI runs before the tests: lint and format (ruff), types (mypy); settings in pyproject.toml.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The versioned wheel and sdist (dist/treadle-<version>-py3-none-any.whl, dist/treadle-<version>.tar.gz):
# what README "Install" installs on controller hosts and nodes.
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .

bench: $(STAMP)
	$(PY) bench/render.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
