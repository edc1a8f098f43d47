# Two commands do all set-up on a fresh Debian machine:
#   make demo   creates .venv, installs segue and what it needs, generates audio with the built-in demo model, then
#               runs the daemon: a generate and a continue of the shipped loop, streamed in time (see `segue demo`)
#   make test   same set-up, then the whole test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU wheel this kind of machine carries locally; GPU machines keep the torch they already have.
TORCH_SPEC ?= torch==2.13.0
# Debian packages segue needs; installed with apt when root, otherwise named in one line.
SYSTEM_PACKAGES ?= libportaudio2 jackd2 liblo-tools puredata-core

.PHONY: demo test setup system clean bench

demo: setup
	@mkdir -p out
	$(VENV)/bin/segue generate --model demo --prompt "dub techno, deep chords, 120 bpm" --duration 8 --seed 1 \
		--out out/demo.wav --codes-out out/demo_codes.npy
	$(VENV)/bin/segue generate --model demo --continue out/demo.wav --prompt-seconds 4 --duration 4 --seed 2 \
		--out out/demo_continued.wav
	@echo "demo: out/demo.wav and out/demo_continued.wav (the demo model has random weights: noise, not music)"
	$(VENV)/bin/segue demo --out out

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run.py

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	@$(MAKE) --no-print-directory system
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -c constraints.txt -e ".[test]"
	@touch $@

system:
	@need="$(SYSTEM_PACKAGES)"; \
	$(PYTHON) -c "import ensurepip" 2>/dev/null || need="$$need python3-venv"; \
	missing=""; for p in $$need; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing Debian packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "segue needs Debian packages:$$missing -- run: sudo apt-get install$$missing"; exit 1; \
		fi; \
	fi

clean:
	rm -rf $(VENV) out .pytest_cache
