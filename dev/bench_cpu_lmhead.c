/*
 * dev/bench_cpu_lmhead.c: the classifier (lm_head matmul + cross-entropy, forward and
 * backward), as train_llama.c runs it today and fused over chunks of rows.
 *
 * With V = 32000 the logits of a batch are the largest tensor of the step (B*T*V floats:
 * 131 MB for B=8, T=128). Today they are written by the lm_head matmul, read by the
 * cross-entropy forward, read and rewritten by its backward, then read twice by the
 * backward matmuls: five passes over memory, larger than any cache. Fused, the rows are
 * taken `R` at a time (R*V floats, about L2-sized): matmul, loss, gradient, and both backward
 * matmuls of those rows, while they are still in cache. Same arithmetic, same functions;
 * only the order changes (dW sums its rows chunk by chunk, so it rounds differently).
 *
 * Build and run: gcc -O3 -march=native -mprefer-vector-width=512 -fopenmp -Icommon \
 *   -o build/bench_cpu_lmhead dev/bench_cpu_lmhead.c -lm && OMP_NUM_THREADS=2 build/bench_cpu_lmhead
 */
#define TESTING
#include "../train_llama.c"

static double now(void) { return wall_seconds(); }

static void classifier_unfused(real *dx, real *dW, real *logits, real *losses, real *lse, const real *x, const real *W,
                               const int *targets, int N, int C, int V) {
    matmul_forward(logits, x, W, N, C, V);
    crossentropy_forward(losses, lse, logits, targets, N, V);
    crossentropy_backward_inplace(logits, lse, targets, N, V);
    matmul_backward(dx, dW, logits, x, W, N, C, V, 0);
}

// R rows at a time; buf holds R*V logits. crossentropy_backward_inplace scales by 1/R here
// instead of 1/N: a real implementation passes N; for timing the constant does not matter.
static void classifier_fused(real *dx, real *dW, real *buf, real *losses, real *lse, const real *x, const real *W,
                             const int *targets, int N, int C, int V, int R) {
    for (int r0 = 0; r0 < N; r0 += R) {
        int r = N - r0 < R ? N - r0 : R;
        matmul_forward(buf, x + (long)r0 * C, W, r, C, V);
        crossentropy_forward(losses + r0, lse + r0, buf, targets + r0, r, V);
        crossentropy_backward_inplace(buf, lse + r0, targets + r0, r, V);
        matmul_backward(dx + (long)r0 * C, dW, buf, x + (long)r0 * C, W, r, C, V, 0);
    }
}

/*
 * Two passes over column chunks of Vc words (N x Vc logits, about L2-sized) instead of row
 * chunks: the backward's dW rows of a column chunk are complete after one visit, so nothing
 * of V's size is streamed more than once per pass. Pass 1: logits of the chunk, a running
 * (online) max and sum of exp per row -> lse. Pass 2: the chunk's logits again (the one
 * extra matmul), gradient (softmax - onehot)/N in place, dW rows of the chunk, dx += .
 * Costs 4 lm_head matmuls instead of 3, all on cache-resident panels.
 */
static void classifier_vchunked(real *dx, real *dW, real *buf, real *losses, real *lse, const real *x, const real *W,
                                const int *targets, int N, int C, int V, int Vc, real *rmax, double *rsum) {
    for (int i = 0; i < N; i++) rmax[i] = -INFINITY, rsum[i] = 0, losses[i] = 0;
    for (int v0 = 0; v0 < V; v0 += Vc) {
        int vc = V - v0 < Vc ? V - v0 : Vc;
        matmul_forward(buf, x, W + (long)v0 * C, N, C, vc);
#pragma omp parallel for
        for (int i = 0; i < N; i++) {
            const real *l = buf + (long)i * vc;
            real m = row_max(l, vc);
            if (m > rmax[i]) {
                rsum[i] *= exp((double)rmax[i] - m);
                rmax[i] = m;
            }
            rsum[i] += row_sum_exp(l, vc, rmax[i]);
            if (targets[i] >= v0 && targets[i] < v0 + vc) losses[i] = -l[targets[i] - v0];
        }
    }
    for (int i = 0; i < N; i++) lse[i] = rmax[i] + (real)log(rsum[i]), losses[i] += lse[i];
    real inv_n = (real)(1.0 / N);
    for (int v0 = 0; v0 < V; v0 += Vc) {
        int vc = V - v0 < Vc ? V - v0 : Vc;
        matmul_forward(buf, x, W + (long)v0 * C, N, C, vc);
#pragma omp parallel for
        for (int i = 0; i < N; i++) {
            real *l = buf + (long)i * vc;
            for (int j = 0; j < vc; j++) l[j] = rexp(l[j] - lse[i]) * inv_n;
            if (targets[i] >= v0 && targets[i] < v0 + vc) l[targets[i] - v0] -= inv_n;
        }
        matmul_backward(dx, dW + (long)v0 * C, buf, x, W + (long)v0 * C, N, C, vc, v0 > 0);
    }
}

