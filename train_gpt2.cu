/*
 * train_gpt2.cu: train GPT-2 on one NVIDIA GPU, with the initialisations and the
 * weight rescaling of docs/methods.md (LIR, TVR) and the variance statistics of E3.
 *
 * The GPU twin of train_gpt2.c, which is the specification: the same flags (plus
 * --tf32), the same CSV logs (train.csv, val.csv, weights.csv with c_attn's q, k, v
 * parts, activations.csv, hist.csv, hist_summary.csv), the same llm.c-format
 * model.bin and the same state.bin (version 2: params, m, v), so that a run
 * checkpointed by one program resumes on the other. Where the CPU file has a
 * loop, this file has a kernel (or a cuBLAS call) of the same name. It reads:
 *
 *   1. CUDA helpers and the matmul (cuBLAS, fp32; TF32 with --tf32 1)
 *   2. the layers: each *_forward / *_backward pair as kernels
 *   3. the model: the parameter table, init, checkpoints, forward, backward
 *      (parameters live on the GPU; a host mirror for init and the files)
 *   4. training: schedule, gradient norm and clipping, AdamW, TVR
 *   5. the E3 statistics (weights.csv, hist.csv, activations.csv)
 *   6. state.bin, the command line, the training loop, main
 *
 * Precision: activations have their own type, floatX (float here); parameters,
 * gradients and AdamW's moments are fp32 master weights. The cheap elementwise
 * and per-row passes compute in double where train_gpt2.c does, with the same
 * expressions, so that the two programs differ only by summation order.
 *
 * Determinism: no kernel adds into memory with atomics. Every reduction sums
 * fixed chunks in a fixed order (partial sums finished in order), and the token
 * embedding's gradient is summed per token in position order (a counting sort on
 * the host), so reruns and resumed runs give the same bits on the same GPU.
 *
 * Build: make train_gpt2_cu   Run: ./train_gpt2_cu --help   (see docs/gpu.md)
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "args.h"
#include "csvlog.h"
#include "dataloader.h"
#include "utils.h"

// The activation type. Parameters, gradients and AdamW state are always float.
typedef float floatX;
#define CUBLAS_FLOATX CUDA_R_32F

// ============================================================================
// 1. CUDA helpers and the matmul
// ============================================================================

#include "cuda_common.h" // checked calls, reductions, gemm() over cuBLAS

// ============================================================================
// 2. the layers
// ============================================================================
// N = B*T rows. Parameter gradients are added into (+=), as in train_gpt2.c.

// out (N, OC) = inp (N, IC) . W^T, W (OC, IC) as nn.Linear stores it (no bias)
static void matmul_forward(floatX *out, const floatX *inp, const float *W, int N, int IC, int OC) {
    gemm(0, 1, N, OC, IC, inp, IC, 0, W, IC, 0, out, OC, 0, 1, 0);
}

// dW += dout^T . inp;  dinp = dout . W (+= when accumulate_dinp)
static void matmul_backward(floatX *dinp, float *dW, const floatX *dout, const floatX *inp, const float *W, int N,
                            int IC, int OC, int accumulate_dinp) {
    gemm(1, 0, OC, IC, N, dout, OC, 0, inp, IC, 0, dW, IC, 0, 1, 1);
    gemm(0, 0, N, IC, OC, dout, OC, 0, W, IC, 0, dinp, IC, 0, 1, accumulate_dinp);
}

__global__ void add_bias_kernel(floatX *out, const float *bias, long N, int OC) {
    GRID_STRIDE(i, N * OC) out[i] = (floatX)((float)out[i] + bias[i % OC]);
}

/*
 * Column sums over N rows, deterministically in two launches: each of
 * COL_CHUNKS blocks of rows sums its rows per column in double into
 * partial[chunk][c]; then the chunks are added in order. Used for the biases'
 * gradients (dbias += column sums of dout) and, in its own form, for the
 * LayerNorm parameters.
 */
#define COL_CHUNKS 32
__global__ void column_sum_partial_kernel(double *partial, const floatX *x, int N, int OC) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= OC) return;
    int lo = (int)((long)N * chunk / COL_CHUNKS), hi = (int)((long)N * (chunk + 1) / COL_CHUNKS);
    double s = 0;
    for (int n = lo; n < hi; n++) s += (float)x[(long)n * OC + c];
    partial[(long)chunk * OC + c] = s;
}
__global__ void column_sum_add_kernel(float *dst, const double *partial, int OC) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= OC) return;
    double s = 0;
    for (int ch = 0; ch < COL_CHUNKS; ch++) s += partial[(long)ch * OC + c];
    dst[c] += (float)s;
}

// A linear layer with bias: out = inp . W^T + bias
static void linear_forward(floatX *out, const floatX *inp, const float *W, const float *bias, int N, int IC, int OC) {
    matmul_forward(out, inp, W, N, IC, OC);
    if (bias) {
        add_bias_kernel<<<grid_for((long)N * OC), BLOCK>>>(out, bias, N, OC);
        launchCheck();
    }
}

// dinp = dout . W (overwritten);  dW += dout^T . inp;  dbias += column sums of dout.
// partial: COL_CHUNKS * OC doubles of scratch.
static void linear_backward(floatX *dinp, float *dW, float *dbias, double *partial, const floatX *dout,
                            const floatX *inp, const float *W, int N, int IC, int OC) {
    matmul_backward(dinp, dW, dout, inp, W, N, IC, OC, 0);
    if (dbias) {
        column_sum_partial_kernel<<<dim3(ceil_div(OC, BLOCK), COL_CHUNKS), BLOCK>>>(partial, dout, N, OC);
        launchCheck();
        column_sum_add_kernel<<<ceil_div(OC, BLOCK), BLOCK>>>(dbias, partial, OC);
        launchCheck();
    }
}

// ---------------------------------------------------------------------------
// Token plus position embedding: out[b,t] = wte[tok[b,t]] + wpe[t].

__global__ void encoder_forward_kernel(floatX *out, const int *tok, const float *wte, const float *wpe, int N, int T,
                                       int C) {
    GRID_STRIDE(i, (long)N * C) {
        long row = i / C;
        int c = (int)(i % C), t = (int)(row % T);
        out[i] = (floatX)(wte[(long)tok[row] * C + c] + wpe[(long)t * C + c]);
    }
}

static void encoder_forward(floatX *out, const int *tok, const float *wte, const float *wpe, int B, int T, int C) {
    encoder_forward_kernel<<<grid_for((long)B * T * C), BLOCK>>>(out, tok, wte, wpe, B * T, T, C);
    launchCheck();
}

/*
 * The embedding's gradient without atomics. Two positions with the same token add
 * into the same row of dwte: the host sorts the batch's positions by token (a
 * counting sort, encoder_buckets_host) and one block column owns each distinct
 * token, adding its positions in ascending order, which is train_gpt2.c's serial
 * order. dwpe[t] collects position t of every sequence, b = 0, 1, ... in order.
 */
__global__ void encoder_backward_wte_kernel(float *dwte, const floatX *dout, const int *bucket_token,
                                            const int *bucket_start, const int *bucket_pos, int C) {
    int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *row = dwte + (long)bucket_token[b] * C;
    float acc = row[c];
    for (int p = bucket_start[b]; p < bucket_start[b + 1]; p++) acc += (float)dout[(long)bucket_pos[p] * C + c];
    row[c] = acc;
}

__global__ void encoder_backward_wpe_kernel(float *dwpe, const floatX *dout, int B, int T, int C) {
    GRID_STRIDE(i, (long)T * C) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += (float)dout[(long)b * T * C + i];
        dwpe[i] = acc;
    }
}

static void encoder_backward(float *dwte, float *dwpe, const floatX *dout, const int *bucket_token,
                             const int *bucket_start, const int *bucket_pos, int nbuckets, int B, int T, int C) {
    encoder_backward_wte_kernel<<<dim3(nbuckets, ceil_div(C, BLOCK)), BLOCK>>>(dwte, dout, bucket_token,
                                                                               bucket_start, bucket_pos, C);
    launchCheck();
    encoder_backward_wpe_kernel<<<grid_for((long)T * C), BLOCK>>>(dwpe, dout, B, T, C);
    launchCheck();
}

// ---------------------------------------------------------------------------
// LayerNorm over the last dimension (biased variance, eps 1e-5 as GPT-2); one
// warp per row, the statistics in double and the output formula as train_gpt2.c.
#define LN_EPS 1e-5

__global__ void layernorm_forward_kernel(floatX *out, float *mean, float *rstd, const floatX *inp, const float *w,
                                         const float *bias, int N, int C) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return; // whole warps leave together
    const floatX *x = inp + (long)row * C;
    double m = 0, v = 0;
    for (int i = lane; i < C; i += 32) m += (float)x[i];
    m = warp_sum_d(m) / C;
    for (int i = lane; i < C; i += 32) v += ((float)x[i] - m) * ((float)x[i] - m);
    v = warp_sum_d(v) / C;
    double s = 1.0 / sqrt(v + LN_EPS);
    floatX *o = out + (long)row * C;
    for (int i = lane; i < C; i += 32) o[i] = (floatX)((float)(((float)x[i] - m) * s) * w[i] + bias[i]);
    if (lane == 0) {
        mean[row] = (float)m;
        rstd[row] = (float)s;
    }
}

static void layernorm_forward(floatX *out, float *mean, float *rstd, const floatX *inp, const float *w,
                              const float *bias, int N, int C) {
    layernorm_forward_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(out, mean, rstd, inp, w, bias, N, C);
    launchCheck();
}

// With x̂ = (x - mean)·rstd and g = dout ⊙ w: dx += rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
__global__ void layernorm_backward_dinp_kernel(floatX *dinp, const floatX *dout, const floatX *inp, const float *w,
                                               const float *mean, const float *rstd, int N, int C) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const floatX *x = inp + (long)row * C, *d = dout + (long)row * C;
    float mu = mean[row], r = rstd[row];
    double gm = 0, gxm = 0;
    for (int i = lane; i < C; i += 32) {
        float xh = ((float)x[i] - mu) * r, g = (float)d[i] * w[i];
        gm += g;
        gxm += (double)g * xh;
    }
    gm = warp_sum_d(gm) / C;
    gxm = warp_sum_d(gxm) / C;
    floatX *dx = dinp + (long)row * C;
    for (int i = lane; i < C; i += 32) {
        float xh = ((float)x[i] - mu) * r, g = (float)d[i] * w[i];
        dx[i] = (floatX)((float)dx[i] + (float)(r * (g - gm - xh * gxm)));
    }
}

