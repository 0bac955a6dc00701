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

# The review page's browser test drives Debian's chromium and chromium-driver: installed when missing, where
# apt-get is there and we are root (elsewhere that test is skipped and says why).
setup: $(BIN)/clearpeft
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && echo "installing chromium for the browser test" && \
	   (DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null || \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
	     >/dev/null))) || true

# The demo: CleaR-LoRA on 2,500 SST-5 sentences with 60% symmetric label noise on the default backbone
# (all-MiniLM-L6-v2), fp32, then the ten training labels it trusts least. About 5.5 minutes on 2 CPU cores.
demo: setup
	$(BIN)/clearpeft train --dataset sst5 --peft lora --routing clean --noise symmetric:0.6 \
	    --max-train-samples 2500 --max-eval-samples 1000 --epochs 6 --warmup-epochs 2 --seed 0 \
	    --out runs/demo --overwrite
	$(BIN)/clearpeft label-issues runs/demo --top 10

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=20

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
