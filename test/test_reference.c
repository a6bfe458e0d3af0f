/*
 * test/test_reference.c: train_llama.c against the independent PyTorch oracle
 * (dev/reference/llama.py), llm.c style: this file includes train_llama.c with
 * TESTING defined (so its main() is left out) and drives its functions.
 *
 * Usage: test_reference FIXTURE_DIR...   (run from the repository root)
 *
 * A fixture directory (made by `make reference`, dev/reference/make_fixtures.py) holds
 *   model.bin            the initial parameters (docs/formats.md)
 *   debug_state.bin      what the oracle computed from it, in float32; the layout is
 *                        written out at the top of dev/reference/llama.py:
 *       int32 header[256]: [0] 20261124, [1] 1, [2] bytes per REAL (4 or 8), [3] B, [4] T,
 *         [5] steps N, [6] warmup, [7] schedule (0 cosine, 1 constant), [8] tvr_every,
 *         [9] tvr_depth_scaled, [10] P, [11] max T, [12] V, [13] L, [14] NH, [15] NKV,
 *         [16] C, [17] F; float64 at ints 64..95: lr, min_lr_frac, weight_decay, beta1,
 *         beta2, eps, grad_clip, tvr_target, tvr_threshold, norm eps, rope theta;
 *         the training glob as text at ints 128..255
 *       int32 inputs[B*T], targets[B*T]; REAL logits[B*T*V], loss, grads[P],
 *       step_loss[N], step_lr[N], step_grad_norm[N], params[P]; int32 clipped[N], rescaled[N]
 *   debug_state_f64.bin  (optional) the same run computed by the oracle in float64
 *
 * For each fixture:
 *   1. the first batch from train_llama.c's loader equals the oracle's (exactly);
 *   2. forward on it: logits and loss; backward: every gradient tensor;
 *   3. train() itself -- the loop `./train_llama` runs, with the fixture's flags parsed by
 *      its own flag table -- for N steps; its train.csv gives each step's loss, lr and grad
 *      norm, its weights.csv which matrices TVR rescaled; then the final parameters.
 * Errors are max |C - oracle| / max |oracle| over a tensor. The float32 build compares with
 * debug_state.bin; the float64 build (-DREAL_DOUBLE) with debug_state_f64.bin where there is
 * one, at far tighter tolerances: agreement to ~1e-12 means the two programs compute the same
 * function, not merely something within float32's noise. The worst error of every check is
 * printed; the program exits 1 naming each check over its tolerance.
 */
#define TESTING
#include "../train_llama.c"

// ---------------------------------------------------------------------------
// tolerances, each on max |C - oracle| / max |oracle| over one tensor or one series
//
// float32 against the float32 oracle. One forward and backward are as close as float32
// allows: the oracle's own float32-vs-float64 distance on these fixtures is 1e-8..4e-7
// (make_fixtures.py prints it), so 1e-5 leaves a wide margin and still catches a wrong
// formula, which moves things by 1e-3 or more. The final parameters are looser, and why is
// measured, not guessed: Adam divides each gradient by its own running RMS, so an element
// whose gradient is nearly zero (a sum that cancels) moves by about lr whatever its rounding
// error; over 10 steps this multiplies rounding by ~4000 on mqa_residual_tvrdepth's w2 (the
// float64 build sees 1e-16 rounding grow to 4e-13 there). Any float32 program lands ~1e-4
// from the exact trajectory on that tensor (this one 3e-4, PyTorch's float32 4e-6 by luck).
// The float64 build is the sharp test of the optimizer, clipping and TVR: 1e-9.
typedef struct {
    double logits, loss, grads, step_loss, lr, grad_norm, params;
} Tolerances;

static const Tolerances TOL_F32 = {1e-5, 1e-5, 1e-5, 1e-5, 1e-6, 1e-5, 1e-3};
// float64 on both sides: only summation order differs. Per-step numbers come from
// train.csv, printed with 9 significant digits, hence 1e-8 for them.
static const Tolerances TOL_F64 = {1e-11, 1e-12, 1e-10, 1e-8, 1e-8, 1e-8, 1e-9};

// ---------------------------------------------------------------------------
// the fixture

#include "compare.h"       // record, compare, compare_exact_ints
#include "llama_fixture.h" // the fixture reader, compare_tensors

// ---------------------------------------------------------------------------
// the checks

