/*
 * test/test_llama.c: unit tests for train_llama.c, which is included whole
 * (its main() is left out under TESTING). Built twice by the Makefile: in float
 * (the program as it ships) and with -DREAL_DOUBLE, where the gradient check
 * against finite differences can be tight.
 *
 *   build/test_llama [gradcheck|overfit|lir|tvr|adamw|schedule|clip|checkpoint|gemm|shuffle|decode|bf16|classifier|quant|all]
 *   build/test_llama write-shard PATH NTOK VOCAB [MAGIC VERSION]   (a synthetic shard for the CLI tests)
 *
 * Every check prints the number it measured and the tolerance; the exit status
 * is the number of failed checks (0 = all passed).
 */
#define TESTING
#include "../train_llama.c"

static int failures = 0;

static void check(int ok, const char *what, double value, double tol) {
    printf("  %-4s %-58s %.3e (tol %.1e)\n", ok ? "ok" : "FAIL", what, value, tol);
    if (!ok) failures++;
}

#ifdef REAL_DOUBLE
#define PRECISION "double"
#else
#define PRECISION "float"
#endif

// a small model with random parameters (sigma large enough that gradients are not tiny)
static void tiny_model(Llama *m, LlamaConfig c, int B, int T, double sigma, uint64_t seed) {
    llama_build(m, c);
    llama_alloc_acts(m, B, T);
    Rng rng;
    rng_seed(&rng, seed);
    llama_init(m, INIT_PLAIN, sigma, &rng);
    // norm gains away from 1 so their gradients are exercised too
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (PARAM_INFO[i].block_matrix || i == P_TOK_EMB || i == P_LM_HEAD) continue;
        for (long j = 0; j < param_count(&m->config, i); j++) m->tensor[i][j] = (real)(1 + 0.3 * rng_normal(&rng));
    }
}

static void random_tokens(int *x, int n, int vocab, Rng *rng) {
    for (int i = 0; i < n; i++) x[i] = (int)(rng_u64(rng) % (uint64_t)vocab);
}

// ---------------------------------------------------------------------------
// Every parameter of a tiny GQA model against central finite differences of the loss.
static void test_gradcheck(void) {
    printf("gradient check (%s): every parameter vs central differences\n", PRECISION);
    LlamaConfig c = {6, 23, 2, 4, 2, 16, 24, 1e-5f, 10000.0f}; // T 6, V 23, L 2, NH 4, NKV 2, C 16, F 24
    int B = 2, T = 6, N = B * T;
    Llama m;
    tiny_model(&m, c, B, T, 0.3, 7);
    Rng rng;
    rng_seed(&rng, 11);
    int x[12], y[12];
    random_tokens(x, N, c.vocab, &rng);
    random_tokens(y, N, c.vocab, &rng);
    llama_forward(&m, x, y, B, T);
    llama_zero_grad(&m);
    llama_backward(&m);
#ifdef REAL_DOUBLE
    double h = 1e-5, tol = 1e-7;
    long stride = 1; // every element
#else
    double h = 1e-2, tol = 2e-2;
    long stride = 7; // a sample: float differences are slow and noisy
#endif
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        long n = param_count(&c, i);
        real *p = m.tensor[i], *g = m.gtensor[i];
        double gmax = 0, worst = 0;
        for (long j = 0; j < n; j++) gmax = fmax(gmax, fabs((double)g[j]));
        for (long j = 0; j < n; j += stride) {
            real save = p[j];
            p[j] = (real)(save + h);
            llama_forward(&m, x, y, B, T);
            double lp = m.loss;
            p[j] = (real)(save - h);
            llama_forward(&m, x, y, B, T);
            double lm = m.loss;
            p[j] = save;
            double fd = (lp - lm) / (2 * h);
            worst = fmax(worst, fabs(fd - g[j]));
        }
        char what[128];
        snprintf(what, sizeof(what), "%s: max |grad - fd| / max|grad| (max|grad| %.1e)", PARAM_INFO[i].name, gmax);
        check(gmax > 0 && worst / gmax <= tol, what, worst / gmax, tol);
    }
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// Training on one batch again and again drives its loss near 0.
static void test_overfit(void) {
    printf("overfit one batch (%s)\n", PRECISION);
    LlamaConfig c = {16, 64, 2, 4, 2, 32, 96, 1e-5f, 10000.0f};
    int B = 4, T = 16, N = B * T;
    Llama m;
    tiny_model(&m, c, B, T, 0.02, 3);
    Rng rng;
    rng_seed(&rng, 5);
    int x[64], y[64];
    random_tokens(x, N, c.vocab, &rng);
    random_tokens(y, N, c.vocab, &rng);
    OptConfig o = {1e-2, 0.1, 0, 300, 0, 0.0, 0.9, 0.95, 1e-8, 1.0};
    double first = 0;
    for (int s = 1; s <= 300; s++) {
        llama_forward(&m, x, y, B, T);
        if (s == 1) first = m.loss;
        llama_zero_grad(&m);
        llama_backward(&m);
        clip_grad_norm(&m, o.grad_clip);
        adamw_update(&m, &o, lr_at(&o, s), s);
    }
    llama_forward(&m, x, y, B, T);
    printf("  loss %.4f -> %.5f after 300 steps\n", first, (double)m.loss);
    check(m.loss < 0.05, "final loss on the memorised batch", m.loss, 0.05);
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// Measured std of each initialised matrix against its scheme's formula.
static void test_lir(void) {
    printf("init schemes: measured std vs formula (8 layers, C 256)\n");
    LlamaConfig c = {8, 1000, 8, 4, 2, 256, 512, 1e-5f, 10000.0f};
    double sigma = 0.006;
    const char *names[] = {"plain", "lir", "residual"};
    for (int scheme = INIT_PLAIN; scheme <= INIT_RESIDUAL; scheme++) {
        Llama m;
        llama_build(&m, c);
        Rng rng;
        rng_seed(&rng, 42);
        llama_init(&m, (InitScheme)scheme, sigma, &rng);
        double worst = 0;
        int gains_ok = 1;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            int nl = PARAM_INFO[i].per_layer ? c.layers : 1;
            long n = param_layer_size(&c, i);
            for (int l = 0; l < nl; l++) {
                real *w = layer_param(&m, i, l);
                if (i == P_ATTN_NORM || i == P_FFN_NORM || i == P_FINAL_NORM) {
                    for (long j = 0; j < n; j++) gains_ok &= (w[j] == 1);
                    continue;
                }
                double mean, std, want = init_std(&c, (InitScheme)scheme, sigma, i, l + 1);
                weight_stats(w, n, &mean, &std);
                // independent formula, written out again here on purpose
                double expect = sigma;
                if (scheme == INIT_LIR && PARAM_INFO[i].block_matrix) expect = sigma / sqrt(l + 1.0);
                if (scheme == INIT_RESIDUAL && (i == P_WO || i == P_W2)) expect = sigma / sqrt(2.0 * c.layers);
                if (fabs(want - expect) > 1e-15) failures++;
                // sampling error of a std from n normals is std/sqrt(2n); allow 5 of those
                double rel = fabs(std / expect - 1), tol = 5 / sqrt(2.0 * n);
                worst = fmax(worst, rel / tol);
                if (scheme == INIT_LIR && i == P_WQ && (l == 0 || l == 7)) {
                    printf("  lir wq layer %d: std %.6f, sigma/sqrt(l) = %.6f\n", l + 1, std, expect);
                }
            }
        }
        char what[128];
        snprintf(what, sizeof(what), "%s: worst |std/expected - 1| in units of 5 sampling SEs", names[scheme]);
        check(worst <= 1, what, worst, 1);
        check(gains_ok, "norm gains all exactly 1", gains_ok ? 0 : 1, 0);
        llama_free(&m);
    }
}

