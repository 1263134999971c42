# seals_gpu developer entry points. `make test` and `make demo` work on a fresh machine with only
# Python >= 3.10, make and apt: each does its own setup first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
EXTRAS ?= cpu,dist,text,dev
PYTEST_ARGS ?=

.PHONY: setup test test-shuffled test-all test-gpu gpu-check gpu-wheels demo bench mutate mutate-sample lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# Without a CUDA driver, take torch's CPU build first so pip does not pull a multi-GB CUDA build.
	if ! nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install -q "torch==2.13.0"; \
	fi
	$(PIP) install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q -m "not gpu and not slow" $(PYTEST_ARGS)

# the suite in a shuffled order (SEED=N picks it): every test must pass whatever ran before it
SEED ?= $(shell date +%s)
test-shuffled: setup
	$(PY) -m pytest -q -m "not gpu and not slow" --shuffle $(SEED) $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

# The one command for a GPU machine (no network there: it uses the image's python and packages, installs this
# package with --no-deps, and wheels carried in gpu_wheels/). See benchmarks/gpu_check.py.
gpu-check:
	python3 benchmarks/gpu_check.py --out gpu_check_out

# On a machine with network, before the GPU session: the wheels gpu-check installs offline there (FAISS's
# CPU build for python 3.12: the GPU image has none; 18 MB, an abi3 wheel). Carry gpu_wheels/ to the machine.
gpu-wheels: setup
	$(PIP) download "faiss-cpu>=1.8,<2" --only-binary=:all: --no-deps --python-version 3.12 \
	  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d gpu_wheels

demo: setup
	$(VENV)/bin/seals-gpu demo --out demo_out

bench: setup
	$(PY) benchmarks/run_quick.py

# Mutation testing (mutmut, configured in pyproject.toml's [tool.mutmut]; see TESTING.md). Like `make bench`,
# not part of `make test`: 0.3-1 mutant/s on two cores, so 10-30 min for a small module (200-350 mutants),
# many hours for the whole core list (~11,500 mutants). MUTATE picks modules (dotted
# names under seals_gpu), MUTANTS overrides with mutmut's own name patterns (e.g. the survivors of the last
# run: MUTANTS="$$(.venv/bin/python benchmarks/mutation_report.py --list survived | xargs)"). Every selected mutant
# is re-run. mutmut works on a copy in mutants/ and never edits the tree.
MUTATE ?= metrics pool index.merge atomic evaluate strategies scoring selection split store driver learner distributed index.shard
MUTATE_JOBS ?= 2
MUTATE_FRESH_STATS ?= 1
MUTANTS ?= $(foreach m,$(MUTATE),seals_gpu.$(m).*)
# single-threaded workers: MUTATE_JOBS of them share the cores
MUTMUT_RUN = OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTATE_JOBS)

mutate: setup
	# mutmut maps tests to functions incrementally; after code moved between modules its map missed most
	# tests of the moved functions (false survivors, "no tests"), so each run rebuilds it (one traced run of
	# the suite, ~7 min here); MUTATE_FRESH_STATS=0 reuses the last one
	if [ "$(MUTATE_FRESH_STATS)" = "1" ]; then rm -f mutants/mutmut-stats.json; fi
	$(MUTMUT_RUN) $(foreach m,$(MUTANTS),"$(m)")
	# the report always covers every core module (a run over a few keeps the others' verdicts and rows) and
	# keeps every verdict in benchmarks/mutation_verdicts.json (commit it: a fresh clone has no mutants/)
	$(PY) benchmarks/mutation_report.py

# a seeded uniform sample of SAMPLE mutants per module (the whole core list is about a day of two cores):
# an unbiased score estimate per module with its 95% interval, in TESTING.md beside the full table; each seed's
# draw is kept in benchmarks/mutation_sample.json (a new seed re-measures after tests were written for a draw)
SAMPLE ?= 40
SAMPLE_SEED ?= 0
mutate-sample: setup
	if [ "$(MUTATE_FRESH_STATS)" = "1" ]; then rm -f mutants/mutmut-stats.json; fi
	names="$$($(PY) benchmarks/mutation_report.py --sample $(SAMPLE) --seed $(SAMPLE_SEED) --modules $(MUTATE))" \
	  && if [ -n "$$names" ]; then \
	    $(MUTMUT_RUN) $$names; \
	  else echo "every drawn mutant has a verdict already"; fi
	$(PY) benchmarks/mutation_report.py

lint: setup
	$(VENV)/bin/ruff check seals_gpu kernels benchmarks tests
	$(VENV)/bin/ruff format --check seals_gpu kernels benchmarks tests

format: setup
	$(VENV)/bin/ruff check --fix seals_gpu kernels benchmarks tests
	$(VENV)/bin/ruff format seals_gpu kernels benchmarks tests

clean:
	rm -rf $(VENV) demo_out .pytest_cache .ruff_cache mutants
