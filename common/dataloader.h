/*
 * common/dataloader.h: reads llm.c's token shards (see docs/formats.md, "Token shards").
 *
 * A shard is int32 header[256] (magic 20240520, version 1, token count, vocab
 * size or 0) followed by the tokens as uint16. Shards are taken in sorted file
 * name order from a glob. Batch k reads B*T+1 contiguous tokens from position p:
 * inputs x[b][t] = tok[p + b*T + t], targets are the same shifted by one; then
 * p += B*T. When the next batch does not fit in the current shard we move to the
 * start of the next shard, wrapping around after the last.
 *
 * Shuffled (dataloader_shuffle, --shuffle 1): a shard is cut into windows of T+1
 * tokens starting at multiples of T (the same windows the rows of the plain order
 * read). Each epoch visits the shards in a random order and, inside a shard, its
 * windows in a random order, B windows (rows) per batch; the last nwindows % B
 * windows of a shard's order are left out of that epoch. The orders are a pure
 * function of (seed, epoch, shard), so the loader's whole state is the number of
 * batches taken: a resumed run continues the same sequence (dataloader_seek_batch).
 *
 * Every shard is checked once, up front, before any training happens: magic,
 * version, size against the header, at least one batch of tokens, and every token
 * id below the model's vocabulary. A problem is one error line naming the file.
 */
#ifndef RESCALE_DATALOADER_H
#define RESCALE_DATALOADER_H

#include <glob.h>

#include "args.h"
#include "utils.h"

#define SHARD_MAGIC 20240520
#define SHARD_VERSION 1
#define SHARD_HEADER_INTS 256

typedef struct {
    int B, T;
    int vocab;
    glob_t glob;         // the shard paths, sorted
    int nshards;
    int shard;           // index of the shard in memory
    long pos;            // where the next batch starts in that shard
    uint16_t *tokens;    // the current shard's tokens
    long ntok;
    int *inputs;         // (B, T)
    int *targets;        // (B, T)
    // shuffled order only (shuffle == 1)
    int shuffle;
    uint64_t seed;
    long batch;          // batches taken so far
    long *shard_batches; // per shard: full batches of windows in it
    long epoch_batches;  // their sum
    long *shard_order;   // this epoch's order of the shards
    long *window_order;  // this (epoch, shard)'s order of the windows
    long order_epoch;    // the epoch shard_order was drawn for, -1 = none
    long order_shard;    // the shard window_order was drawn for (in order_epoch), -1 = none
} DataLoader;

// Read a shard's header and tokens; check everything docs/formats.md promises.
// Returns the token count; fills *tokens (malloc'd) when tokens != NULL.
static long shard_read(const char *path, long min_tokens, int vocab, uint16_t **tokens) {
    long bytes = file_size(path);
    if (bytes < 0) die("cannot read data shard %s: %s", path, strerror(errno));
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) die("data shard %s is not a file (a directory?)", path);
    if (bytes < (long)(SHARD_HEADER_INTS * sizeof(int32_t))) {
        die("data shard %s is truncated: %ld bytes, shorter than its 1024-byte header", path, bytes);
    }
    FILE *f = fopen_check(path, "rb");
    int32_t header[SHARD_HEADER_INTS];
    fread_check(header, sizeof(int32_t), SHARD_HEADER_INTS, f, path);
    if (header[0] != SHARD_MAGIC) {
        die("data shard %s has bad magic %d (want %d: is it an llm.c token shard?)", path, header[0], SHARD_MAGIC);
    }
    if (header[1] != SHARD_VERSION) die("data shard %s has version %d, want %d", path, header[1], SHARD_VERSION);
    long ntok = header[2];
    long want = (long)(SHARD_HEADER_INTS * sizeof(int32_t)) + ntok * (long)sizeof(uint16_t);
    if (ntok < 0 || bytes < want) {
        die("data shard %s is truncated: header says %ld tokens (%ld bytes), file has %ld bytes", path, ntok, want,
            bytes);
    }
    if (bytes > want) die("data shard %s has %ld bytes after its %ld tokens", path, bytes - want, ntok);
    if (ntok < min_tokens) {
        die("data shard %s has %ld tokens, fewer than one batch needs (B*T+1 = %ld)", path, ntok, min_tokens);
    }
    uint16_t *buf = (uint16_t *)malloc_check((size_t)ntok * sizeof(uint16_t));
    fread_check(buf, sizeof(uint16_t), (size_t)ntok, f, path);
    fclose(f);
    for (long i = 0; i < ntok; i++) {
        if (buf[i] >= vocab) {
            die("data shard %s: token %ld has id %d, not below the model's vocabulary size %d", path, i, buf[i], vocab);
        }
    }
    if (tokens) {
        *tokens = buf;
    } else {
        free(buf);
    }
    return ntok;
}