// ---------------------------------------------------------------------------
// TVR: rescales the matrices over threshold to the target, keeps their mean,
// leaves everything else bitwise alone, and fires only on multiples of every.
static void test_tvr(void) {
    printf("TVR (%s)\n", PRECISION);
    LlamaConfig c = {8, 50, 3, 4, 2, 64, 128, 1e-5f, 10000.0f};
    Llama m;
    llama_build(&m, c);
    Rng rng;
    rng_seed(&rng, 9);
    llama_init(&m, INIT_LIR, 0.02, &rng); // block l std 0.02/sqrt(l): 0.02, 0.0141, 0.0115
    // give every block matrix a non-zero mean, so "mean kept" means something
    for (int l = 0; l < c.layers; l++) {
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            real *w = layer_param(&m, i, l);
            for (long j = 0; j < param_layer_size(&c, i); j++) w[j] += (real)0.003;
        }
    }
    real *before = (real *)malloc_check(sizeof(real) * m.num_params);
    memcpy(before, m.params, sizeof(real) * m.num_params);
    // target 0.01, threshold 1.2: layers 1 (0.02) and 2 (0.0141) are over, layer 3 (0.0115) is not
    TvrConfig tvr = {0.01, 50, 1.2, 0};
    check(!tvr_due(&tvr, 49) && tvr_due(&tvr, 50) && !tvr_due(&tvr, 51) && tvr_due(&tvr, 100) && !tvr_due(&tvr, 0 + 1),
          "fires on steps 50 and 100, not on 1, 49, 51", 0, 0);
    TvrConfig off = {0, 50, 1.2, 0};
    check(!tvr_due(&off, 50), "target 0 never fires", 0, 0);
    weights_pass(&m, &tvr, 50, 1, NULL);
    double worst_std = 0, worst_mean = 0;
    int untouched_ok = 1, rescaled = 0;
    for (int l = 0; l < c.layers; l++) {
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            long n = param_layer_size(&c, i), off0 = layer_param(&m, i, l) - m.params;
            double mean0, std0, mean1, std1;
            weight_stats(before + off0, n, &mean0, &std0);
            weight_stats(m.params + off0, n, &mean1, &std1);
            if (std0 / 0.01 > 1.2) {
                rescaled++;
                worst_std = fmax(worst_std, fabs(std1 / 0.01 - 1));
                worst_mean = fmax(worst_mean, fabs(mean1 - mean0));
            } else {
                untouched_ok &= memcmp(before + off0, m.params + off0, sizeof(real) * n) == 0;
            }
        }
    }
    printf("  %d of %d block matrices were over threshold\n", rescaled, 7 * c.layers);
    check(rescaled == 14, "rescaled exactly layers 1 and 2 (14 matrices)", rescaled, 14);
#ifdef REAL_DOUBLE
    double std_tol = 1e-12, mean_tol = 1e-15;
#else
    double std_tol = 1e-6, mean_tol = 1e-9;
#endif
    check(worst_std <= std_tol, "rescaled: max |std/target - 1|", worst_std, std_tol);
    check(worst_mean <= mean_tol, "rescaled: max |mean after - mean before|", worst_mean, mean_tol);
    check(untouched_ok, "under threshold: bitwise unchanged", !untouched_ok, 0);
    int others_ok = 1;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (PARAM_INFO[i].block_matrix) continue;
        long off0 = m.tensor[i] - m.params;
        others_ok &= memcmp(before + off0, m.params + off0, sizeof(real) * param_count(&c, i)) == 0;
    }
    check(others_ok, "embeddings, lm_head, norm gains: bitwise unchanged", !others_ok, 0);

    // depth-scaled: block l's target is 0.01/sqrt(l); a low target so every matrix is over
    TvrConfig deep = {0.004, 50, 1.2, 1};
    weights_pass(&m, &deep, 100, 1, NULL);
    double worst_deep = 0;
    for (int l = 0; l < c.layers; l++) {
        double mean, std;
        weight_stats(layer_param(&m, P_W2, l), param_layer_size(&c, P_W2), &mean, &std);
        worst_deep = fmax(worst_deep, fabs(std / (0.004 / sqrt(l + 1.0)) - 1));
    }
    check(worst_deep <= std_tol, "depth-scaled: w2 std = target/sqrt(l), max rel error", worst_deep, std_tol);
    free(before);
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// The schedule at a few steps, against values worked out by hand.
static void test_schedule(void) {
    printf("learning-rate schedule\n");
    OptConfig o = {1e-3, 0.1, 10, 110, 1, 0, 0.9, 0.95, 1e-8, 1};
    // warm-up: s/W * lr; step 60 is half way through the cosine: (lr + min)/2; step 110: min
    double want[][2] = {{1, 1e-4}, {5, 5e-4}, {10, 1e-3}, {60, 5.5e-4}, {110, 1e-4},
                        {35, 1e-4 + 0.5 * 9e-4 * (1 + cos(M_PI * 0.25))}};
    double worst = 0;
    for (int i = 0; i < 6; i++) worst = fmax(worst, fabs(lr_at(&o, (int)want[i][0]) - want[i][1]));
    check(worst < 1e-15, "cosine with warm-up: max |lr - hand value|", worst, 1e-15);
    o.cosine = 0;
    check(lr_at(&o, 11) == 1e-3 && lr_at(&o, 110) == 1e-3 && lr_at(&o, 5) == 5e-4, "constant after warm-up", 0, 0);
    o.warmup = 0;
    check(lr_at(&o, 1) == 1e-3, "no warm-up: lr from step 1", 0, 0);
}