static void run(int N, int C, int V, int R, int reps) {
    Rng rng;
    rng_seed(&rng, 7);
    real *x = (real *)malloc_check(sizeof(real) * N * C), *W = (real *)malloc_check(sizeof(real) * V * C);
    for (long i = 0; i < (long)N * C; i++) x[i] = (real)rng_normal(&rng);
    for (long i = 0; i < (long)V * C; i++) W[i] = (real)(0.02 * rng_normal(&rng));
    int *targets = (int *)malloc_check(sizeof(int) * N);
    for (int i = 0; i < N; i++) targets[i] = (int)(rng_u64(&rng) % V);
    real *logits = (real *)malloc_check(sizeof(real) * N * V), *buf = (real *)malloc_check(sizeof(real) * R * V);
    real *losses = (real *)malloc_check(sizeof(real) * N), *lse = (real *)malloc_check(sizeof(real) * N);
    real *dx1 = (real *)malloc_check(sizeof(real) * N * C), *dx2 = (real *)malloc_check(sizeof(real) * N * C);
    real *dW1 = (real *)malloc_check(sizeof(real) * V * C), *dW2 = (real *)malloc_check(sizeof(real) * V * C);
    int Vc = R; // for the column-chunked version: R is the chunk's width in words
    real *vbuf = (real *)malloc_check(sizeof(real) * N * Vc), *rmax = (real *)malloc_check(sizeof(real) * N);
    double *rsum = (double *)malloc_check(sizeof(double) * N);
    real *dx3 = (real *)malloc_check(sizeof(real) * N * C), *dW3 = (real *)malloc_check(sizeof(real) * V * C);
    real *losses3 = (real *)malloc_check(sizeof(real) * N), *lse3 = (real *)malloc_check(sizeof(real) * N);
    double best1 = 1e30, best2 = 1e30, best3 = 1e30;
    for (int i = 0; i < reps; i++) {
        memset(dW1, 0, sizeof(real) * V * C), memset(dW2, 0, sizeof(real) * V * C);
        double t0 = now();
        classifier_unfused(dx1, dW1, logits, losses, lse, x, W, targets, N, C, V);
        double t1 = now();
        classifier_fused(dx2, dW2, buf, losses, lse, x, W, targets, N, C, V, R);
        double t2 = now();
        memset(dW3, 0, sizeof(real) * V * C);
        classifier_vchunked(dx3, dW3, vbuf, losses3, lse3, x, W, targets, N, C, V, Vc, rmax, rsum);
        best3 = fmin(best3, now() - t2);
        best1 = t1 - t0 < best1 ? t1 - t0 : best1;
        best2 = t2 - t1 < best2 ? t2 - t1 : best2;
    }
    // same results up to rounding (the fused gradients carry a factor N/R, see above)
    double err = 0, mx = 0, s = (double)R / N;
    for (long i = 0; i < (long)V * C; i++) {
        err = fmax(err, fabs(dW2[i] * s - dW1[i]));
        mx = fmax(mx, fabs(dW1[i]));
    }
    double err3 = 0, errx = 0, mxx = 0, errl = 0;
    for (long i = 0; i < (long)V * C; i++) err3 = fmax(err3, fabs(dW3[i] - dW1[i]));
    for (long i = 0; i < (long)N * C; i++) errx = fmax(errx, fabs(dx3[i] - dx1[i])), mxx = fmax(mxx, fabs(dx1[i]));
    classifier_unfused(dx1, dW1, logits, losses, lse, x, W, targets, N, C, V); // losses of the plain version
    for (int i = 0; i < N; i++) errl = fmax(errl, fabs(losses3[i] - losses[i]) / fabs(losses[i]));
    printf("N=%5d C=%4d V=%d: unfused %7.1f ms | row chunks of %d: %7.1f ms (%.2fx), dW rel diff %.1e"
           " | column chunks of %d: %7.1f ms (%.2fx), dW %.1e dx %.1e loss %.1e rel diff\n", N, C, V, 1e3 * best1, R,
           1e3 * best2, best1 / best2, err / mx, Vc, 1e3 * best3, best1 / best3, err3 / mx, errx / mxx, errl);
    free(vbuf), free(rmax), free(rsum), free(dx3), free(dW3), free(losses3), free(lse3);
    free(x), free(W), free(targets), free(logits), free(buf), free(losses), free(lse);
    free(dx1), free(dx2), free(dW1), free(dW2);
}

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 3;
    printf("lm_head + cross-entropy, forward and backward, %d threads, best of %d\n", omp_get_max_threads(), reps);
    for (int R = 128; R <= 512; R *= 2) run(1024, 128, 32000, R, reps); // tiny: B8 T128 C128
    run(2048, 512, 32000, 256, reps);                                      // mid: B8 T256 C512
    return 0;
}