static void dataloader_load_shard(DataLoader *dl, int shard) {
    free(dl->tokens);
    dl->shard = shard;
    dl->ntok = shard_read(dl->glob.gl_pathv[shard], (long)dl->B * dl->T + 1, dl->vocab, &dl->tokens);
}

// flag names the command-line flag the pattern came from, for the error message.
static void dataloader_init(DataLoader *dl, const char *pattern, const char *flag, int B, int T, int vocab) {
    memset(dl, 0, sizeof(*dl));
    dl->B = B;
    dl->T = T;
    dl->vocab = vocab;
    int rc = glob(pattern, 0, NULL, &dl->glob);
    if (rc != 0 || dl->glob.gl_pathc == 0) die("%s %s: no file matches", flag, pattern);
    dl->nshards = (int)dl->glob.gl_pathc;
    dl->shard_batches = (long *)malloc_check((size_t)dl->nshards * sizeof(long));
    for (int s = 1; s < dl->nshards; s++) { // shard 0 is checked when it is loaded below
        long ntok = shard_read(dl->glob.gl_pathv[s], (long)B * T + 1, vocab, NULL);
        dl->shard_batches[s] = (ntok - 1) / T / B;
    }
    dl->inputs = (int *)malloc_check((size_t)B * T * sizeof(int));
    dl->targets = (int *)malloc_check((size_t)B * T * sizeof(int));
    dataloader_load_shard(dl, 0);
    dl->shard_batches[0] = (dl->ntok - 1) / T / B;
    dl->pos = 0;
    dl->order_epoch = dl->order_shard = -1;
}

// Switch to the shuffled order (before the first batch), with its own seed.
static void dataloader_shuffle(DataLoader *dl, uint64_t seed) {
    dl->shuffle = 1;
    dl->seed = seed;
    dl->batch = 0;
    dl->epoch_batches = 0;
    for (int s = 0; s < dl->nshards; s++) dl->epoch_batches += dl->shard_batches[s];
    dl->shard_order = (long *)malloc_check((size_t)dl->nshards * sizeof(long));
}

