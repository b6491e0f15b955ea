# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: venv test demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the local CPU wheel first, so that nothing pulls a multi-GB CUDA build
	$(PY) -m pip install -q torch==2.13.0
	# the framework extras too, so that the integration tests run (csr_vdb.integrations)
	$(PY) -m pip install -q -e '.[dev,demo,langchain,llama-index,haystack]'
	touch $(STAMP)

venv: $(STAMP)

# pytest exits 5 when it collects no test: that is not a failure of the build
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/csr-vdb demo --store milvus --uri demo_out/demo.db --out demo_out

bench: $(STAMP)
	$(PY) bench/quality.py --data-dir ../shared/data --out bench/results/quality.json

clean:
	rm -rf $(VENV) demo_out build *.egg-info
