/*
 * test/test_gpt2.c: train_gpt2.c compiled with TESTING and checked three ways.
 *
 *   test_gpt2 fixtures DIR  against PyTorch (dev/reference/gpt2.py): logits, loss,
 *                           every gradient, 10 steps of losses and grad norms, final params
 *   test_gpt2 gradcheck     every gradient against central finite differences
 *                           (meaningful in the double build, build/test_gpt2_f64)
 *   test_gpt2 units         TVR and the initialisation schemes on their own; generation's
 *                           decoder (KV cache) and recompute path against gpt2_forward
 *                           (also on the fixture model after its training steps, in fixtures)
 *
 * Each prints the worst error per tensor and exits non-zero naming every tensor
 * over its tolerance.
 */
#define TESTING
#include "../train_gpt2.c"

static int g_failures = 0;

// Largest |a − b| over n numbers, relative to the largest |b| (or absolute when ref is ~0).
static double rel_to_max_err(const real *a, const float *b, size_t n, double *maxabs_out) {
    double err = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]);
        err = e > err ? e : err;
        mx = fabs(b[i]) > mx ? fabs(b[i]) : mx;
    }
    if (maxabs_out) *maxabs_out = mx;
    return mx > 0 ? err / mx : err;
}

static void check(const char *what, double err, double tol) {
    int bad = !(err <= tol);
    printf("  %-40s worst error %.3e  (tolerance %.0e)%s\n", what, err, tol, bad ? "  FAIL" : "");
    if (bad) {
        fprintf(stderr, "FAIL: %s error %.3e over tolerance %.0e\n", what, err, tol);
        g_failures++;
    }
}

// ----------------------------------------------------------------------------
// Against PyTorch. Tolerances (fp32 build): logits and loss 1e-5 relative; gradients
// and final parameters 1e-4 relative to the tensor's largest |value|; per-step loss
// 1e-5 and grad norm 1e-4 relative.
//
// One exception, stated here: the key bias (the middle third of qkvb). Its gradient
// is zero in exact arithmetic (a constant added to every key shifts all of a query's
// scores equally, and softmax ignores that), so both programs compute rounding
// noise there (~1e-11), and relative to its own largest value that noise is
// everything. AdamW's m/(√v + eps) would turn noise above eps into ±lr steps of
// either sign; here it stays below eps. So its gradient is checked against zero
// (absolute 1e-6) and its final value with an absolute 1e-4.

typedef struct {
    int B, T, steps, V, warmup, tvr_every;
    size_t nparams;
    float lr, min_lr_frac, wd, beta1, beta2, eps, clip, tvr_target, tvr_threshold;
    float *logits, loss, *grads, *losses, *norms, *final;
} Reference;

static void read_reference(Reference *r, const char *path) {
    FILE *f = fopen_check(path, "rb");
    int32_t h[256];
    fread_check(h, 4, 256, f, path);
    if (h[0] != 20261125) die("%s: bad magic %d", path, h[0]);
    r->B = h[2], r->T = h[3], r->steps = h[4], r->V = h[5], r->nparams = (size_t)h[6], r->warmup = h[7], r->tvr_every = h[8];
    float *fl[] = {&r->lr, &r->min_lr_frac, &r->wd, &r->beta1, &r->beta2, &r->eps, &r->clip, &r->tvr_target, &r->tvr_threshold};
    for (int i = 0; i < 9; i++) memcpy(fl[i], &h[16 + i], 4);
    size_t nl = (size_t)r->B * r->T * r->V;
    r->logits = malloc_check(nl * 4), r->grads = malloc_check(r->nparams * 4), r->final = malloc_check(r->nparams * 4);
    r->losses = malloc_check((size_t)r->steps * 4), r->norms = malloc_check((size_t)r->steps * 4);
    fread_check(r->logits, 4, nl, f, path);
    fread_check(&r->loss, 4, 1, f, path);
    fread_check(r->grads, 4, r->nparams, f, path);
    fread_check(r->losses, 4, (size_t)r->steps, f, path);
    fread_check(r->norms, 4, (size_t)r->steps, f, path);
    fread_check(r->final, 4, r->nparams, f, path);
    fclose(f);
}

