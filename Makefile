# rescale.c: build, run, test.  `make run` trains a small LLaMA on the CPU;
# `make test` builds everything and runs every test (exit status != 0 on failure).

CC ?= gcc
# -mprefer-vector-width=512: let gcc use full AVX-512 registers in the matmul
# micro-kernel (it defaults to 256-bit vectors). No -ffast-math anywhere: it
# changes numerics, and the tests pin numerics.
# -fno-tree-loop-distribute-patterns: keep short copy/zero loops (matmul packing, the
# micro-kernel's tile) as vector moves; gcc otherwise calls memmove/memset for each one
# (measured: 15% of a tiny train_llama step; results are bit-identical either way).
CFLAGS ?= -O3 -march=native -mprefer-vector-width=512 -fno-tree-loop-distribute-patterns
CFLAGS += -std=gnu11 -fopenmp -Wall -Wextra -Wno-unused-function -Wno-format-truncation -Icommon
LDLIBS = -lm
DEBUG_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all

NVCC ?= nvcc
NVCCFLAGS = -O3 -arch=sm_90 -std=c++17 -Icommon -Xcompiler -Wall,-Wno-unused-function --Werror all-warnings
# USE_CUDNN=1: the CUDA trainers with cuDNN's attention (--attention cudnn; the rules are below)
USE_CUDNN ?= 0
CUDNN_FRONTEND_VERSION = 1.32.0
CUDNN_FRONTEND = build/cudnn-frontend
CUDNN_FRONTEND_DONE = $(CUDNN_FRONTEND)/.done-$(CUDNN_FRONTEND_VERSION)
CUDNN_DIR ?=
ifneq ($(CUDNN_DIR),)
CUDNN_CFLAGS = -I$(CUDNN_DIR)/include
CUDNN_LDLIBS = -L$(CUDNN_DIR)/lib -Xlinker -rpath=$(abspath $(CUDNN_DIR))/lib -Xlinker -l:libcudnn.so.9 -lnvrtc
else
CUDNN_LDLIBS = -lcudnn -lnvrtc
endif
# (the frontend's experimental engines compile kernels at run time with NVRTC: -lnvrtc)
# what the plain targets add under USE_CUDNN=1; build/use_cudnn.txt remembers the last value, so
# that switching it rebuilds them
CUDNN_DEPS = build/use_cudnn.txt
ifeq ($(USE_CUDNN),1)
CUDNN_DEPS += build/cudnn_att.o
CUDNN_USE = -DUSE_CUDNN $(CUDNN_CFLAGS)
CUDNN_LINK = build/cudnn_att.o $(CUDNN_LDLIBS)
endif

PYTHON ?= python3
VENV = .venv
COMMON = common/utils.h common/gemm_bf16.h common/args.h common/dataloader.h common/csvlog.h common/train.h common/llama_run.h common/gpt2_run.h common/sample.h common/tokenizer.h common/bf16.h common/cuda_common.h common/cuda_attention.h common/cuda_train.h common/cuda_reduce.h common/dp.h common/cuda_dp.h common/cudnn_att.h

.PHONY: all run test test-asan clean venv data help

# every program the README names (the CUDA ones with nvcc: make cuda; on the CPU: make emu)
all: train_llama train_gpt2 mlp_sweep

