# PEFT Lab: `make demo` runs the case study on the offline tiny model, `make test` the suite.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3
STAMP  := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE ?= 1

.PHONY: venv demo test lint lock clean bench release

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[course,dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: venv
	$(VENV)/bin/peftlab train --config shakespeare-tiny

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check shared tests bench
	$(PY) -m peftlab.notebooks check .

release: venv
	$(PY) -m peftlab.nbgrade release

lock: venv
	{ head -3 constraints.txt; $(PY) -m pip freeze --exclude-editable | sed 's/+cpu//'; } > constraints.new && mv constraints.new constraints.txt

clean:
	rm -rf $(VENV) runs

bench: venv
	$(PY) bench/throughput.py