// ---------------------------------------------------------------------------
// AdamW for three steps on known gradients, against the update written out by hand.
static void test_adamw(void) {
    printf("AdamW (%s): three steps by hand\n", PRECISION);
    LlamaConfig c = {4, 8, 1, 2, 1, 4, 8, 1e-5f, 10000.0f};
    Llama m;
    llama_build(&m, c);
    OptConfig o = {1e-2, 0.1, 0, 10, 0, 0.1, 0.9, 0.95, 1e-8, 0};
    double p_mat = 0.5, p_gain = 0.5, m_ = 0, v_ = 0;
    double g[3] = {0.3, -0.2, 0.05};
    for (int t = 1; t <= 3; t++) {
        for (long j = 0; j < m.num_params; j++) m.grads[j] = (real)g[t - 1];
        if (t == 1) {
            for (long j = 0; j < m.num_params; j++) m.params[j] = (real)0.5;
        }
        adamw_update(&m, &o, o.lr, t);
        // by hand: a decayed matrix entry and an undecayed norm gain
        m_ = 0.9 * m_ + 0.1 * g[t - 1];
        v_ = 0.95 * v_ + 0.05 * g[t - 1] * g[t - 1];
        double mh = m_ / (1 - pow(0.9, t)), vh = v_ / (1 - pow(0.95, t));
        p_mat = p_mat * (1 - 1e-2 * 0.1) - 1e-2 * mh / (sqrt(vh) + 1e-8);
        p_gain = p_gain - 1e-2 * mh / (sqrt(vh) + 1e-8);
    }
    double e1 = fabs(m.tensor[P_WQ][0] - p_mat), e2 = fabs(m.tensor[P_ATTN_NORM][0] - p_gain);
#ifdef REAL_DOUBLE
    double tol = 1e-12;
#else
    double tol = 1e-6;
#endif
    printf("  matrix %.9f (hand %.9f), gain %.9f (hand %.9f)\n", (double)m.tensor[P_WQ][0], p_mat,
           (double)m.tensor[P_ATTN_NORM][0], p_gain);
    check(e1 <= tol, "decayed matrix entry after 3 steps: |C - hand|", e1, tol);
    check(e2 <= tol, "norm gain (no decay) after 3 steps: |C - hand|", e2, tol);
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// Clipping: gradients of known norm.
static void test_clip(void) {
    printf("gradient clipping\n");
    LlamaConfig c = {4, 8, 1, 2, 1, 4, 8, 1e-5f, 10000.0f};
    Llama m;
    llama_build(&m, c);
    double each = 0.5, norm_want = each * sqrt((double)m.num_params);
    for (long j = 0; j < m.num_params; j++) m.grads[j] = (real)each;
    double norm = clip_grad_norm(&m, 1.0);
    check(fabs(norm - norm_want) < 1e-6 * norm_want, "returned norm is the pre-clip norm (rel err)",
          fabs(norm - norm_want) / norm_want, 1e-6);
    double after = sqrt(sum_squares(m.grads, m.num_params, 0));
    double want = norm_want * (1.0 / (norm_want + 1e-6));
    check(fabs(after - want) < 1e-6, "clipped norm = max * norm/(norm + 1e-6)", fabs(after - want), 1e-6);
    for (long j = 0; j < m.num_params; j++) m.grads[j] = (real)1e-3;
    real before = m.grads[0];
    clip_grad_norm(&m, 1.0);
    check(m.grads[0] == before, "norm below max: gradients untouched", 0, 0);
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// model.bin and state.bin round trip.
static void test_checkpoint(void) {
    printf("checkpoint round trip\n");
    LlamaConfig c = {8, 40, 2, 4, 2, 16, 32, 1e-5f, 500000.0f};
    Llama a, b;
    tiny_model(&a, c, 1, 8, 0.1, 1);
    for (long j = 0; j < a.num_params; j++) a.m[j] = (real)(j * 1e-3), a.v[j] = (real)(j * 2e-3);
    ensure_dir("build/tmp_ckpt");
    llama_save(&a, "build/tmp_ckpt/model.bin");
    Settings run;
    memset(&run, 0, sizeof(run));
    run.seed = 4242, run.batch = 3, run.seq_len = 7, run.warmup = 5, run.lr = 0.0125, run.schedule = "constant";
    run.shuffle = 1;
    int32_t shape[STATE_CONFIG_INTS];
    int nshape = llama_config_ints(&c, shape);
    TrainState st = state_new(&run, shape, nshape), st2;
    st.step = 17, st.pos = 1234, st.rng = 0xDEADBEEFCAFEULL;
    state_save(&a, &st, "build/tmp_ckpt/state.bin");
    LlamaConfig c2;
    llama_read_header("build/tmp_ckpt/model.bin", &c2);
    check(memcmp(&c, &c2, sizeof(c)) == 0, "config read back equal", 0, 0);
    llama_build(&b, c2);
    llama_load_params(&b, "build/tmp_ckpt/model.bin");
    state_load(&b, &st2, "build/tmp_ckpt/state.bin");
    double worst = 0;
    for (long j = 0; j < a.num_params; j++) {
        worst = fmax(worst, fabs((double)(float)a.params[j] - b.params[j]));
        worst = fmax(worst, fabs((double)(float)a.m[j] - b.m[j]) + fabs((double)(float)a.v[j] - b.v[j]));
    }
    check(worst == 0, "params, m, v equal after save/load (fp32 on disk)", worst, 0);
    check(st2.step == 17 && st2.pos == 1234 && st2.rng == 0xDEADBEEFCAFEULL && st2.shuffle == 1 && st2.shuffle_seed == 4242,
          "step, data position, rng, shuffle and its seed restored", 0, 0);
    // --resume with none of the recorded flags given takes them from state.bin
    Settings back;
    memset(&back, 0, sizeof(back));
    back.schedule = "cosine";
    resume_settings(&back, 0, "build/tmp_ckpt", STATE_MAGIC, "train_llama", shape, nshape);
    check(back.seed == 4242 && back.batch == 3 && back.seq_len == 7 && back.warmup == 5 && back.lr == 0.0125 &&
              !strcmp(back.schedule, "constant"),
          "seed, batch, seq-len, warmup, lr, schedule recorded and taken back", 0, 0);
    struct stat sb;
    check(stat("build/tmp_ckpt/model.bin.tmp", &sb) != 0, "no temporary file left behind", 0, 0);
    llama_free(&a);
    llama_free(&b);
}

// ---------------------------------------------------------------------------
// The blocked GEMM against the plain triple loop, on awkward sizes and strides (whole and
// partial strips, blocks of k and of columns; one thread's rows and all threads' rows).
// In float, the bf16 ref kernel too: it must give, bit for bit, the fp32 kernel's product
// of the inputs rounded to bf16 beforehand (its packing rounds them on the way).
static void test_gemm(void) {
    printf("gemm vs naive triple loop (%s)\n", PRECISION);
    int sizes[][3] = {{1, 1, 1}, {7, 33, 5}, {129, 65, 300}, {64, 2050, 17}, {300, 40, 520}};
    Rng rng;
    rng_seed(&rng, 3);
    double worst = 0;
    long ref_differ = 0;
    for (int s = 0; s < 5; s++) {
        int M = sizes[s][0], N = sizes[s][1], K = sizes[s][2];
        real *A = (real *)malloc_check(sizeof(real) * M * K), *B = (real *)malloc_check(sizeof(real) * K * N);
        real *C = (real *)malloc_check(sizeof(real) * M * N), *R = (real *)malloc_check(sizeof(real) * M * N);
        for (long i = 0; i < (long)M * K; i++) A[i] = (real)rng_normal(&rng);
        for (long i = 0; i < (long)K * N; i++) B[i] = (real)rng_normal(&rng);
        for (int tr = 0; tr < 4; tr++) { // A and B each row-major or transposed
            long a_rs = tr & 1 ? 1 : K, a_cs = tr & 1 ? M : 1, b_rs = tr & 2 ? 1 : N, b_cs = tr & 2 ? K : 1;
            for (int acc = 0; acc < 2; acc++) {
                for (long i = 0; i < (long)M * N; i++) C[i] = R[i] = (real)(acc ? 1.5 : 99);
                gemm(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, N, acc);
                for (int i = 0; i < M; i++) {
                    for (int j = 0; j < N; j++) {
                        double sum = acc ? R[i * N + j] : 0;
                        for (int k = 0; k < K; k++) sum += (double)A[i * a_rs + k * a_cs] * B[k * b_rs + j * b_cs];
                        worst = fmax(worst, fabs(sum - C[i * N + j]) / sqrt((double)K + 1));
                    }
                }
            }
#ifndef REAL_DOUBLE
            real *Ar = (real *)malloc_check(sizeof(real) * M * K), *Br = (real *)malloc_check(sizeof(real) * K * N);
            for (long i = 0; i < (long)M * K; i++) Ar[i] = bf16_rounded(A[i]);
            for (long i = 0; i < (long)K * N; i++) Br[i] = bf16_rounded(B[i]);
            for (long i = 0; i < (long)M * N; i++) C[i] = R[i] = 1.5f;
            gemm_kernel = &BF16_KERNELS[BF16_REF];
            gemm(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, N, 1);
            gemm_kernel = &FP32_KERNEL;
            gemm(M, N, K, Ar, a_rs, a_cs, Br, b_rs, b_cs, R, N, 1);
            for (long i = 0; i < (long)M * N; i++) ref_differ += memcmp(&C[i], &R[i], sizeof(real)) != 0;
            free(Ar), free(Br);
#endif
        }
        free(A), free(B), free(C), free(R);
    }
#ifndef REAL_DOUBLE
    check(ref_differ == 0, "bf16 ref kernel vs fp32 on pre-rounded inputs: elements differing", (double)ref_differ, 0);
#endif
#ifdef REAL_DOUBLE
    double tol = 1e-13;
#else
    double tol = 1e-5;
#endif
    check(worst <= tol, "max |C - reference| / sqrt(K+1), all transposes, = and +=", worst, tol);
}

// gemm_causal leaves out only exact zeros: each causal mode of attention's products against
// the dense product of the same operands, bit for bit, on every kernel this CPU has. Row i
// of C is position i + diag (llama_decode's last rows: diag = n - m); the sizes cut tiles,
// strips and blocks of k (K > KC), and A is read both ways, as attention reads P and P^T.
static void test_causal(void) {
    printf("gemm_causal vs the dense product (%s)\n", PRECISION);
    const GemmKernel *kernels[4] = {&FP32_KERNEL};
    int nk = 1;
#ifndef REAL_DOUBLE
    kernels[nk++] = &BF16_KERNELS[BF16_REF];
    if (cpu_has_avx512bf16()) kernels[nk++] = &BF16_KERNELS[BF16_AVX512];
    if (cpu_has_amx_bf16()) kernels[nk++] = &BF16_KERNELS[BF16_AMX];
#endif
    int shapes[][3] = {{37, 37, 0}, {130, 130, 0}, {300, 300, 0}, {600, 600, 0}, {5, 300, 295}, {1, 64, 63}, {10, 40, 30}};
    int hs = 24, differ = 0, cases = 0;
    Rng rng;
    rng_seed(&rng, 6);
    for (int kk = 0; kk < nk; kk++) {
        gemm_kernel = kernels[kk];
        for (int sh = 0; sh < 7; sh++) {
            int m = shapes[sh][0], n = shapes[sh][1], diag = shapes[sh][2];
            // P (m x n) causal: P(i, j) = 0 for j > i + diag; Pt (n x m) is its transpose; X, Y dense
            real *P = (real *)calloc_check((size_t)m * n, sizeof(real)), *X = (real *)malloc_check(sizeof(real) * n * hs);
            real *Y = (real *)malloc_check(sizeof(real) * m * hs);
            for (int i = 0; i < m; i++)
                for (int j = 0; j <= i + diag && j < n; j++) P[(long)i * n + j] = (real)rng_normal(&rng);
            for (long i = 0; i < (long)n * hs; i++) X[i] = (real)rng_normal(&rng);
            for (long i = 0; i < (long)m * hs; i++) Y[i] = (real)rng_normal(&rng);
            long cn = (long)(m > hs ? m : hs) * n; // the largest C: m x n or n x hs
            real *c1 = (real *)malloc_check(sizeof(real) * cn), *c2 = (real *)malloc_check(sizeof(real) * cn);
            for (int acc = 0; acc < 2; acc++) {
                // C_LOWER: S = Y.X^T (m x n), compared where j <= i + diag
                for (long i = 0; i < (long)m * n; i++) c1[i] = c2[i] = 0.5f;
                gemm_causal(m, n, hs, Y, hs, 1, X, 1, hs, c1, n, acc, 0, C_LOWER, diag);
                gemm_causal(m, n, hs, Y, hs, 1, X, 1, hs, c2, n, acc, 0, DENSE, 0);
                for (int i = 0; i < m; i++)
                    for (int j = 0; j <= i + diag && j < n; j++) differ += c1[(long)i * n + j] != c2[(long)i * n + j];
                // A_LOWER: O = P.X (m x hs)
                for (long i = 0; i < (long)m * hs; i++) c1[i] = c2[i] = 0.5f;
                gemm_causal(m, hs, n, P, n, 1, X, hs, 1, c1, hs, acc, 0, A_LOWER, diag);
                gemm_causal(m, hs, n, P, n, 1, X, hs, 1, c2, hs, acc, 0, DENSE, 0);
                differ += memcmp(c1, c2, sizeof(real) * m * hs) != 0;
                // A_UPPER: P^T.Y (n x hs), A = P read down its columns; row j of C is key j,
                // whose queries start at i = j - diag
                for (long i = 0; i < (long)n * hs; i++) c1[i] = c2[i] = 0.5f;
                gemm_causal(n, hs, m, P, 1, n, Y, hs, 1, c1, hs, acc, 0, A_UPPER, -diag);
                gemm_causal(n, hs, m, P, 1, n, Y, hs, 1, c2, hs, acc, 0, DENSE, 0);
                differ += memcmp(c1, c2, sizeof(real) * n * hs) != 0;
                cases += 3;
            }
            free(P), free(X), free(Y), free(c1), free(c2);
        }
    }
    gemm_kernel = &FP32_KERNEL;
    printf("       %d products on %d kernel(s)\n", cases, nk);
    check(differ == 0, "causal products that differ from the dense ones (elements or matrices)", differ, 0);
}

// The training step's fused classifier against the forward-then-backward pair the
// gradient check covers: the same losses and d loss / d logits up to float rounding.
static void test_classifier(void) {
    printf("fused classifier vs crossentropy_forward + crossentropy_backward_inplace (%s)\n", PRECISION);
    int N = 37, V = 1003;
    Rng rng;
    rng_seed(&rng, 5);
    real *a = (real *)malloc_check(sizeof(real) * N * V), *b = (real *)malloc_check(sizeof(real) * N * V);
    real la[37], lb[37], sa[37], sb[37];
    int tg[37];
    for (long i = 0; i < (long)N * V; i++) a[i] = b[i] = (real)(3 * rng_normal(&rng));
    for (int i = 0; i < N; i++) tg[i] = (int)(rng_uniform(&rng) * V) % V;
    crossentropy_forward(la, sa, a, tg, N, V);
    crossentropy_backward_inplace(a, sa, tg, N, V);
    crossentropy_fused(lb, sb, b, tg, N, V);
    double dl = 0, dg = 0, gmax = 0;
    for (int i = 0; i < N; i++) dl = fmax(dl, fabs((double)la[i] - lb[i]) / fabs((double)la[i]));
    for (long i = 0; i < (long)N * V; i++) dg = fmax(dg, fabs((double)a[i] - b[i])), gmax = fmax(gmax, fabs((double)a[i]));
    double tol = sizeof(real) == 8 ? 1e-13 : 1e-5;
    check(dl <= tol, "losses: max relative difference", dl, tol);
    check(dg / gmax <= tol, "gradients: max |difference| / max |gradient|", dg / gmax, tol);
    free(a), free(b);
}

// ---------------------------------------------------------------------------
// --precision bf16 (common/gemm_bf16.h): the rounding against hand-computed bits, and
// every bf16 kernel this CPU has against a double-precision sum of the same rounded
// inputs, within the bound of an fp32 sum: |C - exact| <= gamma_K * sum_k |a*b| (gamma_K =
// K*u/(1-K*u), u = 2^-24), for all transposes, = and +=, partial tiles and k blocks.
#ifndef REAL_DOUBLE
static void test_bf16(void) {
    printf("bf16 matmul inputs (float)\n");
    struct {
        uint32_t in;
        uint16_t want;
        const char *what;
    } cases[] = {
        {0x3f800000, 0x3f80, "1.0"},
        {0x3f808000, 0x3f80, "1 + 2^-8: a tie, to the even 1.0"},
        {0x3f818000, 0x3f82, "1 + 3*2^-8: a tie, to the even 1 + 2^-6"},
        {0x3f808001, 0x3f81, "just above the tie: up"},
        {0x3f807fff, 0x3f80, "just below the tie: down"},
        {0xc0200000, 0xc020, "-2.5"},
        {0x7f7fffff, 0x7f80, "FLT_MAX rounds to +inf"},
        {0xff800000, 0xff80, "-inf"},
        {0x00000001, 0x0000, "the smallest subnormal rounds to +0"},
        {0x7fc00001, 0x7fc0, "a NaN stays a (quiet) NaN"},
        {0x7f800001, 0x7fc0, "a signalling NaN becomes quiet, not inf"},
    };
    int wrong = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        float f;
        memcpy(&f, &cases[i].in, sizeof(f));
        uint16_t got = bf16_round(f);
        if (got != cases[i].want) {
            printf("       %s: %08x -> %04x, want %04x\n", cases[i].what, cases[i].in, got, cases[i].want);
            wrong++;
        }
    }
    check(wrong == 0, "bf16_round: 11 hand-computed cases (ties, inf, NaN) wrong", wrong, 0);

    Bf16Kernel kinds[3] = {BF16_REF};
    int nk = 1;
    if (cpu_has_avx512bf16()) kinds[nk++] = BF16_AVX512;
    if (cpu_has_amx_bf16()) kinds[nk++] = BF16_AMX;
    int sizes[][3] = {{1, 1, 1}, {7, 33, 5}, {37, 70, 45}, {129, 65, 600}, {64, 2050, 33}, {300, 40, 520}};
    Rng rng;
    rng_seed(&rng, 4);
    for (int kk = 0; kk < nk; kk++) {
        const GemmKernel *kn = &BF16_KERNELS[kinds[kk]];
        double worst = 0, unrounded = 0;
        for (int sz = 0; sz < 6; sz++) {
            int M = sizes[sz][0], N = sizes[sz][1], K = sizes[sz][2];
            real *A = (real *)malloc_check(sizeof(real) * M * K), *B = (real *)malloc_check(sizeof(real) * K * N);
            real *C = (real *)malloc_check(sizeof(real) * M * N), *F = (real *)malloc_check(sizeof(real) * M * N);
            for (long i = 0; i < (long)M * K; i++) A[i] = (real)rng_normal(&rng);
            for (long i = 0; i < (long)K * N; i++) B[i] = (real)rng_normal(&rng);
            double gamma = K * ldexp(1.0, -24) / (1 - K * ldexp(1.0, -24));
            for (int tr = 0; tr < 4; tr++) {
                long a_rs = tr & 1 ? 1 : K, a_cs = tr & 1 ? M : 1, b_rs = tr & 2 ? 1 : N, b_cs = tr & 2 ? K : 1;
                for (int acc = 0; acc < 2; acc++) {
                    for (long i = 0; i < (long)M * N; i++) C[i] = F[i] = (real)(acc ? 1.5 : 99);
                    gemm_kernel = kn;
                    gemm(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, N, acc);
                    gemm_kernel = &FP32_KERNEL;
                    gemm(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, F, N, acc);
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < N; j++) {
                            double sum = acc ? 1.5 : 0, mag = acc ? 1.5 : 0;
                            for (int k = 0; k < K; k++) {
                                double p = (double)bf16_rounded(A[i * a_rs + k * a_cs]) *
                                           bf16_rounded(B[k * b_rs + j * b_cs]);
                                sum += p, mag += fabs(p);
                            }
                            double bound = gamma * mag + 1e-30;
                            worst = fmax(worst, fabs(sum - C[i * N + j]) / bound);
                            unrounded = fmax(unrounded, fabs(sum - F[i * N + j]) / bound);
                        }
                    }
                }
            }
            free(A), free(B), free(C), free(F);
        }
        char what[120];
        snprintf(what, sizeof(what), "%s: max |C - exact| / (gamma_K sum|ab|)", kn->name);
        check(worst <= 1, what, worst, 1);
        // and the inputs were rounded: the fp32 product misses the same bound by far
        snprintf(what, sizeof(what), "  the fp32 kernel on unrounded inputs, same measure (> 100)");
        check(unrounded > 100, what, unrounded, 100);
    }
    // results do not depend on the thread count (2 threads, then 1: the buffers fit both)
    int M = 200, N = 300, K = 100;
    real *A = (real *)malloc_check(sizeof(real) * M * K), *B = (real *)malloc_check(sizeof(real) * K * N);
    real *C1 = (real *)malloc_check(sizeof(real) * M * N), *C2 = (real *)malloc_check(sizeof(real) * M * N);
    for (long i = 0; i < (long)M * K; i++) A[i] = (real)rng_normal(&rng);
    for (long i = 0; i < (long)K * N; i++) B[i] = (real)rng_normal(&rng);
    gemm_kernel = &BF16_KERNELS[kinds[nk - 1]];
    int nt = omp_get_max_threads();
    gemm(M, N, K, A, K, 1, B, 1, K, C1, N, 0);
    omp_set_num_threads(1);
    gemm(M, N, K, A, K, 1, B, 1, K, C2, N, 0);
    omp_set_num_threads(nt);
    gemm_kernel = &FP32_KERNEL;
    check(!memcmp(C1, C2, sizeof(real) * M * N), "fastest bf16 kernel: 1 thread = all threads, bitwise (1 = differ)",
          memcmp(C1, C2, sizeof(real) * M * N) != 0, 0);
    free(A), free(B), free(C1), free(C2);
}
#else
static void test_bf16(void) { printf("bf16 matmul inputs: the float build tests them\n"); }
#endif

