/*
 * train_gpt2.c: train GPT-2 on the CPU, with the initialisations and the weight
 * rescaling of docs/methods.md (LIR, TVR) and the variance instrumentation of E3.
 *
 * GPT-2 here: learned token and position embeddings, pre-LayerNorm blocks with
 * causal multi-head attention (Q, K, V packed in one c_attn matrix) and a GELU
 * (tanh form) MLP of width 4C, a final LayerNorm, and the token embedding reused
 * as the output layer (tied). Every linear layer has a bias.
 *
 * The file reads top to bottom:
 *
 *   1. the matmul: one register-tiled GEMM behind every linear layer
 *   2. the layers, each a *_forward / *_backward pair of plain loops
 *   3. the model: one parameter buffer described by one table
 *   4. initialisation: plain, LIR, residual, E3
 *   5. checkpoints in llm.c's GPT-2 format
 *   6. forward and backward through the whole model
 *   7. generation: one position at a time with a KV cache, samples, --generate
 *   8. training: schedule, clipping, AdamW, TVR
 *   9. the E3 statistics
 *   10. state.bin, the command line, main
 *
 * Build and run:
 *
 *   make train_gpt2
 *   ./train_gpt2 --train 'data/tinyshakespeare/gpt2_train_*.bin' --val 'data/tinyshakespeare/gpt2_val_*.bin'
 *
 * Compile with -DREAL_DOUBLE for a double-precision build (used by the gradient
 * check); checkpoints are fp32 either way. With -DTESTING, main() is left out so
 * that a test program can include this file.
 */
#include <omp.h>

#include "gpt2_run.h" // GPT2Config, the checkpoint header, the command line, E3 histograms
#include "sample.h"   // the sampler and samples.txt (with common/tokenizer.h)
#include "train.h"    // settings, schedules, state.bin, logs
#include "utils.h"

#ifdef REAL_DOUBLE
typedef double real;
#else
typedef float real;
#endif

// ----------------------------------------------------------------------------
// Matrix multiply: the one kernel behind every linear layer, forward and backward.
//
// out[n][o] (+)= bias[o] + sum_k a[n][k] * bt[k][o]     a: (N, K), bt: (K, O), out: (N, O)
//
// The classic register tile: 4 rows of out times 4 vectors of columns (GCC's vector
// extension, 64 bytes: 16 floats or 8 doubles) stay in registers while k runs; each
// step broadcasts 4 numbers of a and loads 4 vectors of one row of bt. Every output
// is a plain sum over k in order, so the result does not depend on the number of
// threads, and nothing needs -ffast-math. Threads take column blocks of one tile's
// width: the (K x 64) panel of bt stays in cache while all of a streams past it.

typedef real vreal __attribute__((vector_size(64)));
#define LANES ((int)(sizeof(vreal) / sizeof(real)))
#define TILE_N 4
#define TILE_V 4 // vectors of columns per tile
#define TILE_O (TILE_V * LANES)

// Loops smaller than this many multiply-adds run on one thread: waking threads
// costs more than it saves on tiny tensors (and far more on a busy machine).
#define PARALLEL_MIN 65536

// unaligned vector load and store (macros: passing 64-byte vectors to functions by
// value would depend on the target's ABI)
#define VLOAD(v, p) memcpy(&(v), (p), sizeof(vreal))
#define VSTORE(p, v) memcpy((p), &(v), sizeof(vreal))

// One full-width tile: rows n0..n0+3 (past N: repeat the last row, results dropped), columns o0..o0+TILE_O-1.
static void matmul_tile(real *out, const real *a, const real *bt, const real *bias, int N, int K, int O, int n0,
                        int o0, int accumulate) {
    const real *ar[TILE_N];
    for (int r = 0; r < TILE_N; r++) ar[r] = a + (size_t)(n0 + r < N ? n0 + r : N - 1) * K;
    vreal acc[TILE_N][TILE_V];
    memset(acc, 0, sizeof(acc));
    for (int k = 0; k < K; k++) {
        vreal bv[TILE_V];
        for (int j = 0; j < TILE_V; j++) VLOAD(bv[j], bt + (size_t)k * O + o0 + j * LANES);
        for (int r = 0; r < TILE_N; r++) {
            real x = ar[r][k];
            for (int j = 0; j < TILE_V; j++) acc[r][j] += x * bv[j];
        }
    }
    for (int r = 0; r < TILE_N && n0 + r < N; r++) {
        for (int j = 0; j < TILE_V; j++) {
            real *dst = out + (size_t)(n0 + r) * O + o0 + j * LANES;
            vreal v = acc[r][j], w;
            if (bias) VLOAD(w, bias + o0 + j * LANES), v += w;
            if (accumulate) VLOAD(w, dst), v += w;
            VSTORE(dst, v);
        }
    }
}

// The columns left over at the right edge (fewer than one tile), one at a time.
static void matmul_edge(real *out, const real *a, const real *bt, const real *bias, int N, int K, int O, int o,
                        int accumulate) {
    for (int n = 0; n < N; n++) {
        real s = 0;
        for (int k = 0; k < K; k++) s += a[(size_t)n * K + k] * bt[(size_t)k * O + o];
        if (bias) s += bias[o];
        real *dst = out + (size_t)n * O + o;
        *dst = accumulate ? *dst + s : s;
    }
}

static void matmul(real *out, const real *a, const real *bt, const real *bias, int N, int K, int O, int accumulate) {
    int full = O / TILE_O;
#pragma omp parallel for schedule(static) if ((size_t)N * K * O > PARALLEL_MIN)
    for (int blk = 0; blk <= full; blk++) {
        if (blk < full) {
            for (int n0 = 0; n0 < N; n0 += TILE_N) matmul_tile(out, a, bt, bias, N, K, O, n0, blk * TILE_O, accumulate);
        } else {
            for (int o = full * TILE_O; o < O; o++) matmul_edge(out, a, bt, bias, N, K, O, o, accumulate);
        }
    }
}

// dst (cols, rows) = src (rows, cols) transposed, in 32x32 blocks so that both
// sides are read and written a cache line at a time.
static void transpose(real *dst, const real *src, int rows, int cols) {
    int rb = (rows + 31) / 32, cb = (cols + 31) / 32;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)rows * cols > PARALLEL_MIN)
    for (int i = 0; i < rb; i++) {
        for (int j = 0; j < cb; j++) {
            int r1 = (i + 1) * 32 < rows ? (i + 1) * 32 : rows, c1 = (j + 1) * 32 < cols ? (j + 1) * 32 : cols;
            for (int c = j * 32; c < c1; c++) {
                for (int r = i * 32; r < r1; r++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
            }
        }
    }
}

// Scratch space for the transposes of the linear layers (scratch_reserve, below).
static real *g_scratch;
static size_t g_scratch_len;

// ----------------------------------------------------------------------------
// Layers: forward and backward pairs. Backward functions add (+=) into the
// gradients they produce, so a tensor used twice (the residual stream, the tied
// embedding) collects both contributions.

// A linear layer, nn.Linear's layout: out (N, OC) = inp (N, IC) · w (OC, IC)ᵀ + bias.
static void linear_forward(real *out, const real *inp, const real *w, const real *bias, int N, int IC, int OC) {
    real *wT = g_scratch;
    transpose(wT, w, OC, IC); // (IC, OC): the kernel reads rows of its right operand
    matmul(out, inp, wT, bias, N, IC, OC, 0);
}

// dinp += dout · w;  dw += doutᵀ · inp;  dbias += column sums of dout.
// w (OC, IC) and inp (N, IC) already have the layout the kernel wants; dout is transposed.
static void linear_backward(real *dinp, real *dw, real *dbias, const real *dout, const real *inp, const real *w, int N,
                            int IC, int OC) {
    matmul(dinp, dout, w, NULL, N, OC, IC, 1);
    real *doutT = g_scratch;
    transpose(doutT, dout, N, OC); // (OC, N)
    matmul(dw, doutT, inp, NULL, OC, N, IC, 1);
    if (dbias) {
#pragma omp parallel for schedule(static) if ((size_t)N * OC > PARALLEL_MIN)
        for (int o = 0; o < OC; o++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += doutT[(size_t)o * N + n];
            dbias[o] += (real)s;
        }
    }
}

// Token embedding plus position embedding: out[b,t] = wte[tok[b,t]] + wpe[t].
static void encoder_forward(real *out, const int *tok, const real *wte, const real *wpe, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            real *o = out + ((size_t)b * T + t) * C;
            const real *we = wte + (size_t)tok[b * T + t] * C, *pe = wpe + (size_t)t * C;
            for (int i = 0; i < C; i++) o[i] = we[i] + pe[i];
        }
    }
}