// dw[i] += Σ dout·x̂, dbias[i] += Σ dout over rows: COL_CHUNKS partial sums, then in order.
// partial: 2 * COL_CHUNKS * C doubles.
__global__ void layernorm_backward_params_partial_kernel(double *partial, const floatX *dout, const floatX *inp,
                                                         const float *mean, const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int lo = (int)((long)N * chunk / COL_CHUNKS), hi = (int)((long)N * (chunk + 1) / COL_CHUNKS);
    double sw = 0, sb = 0;
    for (int n = lo; n < hi; n++) {
        float d = (float)dout[(long)n * C + c];
        sw += d * (((float)inp[(long)n * C + c] - mean[n]) * rstd[n]);
        sb += d;
    }
    partial[(long)chunk * C + c] = sw;
    partial[(long)(COL_CHUNKS + chunk) * C + c] = sb;
}

static void layernorm_backward(floatX *dinp, float *dw, float *dbias, double *partial, const floatX *dout,
                               const floatX *inp, const float *w, const float *mean, const float *rstd, int N, int C) {
    layernorm_backward_dinp_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(dinp, dout, inp, w, mean, rstd, N, C);
    launchCheck();
    layernorm_backward_params_partial_kernel<<<dim3(ceil_div(C, BLOCK), COL_CHUNKS), BLOCK>>>(partial, dout, inp,
                                                                                             mean, rstd, N, C);
    launchCheck();
    column_sum_add_kernel<<<ceil_div(C, BLOCK), BLOCK>>>(dw, partial, C);
    launchCheck();
    column_sum_add_kernel<<<ceil_div(C, BLOCK), BLOCK>>>(dbias, partial + (long)COL_CHUNKS * C, C);
    launchCheck();
}

// ---------------------------------------------------------------------------
// Causal self-attention on the packed qkv (B, T, 3C): for head h, q, k and v are
// the columns [h·hs, (h+1)·hs) of the first, second and third C columns. The
// batched matmuls want one head's (T, hs) block contiguous, so q, k and v are
// permuted to (B, NH, T, hs) first, and the output permuted back. att (B, NH, T, T)
// keeps the softmax probabilities (zero above the diagonal) for the backward.

__global__ void permute_qkv_kernel(floatX *q, floatX *k, floatX *v, const floatX *qkv, int B, int T, int NH, int hs) {
    int C = NH * hs;
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        const floatX *src = qkv + (b * T + t) * 3 * C + h * hs + d;
        q[i] = src[0];
        k[i] = src[C];
        v[i] = src[2 * C];
    }
}

// the backward's inverse: dq, dk, dv (B, NH, T, hs) into dqkv (B, T, 3C), overwritten
__global__ void unpermute_qkv_kernel(floatX *dqkv, const floatX *dq, const floatX *dk, const floatX *dv, int B, int T,
                                     int NH, int hs) {
    int C = NH * hs;
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        floatX *dst = dqkv + (b * T + t) * 3 * C + h * hs + d;
        dst[0] = dq[i];
        dst[C] = dk[i];
        dst[2 * C] = dv[i];
    }
}

// (B, NH, T, hs) -> (B, T, NH*hs) and back
__global__ void permute_from_heads_kernel(floatX *dst, const floatX *src, int B, int T, int NH, int hs) {
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        dst[((b * T + t) * NH + h) * hs + d] = src[i];
    }
}
__global__ void permute_to_heads_kernel(floatX *dst, const floatX *src, int B, int T, int NH, int hs) {
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        dst[i] = src[((b * T + t) * NH + h) * hs + d];
    }
}

/*
 * The attention's matmuls, one strided batched call over the B*NH heads each;
 * x, y are (B, NH, T, hs) and p is (B, NH, T, T), one block per head:
 *   attn_x_yT:  s = x . y^T   (scores q.k^T; datt = dy.v^T)
 *   attn_p_x:   o = p . x     (y = att.v; dq = dpre.k)
 *   attn_pT_x:  o = p^T . x   (dv = att^T.dy; dk = dpre^T.q)
 */
static void attn_x_yT(floatX *s, const floatX *x, const floatX *y, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm(0, 1, T, T, hs, x, hs, th, y, hs, th, s, T, tt, B * NH, 0);
}
static void attn_p_x(floatX *o, const floatX *p, const floatX *x, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm(0, 0, T, hs, T, p, T, tt, x, hs, th, o, hs, th, B * NH, 0);
}
static void attn_pT_x(floatX *o, const floatX *p, const floatX *x, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm(1, 0, T, hs, T, p, T, tt, x, hs, th, o, hs, th, B * NH, 0);
}

// In place over att (B*NH*T rows of T): row t becomes softmax(scale * row[0..t]),
// zeros after t. One warp per row; exponentials and their sum in double as train_gpt2.c.
__global__ void softmax_causal_forward_kernel(floatX *att, int rows, int T, double scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    floatX *a = att + (long)row * T;
    // the scaled score rounded to float, then exp in double (unrounded into the sum), as train_gpt2.c
    float mx = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32) mx = fmaxf(mx, (float)((float)a[t2] * scale));
    mx = warp_max(mx);
    double sum = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) sum += exp((double)(float)((float)a[t2] * scale) - mx);
    sum = warp_sum_d(sum);
    for (int t2 = lane; t2 < T; t2 += 32) {
        float e = (float)exp((double)(float)((float)a[t2] * scale) - mx);
        a[t2] = t2 <= t ? (floatX)(e / sum) : (floatX)0;
    }
}

// In place over datt: dpre = a * (datt - Σ a * datt) * scale on t2 <= t, zero after.
__global__ void softmax_causal_backward_kernel(floatX *datt, const floatX *att, int rows, int T, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    const floatX *a = att + (long)row * T;
    floatX *d = datt + (long)row * T;
    double dot = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) dot += (double)(float)a[t2] * (float)d[t2];
    dot = warp_sum_d(dot);
    for (int t2 = lane; t2 < T; t2 += 32) {
        float dpre = (float)((float)a[t2] * ((float)d[t2] - dot)) * scale;
        d[t2] = t2 <= t ? (floatX)dpre : (floatX)0;
    }
}

// the permuted copies and the backward's scratch, reused layer after layer
typedef struct {
    floatX *q, *k, *v, *y;     // (B, NH, T, hs)
    floatX *dq, *dk, *dv, *dy; // (B, NH, T, hs)
    floatX *datt;              // (B, NH, T, T)
} AttnScratch;

static void attention_forward(floatX *out, floatX *att, const floatX *qkv, AttnScratch *w, int B, int T, int C,
                              int NH) {
    int hs = C / NH;
    permute_qkv_kernel<<<grid_for((long)B * T * C), BLOCK>>>(w->q, w->k, w->v, qkv, B, T, NH, hs);
    launchCheck();
    attn_x_yT(att, w->q, w->k, B, T, NH, hs); // unscaled scores; the softmax scales
    int rows = B * NH * T;
    softmax_causal_forward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(att, rows, T, 1.0 / sqrt((double)hs));
    launchCheck();
    attn_p_x(w->y, att, w->v, B, T, NH, hs);
    permute_from_heads_kernel<<<grid_for((long)B * T * C), BLOCK>>>(out, w->y, B, T, NH, hs);
    launchCheck();
}

// dqkv (B, T, 3C) is overwritten.
static void attention_backward(floatX *dqkv, const floatX *dout, const floatX *att, const floatX *qkv, AttnScratch *w,
                               int B, int T, int C, int NH) {
    int hs = C / NH;
    permute_qkv_kernel<<<grid_for((long)B * T * C), BLOCK>>>(w->q, w->k, w->v, qkv, B, T, NH, hs);
    launchCheck();
    permute_to_heads_kernel<<<grid_for((long)B * T * C), BLOCK>>>(w->dy, dout, B, T, NH, hs);
    launchCheck();
    // through y = att . v
    attn_x_yT(w->datt, w->dy, w->v, B, T, NH, hs);
    attn_pT_x(w->dv, att, w->dy, B, T, NH, hs);
    // through the softmax, in place
    int rows = B * NH * T;
    softmax_causal_backward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(w->datt, att, rows, T,
                                                                                (float)(1.0 / sqrt((double)hs)));
    launchCheck();
    // through pre = q . k^T
    attn_p_x(w->dq, w->datt, w->k, B, T, NH, hs);
    attn_pT_x(w->dk, w->datt, w->q, B, T, NH, hs);
    unpermute_qkv_kernel<<<grid_for((long)B * T * C), BLOCK>>>(dqkv, w->dq, w->dk, w->dv, B, T, NH, hs);
    launchCheck();
}

// ---------------------------------------------------------------------------
// GELU, tanh form (GPT-2's): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in double as train_gpt2.c.
#define GELU_K 0.7978845608028654 // sqrt(2/pi)

__global__ void gelu_forward_kernel(floatX *out, const floatX *inp, long n) {
    GRID_STRIDE(i, n) {
        double x = (float)inp[i];
        out[i] = (floatX)(0.5 * x * (1.0 + tanh(GELU_K * (x + 0.044715 * x * x * x))));
    }
}
static void gelu_forward(floatX *out, const floatX *inp, long n) {
    gelu_forward_kernel<<<grid_for(n), BLOCK>>>(out, inp, n);
    launchCheck();
}

// dinp is overwritten (train_gpt2.c adds into a zeroed buffer: the same)
__global__ void gelu_backward_kernel(floatX *dinp, const floatX *inp, const floatX *dout, long n) {
    GRID_STRIDE(i, n) {
        double x = (float)inp[i];
        double th = tanh(GELU_K * (x + 0.044715 * x * x * x));
        double dth = (1.0 - th * th) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (floatX)((float)dout[i] * (0.5 * (1.0 + th) + 0.5 * x * dth));
    }
}
static void gelu_backward(floatX *dinp, const floatX *inp, const floatX *dout, long n) {
    gelu_backward_kernel<<<grid_for(n), BLOCK>>>(dinp, inp, dout, n);
    launchCheck();
}

__global__ void residual_forward_kernel(floatX *out, const floatX *a, const floatX *b, long n) {
    GRID_STRIDE(i, n) out[i] = (floatX)((float)a[i] + (float)b[i]);
}
static void residual_forward(floatX *out, const floatX *a, const floatX *b, long n) {
    residual_forward_kernel<<<grid_for(n), BLOCK>>>(out, a, b, n);
    launchCheck();
}
// (residual_backward has no kernel: the backward keeps one gradient of the residual
// stream, dres, which is at once the gradient of both inputs of the sum.)

// ---------------------------------------------------------------------------
// Softmax over the V real logits of each position and the cross-entropy with the
// target. The logits are (N, V): the tied lm_head multiplies by the first V rows of
// wte only, so the padded vocabulary rows never become logits. One block per row.

