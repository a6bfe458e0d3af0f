/*
 * common/gpt2_run.h: what train_gpt2.c and train_gpt2.cu read and write the same
 * way: the model's shape (GPT2Config), llm.c's GPT-2 checkpoint header
 * (docs/formats.md), the command line, and E3's histogram rows. The model itself
 * (its parameter table, layers, init, AdamW, TVR) is in each trainer. Include
 * after common/train.h.
 */
#ifndef RESCALE_GPT2_RUN_H
#define RESCALE_GPT2_RUN_H

#include "train.h"

typedef struct {
    int max_seq_len;  // T of the checkpoint: rows of wpe
    int vocab;        // V, the real vocabulary (50257 for GPT-2)
    int padded_vocab; // Vp >= V, rows of wte (llm.c pads 50257 to 50304); padded rows stay 0
    int layers, heads, channels;
} GPT2Config;

static void config_check(const GPT2Config *c, const char *where) {
    const char *name[6] = {"max seq-len", "vocab", "padded vocab", "layers", "heads", "channels"};
    int value[6] = {c->max_seq_len, c->vocab, c->padded_vocab, c->layers, c->heads, c->channels};
    int hi[6] = {1 << 16, 65536, 65536 + 127, 1000, 1024, 65536};
    for (int i = 0; i < 6; i++) {
        if (value[i] < 1 || value[i] > hi[i]) die("%s: %s %d is outside [1, %d]", where, name[i], value[i], hi[i]);
    }
    if (c->max_seq_len < 1 || c->vocab < 1 || c->padded_vocab < c->vocab || c->layers < 1 || c->heads < 1 ||
        c->channels < 1 || c->channels % c->heads != 0) {
        die("%s: bad GPT-2 shape (T %d, V %d, Vp %d, L %d, NH %d, C %d)", where, c->max_seq_len, c->vocab,
            c->padded_vocab, c->layers, c->heads, c->channels);
    }
}

// The parameter tensors, in llm.c's checkpoint order (the file's body); row-major, nn.Linear's
// (out, in). Both twins allocate, initialise and log by this table.
enum {
    P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB,
    P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB, NUM_PARAMS
};

// Name, shape and role of each tensor. per_layer: the tensor is L stacked copies.
// block_matrix: a block's linear weight (LIR, TVR and the statistics act on these).
typedef struct {
    const char *name;
    int per_layer;
    int decay;        // AdamW weight decay: 2-D tensors (embeddings and projections)
    int block_matrix; // index into the names of the statistics below, -1 if not one
} ParamInfo;

static const ParamInfo PARAM_INFO[NUM_PARAMS] = {
    {"wte", 0, 1, -1},      {"wpe", 0, 1, -1},      {"ln1w", 1, 0, -1},    {"ln1b", 1, 0, -1},
    {"qkvw", 1, 1, 0},      {"qkvb", 1, 0, -1},     {"attprojw", 1, 1, 1}, {"attprojb", 1, 0, -1},
    {"ln2w", 1, 0, -1},     {"ln2b", 1, 0, -1},     {"fcw", 1, 1, 2},      {"fcb", 1, 0, -1},
    {"fcprojw", 1, 1, 3},   {"fcprojb", 1, 0, -1},  {"lnfw", 0, 0, -1},    {"lnfb", 0, 0, -1},
};

// The four block matrices as the model stores them (TVR's units) and their biases.
#define NUM_BLOCK_MATRICES 4
static const int BLOCK_MATRIX_PARAM[NUM_BLOCK_MATRICES] = {P_QKVW, P_ATTPROJW, P_FCW, P_FCPROJW};
static const int BLOCK_MATRIX_BIAS[NUM_BLOCK_MATRICES] = {P_QKVB, P_ATTPROJB, P_FCB, P_FCPROJB};

// Elements of one layer's slice (per_layer tensors) or of the whole tensor.
static size_t param_slice_size(const GPT2Config *c, int p) {
    size_t C = c->channels;
    switch (p) {
    case P_WTE: return (size_t)c->padded_vocab * C;
    case P_WPE: return (size_t)c->max_seq_len * C;
    case P_QKVW: return 3 * C * C;
    case P_QKVB: return 3 * C;
    case P_ATTPROJW: return C * C;
    case P_FCW: return 4 * C * C;
    case P_FCB: return 4 * C;
    case P_FCPROJW: return 4 * C * C;
    default: return C; // norms and the C-wide biases
    }
}

