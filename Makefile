# Set-up and the two README commands. `make run` meta-trains ANIL on 2D-Navigation and
# prints its evaluation; `make test` runs the test suite. Both create the venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/rl/navigation2d_anil.yaml
RUN ?= runs/$(basename $(notdir $(CONFIG)))
TORCH ?= torch==2.13.0

.PHONY: setup run test lint clean

setup: $(VENV)/.installed

# torch is pinned here (the CPU wheel of these machines; `make TORCH=torch==X` elsewhere); the package accepts a range.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet '$(TORCH)'
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Train (or finish a stopped run), then evaluate on 40 test tasks: pre- and post-adaptation.
run: setup
	@if [ -f $(RUN)/config.yaml ]; then $(BIN)/metarl train --resume $(RUN); \
	 else $(BIN)/metarl train $(CONFIG) --out $(RUN); fi
	$(BIN)/metarl evaluate $(RUN) --tasks 40 --inner-steps 3 --adapt head
	$(BIN)/metarl evaluate $(RUN) --tasks 40 --inner-steps 3 --adapt full

test: setup
	$(BIN)/python -m pytest
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
