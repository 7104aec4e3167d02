# The two entry points of the README. Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/treadle demo

test: $(STAMP)
	.ci/install-deps
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/render.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