#define CLASSIFIER_BLOCK 512
__global__ void crossentropy_forward_kernel(float *losses, float *row_max, double *row_sum, const floatX *logits,
                                            const int *targets, int V) {
    const floatX *z = logits + (long)blockIdx.x * V;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, (float)z[j]);
    mx = block_max(mx);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp((double)(float)z[j] - mx); // unrounded, as train_gpt2.c
    s = block_sum_d(s);
    if (threadIdx.x == 0) {
        row_max[blockIdx.x] = mx;
        row_sum[blockIdx.x] = s;
        losses[blockIdx.x] = (float)(log(s) - ((double)(float)z[targets[blockIdx.x]] - mx));
    }
}

// dlogits = (probs − onehot(target)) / N for the mean loss, written over the logits.
__global__ void crossentropy_backward_kernel(floatX *logits, const float *row_max, const double *row_sum,
                                             const int *targets, int V, float dloss) {
    floatX *z = logits + (long)blockIdx.x * V;
    float mx = row_max[blockIdx.x];
    double s = row_sum[blockIdx.x];
    int target = targets[blockIdx.x];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = (float)((float)exp((double)(float)z[j] - mx) / s);
        z[j] = (floatX)((p - (j == target ? 1.0f : 0.0f)) * dloss);
    }
}

static void crossentropy_forward(float *losses, float *row_max, double *row_sum, const floatX *logits,
                                 const int *targets, int N, int V) {
    crossentropy_forward_kernel<<<N, CLASSIFIER_BLOCK>>>(losses, row_max, row_sum, logits, targets, V);
    launchCheck();
}
static void crossentropy_backward(floatX *logits, const float *row_max, const double *row_sum, const int *targets,
                                  int N, int V) {
    crossentropy_backward_kernel<<<N, CLASSIFIER_BLOCK>>>(logits, row_max, row_sum, targets, V, (float)(1.0 / N));
    launchCheck();
}

// ============================================================================
// 3. the model: its shape, and its parameters in one buffer described by one table
// ============================================================================

typedef struct {
    int max_seq_len;  // T of the checkpoint: rows of wpe
    int vocab;        // V, the real vocabulary (50257 for GPT-2)
    int padded_vocab; // Vp ≥ V, rows of wte (llm.c pads 50257 to 50304); padded rows stay 0
    int layers, heads, channels;
} GPT2Config;

// Parameter tensors in llm.c's checkpoint order; row-major, nn.Linear's (out, in).
enum {
    P_WTE, P_WPE, P_LN1W, P_LN1B, P_QKVW, P_QKVB, P_ATTPROJW, P_ATTPROJB,
    P_LN2W, P_LN2B, P_FCW, P_FCB, P_FCPROJW, P_FCPROJB, P_LNFW, P_LNFB, NUM_PARAMS
};

typedef struct {
    const char *name;
    int per_layer;
    int decay;        // AdamW weight decay: 2-D tensors (embeddings and projections)
    int block_matrix; // index into BLOCK_MATRIX_PARAM, -1 if not one
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

// Activations kept for the backward pass (on the GPU), as train_gpt2.c's table.
// A_LOGITS holds d loss / d logits after the backward (no separate probabilities).
enum {
    A_ENCODED, A_LN1, A_LN1_MEAN, A_LN1_RSTD, A_QKV, A_ATTY, A_ATT, A_ATTPROJ, A_RESIDUAL2, A_LN2, A_LN2_MEAN,
    A_LN2_RSTD, A_FCH, A_FCH_GELU, A_FCPROJ, A_RESIDUAL3, A_LNF, A_LNF_MEAN, A_LNF_RSTD, A_LOGITS, A_LOSSES,
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
    case A_LOGITS: return BT * c->vocab;
    }
    return 0;
}

// Gradient scratch for the backward pass, reused layer after layer.
typedef struct {
    floatX *dres;      // (B,T,C) gradient of the residual stream
    floatX *dln;       // (B,T,C) gradient of a LayerNorm's output
    floatX *datty;     // (B,T,C)
    floatX *dqkv;      // (B,T,3C)
    floatX *dfch;      // (B,T,4C)
    floatX *dfch_gelu; // (B,T,4C)
    double *partial;   // 2 * COL_CHUNKS * 4C: column sums' partials
    AttnScratch attn;
} Scratch;

// The statistics matrices (weights.csv, TVR): per layer q, k, v, qkv, attn_proj, fc, fc_proj.
#define NUM_STAT_MATRICES 7
static const char *STAT_MATRIX_NAME[NUM_STAT_MATRICES] = {"q", "k", "v", "qkv", "attn_proj", "fc", "fc_proj"};
#define MOMENT_CHUNKS 64 // blocks per matrix in the statistics
#define NORM_BLOCKS 512  // blocks in the global gradient norm
#define ACT_CHUNKS 64    // blocks per layer in the activation statistics
typedef struct {
    float **ptr;       // device array of the L*7 matrices' starts
    long *n;           // device array of their sizes
    int count;
    long max_n;
    double *mu;        // device (count): the means, for the second pass
    double *partial;   // device (count, MOMENT_CHUNKS)
    double *h_partial; // host copy
} StatTable;

typedef struct {
    GPT2Config config;
    size_t num_params;
    size_t off[NUM_PARAMS]; // tensor starts in every buffer below
    float *params, *grads, *m, *v;  // on the GPU, tensors in PARAM_INFO order
    float *h_params, *h_m, *h_v;    // host mirror: init, checkpoints
    int B, T;                       // the activation buffers' shape
    floatX *a[NUM_ACTS];            // activations on the GPU; the LayerNorm means and rstds and the
                                    // losses are read as float: a 2-byte floatX must give them their own buffers
    float *row_max;                 // (B,T) the classifier's row maxima
    double *row_sum;                // (B,T) and sums of exponentials
    Scratch s;
    StatTable st;
    int *inputs, *targets;          // host copy of the batch the activations belong to
    int *d_inputs, *d_targets;
    // encoder_backward's buckets: the positions of each distinct token, ascending
    int *h_count, *h_bucket_token, *h_bucket_start, *h_bucket_pos, nbuckets;
    int *bucket_token, *bucket_start, *bucket_pos;
    float *h_losses;
    double *norm_partial, *h_norm_partial; // grad_norm's per-block sums
    double *act_partial, *h_act_partial;   // log_activations' per-block max and sum of squares
    double mean_loss;                      // of the last forward with targets
} GPT2;

// Tensor p (layer l's slice for per-layer tensors) in a buffer laid out like params.
static float *tensor_at(const GPT2 *model, float *base, int p, int l) {
    return base + model->off[p] + (size_t)l * (PARAM_INFO[p].per_layer ? param_slice_size(&model->config, p) : 0);
}
static float *layer_param(const GPT2 *model, int p, int l) { return tensor_at(model, model->params, p, l); }
static float *layer_grad(const GPT2 *model, int p, int l) { return tensor_at(model, model->grads, p, l); }
static float *layer_param_host(const GPT2 *model, int p, int l) { return tensor_at(model, model->h_params, p, l); }

static void gpt2_check_config(const GPT2Config *c, const char *what) {
    if (c->max_seq_len < 1 || c->vocab < 1 || c->padded_vocab < c->vocab || c->layers < 1 || c->heads < 1 ||
        c->channels < 1 || c->channels % c->heads != 0) {
        die("%s: bad GPT-2 shape (T %d, V %d, Vp %d, L %d, NH %d, C %d)", what, c->max_seq_len, c->vocab,
            c->padded_vocab, c->layers, c->heads, c->channels);
    }
}

// The host side: sizes, offsets and the host mirror (no GPU needed: the host test uses it).
static void gpt2_alloc_host(GPT2 *model) {
    const GPT2Config *c = &model->config;
    model->num_params = 0;
    for (int p = 0; p < NUM_PARAMS; p++) {
        model->off[p] = model->num_params;
        model->num_params += param_size(c, p);
    }
    model->h_params = (float *)calloc_check(model->num_params, sizeof(float));
    model->h_m = (float *)calloc_check(model->num_params, sizeof(float));
    model->h_v = (float *)calloc_check(model->num_params, sizeof(float));
}

// Stat matrix s of layer l (0-based) in a buffer laid out like params: start, size, TVR unit.
// c_attn's parts q, k, v are its rows [0,C), [C,2C), [2C,3C).
static float *stat_matrix(const GPT2 *model, float *base, int l, int s, size_t *n, int *unit) {
    size_t CC = (size_t)model->config.channels * model->config.channels;
    if (s < 3) {
        *n = CC, *unit = 0;
        return tensor_at(model, base, P_QKVW, l) + (size_t)s * CC;
    }
    *unit = s - 3;
    *n = param_slice_size(&model->config, BLOCK_MATRIX_PARAM[*unit]);
    return tensor_at(model, base, BLOCK_MATRIX_PARAM[*unit], l);
}

static int stat_matrix_index(const char *name) {
    for (int s = 0; s < NUM_STAT_MATRICES; s++) {
        if (strcmp(name, STAT_MATRIX_NAME[s]) == 0) return s;
    }
    return -1;
}

