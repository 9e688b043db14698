# carmesh — every target installs what it needs first (venv, Python packages, Debian packages as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# command:debian-package pairs the tests, demo and benchmarks use
SYSDEPS := ip:iproute2 nft:nftables ping:iputils-ping espeak-ng:espeak-ng sox:sox tmux:tmux pkill:procps taskset:util-linux chromium:chromium certutil:libnss3-tools node:nodejs
# two workers (the machines have 2 cores; most tests wait on networks and timers), one file per
# worker at a time so module fixtures run once, heaviest files first (tests/conftest.py) and in
# that order (--no-loadscope-reorder) so both finish together; PYTEST_ARGS='-m "not soak"' runs
# them one by one
PYTEST_ARGS ?= -m "not soak" -n 2 --dist loadfile --no-loadscope-reorder

.PHONY: demo test run bench lint deps sysdeps clean help vendor-js

help:
	@echo "make demo   a small mesh on this machine (namespaces as root, loopback otherwise)"
	@echo "make test   the whole test suite (what CI runs)"
	@echo "make run    one node on loopback in the foreground"
	@echo "make bench  the benchmarks (results for docs/benchmarks.md)"
	@echo "make lint   ruff, mypy --strict and the import contracts (lint-imports)"

deps: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory sysdeps
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

sysdeps:
	@missing=""; \
	for pair in $(SYSDEPS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	$(PY) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; \
	  else \
	    echo "note: not root, so not installing:$$missing (namespace and audio tests will skip)"; \
	  fi; \
	fi

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

demo: $(STAMP)
	$(BIN)/python -m carmesh.dev.demo

run: $(STAMP)
	$(BIN)/meshd --state-dir $${STATE_DIR:-/tmp/carmesh-run} --name $${NAME:-$$(hostname)-car} --log-level info

bench: $(STAMP)
	@for b in links routing sync library safety trust voice footprint initial_flood web store; do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check meshd voice sync library_replica tui web carmesh tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache

# The browser's ChaCha20-Poly1305 (web/static/messages.js): @noble/ciphers, audited, as plain ES
# modules (no bundler).  Pinned by version and npm integrity; `make vendor-js` refreshes the copy.
NOBLE_CIPHERS := 2.1.1
NOBLE_CIPHERS_SHA512 := bysYuiVfhxNJuldNXlFEitTVdNnYUc+XNJZd7Qm2a5j1vZHgY+fazadNFWFaMK/2vye0JVlxV3gHmC0WDfAOQw==
VENDOR_JS := web/static/vendor/noble-ciphers
# Ed25519 for browsers whose WebCrypto lacks it (loaded only there): @noble/curves and the
# SHA-512 it imports from @noble/hashes; bare '@noble/hashes/X' imports become relative
NOBLE_CURVES := 2.4.0
NOBLE_CURVES_SHA512 := P4/62zrgfH33CneE3Dn4WhJVA22YUU0eR51wKIan4NVRvwsA0YnPTwWGpNbpuacSujmSFLvyzpyuR30+fbq2Ew==
NOBLE_CURVES_FILES := ed25519.js utils.js abstract/curve.js abstract/edwards.js abstract/fft.js \
  abstract/frost.js abstract/hash-to-curve.js abstract/modular.js abstract/montgomery.js \
  abstract/oprf.js LICENSE
NOBLE_HASHES := 2.4.0
NOBLE_HASHES_SHA512 := X5XaVWZIBCT7HHZGm5I7ZQXDwLG+bGXuSrMQAW+7Zvl87h1kmc1ZB1VSRJcpUfoUrGQp4Fkoxm5kZ+Ms+aW+eA==
NOBLE_HASHES_FILES := sha2.js _md.js _u64.js utils.js LICENSE
VENDOR_CURVES := web/static/vendor/noble-curves
VENDOR_HASHES := web/static/vendor/noble-hashes

vendor-js:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && npm pack --silent @noble/ciphers@$(NOBLE_CIPHERS) >/dev/null); \
	tgz="$$tmp/noble-ciphers-$(NOBLE_CIPHERS).tgz"; \
	got=$$(openssl dgst -sha512 -binary "$$tgz" | base64 -w0); \
	if [ "$$got" != "$(NOBLE_CIPHERS_SHA512)" ]; then echo "integrity mismatch: $$got" >&2; exit 1; fi; \
	tar xzf "$$tgz" -C "$$tmp"; rm -rf $(VENDOR_JS); mkdir -p $(VENDOR_JS); \
	for f in chacha.js _arx.js _poly1305.js utils.js LICENSE; do \
	  sed '/^\/\/# sourceMappingURL=/d' "$$tmp/package/$$f" > $(VENDOR_JS)/$$f; done; \
	echo "@noble/ciphers $(NOBLE_CIPHERS) (npm, sha512-$(NOBLE_CIPHERS_SHA512)): chacha.js _arx.js _poly1305.js utils.js, MIT (LICENSE)" > $(VENDOR_JS)/VERSION; \
	echo "vendored @noble/ciphers $(NOBLE_CIPHERS) into $(VENDOR_JS)"; \
	(cd "$$tmp" && npm pack --silent @noble/curves@$(NOBLE_CURVES) @noble/hashes@$(NOBLE_HASHES) >/dev/null); \
	for pkg in "curves $(NOBLE_CURVES) $(NOBLE_CURVES_SHA512) $(VENDOR_CURVES)" \
	           "hashes $(NOBLE_HASHES) $(NOBLE_HASHES_SHA512) $(VENDOR_HASHES)"; do \
	  set -- $$pkg; tgz="$$tmp/noble-$$1-$$2.tgz"; \
	  got=$$(openssl dgst -sha512 -binary "$$tgz" | base64 -w0); \
	  if [ "$$got" != "$$3" ]; then echo "integrity mismatch ($$1): $$got" >&2; exit 1; fi; \
	  rm -rf "$$tmp/package"; tar xzf "$$tgz" -C "$$tmp"; rm -rf "$$4"; \
	  if [ "$$1" = curves ]; then files="$(NOBLE_CURVES_FILES)"; else files="$(NOBLE_HASHES_FILES)"; fi; \
	  for f in $$files; do mkdir -p "$$4/$$(dirname $$f)"; \
	    case "$$f" in abstract/*) up=../../noble-hashes/;; *) up=../noble-hashes/;; esac; \
	    sed -e '/^\/\/# sourceMappingURL=/d' -e "/^import /s|from '@noble/hashes/|from '$$up|" \
	      "$$tmp/package/$$f" > "$$4/$$f"; done; \
	  echo "@noble/$$1 $$2 (npm, sha512-$$3): $$files, MIT (LICENSE)" > "$$4/VERSION"; \
	  echo "vendored @noble/$$1 $$2 into $$4"; done