// ---------------------------------------------------------------------------
// --shuffle: every epoch reads each whole-batch window of every shard exactly once,
// rows are real windows (contiguous, aligned to T, targets shifted by one), epochs
// differ, and seeking to batch k gives what k calls of next() give.
static void write_counting_shard(const char *path, long ntok, int first) {
    int32_t header[256] = {0};
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = (int32_t)ntok;
    FILE *f = fopen_check(path, "wb");
    fwrite_check(header, sizeof(int32_t), 256, f, path);
    for (long i = 0; i < ntok; i++) {
        uint16_t t = (uint16_t)(first + i);
        fwrite_check(&t, sizeof(t), 1, f, path);
    }
    fclose_check(f, path);
}

static void test_shuffle(void) {
    printf("shuffled data order (B 4, T 16; shards of 3000 and 2000 tokens)\n");
    ensure_dir("build");
    write_counting_shard("build/shuffle_000.bin", 3000, 0);     // 187 windows: 46 batches, 3 windows left out
    write_counting_shard("build/shuffle_001.bin", 2000, 10000); // 124 windows: 31 batches
    enum { B = 4, T = 16, EPOCH = 46 + 31 };
    DataLoader dl, other;
    dataloader_init(&dl, "build/shuffle_*.bin", "--train", B, T, 65535);
    dataloader_shuffle(&dl, 1337);
    static unsigned char seen[2][200];
    static int first[2][EPOCH][B];
    long bad_rows = 0, repeats = 0, order_switches = 0;
    for (int e = 0; e < 2; e++) {
        memset(seen, 0, sizeof(seen));
        int last_shard = -1;
        for (int k = 0; k < EPOCH; k++) {
            dataloader_next(&dl);
            for (int b = 0; b < B; b++) {
                int start = dl.inputs[b * T], shard = start >= 10000, off = start - (shard ? 10000 : 0);
                int ok = off % T == 0;
                for (int t = 0; t < T; t++) {
                    ok &= dl.inputs[b * T + t] == start + t && dl.targets[b * T + t] == start + t + 1;
                }
                bad_rows += !ok;
                repeats += seen[shard][off / T]++ > 0;
                first[e][k][b] = start;
                if (shard != last_shard) order_switches++, last_shard = shard;
            }
        }
        int used0 = 0, used1 = 0;
        for (int w = 0; w < 200; w++) used0 += seen[0][w], used1 += seen[1][w];
        check(used0 == 46 * B && used1 == 124, "an epoch reads 184 of shard 0's windows, all 124 of shard 1's",
              (double)abs(used0 - 46 * B) + abs(used1 - 124), 0);
    }
    check(bad_rows == 0, "rows that are not an aligned window with shifted targets", (double)bad_rows, 0);
    check(repeats == 0, "windows read twice within an epoch", (double)repeats, 0);
    check(order_switches <= 4, "shard switches in two epochs (each shard read in one stretch)", (double)order_switches, 4);
    long same_place = 0;
    for (int k = 0; k < EPOCH; k++) same_place += first[0][k][0] == first[1][k][0];
    check(same_place < EPOCH / 4, "batches of epoch 2 whose first row equals epoch 1's there", (double)same_place, EPOCH / 4);
    // seeking: batches k (within and after the first epoch) as a fresh loader sees them
    long seek_diff = 0;
    int ks[] = {0, 5, 45, 46, EPOCH - 1, EPOCH, EPOCH + 50, 3 * EPOCH + 7};
    for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
        dataloader_init(&other, "build/shuffle_*.bin", "--train", B, T, 65535);
        dataloader_shuffle(&other, 1337);
        dataloader_seek_batch(&other, ks[i]);
        dataloader_next(&other);
        dataloader_reset(&dl);
        for (int k = 0; k <= ks[i]; k++) dataloader_next(&dl);
        for (int j = 0; j < B * T; j++) seek_diff += other.inputs[j] != dl.inputs[j] || other.targets[j] != dl.targets[j];
        dataloader_free(&other);
    }
    check(seek_diff == 0, "tokens that differ between seek_batch(k) and k x next()", (double)seek_diff, 0);
    dataloader_init(&other, "build/shuffle_*.bin", "--train", B, T, 65535);
    dataloader_shuffle(&other, 1338);
    dataloader_reset(&dl);
    dataloader_next(&dl);
    dataloader_next(&other);
    check(memcmp(dl.inputs, other.inputs, sizeof(int) * B * T) != 0, "seeds 1337 and 1338 start differently (1 = same)",
          memcmp(dl.inputs, other.inputs, sizeof(int) * B * T) == 0, 0);
    dataloader_free(&other);
    dataloader_free(&dl);
}

