# The two commands of the README. Both set up everything on a fresh machine first.
#   make train   -- a small SIFT pretraining (tiny BERT, embedded corpus, 2 CPU ranks)
#   make test    -- the test suite (CPU: DeepSpeed on gloo, Triton under TRITON_INTERPRET=1)
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# The tested environment: every package at one exact version (docs/usage.md, "The environment").
LOCK        ?= requirements/lock.txt
# Where torch comes from: empty = pip's default index (PyPI: on Linux x86_64 a CUDA build, which also runs
# on a CPU-only machine); https://download.pytorch.org/whl/cpu for the CPU build, .../whl/cu128 for CUDA 12.8.
TORCH_INDEX ?=
# make test-latest: a second venv with the newest releases setup.py allows (plus Hugging Face's kernels).
LATEST_VENV ?= .venv-latest
# make test-oldest: a third venv with the lowest releases setup.py allows, torch's floor included (from
# PyPI on Linux x86_64 a CUDA build: about 3.7 GB of wheels with its nvidia-* ones and its pinned triton).
OLDEST_VENV ?= .venv-oldest
NUM_GPUS    ?= 2
DS_CONFIG   ?= ds_configs/tiny_cpu_sift.json
RUN_DIR     ?= runs/tiny_sift
# WordPiece training breaks frequency ties in hash-map order, which changes from process to process;
# the main job uses this tokenizer, trained once on the embedded corpus, so that its figures repeat.
TOKENIZER   ?= ds_configs/tokenizers/pydoc_wordpiece_4096
export PIP_CONSTRAINT := $(CURDIR)/$(LOCK)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# DeepSpeed's JIT-built ops (shm comm, CPU Adam) go inside the venv, not the shared ~/.cache: a build
# killed there (by another checkout's run or test) leaves a lock that hangs every later start.
TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
# DeepSpeed on the CPU (gloo) unless a GPU is visible; override with DS_ACCELERATOR=...
DS_ACCELERATOR ?= $(shell $(BIN)/python -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')" 2>/dev/null || echo cpu)

# The GPU check (benchmarks/gpu_check.py, docs/benchmarks.md): builds no venv, so that a GPU machine runs it
# under its own python3 with the wheels of .whl/ (installed by the script into /tmp/site). DRY=1: the CPU dry run.
GPU_PYTHON  ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_OUT     ?= runs/gpu_check

.PHONY: setup train test test-latest test-oldest test-cluster lock bench gpu-check clean

setup: $(VENV)/.installed

# Everything at the lock's version (PIP_CONSTRAINT): pip's own tools, torch (from TORCH_INDEX), then
# DeepSpeed's source archive built against that torch, this project and its test extras in one resolve.
$(VENV)/.installed: setup.py $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q torch $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q --no-build-isolation -e ".[test]"
	cd / && $(abspath $(BIN))/python -c "import torch, deepspeed, transformers, sift_ds; print('torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)"
	touch $@

train: setup
	DS_ACCELERATOR=$(DS_ACCELERATOR) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) \
	$(BIN)/deepspeed --num_gpus $(NUM_GPUS) launch/pretrain_bert.py --ds_config $(DS_CONFIG) --output_dir $(RUN_DIR) \
		--tokenizer $(TOKENIZER)

# The tests on TEST_WORKERS pytest-xdist workers (0: in this process), each test module whole on one worker,
# so that the runs a module shares are made once; then the benchmarks, alone, since they time what they run.
TEST_WORKERS ?= 2
test: setup
	DS_ACCELERATOR=$(DS_ACCELERATOR) TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest -q --durations=25 -m "not cluster" \
		-n $(TEST_WORKERS) --dist loadscope tests
	DS_ACCELERATOR=$(DS_ACCELERATOR) TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest -q benchmarks

