/*
 * common/llama_run.h: what train_llama.c and train_llama.cu read and write the
 * same way: the model's shape (LlamaConfig), model.bin's header
 * (docs/formats.md, "model.bin"), and the command line that makes or checks a
 * shape. The model itself (its parameter table, layers, init, AdamW, TVR) is in
 * each trainer. Include after common/train.h.
 */
#ifndef RESCALE_LLAMA_RUN_H
#define RESCALE_LLAMA_RUN_H

#include "train.h"

#define MODEL_MAGIC 20261122
#define MODEL_VERSION 1
#define HEADER_INTS 256

typedef struct {
    int max_seq_len; // T the model was built for (RoPE table size)
    int vocab;       // V
    int layers;      // L
    int heads;       // NH
    int kv_heads;    // NKV, divides NH
    int dim;         // C, divisible by NH; head size hs = C / NH (even, for RoPE)
    int ffn;         // F, the SwiGLU hidden width
    float norm_eps;
    float rope_theta;
} LlamaConfig;

static void config_check(const LlamaConfig *c, const char *where) {
    // each size within its flag's range (llama_flags), named: a header of huge sizes is refused
    // here, not as an allocation that fails or fills the machine
    const char *name[7] = {"max seq-len", "vocab", "layers", "heads", "kv-heads", "dim", "ffn"};
    int value[7] = {c->max_seq_len, c->vocab, c->layers, c->heads, c->kv_heads, c->dim, c->ffn};
    int hi[7] = {1 << 16, 65536, 1024, 1024, 1024, 65536, 1 << 20};
    for (int i = 0; i < 7; i++) {
        if (value[i] < 1 || value[i] > hi[i]) die("%s: %s %d is outside [1, %d]", where, name[i], value[i], hi[i]);
    }
    if (c->dim % c->heads != 0) die("%s: heads (%d) do not divide dim (%d)", where, c->heads, c->dim);
    if (c->heads % c->kv_heads != 0) die("%s: kv-heads (%d) do not divide heads (%d)", where, c->kv_heads, c->heads);
    if ((c->dim / c->heads) % 2 != 0) die("%s: head size %d must be even for RoPE", where, c->dim / c->heads);
    if (!(c->norm_eps >= 1e-12f && c->norm_eps <= 1)) die("%s: norm eps %g is outside [1e-12, 1]", where, c->norm_eps);
    if (!(c->rope_theta >= 1 && c->rope_theta <= 1e9f)) {
        die("%s: rope theta %g is outside [1, 1e9]", where, c->rope_theta);
    }
}

// model.bin: int32 header[256] ([0] magic, [1] version, [2] max T, [3] V, [4] L,
// [5] NH, [6] NKV, [7] C, [8] F, float at [16] norm eps and [17] rope theta),
// then every parameter as fp32 in the trainer's table order.
static void llama_header_write(FILE *f, const char *path, const LlamaConfig *c) {
    int32_t header[HEADER_INTS] = {0};
    header[0] = MODEL_MAGIC;
    header[1] = MODEL_VERSION;
    header[2] = c->max_seq_len;
    header[3] = c->vocab;
    header[4] = c->layers;
    header[5] = c->heads;
    header[6] = c->kv_heads;
    header[7] = c->dim;
    header[8] = c->ffn;
    memcpy(&header[16], &c->norm_eps, sizeof(float));
    memcpy(&header[17], &c->rope_theta, sizeof(float));
    fwrite_check(header, sizeof(int32_t), HEADER_INTS, f, path);
}

// The shape as int32s (model.bin's header fields), for state.bin to record; returns the count.
static int llama_config_ints(const LlamaConfig *c, int32_t *out) {
    int32_t v[9] = {c->max_seq_len, c->vocab, c->layers, c->heads, c->kv_heads, c->dim, c->ffn, 0, 0};
    memcpy(&v[7], &c->norm_eps, 4);
    memcpy(&v[8], &c->rope_theta, 4);
    memcpy(out, v, sizeof(v));
    return 9;
}

