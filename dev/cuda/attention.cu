/*
 * dev/cuda/attention.cu: causal self-attention with grouped-query heads, forward and
 * backward (train_llama.cu's attention_forward / attention_backward).
 *
 * q (B,T,NH,hs), k and v (B,T,NKV,hs); query head h reads kv head h / (NH/NKV);
 * att (B,NH,T,T) keeps the softmax probabilities; out (B,T,NH,hs).
 *
 *   version 1: one thread per (b, h, t) query row doing train_llama.c's loops (forward only):
 *              easy to trust, slow (each thread reads all of k and v for its head)
 *   version 2: permute to (B,nh,T,hs), cuBLAS strided batched q.k^T per query-head group,
 *              a causal softmax kernel (one warp per row), att.v, permute back; the
 *              backward the same way (train_llama.cu's --attention matmul)
 *   version 3: common/cuda_attention.h, the trainers' default (--attention flash): no T x T
 *              matrix, online softmax in the forward, p recomputed from the log-sum-exp in a
 *              dq kernel and a dk, dv kernel
 *   version 4: version 3 with `round` (train_llama.cu's --precision bf16), against the CPU loops
 *              rounding every product's inputs to bf16 where train_llama.c's bf16 matmuls do; the
 *              same results must be much further from the unrounded loops' (the rounding happened)
 */
#include "common.h"
#include "cuda_attention.h"

// ---------------------------------------------------------------------------
// CPU reference (train_llama.c, without its OpenMP and lane tricks). With `round`, every
// product's inputs are rounded to bf16 as train_llama.c --precision bf16 rounds them.
#define RND(x) (round ? bf16_rounded(x) : (x))

static void attention_forward_cpu(float *out, float *att, const float *q, const float *k, const float *v, int B, int T,
                                  int NH, int NKV, int hs, int round = 0) {
    int group = NH / NKV;
    float scale = (float)(1.0 / sqrt((double)hs));
    long qs = (long)NH * hs, ks = (long)NKV * hs;
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                int kvh = h / group;
                const float *qt = q + ((long)b * T + t) * qs + h * hs;
                float *a = att + (((long)b * NH + h) * T + t) * T;
                float maxv = -INFINITY;
                for (int t2 = 0; t2 <= t; t2++) {
                    float d = 0;
                    for (int i = 0; i < hs; i++) d += RND(qt[i]) * RND(k[((long)b * T + t2) * ks + kvh * hs + i]);
                    a[t2] = d * scale;
                    maxv = fmaxf(maxv, a[t2]);
                }
                double sum = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    a[t2] = expf(a[t2] - maxv);
                    sum += a[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) a[t2] = (float)(a[t2] / sum);
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0;
                float *o = out + ((long)b * T + t) * qs + h * hs;
                for (int i = 0; i < hs; i++) {
                    float s = 0;
                    for (int t2 = 0; t2 <= t; t2++) s += RND(a[t2]) * RND(v[((long)b * T + t2) * ks + kvh * hs + i]);
                    o[i] = s;
                }
            }
        }
    }
}

