# `make demo` and `make test` work on a fresh machine: both create .venv on first use.
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1

.PHONY: demo test bench clean

# torch first, pinned: 2.13.0 is the CPU wheel on this project's machines (pip finds it on disk), and any
# other resolution pulls a CUDA build. Where pip reads PyPI alone, Linux gets the CUDA build of 2.13.0 too
# (gigabytes): pass TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" for the CPU one.
TORCH_PIP_ARGS ?=
$(BIN)/mtlora: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: $(BIN)/mtlora
	$(BIN)/python examples/demo/demo.py

test: $(BIN)/mtlora
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/mtlora
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/infer_speed.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf examples/demo/adapters examples/demo/reports