static void encoder_backward(real *dwte, real *dwpe, const real *dout, const int *tok, int B, int T, int C) {
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const real *d = dout + ((size_t)b * T + t) * C;
            real *dwe = dwte + (size_t)tok[b * T + t] * C, *dpe = dwpe + (size_t)t * C;
            for (int i = 0; i < C; i++) {
                dwe[i] += d[i];
                dpe[i] += d[i];
            }
        }
    }
}

// LayerNorm over the last dimension (biased variance, eps 1e-5 as GPT-2).
// mean and rstd = 1/sqrt(var + eps) are kept for the backward pass.
#define LN_EPS 1e-5
static void layernorm_forward(real *out, real *mean, real *rstd, const real *inp, const real *w, const real *bias,
                              int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C;
        double m = 0, v = 0;
        for (int i = 0; i < C; i++) m += x[i];
        m /= C;
        for (int i = 0; i < C; i++) v += (x[i] - m) * (x[i] - m);
        v /= C;
        double s = 1.0 / sqrt(v + LN_EPS);
        real *o = out + (size_t)n * C;
        for (int i = 0; i < C; i++) o[i] = (real)((x[i] - m) * s) * w[i] + bias[i];
        mean[n] = (real)m;
        rstd[n] = (real)s;
    }
}

// With x̂ = (x - mean)·rstd and g = dout ⊙ w:  dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
static void layernorm_backward(real *dinp, real *dw, real *dbias, const real *dout, const real *inp, const real *w,
                               const real *mean, const real *rstd, int N, int C) {
#pragma omp parallel for schedule(static) if ((size_t)N * C > PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        const real *x = inp + (size_t)n * C, *d = dout + (size_t)n * C;
        double gm = 0, gxm = 0;
        for (int i = 0; i < C; i++) {
            double xh = (x[i] - mean[n]) * rstd[n], g = d[i] * w[i];
            gm += g;
            gxm += g * xh;
        }
        gm /= C;
        gxm /= C;
        real *dx = dinp + (size_t)n * C;
        for (int i = 0; i < C; i++) {
            double xh = (x[i] - mean[n]) * rstd[n], g = d[i] * w[i];
            dx[i] += (real)(rstd[n] * (g - gm - xh * gxm));
        }
    }
    // the parameter gradients sum over rows: one thread per column keeps the order fixed
#pragma omp parallel for schedule(static) if ((size_t)N * C > PARALLEL_MIN)
    for (int i = 0; i < C; i++) {
        double sw = 0, sb = 0;
        for (int n = 0; n < N; n++) {
            real d = dout[(size_t)n * C + i];
            sw += d * ((inp[(size_t)n * C + i] - mean[n]) * rstd[n]);
            sb += d;
        }
        dw[i] += (real)sw;
        dbias[i] += (real)sb;
    }
}

// Causal self-attention on the packed qkv (B, T, 3C): for head h, q, k and v are
// the columns [h·hs, (h+1)·hs) of the first, second and third C columns.
// att (B, NH, T, T) keeps the softmax probabilities (zero above the diagonal).
// One query row q over keys k and values v at positions 0..t (their rows `stride`
// apart): a[0..t] the softmax of q.k*scale, o = sum a*v. attention_forward's rows
// and gpt2_decode's one position both go through it.
static void attention_row(real *o, real *a, const real *q, const real *k, const real *v, size_t stride, int t, int hs,
                          double scale) {
    double mx = -INFINITY;
    for (int t2 = 0; t2 <= t; t2++) {
        const real *kt = k + (size_t)t2 * stride;
        double s = 0;
        for (int i = 0; i < hs; i++) s += q[i] * kt[i];
        a[t2] = (real)(s * scale);
        if (a[t2] > mx) mx = a[t2];
    }
    double sum = 0;
    for (int t2 = 0; t2 <= t; t2++) {
        double e = exp(a[t2] - mx);
        a[t2] = (real)e;
        sum += e;
    }
    for (int t2 = 0; t2 <= t; t2++) a[t2] = (real)(a[t2] / sum);
    for (int i = 0; i < hs; i++) o[i] = 0;
    for (int t2 = 0; t2 <= t; t2++) {
        const real *vt = v + (size_t)t2 * stride;
        for (int i = 0; i < hs; i++) o[i] += a[t2] * vt[i];
    }
}

static void attention_forward(real *out, real *att, const real *qkv, int B, int T, int C, int NH) {
    int hs = C / NH, C3 = 3 * C;
    double scale = 1.0 / sqrt((double)hs);
#pragma omp parallel for collapse(3) schedule(static) if ((size_t)B * T * T * C > PARALLEL_MIN)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            for (int t = 0; t < T; t++) {
                const real *row0 = qkv + (size_t)b * T * C3 + h * hs; // position 0's q of head h
                real *a = att + (((size_t)b * NH + h) * T + t) * T;
                attention_row(out + ((size_t)b * T + t) * C + h * hs, a, row0 + (size_t)t * C3, row0 + C,
                              row0 + 2 * C, C3, t, hs, scale);
                for (int t2 = t + 1; t2 < T; t2++) a[t2] = 0;
            }
        }
    }
}

// One thread per (batch, head): dk and dv of a position collect from every later
// query, in a fixed order. Softmax backward: dpre = a ⊙ (da − Σ a ⊙ da).
static void attention_backward(real *dqkv, const real *dout, const real *att, const real *qkv, int B, int T, int C,
                               int NH) {
    int hs = C / NH, C3 = 3 * C;
    real scale = (real)(1.0 / sqrt((double)hs));
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)B * T * T * C > PARALLEL_MIN)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            real *da = (real *)malloc_check((size_t)T * sizeof(real));
            for (int t = 0; t < T; t++) {
                const real *a = att + (((size_t)b * NH + h) * T + t) * T;
                const real *d = dout + ((size_t)b * T + t) * C + h * hs;
                const real *q = qkv + ((size_t)b * T + t) * C3 + h * hs;
                real *dq = dqkv + ((size_t)b * T + t) * C3 + h * hs;
                double dot = 0;
                for (int t2 = 0; t2 <= t; t2++) {
                    const real *v = qkv + ((size_t)b * T + t2) * C3 + 2 * C + h * hs;
                    real *dv = dqkv + ((size_t)b * T + t2) * C3 + 2 * C + h * hs;
                    double s = 0;
                    for (int i = 0; i < hs; i++) {
                        s += d[i] * v[i];
                        dv[i] += a[t2] * d[i];
                    }
                    da[t2] = (real)s;
                    dot += a[t2] * s;
                }
                for (int t2 = 0; t2 <= t; t2++) {
                    real dpre = (real)(a[t2] * (da[t2] - dot)) * scale;
                    const real *k = qkv + ((size_t)b * T + t2) * C3 + C + h * hs;
                    real *dk = dqkv + ((size_t)b * T + t2) * C3 + C + h * hs;
                    for (int i = 0; i < hs; i++) {
                        dq[i] += dpre * k[i];
                        dk[i] += dpre * q[i];
                    }
                }
            }
            free(da);
        }
    }
}

// GELU, tanh form (GPT-2's): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
#define GELU_K 0.7978845608028654 // sqrt(2/pi)
static void gelu_forward(real *out, const real *inp, size_t n) {
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN / 16)
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = (real)(0.5 * x * (1.0 + tanh(GELU_K * (x + 0.044715 * x * x * x))));
    }
}

static void gelu_backward(real *dinp, const real *inp, const real *dout, size_t n) {
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN / 16)
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        double th = tanh(GELU_K * (x + 0.044715 * x * x * x));
        double dth = (1.0 - th * th) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] += (real)(dout[i] * (0.5 * (1.0 + th) + 0.5 * x * dth));
    }
}

