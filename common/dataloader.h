/*
 * common/dataloader.h: reads llm.c's token shards (see SPEC.md, "Data").
 *
 * A shard is int32 header[256] (magic 20240520, version 1, token count, vocab
 * size or 0) followed by the tokens as uint16. Shards are taken in sorted file
 * name order from a glob. Batch k reads B*T+1 contiguous tokens from position p:
 * inputs x[b][t] = tok[p + b*T + t], targets are the same shifted by one; then
 * p += B*T. When the next batch does not fit in the current shard we move to the
 * start of the next shard, wrapping around after the last.
 *
 * Every shard is checked once, up front, before any training happens: magic,
 * version, size against the header, at least one batch of tokens, and every token
 * id below the model's vocabulary. A problem is one error line naming the file.
 */
#ifndef RESCALE_DATALOADER_H
#define RESCALE_DATALOADER_H

#include <glob.h>

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
} DataLoader;

// Read a shard's header and tokens; check everything SPEC.md promises.
// Returns the token count; fills *tokens (malloc'd) when tokens != NULL.
static long shard_read(const char *path, long min_tokens, int vocab, uint16_t **tokens) {
    long bytes = file_size(path);
    if (bytes < 0) die("cannot read data shard %s: %s", path, strerror(errno));
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
    for (int s = 1; s < dl->nshards; s++) { // shard 0 is checked when it is loaded below
        shard_read(dl->glob.gl_pathv[s], (long)B * T + 1, vocab, NULL);
    }
    dl->inputs = (int *)malloc_check((size_t)B * T * sizeof(int));
    dl->targets = (int *)malloc_check((size_t)B * T * sizeof(int));
    dataloader_load_shard(dl, 0);
    dl->pos = 0;
}

// Go back to the first batch of the first shard (validation does this each time).
static void dataloader_reset(DataLoader *dl) {
    if (dl->shard != 0) dataloader_load_shard(dl, 0);
    dl->pos = 0;
}

// Continue from a saved position (shard index, token offset), e.g. on --resume.
static void dataloader_seek(DataLoader *dl, int shard, long pos) {
    if (shard < 0 || shard >= dl->nshards) die("saved data position names shard %d, but only %d match", shard, dl->nshards);
    if (shard != dl->shard) dataloader_load_shard(dl, shard);
    if (pos < 0 || pos > dl->ntok) die("saved data position %ld is outside shard %s", pos, dl->glob.gl_pathv[shard]);
    dl->pos = pos;
}

static void dataloader_next(DataLoader *dl) {
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

static void dataloader_free(DataLoader *dl) {
    globfree(&dl->glob);
    free(dl->tokens);
    free(dl->inputs);
    free(dl->targets);
}

#endif // RESCALE_DATALOADER_H
