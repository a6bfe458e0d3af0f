/*
 * test/test_mlp.c: unit tests of mlp_sweep.c, which is included here with TESTING
 * defined (no main). Built twice: in float (the program's precision) and with
 * -DREAL_DOUBLE, where the finite-difference gradient check can be tight.
 * Every check prints what it compared, the measured error and the tolerance;
 * the exit status is the number of failed checks (0 = all passed).
 */
#define TESTING
#include "../mlp_sweep.c"

static int failures = 0;

static void check(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    failures += !ok;
}

#ifdef REAL_DOUBLE
#define PREC "f64"
#else
#define PREC "f32"
#endif

// A small random data set: n examples of dim features, about a third of them zero
// (so the sparse paths are exercised), labels in [0, nclass).
static void random_dataset(Dataset *d, int n, int dim, int nclass, Rng *r) {
    dataset_alloc(d, n, dim, nclass);
    for (int i = 0; i < n * dim; i++) d->x[i] = rng_uniform(r) < 0.33 ? 0 : (real)rng_normal(r);
    for (int i = 0; i < n; i++) d->y[i] = (int)(rng_u64(r) % nclass);
    dataset_index_nonzeros(d);
}

// Central differences of the mean loss against every parameter, compared with the
// analytic gradient from mlp_batch_grad. Error = max |fd - analytic| / max |analytic|.
static void test_gradient(void) {
    int width[] = {80, 70, 40, 3}; // partial and full output tiles (TILE = 64 floats, 32 doubles)
    Mlp m;
    Scratch s;
    mlp_create(&m, width, 3);
    scratch_create(&s, &m, 11);
    Rng r;
    rng_seed(&r, 42);
    mlp_init(&m, INIT_TORCH_DEFAULT, 0, &r); // random biases too, so no ReLU input sits at exactly 0
    Dataset d;
    random_dataset(&d, 11, 80, 3, &r);
    int rows[11];
    for (int i = 0; i < 11; i++) rows[i] = i;
    mlp_batch_grad(&m, &s, &d, rows, 11);
#ifdef REAL_DOUBLE
    double h = 1e-6, tol = 1e-6;
#define TOL_VECTOR 0
#else
    double h = 3e-4, tol = 5e-3;
#define TOL_VECTOR 1
#endif
    double max_err = 0, max_g = 0, diff2 = 0, g2 = 0;
    for (size_t i = 0; i < m.nparams; i++) {
        real keep = m.params[i];
        double lp, lm, acc;
        m.params[i] = keep + (real)h;
        mlp_evaluate(&m, &s, &d, &lp, &acc);
        m.params[i] = keep - (real)h;
        mlp_evaluate(&m, &s, &d, &lm, &acc);
        m.params[i] = keep;
        double fd = (lp - lm) / (2 * h), g = m.grads[i];
        max_err = fmax(max_err, fabs(fd - g));
        max_g = fmax(max_g, fabs(g));
        diff2 += (fd - g) * (fd - g);
        g2 += g * g;
    }
    // f64: every component, tightly. f32: the loss itself carries ~1e-7 relative rounding,
    // so a difference quotient is good to ~1e-4 of the loss per h; compare whole vectors.
    double err = TOL_VECTOR ? sqrt(diff2 / g2) : max_err / max_g;
    check(err < tol && max_g > 1e-3,
          "[" PREC "] gradient vs central differences (80-70-40-3 MLP, 11 examples, %zu params, h %g): %s = %.2e (tol %.0e)",
          m.nparams, h, TOL_VECTOR ? "|fd - analytic| / |analytic|" : "max |fd - analytic| / max |analytic|", err, tol);
    double gn = grad_norm(&m);
    check(fabs(sqrt(s.grad_sq) - gn) <= 1e-5 * gn, "[" PREC "] gradient norm summed in the backward %.9g vs a pass over the gradients %.9g (rel tol 1e-5)",
          sqrt(s.grad_sq), gn);
    // the loss mlp_batch_grad returns is the mean loss mlp_evaluate computes
    double l_eval, acc, l_batch;
    mlp_evaluate(&m, &s, &d, &l_eval, &acc);
    memset(m.grads, 0, m.nparams * sizeof(real));
    l_batch = mlp_batch_grad(&m, &s, &d, rows, 11);
    check(fabs(l_batch - l_eval) <= 1e-6 * fabs(l_eval), "[" PREC "] batch loss %.9g equals evaluated loss %.9g (rel tol 1e-6)",
          l_batch, l_eval);
    // evaluation in chunks of 4 examples (a smaller scratch) gives the same loss and accuracy
    Scratch s4;
    scratch_create(&s4, &m, 4);
    double l4, acc4;
    mlp_evaluate(&m, &s4, &d, &l4, &acc4);
    check(fabs(l4 - l_eval) <= 1e-6 * fabs(l_eval) && acc4 == acc,
          "[" PREC "] evaluation in minibatches of 4: loss %.9g, acc %.4f vs one batch of 11: %.9g, %.4f (rel tol 1e-6)", l4,
          acc4, l_eval, acc);
    scratch_free(&s4, &m);
    dataset_free(&d);
    scratch_free(&s, &m);
    mlp_free(&m);
}