help:
	@echo "make               train_llama, train_gpt2, mlp_sweep (the CPU programs)"
	@echo "make run           build train_llama and train a small LLaMA with LIR + TVR (1-2 minutes)"
	@echo "make test          build everything and run every test (about 10 minutes on 2 cores)"
	@echo "make test-asan     the CPU programs' tests under AddressSanitizer + UBSan"
	@echo "make cuda          the CUDA programs (nvcc): train_llama_cu, train_gpt2_cu, tests, dev/cuda workbenches"
	@echo "make cuda USE_CUDNN=1   the same with --attention cudnn (cuDNN's fused attention; fetches cudnn-frontend)"
	@echo "make emu           the CUDA programs built for the CPU (test/emu/, docs/emulator.md)"
	@echo "make train_llama_emu / train_gpt2_emu   one of them"
	@echo "make mpi           train_llama_mpi, train_gpt2_mpi: data-parallel over MPI (mpicc; docs/parallel.md)"
	@echo "make cuda-mpi      train_llama_cu_mpi, train_gpt2_cu_mpi: the GPU programs on N GPUs (nvcc, mpicxx, NCCL)"
	@echo "make emu-mpi       train_llama_emu_mpi, train_gpt2_emu_mpi: the same emulated, NCCL served by MPI"
	@echo "make test-gpu      the GPU tests, on a machine with an NVIDIA GPU"
	@echo "make gpu-check GPU_OUT=DIR   the one command for a lent GPU: tests, sanitizers, benchmarks"
	@echo "make gpu-check-prepare       fetch what gpu-check needs carried to a machine without network"
	@echo "make test-mutants  planted bugs the emulated GPU tests must catch"
	@echo "make bench-cpu     train_llama against current PyTorch on this CPU, fp32 and bf16 (installs torch into a venv)"
	@echo "make bench-gemm    the matmul kernels alone (fp32, bf16 on AMX / AVX512-BF16), checked and timed"
	@echo "make reference     regenerate the PyTorch fixtures (needs Debian's python3-torch)"
	@echo "make e1 / e2 / e3  the experiments (docs/mlp_sweep.md, docs/gpt2_e3.md)"
	@echo "make data          regenerate the committed Tiny Shakespeare shards (installs a venv)"
	@echo "make clean         remove what the build made"

# ---------------------------------------------------------------------------
# LLaMA on the CPU
train_llama: train_llama.c $(COMMON)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build/test_llama: test/test_llama.c train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# the same test program with every number in double precision: tight gradient checks
build/test_llama_f64: test/test_llama.c train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS)

build/train_llama_asan: train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(DEBUG_FLAGS) -o $@ $< $(LDLIBS)

build/test_llama_asan: test/test_llama.c train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(DEBUG_FLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS)

LLAMA_TEST_BINS = train_llama build/test_llama build/test_llama_f64 build/train_llama_asan build/test_llama_asan

# The default run: a small LLaMA on Tiny Shakespeare, sigma 0.006 + LIR + TVR target 0.01,
# with a text sample every 200 steps and at the end.
RUN_FLAGS = --train 'data/tinyshakespeare/llama2_train_*.bin' --val 'data/tinyshakespeare/llama2_val_*.bin' \
	--layers 4 --dim 128 --heads 4 --kv-heads 2 --ffn 352 --seq-len 128 --vocab 32000 \
	--batch 8 --steps 400 --lr 3e-3 --warmup 40 --init lir --init-std 0.006 \
	--tvr-target 0.01 --tvr-every 50 --val-every 100 --val-batches 20 --stats-every 50 \
	--checkpoint-every 100 --sample-every 200 --sample-tokens 64 --out out/run
run: train_llama
	./train_llama $(RUN_FLAGS)

# ---------------------------------------------------------------------------
# ReLU-MLP experiments E1, E2 (mlp_sweep.c)
# -fno-math-errno: sqrt need not set errno, so Adam's loop vectorises (no numeric change)
MLP_FLAGS = -fno-math-errno
mlp_sweep: mlp_sweep.c $(COMMON)
	$(CC) $(CFLAGS) $(MLP_FLAGS) -o $@ $< $(LDLIBS) -lz

build/test_mlp: test/test_mlp.c mlp_sweep.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(MLP_FLAGS) -o $@ $< $(LDLIBS) -lz

# the same tests in double precision: a tight finite-difference gradient check
build/test_mlp_f64: test/test_mlp.c mlp_sweep.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(MLP_FLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS) -lz

# the sanitizer build the fuzz test runs (test/test_fuzz_mlp.sh), with float-to-int overflow checks
build/mlp_sweep_asan: mlp_sweep.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(MLP_FLAGS) $(DEBUG_FLAGS) -fsanitize=float-cast-overflow -o $@ $< $(LDLIBS) -lz

MLP_TEST_BINS = mlp_sweep build/test_mlp build/test_mlp_f64 build/mlp_sweep_asan

# The experiments (docs/mlp_sweep.md shows their tables and plots)
e1: mlp_sweep
	./mlp_sweep e1 --out out/e1
# Fashion-MNIST (30 MB, not committed): FASHION_MNIST names a folder of its four IDX files
FASHION_MNIST ?= data/fashion-mnist
e1-fashion: mlp_sweep
	@test -d "$(FASHION_MNIST)" || { echo "e1-fashion: Fashion-MNIST not found in $(FASHION_MNIST) (set FASHION_MNIST=folder with its IDX files)" >&2; exit 1; }
	./mlp_sweep e1 --mnist $(FASHION_MNIST) --out out/e1_fashion