static void check_config(const Fixture *fx, const LlamaConfig *c, const char *model_path) {
    if (c->max_seq_len != fx->max_T || c->vocab != fx->V || c->layers != fx->L || c->heads != fx->NH ||
        c->kv_heads != fx->NKV || c->dim != fx->C || c->ffn != fx->F || c->norm_eps != (float)fx->norm_eps ||
        c->rope_theta != (float)fx->rope_theta) {
        die("%s and %s describe different models", model_path, fx->path);
    }
}

// Steps 1..N: forward, backward, norm, clip, lr, AdamW, TVR -- by train_llama.c's own train().
// Its flags come from the fixture and go through its own flag table, as on the command line.
static void run_training(Llama *model, DataLoader *dl, const Fixture *fx, const char *model_path, const char *out) {
    char vals[32][64];
    const char *argv[80] = {"train_llama"};
    int argc = 1, nv = 0;
#define ARG(name, ...) \
    (snprintf(vals[nv], sizeof(vals[0]), __VA_ARGS__), argv[argc++] = name, argv[argc++] = vals[nv++])
    ARG("--batch", "%d", fx->B);
    ARG("--seq-len", "%d", fx->T);
    ARG("--steps", "%d", fx->steps);
    ARG("--lr", "%.17g", fx->lr);
    ARG("--min-lr-frac", "%.17g", fx->min_lr_frac);
    ARG("--warmup", "%d", fx->warmup);
    ARG("--schedule", "%s", fx->constant ? "constant" : "cosine");
    ARG("--weight-decay", "%.17g", fx->weight_decay);
    ARG("--beta1", "%.17g", fx->beta1);
    ARG("--beta2", "%.17g", fx->beta2);
    ARG("--eps", "%.17g", fx->eps);
    ARG("--grad-clip", "%.17g", fx->grad_clip);
    ARG("--tvr-target", "%.17g", fx->tvr_target);
    ARG("--tvr-every", "%d", fx->tvr_every);
    ARG("--tvr-threshold", "%.17g", fx->tvr_threshold);
    ARG("--tvr-depth-scaled", "%d", fx->tvr_depth_scaled);
    ARG("--stats-every", "%d", 0);
    ARG("--val-every", "%d", 0);
#undef ARG
    argv[argc++] = "--train", argv[argc++] = fx->train_glob;
    argv[argc++] = "--val", argv[argc++] = "";
    argv[argc++] = "--init-from", argv[argc++] = model_path;
    argv[argc++] = "--out", argv[argc++] = out;
    Settings s;
    int arch_given;
    settings_parse(&s, argc, (char **)argv, USAGE, 0, &arch_given);
    TrainState st;
    memset(&st, 0, sizeof(st));
    dataloader_reset(dl);
    llama_load_params(model, model_path); // the first-batch check's backward left the params as they were
    memset(model->m, 0, sizeof(real) * model->num_params);
    memset(model->v, 0, sizeof(real) * model->num_params);
    fflush(stdout);
    int saved = dup(STDOUT_FILENO); // train() prints a line per step: keep this test's output to the point
    FILE *devnull = fopen_check("/dev/null", "w");
    dup2(fileno(devnull), STDOUT_FILENO);
    train(model, &s, dl, NULL, &st, NULL);
    fflush(stdout);
    dup2(saved, STDOUT_FILENO);
    close(saved);
    fclose(devnull);
}

