# modaltune-bench — every target creates/refreshes the virtualenv itself.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= small
JOBS ?=
STORE ?= runs/results.sqlite
TRIALS ?= 20
PARAMS ?=
EXECUTOR ?=
TABLES_DIR := runs/tables
LOCK := requirements.lock
TORCH_VERSION := $(shell sed -n 's/^torch==//p' constraints.txt)
UV_VERSION := 0.13.9
WHEELS ?= /opt/wheels

.PHONY: install lock test tables table2 table3 table7 table8 table9 table10 table11 tune-table2 report drift-record clean help

help:
	@echo "make table2   run the Table 2 grid (missing runs only) on the embedded synthetic cohort and render it"
	@echo "make table3   the same for Table 3 (out-of-distribution sites); table7: text embedding probes;"
	@echo "              table8: ModalTune ablations; table9: TITAN; table10: clinical data;"
	@echo "              table11: TITAN out of distribution"
	@echo "make tables   every table above (runs shared between tables are computed once)"
	@echo "make report   runs/report/index.html: every stored table, the paper's figures, cohort, profile, encoders"
	@echo "make tune-table2 TRIALS=N   tune every Table 2 row (Optuna, validation data only, N trials each);"
	@echo "              then make table2 PARAMS=best runs and renders the grid with the tuned values"
	@echo "make test     install if needed, run pytest and the drift check"
	@echo "make lock     refresh requirements.lock from pyproject.toml's ranges (needs the package registry)"
	@echo "variables: PROFILE=tiny|small|paper (default small), JOBS=N, STORE=path, PARAMS=best,"
	@echo "           EXECUTOR=local|slurm (one job per run or tuning worker through submitit)"

# Installs come from requirements.lock, which pins every package (transitive ones too) so that a fresh
# machine gets the versions the tests passed with; the project itself is then added without dependencies.
# torch is also pinned through constraints.txt so that nothing can pull a CUDA build; pip check fails
# when the lock no longer satisfies pyproject.toml's ranges.
$(STAMP): $(LOCK) pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -r $(LOCK)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@$(PY) -m pip check --disable-pip-version-check || { echo "installed packages conflict (above): if pyproject.toml's ranges changed, run make lock" >&2; exit 1; }
	@$(PY) -c "import torch, sys; print('torch', torch.__version__); sys.exit(0 if torch.__version__.startswith('$(TORCH_VERSION)') else 1)"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m bench drift check

# One target per paper table: run the grid's missing runs, then render Markdown, LaTeX and CSV.
TABLES := table2 table3 table7 table8 table9 table10 table11
tables: $(TABLES)

$(TABLES): %: $(STAMP)
	$(PY) -m bench grid $@ --profile $(PROFILE) --store $(STORE) $(if $(JOBS),--jobs $(JOBS)) \
		$(if $(PARAMS),--params $(PARAMS)) $(if $(EXECUTOR),--executor $(EXECUTOR))
	@mkdir -p $(TABLES_DIR)
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format csv --out $(TABLES_DIR)/$@-$(PROFILE).csv
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format latex --out $(TABLES_DIR)/$@-$(PROFILE).tex
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format md --out $(TABLES_DIR)/$@-$(PROFILE).md
	@cat $(TABLES_DIR)/$@-$(PROFILE).md

# The report reads the store and the runs' directories only (nothing is trained). Without PROFILE on the
# command line or in the environment it shows the profile of the latest stored run.
report: $(STAMP)
	$(PY) -m bench report --store $(STORE) $(if $(filter command line environment,$(origin PROFILE)),--profile $(PROFILE))

# Tune every Table 2 row that has something to tune (the linear probes have not) with the same budget:
# TRIALS complete Optuna trials per (row, site, task), on validation data only; studies resume.
tune-table2: $(STAMP)
	$(PY) -m bench tune --grid table2 --trials $(TRIALS) --profile $(PROFILE) --store $(STORE) \
		$(if $(EXECUTOR),--executor $(EXECUTOR)) $(if $(JOBS),--jobs $(JOBS))

# Refresh the lock (needs the package registry). uv runs from a throwaway venv that never holds torch and
# resolves pyproject.toml plus the test extra for Python 3.11 on linux x86_64. Versions already locked are
# kept where they still fit the ranges; UPGRADE=1 takes the newest allowed. torch is resolved as the CPU
# build in $(WHEELS) (so no nvidia-* package enters the lock) and written without its +cpu label, which
# a CUDA build of the same version, installed first, also satisfies.
lock:
	@set -e; tools=$$(mktemp -d); trap 'rm -rf "$$tools"' EXIT; \
	$(PYTHON) -m venv "$$tools/venv"; \
	"$$tools/venv/bin/pip" install --quiet --disable-pip-version-check uv==$(UV_VERSION); \
	echo 'torch==$(TORCH_VERSION)+cpu' > "$$tools/torch-cpu.txt"; \
	if test -f $(LOCK); then cp $(LOCK) "$$tools/lock.txt"; fi; \
	"$$tools/venv/bin/uv" pip compile pyproject.toml --extra test --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -c constraints.txt --overrides "$$tools/torch-cpu.txt" \
		--find-links $(WHEELS) --no-header --quiet $(if $(UPGRADE),--upgrade) -o "$$tools/lock.txt"; \
	if grep -qiE '^(nvidia-|triton|cuda-)' "$$tools/lock.txt"; then \
		echo "the lock pulled CUDA packages: is torch $(TORCH_VERSION)+cpu in $(WHEELS)?" >&2; exit 1; fi; \
	{ printf '%s\n' \
		'# Every package that make install puts in .venv, transitive ones included, for Python 3.11 on' \
		'# linux x86_64 (installed with: pip install -c constraints.txt -r requirements.lock).' \
		'# Generated by make lock (uv pip compile of pyproject.toml with the test extra; needs the package' \
		'# registry): rerun it after changing the ranges in pyproject.toml, or with UPGRADE=1 to take' \
		'# security or bug fixes, then run make test. torch resolves to the CPU build $(TORCH_VERSION)+cpu and is' \
		'# written as torch==$(TORCH_VERSION), which a CUDA build of that version, installed first, also satisfies.'; \
	  sed -e 's/^torch==\(.*\)+cpu$$/torch==\1/' -e 's|--override .*torch-cpu.txt|--override torch==$(TORCH_VERSION)+cpu|' "$$tools/lock.txt"; \
	} > $(LOCK).tmp; \
	if cmp -s $(LOCK).tmp $(LOCK); then rm $(LOCK).tmp; echo "$(LOCK) unchanged"; \
	else mv $(LOCK).tmp $(LOCK); echo "wrote $(LOCK); run make test (and make drift-record if metrics moved)"; fi

drift-record: $(STAMP)
	$(PY) -m bench drift record

clean:
	rm -rf runs cohorts .pytest_cache
