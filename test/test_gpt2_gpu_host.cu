/*
 * test/test_gpt2_gpu_host.cu: the parts of train_gpt2.cu that can be checked WITHOUT a GPU.
 *
 *  - the matmuls' index arithmetic: train_gpt2.cu is compiled with cublasGemmStridedBatchedEx
 *    replaced by a host emulation of cuBLAS's documented semantics (column-major, op(A) m x k,
 *    op(B) k x n, strides per batch); the real matmul_forward / matmul_backward (also in the
 *    tied lm_head's shape: only the first V of Vp rows of wte) and the three attention
 *    products are called on host memory and compared with plain row-major loops
 *  - token_buckets_sort, the counting sort behind the deterministic embedding gradient:
 *    every position once, in its token's bucket, ascending; sums in bucket order equal
 *    train_gpt2.c's serial loop bit for bit
 *  - the parameter table: GPT-2 124M has llm.c's 124,475,904 parameters; the q, k, v
 *    statistics matrices are the right rows of c_attn
 *  - with an output directory: writes init_<scheme>.bin (the host-side initialisation, which
 *    test/test_gpt2_gpu.sh compares byte for byte with ./train_gpt2 --steps 0) and
 *    roundtrip.bin (the fixture model read and written back, compared with the fixture)
 *
 * Usage: test_gpt2_gpu_host [OUTDIR [FIXTURE_MODEL]]. Exit status 1 on any failure.
 * What it does not check: cuBLAS itself, and every kernel (those need a GPU).
 */
#include "cublas_host.h"
#define TESTING
#include "../train_gpt2.cu"
#include "compare.h" // check_token_buckets

static void check_true(const char *what, int ok) {
    printf("  %-48s %s\n", what, ok ? "ok" : "   <-- FAIL");
    failures += !ok;
}

// out = in.W^T; dW += dout^T.in; dinp = dout.W. Wrows > Cout: the tied lm_head, which
// multiplies by the first V of the Vp rows of wte and must leave the padded rows alone.
static void check_linear(int N, int Cin, int Cout, int Wrows, Rng *rng) {
    float *in = random_floats((long)N * Cin, rng), *W = random_floats((long)Wrows * Cin, rng);
    float *dout = random_floats((long)N * Cout, rng), *dW = random_floats((long)Wrows * Cin, rng);
    float *dW0 = (float *)malloc_check(sizeof(float) * Wrows * Cin);
    memcpy(dW0, dW, sizeof(float) * Wrows * Cin);
    float *out = (float *)calloc_check((long)N * Cout, sizeof(float)), *din = random_floats((long)N * Cin, rng);
    float *want = (float *)calloc_check((long)N * Cin + (long)Wrows * Cin + (long)N * Cout, sizeof(float));
    char what[128];
    matmul_forward(out, in, NULL, W, NULL, N, Cin, Cout);
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < Cout; o++) {
            double s = 0;
            for (int i = 0; i < Cin; i++) s += (double)in[n * Cin + i] * W[o * Cin + i];
            want[n * Cout + o] = (float)s;
        }
    }
    snprintf(what, sizeof(what), "matmul_forward %dx%d.(%dx%d)^T", N, Cin, Cout, Cin);
    check(what, out, want, (long)N * Cout);
    matmul_backward(din, dW, dout, NULL, in, NULL, W, NULL, N, Cin, Cout, 0);
    for (int o = 0; o < Wrows; o++) {
        for (int i = 0; i < Cin; i++) {
            double s = dW0[o * Cin + i];
            if (o < Cout) {
                for (int n = 0; n < N; n++) s += (double)dout[n * Cout + o] * in[n * Cin + i];
            }
            want[o * Cin + i] = (float)s;
        }
    }
    snprintf(what, sizeof(what), "matmul_backward dW += dout^T.in (%d of %d rows)", Cout, Wrows);
    check(what, dW, want, (long)Wrows * Cin);
    for (int n = 0; n < N; n++) {
        for (int i = 0; i < Cin; i++) {
            double s = 0;
            for (int o = 0; o < Cout; o++) s += (double)dout[n * Cout + o] * W[o * Cin + i];
            want[n * Cin + i] = (float)s;
        }
    }
    check("matmul_backward dinp = dout.W", din, want, (long)N * Cin);
    free(in), free(W), free(dout), free(dW), free(dW0), free(out), free(din), free(want);
}