static void attention_backward_cpu(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                   const float *v, const float *att, int B, int T, int NH, int NKV, int hs,
                                   int round = 0) {
    int group = NH / NKV;
    float scale = (float)(1.0 / sqrt((double)hs));
    long qs = (long)NH * hs, ks = (long)NKV * hs;
    memset(dq, 0, sizeof(float) * B * T * qs);
    memset(dk, 0, sizeof(float) * B * T * ks);
    memset(dv, 0, sizeof(float) * B * T * ks);
    float *datt = (float *)malloc(sizeof(float) * T);
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            int kvh = h / group;
            for (int t = 0; t < T; t++) {
                const float *a = att + (((long)b * NH + h) * T + t) * T;
                const float *dy = dout + ((long)b * T + t) * qs + h * hs;
                const float *qt = q + ((long)b * T + t) * qs + h * hs;
                float *dqt = dq + ((long)b * T + t) * qs + h * hs;
                double s = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const float *vt2 = v + ((long)b * T + t2) * ks + kvh * hs;
                    float *dvt2 = dv + ((long)b * T + t2) * ks + kvh * hs;
                    float d = 0;
                    for (int i = 0; i < hs; i++) d += RND(dy[i]) * RND(vt2[i]);
                    datt[t2] = d;
                    for (int i = 0; i < hs; i++) dvt2[i] += RND(a[t2]) * RND(dy[i]);
                    s += a[t2] * datt[t2];
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    float dpre = RND(a[t2] * (datt[t2] - (float)s) * scale);
                    const float *kt2 = k + ((long)b * T + t2) * ks + kvh * hs;
                    float *dkt2 = dk + ((long)b * T + t2) * ks + kvh * hs;
                    for (int i = 0; i < hs; i++) dqt[i] += dpre * RND(kt2[i]);
                    for (int i = 0; i < hs; i++) dkt2[i] += dpre * RND(qt[i]);
                }
            }
        }
    }
    free(datt);
}
#undef RND

// the worst error of a GPU result against a CPU one, validate_result's measure, without its verdict
static double worst_error(const float *d_result, const float *cpu, long n) {
    float *gpu = (float *)malloc(sizeof(float) * n);
    cudaCheck(cudaMemcpy(gpu, d_result, sizeof(float) * n, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (long i = 0; i < n; i++) worst = fmax(worst, fabs((double)gpu[i] - cpu[i]) / (1 + fabs((double)cpu[i])));
    free(gpu);
    return worst;
}

// ---------------------------------------------------------------------------
// version 1: a thread per query row

__global__ void attention_forward_kernel1(float *out, float *att, const float *q, const float *k, const float *v, int B,
                                          int T, int NH, int NKV, int hs) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * T) return;
    int t = idx % T, h = idx / T % NH, b = idx / (T * NH);
    int kvh = h / (NH / NKV);
    float scale = 1.0f / sqrtf((float)hs);
    long qs = (long)NH * hs, ks = (long)NKV * hs;
    const float *qt = q + ((long)b * T + t) * qs + h * hs;
    float *a = att + (long)idx * T;
    float maxv = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
        float d = 0;
        for (int i = 0; i < hs; i++) d += qt[i] * k[((long)b * T + t2) * ks + kvh * hs + i];
        a[t2] = d * scale;
        maxv = fmaxf(maxv, a[t2]);
    }
    float sum = 0;
    for (int t2 = 0; t2 <= t; t2++) {
        a[t2] = expf(a[t2] - maxv);
        sum += a[t2];
    }
    for (int t2 = 0; t2 < T; t2++) a[t2] = t2 <= t ? a[t2] / sum : 0.0f;
    float *o = out + ((long)b * T + t) * qs + h * hs;
    for (int i = 0; i < hs; i++) {
        float s = 0;
        for (int t2 = 0; t2 <= t; t2++) s += a[t2] * v[((long)b * T + t2) * ks + kvh * hs + i];
        o[i] = s;
    }
}

// ---------------------------------------------------------------------------
// version 2: train_llama.cu's kernels and calls

static cublasHandle_t handle;

static void gemm_batched(int transA, int transB, int M, int N, int K, const float *A, int lda, long strideA, const float *B,
                 int ldb, long strideB, float *C, int ldc, long strideC, int batch, int accumulate) {
    const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    cublasCheck(cublasGemmStridedBatchedEx(handle, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                           N, M, K, &alpha, B, CUDA_R_32F, ldb, strideB, A, CUDA_R_32F, lda, strideA,
                                           &beta, C, CUDA_R_32F, ldc, strideC, batch, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT));
}