// Compare every tensor of a parameter-shaped buffer with the reference.
static void check_tensors(const char *kind, GPT2 *model, const real *ours, const float *ref, double tol) {
    const GPT2Config *c = &model->config;
    size_t off = 0;
    for (int p = 0; p < NUM_PARAMS; p++) {
        size_t n = param_size(c, p);
        char what[64];
        snprintf(what, sizeof(what), "%s %s", kind, PARAM_INFO[p].name);
        if (p == P_QKVB) {
            // per layer: q and v biases as usual, the key bias separately (see above)
            size_t C = c->channels;
            double eq = 0, ek = 0, mx = 0;
            for (int l = 0; l < c->layers; l++) {
                for (size_t i = 0; i < 3 * C; i++) {
                    size_t j = off + l * 3 * C + i;
                    double e = fabs((double)ours[j] - ref[j]);
                    if (i >= C && i < 2 * C) {
                        ek = e > ek ? e : ek;
                    } else {
                        eq = e > eq ? e : eq;
                        mx = fabs(ref[j]) > mx ? fabs(ref[j]) : mx;
                    }
                }
            }
            snprintf(what, sizeof(what), "%s qkvb (q, v parts)", kind);
            check(what, mx > 0 ? eq / mx : eq, tol);
            snprintf(what, sizeof(what), "%s qkvb (k part, abs)", kind);
            int is_grad = strcmp(kind, "grad") == 0;
            check(what, ek, is_grad ? 1e-6 : 1e-4);
        } else {
            check(what, rel_to_max_err(ours + off, ref + off, n, NULL), tol);
        }
        off += n;
    }
}

// ----------------------------------------------------------------------------
// Generation against the batch forward: the logits of gpt2_decode (KV cache) and of
// the recompute path (kv_cache 0) after tokens[0..n), for every n up to the model's
// max T, against gpt2_forward on a copy of the model over all T positions. Tolerance
// 1e-5 relative to the largest |logit|: the decoder runs the forward's kernels in the
// forward's order, so 0 is expected in the fp32 build (in the double build the
// decoder's logits are rounded to float for the sampler, ~1e-8).
static void check_decode(GPT2 *model, const int *tokens, const char *what) {
    const GPT2Config *c = &model->config;
    int T = c->max_seq_len, V = c->vocab;
    GPT2 f;
    memset(&f, 0, sizeof(f));
    f.config = *c;
    gpt2_alloc_params(&f);
    memcpy(f.params, model->params, model->num_params * sizeof(real));
    gpt2_forward(&f, tokens, NULL, 1, T);
    double *ref = (double *)malloc_check((size_t)T * V * sizeof(double)), mx = 0;
    for (size_t i = 0; i < (size_t)T * V; i++) {
        ref[i] = f.a[A_LOGITS][i];
        mx = fabs(ref[i]) > mx ? fabs(ref[i]) : mx;
    }
    gpt2_free(&f);
    for (int kv = 1; kv >= 0; kv--) {
        gpt2_decoder(model)->kv_cache = kv;
        double err = 0;
        for (int n = 1; n <= T; n++) {
            const float *z = gpt2_next_logits(model, tokens, n);
            for (int i = 0; i < V; i++) {
                double e = fabs(z[i] - ref[(size_t)(n - 1) * V + i]);
                err = e > err ? e : err;
            }
        }
        char name[128];
        snprintf(name, sizeof(name), "%s: %s vs forward, %d pos", what, kv ? "KV-cache decode" : "recompute", T);
        check(name, err / mx, 1e-5);
    }
    gpt2_decoder(model)->kv_cache = 1;
    free(ref);
}