// A random permutation of 0..n-1 (Fisher-Yates) from a stream named by (seed, a, b).
static void dataloader_permute(long *out, long n, uint64_t seed, long a, long b) {
    Rng r;
    rng_seed(&r, seed ^ ((uint64_t)a * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)(b + 1) * 0xD1B54A32D192ED03ULL));
    for (long i = 0; i < n; i++) out[i] = i;
    for (long i = n - 1; i > 0; i--) {
        long j = (long)(rng_uniform(&r) * (double)(i + 1));
        long t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

// The shuffled order's batch number k: draw the orders it needs, load its shard, fill the rows.
static void dataloader_shuffled_batch(DataLoader *dl, long k) {
    long epoch = k / dl->epoch_batches, r = k % dl->epoch_batches;
    if (epoch != dl->order_epoch) {
        dataloader_permute(dl->shard_order, dl->nshards, dl->seed, epoch, -1);
        dl->order_epoch = epoch;
        dl->order_shard = -1;
    }
    int i = 0;
    while (r >= dl->shard_batches[dl->shard_order[i]]) r -= dl->shard_batches[dl->shard_order[i++]];
    int shard = (int)dl->shard_order[i];
    if (shard != dl->shard) dataloader_load_shard(dl, shard);
    long nwindows = (dl->ntok - 1) / dl->T;
    if (shard != dl->order_shard) {
        free(dl->window_order);
        dl->window_order = (long *)malloc_check((size_t)nwindows * sizeof(long));
        dataloader_permute(dl->window_order, nwindows, dl->seed, epoch, shard);
        dl->order_shard = shard;
    }
    for (int b = 0; b < dl->B; b++) {
        const uint16_t *tok = dl->tokens + dl->window_order[r * dl->B + b] * dl->T;
        for (int t = 0; t < dl->T; t++) {
            dl->inputs[b * dl->T + t] = tok[t];
            dl->targets[b * dl->T + t] = tok[t + 1];
        }
    }
}

// Continue the shuffled order after `batches` batches, e.g. on --resume.
static void dataloader_seek_batch(DataLoader *dl, long batches) {
    if (batches < 0) die("saved data position %ld is negative", batches);
    dl->batch = batches;
}

// Go back to the first batch of the first shard (validation does this each time).
static void dataloader_reset(DataLoader *dl) {
    if (dl->shard != 0) dataloader_load_shard(dl, 0);
    dl->pos = 0;
    dl->batch = 0;
}

// Continue from a saved position (shard index, token offset), e.g. on --resume.
// dir: the run whose state.bin gave the position, for the messages
static void dataloader_seek(DataLoader *dl, int shard, long pos, const char *dir) {
    if (shard < 0 || shard >= dl->nshards) {
        die("%s/state.bin: its data position names shard %d, but --train matches %d", dir, shard, dl->nshards);
    }
    if (shard != dl->shard) dataloader_load_shard(dl, shard);
    if (pos < 0 || pos > dl->ntok) {
        die("%s/state.bin: its data position %ld is outside shard %s (%ld tokens)", dir, pos,
            dl->glob.gl_pathv[shard], dl->ntok);
    }
    dl->pos = pos;
}

static void dataloader_next(DataLoader *dl) {
    if (dl->shuffle) {
        dataloader_shuffled_batch(dl, dl->batch++);
        return;
    }
    long n = (long)dl->B * dl->T;
    if (dl->pos + n + 1 > dl->ntok) {
        int next = (dl->shard + 1) % dl->nshards;
        if (next != dl->shard) dataloader_load_shard(dl, next);
        dl->pos = 0;
    }
    const uint16_t *tok = dl->tokens + dl->pos;
    for (long i = 0; i < n; i++) {
        dl->inputs[i] = tok[i];
        dl->targets[i] = tok[i + 1];
    }
    dl->pos += n;
}

// The position state.bin records: the batches taken in the shuffled order, the token
// offset in the current shard otherwise. dataloader_resume reads it back.
static long dataloader_position(const DataLoader *dl) { return dl->shuffle ? dl->batch : dl->pos; }

// On --resume: continue where state.bin (in dir) says the loader was. A run keeps its order,
// so --shuffle and, when shuffled, --seed must be what the run was started with.
static void dataloader_resume(DataLoader *dl, int saved_shuffle, int saved_seed, int shard, long pos, int seed,
                              const char *dir) {
    if (saved_shuffle != dl->shuffle) {
        usage_error("--shuffle %d: the run in %s was started with --shuffle %d; resume it with that", dl->shuffle, dir,
                    saved_shuffle);
    }
    if (dl->shuffle && saved_seed != seed) {
        usage_error("--seed %d: the shuffled run in %s was started with --seed %d; resume it with that", seed, dir,
                    saved_seed);
    }
    if (dl->shuffle) {
        dataloader_seek_batch(dl, pos);
    } else {
        dataloader_seek(dl, shard, pos, dir);
    }
}

static void dataloader_free(DataLoader *dl) {
    globfree(&dl->glob);
    free(dl->tokens);
    free(dl->inputs);
    free(dl->targets);
    free(dl->shard_batches);
    free(dl->shard_order);
    free(dl->window_order);
}

#endif // RESCALE_DATALOADER_H