e2: mlp_sweep
	./mlp_sweep e2 --out out/e2
plots-mlp: .venv/.done
	.venv/bin/python dev/plot_mlp.py --e1 out/e1 --e2 out/e2 --torch out/bench_mlp/torch1 --e1-fashion out/e1_fashion --out docs/img

# E1 against its PyTorch twin (current PyTorch from PyPI, in its own virtual environment)
TORCH_VENV = build/venv-torch
$(TORCH_VENV)/.done:
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install -q torch numpy
	touch $@
bench-mlp: mlp_sweep $(TORCH_VENV)/.done
	dev/bench_mlp.sh $(TORCH_VENV)/bin/python

.PHONY: e1 e1-fashion e2 plots-mlp bench-mlp

# ---------------------------------------------------------------------------
# GPT-2 and E3: train_gpt2.c, its PyTorch fixtures, the E3 experiment
train_gpt2: train_gpt2.c $(COMMON)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

build/test_gpt2: test/test_gpt2.c train_gpt2.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# double precision: the finite-difference gradient check
build/test_gpt2_f64: test/test_gpt2.c train_gpt2.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS)

# AddressSanitizer + UBSan builds (DEBUG_FLAGS above) for test/test_gpt2_asan.sh
build/test_gpt2_asan: test/test_gpt2.c train_gpt2.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(DEBUG_FLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS)

build/train_gpt2_asan: train_gpt2.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) $(DEBUG_FLAGS) -o $@ $< $(LDLIBS)

GPT2_TEST_BINS = train_gpt2 build/test_gpt2 build/test_gpt2_f64 build/test_gpt2_asan build/train_gpt2_asan

# Regenerate the PyTorch fixtures (Debian's python3-torch: /usr/bin/python3)
gpt2-fixtures:
	/usr/bin/python3 dev/reference/gpt2.py --out test/fixtures

# The CPU E3 run (see docs/gpt2_e3.md); needs GPT-2 shards in data/
e3: train_gpt2
	/usr/bin/python3 dev/e3.py --out out/e3

.PHONY: gpt2-fixtures e3

# ---------------------------------------------------------------------------
# PyTorch reference: dev/reference/llama.py (the oracle), the fixtures it makes
# in test/fixtures/llama/, the comparison test, and the CPU speed race against PyTorch
build/test_reference: test/test_reference.c test/llama_fixture.h train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# the float64 build, against the oracle's float64 runs: tolerances near 1e-9
build/test_reference_f64: test/test_reference.c test/llama_fixture.h train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -DREAL_DOUBLE -o $@ $< $(LDLIBS)

REF_TEST_BINS = build/test_reference build/test_reference_f64

# Regenerate the fixtures with Debian's torch (installed here if missing: apt-get install
# python3-torch python3-numpy), starting from models that ./train_llama --steps 0
# initialises, then check they still pass. Regenerating is deterministic: same bytes.
REF_PYTHON ?= /usr/bin/python3
reference: train_llama $(REF_TEST_BINS)
	$(REF_PYTHON) -c "import torch, numpy" 2>/dev/null || \
		{ echo "make reference: Debian's python3-torch and python3-numpy are missing; installing them (apt-get)"; \
		  apt-get update && apt-get install -y python3-torch python3-numpy; }
	$(REF_PYTHON) dev/reference/make_fixtures.py --train-llama ./train_llama
	./test/run.sh reference

# tokens/s of train_llama.c and of current PyTorch from pip (installed into .venv-torch
# on first use), same models and batches, 2 threads each, in one run: fp32 against fp32,
# --precision bf16 against torch.autocast bf16; prints the ratios
bench-cpu: train_llama
	dev/bench_cpu.sh

# the matmul workbench: every kernel this CPU has (fp32; bf16 ref, AVX512-BF16, AMX) checked
# against ref and timed at the step's shapes (GFLOP/s)
build/bench_cpu_gemm: dev/bench_cpu_gemm.c train_llama.c $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)
bench-gemm: build/bench_cpu_gemm
	OMP_NUM_THREADS=2 OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-passive} build/bench_cpu_gemm 5

.PHONY: reference bench-cpu bench-gemm