// The GPU side: parameters, gradients, moments, the statistics table, reduction buffers.
static void gpt2_alloc_device(GPT2 *model) {
    size_t np = model->num_params;
    model->params = (float *)cuda_calloc(np, sizeof(float));
    model->grads = (float *)cuda_calloc(np, sizeof(float));
    model->m = (float *)cuda_calloc(np, sizeof(float));
    model->v = (float *)cuda_calloc(np, sizeof(float));
    StatTable *st = &model->st;
    int L = model->config.layers;
    st->count = L * NUM_STAT_MATRICES;
    float **h_ptr = (float **)malloc_check(sizeof(float *) * st->count);
    long *h_n = (long *)malloc_check(sizeof(long) * st->count);
    st->max_n = 0;
    for (int l = 0; l < L; l++) {
        for (int s = 0; s < NUM_STAT_MATRICES; s++) {
            size_t n;
            int unit;
            int j = l * NUM_STAT_MATRICES + s;
            h_ptr[j] = stat_matrix(model, model->params, l, s, &n, &unit);
            h_n[j] = (long)n;
            if (h_n[j] > st->max_n) st->max_n = h_n[j];
        }
    }
    st->ptr = (float **)cuda_calloc(st->count, sizeof(float *));
    st->n = (long *)cuda_calloc(st->count, sizeof(long));
    cudaCheck(cudaMemcpy(st->ptr, h_ptr, sizeof(float *) * st->count, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(st->n, h_n, sizeof(long) * st->count, cudaMemcpyHostToDevice));
    free(h_ptr), free(h_n);
    st->mu = (double *)cuda_calloc(st->count, sizeof(double));
    st->partial = (double *)cuda_calloc((long)st->count * MOMENT_CHUNKS, sizeof(double));
    st->h_partial = (double *)malloc_check(sizeof(double) * st->count * MOMENT_CHUNKS);
    // grad_norm's and log_activations' per-block partial sums
    model->norm_partial = (double *)cuda_calloc(NORM_BLOCKS, sizeof(double));
    model->h_norm_partial = (double *)malloc_check(sizeof(double) * NORM_BLOCKS);
    model->act_partial = (double *)cuda_calloc((long)L * ACT_CHUNKS * 2, sizeof(double));
    model->h_act_partial = (double *)malloc_check(sizeof(double) * L * ACT_CHUNKS * 2);
}

static void gpt2_params_to_device(GPT2 *model) {
    cudaCheck(cudaMemcpy(model->params, model->h_params, sizeof(float) * model->num_params, cudaMemcpyHostToDevice));
}
static void gpt2_params_to_host(GPT2 *model) {
    cudaCheck(cudaMemcpy(model->h_params, model->params, sizeof(float) * model->num_params, cudaMemcpyDeviceToHost));
}

// ---------------------------------------------------------------------------
// Initialisation, exactly train_gpt2.c's (docs/methods.md, "The init schemes": LIR and
// E3): drawn on the host with the same generator in the same order, then copied to
// the GPU, so a fresh run starts from the same bits on both programs.
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

// Into the host mirror (main copies it to the GPU with the rest of the model).
static void gpt2_init_host(GPT2 *model, const char *scheme, double sigma, Rng *rng) {
    const GPT2Config *c = &model->config;
    memset(model->h_params, 0, model->num_params * sizeof(float));
    for (int p = 0; p < NUM_PARAMS; p++) {
        float *base = model->h_params + model->off[p];
        if (p == P_LN1W || p == P_LN2W || p == P_LNFW) {
            for (size_t i = 0; i < param_size(c, p); i++) base[i] = 1;
        } else if (PARAM_INFO[p].decay) { // the matrices
            int nl = PARAM_INFO[p].per_layer ? c->layers : 1;
            size_t n = p == P_WTE ? (size_t)c->vocab * c->channels : param_slice_size(c, p);
            for (int l = 0; l < nl; l++) {
                double sd = init_std(c, scheme, sigma, p, l + 1);
                float *w = layer_param_host(model, p, l);
                for (size_t i = 0; i < n; i++) w[i] = (float)(sd * rng_normal(rng));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoints: llm.c's GPT-2 format. int32 header[256]: [0] 20240326, [1] 3
// (fp32, padded vocabulary), [2] max T, [3] V, [4] L, [5] NH, [6] C, [7] Vp; then
// the fp32 parameters in PARAM_INFO order. Written to a temporary name and renamed.

#define GPT2_MAGIC 20240326
#define GPT2_VERSION 3
#define HEADER_INTS 256

// Read a checkpoint's header and parameters into the host mirror (no GPU touched).
static void gpt2_load_host(GPT2 *model, const char *path) {
    memset(model, 0, sizeof(*model));
    long bytes = file_size(path);
    if (bytes < 0) die("cannot read checkpoint %s: %s", path, strerror(errno));
    if (bytes < HEADER_INTS * 4) die("checkpoint %s is truncated: %ld bytes, shorter than its header", path, bytes);
    FILE *f = fopen_check(path, "rb");
    int32_t h[HEADER_INTS];
    fread_check(h, sizeof(int32_t), HEADER_INTS, f, path);
    if (h[0] != GPT2_MAGIC) die("checkpoint %s has bad magic %d (want %d, an llm.c GPT-2 model)", path, h[0], GPT2_MAGIC);
    if (h[1] != GPT2_VERSION) {
        die("checkpoint %s has version %d; only version 3 (fp32, padded vocabulary) is read", path, h[1]);
    }
    GPT2Config *c = &model->config;
    c->max_seq_len = h[2], c->vocab = h[3], c->layers = h[4], c->heads = h[5], c->channels = h[6];
    c->padded_vocab = h[7];
    gpt2_check_config(c, path);
    gpt2_alloc_host(model);
    long want = HEADER_INTS * 4 + (long)model->num_params * 4;
    if (bytes != want) die("checkpoint %s has %ld bytes, its header says %ld: truncated or not fp32", path, bytes, want);
    fread_check(model->h_params, sizeof(float), model->num_params, f, path);
    fclose(f);
}

// Write the host mirror as a checkpoint.
static void gpt2_save_host(const GPT2 *model, const char *path) {
    const GPT2Config *c = &model->config;
    int32_t h[HEADER_INTS] = {0};
    h[0] = GPT2_MAGIC, h[1] = GPT2_VERSION, h[2] = c->max_seq_len, h[3] = c->vocab, h[4] = c->layers;
    h[5] = c->heads, h[6] = c->channels, h[7] = c->padded_vocab;
    AtomicFile af;
    atomic_open(&af, path);
    fwrite_check(h, sizeof(int32_t), HEADER_INTS, af.f, af.tmp);
    fwrite_check(model->h_params, sizeof(float), model->num_params, af.f, af.tmp);
    atomic_commit(&af);
}

static void gpt2_save(GPT2 *model, const char *path) {
    gpt2_params_to_host(model);
    gpt2_save_host(model, path);
}

// ---------------------------------------------------------------------------
// Forward and backward through the whole model.

static void gpt2_alloc_acts(GPT2 *model, int B, int T) {
    const GPT2Config *c = &model->config;
    if (T > c->max_seq_len) die("seq-len %d exceeds the model's maximum %d", T, c->max_seq_len);
    model->B = B, model->T = T;
    for (int a = 0; a < NUM_ACTS; a++) model->a[a] = (floatX *)cuda_calloc(act_size(c, a, B, T), sizeof(floatX));
    long BT = (long)B * T, C = c->channels, NH = c->heads;
    model->row_max = (float *)cuda_calloc(BT, sizeof(float));
    model->row_sum = (double *)cuda_calloc(BT, sizeof(double));
    Scratch *s = &model->s;
    floatX **slots[] = {&s->dres, &s->dln, &s->datty, &s->dqkv, &s->dfch, &s->dfch_gelu, &s->attn.q, &s->attn.k,
                        &s->attn.v, &s->attn.y, &s->attn.dq, &s->attn.dk, &s->attn.dv, &s->attn.dy, &s->attn.datt};
    long sizes[] = {BT * C, BT * C, BT * C, BT * 3 * C, BT * 4 * C, BT * 4 * C, BT * C, BT * C,
                    BT * C, BT * C, BT * C, BT * C, BT * C, BT * C, (long)B * NH * T * T};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) *slots[i] = (floatX *)cuda_calloc(sizes[i], sizeof(floatX));
    s->partial = (double *)cuda_calloc(2L * COL_CHUNKS * 4 * C, sizeof(double));
    int V = c->vocab;
    model->inputs = (int *)calloc_check(BT, sizeof(int));
    model->targets = (int *)calloc_check(BT, sizeof(int));
    model->d_inputs = (int *)cuda_calloc(BT, sizeof(int));
    model->d_targets = (int *)cuda_calloc(BT, sizeof(int));
    model->h_count = (int *)calloc_check(V + 1, sizeof(int));
    model->h_bucket_token = (int *)calloc_check(BT, sizeof(int));
    model->h_bucket_start = (int *)calloc_check(BT + 1, sizeof(int));
    model->h_bucket_pos = (int *)calloc_check(BT, sizeof(int));
    model->bucket_token = (int *)cuda_calloc(BT, sizeof(int));
    model->bucket_start = (int *)cuda_calloc(BT + 1, sizeof(int));
    model->bucket_pos = (int *)cuda_calloc(BT, sizeof(int));
    model->h_losses = (float *)calloc_check(BT, sizeof(float));
}

// Layer l's slice of a per-layer activation.
static floatX *layer_act(const GPT2 *model, int a, int l) {
    return model->a[a] + (size_t)l * (act_size(&model->config, a, model->B, model->T) / model->config.layers);
}

// The batch's positions grouped by token, for encoder_backward: a counting sort on
// the host (O(V + N)); within a token the positions stay ascending.
static void encoder_buckets_host(GPT2 *model, const int *tokens, int N) {
    int V = model->config.vocab;
    int *count = model->h_count;
    memset(count, 0, sizeof(int) * (V + 1));
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    int nb = 0;
    for (int v = 0; v < V; v++) {
        if (count[v + 1] > 0) {
            model->h_bucket_token[nb] = v;
            model->h_bucket_start[nb] = count[v]; // the prefix sum so far: where token v's positions start
            nb++;
        }
        count[v + 1] += count[v];
    }
    model->h_bucket_start[nb] = N;
    for (int i = 0; i < N; i++) model->h_bucket_pos[count[tokens[i]]++] = i;
    model->nbuckets = nb;
}

static void encoder_buckets(GPT2 *model, const int *tokens, int N) {
    encoder_buckets_host(model, tokens, N);
    int nb = model->nbuckets;
    cudaCheck(cudaMemcpy(model->bucket_token, model->h_bucket_token, sizeof(int) * nb, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->bucket_start, model->h_bucket_start, sizeof(int) * (nb + 1), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->bucket_pos, model->h_bucket_pos, sizeof(int) * N, cudaMemcpyHostToDevice));
}

// Logits for all positions and the mean loss (host arrays of B*T tokens and targets).
static void gpt2_forward(GPT2 *model, const int *inputs, const int *targets, int B, int T) {
    const GPT2Config *c = &model->config;
    if (B != model->B || T != model->T) die("gpt2_forward: batch shape (%d, %d) != allocated (%d, %d)", B, T, model->B, model->T);
    int C = c->channels, NH = c->heads, V = c->vocab, BT = B * T;
    memcpy(model->inputs, inputs, (size_t)BT * sizeof(int));
    memcpy(model->targets, targets, (size_t)BT * sizeof(int));
    cudaCheck(cudaMemcpy(model->d_inputs, inputs, sizeof(int) * BT, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->d_targets, targets, sizeof(int) * BT, cudaMemcpyHostToDevice));
    encoder_buckets(model, inputs, BT);
    floatX **a = model->a;
    encoder_forward(a[A_ENCODED], model->d_inputs, layer_param(model, P_WTE, 0), layer_param(model, P_WPE, 0), B, T, C);
    for (int l = 0; l < c->layers; l++) {
        const floatX *x = l == 0 ? a[A_ENCODED] : layer_act(model, A_RESIDUAL3, l - 1);
#define ACT(name) layer_act(model, name, l)
#define PAR(name) layer_param(model, name, l)
        layernorm_forward(ACT(A_LN1), ACT(A_LN1_MEAN), ACT(A_LN1_RSTD), x, PAR(P_LN1W), PAR(P_LN1B), BT, C);
        linear_forward(ACT(A_QKV), ACT(A_LN1), PAR(P_QKVW), PAR(P_QKVB), BT, C, 3 * C);
        attention_forward(ACT(A_ATTY), ACT(A_ATT), ACT(A_QKV), &model->s.attn, B, T, C, NH);
        linear_forward(ACT(A_ATTPROJ), ACT(A_ATTY), PAR(P_ATTPROJW), PAR(P_ATTPROJB), BT, C, C);
        residual_forward(ACT(A_RESIDUAL2), x, ACT(A_ATTPROJ), (long)BT * C);
        layernorm_forward(ACT(A_LN2), ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), ACT(A_RESIDUAL2), PAR(P_LN2W), PAR(P_LN2B), BT, C);
        linear_forward(ACT(A_FCH), ACT(A_LN2), PAR(P_FCW), PAR(P_FCB), BT, C, 4 * C);
        gelu_forward(ACT(A_FCH_GELU), ACT(A_FCH), (long)BT * 4 * C);
        linear_forward(ACT(A_FCPROJ), ACT(A_FCH_GELU), PAR(P_FCPROJW), PAR(P_FCPROJB), BT, 4 * C, C);
        residual_forward(ACT(A_RESIDUAL3), ACT(A_RESIDUAL2), ACT(A_FCPROJ), (long)BT * C);
#undef ACT
#undef PAR
    }
    const floatX *x = layer_act(model, A_RESIDUAL3, c->layers - 1);
    layernorm_forward(a[A_LNF], a[A_LNF_MEAN], a[A_LNF_RSTD], x, layer_param(model, P_LNFW, 0),
                      layer_param(model, P_LNFB, 0), BT, C);
    // tied output layer: the first V rows of wte, no bias
    linear_forward(a[A_LOGITS], a[A_LNF], layer_param(model, P_WTE, 0), NULL, BT, C, V);
    crossentropy_forward(a[A_LOSSES], model->row_max, model->row_sum, a[A_LOGITS], model->d_targets, BT, V);
    // the mean loss: summed on the host in double, in position order, as train_gpt2.c does
    cudaCheck(cudaMemcpy(model->h_losses, a[A_LOSSES], sizeof(float) * BT, cudaMemcpyDeviceToHost));
    double s = 0;
    for (int i = 0; i < BT; i++) s += model->h_losses[i];
    model->mean_loss = s / BT;
}

// Gradients of the mean loss of the last forward. Overwrites the logits with their gradient.
static void gpt2_backward(GPT2 *model) {
    const GPT2Config *c = &model->config;
    int B = model->B, T = model->T, C = c->channels, NH = c->heads, V = c->vocab, BT = B * T, L = c->layers;
    floatX **a = model->a;
    Scratch *s = &model->s;
    cudaCheck(cudaMemset(model->grads, 0, model->num_params * sizeof(float)));
    cudaCheck(cudaMemset(s->dres, 0, (size_t)BT * C * sizeof(floatX)));
    crossentropy_backward(a[A_LOGITS], model->row_max, model->row_sum, model->d_targets, BT, V); // now dlogits
    linear_backward(s->dln, layer_grad(model, P_WTE, 0), NULL, s->partial, a[A_LOGITS], a[A_LNF],
                    layer_param(model, P_WTE, 0), BT, C, V);
    layernorm_backward(s->dres, layer_grad(model, P_LNFW, 0), layer_grad(model, P_LNFB, 0), s->partial, s->dln,
                       layer_act(model, A_RESIDUAL3, L - 1), layer_param(model, P_LNFW, 0), a[A_LNF_MEAN],
                       a[A_LNF_RSTD], BT, C);
    for (int l = L - 1; l >= 0; l--) {
#define ACT(name) layer_act(model, name, l)
#define PAR(name) layer_param(model, name, l)
#define GRAD(name) layer_grad(model, name, l)
        const floatX *x = l == 0 ? a[A_ENCODED] : layer_act(model, A_RESIDUAL3, l - 1);
        // s->dres = d loss / d residual3; residual3 = residual2 + fcproj: the gradient of both
        linear_backward(s->dfch_gelu, GRAD(P_FCPROJW), GRAD(P_FCPROJB), s->partial, s->dres, ACT(A_FCH_GELU),
                        PAR(P_FCPROJW), BT, 4 * C, C);
        gelu_backward(s->dfch, ACT(A_FCH), s->dfch_gelu, (long)BT * 4 * C);
        linear_backward(s->dln, GRAD(P_FCW), GRAD(P_FCB), s->partial, s->dfch, ACT(A_LN2), PAR(P_FCW), BT, C, 4 * C);
        layernorm_backward(s->dres, GRAD(P_LN2W), GRAD(P_LN2B), s->partial, s->dln, ACT(A_RESIDUAL2), PAR(P_LN2W),
                           ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), BT, C);
        // now s->dres = d loss / d residual2; residual2 = x + attproj
        linear_backward(s->datty, GRAD(P_ATTPROJW), GRAD(P_ATTPROJB), s->partial, s->dres, ACT(A_ATTY),
                        PAR(P_ATTPROJW), BT, C, C);
        attention_backward(s->dqkv, s->datty, ACT(A_ATT), ACT(A_QKV), &s->attn, B, T, C, NH);
        linear_backward(s->dln, GRAD(P_QKVW), GRAD(P_QKVB), s->partial, s->dqkv, ACT(A_LN1), PAR(P_QKVW), BT, C, 3 * C);
        layernorm_backward(s->dres, GRAD(P_LN1W), GRAD(P_LN1B), s->partial, s->dln, x, PAR(P_LN1W), ACT(A_LN1_MEAN),
                           ACT(A_LN1_RSTD), BT, C);
        // now s->dres = d loss / d x, the previous block's output
#undef ACT
#undef PAR
#undef GRAD
    }
    encoder_backward(layer_grad(model, P_WTE, 0), layer_grad(model, P_WPE, 0), s->dres, model->bucket_token,
                     model->bucket_start, model->bucket_pos, model->nbuckets, B, T, C);
}

static void gpt2_free(GPT2 *model) {
    void *dev[] = {model->params, model->grads, model->m, model->v, model->row_max, model->row_sum, model->d_inputs,
                   model->d_targets, model->bucket_token, model->bucket_start, model->bucket_pos, model->norm_partial,
                   model->act_partial, model->st.ptr, model->st.n, model->st.mu, model->st.partial, model->s.partial,
                   model->s.dres, model->s.dln, model->s.datty, model->s.dqkv, model->s.dfch, model->s.dfch_gelu,
                   model->s.attn.q, model->s.attn.k, model->s.attn.v, model->s.attn.y, model->s.attn.dq,
                   model->s.attn.dk, model->s.attn.dv, model->s.attn.dy, model->s.attn.datt};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++) cudaCheck(cudaFree(dev[i]));
    for (int a = 0; a < NUM_ACTS; a++) cudaCheck(cudaFree(model->a[a]));
    void *host[] = {model->h_params, model->h_m, model->h_v, model->inputs, model->targets, model->h_count,
                    model->h_bucket_token, model->h_bucket_start, model->h_bucket_pos, model->h_losses,
                    model->h_norm_partial, model->h_act_partial, model->st.h_partial};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) free(host[i]);
    memset(model, 0, sizeof(*model));
}

