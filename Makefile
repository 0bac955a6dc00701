# Two commands do everything on a fresh machine:  make demo  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= $(abspath ../shared/data)
export CLEARPEFT_DATA ?= $(DATA)
export HF_HUB_OFFLINE ?= 1

.PHONY: setup demo test test-fast clean

$(BIN)/clearpeft: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,compare]"
	touch $(BIN)/clearpeft

setup: $(BIN)/clearpeft

# The main job: CleaR-LoRA on SST-5 with 60% symmetric label noise on the default backbone (all-MiniLM-L6-v2).
demo: setup
	$(BIN)/clearpeft train --dataset sst5 --peft lora --routing clean --noise symmetric:0.6 \
	    --epochs 10 --warmup-epochs 3 --seed 0 --out runs/demo --overwrite

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=20

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
