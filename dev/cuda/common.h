/*
 * dev/cuda/common.h: what every kernel workbench in dev/cuda/ does the same way.
 *
 * A workbench is one small program per kernel of train_llama.cu: a CPU reference
 * (the loop from train_llama.c), one or more GPU versions, a correctness check of
 * each version against the reference with a stated tolerance, and a timing.
 * Run one as `./rmsnorm` (every version) or `./rmsnorm 2` (version 2 only).
 * A failed check prints the worst element and exits 1.
 */
#ifndef DEV_CUDA_COMMON_H
#define DEV_CUDA_COMMON_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void cuda_check_(cudaError_t err, const char *src, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "CUDA error: %s [%s:%d]\n", cudaGetErrorString(err), src, line);
        exit(1);
    }
}
#define cudaCheck(call) cuda_check_((call), __FILE__, __LINE__)

static void cublas_check_(cublasStatus_t st, const char *src, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "cuBLAS error %d [%s:%d]\n", (int)st, src, line);
        exit(1);
    }
}
#define cublasCheck(call) cublas_check_((call), __FILE__, __LINE__)

static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

// A small deterministic generator, so that every run checks the same numbers.
static uint64_t bench_rng = 0x9E3779B97F4A7C15ULL;
static inline float rand_uniform(void) { // in [-1, 1)
    bench_rng ^= bench_rng >> 12;
    bench_rng ^= bench_rng << 25;
    bench_rng ^= bench_rng >> 27;
    return (float)((bench_rng * 0x2545F4914F6CDD1DULL) >> 40) / (float)(1 << 23) - 1.0f;
}

static float *make_random_float(long n, float scale) {
    float *x = (float *)malloc(sizeof(float) * n);
    for (long i = 0; i < n; i++) x[i] = scale * rand_uniform();
    return x;
}

static int *make_random_int(long n, int below) {
    int *x = (int *)malloc(sizeof(int) * n);
    for (long i = 0; i < n; i++) x[i] = (int)((rand_uniform() + 1.0f) * 0.5f * below) % below;
    return x;
}

template <typename T>
static T *to_device(const T *host, long n) {
    T *d;
    cudaCheck(cudaMalloc(&d, sizeof(T) * (n > 0 ? n : 1)));
    cudaCheck(cudaMemcpy(d, host, sizeof(T) * n, cudaMemcpyHostToDevice));
    return d;
}

template <typename T>
static T *device_zeros(long n) {
    T *d;
    cudaCheck(cudaMalloc(&d, sizeof(T) * (n > 0 ? n : 1)));
    cudaCheck(cudaMemset(d, 0, sizeof(T) * (n > 0 ? n : 1)));
    return d;
}

/*
 * Compare a GPU result with the CPU reference: |gpu - cpu| <= tol * (1 + |cpu|)
 * for every element. Prints the worst relative error; on a failure prints the
 * element and exits 1. Returns the worst error.
 */
static double validate_result(const float *d_result, const float *cpu, const char *name, long n, double tol) {
    float *gpu = (float *)malloc(sizeof(float) * n);
    cudaCheck(cudaMemcpy(gpu, d_result, sizeof(float) * n, cudaMemcpyDeviceToHost));
    double worst = 0;
    long at = 0;
    for (long i = 0; i < n; i++) {
        double e = fabs((double)gpu[i] - cpu[i]) / (1 + fabs((double)cpu[i]));
        if (e > worst || e != e) worst = e, at = i;
        if (e != e) break;
    }
    int ok = worst <= tol;
    printf("  %-12s %9ld values, worst error %.2e (tolerance %.0e) at [%ld]: gpu %.9g cpu %.9g%s\n", name, n, worst,
           tol, at, gpu[at], cpu[at], ok ? "" : "   <-- FAIL");
    free(gpu);
    if (!ok) exit(1);
    return worst;
}

// Time a launch (any callable) with CUDA events: a warm-up call, then the mean of `repeats` calls.
// Under the CPU emulator (test/emu/, CUDA_EMU defined) one timed call: the time is the
// emulator's, printed for completeness, never a speed.
template <typename F>
static float benchmark(int repeats, F launch) {
#ifdef CUDA_EMU
    repeats = 1;
#endif
    launch();
    cudaCheck(cudaGetLastError());
    cudaCheck(cudaDeviceSynchronize());
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    cudaCheck(cudaEventRecord(start));
    for (int i = 0; i < repeats; i++) launch();
    cudaCheck(cudaEventRecord(stop));
    cudaCheck(cudaEventSynchronize(stop));
    cudaCheck(cudaGetLastError());
    float ms = 0;
    cudaCheck(cudaEventElapsedTime(&ms, start, stop));
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    return ms / repeats;
}

// Which versions to run: all, or the one named on the command line.
static int version_selected(int argc, char **argv, int version) { return argc < 2 || atoi(argv[1]) == version; }

// A device must exist; say so plainly when it does not.
static void require_gpu(const char *program) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        fprintf(stderr, "%s: no CUDA GPU available; this workbench only runs on one\n", program);
        exit(1);
    }
    cudaCheck(cudaSetDevice(0));
#ifdef CUDA_EMU
    printf("%s: EMULATED on the CPU (test/emu/, EMU_SCHED=%s): the checks are real, the timings are the "
           "emulator's, not a GPU's\n", program, emu::schedule_name());
#endif
}

// The warp and block reductions train_llama.cu and train_gpt2.cu use.
#include "../../common/cuda_reduce.h"

#endif // DEV_CUDA_COMMON_H
