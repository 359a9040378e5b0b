# Two commands on a fresh machine, each setting up what is missing first:
#   make demo   the whole pipeline on the offline toy world, then the web page (birdsearch demo)
#   make test   the default test suite (pytest)
# The virtual environment is made with the README's install command, once, and again when
# pyproject.toml changes (a new dependency or extra). ARGS passes flags on:
#   make demo ARGS="--no-serve"   make test ARGS="tests/toy -x"

VENV := .venv
INSTALLED := $(VENV)/.installed
ARGS ?=

.PHONY: demo test venv

demo: $(INSTALLED)
	$(VENV)/bin/birdsearch demo $(ARGS)

test: $(INSTALLED)
	$(VENV)/bin/pytest $(ARGS)

venv: $(INSTALLED)

# The marker is written only after pip succeeds, so an interrupted install is done again.
$(INSTALLED): pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install torch==2.14.1 torchvision==0.29.1 -e ".[cpu,dev]"
	touch $@
