/*
 * common/train.h: the host side of training that is the same in all four
 * trainers (train_llama.c/.cu, train_gpt2.c/.cu), so that it is written, and
 * read, once:
 *
 *   1. Settings: the run's flags, one struct and one set of defaults; each
 *      trainer adds its architecture flags between the data and training ones
 *   2. the learning-rate schedule (OptConfig, lr_at) and TVR's schedule
 *      (TvrConfig, tvr_target_for_layer, tvr_due)
 *   3. state.bin's header and fp32 payloads (docs/formats.md, "state.bin"), and
 *      what --resume holds to (resume_settings)
 *   4. the CSV logs, the progress line, validation rows and checkpoint paths, and
 *      the checks on bad numbers (non-finite steps and parameters, memory)
 *   5. text samples and --generate, over a model's NextLogits (common/sample.h)
 *
 * The mathematics (the layers, AdamW, LIR, TVR's rescaling) stays in each
 * trainer, readable top to bottom.
 */
#ifndef RESCALE_TRAIN_H
#define RESCALE_TRAIN_H

#include "args.h"
#include "csvlog.h"
#include "dataloader.h"
#include "dp.h"         // data parallelism: the ranks, the global batch's split (docs/parallel.md)
#include "sample.h" // the sampler, generate(), samples.txt (and common/tokenizer.h)
#include "utils.h"

// ----------------------------------------------------------------------------
// 1. the settings

typedef struct {
    // data and checkpoints
    const char *train, *val, *init_from, *resume, *out;
    // architecture of a fresh model: each trainer has the flags its model has
    int layers, dim, heads, kv_heads, ffn, seq_len, vocab;
    double norm_eps, rope_theta;
    // optimisation
    int batch, steps, warmup;
    double lr, min_lr_frac, weight_decay, beta1, beta2, eps, grad_clip;
    const char *schedule, *init;
    double init_std;
    int seed, shuffle;
    // TVR
    double tvr_target, tvr_threshold;
    int tvr_every, tvr_depth_scaled;
    // logs and checkpoints
    int val_every, val_batches, stats_every, checkpoint_every, threads;
    int skip_nonfinite; // 1: a step whose loss or gradient norm is not finite is skipped, not fatal
    int memory_check;   // 1: refuse a configuration that needs more memory than the machine has
    int allow_resume_change; // 1: --resume may change the settings state.bin records (RUN_FLAGS)
    int run_given;           // bit i: RUN_FLAGS[i] was on the command line
    // train_gpt2's E3 histogram (docs/methods.md, E3)
    int hist_layer;
    const char *hist_matrix;
    double hist_range;
    // the GPU programs: matmuls in TF32
    int tf32;
    const char *attention; // the CUDA trainers' attention: flash (default) or matmul
    int recompute;         // the CUDA trainers: 1 = redo the cheap activations in the backward
    // train_llama: the matmuls' inputs in fp32 or bf16 (docs/perf.md, "bf16 on the CPU")
    const char *precision;
    // train_llama: evaluate --init-from's model on --val and exit, fake-quantized by --quant
    // (docs/methods.md, "Quantized evaluation")
    int eval_only;
    const char *quant;
    // text samples and generation (common/sample.h)
    int sample_every, sample_tokens, sample_seed, generate, kv_cache;
    double temperature, top_p;
    const char *tokenizer, *prompt;
    // data parallelism and gradient accumulation (common/dp.h, docs/parallel.md)
    int grad_accum;       // K micro-steps of --batch rows per optimizer step
    int grad_accum_given; // --grad-accum was on the command line (resume_settings)
} Settings;

#define MAX_FLAGS 64

