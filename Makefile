# Two entry points, both doing their own set-up on a fresh Debian machine (run as root):
#   make demo   the main job on the built-in default model
#   make test   the whole test suite
# Set-up: a virtualenv in .venv with this project installed, and Icarus Verilog from Debian.

VENV   ?= .venv
PYTHON := $(VENV)/bin/python
OUT    ?= build/demo

.PHONY: demo test setup iverilog clean

setup: $(VENV)/.installed iverilog

$(VENV)/.installed: pyproject.toml
	# Debian's python3 needs python3-venv for `-m venv`.
	python3 -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(PYTHON) -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU build on disk; unpinned, pip downloads a CUDA build.
	$(PYTHON) -m pip install --quiet torch==2.13.0
	$(PYTHON) -m pip install --quiet -e '.[test,bench]'
	touch $@

iverilog:
	@command -v iverilog >/dev/null || { apt-get update -qq && apt-get install -y -qq iverilog; }

# Train and compress the digits ResNet, check the file, run its integer program, run the
# decoder's RTL on it against the golden model, simulate the inference system (flash model ->
# decoder -> engine -> UART) on four held-out digits against the reference engine, and build
# the iCEBreaker bitstream and flash image of the inference system holding it.
demo: setup
	$(PYTHON) -m sw train --out $(OUT)/digits.sbit --report $(OUT)/train.json
	$(PYTHON) -m sw inspect $(OUT)/digits.sbit
	$(PYTHON) -m sw verify $(OUT)/digits.sbit
	$(PYTHON) -m sim.decode $(OUT)/digits.sbit --lanes 2
	$(PYTHON) -m sw infer $(OUT)/digits.sbit --quiet
	$(PYTHON) -m sim.board $(OUT)/digits.sbit --images 4
	$(PYTHON) -m hw.build --board icebreaker --container $(OUT)/digits.sbit --out $(OUT)/icebreaker

# worksteal: the builds and board simulations take minutes each, and a worker left with two
# of them at the end doubled the suite's tail; --durations names them in CI's log
test: setup
	$(PYTHON) -m pytest -n 2 --dist worksteal -q --durations=15

clean:
	rm -rf build