// ---------------------------------------------------------------------------
// A synthetic shard for the command-line tests: tokens i*7 mod vocab.
static int write_shard(int argc, char **argv) {
    if (argc < 5) die("usage: write-shard PATH NTOK VOCAB [MAGIC VERSION]");
    long ntok = atol(argv[3]);
    int vocab = atoi(argv[4]);
    int32_t header[256] = {0};
    header[0] = argc > 5 ? atoi(argv[5]) : SHARD_MAGIC;
    header[1] = argc > 6 ? atoi(argv[6]) : SHARD_VERSION;
    header[2] = (int32_t)ntok;
    header[3] = vocab;
    FILE *f = fopen_check(argv[2], "wb");
    fwrite_check(header, sizeof(int32_t), 256, f, argv[2]);
    for (long i = 0; i < ntok; i++) {
        uint16_t t = (uint16_t)((i * 7 + i / 13) % vocab);
        fwrite_check(&t, sizeof(t), 1, f, argv[2]);
    }
    fclose_check(f, argv[2]);
    return 0;
}

// ---------------------------------------------------------------------------
// Generation: llama_decode (one position at a time, KV cache) computes what the batch
// forward computes at each position; the sampler's greedy and nucleus choices.
static void test_decode(void) {
    printf("decode (%s):\n", PRECISION);
    LlamaConfig c = {12, 50, 2, 4, 2, 16, 48, 1e-5f, 10000.0f};
    Llama m;
    tiny_model(&m, c, 1, 12, 0.3, 11);
    Rng rng;
    rng_seed(&rng, 12);
    int tok[24];
    random_tokens(tok, 12, c.vocab, &rng);
    llama_forward(&m, tok, tok + 12, 1, 12); // targets: any ids
    double err = 0, ref = 0;
    for (int t = 0; t < 12; t++) {
        const float *lg = llama_decode(&m, tok[t], t);
        for (int j = 0; j < c.vocab; j++) {
            real want = m.acts.logits[(long)t * c.vocab + j];
            err = fmax(err, fabs((double)lg[j] - (double)(float)want));
            ref = fmax(ref, fabs((double)want));
        }
    }
    // the same layer functions in the same order: equal up to the logits' float rounding
    double tol = sizeof(real) == 8 ? 1e-7 : 1e-5;
    check(err / ref <= tol, "decode logits vs llama_forward, 12 positions (rel)", err / ref, tol);
    // greedy generation: the cache and the recompute path choose the same tokens
    Sampler sm;
    sampler_init(&sm, c.vocab, 0, 0.9);
    int a[12] = {tok[0]}, b[12] = {tok[0]};
    m.dec->kv_cache = 1;
    generate(&m, llama_next_logits, &sm, &rng, a, 1, 11);
    m.dec->kv_cache = 0;
    generate(&m, llama_next_logits, &sm, &rng, b, 1, 11);
    check(!memcmp(a, b, sizeof(a)), "greedy: KV cache = recomputed prefix, 11 tokens (1 = differ)",
          memcmp(a, b, sizeof(a)) != 0, 0);
    sampler_free(&sm);
    // the sampler: greedy takes the argmax; top-p 0.5 of {0.6, 0.3, 0.1} always the first;
    // temperature 1, top-p 1: frequencies near the probabilities
    float logits[3] = {(float)log(0.3), (float)log(0.6), (float)log(0.1)};
    sampler_init(&sm, 3, 0, 1);
    check(sample_token(&sm, logits, &rng) == 1, "greedy picks the argmax (1 = wrong)", 0, 0);
    sm.temperature = 1, sm.top_p = 0.5;
    int other = 0;
    for (int i = 0; i < 1000; i++) other += sample_token(&sm, logits, &rng) != 1;
    check(other == 0, "top-p 0.5 keeps only the 0.6 token (draws of others)", other, 0);
    sm.top_p = 1;
    int count[3] = {0};
    for (int i = 0; i < 20000; i++) count[sample_token(&sm, logits, &rng)]++;
    double dev = fmax(fabs(count[1] / 20000.0 - 0.6), fmax(fabs(count[0] / 20000.0 - 0.3), fabs(count[2] / 20000.0 - 0.1)));
    check(dev < 0.02, "temperature 1: frequencies vs 0.3/0.6/0.1 (max abs dev; 5 sigma ~0.017)", dev, 0.02);
    sampler_free(&sm);
    llama_free(&m);
}