// ============================================================================
// 4. training: schedule, clipping, AdamW, TVR (docs/methods.md, "The training loop", paper A)
// ============================================================================

typedef struct {
    int steps, warmup, constant_schedule;
    double lr, min_lr_frac, weight_decay, beta1, beta2, eps, grad_clip;
    double tvr_target, tvr_threshold;
    int tvr_every, tvr_depth_scaled;
} TrainConfig;

// Steps are 1..N: linear warm-up to lr at step W, then cosine down to lr·min_lr_frac at N.
static double lr_at(const TrainConfig *tc, int step) {
    if (step <= tc->warmup) return tc->lr * step / tc->warmup;
    if (tc->constant_schedule || tc->steps <= tc->warmup) return tc->lr;
    double progress = (double)(step - tc->warmup) / (tc->steps - tc->warmup);
    double lo = tc->lr * tc->min_lr_frac;
    return lo + 0.5 * (tc->lr - lo) * (1.0 + cos(M_PI * progress));
}

// Per-block sums of squares in double over a fixed grid; the host adds the
// NORM_BLOCKS partial sums in order, so the norm does not depend on timing.
__global__ void sum_squares_kernel(double *partial, const float *x, long n) {
    double s = 0;
    GRID_STRIDE(i, n) s += (double)x[i] * x[i];
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// Global gradient norm over all parameters.
static double grad_norm(GPT2 *model) {
    sum_squares_kernel<<<NORM_BLOCKS, BLOCK>>>(model->norm_partial, model->grads, (long)model->num_params);
    launchCheck();
    cudaCheck(cudaMemcpy(model->h_norm_partial, model->norm_partial, sizeof(double) * NORM_BLOCKS, cudaMemcpyDeviceToHost));
    double s = 0;
    for (int b = 0; b < NORM_BLOCKS; b++) s += model->h_norm_partial[b];
    return sqrt(s);
}

__global__ void scale_kernel(float *x, double coef, long n) {
    GRID_STRIDE(i, n) x[i] = (float)(x[i] * coef);
}

/*
 * PyTorch's AdamW in train_gpt2.c's order of operations and precision (double
 * arithmetic, the moments rounded to float before they are used):
 *   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   p ← p·decay − (lr/bc1)·m / (√v/√bc2 + eps),  decay = 1 − lr·wd on 2-D tensors
 */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, double decay, double b1, double b2,
                             double eps, double step_size, double bc2_sqrt) {
    GRID_STRIDE(i, n) {
        double gi = g[i];
        double mi = m[i] = (float)(b1 * m[i] + (1.0 - b1) * gi);
        double vi = v[i] = (float)(b2 * v[i] + (1.0 - b2) * gi * gi);
        double w = p[i] * decay;
        p[i] = (float)(w - step_size * mi / (sqrt(vi) / bc2_sqrt + eps));
    }
}

static void adamw_update(GPT2 *model, const TrainConfig *tc, int step, double lr) {
    double bc1 = 1.0 - pow(tc->beta1, step), bc2_sqrt = sqrt(1.0 - pow(tc->beta2, step));
    for (int p = 0; p < NUM_PARAMS; p++) {
        size_t off = model->off[p], n = param_size(&model->config, p);
        double decay = PARAM_INFO[p].decay ? 1.0 - lr * tc->weight_decay : 1.0;
        adamw_kernel<<<grid_for((long)n), BLOCK>>>(model->params + off, model->grads + off, model->m + off,
                                                   model->v + off, (long)n, decay, tc->beta1, tc->beta2, tc->eps,
                                                   lr / bc1, bc2_sqrt);
        launchCheck();
    }
}

/*
 * Mean and unbiased standard deviation of all L*7 statistics matrices at once,
 * two passes as train_gpt2.c's mean_std (first the mean, then the squared
 * deviations from it): MOMENT_CHUNKS blocks per matrix sum in double, the host
 * adds the chunks in order.
 */
