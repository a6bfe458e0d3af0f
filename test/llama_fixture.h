/*
 * test/llama_fixture.h: reads the PyTorch oracle's debug-state files
 * (debug_state.bin and debug_state_f64.bin under test/fixtures/llama/; the format is at the top of
 * dev/reference/llama.py). Shared by test/test_reference.c (train_llama.c against
 * the oracle) and test/test_llama_gpu.cu (train_llama.cu against the same fixtures).
 * Include it after train_llama.c / train_llama.cu and test/compare.h (it uses their
 * checked I/O and, for the logged values, a `real` type).
 */
#ifndef LLAMA_FIXTURE_H
#define LLAMA_FIXTURE_H

#define DEBUG_MAGIC 20261124
#define DEBUG_VERSION 1

typedef struct {
    char path[4200];
    int real_bytes, B, T, steps, warmup, constant, tvr_every, tvr_depth_scaled;
    long P;
    int max_T, V, L, NH, NKV, C, F;
    double lr, min_lr_frac, weight_decay, beta1, beta2, eps, grad_clip, tvr_target, tvr_threshold;
    double norm_eps, rope_theta;
    char train_glob[513];
    int *inputs, *targets;
    double *logits, loss, *grads, *step_loss, *step_lr, *step_norm, *params;
    int *clipped, *rescaled;
} Fixture;

static double *read_reals(FILE *f, long n, int real_bytes, const char *path) {
    double *x = (double *)malloc_check(n * sizeof(double));
    if (real_bytes == 8) {
        fread_check(x, sizeof(double), n, f, path);
    } else {
        float *buf = (float *)malloc_check(n * sizeof(float));
        fread_check(buf, sizeof(float), n, f, path);
        for (long i = 0; i < n; i++) x[i] = buf[i];
        free(buf);
    }
    return x;
}

static int *read_ints(FILE *f, long n, const char *path) {
    int *x = (int *)malloc_check(n * sizeof(int));
    fread_check(x, sizeof(int), n, f, path);
    return x;
}

static void fixture_read(Fixture *fx, const char *path) {
    memset(fx, 0, sizeof(*fx));
    snprintf(fx->path, sizeof(fx->path), "%s", path);
    FILE *f = fopen_check(path, "rb");
    int32_t h[HEADER_INTS];
    fread_check(h, sizeof(int32_t), HEADER_INTS, f, path);
    if (h[0] != DEBUG_MAGIC || h[1] != DEBUG_VERSION) die("%s is not a version-%d debug state", path, DEBUG_VERSION);
    if (h[2] != 4 && h[2] != 8) die("%s: bytes per real is %d", path, h[2]);
    fx->real_bytes = h[2];
    fx->B = h[3], fx->T = h[4], fx->steps = h[5], fx->warmup = h[6], fx->constant = h[7];
    fx->tvr_every = h[8], fx->tvr_depth_scaled = h[9], fx->P = h[10];
    fx->max_T = h[11], fx->V = h[12], fx->L = h[13], fx->NH = h[14], fx->NKV = h[15], fx->C = h[16], fx->F = h[17];
    double hy[16];
    memcpy(hy, &h[64], sizeof(hy));
    fx->lr = hy[0], fx->min_lr_frac = hy[1], fx->weight_decay = hy[2], fx->beta1 = hy[3], fx->beta2 = hy[4];
    fx->eps = hy[5], fx->grad_clip = hy[6], fx->tvr_target = hy[7], fx->tvr_threshold = hy[8];
    fx->norm_eps = hy[9], fx->rope_theta = hy[10];
    memcpy(fx->train_glob, &h[128], 512);
    fx->train_glob[512] = '\0';
    long N = (long)fx->B * fx->T;
    fx->inputs = read_ints(f, N, path);
    fx->targets = read_ints(f, N, path);
    fx->logits = read_reals(f, N * fx->V, fx->real_bytes, path);
    double *loss = read_reals(f, 1, fx->real_bytes, path);
    fx->loss = loss[0];
    free(loss);
    fx->grads = read_reals(f, fx->P, fx->real_bytes, path);
    fx->step_loss = read_reals(f, fx->steps, fx->real_bytes, path);
    fx->step_lr = read_reals(f, fx->steps, fx->real_bytes, path);
    fx->step_norm = read_reals(f, fx->steps, fx->real_bytes, path);
    fx->params = read_reals(f, fx->P, fx->real_bytes, path);
    fx->clipped = read_ints(f, fx->steps, path);
    fx->rescaled = read_ints(f, fx->steps, path);
    if (fgetc(f) != EOF) die("%s has bytes after its last array", path);
    fclose(f);
}

static void fixture_free(Fixture *fx) {
    void *arrays[] = {fx->inputs, fx->targets, fx->logits, fx->grads, fx->step_loss, fx->step_lr,
                      fx->step_norm, fx->params, fx->clipped, fx->rescaled};
    for (size_t i = 0; i < sizeof(arrays) / sizeof(arrays[0]); i++) free(arrays[i]);
}

// What train() logged, read back for the per-step comparisons (`real` is the
// includer's parameter type: train_llama.c's, or float for train_llama.cu).
// train.csv: step,loss,lr,grad_norm,ms,tokens_per_s -> the first three numbers per step
static void read_train_csv(const char *out, int steps, real *loss, real *lr, real *norm) {
    char path[1100], line[1024];
    snprintf(path, sizeof(path), "%s/train.csv", out);
    FILE *f = fopen_check(path, "r");
    if (!fgets(line, sizeof(line), f)) die("%s is empty", path);
    for (int s = 0; s < steps; s++) {
        int step;
        double l, r, n;
        if (!fgets(line, sizeof(line), f) || sscanf(line, "%d,%lf,%lf,%lf", &step, &l, &r, &n) != 4 || step != s + 1) {
            die("%s: no row for step %d", path, s + 1);
        }
        loss[s] = (real)l, lr[s] = (real)r, norm[s] = (real)n;
    }
    fclose(f);
}

// weights.csv: step,layer,matrix,mean,std,rescaled -> how many matrices TVR rescaled per step
static void read_weights_csv(const char *out, int steps, int *rescaled) {
    char path[1100], line[1024];
    snprintf(path, sizeof(path), "%s/weights.csv", out);
    FILE *f = fopen_check(path, "r");
    memset(rescaled, 0, sizeof(int) * steps);
    if (!fgets(line, sizeof(line), f)) die("%s is empty", path);
    while (fgets(line, sizeof(line), f)) {
        char *last = strrchr(line, ',');
        int step = atoi(line);
        if (last && step >= 1 && step <= steps) rescaled[step - 1] += atoi(last + 1);
    }
    fclose(f);
}

// every parameter tensor, by the name in the trainer's table
static void compare_tensors(const char *fixture, const char *prefix, const Llama *model, const real *buf,
                            const double *want, double tol) {
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        long off = model->tensor[i] - model->params;
        char what[64];
        snprintf(what, sizeof(what), "%s %s", prefix, PARAM_INFO[i].name);
        compare(fixture, what, buf + off, want + off, param_count(&model->config, i), tol);
    }
}

#endif // LLAMA_FIXTURE_H
