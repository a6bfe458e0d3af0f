/*
 * dev/bench_cpu_gemm.c: the matmuls of one training step, alone, timed.
 *
 * train_llama.c's step is mostly matmuls (about 85% of its FLOPs on the tiny config sit
 * in lm_head alone). This workbench calls its matmul_forward / matmul_backward on each
 * projection's shapes, for the tiny and mid configs of `make bench-cpu`, and prints
 * GFLOP/s per call. dev/bench_cpu_gemm.py times the same shapes in PyTorch (MKL), so the
 * two tables say which shape is slow against the practical ceiling (docs/perf.md: about
 * 360-425 GFLOP/s on 2 threads), before anyone profiles the whole step.
 *
 * With every bf16 kernel the CPU has (common/gemm_bf16.h) it first checks each against the
 * ref kernel (fp32 sums of the same bf16-rounded inputs) within 2*gamma_K*sum|a*b|, then
 * times all of them side by side. Exit status 1 if a check fails.
 *
 * Build and run: make bench-gemm   (build/bench_cpu_gemm [reps])
 */
#define TESTING
#include "../train_llama.c"

typedef struct {
    const char *name;
    int N, Cin, Cout; // out (N, Cout) = inp (N, Cin) . W^T
} Shape;

static void fill(real *x, long n, Rng *r) {
    for (long i = 0; i < n; i++) x[i] = (real)(0.02 * rng_normal(r));
}

// the three matmuls of one shape: forward out, backward dW (overwritten) and dinp
static void run3(real *out, real *dW, real *dinp, const real *inp, const real *W, const real *dout, int N, int Cin,
                 int Cout) {
    matmul_forward(out, inp, W, N, Cin, Cout);
    memset(dW, 0, sizeof(real) * Cout * Cin);
    matmul_backward(dinp, dW, dout, inp, W, N, Cin, Cout, 0);
}

/*
 * A bf16 kernel against the ref kernel (fp32 sums of the same bf16-rounded inputs):
 * two fp32 sums of the same K exact products differ by at most 2*gamma_K*sum|a*b|,
 * gamma_K = K*u/(1 - K*u) with u = 2^-24 (the standard bound on recursive summation),
 * and sum|a*b| is the ref kernel on |A| and |B|. Returns the largest |diff| / bound.
 */
static double worst_vs_bound(const real *x, const real *ref, const real *absref, long n, int K) {
    double u = ldexp(1.0, -24), gamma = K * u / (1 - K * u), worst = 0;
    for (long i = 0; i < n; i++) {
        double bound = 2 * gamma * absref[i] + 1e-30;
        double r = fabs((double)x[i] - ref[i]) / bound;
        if (r > worst) worst = r;
    }
    return worst;
}

static int check_shape(const Shape *s, const GemmKernel *kn) {
    long N = s->N, Cin = s->Cin, Cout = s->Cout;
    real *buf[12];
    long sizes[12] = {N * Cin, Cout * Cin, N * Cout, N * Cout, Cout * Cin, N * Cin,
                      N * Cout, Cout * Cin, N * Cin, N * Cout, Cout * Cin, N * Cin};
    for (int i = 0; i < 12; i++) buf[i] = (real *)malloc_check(sizeof(real) * sizes[i]);
    real *inp = buf[0], *W = buf[1], *dout = buf[2];
    Rng r;
    rng_seed(&r, 2);
    fill(inp, N * Cin, &r), fill(W, Cout * Cin, &r), fill(dout, N * Cout, &r);
    gemm_kernel = kn;
    run3(buf[3], buf[4], buf[5], inp, W, dout, N, Cin, Cout);
    gemm_kernel = &BF16_KERNELS[BF16_REF];
    run3(buf[6], buf[7], buf[8], inp, W, dout, N, Cin, Cout);
    for (int i = 0; i < 3; i++) {
        for (long j = 0; j < sizes[i]; j++) buf[i][j] = fabsf(buf[i][j]);
    }
    run3(buf[9], buf[10], buf[11], inp, W, dout, N, Cin, Cout);
    double wf = worst_vs_bound(buf[3], buf[6], buf[9], N * Cout, Cin);
    double ww = worst_vs_bound(buf[4], buf[7], buf[10], Cout * Cin, N);
    double wi = worst_vs_bound(buf[5], buf[8], buf[11], N * Cin, Cout);
    double w = fmax(wf, fmax(ww, wi));
    printf("  check %-10s vs ref: largest |diff| / bound: forward %.3f, dW %.3f, dinp %.3f  %s\n", s->name, wf, ww,
           wi, w <= 1 ? "ok" : "FAIL");
    for (int i = 0; i < 12; i++) free(buf[i]);
    return w <= 1;
}

