# The two commands of the README. Both set up everything on a fresh machine first.
#   make train   -- a small SIFT pretraining (tiny BERT, embedded corpus, 2 CPU ranks)
#   make test    -- the test suite (CPU: DeepSpeed on gloo, Triton under TRITON_INTERPRET=1)
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
TORCH_PIN   ?= torch==2.13.0
DEEPSPEED   ?= deepspeed==0.19.8
NUM_GPUS    ?= 2
DS_CONFIG   ?= ds_configs/tiny_cpu_sift.json
RUN_DIR     ?= runs/tiny_sift
# WordPiece training breaks frequency ties in hash-map order, which changes from process to process;
# the main job uses this tokenizer, trained once on the embedded corpus, so that its figures repeat.
TOKENIZER   ?= ds_configs/tokenizers/pydoc_wordpiece_4096
export PIP_CONSTRAINT := $(CURDIR)/.ci/constraints.txt
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

.PHONY: setup train test bench gpu-check clean

setup: $(VENV)/.installed

# torch first, pinned (the CPU wheel here; constraints stop any package from pulling another build),
# then DeepSpeed's source archive built against that torch, then this project and its test extras.
$(VENV)/.installed: setup.py .ci/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q --no-build-isolation $(DEEPSPEED)
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/python -c "import torch, deepspeed, transformers, sift_ds; print('torch', torch.__version__, '| deepspeed', deepspeed.__version__, '| transformers', transformers.__version__)"
	touch $@

train: setup
	DS_ACCELERATOR=$(DS_ACCELERATOR) OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) \
	$(BIN)/deepspeed --num_gpus $(NUM_GPUS) launch/pretrain_bert.py --ds_config $(DS_CONFIG) --output_dir $(RUN_DIR) \
		--tokenizer $(TOKENIZER)

test: setup
	DS_ACCELERATOR=$(DS_ACCELERATOR) TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest -q tests benchmarks

bench: setup
	TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(BIN)/pytest benchmarks --benchmark-only

gpu-check:
	TORCH_EXTENSIONS_DIR=$(TORCH_EXTENSIONS_DIR) $(GPU_PYTHON) benchmarks/gpu_check.py $(if $(DRY),--dry) --out $(GPU_OUT)

clean:
	rm -rf $(VENV) runs .pytest_cache .benchmarks
