# The two set-up commands of the README. Only Python 3.11 and make are assumed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
PYTEST_ARGS ?=

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e . 2>&1 | grep -v "is ignored" || true
	@$(BIN)/python -c "import showtell, torch, torchvision" || (echo "make: installing showtell failed (see pip's messages above)"; exit 1)
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(PIP) install -e '.[dev]' 2>&1 | grep -v "is ignored" || true
	@$(BIN)/python scripts/check_dev_extras.py || (echo "make: installing the dev extras failed (see pip's messages above)"; exit 1)
	touch $@

demo: $(VENV)/.installed
	$(BIN)/showtell demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs demo-run .pytest_cache