# ---------------------------------------------------------------------------
# LLaMA on the GPU: train_llama.cu mirrors train_llama.c kernel by kernel;
# dev/cuda/ holds one workbench per kernel; test/test_llama_gpu.cu compares the GPU
# program with the PyTorch fixtures. See docs/gpu.md. Without nvcc none of this is built;
# without a GPU it is compiled (by `make test`) but not run.
CUDA_LIBS = -lcublas -lcublasLt
CUDA_WORKBENCHES = $(patsubst %.cu,%,$(wildcard dev/cuda/*.cu))

train_llama_cu: train_llama.cu $(COMMON) $(CUDNN_DEPS)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_USE) -o $@ $< $(CUDNN_LINK) $(CUDA_LIBS)

build/test_llama_gpu: test/test_llama_gpu.cu test/llama_fixture.h train_llama.cu $(COMMON)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

# host-side checks of train_llama.cu (matmul index arithmetic with cuBLAS emulated, token buckets): no GPU needed
build/test_llama_gpu_host: test/test_llama_gpu_host.cu test/cublas_host.h train_llama.cu $(COMMON)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

dev/cuda/%: dev/cuda/%.cu dev/cuda/common.h common/cuda_reduce.h common/cuda_attention.h common/bf16.h
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)

cuda: train_llama_cu build/test_llama_gpu build/test_llama_gpu_host $(CUDA_WORKBENCHES) train_gpt2_cu build/test_gpt2_gpu_host

# On a machine with an NVIDIA GPU: GPU vs fixtures, GPU vs train_llama, checkpoint round
# trips, compute-sanitizer, benchmark; writes out/gpu_report/report.md. Skips (exit 0)
# with a message when there is no GPU.
test-gpu: cuda train_llama train_gpt2
	./test/test_llama_gpu.sh; llama=$$?; ./test/test_gpt2_gpu.sh && exit $$llama

.PHONY: cuda test-gpu

# The one command for a lent GPU machine (no network, minutes counted): builds, tests, sanitizers,
# workbenches, benchmarks (and llm.c beside them when LLMC_DIR names a checkout), each step under
# a timeout, into GPU_OUT/report.md. GPU_CHECK_EMULATE=1 runs the same script on the CPU under the
# emulator (.ci/run does, so the script itself is tested on every landing). See docs/gpu.md.
GPU_OUT ?= out/gpu_check
gpu-check:
	GPU_OUT=$(GPU_OUT) bash dev/gpu_check.sh

# the emulated GPU tests' own test: planted bugs must be caught (test/mutants.sh)
test-mutants:
	bash test/mutants.sh

.PHONY: gpu-check test-mutants

ifneq ($(shell command -v $(NVCC)),)
GPU_TEST_BINS = train_llama_cu build/test_llama_gpu build/test_llama_gpu_host $(CUDA_WORKBENCHES)
GPU_TEST_BINS += train_gpt2_cu build/test_gpt2_gpu_host
GPU_TEST_BINS += $(EMU_BINS) build/ptxas_report.txt
endif

# ---------------------------------------------------------------------------
# GPT-2 on the GPU
# train_gpt2.cu mirrors train_gpt2.c kernel by kernel (docs/gpu.md, "GPT-2 on the GPU").
# test/test_gpt2_gpu.sh runs the host-side checks everywhere and,
# on a machine with a GPU, compares ./train_gpt2_cu with ./train_gpt2 (make test-gpu).
train_gpt2_cu: train_gpt2.cu $(COMMON) $(CUDNN_DEPS)
	$(NVCC) $(NVCCFLAGS) $(CUDNN_USE) -o $@ $< $(CUDNN_LINK) $(CUDA_LIBS)

# host-side checks of train_gpt2.cu (cuBLAS emulated, buckets, table, init): no GPU needed
build/test_gpt2_gpu_host: test/test_gpt2_gpu_host.cu test/cublas_host.h train_gpt2.cu $(COMMON)
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -o $@ $< $(CUDA_LIBS)


# ---------------------------------------------------------------------------
# cuDNN attention, `--attention cudnn` (docs/gpu.md, "cuDNN attention"): cuDNN's fused causal
# SDPA through NVIDIA's header-only cudnn-frontend, in common/cudnn_att.cu, compiled once into
# build/cudnn_att.o (43 CPU seconds: the frontend is heavy C++) and linked with -lcudnn.
#   make cuda USE_CUDNN=1      train_llama_cu, train_gpt2_cu (and the _mpi ones) with it
#   make cuda-cudnn            build/train_llama_cu_cudnn, build/train_gpt2_cu_cudnn: the same,
#                              beside the plain programs, and build/test_cudnn_att (what CI
#                              and gpu-check build)
# The frontend's headers come from the PyPI wheel nvidia-cudnn-frontend (pinned below), unpacked
# into build/cudnn-frontend/ by `make cudnn-frontend`. A machine without network (a lent GPU)
# cannot fetch them: carry build/cudnn-frontend there (`make gpu-check-prepare` fetches it and
# lists what to carry). cuDNN itself: the toolkit's, or CUDNN_DIR=folder with include/ and lib/
# (e.g. the pip package nvidia-cudnn-cu13's folder). The emulator cannot run cuDNN: emulated
# builds never define USE_CUDNN.
build/use_cudnn.txt: FORCE
	@mkdir -p build; echo "$(USE_CUDNN)" | cmp -s - $@ 2>/dev/null || echo "$(USE_CUDNN)" > $@

$(CUDNN_FRONTEND_DONE):
	@rm -rf $(CUDNN_FRONTEND) $(CUDNN_FRONTEND).tmp && mkdir -p $(CUDNN_FRONTEND).tmp
	@echo "cudnn-frontend: downloading the wheel nvidia-cudnn-frontend==$(CUDNN_FRONTEND_VERSION) from PyPI (for its headers)"
	@$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
		--platform manylinux_2_28_x86_64 --timeout 20 --retries 1 -d $(CUDNN_FRONTEND).tmp \
		nvidia-cudnn-frontend==$(CUDNN_FRONTEND_VERSION) || { rm -rf $(CUDNN_FRONTEND).tmp; \
		echo "cudnn-frontend: could not download nvidia-cudnn-frontend==$(CUDNN_FRONTEND_VERSION) (no network?)." \
		"USE_CUDNN=1 needs its headers in $(CUDNN_FRONTEND)/: fetch them on a machine with network" \
		"(make cudnn-frontend) and carry that folder here" >&2; exit 1; }
	@$(PYTHON) -c "import glob, sys, zipfile; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/*.whl')[0]); \
		[z.extract(n, sys.argv[2]) for n in z.namelist() if n.startswith('include/')]" $(CUDNN_FRONTEND).tmp $(CUDNN_FRONTEND)
	@rm -rf $(CUDNN_FRONTEND).tmp
	@test -f $(CUDNN_FRONTEND)/include/cudnn_frontend.h || { echo "cudnn-frontend: the wheel had no include/cudnn_frontend.h" >&2; exit 1; }
	@touch $@ && echo "cudnn-frontend: $(CUDNN_FRONTEND)/include ($$(du -sh $(CUDNN_FRONTEND) | cut -f1))"
cudnn-frontend: $(CUDNN_FRONTEND_DONE)

# The frontend's JSON (de)serialisation is not used: skipping it halves this compile. Its host
# code runs when a graph is built or launched, not per element: -O1 for the host saves another
# quarter (ptxas optimises the device code either way).
build/cudnn_att.o: common/cudnn_att.cu common/cudnn_att.h $(CUDNN_FRONTEND_DONE)
	@mkdir -p build
	$(NVCC) $(filter-out -O3,$(NVCCFLAGS)) -O1 -isystem $(CUDNN_FRONTEND)/include $(CUDNN_CFLAGS) \
		-DCUDNN_FRONTEND_SKIP_JSON_LIB -c -o $@ $<
# each compiled apart from its link, so that make -j compiles it while cudnn_att.o compiles
build/%_cudnn.o: %.cu $(COMMON)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -DUSE_CUDNN $(CUDNN_CFLAGS) -c -o $@ $<
build/train_llama_cu_cudnn: build/train_llama_cudnn.o build/cudnn_att.o
	$(NVCC) $(NVCCFLAGS) -o $@ $^ $(CUDNN_LDLIBS) $(CUDA_LIBS)
build/train_gpt2_cu_cudnn: build/train_gpt2_cudnn.o build/cudnn_att.o
	$(NVCC) $(NVCCFLAGS) -o $@ $^ $(CUDNN_LDLIBS) $(CUDA_LIBS)
# cuDNN's attention against the flash kernels on random tensors (GPU only; gpu-check runs it)
build/test_cudnn_att: build/test/test_cudnn_att_cudnn.o build/cudnn_att.o
	$(NVCC) $(NVCCFLAGS) -o $@ $^ $(CUDNN_LDLIBS)
cuda-cudnn: build/train_llama_cu_cudnn build/train_gpt2_cu_cudnn build/test_cudnn_att

# what a lent GPU machine (no network) needs carried beside the working tree, fetched here
gpu-check-prepare: $(CUDNN_FRONTEND_DONE)
	@echo "gpu-check: carry these ignored paths to the GPU machine: $(CUDNN_FRONTEND)$(if $(LLMC_DIR), $(LLMC_DIR))"

FORCE:
.PHONY: cudnn-frontend cuda-cudnn gpu-check-prepare FORCE

# ---------------------------------------------------------------------------
# The CUDA programs on the CPU: test/emu/ (docs/emulator.md). cuda2host.py rewrites each
# launch k<<<g, b>>>(a) for the host (every line stays where it was); g++ compiles the
# result with test/emu/cuda_emu.h and cublas_emu.h in front, so the unchanged .cu files
# run their kernels here, one fiber per CUDA thread. `make train_llama_emu` gives a
# ./train_llama_emu that takes train_llama_cu's flags; EMU_SCHED=inorder|reverse|random.
EMU_CXX ?= g++
CUDA_INCLUDE ?= $(abspath $(dir $(shell command -v $(NVCC) 2>/dev/null))/../include)
EMU_SRC = build/emu/src
# headers with kernel launches are rewritten too; their copies come first on the include path
EMU_HEADERS = test/emu/cuda_emu.h test/emu/cublas_emu.h $(EMU_SRC)/common/cuda_attention.h $(EMU_SRC)/common/cuda_dp.h \
	$(EMU_SRC)/common/cuda_common.h
EMU_FLAGS = -std=gnu++17 -march=native -Wall -Wextra -Wno-unused-function -Wno-unused-parameter -Wno-missing-field-initializers -Wno-format-truncation -Wno-unknown-pragmas \
	-x c++ -include test/emu/cuda_emu.h -include test/emu/cublas_emu.h -I$(CUDA_INCLUDE) -I$(EMU_SRC)/common -Icommon -Itest
EMU_OPT = -O2 -fopenmp
EMU_ASAN = -O1 -g -fopenmp -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
EMU_TSAN = -O1 -g -fsanitize=thread -Wno-unknown-pragmas

# the rewritten sources (a .cu that includes another .cu finds its rewritten copy)
.PRECIOUS: $(EMU_SRC)/%.cu $(EMU_SRC)/common/%.h
$(EMU_SRC)/%.cu: %.cu test/emu/cuda2host.py
	@$(PYTHON) test/emu/cuda2host.py . $(EMU_SRC) $<
$(EMU_SRC)/common/%.h: common/%.h test/emu/cuda2host.py
	@$(PYTHON) test/emu/cuda2host.py . $(EMU_SRC) $<

train_llama_emu: $(EMU_SRC)/train_llama.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_OPT) $(EMU_FLAGS) -o $@ $< -lm
train_gpt2_emu: $(EMU_SRC)/train_gpt2.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_OPT) $(EMU_FLAGS) -o $@ $< -lm
build/emu/test_llama_gpu: $(EMU_SRC)/test/test_llama_gpu.cu $(EMU_SRC)/train_llama.cu test/llama_fixture.h $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_OPT) $(EMU_FLAGS) -o $@ $< -lm
build/emu/test_emu: $(EMU_SRC)/test/emu/test_emu.cu $(EMU_SRC)/train_llama.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_OPT) $(EMU_FLAGS) -o $@ $< -lm
# AddressSanitizer + UBSan over the emulated programs (kernels included)
build/emu/train_llama_asan: $(EMU_SRC)/train_llama.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_ASAN) $(EMU_FLAGS) -o $@ $< -lm
build/emu/train_gpt2_asan: $(EMU_SRC)/train_gpt2.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_ASAN) $(EMU_FLAGS) -o $@ $< -lm
build/emu/test_llama_gpu_asan: $(EMU_SRC)/test/test_llama_gpu.cu $(EMU_SRC)/train_llama.cu test/llama_fixture.h $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_ASAN) $(EMU_FLAGS) -o $@ $< -lm
# ThreadSanitizer: each CUDA thread a TSan fiber, barriers the happens-before edges
build/emu/test_emu_tsan: $(EMU_SRC)/test/emu/test_emu.cu $(EMU_SRC)/train_llama.cu $(EMU_HEADERS) $(COMMON)
	$(EMU_CXX) $(EMU_TSAN) $(EMU_FLAGS) -o $@ $< -lm
# the kernel workbenches of dev/cuda, emulated (their timings are the emulator's, not a GPU's)
build/emu/dev/cuda/%: $(EMU_SRC)/dev/cuda/%.cu dev/cuda/common.h common/cuda_reduce.h $(EMU_HEADERS)
	@mkdir -p $(dir $@)
	$(EMU_CXX) $(EMU_OPT) $(EMU_FLAGS) -Idev/cuda -o $@ $< -lm
EMU_WORKBENCHES = $(patsubst %.cu,build/emu/%,$(wildcard dev/cuda/*.cu))

EMU_BINS = train_llama_emu train_gpt2_emu build/emu/test_llama_gpu build/emu/test_emu build/emu/test_emu_tsan \
	build/emu/train_llama_asan build/emu/train_gpt2_asan build/emu/test_llama_gpu_asan $(EMU_WORKBENCHES)
emu: $(EMU_BINS)

# registers, spills and shared memory of every kernel, from nvcc's own assembler (no GPU
# needed): build/ptxas_report.txt; a kernel that spills fails test/test_ptxas.sh
build/ptxas_report.txt: train_llama.cu train_gpt2.cu $(COMMON)
	@mkdir -p build
	{ for f in train_llama.cu train_gpt2.cu; do echo "== $$f"; \
	  $(NVCC) $(NVCCFLAGS) -Xptxas -v -c -o /dev/null $$f 2>&1 || exit 1; done; } > $@.tmp && mv $@.tmp $@

.PHONY: emu

# ---------------------------------------------------------------------------
# Data parallelism over MPI (docs/parallel.md): the CPU trainers built with -DUSE_MPI by
# mpicc, run as `mpirun -np N ./train_llama_mpi ...`; without mpicc they are not built and
# test/test_mpi.sh skips (Debian: apt-get install libopenmpi-dev openmpi-bin; .ci/run does).
MPICC ?= mpicc
train_llama_mpi: train_llama.c $(COMMON)
	$(MPICC) $(CFLAGS) -DUSE_MPI -o $@ $< $(LDLIBS)
train_gpt2_mpi: train_gpt2.c $(COMMON)
	$(MPICC) $(CFLAGS) -DUSE_MPI -o $@ $< $(LDLIBS)
mpi: train_llama_mpi train_gpt2_mpi
.PHONY: mpi
ifneq ($(shell command -v $(MPICC)),)
MPI_TEST_BINS = train_llama_mpi train_gpt2_mpi
endif

# The CUDA programs on N GPUs (docs/parallel.md): -DUSE_MPI, MPI to start the ranks and pass
# NCCL's id (nvcc with mpicxx as its host compiler), NCCL (the CUDA toolkit's) for the vectors.
# Emulated: the same sources with test/emu/nccl_emu.h serving the NCCL calls by MPI, so
# test/test_mpi_gpu_emu.sh runs their 2-rank path on the CPU.
MPICXX ?= mpicxx
NCCL_LIBS = -lnccl
# the C API only: OpenMPI's C++ bindings warn under -Wextra
MPI_C_ONLY = -DOMPI_SKIP_MPICXX=1 -DMPICH_SKIP_MPICXX=1
train_llama_cu_mpi: train_llama.cu $(COMMON) $(CUDNN_DEPS)
	$(NVCC) -ccbin $(MPICXX) $(NVCCFLAGS) $(CUDNN_USE) $(MPI_C_ONLY) -DUSE_MPI -o $@ $< $(CUDNN_LINK) $(CUDA_LIBS) $(NCCL_LIBS)
train_gpt2_cu_mpi: train_gpt2.cu $(COMMON) $(CUDNN_DEPS)
	$(NVCC) -ccbin $(MPICXX) $(NVCCFLAGS) $(CUDNN_USE) $(MPI_C_ONLY) -DUSE_MPI -o $@ $< $(CUDNN_LINK) $(CUDA_LIBS) $(NCCL_LIBS)
train_llama_emu_mpi: $(EMU_SRC)/train_llama.cu $(EMU_HEADERS) test/emu/nccl_emu.h $(COMMON)
	$(MPICXX) $(EMU_OPT) $(EMU_FLAGS) $(MPI_C_ONLY) -DUSE_MPI -o $@ $< -lm
train_gpt2_emu_mpi: $(EMU_SRC)/train_gpt2.cu $(EMU_HEADERS) test/emu/nccl_emu.h $(COMMON)
	$(MPICXX) $(EMU_OPT) $(EMU_FLAGS) $(MPI_C_ONLY) -DUSE_MPI -o $@ $< -lm
cuda-mpi: train_llama_cu_mpi train_gpt2_cu_mpi
emu-mpi: train_llama_emu_mpi train_gpt2_emu_mpi
.PHONY: cuda-mpi emu-mpi
# with MPI here, make cuda and make emu build these too, and make test builds and runs them
ifneq ($(shell command -v $(MPICXX)),)
cuda: cuda-mpi
emu: emu-mpi
ifneq ($(shell command -v $(NVCC)),)
MPI_TEST_BINS += train_llama_cu_mpi train_gpt2_cu_mpi train_llama_emu_mpi train_gpt2_emu_mpi
endif
endif

# ---------------------------------------------------------------------------
# common/tokenizer.h against tiktoken and sentencepiece (test/test_tokenizer.sh)
build/test_tokenizer: test/test_tokenizer.c common/tokenizer.h $(COMMON)
	@mkdir -p build
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# ---------------------------------------------------------------------------
# tests
TEST_BINS = $(LLAMA_TEST_BINS) $(MLP_TEST_BINS)
TEST_BINS += build/test_tokenizer
TEST_BINS += $(GPT2_TEST_BINS)
TEST_BINS += $(GPU_TEST_BINS)
TEST_BINS += $(REF_TEST_BINS)
TEST_BINS += $(MPI_TEST_BINS)

# the builds in parallel on every core (the emulated GPU programs take most of it), then the tests
NPROC := $(shell nproc 2>/dev/null || echo 2)
test:
	$(MAKE) -j$(NPROC) $(TEST_BINS)
	./test/run.sh

test-asan: build/train_llama_asan build/test_llama_asan build/test_gpt2_asan build/train_gpt2_asan build/test_llama
	./test/run.sh asan

# ---------------------------------------------------------------------------
# Python tools for dev/ (data preparation, plots): a local virtual environment
$(VENV)/.done: dev/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r dev/requirements.txt
	touch $@
venv: $(VENV)/.done

clean:
	rm -rf build out train_llama mlp_sweep train_gpt2 train_llama_cu train_gpt2_cu train_llama_emu train_gpt2_emu train_llama_mpi train_gpt2_mpi \
		train_llama_cu_mpi train_gpt2_cu_mpi train_llama_emu_mpi train_gpt2_emu_mpi

# ---------------------------------------------------------------------------
# data
# Token shards (llm.c format) made by dev/data/prepare.py; see data/README.md.
# `make data` regenerates the committed Tiny Shakespeare shards.
PREPARE = $(VENV)/bin/python dev/data/prepare.py
data: $(VENV)/.done
	$(PREPARE) --tokenizer llama2 --out data/tinyshakespeare --name llama2 data/tinyshakespeare/input.txt
	$(PREPARE) --tokenizer gpt2 --out data/tinyshakespeare --name gpt2 data/tinyshakespeare/input.txt

# `make data-gutenberg [GUTENBERG=path/to/books.tar.xz]` unpacks the Gutenberg books into
# data/gutenberg/books/ and writes llama2 and gpt2 shards to data/gutenberg/ (not committed).
GUTENBERG ?= data/gutenberg/books.tar.xz
.PHONY: data-gutenberg
data-gutenberg: $(VENV)/.done
	@test -f "$(GUTENBERG)" || { echo "data-gutenberg: books archive not found: $(GUTENBERG) (set GUTENBERG=path/to/books.tar.xz)" >&2; exit 1; }
	rm -rf data/gutenberg/books
	mkdir -p data/gutenberg/books
	tar -xJf "$(GUTENBERG)" -C data/gutenberg/books
	$(PREPARE) --tokenizer llama2 --out data/gutenberg --name llama2 data/gutenberg/books
	$(PREPARE) --tokenizer gpt2 --out data/gutenberg --name gpt2 data/gutenberg/books
