/*
 * test/compare.h: the comparisons the tests repeat, once.
 *
 *  - record / compare / compare_exact_ints: one line per tensor or series with its worst
 *    error against an oracle, and a list of what failed (test/test_reference.c and
 *    test/test_llama_gpu.cu against the PyTorch fixtures)
 *  - check_token_buckets, after a CUDA trainer (common/cuda_train.h): the counting sort
 *    behind the embedding gradient (the host tests of both .cu trainers)
 *
 * Include after the program under test (it uses common/utils.h).
 */
#ifndef RESCALE_COMPARE_H
#define RESCALE_COMPARE_H

static int g_failures = 0;
static char g_failed[8192] = "";

static void record(const char *fixture, const char *what, double err, double tol) {
    if (!(err <= tol)) { // a NaN error fails too
        g_failures++;
        size_t len = strlen(g_failed);
        snprintf(g_failed + len, sizeof(g_failed) - len, "\n  %s: %s (error %.2e > tolerance %.0e)", fixture, what,
                 err, tol);
    }
}

// max |got - want| / max |want| over n numbers (got float or double: elem is its size);
// prints the line and records a failure
static void compare_(const char *fixture, const char *what, const void *got, size_t elem, const double *want, long n,
                     double tol) {
    double err = 0, maxabs = 0;
    long worst = 0;
    for (long i = 0; i < n; i++) {
        double g = elem == sizeof(double) ? ((const double *)got)[i] : (double)((const float *)got)[i];
        double e = fabs(g - want[i]);
        if (e > err || isnan(e)) err = e, worst = i;
        if (fabs(want[i]) > maxabs) maxabs = fabs(want[i]);
    }
    double rel = maxabs > 0 ? err / maxabs : err;
    printf("  %-18s %8ld values, max|ref| %9.3e, worst error %9.3e (relative %8.2e, tolerance %.0e) at [%ld]%s\n",
           what, n, maxabs, err, rel, tol, worst, rel <= tol ? "" : "   <-- FAIL");
    record(fixture, what, rel, tol);
}
#define compare(fixture, what, got, want, n, tol) compare_(fixture, what, got, sizeof(*(got)), want, n, tol)

static void compare_exact_ints(const char *fixture, const char *what, const int *got, const int *want, long n) {
    long bad = 0;
    for (long i = 0; i < n; i++) bad += got[i] != want[i];
    printf("  %-18s %8ld values, %ld differ%s\n", what, n, bad, bad ? "   <-- FAIL" : "");
    record(fixture, what, (double)bad, 0);
}

#endif // RESCALE_COMPARE_H

#if defined(RESCALE_CUDA_TRAIN_H) && !defined(RESCALE_COMPARE_BUCKETS)
#define RESCALE_COMPARE_BUCKETS
/*
 * The counting sort behind encoder_backward, on a batch with many repeated tokens:
 * every position in exactly one bucket, its token's, ascending; and the sums in bucket
 * order (the GPU kernel's order) equal the CPU trainers' serial loop bit for bit.
 * Prints one line; returns the number of faults.
 */
static long check_token_buckets(int N, int V, int C, Rng *rng) {
    TokenBuckets tb;
    tb.h_count = (int *)calloc_check(V + 1, sizeof(int));
    tb.h_token = (int *)calloc_check(N, sizeof(int));
    tb.h_start = (int *)calloc_check(N + 1, sizeof(int));
    tb.h_pos = (int *)calloc_check(N, sizeof(int));
    int *tokens = (int *)malloc_check(sizeof(int) * N);
    for (int i = 0; i < N; i++) tokens[i] = (int)(rng_uniform(rng) * V * rng_uniform(rng)); // skewed: repeats
    token_buckets_sort(&tb, tokens, N, V);
    long bad = 0;
    int *seen = (int *)calloc_check(N, sizeof(int));
    for (int b = 0; b < tb.count; b++) {
        int v = tb.h_token[b], lo = tb.h_start[b], hi = tb.h_start[b + 1];
        bad += hi <= lo || (b > 0 && v <= tb.h_token[b - 1]);
        for (int p = lo; p < hi; p++) {
            int i = tb.h_pos[p];
            bad += i < 0 || i >= N || tokens[i] != v || (p > lo && i <= tb.h_pos[p - 1]);
            if (i >= 0 && i < N) seen[i]++;
        }
    }
    for (int i = 0; i < N; i++) bad += seen[i] != 1;
    bad += tb.h_start[0] != 0 || tb.h_start[tb.count] != N;
    float *dout = (float *)malloc_check(sizeof(float) * N * C);
    for (long i = 0; i < (long)N * C; i++) dout[i] = (float)(rng_uniform(rng) - 0.5);
    float *cpu = (float *)calloc_check((long)V * C, sizeof(float)),
          *gpu = (float *)calloc_check((long)V * C, sizeof(float));
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) cpu[(long)tokens[i] * C + c] += dout[(long)i * C + c];
    }
    for (int b = 0; b < tb.count; b++) {
        float *row = gpu + (long)tb.h_token[b] * C;
        for (int c = 0; c < C; c++) {
            float acc = row[c];
            for (int p = tb.h_start[b]; p < tb.h_start[b + 1]; p++) acc += dout[(long)tb.h_pos[p] * C + c];
            row[c] = acc;
        }
    }
    long differ = 0;
    for (long i = 0; i < (long)V * C; i++) differ += memcmp(&cpu[i], &gpu[i], sizeof(float)) != 0;
    printf("  token buckets: %d positions, %d distinct tokens: %ld faults; sums in bucket order: %ld of %ld differ "
           "from the serial loop%s\n", N, tb.count, bad, differ, (long)V * C, bad || differ ? "   <-- FAIL" : "");
    free(tb.h_count), free(tb.h_token), free(tb.h_start), free(tb.h_pos);
    free(tokens), free(seen), free(dout), free(cpu), free(gpu);
    return bad + differ;
}
#endif
