/*
 * common/sample.h: what the trainers' text samples and --generate share: one
 * sampler (greedy, temperature, nucleus / top-p) on a random stream of its own,
 * the generation loop over a model's "logits after these tokens" function, and
 * the printed and saved form of a sample (samples.txt in --out).
 *
 * The training run never sees this stream: a sample seeds its own generator from
 * --sample-seed and the step, so a run with samples is bitwise the run without
 * (test/test_samples.sh checks it), and a resumed run draws the same samples.
 */
#ifndef RESCALE_SAMPLE_H
#define RESCALE_SAMPLE_H

#include "tokenizer.h"
#include "utils.h"

typedef struct {
    double temperature; // 0 = greedy (the most likely token; ties go to the lowest id)
    double top_p;       // nucleus: draw from the most likely tokens whose probabilities reach top_p
    float *prob;        // (V) scratch
    int *order;         // (V) scratch
    int vocab;
} Sampler;

static void sampler_init(Sampler *s, int vocab, double temperature, double top_p) {
    s->temperature = temperature;
    s->top_p = top_p;
    s->vocab = vocab;
    s->prob = (float *)malloc_check(sizeof(float) * vocab);
    s->order = (int *)malloc_check(sizeof(int) * vocab);
}

static void sampler_free(Sampler *s) { free(s->prob), free(s->order); }

static const float *sample_prob_; // qsort has no context argument: the array the comparison reads
static int sample_by_prob_(const void *a, const void *b) {
    float pa = sample_prob_[*(const int *)a], pb = sample_prob_[*(const int *)b];
    if (pa != pb) return pa < pb ? 1 : -1;
    return *(const int *)a - *(const int *)b; // a fixed order for ties
}

// The next token from logits (V floats) under the sampler's settings.
static int sample_token(Sampler *s, const float *logits, Rng *rng) {
    int V = s->vocab, best = 0;
    for (int i = 1; i < V; i++) best = logits[i] > logits[best] ? i : best;
    if (s->temperature <= 0) return best;
    double sum = 0;
    for (int i = 0; i < V; i++) {
        s->prob[i] = (float)exp((logits[i] - logits[best]) / s->temperature);
        sum += s->prob[i];
    }
    for (int i = 0; i < V; i++) s->prob[i] = (float)(s->prob[i] / sum);
    // the nucleus: tokens with p below (1 - top_p)/(V - 1) can never be in it (llama2.c's cut),
    // so only the rest are sorted
    int n = 0;
    double cut = s->top_p < 1 ? (1 - s->top_p) / (V - 1) : -1;
    for (int i = 0; i < V; i++) {
        if (s->prob[i] >= cut) s->order[n++] = i;
    }
    sample_prob_ = s->prob;
    qsort(s->order, n, sizeof(int), sample_by_prob_);
    double mass = 0;
    int kept = n;
    for (int i = 0; i < n; i++) {
        mass += s->prob[s->order[i]];
        if (mass >= s->top_p) {
            kept = i + 1;
            break;
        }
    }
    double u = rng_uniform(rng) * mass, acc = 0;
    for (int i = 0; i < kept; i++) {
        acc += s->prob[s->order[i]];
        if (u < acc) return s->order[i];
    }
    return s->order[kept - 1];
}

/*
 * The model's side of generation: the logits (V floats) of the position after
 * tokens[0..n), for a sequence that grows by one token a call (the model may keep
 * a cache of what it has seen; n == 1 starts a new sequence).
 */
typedef const float *(*NextLogits)(void *model, const int *tokens, int n);

// Appends up to max_new tokens to tokens[0..n0) (n0 >= 1: at least the document-start
// token); returns the new length. The caller's array holds n0 + max_new ids.
static int generate(void *model, NextLogits next, Sampler *s, Rng *rng, int *tokens, int n0, int max_new) {
    int n = n0;
    for (int i = 0; i < max_new; i++) {
        tokens[n] = sample_token(s, next(model, tokens, n), rng);
        n++;
    }
    return n;
}

// The sampler's random stream for the sample at `step` (never the training one).
static void sample_rng(Rng *r, int seed, int step) {
    rng_seed(r, (uint64_t)seed * 0x9E3779B97F4A7C15ULL + (uint64_t)step);
}

// Prints a sample and appends it to <out>/samples.txt (out NULL: print only).
// tokens[0..n): the document-start token and what followed.
static void sample_print(const Tokenizer *tok, const int *tokens, int n, int n_prompt, int step, const char *out) {
    size_t cap = 16 * (size_t)n + 64;
    char *text = (char *)malloc_check(cap);
    size_t len = tokenizer_decode(tok, tokens, n, text, cap);
    if (len >= cap) len = cap - 1;
    text[len] = 0;
    printf("--- sample at step %d (%d tokens after %d of prompt):\n%s\n---\n", step, n - n_prompt, n_prompt, text);
    if (out) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/samples.txt", out);
        FILE *f = fopen_check(path, "a");
        fprintf(f, "step %d\n%s\n\n", step, text);
        fclose_check(f, path);
    }
    free(text);
}

#endif // RESCALE_SAMPLE_H
