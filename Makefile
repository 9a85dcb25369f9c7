# make test  — create .venv, install the package with its test extra, run the suite and ruff.
# make demo  — the whole loop on embedded parts (PostgreSQL, IMAP, backend), then a summary.
# make bench — the load benchmark (bench/README.md); not part of the tests.
# make faults — the fault bench (bench/README.md, "Fault bench"): FAULTS_ARGS="--quick".
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TESTS  ?= tests

.PHONY: test lint demo bench faults clean

$(BIN)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]' --config-settings editable_mode=compat
	touch $@

test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/trial --temp-directory=/tmp/rebreak-trial $(TESTS)
	$(BIN)/python -m tests.support.leaks /tmp/rebreak-trial/test.log \
		$$(ls /tmp/rebreak-trial/daemon-logs/*.log 2>/dev/null)

lint: $(BIN)/.installed
	$(BIN)/ruff check .

demo: $(BIN)/.installed
	$(BIN)/python -m demo $(DEMO_ARGS)

bench: $(BIN)/.installed
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,bench]' --config-settings editable_mode=compat
	$(BIN)/python -m bench $(BENCH_ARGS)

faults: $(BIN)/.installed
	$(BIN)/python -m bench.faults $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) _trial_temp /tmp/rebreak-trial *.egg-info
