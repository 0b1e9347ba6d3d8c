# Set-up and everyday commands. Each target creates .venv and installs the project when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test lint format demo reference clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,serve,dev]"
	# type stubs for the TensorRT engine code (tests/export type-check it); --no-deps because
	# they declare tensorrt itself, whose wheels only NVIDIA's own index serves
	$(BIN)/python -m pip install --quiet --no-deps "tensorrt-stubs>=10.13"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP)
	$(BIN)/detector demo

# The official YOLOX 0.3.0 in .venv: the tests then also compare against it live, and the
# benchmarks in benchmarks/ can run their side-by-side measurements (onnxsim: the official ONNX
# export simplifies with it, as its tools/export_onnx.py does).
reference: $(STAMP)
	$(BIN)/python -m pip install --quiet wheel loguru tabulate thop ninja onnxsim
	$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps yolox==0.3.0

clean:
	rm -rf $(VENV) runs .pytest_cache
