/*
 * test/cublas_host.h: cuBLAS's strided batched GEMM emulated on the host, for the
 * GPU programs' host-side tests (test/test_llama_gpu_host.cu, test/test_gpt2_gpu_host.cu).
 * Include it before the .cu under test: it sets GEMM_STRIDED_BATCHED, the entry point
 * common/cuda_common.h's gemm_batched() calls, so the real index arithmetic runs on host memory.
 * Also: random inputs and a relative-error check that counts failures.
 */
#ifndef RESCALE_CUBLAS_HOST_H
#define RESCALE_CUBLAS_HOST_H

#include "utils.h"
#include <cublas_v2.h>

// cuBLAS's column-major strided batched GEMM on host memory, fp32 (the only type used).
static cublasStatus_t emulated_gemm(cublasHandle_t, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                                    int k, const void *alpha, const void *A, cudaDataType, int lda, long long strideA,
                                    const void *B, cudaDataType, int ldb, long long strideB, const void *beta, void *C,
                                    cudaDataType, int ldc, long long strideC, int batch, cublasComputeType_t,
                                    cublasGemmAlgo_t) {
    const float *a = (const float *)A, *b = (const float *)B;
    float *c = (float *)C, al = *(const float *)alpha, be = *(const float *)beta;
    for (int p = 0; p < batch; p++) {
        for (int i = 0; i < m; i++) {
            for (int j = 0; j < n; j++) {
                double s = 0;
                for (int q = 0; q < k; q++) {
                    float x = transa == CUBLAS_OP_N ? a[p * strideA + i + (long)q * lda] : a[p * strideA + q + (long)i * lda];
                    float y = transb == CUBLAS_OP_N ? b[p * strideB + q + (long)j * ldb] : b[p * strideB + j + (long)q * ldb];
                    s += (double)x * y;
                }
                float *cij = &c[p * strideC + i + (long)j * ldc];
                *cij = (float)(al * s + (be != 0 ? be * *cij : 0)); // beta = 0: C is not read (cuBLAS)
            }
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}
#define GEMM_STRIDED_BATCHED emulated_gemm

static int failures = 0;

static float *random_floats(long n, Rng *rng) {
    float *x = (float *)malloc_check(sizeof(float) * n);
    for (long i = 0; i < n; i++) x[i] = (float)(rng_uniform(rng) - 0.5);
    return x;
}

static void check(const char *what, const float *got, const float *want, long n) {
    double err = 0, ref = 0;
    for (long i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (e > err || e != e) err = e;
        ref = fmax(ref, fabs((double)want[i]));
    }
    double rel = err / (ref > 0 ? ref : 1);
    int ok = rel <= 1e-6;
    printf("  %-48s %6ld values, relative error %.1e%s\n", what, n, rel, ok ? "" : "   <-- FAIL");
    failures += !ok;
}

#endif // RESCALE_CUBLAS_HOST_H
