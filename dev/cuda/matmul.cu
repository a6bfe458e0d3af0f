/*
 * dev/cuda/matmul.cu: train_llama.cu's gemm_batched(), a row-major interface over cuBLAS.
 *
 * cuBLAS is column-major; train_llama.cu asks it for C^T = op(B)^T . op(A)^T, which is
 * the row-major C = op(A) . op(B). Getting one of the four transpose cases or a leading
 * dimension wrong is the classic bug, so every case is checked here against a CPU loop,
 * and so are the three uses (forward out = in.W^T, dIn = dOut.W, dW += dOut^T.in) and the
 * strided batched form with attention's grouped-query strides.
 *
 *   version 1: fp32 (CUBLAS_COMPUTE_32F, pedantic math): the verification setting
 *   version 2: TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32), checked at 1e-2
 * Timing: the model's largest shapes (N = B*T = 8192 rows, C = 768, F = 2048, V = 32000).
 */
#include "common.h"

static cublasHandle_t handle;
static cublasComputeType_t compute = CUBLAS_COMPUTE_32F;

// the function as in train_llama.cu
static void gemm_batched(int transA, int transB, int M, int N, int K, const float *A, int lda, long strideA, const float *B,
                 int ldb, long strideB, float *C, int ldc, long strideC, int batch, int accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasCheck(cublasGemmStridedBatchedEx(handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           N, M, K, &alpha, B, CUDA_R_32F, ldb, strideB, A, CUDA_R_32F, lda, strideA,
                                           &beta, C, CUDA_R_32F, ldc, strideC, batch, compute, CUBLAS_GEMM_DEFAULT));
}

// CPU: C[m][n] (+)= sum_k A(m,k) B(k,n), A(m,k) = transA ? A[k*lda+m] : A[m*lda+k], likewise B
static void gemm_cpu(int transA, int transB, int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     float *C, int ldc, int accumulate) {
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double s = accumulate ? C[(long)m * ldc + n] : 0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(long)k * lda + m] : A[(long)m * lda + k];
                float b = transB ? B[(long)n * ldb + k] : B[(long)k * ldb + n];
                s += (double)a * b;
            }
            C[(long)m * ldc + n] = (float)s;
        }
    }
}

// one case: random A, B, C with padded leading dimensions, then compare
static void check_case(int transA, int transB, int M, int N, int K, int accumulate, double tol) {
    int lda = (transA ? M : K) + 3, ldb = (transB ? K : N) + 5, ldc = N + 7;
    long na = (long)(transA ? K : M) * lda, nb = (long)(transB ? N : K) * ldb, nc = (long)M * ldc;
    float *A = make_random_float(na, 1), *B = make_random_float(nb, 1), *C = make_random_float(nc, 1);
    float *dA = to_device(A, na), *dB = to_device(B, nb), *dC = to_device(C, nc);
    gemm_cpu(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, accumulate);
    gemm_batched(transA, transB, M, N, K, dA, lda, 0, dB, ldb, 0, dC, ldc, 0, 1, accumulate);
    char name[64];
    snprintf(name, sizeof(name), "%s%s%s", transA ? "A^T" : "A", transB ? ".B^T" : ".B", accumulate ? "+C" : "");
    validate_result(dC, C, name, nc, tol);
    free(A), free(B), free(C);
    cudaCheck(cudaFree(dA)), cudaCheck(cudaFree(dB)), cudaCheck(cudaFree(dC));
}

/*
 * Attention's grouped-query batching: q (B,NH,T,hs), k (B,NKV,T,hs), att (B,NH,T,T).
 * For each g < group, one strided batched call over the B*NKV pairs (b, kvh): q steps by
 * group*T*hs, k by T*hs, att by group*T*T. Checked against the per-head CPU product.
 */