static void residual_forward(real *out, const real *a, const real *b, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void residual_backward(real *da, real *db, const real *dout, size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}

// Softmax over the V real logits of each position and the cross-entropy with the
// target; the padded vocabulary rows never take part.
static void softmax_crossentropy_forward(real *probs, real *losses, const real *logits, const int *targets, int N,
                                         int V) {
#pragma omp parallel for schedule(static) if ((size_t)N * V > PARALLEL_MIN / 16)
    for (int n = 0; n < N; n++) {
        const real *z = logits + (size_t)n * V;
        real *p = probs + (size_t)n * V;
        double mx = -INFINITY, sum = 0;
        for (int i = 0; i < V; i++) mx = z[i] > mx ? z[i] : mx;
        for (int i = 0; i < V; i++) {
            double e = exp(z[i] - mx);
            p[i] = (real)e;
            sum += e;
        }
        for (int i = 0; i < V; i++) p[i] = (real)(p[i] / sum);
        losses[n] = (real)(log(sum) - (z[targets[n]] - mx));
    }
}

// dlogits = (probs − onehot(target)) / N for the mean loss; written in place of probs.
static void softmax_crossentropy_backward(real *probs_to_dlogits, const int *targets, int N, int V) {
    real dloss = (real)(1.0 / N);
#pragma omp parallel for schedule(static) if ((size_t)N * V > PARALLEL_MIN)
    for (int n = 0; n < N; n++) {
        real *p = probs_to_dlogits + (size_t)n * V;
        for (int i = 0; i < V; i++) p[i] = (p[i] - (i == targets[n] ? 1 : 0)) * dloss;
    }
}

// ----------------------------------------------------------------------------
// The model: its shape, and its parameters in one buffer described by one table.

// GPT2Config (the shape): common/gpt2_run.h.

// The parameter tensors in llm.c's checkpoint order (P_*, PARAM_INFO, param_size): common/gpt2_run.h.

// Activations kept for the backward pass, sizes derived from (B, T) and the config.
enum {
    A_ENCODED, A_LN1, A_LN1_MEAN, A_LN1_RSTD, A_QKV, A_ATTY, A_ATT, A_ATTPROJ, A_RESIDUAL2, A_LN2, A_LN2_MEAN,
    A_LN2_RSTD, A_FCH, A_FCH_GELU, A_FCPROJ, A_RESIDUAL3, A_LNF, A_LNF_MEAN, A_LNF_RSTD, A_LOGITS, A_PROBS, A_LOSSES,
    NUM_ACTS
};

static size_t act_size(const GPT2Config *c, int a, int B, int T) {
    size_t BT = (size_t)B * T, C = c->channels, L = c->layers;
    switch (a) {
    case A_ENCODED: case A_LNF: return BT * C;
    case A_LN1: case A_ATTY: case A_ATTPROJ: case A_RESIDUAL2: case A_LN2: case A_FCPROJ: case A_RESIDUAL3:
        return L * BT * C;
    case A_LN1_MEAN: case A_LN1_RSTD: case A_LN2_MEAN: case A_LN2_RSTD: return L * BT;
    case A_QKV: return L * BT * 3 * C;
    case A_ATT: return L * B * c->heads * (size_t)T * T;
    case A_FCH: case A_FCH_GELU: return L * BT * 4 * C;
    case A_LNF_MEAN: case A_LNF_RSTD: case A_LOSSES: return BT;
    case A_LOGITS: case A_PROBS: return BT * c->vocab;
    }
    return 0;
}

typedef struct {
    GPT2Config config;
    size_t num_params;
    real *params, *grads;       // one buffer each, tensors in PARAM_INFO order
    real *p[NUM_PARAMS];        // tensor starts in params
    real *g[NUM_PARAMS];        // and in grads
    int B, T;                   // the activation buffers' shape (set on the first forward)
    real *acts, *dacts;         // one buffer each
    real *a[NUM_ACTS], *da[NUM_ACTS];
    int *inputs, *targets;      // copy of the batch the activations belong to
    size_t num_dacts;           // length of dacts
    double mean_loss;           // of the last forward with targets
    real *m, *v;                // AdamW moments (allocated on the first update or a resume)
    struct GPT2Decoder *dec;    // generation's KV cache and buffers (gpt2_decode), NULL until used
} GPT2;

static void gpt2_alloc_params(GPT2 *model) {
    const GPT2Config *c = &model->config;
    model->num_params = 0;
    for (int p = 0; p < NUM_PARAMS; p++) model->num_params += param_size(c, p);
    model->params = (real *)calloc_check(model->num_params, sizeof(real));
    model->grads = (real *)calloc_check(model->num_params, sizeof(real));
    size_t off = 0;
    for (int p = 0; p < NUM_PARAMS; p++) {
        model->p[p] = model->params + off;
        model->g[p] = model->grads + off;
        off += param_size(c, p);
    }
}

// Layer l's slice (0-based) of a per-layer tensor.
static real *layer_param(GPT2 *model, int p, int l) {
    return model->p[p] + (size_t)l * param_slice_size(&model->config, p);
}
static real *layer_grad(GPT2 *model, int p, int l) {
    return model->g[p] + (size_t)l * param_slice_size(&model->config, p);
}

// ----------------------------------------------------------------------------
// Initialisation (docs/methods.md, "The init schemes": LIR and E3). Norm gains 1,
// biases and the padded vocabulary rows 0; matrices drawn in table order.
//   plain:    every matrix ~ N(0, σ²)
//   lir:      block l's matrices ~ N(0, (σ/√l)²), embeddings σ (paper A)
//   residual: GPT-2's usual: c_proj of attention and MLP ~ N(0, (σ/√(2L))²)
//   e3:       paper B's E3: N(0, σ²), token embedding xavier_normal: √(2/(V + C))

static double init_std(const GPT2Config *c, const char *scheme, double sigma, int p, int layer /* 1-based */) {
    if (strcmp(scheme, "lir") == 0 && PARAM_INFO[p].block_matrix >= 0) return sigma / sqrt((double)layer);
    if (strcmp(scheme, "residual") == 0 && (p == P_ATTPROJW || p == P_FCPROJW)) return sigma / sqrt(2.0 * c->layers);
    if (strcmp(scheme, "e3") == 0 && p == P_WTE) return sqrt(2.0 / (c->vocab + c->channels));
    return sigma;
}

static void gpt2_init(GPT2 *model, const char *scheme, double sigma, Rng *rng) {
    const GPT2Config *c = &model->config;
    memset(model->params, 0, model->num_params * sizeof(real));
    for (int p = 0; p < NUM_PARAMS; p++) {
        if (p == P_LN1W || p == P_LN2W || p == P_LNFW) {
            for (size_t i = 0; i < param_size(c, p); i++) model->p[p][i] = 1;
        } else if (PARAM_INFO[p].decay) { // the matrices
            int nl = PARAM_INFO[p].per_layer ? c->layers : 1;
            size_t n = p == P_WTE ? (size_t)c->vocab * c->channels : param_slice_size(c, p);
            for (int l = 0; l < nl; l++) {
                double sd = init_std(c, scheme, sigma, p, l + 1);
                real *w = PARAM_INFO[p].per_layer ? layer_param(model, p, l) : model->p[p];
                for (size_t i = 0; i < n; i++) w[i] = (real)(sd * rng_normal(rng));
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Checkpoints: llm.c's GPT-2 format (the header: common/gpt2_run.h), the fp32
// parameters in PARAM_INFO order. Written to a temporary name and renamed.


static void gpt2_load(GPT2 *model, const char *path) {
    memset(model, 0, sizeof(*model));
    long bytes;
    FILE *f = gpt2_read_header(path, &model->config, &bytes);
    long n = 0; // the file's size against its header before any allocation the header sizes
    for (int p = 0; p < NUM_PARAMS; p++) n += (long)param_size(&model->config, p);
    gpt2_check_size(path, bytes, n);
    gpt2_alloc_params(model);
    float *buf = (float *)malloc_check(model->num_params * sizeof(float));
    read_payload(f, buf, sizeof(float), model->num_params, path, "parameters");
    fclose(f);
    for (size_t i = 0; i < model->num_params; i++) model->params[i] = buf[i];
    free(buf);
}

// Write n reals as fp32.
static void write_fp32(FILE *f, const char *path, const real *x, size_t n) {
    float buf[4096];
    for (size_t i = 0; i < n; i += 4096) {
        size_t k = n - i < 4096 ? n - i : 4096;
        for (size_t j = 0; j < k; j++) buf[j] = (float)x[i + j];
        fwrite_check(buf, sizeof(float), k, f, path);
    }
}

static void gpt2_save(const GPT2 *model, const char *path) {
    AtomicFile af;
    atomic_open(&af, path);
    gpt2_header_write(af.f, af.tmp, &model->config);
    write_fp32(af.f, af.tmp, model->params, model->num_params);
    atomic_commit(&af);
}

// ----------------------------------------------------------------------------
// Forward and backward through the whole model.

// What training on B x T batches needs: parameters, gradients, AdamW's m and v, the
// activations and their gradients (the transpose scratch aside).
static double gpt2_memory(const GPT2Config *c, int B, int T) {
    double n = 0;
    for (int p = 0; p < NUM_PARAMS; p++) n += 4.0 * param_size(c, p);
    for (int a = 0; a < NUM_ACTS; a++) n += (a != A_LOGITS && a != A_PROBS ? 2.0 : 1.0) * act_size(c, a, B, T);
    return n * sizeof(real);
}

static void gpt2_alloc_acts(GPT2 *model, int B, int T) {
    const GPT2Config *c = &model->config;
    model->B = B, model->T = T;
    size_t total = 0, total_d = 0;
    for (int a = 0; a < NUM_ACTS; a++) {
        total += act_size(c, a, B, T);
        // the logits' gradient is written over the probabilities, so it needs no space of its own
        if (a != A_LOGITS && a != A_PROBS) total_d += act_size(c, a, B, T);
    }
    model->acts = (real *)calloc_check(total, sizeof(real));
    model->dacts = (real *)calloc_check(total_d, sizeof(real));
    model->num_dacts = total_d;
    size_t off = 0, off_d = 0;
    for (int a = 0; a < NUM_ACTS; a++) {
        model->a[a] = model->acts + off;
        off += act_size(c, a, B, T);
        if (a != A_LOGITS && a != A_PROBS) {
            model->da[a] = model->dacts + off_d;
            off_d += act_size(c, a, B, T);
        }
    }
    model->da[A_LOGITS] = model->a[A_PROBS];
    model->inputs = (int *)malloc_check((size_t)B * T * sizeof(int));
    model->targets = (int *)malloc_check((size_t)B * T * sizeof(int));
}

// Scratch for the transposes of the linear layers: the largest weight or output of
// this shape. Checked on every forward, and only grown: another model (generation's
// recompute check) may have freed or sized it since.
static void scratch_reserve(const GPT2Config *c, int B, int T) {
    size_t BT = (size_t)B * T, C = c->channels, widest = c->vocab > 4 * (int)C ? (size_t)c->vocab : 4 * C;
    size_t s = BT * widest > widest * C ? BT * widest : widest * C;
    if (s > g_scratch_len) {
        free(g_scratch);
        g_scratch = (real *)malloc_check(s * sizeof(real));
        g_scratch_len = s;
    }
}

// Layer l's slice of a per-layer activation.
static real *layer_act(real *base, const GPT2 *model, int a, int l) {
    return base + (size_t)l * (act_size(&model->config, a, model->B, model->T) / model->config.layers);
}

// Logits for all positions; the mean loss too when targets != NULL.
static void gpt2_forward(GPT2 *model, const int *inputs, const int *targets, int B, int T) {
    const GPT2Config *c = &model->config;
    if (model->acts == NULL) gpt2_alloc_acts(model, B, T);
    if (B != model->B || T != model->T) {
        die("gpt2_forward: batch shape (%d, %d) != allocated (%d, %d)", B, T, model->B, model->T);
    }
    scratch_reserve(c, B, T);
    int C = c->channels, NH = c->heads, V = c->vocab, BT = B * T;
    memcpy(model->inputs, inputs, (size_t)BT * sizeof(int));
    if (targets) memcpy(model->targets, targets, (size_t)BT * sizeof(int));
    real **a = model->a;
    encoder_forward(a[A_ENCODED], inputs, model->p[P_WTE], model->p[P_WPE], B, T, C);
    for (int l = 0; l < c->layers; l++) {
        const real *x = l == 0 ? a[A_ENCODED] : layer_act(a[A_RESIDUAL3], model, A_RESIDUAL3, l - 1);
#define ACT(name) layer_act(a[name], model, name, l)
#define PAR(name) layer_param(model, name, l)
        layernorm_forward(ACT(A_LN1), ACT(A_LN1_MEAN), ACT(A_LN1_RSTD), x, PAR(P_LN1W), PAR(P_LN1B), BT, C);
        linear_forward(ACT(A_QKV), ACT(A_LN1), PAR(P_QKVW), PAR(P_QKVB), BT, C, 3 * C);
        attention_forward(ACT(A_ATTY), ACT(A_ATT), ACT(A_QKV), B, T, C, NH);
        linear_forward(ACT(A_ATTPROJ), ACT(A_ATTY), PAR(P_ATTPROJW), PAR(P_ATTPROJB), BT, C, C);
        residual_forward(ACT(A_RESIDUAL2), x, ACT(A_ATTPROJ), (size_t)BT * C);
        layernorm_forward(ACT(A_LN2), ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), ACT(A_RESIDUAL2), PAR(P_LN2W), PAR(P_LN2B), BT,
                          C);
        linear_forward(ACT(A_FCH), ACT(A_LN2), PAR(P_FCW), PAR(P_FCB), BT, C, 4 * C);
        gelu_forward(ACT(A_FCH_GELU), ACT(A_FCH), (size_t)BT * 4 * C);
        linear_forward(ACT(A_FCPROJ), ACT(A_FCH_GELU), PAR(P_FCPROJW), PAR(P_FCPROJB), BT, 4 * C, C);
        residual_forward(ACT(A_RESIDUAL3), ACT(A_RESIDUAL2), ACT(A_FCPROJ), (size_t)BT * C);
#undef ACT
#undef PAR
    }
    const real *x = layer_act(a[A_RESIDUAL3], model, A_RESIDUAL3, c->layers - 1);
    layernorm_forward(a[A_LNF], a[A_LNF_MEAN], a[A_LNF_RSTD], x, model->p[P_LNFW], model->p[P_LNFB], BT, C);
    // tied output layer: the first V rows of wte, no bias
    linear_forward(a[A_LOGITS], a[A_LNF], model->p[P_WTE], NULL, BT, C, V);
    if (targets) {
        softmax_crossentropy_forward(a[A_PROBS], a[A_LOSSES], a[A_LOGITS], targets, BT, V);
        double s = 0;
        for (int i = 0; i < BT; i++) s += a[A_LOSSES][i];
        model->mean_loss = s / BT;
    }
}

// Gradients of the mean loss of the last forward (which must have had targets).
static void gpt2_backward(GPT2 *model) {
    const GPT2Config *c = &model->config;
    int B = model->B, T = model->T, C = c->channels, NH = c->heads, V = c->vocab, BT = B * T;
    real **a = model->a, **da = model->da;
    memset(model->grads, 0, model->num_params * sizeof(real));
    memset(model->dacts, 0, model->num_dacts * sizeof(real));
    softmax_crossentropy_backward(a[A_PROBS], model->targets, BT, V); // now da[A_LOGITS]
    linear_backward(da[A_LNF], model->g[P_WTE], NULL, da[A_LOGITS], a[A_LNF], model->p[P_WTE], BT, C, V);
    real *dx = layer_act(da[A_RESIDUAL3], model, A_RESIDUAL3, c->layers - 1);
    layernorm_backward(dx, model->g[P_LNFW], model->g[P_LNFB], da[A_LNF],
                       layer_act(a[A_RESIDUAL3], model, A_RESIDUAL3, c->layers - 1), model->p[P_LNFW], a[A_LNF_MEAN],
                       a[A_LNF_RSTD], BT, C);
    for (int l = c->layers - 1; l >= 0; l--) {
#define ACT(name) layer_act(a[name], model, name, l)
#define DACT(name) layer_act(da[name], model, name, l)
#define PAR(name) layer_param(model, name, l)
#define GRAD(name) layer_grad(model, name, l)
        const real *x = l == 0 ? a[A_ENCODED] : layer_act(a[A_RESIDUAL3], model, A_RESIDUAL3, l - 1);
        real *dxin = l == 0 ? da[A_ENCODED] : layer_act(da[A_RESIDUAL3], model, A_RESIDUAL3, l - 1);
        residual_backward(DACT(A_RESIDUAL2), DACT(A_FCPROJ), DACT(A_RESIDUAL3), (size_t)BT * C);
        linear_backward(DACT(A_FCH_GELU), GRAD(P_FCPROJW), GRAD(P_FCPROJB), DACT(A_FCPROJ), ACT(A_FCH_GELU),
                        PAR(P_FCPROJW), BT, 4 * C, C);
        gelu_backward(DACT(A_FCH), ACT(A_FCH), DACT(A_FCH_GELU), (size_t)BT * 4 * C);
        linear_backward(DACT(A_LN2), GRAD(P_FCW), GRAD(P_FCB), DACT(A_FCH), ACT(A_LN2), PAR(P_FCW), BT, C, 4 * C);
        layernorm_backward(DACT(A_RESIDUAL2), GRAD(P_LN2W), GRAD(P_LN2B), DACT(A_LN2), ACT(A_RESIDUAL2), PAR(P_LN2W),
                           ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), BT, C);
        residual_backward(dxin, DACT(A_ATTPROJ), DACT(A_RESIDUAL2), (size_t)BT * C);
        linear_backward(DACT(A_ATTY), GRAD(P_ATTPROJW), GRAD(P_ATTPROJB), DACT(A_ATTPROJ), ACT(A_ATTY), PAR(P_ATTPROJW),
                        BT, C, C);
        attention_backward(DACT(A_QKV), DACT(A_ATTY), ACT(A_ATT), ACT(A_QKV), B, T, C, NH);
        linear_backward(DACT(A_LN1), GRAD(P_QKVW), GRAD(P_QKVB), DACT(A_QKV), ACT(A_LN1), PAR(P_QKVW), BT, C, 3 * C);
        layernorm_backward(dxin, GRAD(P_LN1W), GRAD(P_LN1B), DACT(A_LN1), x, PAR(P_LN1W), ACT(A_LN1_MEAN),
                           ACT(A_LN1_RSTD), BT, C);
#undef ACT
#undef DACT
#undef PAR
#undef GRAD
    }
    encoder_backward(model->g[P_WTE], model->g[P_WPE], da[A_ENCODED], model->inputs, B, T, C);
}

// ----------------------------------------------------------------------------
// Generation: one position at a time with a KV cache (gpt2_decode) and the NextLogits
// of common/sample.h's generate(), which common/train.h's sample_run (samples during
// training) and generate_run (--generate) drive.

/*
 * The decoder's own memory (a sample during training never touches the training
 * activations): every layer's keys and values of the positions so far, buffers for
 * one position, and the block matrices and wte transposed, as linear_forward hands
 * them to matmul, once per sequence rather than once per token.
 */
typedef struct GPT2Decoder {
    real *kc, *vc; // (L, max T, C) keys and values of the positions so far
    real *wT;      // per layer qkvw, attprojw, fcw, fcprojw transposed (12·C·C), then wte's V rows (C, V)
    real *x, *ln, *qkv, *atty, *att, *proj, *res2, *fch, *fch_gelu, *logits, mean, rstd;
    float *flogits; // (V) the logits as the sampler reads them
    int len;        // positions in the cache
    int kv_cache;   // 0: gpt2_next_logits recomputes the prefix with gpt2_forward (a check)
    GPT2 *full;     // kv_cache 0: the same parameters with activations of its own (1 x max T)
    int *window;    // (max T) the prefix, padded, that `full` reads
} GPT2Decoder;

static void gpt2_decoder_free(GPT2 *model) {
    GPT2Decoder *d = model->dec;
    if (!d) return;
    real *bufs[] = {d->kc, d->vc, d->wT, d->x, d->ln, d->qkv, d->atty, d->att, d->proj, d->res2, d->fch,
                    d->fch_gelu, d->logits};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    if (d->full) { // shares the parameters: only its activations are its own
        free(d->full->acts), free(d->full->dacts), free(d->full->inputs), free(d->full->targets), free(d->full);
    }
    free(d->flogits), free(d->window), free(d);
    model->dec = NULL;
}

static void gpt2_free(GPT2 *model) {
    gpt2_decoder_free(model);
    free(model->params), free(model->grads), free(model->acts), free(model->dacts);
    free(model->inputs), free(model->targets), free(model->m), free(model->v);
    free(g_scratch);
    g_scratch = NULL, g_scratch_len = 0;
    memset(model, 0, sizeof(*model));
}

static GPT2Decoder *gpt2_decoder(GPT2 *model) {
    if (model->dec) return model->dec;
    const GPT2Config *c = &model->config;
    size_t T = c->max_seq_len, C = c->channels, L = c->layers, V = c->vocab;
    GPT2Decoder *d = (GPT2Decoder *)calloc_check(1, sizeof(GPT2Decoder));
    d->kc = (real *)calloc_check(L * T * C, sizeof(real));
    d->vc = (real *)calloc_check(L * T * C, sizeof(real));
    d->wT = (real *)calloc_check(L * 12 * C * C + C * V, sizeof(real));
    real **bufs[] = {&d->x, &d->ln, &d->atty, &d->proj, &d->res2};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) *bufs[i] = (real *)calloc_check(C, sizeof(real));
    d->qkv = (real *)calloc_check(3 * C, sizeof(real));
    d->att = (real *)calloc_check(T, sizeof(real));
    d->fch = (real *)calloc_check(4 * C, sizeof(real));
    d->fch_gelu = (real *)calloc_check(4 * C, sizeof(real));
    d->logits = (real *)calloc_check(V, sizeof(real));
    d->flogits = (float *)calloc_check(V, sizeof(float));
    d->kv_cache = 1;
    model->dec = d;
    return d;
}

// The transposed weights of the parameters as they are now (training changes them between samples).
static void decoder_take_weights(GPT2 *model, GPT2Decoder *d) {
    const GPT2Config *c = &model->config;
    int C = c->channels;
    size_t CC = (size_t)C * C;
    for (int l = 0; l < c->layers; l++) {
        real *w = d->wT + (size_t)l * 12 * CC;
        transpose(w, layer_param(model, P_QKVW, l), 3 * C, C);
        transpose(w + 3 * CC, layer_param(model, P_ATTPROJW, l), C, C);
        transpose(w + 4 * CC, layer_param(model, P_FCW, l), 4 * C, C);
        transpose(w + 8 * CC, layer_param(model, P_FCPROJW, l), C, 4 * C);
    }
    transpose(d->wT + (size_t)c->layers * 12 * CC, model->p[P_WTE], c->vocab, C);
}

// attention_forward for the one query at position t (q: the packed qkv row's first C),
// over the cached keys and values of positions 0..t (rows of C): the same loops in the same order.
static void attention_decode(real *out, real *a, const real *qkv, const real *kc, const real *vc, int t, int C,
                             int NH) {
    int hs = C / NH;
    double scale = 1.0 / sqrt((double)hs);
    for (int h = 0; h < NH; h++) {
        attention_row(out + h * hs, a, qkv + h * hs, kc + h * hs, vc + h * hs, C, t, hs, scale);
    }
}

/*
 * The V logits after `token` at position pos, the cache holding positions 0..pos-1
 * (pos 0 starts a sequence and takes the weights as they are): gpt2_forward for one
 * row, with its layer functions, so it computes what the batch forward computes at
 * that position (test/test_gpt2.c, units, measures how close).
 */
static const float *gpt2_decode(GPT2 *model, int token, int pos) {
    const GPT2Config *c = &model->config;
    GPT2Decoder *d = gpt2_decoder(model);
    int C = c->channels, NH = c->heads, V = c->vocab, T = c->max_seq_len;
    if (pos < 0 || pos > d->len || pos >= T) {
        die("internal: decode at position %d with %d cached, the model's maximum is %d", pos, d->len, T);
    }
    if (token < 0 || token >= V) die("internal: decode of token %d, outside the model's %d", token, V);
    if (pos == 0) decoder_take_weights(model, d);
    size_t CC = (size_t)C * C;
    encoder_forward(d->x, &token, model->p[P_WTE], model->p[P_WPE] + (size_t)pos * C, 1, 1, C);
    for (int l = 0; l < c->layers; l++) {
        real *kc = d->kc + (size_t)l * T * C, *vc = d->vc + (size_t)l * T * C, *w = d->wT + (size_t)l * 12 * CC;
#define PAR(name) layer_param(model, name, l)
        layernorm_forward(d->ln, &d->mean, &d->rstd, d->x, PAR(P_LN1W), PAR(P_LN1B), 1, C);
        matmul(d->qkv, d->ln, w, PAR(P_QKVB), 1, C, 3 * C, 0);
        memcpy(kc + (size_t)pos * C, d->qkv + C, C * sizeof(real));
        memcpy(vc + (size_t)pos * C, d->qkv + 2 * C, C * sizeof(real));
        attention_decode(d->atty, d->att, d->qkv, kc, vc, pos, C, NH);
        matmul(d->proj, d->atty, w + 3 * CC, PAR(P_ATTPROJB), 1, C, C, 0);
        residual_forward(d->res2, d->x, d->proj, C);
        layernorm_forward(d->ln, &d->mean, &d->rstd, d->res2, PAR(P_LN2W), PAR(P_LN2B), 1, C);
        matmul(d->fch, d->ln, w + 4 * CC, PAR(P_FCB), 1, C, 4 * C, 0);
        gelu_forward(d->fch_gelu, d->fch, 4 * (size_t)C);
        matmul(d->proj, d->fch_gelu, w + 8 * CC, PAR(P_FCPROJB), 1, 4 * C, C, 0);
        residual_forward(d->x, d->res2, d->proj, C);
#undef PAR
    }
    layernorm_forward(d->ln, &d->mean, &d->rstd, d->x, model->p[P_LNFW], model->p[P_LNFB], 1, C);
    matmul(d->logits, d->ln, d->wT + (size_t)c->layers * 12 * CC, NULL, 1, C, V, 0);
    for (int i = 0; i < V; i++) d->flogits[i] = (float)d->logits[i];
    d->len = pos + 1;
    return d->flogits;
}

// kv_cache 0: a model over the same parameters whose activations (1 x max T) are its own.
static GPT2 *decoder_full(GPT2 *model, GPT2Decoder *d) {
    if (d->full) return d->full;
    GPT2 *f = (GPT2 *)calloc_check(1, sizeof(GPT2));
    f->config = model->config;
    f->num_params = model->num_params;
    f->params = model->params;
    memcpy(f->p, model->p, sizeof(f->p));
    int T = model->config.max_seq_len;
    gpt2_alloc_acts(f, 1, T);
    d->window = (int *)calloc_check(T, sizeof(int));
    d->full = f;
    return f;
}

// NextLogits (common/sample.h) for generate(): with the cache, only the positions not
// yet in it are decoded; without (kv_cache 0), the whole prefix, padded to max T, goes
// through gpt2_forward (causal: the padding changes nothing before it), an independent
// path the tests compare with.
static const float *gpt2_next_logits(void *m, const int *tokens, int n) {
    GPT2 *model = (GPT2 *)m;
    GPT2Decoder *d = gpt2_decoder(model);
    if (n == 1 || n <= d->len) d->len = 0; // a new sequence
    if (d->kv_cache) {
        const float *logits = NULL;
        for (int pos = d->len; pos < n; pos++) logits = gpt2_decode(model, tokens[pos], pos);
        return logits;
    }
    GPT2 *f = decoder_full(model, d);
    int T = f->T, V = model->config.vocab;
    if (n > T) die("internal: recompute of %d positions, the model's maximum is %d", n, T);
    memset(d->window, 0, sizeof(int) * T);
    memcpy(d->window, tokens, sizeof(int) * n);
    gpt2_forward(f, d->window, NULL, 1, T);
    const real *z = f->a[A_LOGITS] + (size_t)(n - 1) * V;
    for (int i = 0; i < V; i++) d->flogits[i] = (float)z[i];
    return d->flogits;
}

// ----------------------------------------------------------------------------
// Training: clipping, AdamW, TVR (docs/methods.md, "The training loop", paper A);
// the schedules (OptConfig, lr_at, TvrConfig) are common/train.h's.

// Global gradient norm over all parameters (summed in a fixed order), then
// clipping: scale by max/(norm + 1e-6) when that is below 1. Returns the norm before.
// With several ranks a rank holds the step's gradient on its shard [lo, hi) only
// (common/dp.h): the one running sum is passed from rank to rank, so it is added in
// index order, the same number as on one rank.
static double clip_grad_norm(GPT2 *model, double max_norm) {
    long lo, hi;
    dp_shard((long)model->num_params, &lo, &hi);
    double s = dp_chain_begin();
    for (long i = lo; i < hi; i++) s += (double)model->grads[i] * model->grads[i];
    s = dp_chain_end(s);
    double norm = sqrt(s);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1) {
            for (long i = lo; i < hi; i++) model->grads[i] = (real)(model->grads[i] * coef);
        }
    }
    return norm;
}

