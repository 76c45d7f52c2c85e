# A newcomer's two commands: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install. Here: the local CPU build. On a CUDA machine, for example:
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: install test demo clean

install: $(VENV)/.installed

# The project with the fleet and test extras at the versions of constraints.txt (CI's).
$(VENV)/.installed: pyproject.toml constraints.txt Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

# Two workers (pytest-xdist): the tests of the shared services run on one, the rest beside them
# (tests/services.py). With one worker the two cores were busy 55 % of the time (services and
# jobs starting, outages waited out); with two, 91 %.
TEST_WORKERS ?= 2

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# The main job on embedded defaults: procedural images -> manifest -> a local Ray -> outputs,
# tracked in a local MLflow database. Three balloon skies at 64 px, trained as one bucket: the
# paper's networks and schedule on 3 scales of 200 iterations (the learning rate drops at 80 %,
# as the paper's does at 1600 of 2000), about 6 minutes on two cores (bench/NOTES.md, "The demo").
DEMO_SETTINGS ?= --set max_size=64 --set num_scales=3 --set niter=200 --set lr_milestone=160
demo: install
	$(VENV)/bin/singan examples $(DEMO_OUT)/images --kind balloons --count 3
	$(PY) jobs/make_manifest.py $(DEMO_OUT)/images --out $(DEMO_OUT)/manifest.parquet --overwrite
	$(PY) jobs/train_manifest.py --manifest $(DEMO_OUT)/manifest.parquet \
		--output $(DEMO_OUT)/outputs $(DEMO_SETTINGS) --images-per-task 3 \
		--tracking-uri sqlite:///$(abspath $(DEMO_OUT))/mlflow.db
	@echo "outputs: $(DEMO_OUT)/outputs (one folder per image: model/, reals/, samples/, metrics/)"

clean:
	rm -rf $(VENV) runs .pytest_cache