// ---------------------------------------------------------------------------
// Fake quantization (--eval-only 1 --quant): the quantizer against values worked out by
// hand, groups and per-token scales, what llama_quantize_weights touches, and 16 bits
// against none on a model's loss and logits.
static double max_diff(const real *a, const double *want, int n) {
    double worst = 0;
    for (int i = 0; i < n; i++) worst = fmax(worst, fabs((double)a[i] - want[i]));
    return worst;
}

static void test_quant(void) {
    printf("fake quantization (%s)\n", PRECISION);
    // 8 bits: scale 1.27/127 = 0.01; 0.013 -> 1.3 -> 1, -0.006 -> -0.6 -> -1
    real x8[5] = {(real)1.27, (real)-0.5, (real)0.013, 0, (real)-0.006}, y[8];
    double w8[5] = {1.27, -0.5, 0.01, 0, -0.01};
    quant_group(y, x8, 5, 8);
    check(max_diff(y, w8, 5) <= 1e-6, "8 bits, scale 0.01: 5 hand values, max |error|", max_diff(y, w8, 5), 1e-6);
    // 4 bits (qmax 7), scale 1: exact; ties to even (2.5 -> 2, -1.5 -> -2, 0.5 -> 0)
    real x4[8] = {7, (real)-3.4, (real)1.6, (real)0.2, -7, (real)2.5, (real)-1.5, (real)0.5};
    double w4[8] = {7, -3, 2, 0, -7, 2, -2, 0};
    quant_group(y, x4, 8, 4);
    check(max_diff(y, w4, 8) == 0, "4 bits, scale 1: 8 hand values (3 ties to even), max |error|", max_diff(y, w4, 8),
          0);
    real z[3] = {0, 0, 0};
    quant_group(y, z, 3, 8);
    check(y[0] == 0 && y[1] == 0 && y[2] == 0, "an all-zero group stays zero (1 = not)", 0, 0);
    // a 2 x 6 matrix, 4 bits, groups of 4: row 0's groups have scales 1 and 0.1, row 1's 0.5 and 2
    real m[12] = {7, (real)3.2, -1, (real)0.4, (real)0.7, (real)-0.3, (real)3.5, (real)-1.2, (real)0.3, 1, 14, 5};
    double wm[12] = {7, 3, -1, 0, 0.7, -0.3, 3.5, -1, 0.5, 1, 14, 4}; // 5 / 2 = 2.5: a tie, to 2
    quant_matrix(m, 2, 6, 4, 4);
    check(max_diff(m, wm, 12) <= 1e-6, "4 bits, groups of 4 in rows of 6: 12 hand values", max_diff(m, wm, 12), 1e-6);
    real mr[4] = {7, (real)3.2, (real)0.7, (real)0.3}; // group 0 (and group >= cols): one scale a row
    double wr[4] = {7, 3, 0.7, 0.3};
    quant_matrix(mr, 2, 2, 4, 0);
    check(max_diff(mr, wr, 4) <= 1e-6, "4 bits, a scale per row (output channel): 4 hand values",
          max_diff(mr, wr, 4), 1e-6);
    // activations, 4 bits: per tensor one scale 1/7 for both rows; per token 1/7 and 0.1/7
    real a[4] = {1, (real)0.6, (real)0.1, (real)-0.02};
    double wt[4] = {1, 4.0 / 7, 1.0 / 7, 0}, wk[4] = {1, 4.0 / 7, 0.1, -0.1 / 7};
    const real *qa = quant_input(a, 2, 2, 4, 0);
    check(max_diff(qa, wt, 4) <= 1e-6, "4-bit inputs per tensor: 4 hand values", max_diff(qa, wt, 4), 1e-6);
    qa = quant_input(a, 2, 2, 4, 1);
    check(max_diff(qa, wk, 4) <= 1e-6, "4-bit inputs per token: 4 hand values", max_diff(qa, wk, 4), 1e-6);
    // --quant's choices are the settings' names, in order
    char names[256] = "";
    for (int i = 0; i < NUM_QUANT_SETTINGS; i++) {
        strcat(names, QUANT_SETTINGS[i].name);
        if (i + 1 < NUM_QUANT_SETTINGS) strcat(names, "|");
    }
    check(!strcmp(names, QUANT_CHOICES), "QUANT_SETTINGS' names = --quant's choices (1 = differ)",
          strcmp(names, QUANT_CHOICES) != 0, 0);

    // a model: what is quantized, and 16 bits against none
    LlamaConfig c = {16, 40, 2, 4, 2, 32, 48, 1e-5f, 10000.0f}; // T 16, V 40, L 2, NH 4, NKV 2, C 32, F 48
    int B = 2, T = 16, N = B * T, V = c.vocab;
    Llama ref, q16, q8;
    tiny_model(&ref, c, B, T, 0.1, 5);
    tiny_model(&q16, c, B, T, 0.1, 5);
    tiny_model(&q8, c, B, T, 0.1, 5);
    Rng rng;
    rng_seed(&rng, 3);
    int tx[32], ty[32];
    random_tokens(tx, N, V, &rng);
    random_tokens(ty, N, V, &rng);
    llama_quantize_weights(&q8, quant_setting("w4g128"));
    int kept = 1, changed = 1;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        int same = !memcmp(ref.tensor[i], q8.tensor[i], sizeof(real) * param_count(&c, i));
        if (PARAM_INFO[i].block_matrix || i == P_LM_HEAD) changed &= !same;
        else kept &= same;
    }
    check(changed, "w4g128: every block matrix and lm_head changed (1 = one not)", !changed, 0);
    check(kept, "w4g128: tok_emb and the norm gains bitwise kept (1 = not)", !kept, 0);
    memcpy(q8.params, ref.params, sizeof(real) * ref.num_params);

    llama_forward(&ref, tx, ty, B, T);
    real *ref_logits = (real *)malloc_check(sizeof(real) * N * V);
    memcpy(ref_logits, ref.acts.logits, sizeof(real) * N * V);
    double lmax = 0;
    for (long i = 0; i < (long)N * V; i++) lmax = fmax(lmax, fabs((double)ref_logits[i]));
    double dl[2], dz[2];
    Llama *qm[2] = {&q16, &q8};
    const char *qn[2] = {"w16a16", "w8a8"};
    for (int k = 0; k < 2; k++) {
        const QuantSetting *qs = quant_setting(qn[k]);
        llama_quantize_weights(qm[k], qs);
        quant = *qs;
        llama_forward(qm[k], tx, ty, B, T);
        quant = QUANT_SETTINGS[0];
        dl[k] = fabs((double)qm[k]->loss - (double)ref.loss);
        dz[k] = 0;
        for (long i = 0; i < (long)N * V; i++) dz[k] = fmax(dz[k], fabs((double)qm[k]->acts.logits[i] - ref_logits[i]));
        dz[k] /= lmax;
    }
    // 16 bits: every weight and input within s/2 = max/65534 of its value (1.5e-5 of its
    // group's largest: not float rounding, 2^-24, but 2^9 times that), summed over 2 blocks
    // and lm_head. That the rest is that rounding and nothing else: 8 bits' step is 2^8
    // times 16 bits', and so is the logits' error (to a factor 4 either way).
    check(dl[0] <= 1e-4, "w16a16 vs none: |loss difference|", dl[0], 1e-4);
    check(dz[0] <= 1e-3, "w16a16 vs none: max |logit difference| / max |logit|", dz[0], 1e-3);
    double ratio = dz[1] / fmax(dz[0], 1e-30);
    check(ratio >= 64 && ratio <= 1024, "logit error w8a8 / w16a16 (the steps' ratio 256; in [64, 1024])", ratio,
          256);
    llama_forward(&ref, tx, ty, B, T);
    check(!memcmp(ref.acts.logits, ref_logits, sizeof(real) * N * V),
          "after an evaluation, quant none: logits bitwise as before (1 = differ)",
          memcmp(ref.acts.logits, ref_logits, sizeof(real) * N * V) != 0, 0);
    free(ref_logits);
    llama_free(&ref);
    llama_free(&q16);
    llama_free(&q8);
}

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "all";
    if (!strcmp(which, "write-shard")) return write_shard(argc, argv);
    struct {
        const char *name;
        void (*fn)(void);
    } tests[] = {{"gemm", test_gemm},         {"gradcheck", test_gradcheck}, {"overfit", test_overfit},
                 {"lir", test_lir},           {"tvr", test_tvr},             {"schedule", test_schedule},
                 {"adamw", test_adamw},       {"clip", test_clip},           {"checkpoint", test_checkpoint},
                 {"shuffle", test_shuffle},   {"decode", test_decode},       {"bf16", test_bf16},
                 {"classifier", test_classifier}, {"quant", test_quant},     {"causal", test_causal}};
    int ran = 0;
    for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
        if (!strcmp(which, "all") || !strcmp(which, tests[i].name)) {
            tests[i].fn();
            ran++;
        }
    }
    if (!ran) die("unknown test '%s'", which);
    printf("%s: %d check(s) failed\n", argv[0], failures);
    return failures ? 1 : 0;
}