// PyTorch's AdamW, in its order of operations: decay, moments, bias-corrected step.
// Weight decay only on the 2-D tensors (PARAM_INFO.decay). ZeRO-1 (common/dp.h): a
// rank updates its shard [lo, hi) of the parameters, where its m and v are (m[0] is
// parameter lo's); one rank's shard is everything.
static void adamw_update(GPT2 *model, const OptConfig *o, double lr, int step) {
    long lo, hi;
    dp_shard((long)model->num_params, &lo, &hi);
    if (model->m == NULL) {
        model->m = (real *)calloc_check(hi - lo, sizeof(real));
        model->v = (real *)calloc_check(hi - lo, sizeof(real));
    }
    double bc1 = 1.0 - pow(o->beta1, step), bc2_sqrt = sqrt(1.0 - pow(o->beta2, step));
    for (int p = 0; p < NUM_PARAMS; p++) {
        size_t off = (size_t)(model->p[p] - model->params), n = param_size(&model->config, p);
        size_t a = off > (size_t)lo ? off : (size_t)lo, b = off + n < (size_t)hi ? off + n : (size_t)hi;
        if (a >= b) continue;
        n = b - a;
        double decay = PARAM_INFO[p].decay ? 1.0 - lr * o->weight_decay : 1.0;
#pragma omp parallel for schedule(static) if (n > PARALLEL_MIN)
        for (size_t i = a; i < b; i++) {
            double g = model->grads[i];
            real *mi = &model->m[i - (size_t)lo], *vi = &model->v[i - (size_t)lo];
            double m = *mi = (real)(o->beta1 * *mi + (1.0 - o->beta1) * g);
            double v = *vi = (real)(o->beta2 * *vi + (1.0 - o->beta2) * g * g);
            double w = model->params[i] * decay;
            model->params[i] = (real)(w - (lr / bc1) * m / (sqrt(v) / bc2_sqrt + o->eps));
        }
    }
}

