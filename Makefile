# mushishi — two commands do everything on a fresh machine:
#   make demo   set up, then boot the stack in a sandboxed systemd (make demo-stop ends it)
#   make test   set up, then run the whole suite (unit, integration, booted systemd)
PYTHON ?= /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo demo-stop demo-status soak lint checkout system-deps llama-server venv clean

checkout:
	@scripts/check-checkout.sh

system-deps: checkout
	@scripts/install-system-deps.sh
	@scripts/fetch-systemd-resolved.sh >/dev/null

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,fast]'
	@touch $(STAMP)

venv: $(STAMP)

llama-server: system-deps
	@scripts/build-llama-server.sh >/dev/null

test: system-deps venv llama-server
	$(BIN)/ruff check .
	$(BIN)/pytest

demo: system-deps venv llama-server
	$(BIN)/python -m scripts.demo up

# The chaos soak (benchmarks/soak/README.md): `make soak MINUTES=20`.
MINUTES ?= 20
soak: system-deps venv llama-server
	$(BIN)/python -m benchmarks.soak --minutes $(MINUTES)

demo-stop: venv
	$(BIN)/python -m scripts.demo down

demo-status: venv
	$(BIN)/python -m scripts.demo status

lint: venv
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