static size_t param_size(const GPT2Config *c, int p) {
    return param_slice_size(c, p) * (PARAM_INFO[p].per_layer ? (size_t)c->layers : 1);
}

// llm.c's GPT-2 checkpoint: int32 header[256]: [0] 20240326, [1] 3 (fp32, padded
// vocabulary), [2] max T, [3] V, [4] L, [5] NH, [6] C, [7] Vp; then the fp32
// parameters in the trainer's table order.
#define GPT2_MAGIC 20240326
#define GPT2_VERSION 3
#define HEADER_INTS 256

static void gpt2_header_write(FILE *f, const char *path, const GPT2Config *c) {
    int32_t h[HEADER_INTS] = {0};
    h[0] = GPT2_MAGIC, h[1] = GPT2_VERSION, h[2] = c->max_seq_len, h[3] = c->vocab, h[4] = c->layers;
    h[5] = c->heads, h[6] = c->channels, h[7] = c->padded_vocab;
    fwrite_check(h, sizeof(int32_t), HEADER_INTS, f, path);
}

// Open a checkpoint and read its header into *c, checked; returns the file at the
// parameters, and its size in *bytes (the caller checks it against the table).
static FILE *gpt2_read_header(const char *path, GPT2Config *c, long *bytes) {
    *bytes = file_size(path);
    if (*bytes < 0) die("cannot read checkpoint %s: %s", path, strerror(errno));
    if (*bytes < HEADER_INTS * 4) die("checkpoint %s is truncated: %ld bytes, shorter than its header", path, *bytes);
    FILE *f = fopen_check(path, "rb");
    int32_t h[HEADER_INTS];
    fread_check(h, sizeof(int32_t), HEADER_INTS, f, path);
    if (h[0] != GPT2_MAGIC) {
        die("checkpoint %s has bad magic %d (want %d, an llm.c GPT-2 model)", path, h[0], GPT2_MAGIC);
    }
    if (h[1] != GPT2_VERSION) {
        die("checkpoint %s has version %d; only version 3 (fp32, padded vocabulary) is read", path, h[1]);
    }
    c->max_seq_len = h[2], c->vocab = h[3], c->layers = h[4], c->heads = h[5], c->channels = h[6];
    c->padded_vocab = h[7];
    config_check(c, path);
    return f;
}

// The shape as int32s (the checkpoint header's fields), for state.bin to record; returns the count.
static int gpt2_config_ints(const GPT2Config *c, int32_t *out) {
    int32_t v[6] = {c->max_seq_len, c->vocab, c->padded_vocab, c->layers, c->heads, c->channels};
    memcpy(out, v, sizeof(v));
    return 6;
}

static void gpt2_check_size(const char *path, long bytes, long num_params) {
    long want = HEADER_INTS * 4 + num_params * 4;
    if (bytes != want) {
        die("checkpoint %s has %ld bytes, its header says %ld: truncated or not fp32", path, bytes, want);
    }
}

// The flags (common/train.h's, with GPT-2's shape and E3's histogram; gpu: and
// --tf32, --attention, --precision). Returns whether --seq-len was given; shape_given[i] for layers, dim,
// heads, vocab.
static int settings_parse(Settings *s, int argc, char **argv, const char *usage, int gpu, int shape_given[4]) {
    Flag flags[MAX_FLAGS];
    int n = data_flags(s, flags, "data/tinyshakespeare/gpt2_train_*.bin", "data/tinyshakespeare/gpt2_val_*.bin");
    n += gpt2_flags(s, flags + n);
    n += training_flags(s, flags + n, "plain|lir|residual|e3");
    n += hist_flags(s, flags + n);
    n += sample_flags(s, flags + n, "data/tokenizers/gpt2/gpt2_tokenizer.bin");
    n += parallel_flags(s, flags + n);
    if (gpu) n += gpu_flags(s, flags + n), n += gpt2_gpu_flags(s, flags + n);
    settings_parse_flags(s, flags, n, argc, argv, usage);
    if (s->dim % s->heads != 0) usage_error("--heads %d does not divide --dim %d", s->heads, s->dim);
    if (s->kv_heads != 0 && s->kv_heads != s->heads) {
        usage_error("--kv-heads: GPT-2 has no grouped attention: 0 or --heads");
    }
    if (s->ffn != 0 && s->ffn != 4 * s->dim) usage_error("--ffn: GPT-2's MLP is 4*dim = %d: 0 or that", 4 * s->dim);
    if (s->hist_layer > s->layers && !s->resume && !s->init_from) {
        usage_error("--hist-layer %d > --layers %d", s->hist_layer, s->layers);
    }
    const char *shape[4] = {"layers", "dim", "heads", "vocab"};
    for (int i = 0; i < 4; i++) shape_given[i] = flag_given(flags, n, shape[i]);
    return flag_given(flags, n, "seq-len");
}