static void run_fixture(const char *dir) {
    Fixture fx;
    char path[1024], model_path[1024], out[1024];
#ifdef REAL_DOUBLE
    snprintf(path, sizeof(path), "%s/debug_state_f64.bin", dir);
    if (file_size(path) < 0) snprintf(path, sizeof(path), "%s/debug_state.bin", dir);
#else
    snprintf(path, sizeof(path), "%s/debug_state.bin", dir);
#endif
    fixture_read(&fx, path);
    // tight tolerances only when both sides computed in float64
    const Tolerances *tol = (sizeof(real) == 8 && fx.real_bytes == 8) ? &TOL_F64 : &TOL_F32;
    char name[256];
    snprintf(name, sizeof(name), "%s", dir);
    size_t len = strlen(name);
    while (len > 1 && name[len - 1] == '/') name[--len] = '\0'; // "dir/" names "dir"
    if (strrchr(name, '/')) memmove(name, strrchr(name, '/') + 1, strlen(strrchr(name, '/')));
    printf("%s (%s, oracle in float%d, C in float%d): L=%d C=%d NH=%d NKV=%d F=%d V=%d, B=%d T=%d, %d steps\n", name,
           path, 8 * fx.real_bytes, 8 * (int)sizeof(real), fx.L, fx.C, fx.NH, fx.NKV, fx.F, fx.V, fx.B, fx.T,
           fx.steps);

    snprintf(model_path, sizeof(model_path), "%s/model.bin", dir);
    LlamaConfig config;
    llama_read_header(model_path, &config);
    check_config(&fx, &config, model_path);
    Llama model;
    llama_build(&model, config);
    if (model.num_params != fx.P) die("%s: %ld parameters, the fixture has %ld", model_path, model.num_params, fx.P);
    llama_load_params(&model, model_path);
    llama_alloc_acts(&model, fx.B, fx.T);
    DataLoader dl;
    dataloader_init(&dl, fx.train_glob, "--train", fx.B, fx.T, config.vocab);

    // 1-2. the first batch, its logits, loss and gradients
    dataloader_next(&dl);
    long N = (long)fx.B * fx.T;
    compare_exact_ints(name, "inputs", dl.inputs, fx.inputs, N);
    compare_exact_ints(name, "targets", dl.targets, fx.targets, N);
    llama_forward(&model, dl.inputs, dl.targets, fx.B, fx.T);
    compare(name, "logits", model.acts.logits, fx.logits, N * fx.V, tol->logits);
    compare(name, "loss", &model.loss, &fx.loss, 1, tol->loss);
    llama_zero_grad(&model);
    llama_backward(&model);
    compare_tensors(name, "grad", &model, model.grads, fx.grads, tol->grads);

    // 3. N steps of train()
    snprintf(out, sizeof(out), "build/test_reference_out");
    ensure_dir(out);
    snprintf(out, sizeof(out), "build/test_reference_out/%s", name);
    ensure_dir(out);
    run_training(&model, &dl, &fx, model_path, out);
    real *loss = (real *)malloc_check(sizeof(real) * fx.steps);
    real *lr = (real *)malloc_check(sizeof(real) * fx.steps);
    real *norm = (real *)malloc_check(sizeof(real) * fx.steps);
    int *clipped = (int *)malloc_check(sizeof(int) * fx.steps);
    int *rescaled = (int *)malloc_check(sizeof(int) * fx.steps);
    read_train_csv(out, fx.steps, loss, lr, norm);
    read_weights_csv(out, fx.steps, rescaled);
    for (int s = 0; s < fx.steps; s++) clipped[s] = fx.grad_clip > 0 && fx.grad_clip / (norm[s] + 1e-6) < 1;
    compare(name, "step losses", loss, fx.step_loss, fx.steps, tol->step_loss);
    compare(name, "step lr", lr, fx.step_lr, fx.steps, tol->lr);
    compare(name, "step grad norms", norm, fx.step_norm, fx.steps, tol->grad_norm);
    compare_exact_ints(name, "steps clipped", clipped, fx.clipped, fx.steps);
    compare_exact_ints(name, "TVR rescales", rescaled, fx.rescaled, fx.steps);
    compare_tensors(name, "final", &model, model.params, fx.params, tol->params);
    int nclip = 0, ntvr = 0;
    for (int s = 0; s < fx.steps; s++) nclip += fx.clipped[s], ntvr += fx.rescaled[s] > 0;
    printf("  (covers: %d of %d steps clipped, %d steps with TVR rescales, warm-up %d then %s)\n\n", nclip, fx.steps,
           ntvr, fx.warmup, fx.constant ? "constant" : "cosine");

    free(loss), free(lr), free(norm), free(clipped), free(rescaled);
    dataloader_free(&dl);
    llama_free(&model);
    fixture_free(&fx);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR...   (e.g. test/fixtures/llama/gqa_lir_tvr)\n", argv[0]);
        return EXIT_USAGE;
    }
    for (int i = 1; i < argc; i++) run_fixture(argv[i]);
    if (g_failures) {
        printf("FAIL: %d check(s) over tolerance:%s\n", g_failures, g_failed);
        return 1;
    }
    printf("OK: %d fixture(s) agree with the PyTorch oracle\n", argc - 1);
    return 0;
}