// Read a model.bin header into *c, checking magic, version and sizes.
static void llama_read_header(const char *path, LlamaConfig *c) {
    FILE *f = fopen_check(path, "rb");
    int32_t header[HEADER_INTS];
    if (fread(header, sizeof(int32_t), HEADER_INTS, f) != HEADER_INTS) {
        die("checkpoint %s is truncated: shorter than its 1024-byte header", path);
    }
    fclose(f);
    if (header[0] != MODEL_MAGIC) die("checkpoint %s has bad magic %d (want %d)", path, header[0], MODEL_MAGIC);
    if (header[1] != MODEL_VERSION) die("checkpoint %s has version %d, want %d", path, header[1], MODEL_VERSION);
    c->max_seq_len = header[2];
    c->vocab = header[3];
    c->layers = header[4];
    c->heads = header[5];
    c->kv_heads = header[6];
    c->dim = header[7];
    c->ffn = header[8];
    memcpy(&c->norm_eps, &header[16], sizeof(float));
    memcpy(&c->rope_theta, &header[17], sizeof(float));
    char where[4200];
    snprintf(where, sizeof(where), "checkpoint %s", path);
    config_check(c, where);
}

// model.bin's size against the parameter count its header gives (a truncated or
// appended body is an error, also on --resume, which reads the parameters from state.bin).
static void llama_check_size(const char *path, long num_params) {
    long want = HEADER_INTS * 4 + num_params * 4, have = file_size(path);
    if (have != want) {
        die("checkpoint %s is %ld bytes; its header describes %ld parameters, %ld bytes (truncated?)", path, have,
            num_params, want);
    }
}

// The sizes (in values) of the trainers' Acts slots, then of their Scratch slots, in
// their order: each trainer's llama_alloc_acts allocates them, its llama_memory counts them.
#define NUM_ACT_SLOTS 20
#define NUM_SCRATCH_SLOTS 9
#define ACT_SLOT_ATT 6 // the attention probabilities (L,B,NH,T,T); train_llama.cu's flash path keeps (L,B,NH,T)
static void acts_sizes(const LlamaConfig *c, int B, int T, long *sizes, long *gsizes) {
    long L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads;
    long KVD = c->kv_heads * (C / NH), N = (long)B * T;
    long a[NUM_ACT_SLOTS] = {N * C,     L * N * C, L * N,     L * N * C, L * N * KVD, L * N * KVD, L * B * NH * T * T,
                             L * N * C, L * N * C, L * N * C, L * N,     L * N * F,   L * N * F,   L * N * F,
                             L * N * C, N * C,     N,         N * V,     N,           N};
    long g[NUM_SCRATCH_SLOTS] = {N * C, N * C, N * C, N * KVD, N * KVD, N * C, N * F, N * F, N * F};
    memcpy(sizes, a, sizeof(a));
    memcpy(gsizes, g, sizeof(g));
}