// Sample moments and bounds of each init scheme on a 1000 -> 800 -> 10 MLP.
static void test_init(void) {
    int width[] = {1000, 800, 10};
    Mlp m;
    mlp_create(&m, width, 2);
    Rng r;
    rng_seed(&r, 7);
    for (int sc = 0; sc < 4; sc++) {
        mlp_init(&m, (InitScheme)sc, 0.03, &r);
        for (int l = 0; l < 2; l++) {
            int in = width[l], out = width[l + 1];
            size_t n = (size_t)in * out;
            const real *W = m.params + m.w_off[l], *b = m.params + m.b_off[l];
            double mean = 0, var = 0, lo = INFINITY, hi = -INFINITY;
            for (size_t i = 0; i < n; i++) {
                mean += W[i];
                lo = fmin(lo, W[i]);
                hi = fmax(hi, W[i]);
            }
            mean /= n;
            for (size_t i = 0; i < n; i++) var += (W[i] - mean) * (W[i] - mean);
            double sd = sqrt(var / (n - 1));
            double want_sd, bound = 0;
            switch ((InitScheme)sc) {
            case INIT_NORMAL: want_sd = 0.03; break;
            case INIT_XAVIER_NORMAL: want_sd = sqrt(2.0 / (in + out)); break;
            case INIT_KAIMING_UNIFORM: bound = sqrt(6.0 / in); want_sd = bound / sqrt(3.0); break;
            default: bound = 1 / sqrt((double)in); want_sd = bound / sqrt(3.0); break;
            }
            // std of a sample std is about sd/sqrt(2n): 5 of those, at least 0.5%
            double tol = fmax(0.005, 5 / sqrt(2.0 * n));
            check(fabs(sd / want_sd - 1) < tol && fabs(mean) < 5 * want_sd / sqrt((double)n),
                  "[" PREC "] init %-15s layer %d (%4d->%3d): std %.6f vs %.6f (rel err %.1e, tol %.1e), mean %.1e (tol %.1e)",
                  INIT_NAMES[sc], l, in, out, sd, want_sd, fabs(sd / want_sd - 1), tol, mean, 5 * want_sd / sqrt((double)n));
            if (bound > 0) {
                // the largest of n uniforms lies within bound * 20/n of the bound (fails with prob. e^-10)
                double slack = bound * 20.0 / n;
                check(hi <= bound && lo >= -bound && hi > bound - slack && lo < -bound + slack,
                      "[" PREC "] init %-15s layer %d: samples in [%.6f, %.6f], bound ±%.6f (reached within %.1e)",
                      INIT_NAMES[sc], l, lo, hi, bound, slack);
            }
            double bmax = 0;
            for (int j = 0; j < out; j++) bmax = fmax(bmax, fabs(b[j]));
            if ((InitScheme)sc == INIT_TORCH_DEFAULT) {
                check(bmax > 0 && bmax <= 1 / sqrt((double)in), "[" PREC "] init %-15s layer %d: max |bias| %.4f in (0, %.4f]",
                      INIT_NAMES[sc], l, bmax, 1 / sqrt((double)in));
            } else {
                check(bmax == 0, "[" PREC "] init %-15s layer %d: biases are 0 (max |b| = %g)", INIT_NAMES[sc], l, bmax);
            }
        }
    }
    mlp_free(&m);
}

