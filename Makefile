# Two commands for a fresh machine: `make demo` (main job) and `make test` (set-up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HEAR_NODEPS := heareval==2021.1.3 hearvalidator==2021.0.2
# USAD 2.0 teachers, without their declared extras (setup.cfg, extra `teachers`, says why)
TEACHER_NODEPS := muq==0.1.0 openai-whisper==20250625
STAMP := $(VENV)/.setup-done

.PHONY: setup test demo clean-venv

setup: $(STAMP)

# Re-runs only when the pinned set or the package metadata change: a second `make setup` takes seconds.
$(STAMP): requirements/constraints.txt setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c requirements/constraints.txt -e '.[s3prl,hear,results,teachers,distill,xares,test]'
	$(PIP) install -q --no-deps $(HEAR_NODEPS) $(TEACHER_NODEPS)
	touch $@

# `make demo` (<= 40 min on 2 cores), `make demo QUICK=1` (<= 10 min), `make demo FORCE=1` (rebuild all),
# `make demo RECIPE=usad2` (USAD 2.0's three teachers and domain weighting, <= 60 min).
# Finished stages are skipped on rerun; logs per stage under runs/demo[-usad2][-quick]/logs/.
demo: setup
	$(PY) -m downstream_recipes.cli demo run $(if $(QUICK),--quick) $(if $(FORCE),--force) $(if $(RECIPE),--recipe $(RECIPE))

test: setup
	$(PY) -m pytest -q -rs --durations=15 tests  # -rs: every skip with its reason; the summary line counts them

clean-venv:
	rm -rf $(VENV)