// After a checkpoint's header is read: the flags that it overrides, said once, and
// the sequence length to train with (--seq-len, or the checkpoint's if shorter and
// the flag not given).
static int checkpoint_seq_len(const Settings *s, int seq_len_given, const int shape_given[4], const GPT2Config *c) {
    const char *shape[4] = {"layers", "dim", "heads", "vocab"};
    for (int i = 0; i < 4; i++) {
        if (shape_given[i]) printf("note: --%s ignored, the checkpoint sets the shape\n", shape[i]);
    }
    int maxT = c->max_seq_len;
    if (seq_len_given && s->seq_len > maxT) usage_error("--seq-len %d is above the checkpoint's %d", s->seq_len, maxT);
    if (s->hist_layer > c->layers) {
        usage_error("--hist-layer %d > the checkpoint's %d layers", s->hist_layer, c->layers);
    }
    return s->seq_len < maxT ? s->seq_len : maxT;
}

// --resume: the run's recorded settings (resume_settings in common/train.h), checked
// against model.bin's shape before anything is built; returns seq_len_given.
static int gpt2_resume_settings(Settings *s, int seq_len_given, int state_magic) {
    char path[4200];
    GPT2Config rc;
    long bytes;
    fclose(gpt2_read_header(run_file(path, sizeof(path), s->resume, "model.bin"), &rc, &bytes));
    int32_t shape[STATE_CONFIG_INTS];
    int n = gpt2_config_ints(&rc, shape);
    return resume_settings(s, seq_len_given, s->resume, state_magic, "train_gpt2", shape, n);
}

static GPT2Config config_from_settings(const Settings *s) {
    GPT2Config c = {s->seq_len, s->vocab, (s->vocab + 127) / 128 * 128, s->layers, s->heads, s->dim};
    return c;
}

// ----------------------------------------------------------------------------
// E3's histogram of one matrix w (n values of elem bytes, float or double, in host
// memory; docs/methods.md, E3).
// hist.csv: step, layer, matrix, bin, lo, hi, count: HIST_BINS fixed bins over
// [-range, range]; entries outside fall into the end bins. hist_summary.csv:
// step, layer, matrix, mean, std, near_zero, large, excess_kurtosis, with near_zero
// the share of |w - mu| < 0.1*std (7.97% for a Gaussian) and large the share of
// |w - mu| > 3*std (0.27% for a Gaussian): scale-free measures of sparsity. mu and
// sd are the matrix's mean and unbiased std (the trainer's weight_stats).

#define HIST_BINS 100

static void hist_rows(FILE *fh, FILE *fs, const void *w, size_t elem, size_t n, double mu, double sd, int step,
                      int layer, const char *name, double range) {
    long counts[HIST_BINS] = {0};
    double m4 = 0;
    size_t near = 0, large = 0;
    for (size_t i = 0; i < n; i++) {
        double x = elem == sizeof(double) ? ((const double *)w)[i] : (double)((const float *)w)[i];
        int b = (int)floor((x + range) / (2 * range) * HIST_BINS);
        counts[b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b]++;
        double d = fabs(x - mu);
        near += d < 0.1 * sd;
        large += d > 3 * sd;
        m4 += d * d * d * d;
    }
    for (int b = 0; b < HIST_BINS; b++) {
        double lo = -range + 2 * range * b / HIST_BINS;
        fprintf(fh, "%d,%d,%s,%d,%.6g,%.6g,%ld\n", step, layer, name, b, lo, lo + 2 * range / HIST_BINS, counts[b]);
    }
    double var = sd * sd * (n - 1) / n;
    fprintf(fs, "%d,%d,%s,%.9g,%.9g,%.6f,%.6f,%.6f\n", step, layer, name, mu, sd, (double)near / n, (double)large / n,
            m4 / n / (var * var) - 3.0);
    fflush(fh), fflush(fs);
}

#endif // RESCALE_GPT2_RUN_H
