# modaltune-bench — every target creates/refreshes the virtualenv itself.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= small
JOBS ?=
STORE ?= runs/results.sqlite
TABLES_DIR := runs/tables

.PHONY: install test table2 table3 table9 drift-record clean help

help:
	@echo "make table2   run the Table 2 grid (missing runs only) on the embedded synthetic cohort and render it"
	@echo "make table3   the same for Table 3 (out-of-distribution sites); make table9: TITAN (Table 9)"
	@echo "make test     install if needed, run pytest and the drift check"
	@echo "variables: PROFILE=tiny|small|paper (default small), JOBS=N, STORE=path"

# torch is pinned through constraints.txt so that packages depending on it never pull a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test]'
	@$(PY) -c "import torch, sys; print('torch', torch.__version__); sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest
	$(PY) -m bench drift check

# One target per paper table: run the grid's missing runs, then render Markdown, LaTeX and CSV.
table2 table3 table9: %: $(STAMP)
	$(PY) -m bench grid $@ --profile $(PROFILE) --store $(STORE) $(if $(JOBS),--jobs $(JOBS))
	@mkdir -p $(TABLES_DIR)
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format csv --out $(TABLES_DIR)/$@-$(PROFILE).csv
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format latex --out $(TABLES_DIR)/$@-$(PROFILE).tex
	$(PY) -m bench table $@ --profile $(PROFILE) --store $(STORE) --format md --out $(TABLES_DIR)/$@-$(PROFILE).md
	@cat $(TABLES_DIR)/$@-$(PROFILE).md

drift-record: $(STAMP)
	$(PY) -m bench drift record

clean:
	rm -rf runs cohorts .pytest_cache