# Launches as users run them, on this machine over 127.0.0.0/8 (tests/cluster): `deepspeed --hostfile` over
# ssh, launch/slurm_pretrain.sh under Slurm, run_mlm_sift.py under a 2-node torchrun. Needs the Debian
# packages of tests/cluster/daemons.py (.ci/run installs them); without them the tests skip (fail under CI=true).
test-cluster: setup
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest -q --durations=10 -m cluster tests/cluster

# The newest releases setup.py allows, not the lock: torch first (its range read from setup.py), then the
# rest in one resolve, plus Hugging Face's kernels; then the smoke set from the repository root. Its last
# line names the package and version that broke, when something did.
test-latest: $(LATEST_VENV)/.installed
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(abspath $(LATEST_VENV))/torch_extensions \
	$(LATEST_VENV)/bin/python .ci/smoke.py --lock $(LOCK)

$(LATEST_VENV)/.installed: setup.py
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	env -u PIP_CONSTRAINT $(LATEST_VENV)/bin/pip install -q --upgrade pip setuptools wheel
	env -u PIP_CONSTRAINT $(LATEST_VENV)/bin/pip install -q --upgrade \
		"$$($(PYTHON) .ci/requirement.py setup.py torch)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	env -u PIP_CONSTRAINT $(LATEST_VENV)/bin/pip install -q --upgrade --upgrade-strategy eager \
		--no-build-isolation -e ".[test]" kernels
	touch $@

# The lowest releases setup.py allows, by uv's "lowest-direct" resolution (each requirement of setup.py
# at its floor, what they need at the newest that fits): torch first, at its floor (with the triton its
# wheel pins), then sift_ds with its test extras against that torch (Hugging Face's kernels, for the
# import check, at the lock's version), DeepSpeed's source archive built against it. Floors that cannot
# install together fail that resolve, naming them. The smoke set then first checks that every
# requirement is at its floor (one that another floor lifts is named) and ends, on a failure, with the
# package and version that broke: raise that floor in setup.py (the front-ends refuse what is below it).
test-oldest: $(OLDEST_VENV)/.installed
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(abspath $(OLDEST_VENV))/torch_extensions \
	$(OLDEST_VENV)/bin/python .ci/smoke.py --lock $(LOCK) --name test-oldest --at_floors

$(OLDEST_VENV)/.installed: setup.py
	rm -rf $(OLDEST_VENV)
	$(PYTHON) -m venv $(OLDEST_VENV)
	env -u PIP_CONSTRAINT $(OLDEST_VENV)/bin/pip install -q --upgrade pip setuptools wheel "uv<1"
	env -u PIP_CONSTRAINT $(OLDEST_VENV)/bin/uv pip install -q --python $(OLDEST_VENV)/bin/python \
		--resolution lowest-direct "$$($(PYTHON) .ci/requirement.py setup.py torch)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	{ $(OLDEST_VENV)/bin/uv pip freeze --python $(OLDEST_VENV)/bin/python | grep '^torch=='; \
		grep '^kernels==' $(LOCK); } > $(OLDEST_VENV)/constraints.txt
	env -u PIP_CONSTRAINT $(OLDEST_VENV)/bin/uv pip install -q --python $(OLDEST_VENV)/bin/python \
		--resolution lowest-direct --no-build-isolation-package deepspeed -c $(OLDEST_VENV)/constraints.txt \
		-e ".[test]" kernels
	touch $@

# Refresh the lock from the newest-releases venv once `make test-latest` passed there; then
# `make clean test` installs from the new lock and must pass before it is committed (docs/usage.md).
lock: $(LATEST_VENV)/.installed
	$(LATEST_VENV)/bin/python .ci/write_lock.py --lock $(LOCK)

bench: setup
	TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest benchmarks --benchmark-only

gpu-check:
	TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(GPU_PYTHON) benchmarks/gpu_check.py $(if $(DRY),--dry) --out $(GPU_OUT)

clean:
	rm -rf $(VENV) $(LATEST_VENV) $(OLDEST_VENV) runs .pytest_cache .benchmarks