static void test_fixtures(const char *dir) {
    char path[1024];
    Reference ref;
    snprintf(path, sizeof(path), "%s/gpt2_tiny_ref.bin", dir);
    read_reference(&ref, path);
    char model_path[1024], shard[1024];
    snprintf(model_path, sizeof(model_path), "%s/gpt2_tiny_model.bin", dir);
    snprintf(shard, sizeof(shard), "%s/gpt2_tiny_train.bin", dir);
    GPT2 model;
    gpt2_load(&model, model_path);
    if (model.num_params != ref.nparams) die("fixture has %zu parameters, the model %zu", ref.nparams, model.num_params);
    DataLoader dl;
    dataloader_init(&dl, shard, "--train", ref.B, ref.T, model.config.vocab);

    printf("forward and backward on the first batch (B %d, T %d):\n", ref.B, ref.T);
    dataloader_next(&dl);
    gpt2_forward(&model, dl.inputs, dl.targets, ref.B, ref.T);
    check("logits", rel_to_max_err(model.a[A_LOGITS], ref.logits, (size_t)ref.B * ref.T * ref.V, NULL), 1e-5);
    check("loss", fabs(model.mean_loss - ref.loss) / fabs(ref.loss), 1e-5);
    gpt2_backward(&model);
    check_tensors("grad", &model, model.grads, ref.grads, 1e-4);
    gpt2_free(&model);

    printf("%d training steps (AdamW, clipping, warm-up + cosine, TVR every %d):\n", ref.steps, ref.tvr_every);
    gpt2_load(&model, model_path);
    dataloader_reset(&dl);
    OptConfig opt = {ref.lr, ref.min_lr_frac, ref.warmup, ref.steps, 1, ref.wd, ref.beta1, ref.beta2, ref.eps, ref.clip};
    TvrConfig tvr = {ref.tvr_target, ref.tvr_every, ref.tvr_threshold, 0};
    double wl = 0, wn = 0;
    for (int step = 1; step <= ref.steps; step++) {
        StepResult r;
        train_step(&model, &opt, &dl, step, &r);
        adamw_update(&model, &opt, r.lr, step);
        if (tvr_due(&tvr, step)) weights_pass(&model, &tvr, step, 1, NULL);
        double el = fabs(r.loss - ref.losses[step - 1]) / fabs(ref.losses[step - 1]);
        double en = fabs(r.grad_norm - ref.norms[step - 1]) / fabs(ref.norms[step - 1]);
        printf("    step %2d  loss %.6f (torch %.6f)  grad_norm %.6f (torch %.6f)\n", step, r.loss, ref.losses[step - 1],
               r.grad_norm, ref.norms[step - 1]);
        wl = el > wl ? el : wl;
        wn = en > wn ? en : wn;
    }
    check("step losses", wl, 1e-5);
    check("step grad norms", wn, 1e-4);
    check_tensors("param", &model, model.params, ref.final, 1e-4);
    printf("generation on the trained fixture model:\n");
    dataloader_reset(&dl);
    dataloader_next(&dl); // the batch's rows are consecutive text: its first max T tokens
    int maxT = model.config.max_seq_len;
    if (ref.B * ref.T < maxT) die("fixture batch under the model's %d tokens", maxT);
    check_decode(&model, dl.inputs, "fixture");
    gpt2_free(&model);
    dataloader_free(&dl);
    free(ref.logits), free(ref.grads), free(ref.final), free(ref.losses), free(ref.norms);
}

// ----------------------------------------------------------------------------
// Finite differences: a tiny random model (T 8, V 50 padded to 64, L 2, NH 2, C 16),
// every parameter tensor at 8 random entries and at its largest gradient. Central
// differences with h = 1e-5; in double precision the error is ~1e-10, so the
// tolerance is 1e-6 relative to the tensor's largest |gradient| (1e-2 in fp32,
// where the check is only a smoke test).

static double loss_at(GPT2 *m, const int *x, const int *y, int B, int T) {
    gpt2_forward(m, x, y, B, T);
    return m->mean_loss;
}