__global__ void matrix_sum_kernel(double *partial, float *const *ptr, const long *ns, const double *mu) {
    int mat = blockIdx.y, chunk = blockIdx.x;
    const float *w = ptr[mat];
    long n = ns[mat], lo = n * chunk / gridDim.x, hi = n * (chunk + 1) / gridDim.x;
    double s = 0;
    if (mu == NULL) {
        for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) s += w[i];
    } else {
        double m = mu[mat];
        for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (w[i] - m) * (w[i] - m);
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[(long)mat * gridDim.x + chunk] = s;
}

static void matrix_sums(GPT2 *model, const double *mu, double *out) {
    StatTable *st = &model->st;
    matrix_sum_kernel<<<dim3(MOMENT_CHUNKS, st->count), BLOCK>>>(st->partial, st->ptr, st->n, mu);
    launchCheck();
    cudaCheck(cudaMemcpy(st->h_partial, st->partial, sizeof(double) * st->count * MOMENT_CHUNKS, cudaMemcpyDeviceToHost));
    for (int j = 0; j < st->count; j++) {
        double s = 0;
        for (int ch = 0; ch < MOMENT_CHUNKS; ch++) s += st->h_partial[(long)j * MOMENT_CHUNKS + ch];
        out[j] = s;
    }
}

// mean[j], std[j] of statistics matrix j = layer*7 + s
static void weight_stats(GPT2 *model, double *mean, double *std) {
    StatTable *st = &model->st;
    matrix_sums(model, NULL, mean);
    for (int j = 0; j < st->count; j++) {
        size_t n;
        int unit;
        stat_matrix(model, model->params, j / NUM_STAT_MATRICES, j % NUM_STAT_MATRICES, &n, &unit);
        mean[j] /= (double)n;
    }
    cudaCheck(cudaMemcpy(st->mu, mean, sizeof(double) * st->count, cudaMemcpyHostToDevice));
    matrix_sums(model, st->mu, std);
    for (int j = 0; j < st->count; j++) {
        size_t n;
        int unit;
        stat_matrix(model, model->params, j / NUM_STAT_MATRICES, j % NUM_STAT_MATRICES, &n, &unit);
        std[j] = n > 1 ? sqrt(std[j] / (double)(n - 1)) : 0;
    }
}

// Index of TVR unit k of layer l in the statistics table (qkv, attn_proj, fc, fc_proj are 3..6).
static int unit_stat_index(int l, int k) { return l * NUM_STAT_MATRICES + 3 + k; }

// TVR target for layer l (1-based): the target, or target/√l when depth-scaled.
static double tvr_layer_target(const TrainConfig *tc, int layer) {
    return tc->tvr_depth_scaled ? tc->tvr_target / sqrt((double)layer) : tc->tvr_target;
}

// W ← (W − μ)·target/std + μ, train_gpt2.c's expression in double.
__global__ void tvr_rescale_kernel(float *w, long n, double mu, double target, double sd) {
    GRID_STRIDE(i, n) w[i] = (float)((w[i] - mu) * target / sd + mu);
}

// Target Variance Rescaling of one matrix (paper A): if std/target > threshold,
// rescale. Returns 1 when it rescaled.
static int tvr_rescale(float *w, size_t n, double mu, double sd, double target, double threshold) {
    if (!(sd / target > threshold)) return 0;
    tvr_rescale_kernel<<<grid_for((long)n), BLOCK>>>(w, (long)n, mu, target, sd);
    launchCheck();
    return 1;
}

// Which matrices TVR will rescale at this step (for the log, before it does).
static void tvr_decide(GPT2 *model, const TrainConfig *tc, const double *std, int rescaled[][NUM_BLOCK_MATRICES]) {
    for (int l = 0; l < model->config.layers; l++) {
        for (int k = 0; k < NUM_BLOCK_MATRICES; k++) {
            rescaled[l][k] = std[unit_stat_index(l, k)] / tvr_layer_target(tc, l + 1) > tc->tvr_threshold;
        }
    }
}

// TVR on every block matrix as the model stores it (c_attn whole, 3C×C); a rescaled
// module's bias is zeroed, as in the authors' code. mean/std: weight_stats of this moment.
static void tvr_apply(GPT2 *model, const TrainConfig *tc, const double *mean, const double *std,
                      int rescaled[][NUM_BLOCK_MATRICES]) {
    for (int l = 0; l < model->config.layers; l++) {
        for (int k = 0; k < NUM_BLOCK_MATRICES; k++) {
            int p = BLOCK_MATRIX_PARAM[k], pb = BLOCK_MATRIX_BIAS[k], j = unit_stat_index(l, k);
            rescaled[l][k] = tvr_rescale(layer_param(model, p, l), param_slice_size(&model->config, p), mean[j],
                                         std[j], tvr_layer_target(tc, l + 1), tc->tvr_threshold);
            if (rescaled[l][k]) {
                cudaCheck(cudaMemset(layer_param(model, pb, l), 0, param_slice_size(&model->config, pb) * sizeof(float)));
            }
        }
    }
}

static int is_tvr_step(const TrainConfig *tc, int step) {
    return tc->tvr_target > 0 && tc->tvr_every > 0 && step % tc->tvr_every == 0;
}

// One optimizer step on the loader's next batch: forward, backward, clip, AdamW.
// (TVR, when due, follows in the caller, after the statistics are logged.)
typedef struct {
    double loss, grad_norm, lr;
} StepResult;

static void train_step(GPT2 *model, const TrainConfig *tc, DataLoader *dl, int step, StepResult *res) {
    dataloader_next(dl);
    gpt2_forward(model, dl->inputs, dl->targets, dl->B, dl->T);
    gpt2_backward(model);
    res->loss = model->mean_loss;
    res->grad_norm = grad_norm(model);
    if (tc->grad_clip > 0) {
        double coef = tc->grad_clip / (res->grad_norm + 1e-6);
        if (coef < 1) {
            scale_kernel<<<grid_for((long)model->num_params), BLOCK>>>(model->grads, coef, (long)model->num_params);
            launchCheck();
        }
    }
    res->lr = lr_at(tc, step);
    adamw_update(model, tc, step, res->lr);
}

// ============================================================================
// 5. E3 statistics (docs/methods.md, E3): c_attn also as its three C×C parts q, k, v
// ============================================================================

// weights.csv: step, layer, matrix, mean, std, rescaled
static void log_weights(FILE *f, GPT2 *model, int step, const double *mean, const double *std,
                        int rescaled[][NUM_BLOCK_MATRICES]) {
    for (int l = 0; l < model->config.layers; l++) {
        for (int s = 0; s < NUM_STAT_MATRICES; s++) {
            int unit = s < 3 ? 0 : s - 3, j = l * NUM_STAT_MATRICES + s;
            fprintf(f, "%d,%d,%s,%.9g,%.9g,%d\n", step, l + 1, STAT_MATRIX_NAME[s], mean[j], std[j],
                    rescaled ? rescaled[l][unit] : 0);
        }
    }
    fflush(f);
}

// Mean and unbiased standard deviation of n numbers (host; for the histogram's matrix).
static void mean_std(const float *x, size_t n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double mu = s / n;
    for (size_t i = 0; i < n; i++) ss += (x[i] - mu) * (x[i] - mu);
    *mean = mu;
    *std = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

// hist.csv and hist_summary.csv, exactly train_gpt2.c's (one matrix, copied to the
// host): HIST_BINS fixed bins over [−range, range], the end bins catching the rest;
// near_zero the share of |w − μ| < 0.1·std, large of |w − μ| > 3·std.
#define HIST_BINS 100
static void log_hist(FILE *fh, FILE *fs, GPT2 *model, int step, int layer, int s, double range) {
    size_t n = 0;
    int unit = 0;
    const float *dw = stat_matrix(model, model->params, layer - 1, s, &n, &unit);
    float *w = (float *)malloc_check(n * sizeof(float));
    cudaCheck(cudaMemcpy(w, dw, n * sizeof(float), cudaMemcpyDeviceToHost));
    long counts[HIST_BINS] = {0};
    double mu, sd, m4 = 0;
    mean_std(w, n, &mu, &sd);
    size_t near = 0, large = 0;
    for (size_t i = 0; i < n; i++) {
        int b = (int)floor((w[i] + range) / (2 * range) * HIST_BINS);
        counts[b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b]++;
        double d = fabs(w[i] - mu);
        near += d < 0.1 * sd;
        large += d > 3 * sd;
        m4 += d * d * d * d;
    }
    for (int b = 0; b < HIST_BINS; b++) {
        double lo = -range + 2 * range * b / HIST_BINS;
        fprintf(fh, "%d,%d,%s,%d,%.6g,%.6g,%ld\n", step, layer, STAT_MATRIX_NAME[s], b, lo, lo + 2 * range / HIST_BINS, counts[b]);
    }
    double var = sd * sd * (n - 1) / n;
    fprintf(fs, "%d,%d,%s,%.9g,%.9g,%.6f,%.6f,%.6f\n", step, layer, STAT_MATRIX_NAME[s], mu, sd, (double)near / n,
            (double)large / n, m4 / n / (var * var) - 3.0);
    fflush(fh), fflush(fs);
    free(w);
}

// Per layer, ACT_CHUNKS blocks each: the max |x| and the sum of x² (double) of a chunk.
__global__ void activation_stats_kernel(double *partial, const floatX *res3, long n) {
    int layer = blockIdx.y, chunk = blockIdx.x;
    const floatX *x = res3 + (long)layer * n;
    long lo = n * chunk / gridDim.x, hi = n * (chunk + 1) / gridDim.x;
    float mx = 0;
    double ss = 0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        float xi = (float)x[i];
        mx = fmaxf(mx, fabsf(xi));
        ss += (double)xi * xi;
    }
    mx = block_max(mx);
    ss = block_sum_d(ss);
    if (threadIdx.x == 0) {
        partial[((long)layer * gridDim.x + chunk) * 2] = mx;
        partial[((long)layer * gridDim.x + chunk) * 2 + 1] = ss;
    }
}

// activations.csv: step, layer, max_abs, rms of each block's output on the last batch.
static void log_activations(FILE *f, GPT2 *model, int step) {
    long n = (long)model->B * model->T * model->config.channels;
    int L = model->config.layers;
    activation_stats_kernel<<<dim3(ACT_CHUNKS, L), BLOCK>>>(model->act_partial, model->a[A_RESIDUAL3], n);
    launchCheck();
    cudaCheck(cudaMemcpy(model->h_act_partial, model->act_partial, sizeof(double) * L * ACT_CHUNKS * 2,
                         cudaMemcpyDeviceToHost));
    for (int l = 0; l < L; l++) {
        double mx = 0, ss = 0;
        for (int ch = 0; ch < ACT_CHUNKS; ch++) {
            const double *p = model->h_act_partial + ((long)l * ACT_CHUNKS + ch) * 2;
            mx = p[0] > mx ? p[0] : mx;
            ss += p[1];
        }
        fprintf(f, "%d,%d,%.6g,%.6g\n", step, l + 1, mx, sqrt(ss / n));
    }
    fflush(f);
}