__global__ void permute_to_heads_kernel(float *dst, const float *src, int B, int T, int nh, int hs) {
    long n = (long)B * nh * T * hs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % hs);
        int t = (int)(i / hs % T);
        int h = (int)(i / ((long)hs * T) % nh);
        long b = i / ((long)hs * T * nh);
        dst[i] = src[((b * T + t) * nh + h) * hs + d];
    }
}
__global__ void permute_from_heads_kernel(float *dst, const float *src, int B, int T, int nh, int hs) {
    long n = (long)B * nh * T * hs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % hs);
        int t = (int)(i / hs % T);
        int h = (int)(i / ((long)hs * T) % nh);
        long b = i / ((long)hs * T * nh);
        dst[((b * T + t) * nh + h) * hs + d] = src[i];
    }
}
__global__ void softmax_causal_forward_kernel(float *att, int rows, int T, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    float *a = att + (long)row * T;
    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32) maxv = fmaxf(maxv, a[t2] * scale);
    maxv = warp_max(maxv);
    float sum = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) sum += expf(a[t2] * scale - maxv);
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    for (int t2 = lane; t2 < T; t2 += 32) a[t2] = t2 <= t ? expf(a[t2] * scale - maxv) * inv : 0.0f;
}
__global__ void softmax_causal_backward_kernel(float *datt, const float *att, int rows, int T, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    const float *a = att + (long)row * T;
    float *d = datt + (long)row * T;
    float s = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) s += a[t2] * d[t2];
    s = warp_sum(s);
    for (int t2 = lane; t2 < T; t2 += 32) d[t2] = t2 <= t ? a[t2] * (d[t2] - s) * scale : 0.0f;
}

typedef struct {
    float *qp, *kp, *vp, *yp, *dqp, *dkp, *dvp, *datt;
} Scratch;

static int grid_for(long n) { return (int)(n / 256 + 1 < 65536 ? n / 256 + 1 : 65536); }

static void attention_forward2(float *out, float *att, const float *q, const float *k, const float *v, Scratch *w,
                               int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    permute_to_heads_kernel<<<grid_for((long)B * T * NH * hs), 256>>>(w->qp, q, B, T, NH, hs);
    permute_to_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(w->kp, k, B, T, NKV, hs);
    permute_to_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(w->vp, v, B, T, NKV, hs);
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 1, T, T, hs, w->qp + g * th, hs, group * th, w->kp, hs, th, att + g * tt, T, group * tt, B * NKV, 0);
    }
    int rows = B * NH * T;
    softmax_causal_forward_kernel<<<ceil_div((long)rows * 32, 256), 256>>>(att, rows, T, 1.0f / sqrtf((float)hs));
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 0, T, hs, T, att + g * tt, T, group * tt, w->vp, hs, th, w->yp + g * th, hs, group * th, B * NKV, 0);
    }
    permute_from_heads_kernel<<<grid_for((long)B * T * NH * hs), 256>>>(out, w->yp, B, T, NH, hs);
}