// The data and checkpoint flags; the default shards are the model's tokenisation
// of the committed Tiny Shakespeare. Returns the number of entries written.
static int data_flags(Settings *s, Flag *f, const char *train_glob, const char *val_glob) {
    Flag t[] = {
        {"train", FLAG_STRING, &s->train, train_glob, 0, 0, NULL, "training shards (glob)", 0},
        {"val", FLAG_STRING, &s->val, val_glob, 0, 0, NULL, "validation shards (glob); \"\" for none", 0},
        {"init-from", FLAG_STRING, &s->init_from, NULL, 0, 0, NULL,
         "start from this model.bin (a fresh run from step 0)", 0},
        {"resume", FLAG_STRING, &s->resume, NULL, 0, 0, NULL, "continue the run checkpointed in this directory", 0},
        {"out", FLAG_STRING, &s->out, "out", 0, 0, NULL, "output directory: logs and checkpoints", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// The training flags, the same in every trainer; inits is the model's "a|b|c" of schemes.
static int training_flags(Settings *s, Flag *f, const char *inits) {
    Flag t[] = {
        {"batch", FLAG_INT, &s->batch, "8", 1, 1 << 16, NULL, "sequences per step B", 0},
        {"steps", FLAG_INT, &s->steps, "400", 0, 1 << 30, NULL, "total optimizer steps", 0},
        {"lr", FLAG_FLOAT, &s->lr, "3e-3", 0, 100, NULL, "peak learning rate", 0},
        {"min-lr-frac", FLAG_FLOAT, &s->min_lr_frac, "0.1", 0, 1, NULL, "final lr as a fraction of --lr (cosine)", 0},
        {"warmup", FLAG_INT, &s->warmup, "40", 0, 1 << 30, NULL, "linear warm-up steps", 0},
        {"schedule", FLAG_CHOICE, &s->schedule, "cosine", 0, 0, "cosine|constant", "lr after warm-up", 0},
        {"weight-decay", FLAG_FLOAT, &s->weight_decay, "0.1", 0, 10, NULL, "AdamW decoupled weight decay (2-D tensors)",
         0},
        {"beta1", FLAG_FLOAT, &s->beta1, "0.9", 0, 0.999999, NULL, "AdamW beta1", 0},
        {"beta2", FLAG_FLOAT, &s->beta2, "0.95", 0, 0.999999, NULL, "AdamW beta2", 0},
        {"eps", FLAG_FLOAT, &s->eps, "1e-8", 0, 1, NULL, "AdamW eps", 0},
        {"grad-clip", FLAG_FLOAT, &s->grad_clip, "1.0", 0, 1e9, NULL, "global gradient norm limit; 0 = off", 0},
        {"init", FLAG_CHOICE, &s->init, "plain", 0, 0, inits, "initialisation scheme", 0},
        {"init-std", FLAG_FLOAT, &s->init_std, "0.02", 0, 10, NULL, "sigma of the initial weights", 0},
        {"seed", FLAG_INT, &s->seed, "1337", 0, INT_MAX, NULL, "random seed (init, and the --shuffle order)", 0},
        {"shuffle", FLAG_INT, &s->shuffle, "0", 0, 1, NULL,
         "1: training shards and their windows in a new random order each epoch", 0},
        {"tvr-target", FLAG_FLOAT, &s->tvr_target, "0", 0, 10, NULL, "TVR target std; 0 = off", 0},
        {"tvr-every", FLAG_INT, &s->tvr_every, "50", 1, 1 << 30, NULL, "TVR on steps that are multiples of this", 0},
        {"tvr-threshold", FLAG_FLOAT, &s->tvr_threshold, "1.2", 0, 1e6, NULL, "rescale when std/target exceeds this",
         0},
        {"tvr-depth-scaled", FLAG_INT, &s->tvr_depth_scaled, "0", 0, 1, NULL, "1: target/sqrt(l) for block l", 0},
        {"val-every", FLAG_INT, &s->val_every, "100", 0, 1 << 30, NULL,
         "validate every N steps (and at the end); 0 = never", 0},
        {"val-batches", FLAG_INT, &s->val_batches, "20", 1, 1 << 20, NULL, "batches per validation", 0},
        {"stats-every", FLAG_INT, &s->stats_every, "50", 0, 1 << 30, NULL,
         "weights.csv/activations.csv every N steps; 0 = never", 0},
        {"checkpoint-every", FLAG_INT, &s->checkpoint_every, "0", 0, 1 << 30, NULL,
         "checkpoint every N steps (and at the end); 0 = only at the end", 0},
        {"allow-resume-change", FLAG_INT, &s->allow_resume_change, "0", 0, 1, NULL,
         "1: --resume may change --seed --batch --seq-len --lr --warmup --schedule (else an error)", 0},
        {"memory-check", FLAG_INT, &s->memory_check, "1", 0, 1, NULL,
         "1: refuse what needs more memory than the machine (a GPU program: the device) has; 0: try anyway", 0},
        {"skip-nonfinite", FLAG_INT, &s->skip_nonfinite, "0", 0, 1, NULL,
         "1: skip a step whose loss or gradient norm is not finite (counted); 0: stop there", 0},
        {"threads", FLAG_INT, &s->threads, "0", 0, 1024, NULL,
         "CPU threads (OpenMP); 0 = all cores; the GPU programs ignore it", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// The LLaMA's architecture (train_llama.c/.cu); with a checkpoint they must agree with it.
#define NUM_ARCH_FLAGS 8
static const char *ARCH_FLAGS[NUM_ARCH_FLAGS] __attribute__((unused)) = {"layers", "dim",   "heads",    "kv-heads",
                                                 "ffn",    "vocab", "norm-eps", "rope-theta"};

// --quant's settings; train_llama.c's QUANT_SETTINGS says what each one quantizes
#define QUANT_CHOICES "none|w8a8|w8a8-token|w8|w4g128|a8|a8-token|a4|a4-token|w16a16"

static int llama_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"layers", FLAG_INT, &s->layers, "4", 1, 1024, NULL, "decoder blocks L (fresh model)", 0},
        {"dim", FLAG_INT, &s->dim, "128", 2, 65536, NULL, "width C (fresh model)", 0},
        {"heads", FLAG_INT, &s->heads, "4", 1, 1024, NULL, "query heads NH (fresh model)", 0},
        {"kv-heads", FLAG_INT, &s->kv_heads, "2", 1, 1024, NULL, "key/value heads NKV, dividing NH (fresh model)", 0},
        {"ffn", FLAG_INT, &s->ffn, "0", 0, 1 << 20, NULL, "SwiGLU hidden width F; 0 = 2/3*4C rounded up to 32", 0},
        {"seq-len", FLAG_INT, &s->seq_len, "128", 1, 1 << 16, NULL, "sequence length T", 0},
        {"vocab", FLAG_INT, &s->vocab, "32000", 2, 65536, NULL, "vocabulary size V (fresh model)", 0},
        {"norm-eps", FLAG_FLOAT, &s->norm_eps, "1e-5", 1e-12, 1, NULL, "RMSNorm eps (fresh model)", 0},
        {"rope-theta", FLAG_FLOAT, &s->rope_theta, "10000", 1, 1e9, NULL, "RoPE base (fresh model)", 0},
        {"precision", FLAG_CHOICE, &s->precision, "fp32", 0, 0, "fp32|bf16",
         "matmul inputs; bf16: rounded to bf16, fp32 sums, weights and state", 0},
        {"eval-only", FLAG_INT, &s->eval_only, "0", 0, 1, NULL,
         "1: the val loss of --init-from's model on --val-batches batches, then exit (the CPU only, yet)", 0},
        {"quant", FLAG_CHOICE, &s->quant, "none", 0, 0, QUANT_CHOICES,
         "with --eval-only 1: fake-quantized weights (w) and matmul inputs (a), int bits; docs/methods.md", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// GPT-2's shape, between the data and the training flags; kv-heads and ffn are
// there so that a LLaMA command line is answered clearly.
static int gpt2_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"layers", FLAG_INT, &s->layers, "4", 1, 1000, NULL, "blocks L (fresh model)", 0},
        {"dim", FLAG_INT, &s->dim, "128", 1, 65536, NULL, "width C (fresh model)", 0},
        {"heads", FLAG_INT, &s->heads, "4", 1, 1024, NULL, "attention heads NH (fresh model)", 0},
        {"kv-heads", FLAG_INT, &s->kv_heads, "0", 0, 1024, NULL, "GPT-2 has none: 0 or equal to --heads", 0},
        {"ffn", FLAG_INT, &s->ffn, "0", 0, 1 << 20, NULL, "GPT-2's MLP is 4C: 0 or 4*dim", 0},
        {"seq-len", FLAG_INT, &s->seq_len, "64", 1, 1 << 16, NULL, "sequence length T (at most the checkpoint's)", 0},
        {"vocab", FLAG_INT, &s->vocab, "50257", 2, 65536, NULL,
         "vocabulary V (fresh model; padded to a multiple of 128)", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

static int hist_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"hist-layer", FLAG_INT, &s->hist_layer, "0", 0, 1000, NULL,
         "E3: layer whose matrix hist.csv follows (0 = off)", 0},
        {"hist-matrix", FLAG_CHOICE, &s->hist_matrix, "q", 0, 0, "q|k|v|qkv|attn_proj|fc|fc_proj", "E3: that matrix",
         0},
        {"hist-range", FLAG_FLOAT, &s->hist_range, "0.2", 1e-6, 100, NULL,
         "E3: histogram over [-range, range], 100 bins", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// Text samples during training and --generate (common/sample.h); vocab_file is the
// model's committed vocabulary.
static int sample_flags(Settings *s, Flag *f, const char *vocab_file) {
    Flag t[] = {
        {"sample-every", FLAG_INT, &s->sample_every, "0", 0, 1 << 30, NULL,
         "a text sample every N steps (and at the end); 0 = only at the end", 0},
        {"sample-tokens", FLAG_INT, &s->sample_tokens, "0", 0, 1 << 16, NULL, "tokens per sample; 0 = no samples", 0},
        {"temperature", FLAG_FLOAT, &s->temperature, "1.0", 0, 100, NULL, "sampling temperature; 0 = greedy", 0},
        {"top-p", FLAG_FLOAT, &s->top_p, "0.9", 1e-6, 1, NULL,
         "nucleus sampling: the most likely tokens up to this mass", 0},
        {"sample-seed", FLAG_INT, &s->sample_seed, "42", 0, INT_MAX, NULL,
         "seed of the samples' own random stream (never the training one)", 0},
        {"tokenizer", FLAG_STRING, &s->tokenizer, vocab_file, 0, 0, NULL, "vocabulary file for samples and prompts", 0},
        {"generate", FLAG_INT, &s->generate, "0", 0, 1 << 16, NULL,
         "generate N tokens from --init-from (after --prompt) and exit; 0 = train", 0},
        {"prompt", FLAG_STRING, &s->prompt, "", 0, 0, NULL, "text that --generate continues", 0},
        {"kv-cache", FLAG_INT, &s->kv_cache, "1", 0, 1, NULL,
         "1: decode with a KV cache; 0: recompute the whole prefix for every token (a check)", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// Gradient accumulation; the number of ranks is mpirun's (docs/parallel.md).
static int parallel_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"grad-accum", FLAG_INT, &s->grad_accum, "1", 1, 1 << 16, NULL,
         "micro-steps of --batch rows per optimizer step K (a step: batch x ranks x K rows)", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// A step's rows: --batch x ranks x --grad-accum (a program without the flag has K 0: 1).
static long global_batch(const Settings *s) {
    return (long)s->batch * dp.ranks * (s->grad_accum > 0 ? s->grad_accum : 1);
}

// The flags only the GPU programs have; their CPU twins' tables are otherwise the same.
static int gpu_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"tf32", FLAG_INT, &s->tf32, "0", 0, 1, NULL,
         "1: matmuls in TF32 on tensor cores (faster, ~1e-3 relative); 0: full fp32", 0},
        {"attention", FLAG_CHOICE, &s->attention, "flash", 0, 0, "flash|matmul|cudnn",
         "flash: fused causal attention, no T x T matrix in memory (head size <= 64); matmul: cuBLAS products "
         "around a T x T softmax; cudnn: cuDNN's fused attention in bf16 (a USE_CUDNN=1 build)", 0},
        {"recompute", FLAG_INT, &s->recompute, "0", 0, 1, NULL,
         "1: keep one layer of the norm and MLP activations, redone in the backward (less memory, same bits)", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// --precision for train_gpt2.cu, whose CPU twin has fp32 only (train_llama's is in llama_flags)
static int gpt2_gpu_flags(Settings *s, Flag *f) {
    Flag t[] = {
        {"precision", FLAG_CHOICE, &s->precision, "fp32", 0, 0, "fp32|bf16",
         "matmul inputs; bf16: rounded to bf16, fp32 sums, weights and state (the GPU program only)", 0},
    };
    memcpy(f, t, sizeof(t));
    return (int)(sizeof(t) / sizeof(t[0]));
}

// The settings state.bin records and --resume holds to (resume_settings).
#define NUM_RUN_FLAGS 6
static const char *RUN_FLAGS[NUM_RUN_FLAGS] = {"seed", "batch", "seq-len", "lr", "warmup", "schedule"};

// Parse argv against the table, then the checks every trainer makes.
static void settings_parse_flags(Settings *s, Flag *flags, int n, int argc, char **argv, const char *usage) {
    memset(s, 0, sizeof(*s));
    flags_parse(flags, n, argc, argv, 1, usage);
    for (int i = 0; i < NUM_RUN_FLAGS; i++) s->run_given |= flag_given(flags, n, RUN_FLAGS[i]) << i;
    s->grad_accum_given = flag_given(flags, n, "grad-accum");
    if (s->init_from && s->resume) usage_error("--init-from and --resume exclude each other");
    if (s->generate > 0 && !s->init_from) usage_error("--generate needs a model: --init-from MODEL.bin");
    if (s->resume && !flag_given(flags, n, "out")) s->out = s->resume; // resume in place unless told otherwise
}

// Before anything is allocated: what the run needs (bytes, the trainer's count), said,
// and refused when it is more than the machine's memory (--memory-check 0 tries anyway).
static void memory_check(const Settings *s, double bytes) {
    double have = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE), gib = 1024.0 * 1024 * 1024;
    printf("memory: about %.3f GiB for parameters, AdamW's moments and activations (%.1f GiB here)\n", bytes / gib,
           have / gib);
    if (s->memory_check && have > 0 && bytes > have) {
        usage_error("this configuration needs about %.1f GiB, more than the %.1f GiB of memory here "
                    "(--memory-check 0 tries anyway)", bytes / gib, have / gib);
    }
}

// Validation runs when there are shards to read and a schedule to read them on.
static int have_val(const Settings *s) { return s->val && s->val[0] && s->val_every > 0; }

// The data, before any work is done so that a bad shard is reported first: the
// training loader (in a seeded random order with --shuffle 1) and, when
// validating, the validation one. T the sequence length, V the model's vocabulary.
// The training loader reads a step's global batch (global_batch) at once, on every
// rank, so where the data stands does not depend on how the rows are split; a rank
// trains on its rows of it (docs/parallel.md). Validation reads --batch rows a batch.
static void data_open(const Settings *s, DataLoader *train_dl, DataLoader *val_dl, int T, int V) {
    long G = global_batch(s);
    if (G > (1 << 30) / T) usage_error("--batch x ranks x --grad-accum = %ld rows of %d tokens: too many", G, T);
    dataloader_init(train_dl, s->train, "--train", (int)G, T, V);
    if (have_val(s)) dataloader_init(val_dl, s->val, "--val", s->batch, T, V);
    if (s->shuffle) dataloader_shuffle(train_dl, (uint64_t)s->seed);
}

static void data_close(const Settings *s, DataLoader *train_dl, DataLoader *val_dl) {
    dataloader_free(train_dl);
    if (have_val(s)) dataloader_free(val_dl);
}

// ----------------------------------------------------------------------------
// 2. schedules

typedef struct {
    double lr, min_lr_frac;
    int warmup, steps;
    int cosine; // 0: constant after warm-up
    double weight_decay, beta1, beta2, eps, grad_clip;
} OptConfig;

typedef struct {
    double target;    // 0 = off
    int every;        // fire on steps every, 2*every, ...
    double threshold; // rescale when std/target > threshold
    int depth_scaled; // target/sqrt(l) for block l
} TvrConfig;

static OptConfig opt_config(const Settings *s) {
    OptConfig o = {s->lr,           s->min_lr_frac, s->warmup, s->steps, strcmp(s->schedule, "cosine") == 0,
                   s->weight_decay, s->beta1,       s->beta2,  s->eps,   s->grad_clip};
    return o;
}

static TvrConfig tvr_config(const Settings *s) {
    TvrConfig t = {s->tvr_target, s->tvr_every, s->tvr_threshold, s->tvr_depth_scaled};
    return t;
}

// Learning rate at step s (1-based): linear warm-up to lr over `warmup` steps,
// then cosine from lr to lr*min_lr_frac at the last step (docs/methods.md, "The training loop").
static double lr_at(const OptConfig *o, int s) {
    if (o->warmup > 0 && s <= o->warmup) return o->lr * s / o->warmup;
    if (!o->cosine || o->steps <= o->warmup) return o->lr;
    double progress = (double)(s - o->warmup) / (o->steps - o->warmup);
    double min_lr = o->lr * o->min_lr_frac;
    return min_lr + 0.5 * (o->lr - min_lr) * (1 + cos(M_PI * progress));
}

static double tvr_target_for_layer(const TvrConfig *tvr, int layer /* 1-based */) {
    return tvr->depth_scaled ? tvr->target / sqrt((double)layer) : tvr->target;
}

static int tvr_due(const TvrConfig *tvr, int step) { return tvr->target > 0 && step % tvr->every == 0; }

static int stats_due(int every, int step) { return every > 0 && step % every == 0; }

// ----------------------------------------------------------------------------
// 3. state.bin: everything --resume needs, in one file written by one atomic
// rename. int32 header[256]: [0] magic, [1] version, [2] step, [3] data shard
// index, int64 at [4] data position, [6] RNG state, [8] parameter count, [10] 1
// if the data order is shuffled (then [4] counts the batches taken), [11] its
// seed; then params, AdamW's m and v, fp32, in the model's parameter order. The
// parameters are here as well as in model.bin so that a crash between the two
// renames can never pair one step's weights with another step's moments.

#define STATE_HEADER_INTS 256

#define STATE_CONFIG_INTS 16

typedef struct {
    int step;
    int shard;
    long pos;
    uint64_t rng;
    int shuffle, shuffle_seed;
    // the run it continues (header [12] = 1; files written before had 0 there)
    int recorded, seed, batch, seq_len, warmup, cosine;
    double lr;
    int nconfig;
    int32_t config[STATE_CONFIG_INTS]; // the model's shape, as its checkpoint header has it
    int rows; // header [21]: a step's global batch, --batch x ranks x --grad-accum (0 in older files: --batch)
} TrainState;

// A run's state before its first step: the settings and model shape to record.
static TrainState state_new(const Settings *s, const int32_t *config, int nconfig) {
    TrainState st;
    memset(&st, 0, sizeof(st));
    st.shuffle = s->shuffle, st.shuffle_seed = s->seed;
    st.recorded = 1, st.seed = s->seed, st.batch = s->batch, st.seq_len = s->seq_len, st.warmup = s->warmup;
    st.cosine = strcmp(s->schedule, "cosine") == 0, st.lr = s->lr, st.nconfig = nconfig;
    memcpy(st.config, config, sizeof(int32_t) * nconfig);
    st.rows = (int)global_batch(s);
    return st;
}

// After state_load has filled *st: the RNG and the training loader continue where
// the checkpoint left them (the loader checks the data order is the one it was).
static void state_resume(const Settings *s, const TrainState *st, Rng *rng, DataLoader *train_dl) {
    rng->s = st->rng;
    dataloader_resume(train_dl, st->shuffle, st->shuffle_seed, st->shard, st->pos, s->seed, s->resume);
}

static void state_write_header(FILE *f, const char *path, int magic, int version, const TrainState *st,
                               long num_params) {
    int32_t header[STATE_HEADER_INTS] = {0};
    header[0] = magic;
    header[1] = version;
    header[2] = st->step;
    header[3] = st->shard;
    int64_t pos = st->pos, np = num_params;
    memcpy(&header[4], &pos, 8);
    memcpy(&header[6], &st->rng, 8);
    memcpy(&header[8], &np, 8);
    header[10] = st->shuffle;
    header[11] = st->shuffle_seed;
    header[12] = 1;
    header[13] = st->seed, header[14] = st->batch, header[15] = st->seq_len, header[16] = st->warmup;
    header[17] = st->cosine;
    memcpy(&header[18], &st->lr, 8);
    header[20] = st->nconfig;
    header[21] = st->rows; // not how they were split: the file is the same for every N and K
    memcpy(&header[24], st->config, sizeof(int32_t) * st->nconfig);
    fwrite_check(header, sizeof(int32_t), STATE_HEADER_INTS, f, path);
}

// Open a state.bin and read its header, checking it is a whole header of this
// program's (the magic); returns the file positioned after it.
static FILE *state_header(const char *path, int magic, const char *program, int32_t *header) {
    FILE *f = fopen_check(path, "rb");
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) die("state file %s is not a regular file", path);
    if (fread(header, sizeof(int32_t), STATE_HEADER_INTS, f) != STATE_HEADER_INTS) {
        die("state file %s is truncated: shorter than its 1024-byte header", path);
    }
    if (header[0] != magic) {
        die("state file %s has bad magic %d (want %d, a %s state)", path, header[0], magic, program);
    }
    return f;
}

// The header's fields into *st, each range-checked, the file and field named; the
// recorded run (seed, batch, ... and the model's shape) only with run (resume_settings
// reads them; a resumed run records its own settings, which it has checked).
static void state_fields(const int32_t *header, const char *path, TrainState *st, int run) {
    if (header[2] < 0 || header[2] > (1 << 30)) die("state file %s: step %d is outside [0, 2^30]", path, header[2]);
    if (header[3] < 0) die("state file %s: shard index %d is negative", path, header[3]);
    if (header[10] != 0 && header[10] != 1) die("state file %s: shuffle flag %d is not 0 or 1", path, header[10]);
    if (header[12] != 0 && header[12] != 1) die("state file %s: field [12] is %d, not 0 or 1", path, header[12]);
    st->step = header[2];
    st->shard = header[3];
    st->shuffle = header[10];
    st->shuffle_seed = header[11];
    if (!run) return;
    st->recorded = header[12];
    st->seed = header[13], st->batch = header[14], st->seq_len = header[15], st->warmup = header[16];
    st->cosine = header[17];
    memcpy(&st->lr, &header[18], 8);
    st->nconfig = header[20];
    if (st->recorded && (st->nconfig < 0 || st->nconfig > STATE_CONFIG_INTS)) {
        die("state file %s: model-shape count %d is outside [0, %d]", path, st->nconfig, STATE_CONFIG_INTS);
    }
    if (st->recorded) memcpy(st->config, &header[24], sizeof(int32_t) * st->nconfig);
    if (header[21] < 0) die("state file %s: its global batch %d is negative", path, header[21]);
    st->rows = header[21] > 0 ? header[21] : st->batch;
}

/*
 * --resume continues the run it names: read state.bin's header before anything is
 * built, check it was written for this model (config: the checkpoint header's
 * shape), and take the recorded settings (RUN_FLAGS) the command line leaves out.
 * A flag given with another value is an error naming it, unless
 * --allow-resume-change 1. Returns seq_len_given, true also when taken from the file.
 */
static int resume_settings(Settings *s, int seq_len_given, const char *dir, int magic, const char *program,
                           const int32_t *config, int nconfig) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/state.bin", dir);
    int32_t header[STATE_HEADER_INTS];
    fclose(state_header(path, magic, program, header));
    TrainState st;
    memset(&st, 0, sizeof(st));
    state_fields(header, path, &st, 1);
    if (!st.recorded) {
        printf("note: %s predates recorded settings: --resume cannot check them\n", path);
        return seq_len_given;
    }
    if (st.nconfig != nconfig || memcmp(st.config, config, sizeof(int32_t) * nconfig) != 0) {
        die("state file %s was written for another model than %s/model.bin (their shapes differ)", path, dir);
    }
    if (st.batch < 1 || st.seq_len < 1 || st.warmup < 0 || !isfinite(st.lr) || st.lr < 0 || st.seed < 0 ||
        (st.cosine != 0 && st.cosine != 1)) {
        die("state file %s: a recorded setting is out of range (batch %d, seq-len %d, warmup %d, lr %g)", path,
            st.batch, st.seq_len, st.warmup, st.lr);
    }
    double saved[NUM_RUN_FLAGS] = {(double)st.seed, (double)st.batch, (double)st.seq_len, st.lr, (double)st.warmup,
                                   (double)st.cosine};
    double now[NUM_RUN_FLAGS] = {(double)s->seed, (double)s->batch, (double)s->seq_len, s->lr, (double)s->warmup,
                                 (double)(strcmp(s->schedule, "cosine") == 0)};
    for (int i = 0; i < NUM_RUN_FLAGS; i++) {
        if (!(s->run_given >> i & 1)) continue;
        if (now[i] != saved[i] && !s->allow_resume_change) {
            usage_error("--%s %g differs from the run in %s (%g); --allow-resume-change 1 continues with it",
                        RUN_FLAGS[i], now[i], dir, saved[i]);
        }
    }
    if (!(s->run_given >> 0 & 1)) s->seed = st.seed;
    if (!(s->run_given >> 1 & 1)) s->batch = st.batch;
    if (!(s->run_given >> 2 & 1)) s->seq_len = st.seq_len, seq_len_given = 1;
    if (!(s->run_given >> 3 & 1)) s->lr = st.lr;
    if (!(s->run_given >> 4 & 1)) s->warmup = st.warmup;
    if (!(s->run_given >> 5 & 1)) s->schedule = st.cosine ? "cosine" : "constant";
    // The global batch (--batch x ranks x --grad-accum) is the run's, however split: the
    // data position and the schedule count its rows. --grad-accum left off is chosen
    // to keep it (a 1-rank --grad-accum 2 run continues on 2 ranks with 1, and back).
    long saved_rows = st.rows, per_k = (long)s->batch * dp.ranks;
    if (!s->grad_accum_given && saved_rows % per_k == 0 && saved_rows / per_k <= (1 << 16)) {
        s->grad_accum = (int)(saved_rows / per_k);
    }
    if (global_batch(s) != saved_rows && !s->allow_resume_change) {
        usage_error("--batch %d x %d ranks x --grad-accum %d = %ld rows a step differs from the run in %s "
                    "(%ld); --allow-resume-change 1 continues with it",
                    s->batch, dp.ranks, s->grad_accum > 0 ? s->grad_accum : 1, global_batch(s), dir, saved_rows);
    }
    return seq_len_given;
}

// Open a state.bin, check its header against this program and model, fill *st;
// returns the file positioned at the first payload (params, then m, then v).
static FILE *state_open(const char *path, int magic, int version, const char *program, long num_params,
                        TrainState *st) {
    int32_t header[STATE_HEADER_INTS];
    FILE *f = state_header(path, magic, program, header);
    if (header[1] != version) die("state file %s has version %d, want %d", path, header[1], version);
    int64_t pos, np;
    memcpy(&pos, &header[4], 8);
    memcpy(&st->rng, &header[6], 8);
    memcpy(&np, &header[8], 8);
    if (np != num_params) {
        die("state file %s holds %lld parameters, the model has %ld", path, (long long)np, num_params);
    }
    long want = STATE_HEADER_INTS * 4 + 3 * np * 4;
    if (file_size(path) != want) die("state file %s is %ld bytes, want %ld (truncated?)", path, file_size(path), want);
    state_fields(header, path, st, 0);
    if (pos < 0) die("state file %s: data position %lld is negative", path, (long long)pos);
    st->pos = pos;
    return f;
}

// fp32 payloads of n values held as float (elem 4) or double (elem 8, the
// trainers' -DREAL_DOUBLE test builds), converted through a small buffer. x NULL
// writes zeros (optimizer moments that do not exist yet).
static void write_floats(FILE *f, const void *x, size_t elem, long n, const char *path) {
    if (elem == sizeof(float) && x) {
        fwrite_check(x, sizeof(float), n, f, path);
        return;
    }
    float buf[4096];
    for (long i = 0; i < n; i += 4096) {
        long m = n - i < 4096 ? n - i : 4096;
        for (long j = 0; j < m; j++) {
            buf[j] = !x ? 0.0f : elem == sizeof(float) ? ((const float *)x)[i + j] : (float)((const double *)x)[i + j];
        }
        fwrite_check(buf, sizeof(float), m, f, path);
    }
}

static void read_floats(FILE *f, void *x, size_t elem, long n, const char *path) {
    if (elem == sizeof(float)) {
        fread_check(x, sizeof(float), n, f, path);
        return;
    }
    float buf[4096];
    for (long i = 0; i < n; i += 4096) {
        long m = n - i < 4096 ? n - i : 4096;
        fread_check(buf, sizeof(float), m, f, path);
        for (long j = 0; j < m; j++) ((double *)x)[i + j] = buf[j];
    }
}

// How many of n values (float or double: elem) are not finite; *first the first's index.
static long count_nonfinite(const void *p, size_t elem, long n, long *first) {
    long bad = 0;
    *first = -1;
    for (long i = 0; i < n; i++) {
        double x = elem == sizeof(double) ? ((const double *)p)[i] : (double)((const float *)p)[i];
        if (!isfinite(x)) {
            if (*first < 0) *first = i;
            bad++;
        }
    }
    return bad;
}

// A payload just read (what: "parameters", "AdamW's m", ...) must be finite.
static void check_finite_read(const void *p, size_t elem, long n, const char *path, const char *what) {
    long first, bad = count_nonfinite(p, elem, n, &first);
    if (bad) die("%s: %ld of its %ld %s are not finite (the first at index %ld)", path, bad, n, what, first);
}

// read_floats, then every value checked finite: a checkpoint's payload (what: its name).
static void read_payload(FILE *f, void *x, size_t elem, long n, const char *path, const char *what) {
    read_floats(f, x, elem, n, path);
    check_finite_read(x, elem, n, path, what);
}

// ----------------------------------------------------------------------------
// 4. logs and progress (docs/formats.md, "The logs")

typedef struct {
    FILE *train, *val, *weights, *acts;
    FILE *hist, *hist_summary; // train_gpt2 with --hist-layer; else NULL
    double total_ms, tvr_ms;   // TVR's cost: its passes (statistics + rescale) against all step time
    int timed, tvr_passes;
    int skipped;               // steps skipped for a non-finite loss or gradient norm (--skip-nonfinite 1)
    double flops_per_token, peak_flops; // the GPU programs' MFU (common/cuda_train.h); peak 0: "mfu n/a"
} Logs;

// samples.txt (sample_print appends "step N", the text, a blank line): a fresh run
// starts it empty, a resumed run keeps the samples up to its step, as csv_open does
// for the CSV logs (a crash after the last checkpoint logged samples that come again).
static void samples_open(const char *out, int resume_step) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/samples.txt", out);
    long n = file_size(path);
    if (n < 0) return;
    if (resume_step < 0) {
        if (unlink(path) != 0) die("cannot remove %s: %s", path, strerror(errno));
        return;
    }
    char *buf = (char *)malloc_check(n + 1);
    FILE *f = fopen_check(path, "rb");
    fread_check(buf, 1, n, f, path);
    fclose(f);
    buf[n] = 0;
    long keep = n;
    for (long p = 0; p < n; p++) { // an entry: "step N" alone on a line, at the start or after a blank line
        if (p > 0 && !(p >= 2 && buf[p - 1] == '\n' && buf[p - 2] == '\n')) continue;
        if (strncmp(buf + p, "step ", 5) != 0) continue;
        char *end;
        long step = strtol(buf + p + 5, &end, 10);
        if (end > buf + p + 5 && *end == '\n' && step > resume_step) {
            keep = p;
            break;
        }
    }
    free(buf);
    if (keep < n && truncate(path, keep) != 0) die("cannot truncate %s: %s", path, strerror(errno));
}

// resume_step < 0: a fresh run; hist: also hist.csv and hist_summary.csv
static Logs logs_open(const char *out, int resume_step, int hist) {
    samples_open(out, resume_step);
    Logs lg;
    memset(&lg, 0, sizeof(lg));
    lg.train = csv_open(out, "train.csv", "step,loss,lr,grad_norm,ms,tokens_per_s", resume_step);
    lg.val = csv_open(out, "val.csv", "step,val_loss", resume_step);
    lg.weights = csv_open(out, "weights.csv", "step,layer,matrix,mean,std,rescaled", resume_step);
    lg.acts = csv_open(out, "activations.csv", "step,layer,max_abs,rms", resume_step);
    if (hist) {
        lg.hist = csv_open(out, "hist.csv", "step,layer,matrix,bin,lo,hi,count", resume_step);
        lg.hist_summary = csv_open(out, "hist_summary.csv",
                                   "step,layer,matrix,mean,std,near_zero,large,excess_kurtosis", resume_step);
    }
    return lg;
}

static void format_eta(char *buf, size_t n, double seconds) {
    int s = (int)(seconds + 0.5);
    if (s >= 3600) {
        snprintf(buf, n, "%dh%02dm", s / 3600, s / 60 % 60);
    } else {
        snprintf(buf, n, "%dm%02ds", s / 60, s % 60);
    }
}

// One train.csv row and one progress line; tvr_ms >= 0 when TVR ran this step.
static void log_step(Logs *lg, int step, int steps, double loss, double lr, double norm, double ms, long tokens,
                     double tvr_ms) {
    lg->total_ms += ms;
    lg->timed++;
    if (tvr_ms >= 0) {
        lg->tvr_ms += tvr_ms;
        lg->tvr_passes++;
    }
    double tok_s = tokens / (ms / 1000);
    fprintf(lg->train, "%d,%.9g,%.9g,%.9g,%.3f,%.1f\n", step, loss, lr, norm, ms, tok_s);
    fflush(lg->train);
    char eta[32];
    format_eta(eta, sizeof(eta), (steps - step) * lg->total_ms / lg->timed / 1000);
    char mfu[32] = ""; // the CPU programs set no flops_per_token and print none
    if (lg->flops_per_token > 0 && lg->peak_flops > 0) {
        snprintf(mfu, sizeof(mfu), " | mfu %.1f%%", 100 * lg->flops_per_token * tok_s / lg->peak_flops);
    } else if (lg->flops_per_token > 0) {
        snprintf(mfu, sizeof(mfu), " | mfu n/a");
    }
    printf("step %d/%d | loss %.4f | lr %.2e | norm %.3f | %.1f ms | %.0f tok/s | eta %s%s%s\n", step, steps, loss, lr,
           norm, ms, tok_s, eta, tvr_ms >= 0 ? " | tvr" : "", mfu);
}

static void log_val(Logs *lg, int step, double val_loss) {
    fprintf(lg->val, "%d,%.9g\n", step, val_loss);
    fflush(lg->val);
    printf("step %d: val loss %.4f\n", step, val_loss);
}

// The validation schedule: every val_every steps, and at the last step.
static int val_due(const Settings *s, int step) { return step % s->val_every == 0 || step == s->steps; }

// A text sample: every sample_every steps and after the last step (common/sample.h).
static int sample_due(const Settings *s, int step) {
    return s->sample_tokens > 0 && ((s->sample_every > 0 && step % s->sample_every == 0) || step == s->steps);
}

// An intermediate checkpoint (the final one is always written).
static int checkpoint_due(const Settings *s, int step) {
    return s->checkpoint_every > 0 && step % s->checkpoint_every == 0 && step < s->steps;
}

/*
 * A step whose loss or gradient norm is not finite, seen before its update: by
 * default the run stops with one line naming the step, exit status 1, and the last
 * checkpoint left as it was (nothing is written after it); with --skip-nonfinite 1
 * the step is skipped (no update, its batch consumed, counted) and 1 returned.
 * Returns 0 for a finite step.
 */
static int nonfinite_step(const Settings *s, Logs *lg, int step, double loss, double norm) {
    if (isfinite(loss) && isfinite(norm)) return 0;
    if (s->skip_nonfinite) { // its train.csv row and progress line follow, with the non-finite numbers
        lg->skipped++;
        printf("step %d: loss %g, gradient norm %g: not finite, update skipped (%d so far)\n", step, loss, norm,
               lg->skipped);
        return 1;
    }
    fflush(stdout);
    char path[4200];
    snprintf(path, sizeof(path), "%s/model.bin", s->out);
    die("step %d: the loss is %g and the gradient norm %g; stopped before the update, %s (--skip-nonfinite 1 "
        "skips such steps)", step, loss, norm,
        file_size(path) >= 0 ? "the last checkpoint in --out is as it was" : "no checkpoint was written");
}

// Before a checkpoint is written: parameters that are not finite (an update that
// went wrong with a finite loss) stop the run and leave the previous checkpoint.
static void check_finite_params(const void *p, size_t elem, long n, const char *out) {
    long first, bad = count_nonfinite(p, elem, n, &first);
    if (bad) {
        die("%ld of %ld parameters are not finite (the first at index %ld); the checkpoint in %s was not "
            "overwritten", bad, n, first, out);
    }
}

static void logs_close(Logs *lg) {
    if (lg->skipped > 0) printf("skipped %d steps with a non-finite loss or gradient norm\n", lg->skipped);
    if (lg->tvr_passes > 0) {
        printf("tvr: %d passes, %.2f ms each, %.3f%% of the step time\n", lg->tvr_passes, lg->tvr_ms / lg->tvr_passes,
               100 * lg->tvr_ms / lg->total_ms);
    }
    FILE *fs[] = {lg->train, lg->val, lg->weights, lg->acts, lg->hist, lg->hist_summary};
    for (int i = 0; i < 6; i++) {
        if (fs[i]) fclose(fs[i]);
    }
}

// ----------------------------------------------------------------------------
// 5. text samples and --generate (common/sample.h; docs/formats.md, "Text samples and generation")

// The vocabulary for samples and --generate, or NULL (said why) when the run has
// no use for one or it does not fit the model; with --generate a misfit is an error.
static Tokenizer *load_tokenizer(const Settings *s, int vocab, Tokenizer *tok) {
    if (s->generate == 0 && s->sample_tokens == 0) return NULL;
    const char *why = NULL;
    char msg[4400];
    if (file_size(s->tokenizer) < 0) {
        snprintf(msg, sizeof(msg), "--tokenizer %s: cannot read it", s->tokenizer);
        why = msg;
    } else {
        tokenizer_load(tok, s->tokenizer, 0);
        if (tok->vocab_size != vocab || tok->bos_id < 0) {
            snprintf(msg, sizeof(msg), "--tokenizer %s has %d tokens, the model %d", s->tokenizer, tok->vocab_size,
                     vocab);
            why = msg;
            tokenizer_free(tok);
        }
    }
    if (!why) return tok;
    if (s->generate > 0) die("%s", why);
    printf("note: no text samples: %s\n", why);
    return NULL;
}

// A sample during training: from the document-start token, --sample-tokens tokens
// (as many as the model's T positions hold), printed and appended to samples.txt.
static void sample_run(void *model, NextLogits next, int T, const Settings *s, const Tokenizer *tok, int step) {
    int n = s->sample_tokens + 1 <= T ? s->sample_tokens + 1 : T;
    int *tokens = (int *)malloc_check(sizeof(int) * n);
    tokens[0] = tok->bos_id;
    Sampler sm;
    sampler_init(&sm, tok->vocab_size, s->temperature, s->top_p);
    Rng rng;
    sample_rng(&rng, s->sample_seed, step);
    generate(model, next, &sm, &rng, tokens, 1, n - 1);
    sample_print(tok, tokens, n, 1, step, s->out);
    sampler_free(&sm);
    free(tokens);
}

// --generate N: continue --prompt (after the document-start token) with the
// --init-from model, print the text and the speed; how says how the logits are made.
static void generate_run(void *model, NextLogits next, int T, const Settings *s, const Tokenizer *tok,
                         const char *how) {
    size_t plen = strlen(s->prompt);
    int *tokens = (int *)malloc_check(sizeof(int) * (plen + 2 + T));
    tokens[0] = tok->bos_id;
    int n0 = 1 + tokenizer_encode(tok, s->prompt, plen, tokens + 1);
    if (n0 >= T) usage_error("--prompt is %d tokens; the model's sequence length is %d", n0 - 1, T);
    int n_new = s->generate;
    if (n0 + n_new > T) {
        printf("note: %d prompt + %d new tokens exceed the model's %d positions: generating %d\n", n0, n_new, T,
               T - n0);
        n_new = T - n0;
    }
    Sampler sm;
    sampler_init(&sm, tok->vocab_size, s->temperature, s->top_p);
    Rng rng;
    sample_rng(&rng, s->sample_seed, 0);
    double t0 = wall_seconds();
    int n = generate(model, next, &sm, &rng, tokens, n0, n_new);
    double dt = wall_seconds() - t0;
    sample_print(tok, tokens, n, n0, 0, NULL);
    printf("generate: %d tokens in %.3f s, %.1f tokens/s (%s)\n", n - n0, dt, (n - n0) / dt, how);
    sampler_free(&sm);
    free(tokens);
}

// "<dir>/<name>" into buf (the checkpoint files: model.bin, state.bin)
static const char *run_file(char *buf, size_t n, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, n, "%s/%s", dir, name) >= n) die("path too long: %s/%s", dir, name);
    return buf;
}

#endif // RESCALE_TRAIN_H