// Two Adam steps on three parameters, against the textbook formulas in double.
static void test_adam(void) {
    int width[] = {2, 1};
    Mlp m;
    mlp_create(&m, width, 1);
    AdamConfig a = {0.01, 0.9, 0.999, 1e-8};
    double p[3] = {0.5, -1.0, 0.25}, mm[3] = {0}, vv[3] = {0};
    double g[2][3] = {{0.3, -2.0, 1e-4}, {-0.1, 0.5, 3.0}};
    for (int i = 0; i < 3; i++) m.params[i] = (real)p[i];
    double max_err = 0;
    for (int t = 1; t <= 2; t++) {
        for (int i = 0; i < 3; i++) m.grads[i] = (real)g[t - 1][i];
        adam_update(&m, &a);
        for (int i = 0; i < 3; i++) {
            mm[i] = a.beta1 * mm[i] + (1 - a.beta1) * g[t - 1][i];
            vv[i] = a.beta2 * vv[i] + (1 - a.beta2) * g[t - 1][i] * g[t - 1][i];
            double mhat = mm[i] / (1 - pow(a.beta1, t)), vhat = vv[i] / (1 - pow(a.beta2, t));
            p[i] -= a.lr * mhat / (sqrt(vhat) + a.eps);
            max_err = fmax(max_err, fabs(m.params[i] - p[i]) / fabs(p[i]));
            max_err = fmax(max_err, fabs(m.m[i] - mm[i]) / fabs(mm[i]));
            max_err = fmax(max_err, fabs(m.v[i] - vv[i]) / fabs(vv[i]));
        }
    }
    check(max_err < 1e-6,
          "[" PREC "] Adam, 2 steps on 3 params (lr 0.01): p = %.7f %.7f %.7f, max rel err of p, m, v vs hand %.1e (tol 1e-6)",
          m.params[0], m.params[1], m.params[2], max_err);
    mlp_free(&m);
}

// Statistics: quantiles as numpy's default, Mann-Whitney U as scipy's asymptotic two-sided test.
static void test_stats(void) {
    double v[] = {4, 1, 3, 2};
    check(fabs(quantile(v, 4, 0.25) - 1.75) < 1e-12 && fabs(quantile(v, 4, 0.5) - 2.5) < 1e-12,
          "quantile of {1,2,3,4}: q25 %.4g (want 1.75), median %.4g (want 2.5)", quantile(v, 4, 0.25), quantile(v, 4, 0.5));
    double inf[] = {3, INFINITY, INFINITY};
    check(isinf(quantile(inf, 3, 0.5)), "median of {3, inf, inf} is inf");
    double a[] = {1, 2, 3, 4, 5}, b[] = {6, 7, 8, 9, 10}, u;
    // z = (12.5 - 0.5) / sqrt(25 * 11 / 12); p = erfc(z / sqrt 2) = 0.01218578
    double p = mann_whitney_u(a, 5, b, 5, &u);
    check(u == 0 && fabs(p - 0.01218578) < 1e-7, "Mann-Whitney {1..5} vs {6..10}: U %.1f (want 0), p %.8f (want 0.01218578, tol 1e-7)", u, p);
    // ties: a = {1,1,2,3}, b = {1,2,2,4}: ranks 2,2,2 | 5,5,5 | 7 | 8; U_a = 2+2+5+7 - 10 = 6;
    // tie term 24+24 = 48; var = 16/12 * (9 - 48/56) = 10.857; z = (|6 - 8| - 0.5)/3.2950 = 0.45523; p = 0.6489418
    double c[] = {1, 1, 2, 3}, e[] = {1, 2, 2, 4};
    p = mann_whitney_u(c, 4, e, 4, &u);
    check(u == 6 && fabs(p - 0.6489418) < 1e-6, "Mann-Whitney with ties: U %.1f (want 6), p %.7f (want 0.6489418, tol 1e-6)", u, p);
}

int main(void) {
    test_gradient();
    test_init();
    test_adam();
    test_stats();
    printf("%s: %d check(s) failed\n", PREC, failures);
    return failures != 0;
}