// Mean and unbiased (n-1) standard deviation of n numbers.
static void weight_stats(const real *x, size_t n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double mu = s / n;
    for (size_t i = 0; i < n; i++) ss += (x[i] - mu) * (x[i] - mu);
    *mean = mu;
    *std = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

// Target Variance Rescaling of one matrix (paper A): if std/target > threshold,
// W <- (W - mean)*target/std + mean. Returns 1 when it rescaled; mean and std
// (before) are returned for the log.
static int tvr_rescale(real *w, size_t n, double target, double threshold, double *mean, double *std) {
    weight_stats(w, n, mean, std);
    double mu = *mean, sd = *std;
    if (!(sd / target > threshold)) return 0;
    for (size_t i = 0; i < n; i++) w[i] = (real)((w[i] - mu) * target / sd + mu);
    return 1;
}

// ----------------------------------------------------------------------------
// E3 statistics (docs/methods.md, E3). The block matrices are logged as stored, and
// c_attn also as its three C×C parts q, k, v (rows [0,C), [C,2C), [2C,3C)).

#define NUM_STAT_MATRICES 7
static const char *STAT_MATRIX_NAME[NUM_STAT_MATRICES] = {"q", "k", "v", "qkv", "attn_proj", "fc", "fc_proj"};

// Start, size, and the TVR unit (index into BLOCK_MATRIX_*) of a statistics matrix.
static real *stat_matrix(GPT2 *model, int l, int s, size_t *n, int *unit) {
    size_t CC = (size_t)model->config.channels * model->config.channels;
    if (s < 3) {
        *n = CC, *unit = 0;
        return layer_param(model, P_QKVW, l) + (size_t)s * CC;
    }
    *unit = s - 3;
    *n = param_slice_size(&model->config, BLOCK_MATRIX_PARAM[*unit]);
    return layer_param(model, BLOCK_MATRIX_PARAM[*unit], l);
}

static int stat_matrix_index(const char *name) {
    for (int s = 0; s < NUM_STAT_MATRICES; s++) {
        if (strcmp(name, STAT_MATRIX_NAME[s]) == 0) return s;
    }
    return -1;
}

/*
 * For every block (docs/formats.md, weights.csv): the statistics of its seven
 * matrices, as they are before TVR, one row each, and, if due, TVR on the four
 * stored matrices; a rescaled module's bias is zeroed, as in the authors' code.
 * Returns the number of matrices rescaled.
 */
static int weights_pass(GPT2 *model, const TvrConfig *tvr, int step, int do_tvr, FILE *csv) {
    int total = 0;
    for (int l = 0; l < model->config.layers; l++) {
        int rescaled[NUM_BLOCK_MATRICES] = {0};
        double target = tvr_target_for_layer(tvr, l + 1), mu, sd;
        for (int k = 0; do_tvr && k < NUM_BLOCK_MATRICES; k++) { // decide first: the rows say what TVR does next
            int p = BLOCK_MATRIX_PARAM[k];
            weight_stats(layer_param(model, p, l), param_slice_size(&model->config, p), &mu, &sd);
            rescaled[k] = sd / target > tvr->threshold;
        }
        for (int s = 0; csv && s < NUM_STAT_MATRICES; s++) {
            size_t n = 0;
            int unit = 0;
            const real *w = stat_matrix(model, l, s, &n, &unit);
            weight_stats(w, n, &mu, &sd);
            fprintf(csv, "%d,%d,%s,%.9g,%.9g,%d\n", step, l + 1, STAT_MATRIX_NAME[s], mu, sd, rescaled[unit]);
        }
        for (int k = 0; k < NUM_BLOCK_MATRICES; k++) {
            if (!rescaled[k]) continue;
            int p = BLOCK_MATRIX_PARAM[k], pb = BLOCK_MATRIX_BIAS[k];
            tvr_rescale(layer_param(model, p, l), param_slice_size(&model->config, p), target, tvr->threshold, &mu,
                        &sd);
            memset(layer_param(model, pb, l), 0, param_slice_size(&model->config, pb) * sizeof(real));
            total++;
        }
    }
    if (csv) fflush(csv);
    return total;
}

// hist.csv and hist_summary.csv of one matrix (the rows: hist_rows in common/gpt2_run.h).
static void log_hist(FILE *fh, FILE *fs, GPT2 *model, int step, int layer, int s, double range) {
    size_t n = 0;
    int unit = 0;
    const real *w = stat_matrix(model, layer - 1, s, &n, &unit);
    double mu, sd;
    weight_stats(w, n, &mu, &sd);
    hist_rows(fh, fs, w, sizeof(real), n, mu, sd, step, layer, STAT_MATRIX_NAME[s], range);
}

// activations.csv: step, layer, max_abs, rms of each block's output on the last batch.
static void activations_log(GPT2 *model, int step, FILE *f) {
    size_t n = (size_t)model->B * model->T * model->config.channels;
    for (int l = 0; l < model->config.layers; l++) {
        const real *x = layer_act(model->a[A_RESIDUAL3], model, A_RESIDUAL3, l);
        double mx = 0, ss = 0;
        for (size_t i = 0; i < n; i++) {
            mx = fabs(x[i]) > mx ? fabs(x[i]) : mx;
            ss += (double)x[i] * x[i];
        }
        fprintf(f, "%d,%d,%.9g,%.9g\n", step, l + 1, mx, sqrt(ss / n));
    }
    fflush(f);
}

// Mean loss over the first n batches of a loader (which is reset first); with several
// ranks, rank r computes batches r, r + N, ... and the batch losses are added in order.
static double evaluate(GPT2 *model, DataLoader *dl, int n) {
    dataloader_reset(dl);
    double *loss = (double *)calloc_check(n, sizeof(double)), s = 0;
    for (int i = 0; i < n; i++) {
        dataloader_next(dl);
        if (i % dp.ranks != dp.rank) continue;
        gpt2_forward(model, dl->inputs, dl->targets, dl->B, dl->T);
        loss[i] = model->mean_loss;
    }
    dp_share_losses(loss, n);
    for (int i = 0; i < n; i++) s += loss[i];
    free(loss);
    return s / n;
}

// One step on the loader's next batch up to the update: forward, backward, clip, lr.
// The caller checks the numbers are finite, then runs AdamW and TVR.
typedef struct {
    double loss, grad_norm, lr;
} StepResult;

/*
 * The same with K = --grad-accum micro-steps (docs/parallel.md): the loader holds the
 * step's global batch; this rank's micro-step k is its rows (rank*K + k)*B onwards,
 * B = the loader's rows / (ranks*K). Each micro-step's gradient (the mean over its
 * B*T rows) is summed in order, then common/dp.h adds the ranks' sums in rank order
 * and divides by N*K, on this rank's shard. The loss is the mean of the N*K
 * micro-batch losses. acts: activations.csv for the first micro-step, or NULL.
 */
static void train_step_k(GPT2 *model, const OptConfig *opt, DataLoader *dl, int step, int K, FILE *acts,
                         StepResult *res) {
    dataloader_next(dl);
    int B = dl->B / (dp.ranks * K), T = dl->T;
    double loss[K];
    const void *sum = model->grads;
    for (int k = 0; k < K; k++) {
        long row = ((long)dp.rank * K + k) * B * T;
        gpt2_forward(model, dl->inputs + row, dl->targets + row, B, T);
        if (k == 0 && acts) activations_log(model, step, acts);
        gpt2_backward(model); // zeroes model->grads first
        loss[k] = model->mean_loss;
        if (K > 1) sum = dp_accumulate(model->grads, (long)model->num_params, sizeof(real), k);
    }
    dp_reduce_grads(sum, model->grads, (long)model->num_params, sizeof(real), 1.0 / (dp.ranks * K));
    res->loss = dp_mean_loss(loss, K);
    res->grad_norm = clip_grad_norm(model, opt->grad_clip);
    res->lr = lr_at(opt, step);
}

static void train_step(GPT2 *model, const OptConfig *opt, DataLoader *dl, int step, StepResult *res) {
    train_step_k(model, opt, dl, step, 1, NULL, res);
}

// ----------------------------------------------------------------------------
// state.bin (common/train.h): the step, the data loader's place, the RNG, then the
// parameters, Adam m and v as fp32 (exact in the fp32 build, so a resumed run is
// bitwise the same as a straight one). Its own magic: a train_llama state is refused.

#define STATE_MAGIC 20261124
#define STATE_VERSION 2

// With several ranks (ZeRO-1, common/dp.h) rank 0 gathers the shards of m and v and
// writes the file alone: it is the one a single rank writes.
static void state_save(const GPT2 *model, const TrainState *st, const char *path) {
    long np = (long)model->num_params;
    real *m = model->m, *v = model->v, *full_m = NULL, *full_v = NULL;
    if (dp.ranks > 1 && model->m) { // NULL before the first update, on every rank alike
        m = full_m = (real *)dp_gather_shards(model->m, np, sizeof(real));
        v = full_v = (real *)dp_gather_shards(model->v, np, sizeof(real));
    }
    if (dp.rank == 0) {
        AtomicFile af;
        atomic_open(&af, path);
        state_write_header(af.f, af.tmp, STATE_MAGIC, STATE_VERSION, st, np);
        write_floats(af.f, model->params, sizeof(real), np, af.tmp);
        write_floats(af.f, m, sizeof(real), np, af.tmp); // NULL before the first update: zeros
        write_floats(af.f, v, sizeof(real), np, af.tmp);
        atomic_commit(&af);
    }
    free(full_m);
    free(full_v);
}

// Every rank reads the parameters and its own shard of m and v (all of them, alone).
static void state_load(GPT2 *model, TrainState *st, const char *path) {
    long np = (long)model->num_params, lo, hi;
    dp_shard(np, &lo, &hi);
    FILE *f = state_open(path, STATE_MAGIC, STATE_VERSION, "train_gpt2", np, st);
    if (model->m == NULL) {
        model->m = (real *)calloc_check(hi - lo, sizeof(real));
        model->v = (real *)calloc_check(hi - lo, sizeof(real));
    }
    read_payload(f, model->params, sizeof(real), np, path, "parameters");
    for (int k = 0; k < 2; k++) { // m, then v: each np values, this rank's [lo, hi) of them
        long start = (long)STATE_HEADER_INTS * 4 + (1 + k) * np * 4 + lo * 4;
        if (fseek(f, start, SEEK_SET) != 0) die("cannot seek in %s: %s", path, strerror(errno));
        read_payload(f, k ? model->v : model->m, sizeof(real), hi - lo, path, k ? "AdamW's v" : "AdamW's m");
    }
    fclose(f);
}

#ifndef TESTING
// The command line (docs/formats.md, "The command line"): settings_parse in
// common/gpt2_run.h, with common/train.h's flags, GPT-2's shape and E3's histogram.
static const char *USAGE =
    "usage: train_gpt2 [flags]\n"
    "Train GPT-2 on the CPU (llm.c checkpoint and shard formats) with LIR/TVR and E3 statistics.";

#endif // TESTING

// A model from --resume, --init-from or fresh from the flags; returns the sequence
// length to train with (--seq-len, or the checkpoint's if shorter and the flag not given).
static int build_model(GPT2 *model, const Settings *s, int seq_len_given, const int shape_given[4], Rng *rng) {
    char path[4200];
    if (s->resume || s->init_from) {
        gpt2_load(model, s->resume ? run_file(path, sizeof(path), s->resume, "model.bin") : s->init_from);
        return checkpoint_seq_len(s, seq_len_given, shape_given, &model->config);
    }
    model->config = config_from_settings(s);
    memory_check(s, gpt2_memory(&model->config, s->batch, s->seq_len)); // before anything is allocated
    gpt2_alloc_params(model);
    gpt2_init(model, s->init, s->init_std, rng);
    return s->seq_len;
}

// every rank takes part (state_save gathers AdamW's shards); rank 0 writes
static void save_checkpoint(const GPT2 *model, const TrainState *st, const char *dir) {
    check_finite_params(model->params, sizeof(real), (long)model->num_params, dir);
    char path[4200];
    if (dp.rank == 0) gpt2_save(model, run_file(path, sizeof(path), dir, "model.bin"));
    state_save(model, st, run_file(path, sizeof(path), dir, "state.bin"));
}

// The weight statistics of one moment (step 0, a stats step, a TVR step before rescaling).
static void stats_pass(GPT2 *model, const Settings *s, const TvrConfig *tvr, Logs *lg, int step, int do_tvr) {
    if (lg->hist) {
        log_hist(lg->hist, lg->hist_summary, model, step, s->hist_layer, stat_matrix_index(s->hist_matrix),
                 s->hist_range);
    }
    weights_pass(model, tvr, step, do_tvr, lg->weights);
}

// tok: the vocabulary for text samples, NULL for none.
static void train(GPT2 *model, const Settings *s, DataLoader *train_dl, DataLoader *val_dl, TrainState *st,
                  const Tokenizer *tok) {
    OptConfig opt = opt_config(s);
    TvrConfig tvr = tvr_config(s);
    // rank 0 alone writes the logs and samples; every rank runs the same steps, TVR
    // and statistics on the same (all-gathered) parameters (docs/parallel.md)
    int lead = dp.rank == 0, K = s->grad_accum > 0 ? s->grad_accum : 1;
    Logs logs;
    memset(&logs, 0, sizeof(logs));
    if (lead) logs = logs_open(s->out, s->resume ? st->step : -1, s->hist_layer > 0);
    if (st->step == 0) {
        stats_pass(model, s, &tvr, &logs, 0, 0);
        if (val_dl && s->steps > 0) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, 0, v);
        }
    }
    while (st->step < s->steps) {
        int step = st->step + 1;
        double t0 = wall_seconds();
        StepResult r;
        train_step_k(model, &opt, train_dl, step, K, step == 1 || stats_due(s->stats_every, step) ? logs.acts : NULL,
                     &r);
        int skip = nonfinite_step(s, &logs, step, r.loss, r.grad_norm); // stops the run unless --skip-nonfinite 1
        if (!skip) {
            adamw_update(model, &opt, r.lr, step); // this rank's shard
            dp_allgather_params(model->params, (long)model->num_params, sizeof(real));
        }
        int do_tvr = !skip && tvr_due(&tvr, step);
        double t_tvr = wall_seconds();
        if (do_tvr || (!skip && stats_due(s->stats_every, step))) stats_pass(model, s, &tvr, &logs, step, do_tvr);
        double tvr_ms = do_tvr ? 1000 * (wall_seconds() - t_tvr) : -1;
        st->step = step;
        st->shard = train_dl->shard;
        st->pos = dataloader_position(train_dl);
        if (lead) {
            log_step(&logs, step, s->steps, r.loss, r.lr, r.grad_norm, 1000 * (wall_seconds() - t0),
                     (long)train_dl->B * train_dl->T, tvr_ms);
        }
        if (val_dl && val_due(s, step)) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, step, v);
        }
        if (lead && tok && sample_due(s, step)) {
            sample_run(model, gpt2_next_logits, model->config.max_seq_len, s, tok, step);
        }
        if (checkpoint_due(s, step)) save_checkpoint(model, st, s->out);
    }
    save_checkpoint(model, st, s->out);
    if (lead) logs_close(&logs);
}