// the attention's three products over B*NH heads: s = x.y^T, o = p.x, o = p^T.x
static void check_attention(int B, int T, int NH, int hs, Rng *rng) {
    long nx = (long)B * NH * T * hs, np = (long)B * NH * T * T;
    float *x = random_floats(nx, rng), *y = random_floats(nx, rng), *p = random_floats(np, rng);
    float *s = random_floats(np, rng), *o = random_floats(nx, rng); // garbage: must be overwritten
    float *want = (float *)calloc_check(np > nx ? np : nx, sizeof(float));
#define X(b, h, t, d) x[(((long)(b) * NH + (h)) * T + (t)) * hs + (d)]
#define Y(b, h, t, d) y[(((long)(b) * NH + (h)) * T + (t)) * hs + (d)]
#define P(b, h, t, t2) p[(((long)(b) * NH + (h)) * T + (t)) * T + (t2)]
    char what[128];
    attn_x_yT(s, x, y, B, T, NH, hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int t2 = 0; t2 < T; t2++) {
                    double acc = 0;
                    for (int d = 0; d < hs; d++) acc += (double)X(b, h, t, d) * Y(b, h, t2, d);
                    want[(((long)b * NH + h) * T + t) * T + t2] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_x_yT (q.k^T) B %d NH %d T %d hs %d", B, NH, T, hs);
    check(what, s, want, np);
    attn_p_x(o, p, x, B, T, NH, hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < hs; d++) {
                    double acc = 0;
                    for (int t2 = 0; t2 < T; t2++) acc += (double)P(b, h, t, t2) * X(b, h, t2, d);
                    want[(((long)b * NH + h) * T + t) * hs + d] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_p_x (att.v) B %d NH %d T %d hs %d", B, NH, T, hs);
    check(what, o, want, nx);
    attn_pT_x(o, p, x, B, T, NH, hs);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int t2 = 0; t2 < T; t2++)
                for (int d = 0; d < hs; d++) {
                    double acc = 0;
                    for (int t = 0; t < T; t++) acc += (double)P(b, h, t, t2) * X(b, h, t, d);
                    want[(((long)b * NH + h) * T + t2) * hs + d] = (float)acc;
                }
    snprintf(what, sizeof(what), "attn_pT_x (att^T.dy) B %d NH %d T %d hs %d", B, NH, T, hs);
    check(what, o, want, nx);
#undef X
#undef Y
#undef P
    free(x), free(y), free(p), free(s), free(o), free(want);
}

static void check_table(void) {
    GPT2 model;
    memset(&model, 0, sizeof(model));
    GPT2Config c = {1024, 50257, 50304, 12, 12, 768};
    model.config = c;
    size_t n = 0;
    for (int p = 0; p < NUM_PARAMS; p++) n += param_size(&c, p);
    printf("  GPT-2 124M: %zu parameters (llm.c: 124475904)\n", n);
    check_true("parameter count", n == 124475904);
    GPT2Config t = {16, 250, 256, 3, 4, 32};
    model.config = t;
    gpt2_alloc_host(&model);
    float *base = model.h_params;
    int ok = 1;
    for (int l = 0; l < 3; l++) {
        for (int s = 0; s < NUM_STAT_MATRICES; s++) {
            size_t sz;
            int unit;
            float *w = stat_matrix(&model, base, l, s, &sz, &unit);
            size_t want_off = s < 3 ? model.off[P_QKVW] + (size_t)l * 3 * 32 * 32 + (size_t)s * 32 * 32
                                    : model.off[BLOCK_MATRIX_PARAM[s - 3]] + (size_t)l * param_slice_size(&t, BLOCK_MATRIX_PARAM[s - 3]);
            ok &= (size_t)(w - base) == want_off && sz == (s < 3 ? 32 * 32 : param_slice_size(&t, BLOCK_MATRIX_PARAM[s - 3]));
            ok &= unit == (s < 3 ? 0 : s - 3);
        }
    }
    check_true("q/k/v/qkv/attn_proj/fc/fc_proj slices", ok);
    check_true("offsets end at num_params", model.off[P_LNFB] + param_size(&t, P_LNFB) == model.num_params);
    free(model.h_params), free(model.h_m), free(model.h_v);
}

// The host-side initialisation of a fresh model, written as a checkpoint (the script
// compares it with ./train_gpt2 --steps 0 on the same flags), and a checkpoint round trip.
static void write_files(const char *dir, const char *fixture) {
    const char *schemes[] = {"plain", "lir", "residual", "e3"};
    for (int i = 0; i < 4; i++) {
        GPT2 model;
        memset(&model, 0, sizeof(model));
        GPT2Config c = {16, 250, 256, 2, 4, 32}; // --seq-len 16 --vocab 250 --layers 2 --heads 4 --dim 32
        model.config = c;
        gpt2_alloc_host(&model);
        Rng rng;
        rng_seed(&rng, 1337);
        gpt2_init_host(&model, schemes[i], 0.02, &rng);
        char path[4200];
        snprintf(path, sizeof(path), "%s/init_%s.bin", dir, schemes[i]);
        gpt2_save_host(&model, path);
        free(model.h_params), free(model.h_m), free(model.h_v);
    }
    if (fixture) {
        GPT2 model;
        gpt2_load_host(&model, fixture);
        char path[4200];
        snprintf(path, sizeof(path), "%s/roundtrip.bin", dir);
        gpt2_save_host(&model, path);
        free(model.h_params), free(model.h_m), free(model.h_v);
    }
    printf("  wrote init_{plain,lir,residual,e3}.bin%s to %s\n", fixture ? " and roundtrip.bin" : "", dir);
}

int main(int argc, char **argv) {
    Rng rng;
    rng_seed(&rng, 42);
    printf("train_gpt2.cu on the host (cuBLAS emulated; no GPU needed):\n");
    check_linear(13, 7, 5, 5, &rng);   // a block's linear layer
    check_linear(9, 8, 11, 16, &rng);  // the tied lm_head: V 11 of Vp 16 rows
    check_linear(6, 12, 36, 36, &rng); // c_attn's 3C outputs
    check_attention(2, 5, 3, 4, &rng);
    check_attention(1, 7, 2, 6, &rng);
    check_attention(3, 1, 4, 2, &rng); // T = 1
    failures += check_token_buckets(1000, 300, 8, &rng) != 0;
    failures += check_token_buckets(1, 5, 3, &rng) != 0;
    check_table();
    if (argc > 1) write_files(argv[1], argc > 2 ? argv[2] : NULL);
    if (failures) {
        printf("FAIL: %d checks\n", failures);
        return 1;
    }
    printf("all host-side checks passed\n");
    return 0;
}