// Mean loss over the first n batches of a loader (which is reset first).
static double evaluate(GPT2 *model, DataLoader *dl, int n) {
    dataloader_reset(dl);
    double s = 0;
    for (int i = 0; i < n; i++) {
        dataloader_next(dl);
        gpt2_forward(model, dl->inputs, dl->targets, dl->B, dl->T);
        s += model->mean_loss;
    }
    return s / n;
}

// ============================================================================
// 6. state.bin, the command line, the training loop, main
// ============================================================================

/*
 * state.bin, train_gpt2.c's format: int32 header[256]: [0] magic 20261124,
 * [1] version 2, [2] step, [3] shard, [4..5] token position (int64), [6..7] RNG
 * state, [8..9] number of parameters (int64), [10] 1 if the data order is shuffled
 * (then [4..5] counts the batches taken), [11] its seed; then the parameters, Adam m and v
 * as fp32. A resume reads the parameters from here (one file, one atomic rename).
 */
#define STATE_MAGIC 20261124
#define STATE_VERSION 2

static void state_save(GPT2 *model, const char *path, int step, const DataLoader *dl, const Rng *rng) {
    int32_t h[HEADER_INTS] = {0};
    int64_t pos = dataloader_position(dl), np = (int64_t)model->num_params;
    h[0] = STATE_MAGIC, h[1] = STATE_VERSION, h[2] = step, h[3] = dl->shard;
    h[10] = dl->shuffle, h[11] = (int32_t)dl->seed;
    memcpy(&h[4], &pos, 8), memcpy(&h[6], &rng->s, 8), memcpy(&h[8], &np, 8);
    gpt2_params_to_host(model);
    cudaCheck(cudaMemcpy(model->h_m, model->m, sizeof(float) * np, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(model->h_v, model->v, sizeof(float) * np, cudaMemcpyDeviceToHost));
    AtomicFile af;
    atomic_open(&af, path);
    fwrite_check(h, sizeof(int32_t), HEADER_INTS, af.f, af.tmp);
    fwrite_check(model->h_params, sizeof(float), np, af.f, af.tmp);
    fwrite_check(model->h_m, sizeof(float), np, af.f, af.tmp);
    fwrite_check(model->h_v, sizeof(float), np, af.f, af.tmp);
    atomic_commit(&af);
}

// Returns the step; restores the parameters, Adam's moments, the loader position and the RNG.
// seed and dir are the run's --seed and --resume, for the loader's check.
static int state_load(GPT2 *model, const char *path, DataLoader *dl, Rng *rng, int seed, const char *dir) {
    long bytes = file_size(path);
    if (bytes < 0) die("cannot read %s: %s", path, strerror(errno));
    if (bytes != HEADER_INTS * 4 + 12 * (long)model->num_params) {
        die("%s has %ld bytes, want %ld for this model: truncated or from another model", path, bytes,
            HEADER_INTS * 4 + 12 * (long)model->num_params);
    }
    FILE *f = fopen_check(path, "rb");
    int32_t h[HEADER_INTS];
    fread_check(h, sizeof(int32_t), HEADER_INTS, f, path);
    if (h[0] != STATE_MAGIC) die("%s has bad magic %d (want %d, a train_gpt2 state)", path, h[0], STATE_MAGIC);
    if (h[1] != STATE_VERSION) die("%s has version %d, want %d", path, h[1], STATE_VERSION);
    int64_t pos, np;
    memcpy(&pos, &h[4], 8), memcpy(&rng->s, &h[6], 8), memcpy(&np, &h[8], 8);
    if (np != (int64_t)model->num_params) die("%s is for %lld parameters, the model has %zu", path, (long long)np, model->num_params);
    if (h[2] < 0) die("%s has a negative step %d", path, h[2]);
    fread_check(model->h_params, sizeof(float), model->num_params, f, path);
    fread_check(model->h_m, sizeof(float), model->num_params, f, path);
    fread_check(model->h_v, sizeof(float), model->num_params, f, path);
    fclose(f);
    gpt2_params_to_device(model);
    cudaCheck(cudaMemcpy(model->m, model->h_m, sizeof(float) * np, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->v, model->h_v, sizeof(float) * np, cudaMemcpyHostToDevice));
    dataloader_resume(dl, h[10], h[11], h[3], pos, seed, dir);
    return h[2];
}

// ---------------------------------------------------------------------------
// The command line: train_gpt2.c's flag table, plus --tf32.

typedef struct {
    const char *train, *val, *init_from, *resume, *out, *schedule, *init, *hist_matrix;
    int layers, dim, heads, kv_heads, ffn, seq_len, vocab, batch, steps, warmup, seed, shuffle;
    int tvr_every, tvr_depth_scaled, val_every, val_batches, stats_every, checkpoint_every, threads, hist_layer, tf32;
    double lr, min_lr_frac, weight_decay, beta1, beta2, eps, grad_clip, init_std, tvr_target, tvr_threshold, hist_range;
} Options;

static const char *USAGE =
    "usage: train_gpt2_cu --train GLOB [flags]\n"
    "Train GPT-2 on one NVIDIA GPU (llm.c checkpoint and shard formats) with LIR/TVR and E3 statistics.";

#define NUM_FLAGS 40
static void options_table(Options *o, Flag fl[NUM_FLAGS]) {
    Flag t[] = {
        {"train", FLAG_STRING, &o->train, NULL, 0, 0, NULL, "training shards (glob, llm.c format)", 0},
        {"val", FLAG_STRING, &o->val, NULL, 0, 0, NULL, "validation shards (glob); none: no validation", 0},
        {"init-from", FLAG_STRING, &o->init_from, NULL, 0, 0, NULL, "start from this model.bin (llm.c GPT-2 format)", 0},
        {"resume", FLAG_STRING, &o->resume, NULL, 0, 0, NULL, "continue the run saved in this directory", 0},
        {"out", FLAG_STRING, &o->out, "out", 0, 0, NULL, "output directory (logs, model.bin, state.bin)", 0},
        {"layers", FLAG_INT, &o->layers, "4", 1, 1000, NULL, "blocks L (fresh model)", 0},
        {"dim", FLAG_INT, &o->dim, "128", 1, 65536, NULL, "width C (fresh model)", 0},
        {"heads", FLAG_INT, &o->heads, "4", 1, 1024, NULL, "attention heads NH (fresh model)", 0},
        {"kv-heads", FLAG_INT, &o->kv_heads, "0", 0, 1024, NULL, "GPT-2 has none: 0 or equal to --heads", 0},
        {"ffn", FLAG_INT, &o->ffn, "0", 0, 1 << 20, NULL, "GPT-2's MLP is 4C: 0 or 4*dim", 0},
        {"seq-len", FLAG_INT, &o->seq_len, "64", 1, 1 << 16, NULL, "sequence length T (at most the checkpoint's)", 0},
        {"vocab", FLAG_INT, &o->vocab, "50257", 2, 65536, NULL, "vocabulary V (fresh model; padded to a multiple of 128)", 0},
        {"batch", FLAG_INT, &o->batch, "8", 1, 1 << 16, NULL, "sequences per step B", 0},
        {"steps", FLAG_INT, &o->steps, "100", 0, 1 << 30, NULL, "total optimizer steps N", 0},
        {"lr", FLAG_FLOAT, &o->lr, "1e-3", 0, 10, NULL, "peak learning rate", 0},
        {"min-lr-frac", FLAG_FLOAT, &o->min_lr_frac, "0.1", 0, 1, NULL, "final lr as a fraction of --lr (cosine)", 0},
        {"warmup", FLAG_INT, &o->warmup, "10", 0, 1 << 30, NULL, "linear warm-up steps W", 0},
        {"schedule", FLAG_CHOICE, &o->schedule, "cosine", 0, 0, "cosine|constant", "lr after warm-up", 0},
        {"weight-decay", FLAG_FLOAT, &o->weight_decay, "0.1", 0, 10, NULL, "AdamW decay on 2-D tensors", 0},
        {"beta1", FLAG_FLOAT, &o->beta1, "0.9", 0, 0.999999, NULL, "AdamW beta1", 0},
        {"beta2", FLAG_FLOAT, &o->beta2, "0.95", 0, 0.999999, NULL, "AdamW beta2", 0},
        {"eps", FLAG_FLOAT, &o->eps, "1e-8", 1e-30, 1, NULL, "AdamW eps", 0},
        {"grad-clip", FLAG_FLOAT, &o->grad_clip, "1.0", 0, 1e9, NULL, "clip the global grad norm (0 = off)", 0},
        {"init", FLAG_CHOICE, &o->init, "plain", 0, 0, "plain|lir|residual|e3", "initialisation scheme", 0},
        {"init-std", FLAG_FLOAT, &o->init_std, "0.02", 0, 10, NULL, "sigma of the initialisation", 0},
        {"seed", FLAG_INT, &o->seed, "1337", 0, INT_MAX, NULL, "random seed (init, and the --shuffle order)", 0},
        {"shuffle", FLAG_INT, &o->shuffle, "0", 0, 1, NULL, "1: training shards and their windows in a new random order each epoch", 0},
        {"tvr-target", FLAG_FLOAT, &o->tvr_target, "0", 0, 10, NULL, "TVR target std (0 = off)", 0},
        {"tvr-every", FLAG_INT, &o->tvr_every, "50", 1, 1 << 30, NULL, "TVR every this many steps", 0},
        {"tvr-threshold", FLAG_FLOAT, &o->tvr_threshold, "1.2", 0, 1e6, NULL, "rescale when std/target exceeds this", 0},
        {"tvr-depth-scaled", FLAG_INT, &o->tvr_depth_scaled, "0", 0, 1, NULL, "1: target/sqrt(layer)", 0},
        {"val-every", FLAG_INT, &o->val_every, "0", 0, 1 << 30, NULL, "validate every this many steps (0 = never)", 0},
        {"val-batches", FLAG_INT, &o->val_batches, "10", 1, 1 << 30, NULL, "batches per validation", 0},
        {"stats-every", FLAG_INT, &o->stats_every, "0", 0, 1 << 30, NULL, "weights/activations/hist logs every N steps", 0},
        {"checkpoint-every", FLAG_INT, &o->checkpoint_every, "0", 0, 1 << 30, NULL, "save every N steps (0 = only at the end)", 0},
        {"threads", FLAG_INT, &o->threads, "0", 0, 4096, NULL, "accepted for train_gpt2's command lines; unused here", 0},
        {"hist-layer", FLAG_INT, &o->hist_layer, "0", 0, 1000, NULL, "E3: layer whose matrix hist.csv follows (0 = off)", 0},
        {"hist-matrix", FLAG_CHOICE, &o->hist_matrix, "q", 0, 0, "q|k|v|qkv|attn_proj|fc|fc_proj", "E3: that matrix", 0},
        {"hist-range", FLAG_FLOAT, &o->hist_range, "0.2", 1e-6, 100, NULL, "E3: histogram over [-range, range], 100 bins", 0},
        {"tf32", FLAG_INT, &o->tf32, "0", 0, 1, NULL, "1: matmuls in TF32 on tensor cores (faster, ~1e-3 relative); 0: full fp32", 0},
    };
    static_assert(sizeof(t) / sizeof(t[0]) == NUM_FLAGS, "NUM_FLAGS must match the flag table");
    memcpy(fl, t, sizeof(t));
}

static Options parse_options(int argc, char **argv, Flag fl[NUM_FLAGS]) {
    Options o;
    options_table(&o, fl);
    flags_parse(fl, NUM_FLAGS, argc, argv, 1, USAGE);
    if (o.train == NULL) usage_error("--train is required (see --help)");
    if (o.resume && o.init_from) usage_error("--resume and --init-from exclude each other");
    if (o.dim % o.heads != 0) usage_error("--heads %d does not divide --dim %d", o.heads, o.dim);
    if (o.kv_heads != 0 && o.kv_heads != o.heads) usage_error("--kv-heads: GPT-2 has no grouped attention: 0 or --heads");
    if (o.ffn != 0 && o.ffn != 4 * o.dim) usage_error("--ffn: GPT-2's MLP is 4*dim = %d: 0 or that", 4 * o.dim);
    if (o.hist_layer > o.layers && !o.resume && !o.init_from) usage_error("--hist-layer %d > --layers %d", o.hist_layer, o.layers);
    if (o.resume && !flag_given(fl, NUM_FLAGS, "out")) o.out = o.resume;
    return o;
}

static TrainConfig train_config(const Options *o) {
    TrainConfig tc = {o->steps, o->warmup, strcmp(o->schedule, "constant") == 0, o->lr, o->min_lr_frac,
                      o->weight_decay, o->beta1, o->beta2, o->eps, o->grad_clip, o->tvr_target, o->tvr_threshold,
                      o->tvr_every, o->tvr_depth_scaled};
    return tc;
}

// The model's shape and host mirror from --resume, --init-from or the flags (fresh:
// initialised on the host); returns the sequence length to train with (--seq-len, or
// the checkpoint's if shorter and the flag not given). No GPU touched yet.
static int build_model_host(GPT2 *model, const Options *o, Flag *fl, Rng *rng) {
    char path[4200];
    if (o->resume || o->init_from) {
        if (o->resume) snprintf(path, sizeof(path), "%s/model.bin", o->resume);
        gpt2_load_host(model, o->resume ? path : o->init_from);
        const char *shape[] = {"layers", "dim", "heads", "vocab"};
        for (int i = 0; i < 4; i++) {
            if (flag_given(fl, NUM_FLAGS, shape[i])) printf("note: --%s ignored, the checkpoint sets the shape\n", shape[i]);
        }
        int maxT = model->config.max_seq_len;
        if (flag_given(fl, NUM_FLAGS, "seq-len") && o->seq_len > maxT) {
            usage_error("--seq-len %d is above the checkpoint's %d", o->seq_len, maxT);
        }
        if (o->hist_layer > model->config.layers) usage_error("--hist-layer %d > the checkpoint's %d layers", o->hist_layer, model->config.layers);
        return o->seq_len < maxT ? o->seq_len : maxT;
    }
    GPT2Config c = {o->seq_len, o->vocab, (o->vocab + 127) / 128 * 128, o->layers, o->heads, o->dim};
    model->config = c;
    gpt2_alloc_host(model);
    gpt2_init_host(model, o->init, o->init_std, rng);
    return o->seq_len;
}

// The run's CSV logs (common/csvlog.h): a resumed run keeps the rows up to its step.
typedef struct {
    FILE *train, *val, *weights, *acts, *hist, *hist_summary;
} Logs;

static Logs open_logs(const Options *o, int resume_step) {
    Logs lg = {csv_open(o->out, "train.csv", "step,loss,lr,grad_norm,ms,tokens_per_s", resume_step),
               csv_open(o->out, "val.csv", "step,val_loss", resume_step),
               csv_open(o->out, "weights.csv", "step,layer,matrix,mean,std,rescaled", resume_step),
               csv_open(o->out, "activations.csv", "step,layer,max_abs,rms", resume_step), NULL, NULL};
    if (o->hist_layer > 0) {
        lg.hist = csv_open(o->out, "hist.csv", "step,layer,matrix,bin,lo,hi,count", resume_step);
        lg.hist_summary = csv_open(o->out, "hist_summary.csv",
                                   "step,layer,matrix,mean,std,near_zero,large,excess_kurtosis", resume_step);
    }
    return lg;
}

static void close_logs(Logs *lg) {
    FILE *fs[] = {lg->train, lg->val, lg->weights, lg->acts, lg->hist, lg->hist_summary};
    for (int i = 0; i < 6; i++) {
        if (fs[i]) fclose(fs[i]);
    }
}

static void save_checkpoint(GPT2 *model, const Options *o, int step, const DataLoader *dl, const Rng *rng) {
    char path[4200];
    snprintf(path, sizeof(path), "%s/model.bin", o->out);
    gpt2_save(model, path);
    snprintf(path, sizeof(path), "%s/state.bin", o->out);
    state_save(model, path, step, dl, rng);
}

// The weight statistics of one moment (step 0, a stats step, a TVR step before rescaling).
static void log_stats(Logs *lg, GPT2 *model, const Options *o, int step, const double *mean, const double *std,
                      int rescaled[][NUM_BLOCK_MATRICES]) {
    log_weights(lg->weights, model, step, mean, std, rescaled);
    if (lg->hist) log_hist(lg->hist, lg->hist_summary, model, step, o->hist_layer, stat_matrix_index(o->hist_matrix), o->hist_range);
}

static void train_loop(GPT2 *model, const Options *o, const TrainConfig *tc, int start, DataLoader *train,
                       DataLoader *val, Logs *lg, Rng *rng) {
    int L = model->config.layers, count = model->st.count;
    int (*rescaled)[NUM_BLOCK_MATRICES] = (int (*)[NUM_BLOCK_MATRICES])calloc_check((size_t)L, sizeof(*rescaled));
    double *mean = (double *)malloc_check(sizeof(double) * count), *std = (double *)malloc_check(sizeof(double) * count);
    if (start == 0 && !o->resume) {
        weight_stats(model, mean, std);
        log_stats(lg, model, o, 0, mean, std, NULL);
    }
    for (int step = start + 1; step <= o->steps; step++) {
        double t0 = wall_seconds();
        StepResult r;
        train_step(model, tc, train, step, &r);
        int stats = o->stats_every > 0 && step % o->stats_every == 0, tvr = is_tvr_step(tc, step);
        if (stats || step == 1) log_activations(lg->acts, model, step);
        if (stats || tvr) weight_stats(model, mean, std);
        if (tvr) tvr_decide(model, tc, std, rescaled);
        if (stats || tvr) log_stats(lg, model, o, step, mean, std, tvr ? rescaled : NULL); // before rescaling
        if (tvr) tvr_apply(model, tc, mean, std, rescaled);
        cudaCheck(cudaDeviceSynchronize()); // the step's time includes its last kernel
        double ms = 1e3 * (wall_seconds() - t0);
        fprintf(lg->train, "%d,%.6f,%.6e,%.6f,%.1f,%.1f\n", step, r.loss, r.lr, r.grad_norm, ms,
                (double)train->B * train->T / (ms / 1e3));
        fflush(lg->train);
        printf("step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  %.1f ms%s\n", step, o->steps, r.loss, r.lr,
               r.grad_norm, ms, tvr ? "  (TVR)" : "");
        if (val && o->val_every > 0 && (step % o->val_every == 0 || step == o->steps)) {
            double vl = evaluate(model, val, o->val_batches);
            fprintf(lg->val, "%d,%.6f\n", step, vl);
            fflush(lg->val);
            printf("step %d  val_loss %.4f\n", step, vl);
        }
        if (o->checkpoint_every > 0 && step % o->checkpoint_every == 0) save_checkpoint(model, o, step, train, rng);
    }
    free(rescaled), free(mean), free(std);
}

// The GPU, or a clear error when there is none (this program has no CPU fallback).
static void gpu_setup(int tf32) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        die("no CUDA GPU available (%s); train_gpt2 runs on the CPU", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    }
    cudaCheck(cudaSetDevice(0));
    cublas_setup(tf32);
}

