/*
 * test/test_llama_gpu_host.cu: the parts of train_llama.cu that can be checked WITHOUT a GPU:
 * the matmuls' index arithmetic and the embedding backward's token buckets.
 *
 * cuBLAS is column-major and train_llama.cu's gemm_batched() maps row-major products onto it;
 * the attention's grouped-query heads add strided batches on top. A wrong transpose flag,
 * leading dimension or stride is the likeliest bug in the GPU program, and it is pure
 * index arithmetic, so it can be checked on the host: this test compiles train_llama.cu
 * with cublasGemmStridedBatchedEx replaced by an emulation that follows cuBLAS's
 * documented semantics (column-major, op(A) m x k, op(B) k x n, strides per batch), calls
 * the real matmul_forward, matmul_backward and the five attention products on host
 * memory, and compares them with plain row-major loops.
 *
 * encoder_backward adds each token's positions in the order token_buckets_sort (a counting
 * sort on the host) lists them; that order is what makes the GPU's embedding gradient equal
 * the CPU's bit for bit. Checked: every position in exactly one bucket, its token's, in
 * ascending order; and the sums in bucket order equal train_llama.c's serial loop exactly.
 *
 * It runs in `make test` on any machine with nvcc (test/test_llama_gpu.sh runs it before
 * looking for a GPU). What it does not check: that cuBLAS itself agrees with its
 * documentation (dev/cuda/matmul does that on a GPU), and every kernel.
 */
#include "cublas_host.h"
#define TESTING
#include "../train_llama.cu"
#include "compare.h" // check_token_buckets

// the nn.Linear uses: out = in.W^T; dW += dout^T.in; dinp (+)= dout.W
static void check_linear(Rng *rng) {
    int N = 13, Cin = 7, Cout = 5;
    float *in = random_floats((long)N * Cin, rng), *W = random_floats((long)Cout * Cin, rng);
    float *dout = random_floats((long)N * Cout, rng), *dW = random_floats((long)Cout * Cin, rng);
    float *din = random_floats((long)N * Cin, rng);
    float *out = (float *)calloc_check(N * Cout, sizeof(float)), *want = (float *)calloc_check(N * Cin + Cout * Cin, sizeof(float));
    matmul_forward(out, in, NULL, W, NULL, N, Cin, Cout);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < Cout; o++) {
            double s = 0;
            for (int i = 0; i < Cin; i++) s += (double)in[n * Cin + i] * W[o * Cin + i];
            want[n * Cout + o] = (float)s;
        }
    }
    check("matmul_forward: out = in . W^T", out, want, (long)N * Cout);
    for (int acc = 0; acc < 2; acc++) {
        float *dW1 = (float *)malloc_check(sizeof(float) * Cout * Cin), *din1 = (float *)malloc_check(sizeof(float) * N * Cin);
        memcpy(dW1, dW, sizeof(float) * Cout * Cin);
        memcpy(din1, din, sizeof(float) * N * Cin);
        matmul_backward(din1, dW1, dout, NULL, in, NULL, W, NULL, N, Cin, Cout, acc);
        for (int o = 0; o < Cout; o++) {
            for (int i = 0; i < Cin; i++) {
                double s = dW[o * Cin + i];
                for (int n = 0; n < N; n++) s += (double)dout[n * Cout + o] * in[n * Cin + i];
                want[o * Cin + i] = (float)s;
            }
        }
        check("matmul_backward: dW += dout^T . in", dW1, want, (long)Cout * Cin);
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < Cin; i++) {
                double s = acc ? din[n * Cin + i] : 0;
                for (int o = 0; o < Cout; o++) s += (double)dout[n * Cout + o] * W[o * Cin + i];
                want[n * Cin + i] = (float)s;
            }
        }
        check(acc ? "matmul_backward: dinp += dout . W" : "matmul_backward: dinp = dout . W", din1, want, (long)N * Cin);
        free(dW1), free(din1);
    }
    free(in), free(W), free(dout), free(dW), free(din), free(out), free(want);
}

// the attention's five products, grouped-query: x and p per query head, kv per kv head
static void check_attention(int B, int T, int NH, int NKV, int hs, Rng *rng) {
    int group = NH / NKV;
    long nx = (long)B * NH * T * hs, nkv = (long)B * NKV * T * hs, np = (long)B * NH * T * T;
    float *x = random_floats(nx, rng), *kv = random_floats(nkv, rng), *p = random_floats(np, rng);
    float *s = (float *)calloc_check(np, sizeof(float)), *y = (float *)calloc_check(nx, sizeof(float));
    float *dkv = random_floats(nkv, rng); // garbage: the first g must overwrite it
    float *want = (float *)calloc_check(np > nx ? np : nx, sizeof(float));
#define X(b, h, t, d) x[(((long)(b) * NH + (h)) * T + (t)) * hs + (d)]
#define KV(b, h, t, d) kv[(((long)(b) * NKV + (h)) * T + (t)) * hs + (d)]
#define P(b, h, t, t2) p[(((long)(b) * NH + (h)) * T + (t)) * T + (t2)]
    char what[128];
    attn_x_kvT(s, x, kv, B, T, NH, NKV, hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int t2 = 0; t2 < T; t2++) {
                    double acc = 0;
                    for (int d = 0; d < hs; d++) acc += (double)X(b, h, t, d) * KV(b, h / group, t2, d);
                    want[(((long)b * NH + h) * T + t) * T + t2] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_x_kvT (q.k^T) NH %d NKV %d T %d", NH, NKV, T);
    check(what, s, want, np);
    attn_p_kv(y, p, kv, B, T, NH, NKV, hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    double acc = 0;
                    for (int t2 = 0; t2 < T; t2++) acc += (double)P(b, h, t, t2) * KV(b, h / group, t2, d);
                    want[(((long)b * NH + h) * T + t) * hs + d] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_p_kv (att.v) NH %d NKV %d T %d", NH, NKV, T);
    check(what, y, want, nx);
    attn_pT_x(dkv, p, x, B, T, NH, NKV, hs);
    memset(want, 0, sizeof(float) * nkv);
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < NKV; kvh++)
            for (int t2 = 0; t2 < T; t2++)
                for (int d = 0; d < hs; d++) {
                    double acc = 0;
                    for (int h = kvh * group; h < (kvh + 1) * group; h++)
                        for (int t = 0; t < T; t++) acc += (double)P(b, h, t, t2) * X(b, h, t, d);
                    want[(((long)b * NKV + kvh) * T + t2) * hs + d] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_pT_x (sum att^T.dy) NH %d NKV %d T %d", NH, NKV, T);
    check(what, dkv, want, nkv);
#undef X
#undef KV
#undef P
    free(x), free(kv), free(p), free(s), free(y), free(dkv), free(want);
}

int main(void) {
    Rng rng;
    rng_seed(&rng, 42);
    printf("train_llama.cu on the host: matmuls against row-major loops (cuBLAS emulated), token buckets:\n");
    check_linear(&rng);
    check_attention(2, 5, 6, 2, 4, &rng);  // GQA, group 3
    check_attention(3, 7, 4, 1, 6, &rng);  // MQA
    check_attention(2, 4, 4, 4, 2, &rng);  // MHA
    failures += check_token_buckets(1000, 300, 8, &rng) != 0;
    failures += check_token_buckets(1, 5, 3, &rng) != 0;
    if (failures) {
        printf("FAIL: %d checks\n", failures);
        return 1;
    }
    printf("all host-side checks passed\n");
    return 0;
}