#ifndef TESTING
int main(int argc, char **argv) {
    dp_init(&argc, &argv); // MPI's ranks, when built with it (common/dp.h)
    setvbuf(stdout, NULL, _IOLBF, 0); // progress lines appear as they happen, also in a log file
    Settings s;
    int shape_given[4];
    int seq_len_given = settings_parse(&s, argc, argv, USAGE, 0, shape_given);
    if (s.threads > 0) omp_set_num_threads(s.threads);
    Rng rng;
    rng_seed(&rng, (uint64_t)s.seed);
    GPT2 model;
    memset(&model, 0, sizeof(model));
    if (s.generate > 0) { // --init-from's model, no data, no training
        gpt2_load(&model, s.init_from);
        Tokenizer tok;
        load_tokenizer(&s, model.config.vocab, &tok); // a misfit is an error here
        gpt2_decoder(&model)->kv_cache = s.kv_cache;
        char how[128];
        snprintf(how, sizeof(how), "%s; %d threads",
                 s.kv_cache ? "with the KV cache" : "no cache: the prefix recomputed for every token",
                 omp_get_max_threads());
        generate_run(&model, gpt2_next_logits, model.config.max_seq_len, &s, &tok, how);
        tokenizer_free(&tok);
        gpt2_free(&model);
        return 0;
    }
    if (s.resume) seq_len_given = gpt2_resume_settings(&s, seq_len_given, STATE_MAGIC);
    int T = build_model(&model, &s, seq_len_given, shape_given, &rng);
    s.seq_len = T; // what the run uses (at most the checkpoint's), as state.bin records it
    if (s.resume || s.init_from) memory_check(&s, gpt2_memory(&model.config, s.batch, T));
    Tokenizer tok_store, *tok = load_tokenizer(&s, model.config.vocab, &tok_store);
    if (tok && s.sample_tokens + 1 > model.config.max_seq_len) {
        printf("note: samples of %d tokens after EOT, not %d: the model has %d positions\n",
               model.config.max_seq_len - 1, s.sample_tokens, model.config.max_seq_len);
    }
    gpt2_decoder(&model)->kv_cache = s.kv_cache;
    // data first: a bad shard is reported before any work is done
    DataLoader train_dl, val_dl;
    data_open(&s, &train_dl, &val_dl, T, model.config.vocab);
    if (dp.rank == 0) ensure_dir(s.out);
    int32_t shape[STATE_CONFIG_INTS];
    TrainState st = state_new(&s, shape, gpt2_config_ints(&model.config, shape));
    if (s.resume) {
        char path[4200];
        state_load(&model, &st, run_file(path, sizeof(path), s.resume, "state.bin"));
        state_resume(&s, &st, &rng, &train_dl);
        printf("resumed %s at step %d\n", s.resume, st.step);
    }
    st.rng = rng.s;
    // every rank starts from the same parameters, step and data position (a rank that read
    // another checkpoint or shard set stops the run here rather than train apart)
    if (dp.ranks > 1) {
        uint64_t h = dp_hash(DP_HASH0, model.params, sizeof(real) * model.num_params);
        long where[4] = {st.step, st.shard, st.pos, global_batch(&s) * T};
        dp_check_same("model, step or data position", dp_hash(h, where, sizeof(where)));
    }
    const GPT2Config *c = &model.config;
    printf("GPT-2: L %d, NH %d, C %d, V %d (padded %d), max T %d; %zu parameters; B %d, T %d; %d threads\n", c->layers,
           c->heads, c->channels, c->vocab, c->padded_vocab, c->max_seq_len, model.num_params, s.batch, T,
           omp_get_max_threads());
    if (dp.ranks > 1 || s.grad_accum > 1) {
        printf("data parallel: %d ranks x %d micro-steps x B %d = %ld rows a step%s\n", dp.ranks,
               s.grad_accum, s.batch, global_batch(&s), dp.ranks > 1 ? " | ZeRO-1: AdamW's m, v sharded" : "");
    }
    train(&model, &s, &train_dl, have_val(&s) ? &val_dl : NULL, &st, tok);
    data_close(&s, &train_dl, &val_dl);
    if (tok) tokenizer_free(tok);
    gpt2_free(&model);
    return 0;
}
#endif // TESTING