static void test_gradcheck(void) {
    GPT2 model;
    memset(&model, 0, sizeof(model));
    GPT2Config c = {8, 50, 64, 2, 2, 16};
    model.config = c;
    gpt2_alloc_params(&model);
    Rng rng;
    rng_seed(&rng, 7);
    gpt2_init(&model, "plain", 0.3, &rng);
    // move norms and biases off 1 and 0 so that their gradients are general
    for (int p = 0; p < NUM_PARAMS; p++) {
        if (!PARAM_INFO[p].decay) {
            for (size_t i = 0; i < param_size(&c, p); i++) model.p[p][i] += (real)(0.1 * rng_normal(&rng));
        }
    }
    int B = 2, T = 8, x[16], y[16];
    for (int i = 0; i < B * T; i++) x[i] = (int)(rng_u64(&rng) % 50), y[i] = (int)(rng_u64(&rng) % 50);
    gpt2_forward(&model, x, y, B, T);
    gpt2_backward(&model);
    real *g = (real *)malloc_check(model.num_params * sizeof(real));
    memcpy(g, model.grads, model.num_params * sizeof(real));
    double tol = sizeof(real) == 8 ? 1e-6 : 1e-2, h = sizeof(real) == 8 ? 1e-5 : 1e-2;
    printf("finite differences (%s):\n", sizeof(real) == 8 ? "double" : "float");
    for (int p = 0; p < NUM_PARAMS; p++) {
        size_t n = param_size(&c, p), off = (size_t)(model.p[p] - model.params), imax = 0;
        double gmax = 0;
        for (size_t i = 0; i < n; i++) {
            if (fabs(g[off + i]) > gmax) gmax = fabs(g[off + i]), imax = i;
        }
        double err = 0;
        for (int s = 0; s < 9; s++) {
            size_t i = s == 8 ? imax : (size_t)(rng_u64(&rng) % n);
            real keep = model.p[p][i];
            model.p[p][i] = (real)(keep + h);
            double lp = loss_at(&model, x, y, B, T);
            model.p[p][i] = (real)(keep - h);
            double lm = loss_at(&model, x, y, B, T);
            model.p[p][i] = keep;
            double e = fabs((lp - lm) / (2 * h) - g[off + i]);
            err = e > err ? e : err;
        }
        char what[64];
        snprintf(what, sizeof(what), "gradcheck %s", PARAM_INFO[p].name);
        check(what, gmax > 0 ? err / gmax : err, tol);
    }
    free(g);
    gpt2_free(&model);
}

// ----------------------------------------------------------------------------
// TVR and init on their own.

