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
 * Build and run: gcc -O3 -march=native -mprefer-vector-width=512 -fopenmp -Icommon \
 *   -o build/bench_cpu_gemm dev/bench_cpu_gemm.c -lm && OMP_NUM_THREADS=2 build/bench_cpu_gemm
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

// best of `reps` timings of fn's three matmuls (forward, dW, dinp)
static void bench_shape(const Shape *s, int reps) {
    long N = s->N, Cin = s->Cin, Cout = s->Cout;
    real *inp = (real *)malloc_check(sizeof(real) * N * Cin), *W = (real *)malloc_check(sizeof(real) * Cout * Cin);
    real *out = (real *)malloc_check(sizeof(real) * N * Cout), *dW = (real *)calloc_check(Cout * Cin, sizeof(real));
    real *dinp = (real *)malloc_check(sizeof(real) * N * Cin);
    Rng r;
    rng_seed(&r, 1);
    fill(inp, N * Cin, &r), fill(W, Cout * Cin, &r), fill(out, N * Cout, &r);
    double best_f = 1e30, best_b = 1e30;
    for (int i = 0; i < reps; i++) {
        double t0 = wall_seconds();
        matmul_forward(out, inp, W, N, Cin, Cout);
        double t1 = wall_seconds();
        matmul_backward(dinp, dW, out, inp, W, N, Cin, Cout, 0);
        double t2 = wall_seconds();
        if (t1 - t0 < best_f) best_f = t1 - t0;
        if (t2 - t1 < best_b) best_b = t2 - t1;
    }
    double flops = 2.0 * N * Cin * Cout;
    printf("%-22s N=%5ld Cin=%5ld Cout=%5ld | forward %7.1f GFLOP/s | backward (dW + dinp) %7.1f GFLOP/s\n", s->name, N,
           Cin, Cout, flops / best_f / 1e9, 2 * flops / best_b / 1e9);
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
    printf("train_llama.c matmuls, %d threads, best of %d\n", omp_get_max_threads(), reps);
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) bench_shape(&shapes[i], reps);
    return 0;
}