// The flags (common/train.h's, with the LLaMA's architecture; gpu: and --tf32).
// Returns whether --seq-len was given; *arch_given gets bit i for ARCH_FLAGS[i] given.
static int settings_parse(Settings *s, int argc, char **argv, const char *usage, int gpu, int *arch_given) {
    Flag flags[MAX_FLAGS];
    int n = data_flags(s, flags, "data/tinyshakespeare/llama2_train_*.bin", "data/tinyshakespeare/llama2_val_*.bin");
    n += llama_flags(s, flags + n);
    n += training_flags(s, flags + n, "plain|lir|residual");
    n += sample_flags(s, flags + n, "data/tokenizers/llama2/tokenizer.bin");
    n += parallel_flags(s, flags + n);
    if (gpu) n += gpu_flags(s, flags + n);
    settings_parse_flags(s, flags, n, argc, argv, usage);
    if (gpu && (s->eval_only || strcmp(s->quant, "none") != 0)) {
        usage_error("--eval-only and --quant: train_llama on the CPU only, yet");
    }
    if (s->eval_only && !s->init_from) usage_error("--eval-only 1 needs a model: --init-from MODEL.bin");
    if (s->eval_only && !(s->val && s->val[0])) usage_error("--eval-only 1 needs validation shards: --val GLOB");
    if (s->eval_only && s->generate) usage_error("--eval-only 1 and --generate exclude each other");
    if (!s->eval_only && strcmp(s->quant, "none") != 0) {
        usage_error("--quant %s needs --eval-only 1 (training is never fake-quantized)", s->quant);
    }
    if (s->ffn == 0) s->ffn = (2 * 4 * s->dim / 3 + 31) / 32 * 32;
    if (s->dim % s->heads != 0) usage_error("--heads %d does not divide --dim %d", s->heads, s->dim);
    if (s->heads % s->kv_heads != 0) usage_error("--kv-heads %d does not divide --heads %d", s->kv_heads, s->heads);
    if ((s->dim / s->heads) % 2 != 0) {
        usage_error("head size --dim/--heads = %d must be even (RoPE)", s->dim / s->heads);
    }
    *arch_given = 0;
    for (int i = 0; i < NUM_ARCH_FLAGS; i++) *arch_given |= flag_given(flags, n, ARCH_FLAGS[i]) << i;
    return flag_given(flags, n, "seq-len");
}

// With --init-from or --resume the architecture comes from the checkpoint's
// header. Repeating the run's flags is fine; a flag that disagrees is an error.
static void check_arch_flags(const Settings *s, int arch_given, const LlamaConfig *c, const char *ckpt) {
    double file[NUM_ARCH_FLAGS] = {(double)c->layers, (double)c->dim,   (double)c->heads,    (double)c->kv_heads,
                                   (double)c->ffn,    (double)c->vocab, (double)c->norm_eps, (double)c->rope_theta};
    double flag[NUM_ARCH_FLAGS] = {(double)s->layers, (double)s->dim,   (double)s->heads, (double)s->kv_heads,
                                   (double)s->ffn,    (double)s->vocab, (double)(float)s->norm_eps,
                                   (double)(float)s->rope_theta};
    for (int i = 0; i < NUM_ARCH_FLAGS; i++) {
        if ((arch_given >> i & 1) && file[i] != flag[i]) {
            usage_error("--%s %g disagrees with the checkpoint %s, which has %g", ARCH_FLAGS[i], flag[i], ckpt,
                        file[i]);
        }
    }
}

static LlamaConfig config_from_settings(const Settings *s) {
    LlamaConfig c = {s->seq_len, s->vocab, s->layers, s->heads, s->kv_heads, s->dim, s->ffn,
                     (float)s->norm_eps, (float)s->rope_theta};
    return c;
}

// The run's model: the checkpoint's shape with --init-from or --resume (ckpt gets
// its path; --seq-len defaults to its maximum), else a fresh one from the flags
// (ckpt "").
static LlamaConfig run_config(Settings *s, int seq_len_given, int arch_given, char *ckpt, size_t n) {
    ckpt[0] = 0;
    if (s->init_from) snprintf(ckpt, n, "%s", s->init_from);
    if (s->resume) run_file(ckpt, n, s->resume, "model.bin");
    if (!ckpt[0]) return config_from_settings(s);
    LlamaConfig config;
    llama_read_header(ckpt, &config);
    check_arch_flags(s, arch_given, &config, ckpt);
    if (!seq_len_given) s->seq_len = config.max_seq_len;
    if (s->seq_len > config.max_seq_len) {
        usage_error("--seq-len %d exceeds the checkpoint's %d (%s)", s->seq_len, config.max_seq_len, ckpt);
    }
    return config;
}

#endif // RESCALE_LLAMA_RUN_H