static void test_units(void) {
    printf("TVR and initialisation:\n");
    GPT2 model;
    memset(&model, 0, sizeof(model));
    GPT2Config c = {16, 100, 128, 3, 4, 64};
    model.config = c;
    gpt2_alloc_params(&model);
    Rng rng;
    rng_seed(&rng, 3);

    // LIR: block l's matrices have std σ/√l, embeddings σ
    gpt2_init(&model, "lir", 0.02, &rng);
    double worst = 0, mu, sd;
    for (int l = 0; l < c.layers; l++) {
        for (int k = 0; k < NUM_BLOCK_MATRICES; k++) {
            int p = BLOCK_MATRIX_PARAM[k];
            weight_stats(layer_param(&model, p, l), param_slice_size(&c, p), &mu, &sd);
            double e = fabs(sd / (0.02 / sqrt(l + 1.0)) - 1);
            worst = e > worst ? e : worst;
        }
    }
    check("lir std per layer (rel)", worst, 0.03);
    weight_stats(model.p[P_WTE], (size_t)c.vocab * c.channels, &mu, &sd);
    check("lir wte std (rel)", fabs(sd / 0.02 - 1), 0.03);
    double pad = 0;
    for (size_t i = (size_t)c.vocab * c.channels; i < param_size(&c, P_WTE); i++) pad += fabs(model.p[P_WTE][i]);
    check("padded vocab rows are 0", pad, 0);
    gpt2_init(&model, "e3", 0.02, &rng);
    weight_stats(model.p[P_WTE], (size_t)c.vocab * c.channels, &mu, &sd);
    check("e3 wte xavier std (rel)", fabs(sd / sqrt(2.0 / (c.vocab + c.channels)) - 1), 0.03);
    gpt2_init(&model, "residual", 0.02, &rng);
    weight_stats(layer_param(&model, P_FCPROJW, 1), param_slice_size(&c, P_FCPROJW), &mu, &sd);
    check("residual fc_proj std (rel)", fabs(sd / (0.02 / sqrt(6.0)) - 1), 0.03);

    // TVR: everything over the threshold except layer 2's fc (std 0.02 = target: untouched)
    for (size_t i = 0; i < model.num_params; i++) model.params[i] = (real)(0.01 + 0.05 * rng_normal(&rng));
    TvrConfig tvr = {0.02, 50, 1.2, 0};
    real *under = layer_param(&model, P_FCW, 1);
    size_t nfc = param_slice_size(&c, P_FCW);
    for (size_t i = 0; i < nfc; i++) under[i] = (real)(0.3 + 0.02 * rng_normal(&rng)); // std ~0.02 < 1.2·target
    real *copy = (real *)malloc_check(nfc * sizeof(real));
    memcpy(copy, under, nfc * sizeof(real));
    double mu0, sd0;
    weight_stats(layer_param(&model, P_QKVW, 0), param_slice_size(&c, P_QKVW), &mu0, &sd0);
    check("tvr_due(50), not 49", (double)(!tvr_due(&tvr, 50) + tvr_due(&tvr, 49)), 0);
    int rescaled = weights_pass(&model, &tvr, 50, 1, NULL);
    weight_stats(layer_param(&model, P_QKVW, 0), param_slice_size(&c, P_QKVW), &mu, &sd);
    check("tvr: std = target (rel)", fabs(sd / 0.02 - 1), 1e-5);
    check("tvr: mean kept (abs)", fabs(mu - mu0), 1e-7);
    double bias = 0;
    for (size_t i = 0; i < param_size(&c, P_QKVB) / c.layers; i++) bias += fabs(layer_param(&model, P_QKVB, 0)[i]);
    check("tvr: rescaled module's bias = 0", bias, 0);
    check("tvr: under threshold untouched", (double)(memcmp(copy, under, nfc * sizeof(real)) != 0), 0);
    check("tvr: its bias untouched", fabs(layer_param(&model, P_FCB, 1)[0]) > 0 ? 0 : 1, 0);
    check("tvr: 11 of 12 matrices rescaled (all but fc l2)", fabs(rescaled - 11.0), 0);
    // depth-scaled: layer 3's target is 0.02/√3
    tvr.depth_scaled = 1;
    for (size_t i = 0; i < model.num_params; i++) model.params[i] = (real)(0.05 * rng_normal(&rng));
    weights_pass(&model, &tvr, 50, 1, NULL);
    weight_stats(layer_param(&model, P_ATTPROJW, 2), param_slice_size(&c, P_ATTPROJW), &mu, &sd);
    check("tvr depth-scaled: std = target/sqrt(3)", fabs(sd / (0.02 / sqrt(3.0)) - 1), 1e-5);
    free(copy);
    gpt2_free(&model);

    // generation on a shape with matmul edge columns everywhere (3C 120, C 40, V 100: not multiples of 16)
    printf("generation (decoder and recompute against gpt2_forward):\n");
    GPT2Config cd = {16, 100, 128, 2, 4, 40};
    model.config = cd;
    gpt2_alloc_params(&model);
    gpt2_init(&model, "plain", 0.3, &rng); // large weights: peaked attention and logits
    int tokens[16];
    for (int i = 0; i < 16; i++) tokens[i] = (int)(rng_uniform(&rng) * cd.vocab);
    check_decode(&model, tokens, "random");
    gpt2_init(&model, "plain", 0.2, &rng); // new weights: a new sequence must take them
    check_decode(&model, tokens, "new weights");
    gpt2_free(&model);
}

int main(int argc, char **argv) {
    if (argc < 2) die("usage: test_gpt2 fixtures DIR | gradcheck | units");
    if (strcmp(argv[1], "fixtures") == 0 && argc == 3) {
        test_fixtures(argv[2]);
    } else if (strcmp(argv[1], "gradcheck") == 0) {
        test_gradcheck();
    } else if (strcmp(argv[1], "units") == 0) {
        test_units();
    } else {
        die("usage: test_gpt2 fixtures DIR | gradcheck | units");
    }
    if (g_failures) {
        fprintf(stderr, "test_gpt2 %s: %d check(s) over tolerance\n", argv[1], g_failures);
        return 1;
    }
    printf("test_gpt2 %s: all checks passed\n", argv[1]);
    return 0;
}
