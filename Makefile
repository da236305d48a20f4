# All set-up happens here: `make demo` and `make test` work on a fresh machine
# with nothing but Python 3.11 and pip.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.xkd-installed
DEMO_OUT ?= demo_out

.PHONY: venv demo test lint bench soak fleet-loop clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt -c constraints.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/xkd-demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/ruff check xkd_core xkd_ros test bench experiments launch setup.py
# Python 3.10 (Humble) API check: ruff (target py310) rejects newer syntax, vermin newer stdlib
# modules/members. --eval-annotations: xkd_core.config evaluates dataclass annotations at run time.
	$(BIN)/vermin --no-config-file --violations --no-tips -vvv --eval-annotations -t=3.10- \
		xkd_core xkd_ros launch test bench experiments setup.py
	$(BIN)/python -m pytest -q test

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

soak: $(STAMP)
	$(BIN)/python -m bench.soak --minutes 10

# The fleet loop measured on synthetic data (docs/fleet_loop.md): drive world B with a new LiDAR, log
# pairs live, distil, export through the guard, redeploy; per seed, resumable. FLEET_ARGS adds options.
FLEET_SEEDS ?= 0 1 2
fleet-loop: $(STAMP)
	$(BIN)/python -m experiments.fleet_loop --seeds $(FLEET_SEEDS) $(FLEET_ARGS)

clean:
	rm -rf $(VENV) $(DEMO_OUT) build *.egg-info