// best of `reps` timings of the three matmuls (forward, dW, dinp)
static void bench_shape(const Shape *s, int reps, double *gf, double *gb, double *gi) {
    long N = s->N, Cin = s->Cin, Cout = s->Cout;
    // on 2 MB pages, as train_llama allocates its tensors: with 4 KB pages the lm_head shapes
    // measured a TLB miss per row of C (mid's forward 290 GFLOP/s in bf16 instead of 530)
    real *inp = calloc_big(N * Cin), *W = calloc_big(Cout * Cin), *out = calloc_big(N * Cout);
    real *dW = calloc_big(Cout * Cin), *dinp = calloc_big(N * Cin);
    Rng r;
    rng_seed(&r, 1);
    fill(inp, N * Cin, &r), fill(W, Cout * Cin, &r), fill(out, N * Cout, &r);
    double best_f = 1e30, best_b = 1e30, best_i = 1e30;
    for (int i = 0; i < reps; i++) {
        double t0 = wall_seconds();
        matmul_forward(out, inp, W, N, Cin, Cout);
        double t1 = wall_seconds();
        gemm(Cout, Cin, N, out, 1, Cout, inp, Cin, 1, dW, Cin, 1); // matmul_backward's dW
        double t2 = wall_seconds();
        gemm(N, Cin, Cout, out, Cout, 1, W, Cin, 1, dinp, Cin, 0); // and its dinp
        double t3 = wall_seconds();
        if (t1 - t0 < best_f) best_f = t1 - t0;
        if (t2 - t1 < best_b) best_b = t2 - t1;
        if (t3 - t2 < best_i) best_i = t3 - t2;
    }
    double flops = 2.0 * N * Cin * Cout;
    *gf = flops / best_f / 1e9;
    *gb = flops / best_b / 1e9;
    *gi = flops / best_i / 1e9;
    free(inp), free(W), free(out), free(dW), free(dinp);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    // tiny: L4 C128 NH4 NKV2 F352 V32000, B8 T128; mid: L8 C512 NH8 NKV4 F1408 V32000, B8 T256
    Shape shapes[] = {
        {"tiny wq/wo", 1024, 128, 128},    {"tiny wk/wv", 1024, 128, 64},    {"tiny w1/w3", 1024, 128, 352},
        {"tiny w2", 1024, 352, 128},       {"tiny lm_head", 1024, 128, 32000}, {"mid wq/wo", 2048, 512, 512},
        {"mid wk/wv", 2048, 512, 256},     {"mid w1/w3", 2048, 512, 1408},   {"mid w2", 2048, 1408, 512},
        {"mid lm_head", 2048, 512, 32000},
    };
    int nshapes = (int)(sizeof(shapes) / sizeof(shapes[0]));
    // the kernels this CPU runs: fp32, then the bf16 ones (ref is the fp32 kernel on rounded inputs)
    const GemmKernel *kernels[4] = {&FP32_KERNEL, &BF16_KERNELS[BF16_REF]};
    int nk = 2;
    if (cpu_has_avx512bf16()) kernels[nk++] = &BF16_KERNELS[BF16_AVX512];
    if (cpu_has_amx_bf16()) kernels[nk++] = &BF16_KERNELS[BF16_AMX];
    // odd shapes first: partial tiles, k not a multiple of 32, more than one block of k and of columns
    Shape odd[] = {{"odd 1", 37, 45, 70}, {"odd 2", 100, 600, 2100}, {"odd 3", 1, 129, 33}};
    int ok = 1;
    printf("bf16 kernels against ref (fp32 sums of the same rounded inputs; bound 2*gamma_K*sum|a*b|):\n");
    for (int k = 2; k < nk; k++) {
        printf(" %s\n", kernels[k]->name);
        for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) ok &= check_shape(&odd[i], kernels[k]);
        for (int i = 0; i < nshapes; i++) ok &= check_shape(&shapes[i], kernels[k]);
    }
    printf("\ntrain_llama.c matmuls, %d threads, best of %d: GFLOP/s of forward, dW, dinp\n",
           omp_get_max_threads(), reps);
    printf("%-14s %5s %5s %5s", "shape", "N", "Cin", "Cout");
    for (int k = 0; k < nk; k++) printf(" | %-17.17s", kernels[k]->name);
    printf("\n");
    for (int i = 0; i < nshapes; i++) {
        printf("%-14s %5d %5d %5d", shapes[i].name, shapes[i].N, shapes[i].Cin, shapes[i].Cout);
        for (int k = 0; k < nk; k++) {
            double gf, gb, gi;
            gemm_kernel = kernels[k];
            bench_shape(&shapes[i], reps, &gf, &gb, &gi);
            printf(" | %5.0f %5.0f %5.0f", gf, gb, gi);
        }
        printf("\n");
        fflush(stdout);
    }
    return ok ? 0 : 1;
}