#ifndef TESTING
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); // progress lines appear as they happen, also in a log file
    Flag fl[NUM_FLAGS];
    Options o = parse_options(argc, argv, fl);
    TrainConfig tc = train_config(&o);
    ensure_dir(o.out);
    Rng rng;
    rng_seed(&rng, (uint64_t)o.seed);
    GPT2 model;
    memset(&model, 0, sizeof(model));
    int T = build_model_host(&model, &o, fl, &rng);
    // data before the GPU: a bad shard is reported before any GPU work
    DataLoader train, val;
    dataloader_init(&train, o.train, "--train", o.batch, T, model.config.vocab);
    if (o.shuffle) dataloader_shuffle(&train, (uint64_t)o.seed);
    if (o.val) dataloader_init(&val, o.val, "--val", o.batch, T, model.config.vocab);
    gpu_setup(o.tf32);
    gpt2_alloc_device(&model);
    gpt2_params_to_device(&model);
    gpt2_alloc_acts(&model, o.batch, T);
    int start = 0;
    if (o.resume) {
        char path[4200];
        snprintf(path, sizeof(path), "%s/state.bin", o.resume);
        start = state_load(&model, path, &train, &rng, o.seed, o.resume);
        printf("resumed %s at step %d\n", o.resume, start);
    }
    const GPT2Config *c = &model.config;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, 0));
    printf("GPT-2: L %d, NH %d, C %d, V %d (padded %d), max T %d; %zu parameters; B %d, T %d; %s, %s\n", c->layers,
           c->heads, c->channels, c->vocab, c->padded_vocab, c->max_seq_len, model.num_params, o.batch, T, prop.name,
           o.tf32 ? "tf32" : "fp32");
    Logs lg = open_logs(&o, o.resume ? start : -1);
    train_loop(&model, &o, &tc, start, &train, o.val ? &val : NULL, &lg, &rng);
    save_checkpoint(&model, &o, start > o.steps ? start : o.steps, &train, &rng);
    close_logs(&lg);
    dataloader_free(&train);
    if (o.val) dataloader_free(&val);
    gpt2_free(&model);
    cublasCheck(cublasDestroy(cublas_handle));
    return 0;
}
#endif // TESTING
