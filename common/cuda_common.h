/*
 * common/cuda_common.h: what both CUDA trainers (train_llama.cu, train_gpt2.cu) do
 * the same way: checked CUDA and cuBLAS calls, zeroed device allocations, launch
 * geometry, warp and block reductions, and gemm_batched(), the one row-major matmul over
 * cuBLAS that every linear layer and attention product goes through.
 * Include after utils.h, with floatX and CUBLAS_FLOATX defined (the activation type).
 * With precision_bf16 set, gemm_batched's A and B are bf16 (common/bf16.h) and C is floatX.
 */
#ifndef RESCALE_CUDA_COMMON_H
#define RESCALE_CUDA_COMMON_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "bf16.h" // the bf16 type and its rounding, as train_llama.c rounds
#include "utils.h"

static void cuda_check_(cudaError_t err, const char *what, const char *src, int line) {
    if (err != cudaSuccess) die("CUDA error in %s: %s [%s:%d]", what, cudaGetErrorString(err), src, line);
}
#define cudaCheck(call) cuda_check_((call), #call, __FILE__, __LINE__)
// after a kernel launch: a bad launch configuration shows up here
#define launchCheck() cuda_check_(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

static void cublas_check_(cublasStatus_t st, const char *what, const char *src, int line) {
    if (st != CUBLAS_STATUS_SUCCESS) die("cuBLAS error %d in %s [%s:%d]", (int)st, what, src, line);
}
#define cublasCheck(call) cublas_check_((call), #call, __FILE__, __LINE__)

static void *cuda_malloc_(size_t bytes, const char *src, int line) {
    void *p = NULL;
    cudaError_t err = cudaMalloc(&p, bytes > 0 ? bytes : 1);
    if (err != cudaSuccess) {
        die("out of GPU memory allocating %zu bytes: %s [%s:%d]", bytes, cudaGetErrorString(err), src, line);
    }
    cudaCheck(cudaMemset(p, 0, bytes > 0 ? bytes : 1));
    return p;
}
#define cuda_calloc(n, size) cuda_malloc_((size_t)(n) * (size), __FILE__, __LINE__)

static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

#define BLOCK 256
// grid for an elementwise kernel over n items that loops grid-stride
static inline int grid_for(long n) {
    long g = (n + BLOCK - 1) / BLOCK;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}
// a grid-stride loop over i = 0..n-1
#define GRID_STRIDE(i, n)                                                                                              \
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

#include "cuda_reduce.h" // warp_sum, block_sum, block_max, ...

// --precision bf16 (train_llama.cu; docs/gpu.md, "bf16"): every matmul reads its two inputs as
// bf16 (cuBLAS's CUDA_R_16BF, made by bf16_round: common/bf16.h) and writes fp32.
static int precision_bf16 = 0; // set before gpu_setup: cublas_setup and gemm_batched read it

// a kernel's store into a floatX buffer, or rounded into a bf16 one (kernels templated on either)
__device__ inline void store_as(floatX *p, float x) { *p = (floatX)x; }
__device__ inline void store_as(bf16 *p, float x) { *p = bf16_round(x); }

// dst = bf16 copy of src (n values), for a matmul input no kernel of its own writes in bf16
__global__ void to_bf16_kernel(bf16 *dst, const float *src, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        dst[i] = bf16_round(src[i]);
    }
}
static void to_bf16(bf16 *dst, const float *src, long n) {
    to_bf16_kernel<<<grid_for(n), BLOCK>>>(dst, src, n);
    cuda_check_(cudaGetLastError(), "kernel launch", __FILE__, __LINE__);
}

static cublasHandle_t cublas_handle;
static cublasComputeType_t cublas_compute = CUBLAS_COMPUTE_32F; // CUBLAS_COMPUTE_32F_FAST_TF32 with --tf32 1

// fp32: pedantic (no tensor cores) or TF32; bf16: the default math mode, so that cuBLAS may
// take the tensor cores, with fp32 sums (CUBLAS_COMPUTE_32F)
static void cublas_setup(int tf32) {
    cublasCheck(cublasCreate(&cublas_handle));
    cublas_compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasMath_t math = tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH;
    cublasCheck(cublasSetMathMode(cublas_handle, precision_bf16 ? CUBLAS_DEFAULT_MATH : math));
}

/*
 * gemm_batched: row-major C (M,N) = op(A) . op(B) (+ C if accumulate), repeated over
 * `batch` matrices that are strideA/strideB/strideC elements apart.
 * op(A) is A (M,K) with row stride lda, or with transA the transpose of a
 * stored (K,M). cuBLAS is column-major: a row-major matrix is its transpose
 * in column-major, so we ask cuBLAS for C^T = op(B)^T . op(A)^T, which is the
 * same call with A and B swapped. One routine serves out = in.W^T,
 * dIn = dOut.W and dW = dOut^T.in, as gemm() does in the CPU programs, and every
 * attention product.
 */
// The cuBLAS entry point; test/test_llama_gpu_host.cu and test/test_gpt2_gpu_host.cu define
// it as a host emulation, to check this mapping on machines without a GPU.
#ifndef GEMM_STRIDED_BATCHED
#define GEMM_STRIDED_BATCHED cublasGemmStridedBatchedEx
#endif
static void gemm_batched(int transA, int transB, int M, int N, int K, const void *A, int lda, long strideA,
                         const void *B, int ldb, long strideB, void *C, int ldc, long strideC, int batch,
                         int accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cudaDataType in_type = precision_bf16 ? CUDA_R_16BF : CUBLAS_FLOATX; // A and B; C stays floatX
    cublasCheck(GEMM_STRIDED_BATCHED(cublas_handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                     transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, in_type, ldb, strideB,
                                     A, in_type, lda, strideA, &beta, C, CUBLAS_FLOATX, ldc, strideC, batch,
                                     cublas_compute, CUBLAS_GEMM_DEFAULT));
}

// a matmul's input: x in fp32, its bf16 copy x16 with --precision bf16
static const void *mm_in(const float *x, const bf16 *x16) {
    return precision_bf16 ? (const void *)x16 : (const void *)x;
}

// The trainers' linear layers. out (N, Cout) = inp (N, Cin) . W^T, W (Cout, Cin) as
// nn.Linear stores it (no bias). Each input comes with its bf16 copy (NULL in fp32).
static void matmul_forward(floatX *out, const floatX *inp, const bf16 *inp16, const float *W, const bf16 *W16, int N,
                           int Cin, int Cout) {
    gemm_batched(0, 1, N, Cout, Cin, mm_in(inp, inp16), Cin, 0, mm_in(W, W16), Cin, 0, out, Cout, 0, 1, 0);
}

// dW += dout^T . inp;  dinp = dout . W (or += when accumulate_dinp)
static void matmul_backward(floatX *dinp, float *dW, const floatX *dout, const bf16 *dout16, const floatX *inp,
                            const bf16 *inp16, const float *W, const bf16 *W16, int N, int Cin, int Cout,
                            int accumulate_dinp) {
    const void *dy = mm_in(dout, dout16);
    gemm_batched(1, 0, Cout, Cin, N, dy, Cout, 0, mm_in(inp, inp16), Cin, 0, dW, Cin, 0, 1, 1);
    gemm_batched(0, 0, N, Cin, Cout, dy, Cout, 0, mm_in(W, W16), Cin, 0, dinp, Cin, 0, 1, accumulate_dinp);
}

#endif // RESCALE_CUDA_COMMON_H