static void attention_backward2(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                const float *v, const float *att, Scratch *w, int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    permute_to_heads_kernel<<<grid_for((long)B * T * NH * hs), 256>>>(w->qp, q, B, T, NH, hs);
    permute_to_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(w->kp, k, B, T, NKV, hs);
    permute_to_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(w->vp, v, B, T, NKV, hs);
    permute_to_heads_kernel<<<grid_for((long)B * T * NH * hs), 256>>>(w->yp, dout, B, T, NH, hs);
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 1, T, T, hs, w->yp + g * th, hs, group * th, w->vp, hs, th, w->datt + g * tt, T, group * tt, B * NKV, 0);
        gemm_batched(1, 0, T, hs, T, att + g * tt, T, group * tt, w->yp + g * th, hs, group * th, w->dvp, hs, th, B * NKV, g > 0);
    }
    int rows = B * NH * T;
    softmax_causal_backward_kernel<<<ceil_div((long)rows * 32, 256), 256>>>(w->datt, att, rows, T, 1.0f / sqrtf((float)hs));
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 0, T, hs, T, w->datt + g * tt, T, group * tt, w->kp, hs, th, w->dqp + g * th, hs, group * th, B * NKV, 0);
        gemm_batched(1, 0, T, hs, T, w->datt + g * tt, T, group * tt, w->qp + g * th, hs, group * th, w->dkp, hs, th, B * NKV, g > 0);
    }
    permute_from_heads_kernel<<<grid_for((long)B * T * NH * hs), 256>>>(dq, w->dqp, B, T, NH, hs);
    permute_from_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(dk, w->dkp, B, T, NKV, hs);
    permute_from_heads_kernel<<<grid_for((long)B * T * NKV * hs), 256>>>(dv, w->dvp, B, T, NKV, hs);
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    cublasCheck(cublasCreate(&handle));
    cublasCheck(cublasSetMathMode(handle, CUBLAS_PEDANTIC_MATH));
    // T = 200 is not a multiple of 32 (the warp loops' tails); NH/NKV = 4
    int B = 4, T = 200, NH = 8, NKV = 2, hs = 64;
    long nq = (long)B * T * NH * hs, nk = (long)B * T * NKV * hs, na = (long)B * NH * T * T;
    float *q = make_random_float(nq, 1), *k = make_random_float(nk, 1), *v = make_random_float(nk, 1);
    float *dout = make_random_float(nq, 1);
    float *out = (float *)malloc(sizeof(float) * nq), *att = (float *)malloc(sizeof(float) * na);
    float *dq = (float *)malloc(sizeof(float) * nq), *dk = (float *)malloc(sizeof(float) * nk);
    float *dv = (float *)malloc(sizeof(float) * nk);
    attention_forward_cpu(out, att, q, k, v, B, T, NH, NKV, hs);
    attention_backward_cpu(dq, dk, dv, dout, q, k, v, att, B, T, NH, NKV, hs);

    float *d_q = to_device(q, nq), *d_k = to_device(k, nk), *d_v = to_device(v, nk), *d_dout = to_device(dout, nq);
    float *d_out = device_zeros<float>(nq), *d_att = device_zeros<float>(na);
    float *d_dq = device_zeros<float>(nq), *d_dk = device_zeros<float>(nk), *d_dv = device_zeros<float>(nk);
    Scratch w = {device_zeros<float>(nq), device_zeros<float>(nk), device_zeros<float>(nk), device_zeros<float>(nq),
                 device_zeros<float>(nq), device_zeros<float>(nk), device_zeros<float>(nk), device_zeros<float>(na)};
    if (version_selected(argc, argv, 1)) {
        printf("version 1 (forward only)\n");
        auto fwd = [&] {
            attention_forward_kernel1<<<ceil_div((long)B * NH * T, 128), 128>>>(d_out, d_att, d_q, d_k, d_v, B, T, NH,
                                                                               NKV, hs);
        };
        fwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", nq, 1e-5);
        validate_result(d_att, att, "att", na, 1e-5);
        printf("  forward %.3f ms\n", benchmark(5, fwd));
    }
    if (version_selected(argc, argv, 2)) {
        printf("version 2\n");
        auto fwd = [&] { attention_forward2(d_out, d_att, d_q, d_k, d_v, &w, B, T, NH, NKV, hs); };
        auto bwd = [&] { attention_backward2(d_dq, d_dk, d_dv, d_dout, d_q, d_k, d_v, d_att, &w, B, T, NH, NKV, hs); };
        fwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", nq, 1e-5);
        validate_result(d_att, att, "att", na, 1e-5);
        bwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_dq, dq, "dq", nq, 1e-4);
        validate_result(d_dk, dk, "dk", nk, 1e-4);
        validate_result(d_dv, dv, "dv", nk, 1e-4);
        printf("  forward %.3f ms | backward %.3f ms\n", benchmark(10, fwd), benchmark(10, bwd));
    }
    if (version_selected(argc, argv, 3)) {
        printf("version 3 (flash: out, dq, dk, dv; no att)\n");
        long C = (long)NH * hs, KVD = (long)NKV * hs;
        float *d_lse = device_zeros<float>((long)B * NH * T), *d_D = device_zeros<float>((long)B * NH * T);
        auto fwd = [&] { flash_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, hs, C, KVD, C); };
        auto bwd = [&] {
            flash_attention_backward(d_dq, d_dk, d_dv, d_D, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, hs, C,
                                     KVD, C, C, KVD);
        };
        cudaCheck(cudaMemset(d_out, 0, sizeof(float) * nq));
        fwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", nq, 1e-5);
        cudaCheck(cudaMemset(d_dq, 0, sizeof(float) * nq));
        cudaCheck(cudaMemset(d_dk, 0, sizeof(float) * nk));
        cudaCheck(cudaMemset(d_dv, 0, sizeof(float) * nk));
        bwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_dq, dq, "dq", nq, 1e-4);
        validate_result(d_dk, dk, "dk", nk, 1e-4);
        validate_result(d_dv, dv, "dv", nk, 1e-4);
        printf("  forward %.3f ms | backward %.3f ms\n", benchmark(10, fwd), benchmark(10, bwd));
    }
    if (version_selected(argc, argv, 4)) {
        printf("version 4 (flash with bf16 product inputs, --precision bf16)\n");
        float *out16 = (float *)malloc(sizeof(float) * nq), *att16 = (float *)malloc(sizeof(float) * na);
        float *dq16 = (float *)malloc(sizeof(float) * nq), *dk16 = (float *)malloc(sizeof(float) * nk);
        float *dv16 = (float *)malloc(sizeof(float) * nk);
        attention_forward_cpu(out16, att16, q, k, v, B, T, NH, NKV, hs, 1);
        attention_backward_cpu(dq16, dk16, dv16, dout, q, k, v, att16, B, T, NH, NKV, hs, 1);
        long C = (long)NH * hs, KVD = (long)NKV * hs;
        float *d_lse = device_zeros<float>((long)B * NH * T), *d_D = device_zeros<float>((long)B * NH * T);
        auto fwd = [&] { flash_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, hs, C, KVD, C, true); };
        auto bwd = [&] {
            flash_attention_backward(d_dq, d_dk, d_dv, d_D, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, NH, NKV, hs, C,
                                     KVD, C, C, KVD, true);
        };
        fwd();
        bwd();
        cudaCheck(cudaGetLastError());
        // The backward rounds where the CPU does (its p is recomputed from lse, normalised): it
        // must be far closer to the rounded loops than to the fp32 ones. The forward rounds the
        // online softmax's p before the division by the row sum, which the CPU rounds after: out
        // is about one bf16 rounding from either (its lse, which the backward reads, is not).
        const float *d_res[4] = {d_out, d_dq, d_dk, d_dv}, *cpu16[4] = {out16, dq16, dk16, dv16};
        const float *cpu32[4] = {out, dq, dk, dv};
        const char *names[4] = {"out", "dq", "dk", "dv"};
        long ns[4] = {nq, nq, nk, nk};
        double tol[4] = {4e-3, 1e-4, 1e-4, 5e-4}; // dv: a p a few ulps off rounds the other way at times
        int bad = 0;
        for (int i = 0; i < 4; i++) {
            double e16 = worst_error(d_res[i], cpu16[i], ns[i]), e32 = worst_error(d_res[i], cpu32[i], ns[i]);
            int ok = e16 <= tol[i] && (i == 0 || e32 > 4 * e16); // (out is as far from either: see above)
            printf("  %-4s against the rounded loops %.2e (tolerance %.0e); against the fp32 loops %.2e%s%s\n", names[i],
                   e16, tol[i], e32, i == 0 ? "" : " (must be over 4x)", ok ? "" : "   <-- FAIL");
            bad += !ok;
        }
        if (bad) exit(1);
        printf("  forward %.3f ms | backward %.3f ms\n", benchmark(10, fwd), benchmark(10, bwd));
    }
    cublasCheck(cublasDestroy(handle));
    printf("attention: all checks passed\n");
    return 0;
}