static void check_gqa(int B, int NH, int NKV, int T, int hs, double tol) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    long nq = (long)B * NH * th, nk = (long)B * NKV * th, na = (long)B * NH * tt;
    float *q = make_random_float(nq, 1), *k = make_random_float(nk, 1), *att = (float *)calloc(na, sizeof(float));
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            gemm_cpu(0, 1, T, T, hs, q + ((long)b * NH + h) * th, hs, k + ((long)b * NKV + h / group) * th, hs,
                     att + ((long)b * NH + h) * tt, T, 0);
        }
    }
    float *dq = to_device(q, nq), *dk = to_device(k, nk), *datt = device_zeros<float>(na);
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 1, T, T, hs, dq + g * th, hs, group * th, dk, hs, th, datt + g * tt, T, group * tt, B * NKV, 0);
    }
    validate_result(datt, att, "GQA q.k^T", na, tol);
    free(q), free(k), free(att);
    cudaCheck(cudaFree(dq)), cudaCheck(cudaFree(dk)), cudaCheck(cudaFree(datt));
}

static void run_version(int version) {
    compute = version == 2 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    cublasCheck(cublasSetMathMode(handle, version == 2 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
    double tol = version == 2 ? 1e-2 : 1e-5;
    printf("version %d (%s)\n", version, version == 2 ? "TF32" : "fp32");
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            check_case(ta, tb, 67, 45, 129, 0, tol);
            check_case(ta, tb, 33, 70, 96, 1, tol);
        }
    }
    check_gqa(2, 8, 2, 40, 16, tol);
    check_gqa(2, 4, 1, 33, 8, tol);
    // timing: the model's three uses at train size (emulated: 64 rows, the timing means nothing there)
    int N = 8192, C = 768, F = 2048, V = 32000;
#ifdef CUDA_EMU
    N = 64;
#endif
    struct { const char *what; int Cin, Cout; } shapes[] = {{"qkvo (C->C)", C, C}, {"w1/w3 (C->F)", C, F},
                                                            {"w2 (F->C)", F, C}, {"lm_head (C->V)", C, V}};
    for (auto &s : shapes) {
        float *in = device_zeros<float>((long)N * s.Cin), *W = device_zeros<float>((long)s.Cout * s.Cin);
        float *out = device_zeros<float>((long)N * s.Cout), *dW = device_zeros<float>((long)s.Cout * s.Cin);
        float *din = device_zeros<float>((long)N * s.Cin);
        double flop = 2.0 * N * s.Cin * s.Cout;
        float fwd = benchmark(10, [&] { gemm_batched(0, 1, N, s.Cout, s.Cin, in, s.Cin, 0, W, s.Cin, 0, out, s.Cout, 0, 1, 0); });
        float bwd_w = benchmark(10, [&] { gemm_batched(1, 0, s.Cout, s.Cin, N, out, s.Cout, 0, in, s.Cin, 0, dW, s.Cin, 0, 1, 1); });
        float bwd_x = benchmark(10, [&] { gemm_batched(0, 0, N, s.Cin, s.Cout, out, s.Cout, 0, W, s.Cin, 0, din, s.Cin, 0, 1, 0); });
        printf("  %-16s forward %7.3f ms (%6.1f TFLOP/s) | dW %7.3f ms (%6.1f) | dIn %7.3f ms (%6.1f)\n", s.what, fwd,
               flop / fwd / 1e9, bwd_w, flop / bwd_w / 1e9, bwd_x, flop / bwd_x / 1e9);
        cudaCheck(cudaFree(in)), cudaCheck(cudaFree(W)), cudaCheck(cudaFree(out)), cudaCheck(cudaFree(dW));
        cudaCheck(cudaFree(din));
    }
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    cublasCheck(cublasCreate(&handle));
    for (int v = 1; v <= 2; v++) {
        if (version_selected(argc, argv, v)) run_version(v);
    }
    cublasCheck(cublasDestroy(handle));
    printf("matmul: all checks passed\n");
    return 0;
}
