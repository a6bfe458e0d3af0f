/*
 * test/emu/cublas_emu.h: the part of cuBLAS the project calls, on the CPU, for programs
 * built with test/emu/cuda_emu.h. Forced in after it (-include).
 *
 * cublasGemmStridedBatchedEx in fp32, column-major as cuBLAS is: every product summed in
 * double and rounded once, so the emulated GEMM is more accurate than a GPU's (which
 * sums in float, in an order of its own). With CUBLAS_COMPUTE_32F_FAST_TF32 the inputs
 * are first rounded to TF32 (10 mantissa bits, to nearest), which is what a tensor core
 * reads; the GPU's summation is still not reproduced. A and B may be CUDA_R_16BF (bf16: the
 * top 16 bits of a float, train_llama.cu's --precision bf16); their products are exact in
 * float, and C is CUDA_R_32F.
 *
 * It checks what cuBLAS checks (sizes, leading dimensions) and what it does not: that
 * every matrix of the batch lies inside one device allocation, so a wrong stride or
 * leading dimension stops the program with the call's numbers instead of reading
 * someone else's memory.
 */
#ifndef RESCALE_CUBLAS_EMU_H
#define RESCALE_CUBLAS_EMU_H

#include <cublas_v2.h>

struct cublasContext {
    cublasMath_t math;
};

EMU_API cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = new cublasContext{CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}
EMU_API cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
EMU_API cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

namespace emu {
// round a float to TF32: keep 10 of the 23 mantissa bits, to nearest, ties to even
inline float to_tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0xfffu + ((u >> 13) & 1)) & ~0x1fffu; // not inf/nan
    memcpy(&x, &u, 4);
    return x;
}

// a matrix of `rows` x `cols` (column-major, leading dimension ld), `batch` of them
// `stride` elements apart, must lie inside one device allocation
// (elem bytes an element)
inline void check_matrix(const char *name, const void *p, size_t elem, int rows, int cols, int ld, long long stride,
                         int batch, int m, int n, int k) {
    if (rows == 0 || cols == 0 || batch == 0) return;
    long long last = (long long)(cols - 1) * ld + (rows - 1) + (long long)(batch - 1) * stride;
    if (stride < 0 || !registry().holds(p, (size_t)(last + 1) * elem))
        fail("cublasGemmStridedBatchedEx(m %d, n %d, k %d): %s (%d x %d, ld %d, stride %lld, batch %d, %zu-byte "
             "elements) reaches outside its device allocation",
             m, n, k, name, rows, cols, ld, stride, batch, elem);
}

// element i of an fp32 or bf16 (CUDA_R_16BF) matrix, as a float
inline float element(const void *p, bool is_bf16, long i) {
    if (!is_bf16) return ((const float *)p)[i];
    uint32_t u = (uint32_t)((const uint16_t *)p)[i] << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}
} // namespace emu

EMU_API cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t transa,
                                                  cublasOperation_t transb, int m, int n, int k, const void *alpha,
                                                  const void *A, cudaDataType Atype, int lda, long long strideA,
                                                  const void *B, cudaDataType Btype, int ldb, long long strideB,
                                                  const void *beta, void *C, cudaDataType Ctype, int ldc,
                                                  long long strideC, int batch, cublasComputeType_t compute,
                                                  cublasGemmAlgo_t) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    // fp32 inputs, or bf16 ones (both the same), into fp32 C
    if (Atype != Btype || (Atype != CUDA_R_32F && Atype != CUDA_R_16BF) || Ctype != CUDA_R_32F)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    const bool in16 = Atype == CUDA_R_16BF;
    if (in16 && compute == CUBLAS_COMPUTE_32F_FAST_TF32) return CUBLAS_STATUS_NOT_SUPPORTED;
    const size_t in_elem = in16 ? 2 : 4;
    if (compute != CUBLAS_COMPUTE_32F && compute != CUBLAS_COMPUTE_32F_FAST_TF32 &&
        compute != CUBLAS_COMPUTE_32F_PEDANTIC)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    int arows = transa == CUBLAS_OP_N ? m : k, acols = transa == CUBLAS_OP_N ? k : m;
    int brows = transb == CUBLAS_OP_N ? k : n, bcols = transb == CUBLAS_OP_N ? n : k;
    // cuBLAS's own argument checks (it returns INVALID_VALUE for these)
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, arows) || ldb < std::max(1, brows) ||
        ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    emu::check_matrix("A", A, in_elem, arows, acols, lda, strideA, batch, m, n, k);
    emu::check_matrix("B", B, in_elem, brows, bcols, ldb, strideB, batch, m, n, k);
    emu::check_matrix("C", C, 4, m, n, ldc, strideC, batch, m, n, k);
    const float al = *(const float *)alpha, be = *(const float *)beta;
    const bool tf32 = compute == CUBLAS_COMPUTE_32F_FAST_TF32;
    std::vector<float> a((size_t)m * k), b((size_t)n * k); // op(A) by rows, op(B) by columns: k contiguous
    for (int p = 0; p < batch; p++) {
        const char *Ap = (const char *)A + p * strideA * in_elem, *Bp = (const char *)B + p * strideB * in_elem;
        float *Cp = (float *)C + p * strideC;
#pragma omp parallel for
        for (int i = 0; i < m; i++)
            for (int q = 0; q < k; q++) {
                float x = emu::element(Ap, in16, transa == CUBLAS_OP_N ? i + (long)q * lda : q + (long)i * lda);
                a[(size_t)i * k + q] = tf32 ? emu::to_tf32(x) : x;
            }
#pragma omp parallel for
        for (int j = 0; j < n; j++)
            for (int q = 0; q < k; q++) {
                float y = emu::element(Bp, in16, transb == CUBLAS_OP_N ? q + (long)j * ldb : j + (long)q * ldb);
                b[(size_t)j * k + q] = tf32 ? emu::to_tf32(y) : y;
            }
// four rows of op(A) against one column of op(B) at a time: each column is read once per four
#pragma omp parallel for collapse(2) schedule(static)
        for (int j = 0; j < n; j++)
            for (int i0 = 0; i0 < m; i0 += 4) {
                const float *y = &b[(size_t)j * k];
                const float *x0 = &a[(size_t)i0 * k];
                const float *x1 = i0 + 1 < m ? x0 + k : x0, *x2 = i0 + 2 < m ? x0 + 2 * k : x0;
                const float *x3 = i0 + 3 < m ? x0 + 3 * k : x0;
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (int q = 0; q < k; q++) {
                    double yq = y[q];
                    s0 += x0[q] * yq, s1 += x1[q] * yq, s2 += x2[q] * yq, s3 += x3[q] * yq;
                }
                double s[4] = {s0, s1, s2, s3};
                for (int i = i0; i < i0 + 4 && i < m; i++) {
                    float *c = &Cp[i + (long)j * ldc];
                    *c = (float)(al * s[i - i0] + (be != 0.0f ? (double)be * *c : 0.0)); // beta 0: C is not read
                }
            }
    }
    return CUBLAS_STATUS_SUCCESS;
}

#endif // RESCALE_CUBLAS_EMU_H
