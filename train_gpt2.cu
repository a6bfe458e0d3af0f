/*
 * train_gpt2.cu: train GPT-2 on one NVIDIA GPU, with the initialisations and the
 * weight rescaling of docs/methods.md (LIR, TVR) and the variance statistics of E3.
 *
 * The GPU twin of train_gpt2.c, which is the specification: the same flags (plus
 * --tf32), the same CSV logs (train.csv, val.csv, weights.csv with c_attn's q, k, v
 * parts, activations.csv, hist.csv, hist_summary.csv), the same llm.c-format
 * model.bin and the same state.bin (version 2: params, m, v), so that a run
 * checkpointed by one program resumes on the other. Where the CPU file has a
 * loop, this file has a kernel (or a cuBLAS call) of the same name. Built with
 * -DUSE_MPI (make train_gpt2_cu_mpi) it runs as N ranks, one GPU each: --grad-accum,
 * NCCL and ZeRO-1 as train_gpt2.c's MPI build (common/cuda_dp.h, docs/parallel.md).
 * It reads:
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
 * expressions, so that the two programs differ only by summation order. With
 * --precision bf16 (this program's own: train_gpt2.c has fp32 only) every matmul reads
 * bf16 copies of its two inputs, as train_llama.cu's bf16 (docs/gpu.md, "bf16"): the
 * weights' (params16) and those of the activations and gradients a matmul reads (a16,
 * the *_16 scratch; NULL in fp32), written by the kernels that make them.
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

#include "gpt2_run.h" // GPT2Config, the checkpoint header, the command line, E3 histograms
#include "train.h"    // settings, schedules, state.bin, logs
#include "utils.h"

// The activation type. Parameters, gradients and AdamW state are always float.
typedef float floatX;
#define CUBLAS_FLOATX CUDA_R_32F

// ============================================================================
// 1. CUDA helpers and the matmul
// ============================================================================

#include "cuda_attention.h" // flash attention: no T x T matrix (--attention flash, the default)
#include "cuda_common.h" // checked calls, reductions, gemm_batched() over cuBLAS
#include "cuda_train.h"  // the GPU flags and set-up, token buckets
#include "cuda_dp.h"     // several ranks: gradient accumulation, NCCL, ZeRO-1 (docs/parallel.md)

// ============================================================================
// 2. the layers
// ============================================================================
// N = B*T rows. Parameter gradients are added into (+=), as in train_gpt2.c.

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
static void linear_forward(floatX *out, const floatX *inp, const bf16 *inp16, const float *W, const bf16 *W16,
                           const float *bias, int N, int IC, int OC) {
    matmul_forward(out, inp, inp16, W, W16, N, IC, OC);
    if (bias) {
        add_bias_kernel<<<grid_for((long)N * OC), BLOCK>>>(out, bias, N, OC);
        launchCheck();
    }
}

// dinp = dout . W (overwritten);  dW += dout^T . inp;  dbias += column sums of dout.
// partial: COL_CHUNKS * OC doubles of scratch.
static void linear_backward(floatX *dinp, float *dW, float *dbias, double *partial, const floatX *dout,
                            const bf16 *dout16, const floatX *inp, const bf16 *inp16, const float *W, const bf16 *W16,
                            int N, int IC, int OC) {
    matmul_backward(dinp, dW, dout, dout16, inp, inp16, W, W16, N, IC, OC, 0);
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
 * counting sort, TokenBuckets in common/cuda_train.h) and one block column owns each distinct
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

static void encoder_backward(float *dwte, float *dwpe, const floatX *dout, const TokenBuckets *tb, int B, int T,
                             int C) {
    encoder_backward_wte_kernel<<<dim3(tb->count, ceil_div(C, BLOCK)), BLOCK>>>(dwte, dout, tb->token, tb->start,
                                                                                tb->pos, C);
    launchCheck();
    encoder_backward_wpe_kernel<<<grid_for((long)T * C), BLOCK>>>(dwpe, dout, B, T, C);
    launchCheck();
}

// ---------------------------------------------------------------------------
// LayerNorm over the last dimension (biased variance, eps 1e-5 as GPT-2); one
// warp per row, the statistics in double and the output formula as train_gpt2.c.
#define LN_EPS 1e-5

// (out16, or NULL: out in bf16)
__global__ void layernorm_forward_kernel(floatX *out, bf16 *out16, float *mean, float *rstd, const floatX *inp,
                                         const float *w, const float *bias, int N, int C) {
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
    if (out16) {
        for (int i = lane; i < C; i += 32) out16[(long)row * C + i] = bf16_round((float)o[i]);
    }
    if (lane == 0) {
        mean[row] = (float)m;
        rstd[row] = (float)s;
    }
}

static void layernorm_forward(floatX *out, bf16 *out16, float *mean, float *rstd, const floatX *inp, const float *w,
                              const float *bias, int N, int C) {
    layernorm_forward_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(out, out16, mean, rstd, inp, w, bias, N, C);
    launchCheck();
}

// With x̂ = (x - mean)·rstd and g = dout ⊙ w: dx += rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
// dinp16 (or NULL) gets the sum in bf16.
__global__ void layernorm_backward_dinp_kernel(floatX *dinp, bf16 *dinp16, const floatX *dout, const floatX *inp,
                                               const float *w, const float *mean, const float *rstd, int N, int C) {
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
        if (dinp16) dinp16[(long)row * C + i] = bf16_round((float)dx[i]);
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

static void layernorm_backward(floatX *dinp, bf16 *dinp16, float *dw, float *dbias, double *partial,
                               const floatX *dout, const floatX *inp, const float *w, const float *mean,
                               const float *rstd, int N, int C) {
    layernorm_backward_dinp_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(dinp, dinp16, dout, inp, w, mean, rstd, N,
                                                                            C);
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
// keeps the softmax probabilities (zero above the diagonal) for the backward. With
// --precision bf16 the permuted copies the matmuls read are bf16 (Dst = bf16).

template <typename Dst>
__global__ void permute_qkv_kernel(Dst *q, Dst *k, Dst *v, const floatX *qkv, int B, int T, int NH, int hs) {
    int C = NH * hs;
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        const floatX *src = qkv + (b * T + t) * 3 * C + h * hs + d;
        store_as(q + i, (float)src[0]);
        store_as(k + i, (float)src[C]);
        store_as(v + i, (float)src[2 * C]);
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
template <typename Dst>
__global__ void permute_to_heads_kernel(Dst *dst, const floatX *src, int B, int T, int NH, int hs) {
    GRID_STRIDE(i, (long)B * NH * T * hs) {
        int d = (int)(i % hs), t = (int)(i / hs % T), h = (int)(i / ((long)hs * T) % NH);
        long b = i / ((long)hs * T * NH);
        store_as(dst + i, (float)src[((b * T + t) * NH + h) * hs + d]);
    }
}

/*
 * The attention's matmuls, one strided batched call over the B*NH heads each;
 * x, y are (B, NH, T, hs) and p is (B, NH, T, T), one block per head:
 *   attn_x_yT:  s = x . y^T   (scores q.k^T; datt = dy.v^T)
 *   attn_p_x:   o = p . x     (y = att.v; dq = dpre.k)
 *   attn_pT_x:  o = p^T . x   (dv = att^T.dy; dk = dpre^T.q)
 * (In: floatX, or bf16 with --precision bf16; the outputs are floatX)
 */
template <typename In>
static void attn_x_yT(floatX *s, const In *x, const In *y, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm_batched(0, 1, T, T, hs, x, hs, th, y, hs, th, s, T, tt, B * NH, 0);
}
template <typename In>
static void attn_p_x(floatX *o, const In *p, const In *x, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm_batched(0, 0, T, hs, T, p, T, tt, x, hs, th, o, hs, th, B * NH, 0);
}
template <typename In>
static void attn_pT_x(floatX *o, const In *p, const In *x, int B, int T, int NH, int hs) {
    long th = (long)T * hs, tt = (long)T * T;
    gemm_batched(1, 0, T, hs, T, p, T, tt, x, hs, th, o, hs, th, B * NH, 0);
}

// In place over att (B*NH*T rows of T): row t becomes softmax(scale * row[0..t]),
// zeros after t. One warp per row; exponentials and their sum in double as train_gpt2.c.
// att16 (or NULL) gets the probabilities in bf16.
__global__ void softmax_causal_forward_kernel(floatX *att, bf16 *att16, int rows, int T, double scale) {
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
        if (att16) att16[(long)row * T + t2] = bf16_round((float)a[t2]);
    }
}

// In place over datt: dpre = a * (datt - Σ a * datt) * scale on t2 <= t, zero after; dpre16 (or
// NULL) gets dpre in bf16.
__global__ void softmax_causal_backward_kernel(floatX *datt, bf16 *dpre16, const floatX *att, int rows, int T,
                                               float scale) {
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
        if (dpre16) dpre16[(long)row * T + t2] = bf16_round((float)d[t2]);
    }
}

// the permuted copies and the backward's scratch, reused layer after layer
typedef struct {
    floatX *q, *k, *v, *y;     // (B, NH, T, hs)
    floatX *dq, *dk, *dv, *dy; // (B, NH, T, hs)
    floatX *datt;              // (B, NH, T, T)
    bf16 *q16, *k16, *v16, *dy16; // --precision bf16 (NULL in fp32): the matmuls' inputs, (B, NH, T, hs)
    bf16 *p16;                    // and (B, NH, T, T): the probabilities, then the scores' gradient
} AttnScratch;

// attention_flash and attention_att_size(): common/cuda_train.h (with flash the scratch's datt
// holds D = rowsum(dout * out))

static void attention_forward(floatX *out, floatX *att, const floatX *qkv, AttnScratch *w, int B, int T, int C,
                              int NH) {
    int hs = C / NH;
    if (attention_flash) {
        if (attention_cudnn) {
            return cudnn_attention_forward(out, (float *)att, qkv, qkv + C, qkv + 2 * C, B, T, NH, NH, hs, 3L * C,
                                           3L * C, (long)C);
        }
        if (!flash_attention_forward(out, (float *)att, qkv, qkv + C, qkv + 2 * C, B, T, NH, NH, hs, 3L * C, 3L * C,
                                     (long)C, precision_bf16)) {
            die("--attention flash: head size %d is over %d (use --attention matmul)", hs, FA_MAX_HS);
        }
        launchCheck();
        return;
    }
    int rows = B * NH * T;
    if (precision_bf16) { // q and k for the scores, p and v for p.v in bf16
        permute_qkv_kernel<bf16><<<grid_for((long)B * T * C), BLOCK>>>(w->q16, w->k16, w->v16, qkv, B, T, NH, hs);
        launchCheck();
        attn_x_yT(att, w->q16, w->k16, B, T, NH, hs);
        softmax_causal_forward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(att, w->p16, rows, T,
                                                                                   1.0 / sqrt((double)hs));
        launchCheck();
        attn_p_x(w->y, w->p16, w->v16, B, T, NH, hs);
    } else {
        permute_qkv_kernel<floatX><<<grid_for((long)B * T * C), BLOCK>>>(w->q, w->k, w->v, qkv, B, T, NH, hs);
        launchCheck();
        attn_x_yT(att, w->q, w->k, B, T, NH, hs); // unscaled scores; the softmax scales
        softmax_causal_forward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(att, nullptr, rows, T,
                                                                                   1.0 / sqrt((double)hs));
        launchCheck();
        attn_p_x(w->y, att, w->v, B, T, NH, hs);
    }
    permute_from_heads_kernel<<<grid_for((long)B * T * C), BLOCK>>>(out, w->y, B, T, NH, hs);
    launchCheck();
}

// dqkv (B, T, 3C) is overwritten.
static void attention_backward(floatX *dqkv, const floatX *dout, const floatX *out, const floatX *att,
                               const floatX *qkv, AttnScratch *w, int B, int T, int C, int NH) {
    int hs = C / NH;
    if (attention_flash) {
        long C3 = 3L * C;
        if (attention_cudnn) {
            return cudnn_attention_backward(dqkv, dqkv + C, dqkv + 2 * C, dout, out, (const float *)att, qkv, qkv + C,
                                            qkv + 2 * C, B, T, NH, NH, hs, C3, C3, (long)C, C3, C3);
        }
        flash_attention_backward(dqkv, dqkv + C, dqkv + 2 * C, (float *)w->datt, dout, out, (const float *)att, qkv,
                                 qkv + C, qkv + 2 * C, B, T, NH, NH, hs, C3, C3, (long)C, C3, C3, precision_bf16);
        launchCheck();
        return;
    }
    int rows = B * NH * T;
    float scale = (float)(1.0 / sqrt((double)hs));
    if (precision_bf16) { // as below, every product on bf16 copies of its inputs
        permute_qkv_kernel<bf16><<<grid_for((long)B * T * C), BLOCK>>>(w->q16, w->k16, w->v16, qkv, B, T, NH, hs);
        launchCheck();
        permute_to_heads_kernel<bf16><<<grid_for((long)B * T * C), BLOCK>>>(w->dy16, dout, B, T, NH, hs);
        launchCheck();
        attn_x_yT(w->datt, w->dy16, w->v16, B, T, NH, hs);
        to_bf16(w->p16, att, (long)rows * T);
        attn_pT_x(w->dv, w->p16, w->dy16, B, T, NH, hs);
        softmax_causal_backward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(w->datt, w->p16, att, rows, T,
                                                                                    scale); // p16 now holds dpre
        launchCheck();
        attn_p_x(w->dq, w->p16, w->k16, B, T, NH, hs);
        attn_pT_x(w->dk, w->p16, w->q16, B, T, NH, hs);
        unpermute_qkv_kernel<<<grid_for((long)B * T * C), BLOCK>>>(dqkv, w->dq, w->dk, w->dv, B, T, NH, hs);
        launchCheck();
        return;
    }
    permute_qkv_kernel<floatX><<<grid_for((long)B * T * C), BLOCK>>>(w->q, w->k, w->v, qkv, B, T, NH, hs);
    launchCheck();
    permute_to_heads_kernel<floatX><<<grid_for((long)B * T * C), BLOCK>>>(w->dy, dout, B, T, NH, hs);
    launchCheck();
    // through y = att . v
    attn_x_yT(w->datt, w->dy, w->v, B, T, NH, hs);
    attn_pT_x(w->dv, att, w->dy, B, T, NH, hs);
    // through the softmax, in place
    softmax_causal_backward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(w->datt, nullptr, att, rows, T, scale);
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

// (the *16 outputs, or NULL: the same values in bf16)
__global__ void gelu_forward_kernel(floatX *out, bf16 *out16, const floatX *inp, long n) {
    GRID_STRIDE(i, n) {
        double x = (float)inp[i];
        out[i] = (floatX)(0.5 * x * (1.0 + tanh(GELU_K * (x + 0.044715 * x * x * x))));
        if (out16) out16[i] = bf16_round((float)out[i]);
    }
}
static void gelu_forward(floatX *out, bf16 *out16, const floatX *inp, long n) {
    gelu_forward_kernel<<<grid_for(n), BLOCK>>>(out, out16, inp, n);
    launchCheck();
}

// dinp is overwritten (train_gpt2.c adds into a zeroed buffer: the same)
__global__ void gelu_backward_kernel(floatX *dinp, bf16 *dinp16, const floatX *inp, const floatX *dout, long n) {
    GRID_STRIDE(i, n) {
        double x = (float)inp[i];
        double th = tanh(GELU_K * (x + 0.044715 * x * x * x));
        double dth = (1.0 - th * th) * GELU_K * (1.0 + 3.0 * 0.044715 * x * x);
        dinp[i] = (floatX)((float)dout[i] * (0.5 * (1.0 + th) + 0.5 * x * dth));
        if (dinp16) dinp16[i] = bf16_round((float)dinp[i]);
    }
}
static void gelu_backward(floatX *dinp, bf16 *dinp16, const floatX *inp, const floatX *dout, long n) {
    gelu_backward_kernel<<<grid_for(n), BLOCK>>>(dinp, dinp16, inp, dout, n);
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

// dlogits = (probs − onehot(target)) / N for the mean loss, written over the logits (and in
// bf16 into grad16, or NULL).
__global__ void crossentropy_backward_kernel(floatX *logits, bf16 *grad16, const float *row_max, const double *row_sum,
                                             const int *targets, int V, float dloss) {
    floatX *z = logits + (long)blockIdx.x * V;
    float mx = row_max[blockIdx.x];
    double s = row_sum[blockIdx.x];
    int target = targets[blockIdx.x];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = (float)((float)exp((double)(float)z[j] - mx) / s);
        z[j] = (floatX)((p - (j == target ? 1.0f : 0.0f)) * dloss);
        if (grad16) grad16[(long)blockIdx.x * V + j] = bf16_round((float)z[j]);
    }
}

/*
 * The fused classifier (llm.c's idea; train_llama.cu has the same): both kernels above in one
 * pass per row, reading the logits twice and writing the gradient over them. The training step
 * uses it; validation and generation keep the logits. The arithmetic is the two kernels', in
 * the same order, so the loss and the gradient are the same bits either way (test_gpu_emu.sh).
 */
__global__ void fused_classifier_kernel(floatX *logits, bf16 *grad16, float *losses, float *row_max, double *row_sum,
                                        const int *targets, int V, float dloss) {
    floatX *z = logits + (long)blockIdx.x * V;
    int target = targets[blockIdx.x];
    float at_target = (float)z[target];
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, (float)z[j]);
    mx = block_max(mx);
    double s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += exp((double)(float)z[j] - mx);
    s = block_sum_d(s); // (its barriers also order every read of z[target] before the writes below)
    if (threadIdx.x == 0) {
        row_max[blockIdx.x] = mx;
        row_sum[blockIdx.x] = s;
        losses[blockIdx.x] = (float)(log(s) - ((double)at_target - mx));
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float p = (float)((float)exp((double)(float)z[j] - mx) / s);
        z[j] = (floatX)((p - (j == target ? 1.0f : 0.0f)) * dloss);
        if (grad16) grad16[(long)blockIdx.x * V + j] = bf16_round((float)z[j]);
    }
}

// (grad16: d loss / d logits in bf16 as well, for the lm_head's backward; NULL for none)
static void fused_classifier(floatX *logits, bf16 *grad16, float *losses, float *row_max, double *row_sum,
                             const int *targets, int N, int V) {
    fused_classifier_kernel<<<N, CLASSIFIER_BLOCK>>>(logits, grad16, losses, row_max, row_sum, targets, V,
                                                     (float)(1.0 / N));
    launchCheck();
}
static void crossentropy_forward(float *losses, float *row_max, double *row_sum, const floatX *logits,
                                 const int *targets, int N, int V) {
    crossentropy_forward_kernel<<<N, CLASSIFIER_BLOCK>>>(losses, row_max, row_sum, logits, targets, V);
    launchCheck();
}
static void crossentropy_backward(floatX *logits, bf16 *grad16, const float *row_max, const double *row_sum,
                                  const int *targets, int N, int V) {
    crossentropy_backward_kernel<<<N, CLASSIFIER_BLOCK>>>(logits, grad16, row_max, row_sum, targets, V,
                                                          (float)(1.0 / N));
    launchCheck();
}

// ============================================================================
// 3. the model: its shape, and its parameters in one buffer described by one table
// ============================================================================

// GPT2Config (the shape): common/gpt2_run.h.

// The parameter tensors in llm.c's checkpoint order (P_*, PARAM_INFO, param_size): common/gpt2_run.h.

// Activations kept for the backward pass (on the GPU), as train_gpt2.c's table.
// A_LOGITS holds d loss / d logits after the backward (no separate probabilities).
enum {
    A_ENCODED, A_LN1, A_LN1_MEAN, A_LN1_RSTD, A_QKV, A_ATTY, A_ATT, A_ATTPROJ, A_RESIDUAL2, A_LN2, A_LN2_MEAN,
    A_LN2_RSTD, A_FCH, A_FCH_GELU, A_FCPROJ, A_RESIDUAL3, A_LNF, A_LNF_MEAN, A_LNF_RSTD, A_LOGITS, A_LOSSES,
    NUM_ACTS
};

// --recompute 1 (common/cuda_train.h): the LayerNorm outputs and GeLU's output hold one layer
static int act_recomputed(int a) { return recompute && (a == A_LN1 || a == A_LN2 || a == A_FCH_GELU); }

static size_t act_size(const GPT2Config *c, int a, int B, int T) {
    size_t BT = (size_t)B * T, C = c->channels, L = act_recomputed(a) ? 1 : c->layers;
    switch (a) {
    case A_ENCODED: case A_LNF: return BT * C;
    case A_LN1: case A_ATTY: case A_ATTPROJ: case A_RESIDUAL2: case A_LN2: case A_FCPROJ: case A_RESIDUAL3:
        return L * BT * C;
    case A_LN1_MEAN: case A_LN1_RSTD: case A_LN2_MEAN: case A_LN2_RSTD: return L * BT;
    case A_QKV: return L * BT * 3 * C;
    case A_ATT: return L * attention_att_size(B, T, c->heads);
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
    bf16 *dres_16, *dqkv_16, *dfch_16; // --precision bf16 (NULL in fp32): dres, dqkv, dfch in bf16
} Scratch;

// The statistics matrices (weights.csv, TVR): per layer q, k, v, qkv, attn_proj, fc, fc_proj.
#define NUM_STAT_MATRICES 7
static const char *STAT_MATRIX_NAME[NUM_STAT_MATRICES] = {"q", "k", "v", "qkv", "attn_proj", "fc", "fc_proj"};
#define MOMENT_CHUNKS 64 // blocks per matrix in the statistics
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
    float *params, *grads, *m, *v;  // on the GPU, tensors in PARAM_INFO order; m and v: this rank's
                                    // shard of that layout (all of it on one rank; ZeRO-1)
    float *h_params, *h_m, *h_v;    // host mirror: init, checkpoints (all of m and v: state.bin's)
    int B, T;                       // the activation buffers' shape
    floatX *a[NUM_ACTS];            // activations on the GPU; the LayerNorm means and rstds and the
                                    // losses are read as float: a 2-byte floatX must give them their own buffers
    bf16 *a16[NUM_ACTS];            // --precision bf16: the matmuls' inputs among them in bf16 (BF16_ACTS;
                                    // A_LOGITS: d loss / d logits); NULL for the others and in fp32
    bf16 *params16;                 // --precision bf16: the parameters in bf16, the matmuls' weights
    int params16_stale;             // params changed since params16 was written: gpt2_forward refreshes it
    float *row_max;                 // (B,T) the classifier's row maxima
    double *row_sum;                // (B,T) and sums of exponentials
    Scratch s;
    StatTable st;
    int *inputs, *targets;          // host copy of the batch the activations belong to
    int *d_inputs, *d_targets;
    TokenBuckets buckets; // encoder_backward's: the positions of each distinct token
    float *h_losses;
    double *norm_partial, *h_norm_partial; // grad_norm's per-block sums
    double *act_partial, *h_act_partial;   // log_activations' per-block max and sum of squares
    double mean_loss;                      // of the last forward with targets
    int logits_are_grad;                   // the last forward was fused: logits hold d loss / d logits
    int fuse_classifier;                   // the training step fuses (1, the default; 0: the tests' check)
} GPT2;

// Tensor p (layer l's slice for per-layer tensors) in a buffer laid out like params.
static float *tensor_at(const GPT2 *model, float *base, int p, int l) {
    return base + model->off[p] + (size_t)l * (PARAM_INFO[p].per_layer ? param_slice_size(&model->config, p) : 0);
}
static float *layer_param(const GPT2 *model, int p, int l) { return tensor_at(model, model->params, p, l); }
static float *layer_grad(const GPT2 *model, int p, int l) { return tensor_at(model, model->grads, p, l); }
static float *layer_param_host(const GPT2 *model, int p, int l) { return tensor_at(model, model->h_params, p, l); }
// the bf16 copy of layer l's tensor p (NULL in fp32)
static const bf16 *layer_param16(const GPT2 *model, int p, int l) {
    return model->params16 ? model->params16 + (layer_param(model, p, l) - model->params) : NULL;
}
// a bf16 buffer of n values with --precision bf16; NULL in fp32
static bf16 *bf16_calloc(long n) { return precision_bf16 ? (bf16 *)cuda_calloc(n, sizeof(bf16)) : NULL; }

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
    model->params16 = bf16_calloc((long)np);
    model->params16_stale = 1;
    long lo, hi;
    dp_shard((long)np, &lo, &hi);
    model->m = (float *)cuda_calloc(hi - lo, sizeof(float));
    model->v = (float *)cuda_calloc(hi - lo, sizeof(float));
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
    model->norm_partial = (double *)cuda_calloc(DP_NORM_BLOCKS, sizeof(double));
    model->h_norm_partial = (double *)malloc_check(sizeof(double) * DP_NORM_BLOCKS);
    model->act_partial = (double *)cuda_calloc((long)L * ACT_CHUNKS * 2, sizeof(double));
    model->h_act_partial = (double *)malloc_check(sizeof(double) * L * ACT_CHUNKS * 2);
}

static void gpt2_params_to_device(GPT2 *model) {
    cudaCheck(cudaMemcpy(model->params, model->h_params, sizeof(float) * model->num_params, cudaMemcpyHostToDevice));
    model->params16_stale = 1;
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
// Checkpoints: llm.c's GPT-2 format (the header: common/gpt2_run.h), the fp32
// parameters in PARAM_INFO order. Written to a temporary name and renamed.


// Read a checkpoint's header and parameters into the host mirror (no GPU touched).
static void gpt2_load_host(GPT2 *model, const char *path) {
    memset(model, 0, sizeof(*model));
    long bytes;
    FILE *f = gpt2_read_header(path, &model->config, &bytes);
    long n = 0; // the file's size against its header before any allocation the header sizes
    for (int p = 0; p < NUM_PARAMS; p++) n += (long)param_size(&model->config, p);
    gpt2_check_size(path, bytes, n);
    gpt2_alloc_host(model);
    read_payload(f, model->h_params, sizeof(float), model->num_params, path, "parameters");
    fclose(f);
}

// Write the host mirror as a checkpoint.
static void gpt2_save_host(const GPT2 *model, const char *path) {
    AtomicFile af;
    atomic_open(&af, path);
    gpt2_header_write(af.f, af.tmp, &model->config);
    fwrite_check(model->h_params, sizeof(float), model->num_params, af.f, af.tmp);
    atomic_commit(&af);
}

// ---------------------------------------------------------------------------
// Forward and backward through the whole model.

// The backward's and attention's scratch slots (gpt2_alloc_acts; gpt2_memory counts them).
#define NUM_SCRATCH_SLOTS 15
static void scratch_sizes(const GPT2Config *c, int B, int T, long *sizes) {
    long BT = (long)B * T, C = c->channels, NH = c->heads;
    long s[NUM_SCRATCH_SLOTS] = {BT * C, BT * C, BT * C, BT * 3 * C, BT * 4 * C, BT * 4 * C, BT * C, BT * C,
                                 BT * C, BT * C, BT * C, BT * C, BT * C, BT * C, attention_att_size(B, T, NH)};
    if (attention_flash) memset(s + 6, 0, sizeof(long) * 8); // no permuted copies (attn.q .. attn.dy)
    if (precision_bf16) s[6] = s[7] = s[8] = s[13] = 0;      // bf16: attn.q, k, v, dy are bf16 copies
    memcpy(sizes, s, sizeof(s));
}

// The activations a matmul reads, which --precision bf16 keeps in bf16 too (A_LOGITS: as
// d loss / d logits, the lm_head's backward's input).
static const int BF16_ACTS[] = {A_LN1, A_ATTY, A_LN2, A_FCH_GELU, A_LNF, A_LOGITS};
#define NUM_BF16_ACTS (int)(sizeof(BF16_ACTS) / sizeof(BF16_ACTS[0]))

// --precision bf16's copies (2-byte values): parameters, BF16_ACTS, dres, dqkv, dfch, and
// attention's bf16 q, k, v, dy and p (--attention matmul); 0 in fp32
static double gpt2_memory_bf16(const GPT2Config *c, int B, int T) {
    if (!precision_bf16) return 0;
    double n = 0, BT = (double)B * T, C = c->channels;
    for (int p = 0; p < NUM_PARAMS; p++) n += param_size(c, p);
    for (int i = 0; i < NUM_BF16_ACTS; i++) n += act_size(c, BF16_ACTS[i], B, T);
    n += BT * C * 8; // dres, dqkv, dfch
    if (!attention_flash) n += 4 * BT * C + (double)B * c->heads * T * T;
    return 2 * n;
}

// What training on B x T batches needs on the GPU: parameters, gradients, AdamW's m and
// v, the activations and the scratch (cuBLAS's workspace aside), and the bf16 copies.
static double gpt2_memory(const GPT2Config *c, int B, int T) {
    long sizes[NUM_SCRATCH_SLOTS];
    scratch_sizes(c, B, T, sizes);
    double n = 0;
    for (int p = 0; p < NUM_PARAMS; p++) n += 4.0 * param_size(c, p);
    for (int a = 0; a < NUM_ACTS; a++) n += act_size(c, a, B, T);
    for (int i = 0; i < NUM_SCRATCH_SLOTS; i++) n += sizes[i];
    return n * sizeof(float) + 12.0 * B * T + 16.0 * COL_CHUNKS * 4 * c->channels // + row stats, partial sums
           + gpt2_memory_bf16(c, B, T);
}

static void gpt2_alloc_acts(GPT2 *model, int B, int T) {
    const GPT2Config *c = &model->config;
    if (T > c->max_seq_len) die("seq-len %d exceeds the model's maximum %d", T, c->max_seq_len);
    model->B = B, model->T = T;
    for (int a = 0; a < NUM_ACTS; a++) model->a[a] = (floatX *)cuda_calloc(act_size(c, a, B, T), sizeof(floatX));
    long BT = (long)B * T, C = c->channels;
    model->row_max = (float *)cuda_calloc(BT, sizeof(float));
    model->row_sum = (double *)cuda_calloc(BT, sizeof(double));
    Scratch *s = &model->s;
    floatX **slots[] = {&s->dres, &s->dln, &s->datty, &s->dqkv, &s->dfch, &s->dfch_gelu, &s->attn.q, &s->attn.k,
                        &s->attn.v, &s->attn.y, &s->attn.dq, &s->attn.dk, &s->attn.dv, &s->attn.dy, &s->attn.datt};
    long sizes[NUM_SCRATCH_SLOTS];
    scratch_sizes(c, B, T, sizes);
    for (int i = 0; i < NUM_SCRATCH_SLOTS; i++) *slots[i] = (floatX *)cuda_calloc(sizes[i], sizeof(floatX));
    s->partial = (double *)cuda_calloc(2L * COL_CHUNKS * 4 * C, sizeof(double));
    memset(model->a16, 0, sizeof(model->a16));
    for (int i = 0; i < NUM_BF16_ACTS; i++) model->a16[BF16_ACTS[i]] = bf16_calloc(act_size(c, BF16_ACTS[i], B, T));
    s->dres_16 = bf16_calloc(BT * C), s->dqkv_16 = bf16_calloc(BT * 3 * C), s->dfch_16 = bf16_calloc(BT * 4 * C);
    if (!attention_flash) {
        AttnScratch *w = &s->attn;
        w->q16 = bf16_calloc(BT * C), w->k16 = bf16_calloc(BT * C), w->v16 = bf16_calloc(BT * C);
        w->dy16 = bf16_calloc(BT * C), w->p16 = bf16_calloc((long)B * c->heads * T * T);
    } else {
        s->attn.q16 = s->attn.k16 = s->attn.v16 = s->attn.dy16 = s->attn.p16 = NULL;
    }
    int V = c->vocab;
    model->inputs = (int *)calloc_check(BT, sizeof(int));
    model->targets = (int *)calloc_check(BT, sizeof(int));
    model->d_inputs = (int *)cuda_calloc(BT, sizeof(int));
    model->d_targets = (int *)cuda_calloc(BT, sizeof(int));
    token_buckets_alloc(&model->buckets, V, BT);
    model->h_losses = (float *)calloc_check(BT, sizeof(float));
}

// Layer l's slice of a per-layer activation, and of its bf16 copy (NULL if it has none).
static floatX *layer_act(const GPT2 *model, int a, int l) {
    if (act_recomputed(a)) return model->a[a];
    return model->a[a] + (size_t)l * (act_size(&model->config, a, model->B, model->T) / model->config.layers);
}
static bf16 *layer_act16(const GPT2 *model, int a, int l) {
    if (!model->a16[a] || act_recomputed(a)) return model->a16[a];
    return model->a16[a] + (size_t)l * (act_size(&model->config, a, model->B, model->T) / model->config.layers);
}

// Logits for all positions and the mean loss (host arrays of B*T tokens and targets).
// With fuse_backward the classifier also writes d loss / d logits over the logits (the
// training step); without, the logits stay and gpt2_backward computes that gradient.
static void gpt2_forward(GPT2 *model, const int *inputs, const int *targets, int B, int T, int fuse_backward) {
    const GPT2Config *c = &model->config;
    if (B != model->B || T != model->T) {
        die("gpt2_forward: batch shape (%d, %d) != allocated (%d, %d)", B, T, model->B, model->T);
    }
    int C = c->channels, NH = c->heads, V = c->vocab, BT = B * T;
    memcpy(model->inputs, inputs, (size_t)BT * sizeof(int));
    memcpy(model->targets, targets, (size_t)BT * sizeof(int));
    cudaCheck(cudaMemcpy(model->d_inputs, inputs, sizeof(int) * BT, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->d_targets, targets, sizeof(int) * BT, cudaMemcpyHostToDevice));
    token_buckets_build(&model->buckets, inputs, BT, V);
    if (model->params16 && model->params16_stale) { // the weights changed (AdamW, TVR, a load): their bf16 copy
        to_bf16(model->params16, model->params, (long)model->num_params);
        model->params16_stale = 0;
    }
    floatX **a = model->a;
    encoder_forward(a[A_ENCODED], model->d_inputs, layer_param(model, P_WTE, 0), layer_param(model, P_WPE, 0), B, T, C);
    for (int l = 0; l < c->layers; l++) {
        const floatX *x = l == 0 ? a[A_ENCODED] : layer_act(model, A_RESIDUAL3, l - 1);
#define ACT(name) layer_act(model, name, l)
#define ACT16(name) layer_act16(model, name, l)
#define PAR(name) layer_param(model, name, l)
// (a weight and its bf16 copy: two arguments)
#define W(name) layer_param(model, name, l), layer_param16(model, name, l)
        layernorm_forward(ACT(A_LN1), ACT16(A_LN1), ACT(A_LN1_MEAN), ACT(A_LN1_RSTD), x, PAR(P_LN1W), PAR(P_LN1B), BT,
                          C);
        linear_forward(ACT(A_QKV), ACT(A_LN1), ACT16(A_LN1), W(P_QKVW), PAR(P_QKVB), BT, C, 3 * C);
        attention_forward(ACT(A_ATTY), ACT(A_ATT), ACT(A_QKV), &model->s.attn, B, T, C, NH);
        if (ACT16(A_ATTY)) to_bf16(ACT16(A_ATTY), ACT(A_ATTY), (long)BT * C);
        linear_forward(ACT(A_ATTPROJ), ACT(A_ATTY), ACT16(A_ATTY), W(P_ATTPROJW), PAR(P_ATTPROJB), BT, C, C);
        residual_forward(ACT(A_RESIDUAL2), x, ACT(A_ATTPROJ), (long)BT * C);
        layernorm_forward(ACT(A_LN2), ACT16(A_LN2), ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), ACT(A_RESIDUAL2), PAR(P_LN2W),
                          PAR(P_LN2B), BT, C);
        linear_forward(ACT(A_FCH), ACT(A_LN2), ACT16(A_LN2), W(P_FCW), PAR(P_FCB), BT, C, 4 * C);
        gelu_forward(ACT(A_FCH_GELU), ACT16(A_FCH_GELU), ACT(A_FCH), (long)BT * 4 * C);
        linear_forward(ACT(A_FCPROJ), ACT(A_FCH_GELU), ACT16(A_FCH_GELU), W(P_FCPROJW), PAR(P_FCPROJB), BT, 4 * C, C);
        residual_forward(ACT(A_RESIDUAL3), ACT(A_RESIDUAL2), ACT(A_FCPROJ), (long)BT * C);
#undef ACT
#undef ACT16
#undef PAR
#undef W
    }
    const floatX *x = layer_act(model, A_RESIDUAL3, c->layers - 1);
    layernorm_forward(a[A_LNF], model->a16[A_LNF], a[A_LNF_MEAN], a[A_LNF_RSTD], x, layer_param(model, P_LNFW, 0),
                      layer_param(model, P_LNFB, 0), BT, C);
    // tied output layer: the first V rows of wte, no bias
    linear_forward(a[A_LOGITS], a[A_LNF], model->a16[A_LNF], layer_param(model, P_WTE, 0),
                   layer_param16(model, P_WTE, 0), NULL, BT, C, V);
    if (fuse_backward) {
        fused_classifier(a[A_LOGITS], model->a16[A_LOGITS], a[A_LOSSES], model->row_max, model->row_sum,
                         model->d_targets, BT, V);
    } else {
        crossentropy_forward(a[A_LOSSES], model->row_max, model->row_sum, a[A_LOGITS], model->d_targets, BT, V);
    }
    model->logits_are_grad = fuse_backward;
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
    if (!model->logits_are_grad) { // now dlogits
        crossentropy_backward(a[A_LOGITS], model->a16[A_LOGITS], model->row_max, model->row_sum, model->d_targets, BT,
                              V);
    }
    model->logits_are_grad = 0;
    linear_backward(s->dln, layer_grad(model, P_WTE, 0), NULL, s->partial, a[A_LOGITS], model->a16[A_LOGITS],
                    a[A_LNF], model->a16[A_LNF], layer_param(model, P_WTE, 0), layer_param16(model, P_WTE, 0), BT, C,
                    V);
    layernorm_backward(s->dres, s->dres_16, layer_grad(model, P_LNFW, 0), layer_grad(model, P_LNFB, 0), s->partial,
                       s->dln, layer_act(model, A_RESIDUAL3, L - 1), layer_param(model, P_LNFW, 0), a[A_LNF_MEAN],
                       a[A_LNF_RSTD], BT, C);
    for (int l = L - 1; l >= 0; l--) {
#define ACT(name) layer_act(model, name, l)
#define ACT16(name) layer_act16(model, name, l)
#define PAR(name) layer_param(model, name, l)
#define W(name) layer_param(model, name, l), layer_param16(model, name, l)
#define GRAD(name) layer_grad(model, name, l)
        const floatX *x = l == 0 ? a[A_ENCODED] : layer_act(model, A_RESIDUAL3, l - 1);
        // s->dres = d loss / d residual3; residual3 = residual2 + fcproj: the gradient of both.
        // --recompute 1: fch_gelu, ln2 and ln1 again (and their bf16 copies), each just before its
        // use (LayerNorm's whole forward, its statistics in double, rewriting the same mean and rstd)
        if (recompute) gelu_forward(ACT(A_FCH_GELU), ACT16(A_FCH_GELU), ACT(A_FCH), (long)BT * 4 * C);
        linear_backward(s->dfch_gelu, GRAD(P_FCPROJW), GRAD(P_FCPROJB), s->partial, s->dres, s->dres_16,
                        ACT(A_FCH_GELU), ACT16(A_FCH_GELU), W(P_FCPROJW), BT, 4 * C, C);
        gelu_backward(s->dfch, s->dfch_16, ACT(A_FCH), s->dfch_gelu, (long)BT * 4 * C);
        if (recompute) {
            layernorm_forward(ACT(A_LN2), ACT16(A_LN2), ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), ACT(A_RESIDUAL2), PAR(P_LN2W),
                              PAR(P_LN2B), BT, C);
        }
        linear_backward(s->dln, GRAD(P_FCW), GRAD(P_FCB), s->partial, s->dfch, s->dfch_16, ACT(A_LN2), ACT16(A_LN2),
                        W(P_FCW), BT, C, 4 * C);
        layernorm_backward(s->dres, s->dres_16, GRAD(P_LN2W), GRAD(P_LN2B), s->partial, s->dln, ACT(A_RESIDUAL2),
                           PAR(P_LN2W), ACT(A_LN2_MEAN), ACT(A_LN2_RSTD), BT, C);
        // now s->dres = d loss / d residual2; residual2 = x + attproj
        linear_backward(s->datty, GRAD(P_ATTPROJW), GRAD(P_ATTPROJB), s->partial, s->dres, s->dres_16, ACT(A_ATTY),
                        ACT16(A_ATTY), W(P_ATTPROJW), BT, C, C);
        attention_backward(s->dqkv, s->datty, ACT(A_ATTY), ACT(A_ATT), ACT(A_QKV), &s->attn, B, T, C, NH);
        if (s->dqkv_16) to_bf16(s->dqkv_16, s->dqkv, (long)BT * 3 * C);
        if (recompute) {
            layernorm_forward(ACT(A_LN1), ACT16(A_LN1), ACT(A_LN1_MEAN), ACT(A_LN1_RSTD), x, PAR(P_LN1W), PAR(P_LN1B),
                              BT, C);
        }
        linear_backward(s->dln, GRAD(P_QKVW), GRAD(P_QKVB), s->partial, s->dqkv, s->dqkv_16, ACT(A_LN1), ACT16(A_LN1),
                        W(P_QKVW), BT, C, 3 * C);
        layernorm_backward(s->dres, s->dres_16, GRAD(P_LN1W), GRAD(P_LN1B), s->partial, s->dln, x, PAR(P_LN1W),
                           ACT(A_LN1_MEAN), ACT(A_LN1_RSTD), BT, C);
        // now s->dres = d loss / d x, the previous block's output
#undef ACT
#undef ACT16
#undef PAR
#undef W
#undef GRAD
    }
    encoder_backward(layer_grad(model, P_WTE, 0), layer_grad(model, P_WPE, 0), s->dres, &model->buckets, B, T, C);
}

// What gpt2_alloc_acts allocated.
static void gpt2_free_acts(GPT2 *model) {
    void *dev[] = {model->row_max,   model->row_sum,   model->d_inputs,  model->d_targets, model->s.partial,
                   model->s.dres,    model->s.dln,     model->s.datty,   model->s.dqkv,    model->s.dfch,
                   model->s.dfch_gelu, model->s.attn.q, model->s.attn.k, model->s.attn.v,  model->s.attn.y,
                   model->s.attn.dq, model->s.attn.dk, model->s.attn.dv, model->s.attn.dy, model->s.attn.datt,
                   model->s.attn.q16, model->s.attn.k16, model->s.attn.v16, model->s.attn.dy16, model->s.attn.p16,
                   model->s.dres_16, model->s.dqkv_16, model->s.dfch_16};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++) cudaCheck(cudaFree(dev[i]));
    for (int a = 0; a < NUM_ACTS; a++) cudaCheck(cudaFree(model->a[a])), cudaCheck(cudaFree(model->a16[a]));
    free(model->inputs), free(model->targets), free(model->h_losses);
    token_buckets_free(&model->buckets);
}

static void gpt2_free(GPT2 *model) {
    void *dev[] = {model->params,       model->grads,  model->m,    model->v,    model->norm_partial, model->params16,
                   model->act_partial,  model->st.ptr, model->st.n, model->st.mu, model->st.partial};
    for (size_t i = 0; i < sizeof(dev) / sizeof(dev[0]); i++) cudaCheck(cudaFree(dev[i]));
    void *host[] = {model->h_params, model->h_m, model->h_v, model->h_norm_partial, model->h_act_partial,
                    model->st.h_partial};
    for (size_t i = 0; i < sizeof(host) / sizeof(host[0]); i++) free(host[i]);
    gpt2_free_acts(model);
    memset(model, 0, sizeof(*model));
}

// ---------------------------------------------------------------------------
// Generation on the GPU: the forward above over one sequence of the model's length,
// once per new token (causal: the padding after the prefix changes nothing). No KV
// cache yet; train_gpt2.c's gpt2_decode is the cached path the tests compare with.

typedef struct {
    GPT2 gen;      // the model's parameters, with activations for 1 x max_seq_len of its own
    int *window;   // (2T) the prefix padded with 0, then zero targets
    float *logits; // (V) the last position's logits, on the host
} Generator;

static void generator_open(Generator *g, const GPT2 *model) {
    g->gen = *model; // shares the parameters; gpt2_alloc_acts replaces only the copy's buffers
    int T = model->config.max_seq_len;
    gpt2_alloc_acts(&g->gen, 1, T);
    g->window = (int *)calloc_check(2 * T, sizeof(int));
    g->logits = (float *)malloc_check(sizeof(float) * model->config.vocab);
}

static void generator_close(Generator *g) {
    gpt2_free_acts(&g->gen);
    free(g->window), free(g->logits);
}

// NextLogits (common/sample.h)
static const float *gpt2_next_logits(void *p, const int *tokens, int n) {
    Generator *g = (Generator *)p;
    int T = g->gen.T, V = g->gen.config.vocab;
    if (n > T) die("internal: generation at position %d, the model's maximum is %d", n, T);
    memset(g->window, 0, sizeof(int) * 2 * T);
    memcpy(g->window, tokens, sizeof(int) * n);
    gpt2_forward(&g->gen, g->window, g->window + T, 1, T, 0);
    cudaCheck(cudaMemcpy(g->logits, g->gen.a[A_LOGITS] + (long)(n - 1) * V, sizeof(float) * V, cudaMemcpyDeviceToHost));
    return g->logits;
}

// ============================================================================
// 4. training: schedule, clipping, AdamW, TVR (docs/methods.md, "The training loop", paper A)
// ============================================================================

__global__ void scale_kernel(float *x, double coef, long n) {
    GRID_STRIDE(i, n) x[i] = (float)(x[i] * coef);
}

// Global gradient norm over all parameters, then clipping as train_gpt2.c's
// (scale by max/(norm + 1e-6) in double when that is below 1). Returns the norm before.
// The sum of squares is common/cuda_dp.h's, in fixed chunks (the same number on any count
// of ranks); with several ranks each holds the step's gradient on its shard only, and
// scales that.
static double clip_grad_norm(GPT2 *model, double max_norm) {
    long np = (long)model->num_params, lo, hi;
    double norm = sqrt(cuda_sum_squares(model->grads, np, model->norm_partial, model->h_norm_partial));
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1) {
            dp_shard(np, &lo, &hi);
            scale_kernel<<<grid_for(hi - lo), BLOCK>>>(model->grads + lo, coef, hi - lo);
            launchCheck();
        }
    }
    return norm;
}

/*
 * PyTorch's AdamW in train_gpt2.c's order of operations and precision (double
 * arithmetic, the moments rounded to float before they are used):
 *   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
 *   p ← p·decay − (lr/bc1)·m / (√v/√bc2 + eps),  decay = 1 − lr·wd on 2-D tensors
 * ZeRO-1: a rank updates its shard [lo, hi) of the parameters, where its m and v are
 * (m[0] is parameter lo's); one rank's shard is everything.
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

static void adamw_update(GPT2 *model, const OptConfig *o, double lr, int step) {
    double bc1 = 1.0 - pow(o->beta1, step), bc2_sqrt = sqrt(1.0 - pow(o->beta2, step));
    long lo, hi;
    dp_shard((long)model->num_params, &lo, &hi);
    for (int p = 0; p < NUM_PARAMS; p++) {
        long a = (long)model->off[p], b = a + (long)param_size(&model->config, p); // the tensor's range
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        if (a >= b) continue;
        double decay = PARAM_INFO[p].decay ? 1.0 - lr * o->weight_decay : 1.0;
        adamw_kernel<<<grid_for(b - a), BLOCK>>>(model->params + a, model->grads + a, model->m + (a - lo),
                                                 model->v + (a - lo), b - a, decay, o->beta1, o->beta2, o->eps,
                                                 lr / bc1, bc2_sqrt);
        launchCheck();
    }
    model->params16_stale = 1;
}

/*
 * Mean and unbiased standard deviation of all L*7 statistics matrices at once,
 * two passes as train_gpt2.c's weight_stats (first the mean, then the squared
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
    cudaCheck(
        cudaMemcpy(st->h_partial, st->partial, sizeof(double) * st->count * MOMENT_CHUNKS, cudaMemcpyDeviceToHost));
    for (int j = 0; j < st->count; j++) {
        double s = 0;
        for (int ch = 0; ch < MOMENT_CHUNKS; ch++) s += st->h_partial[(long)j * MOMENT_CHUNKS + ch];
        out[j] = s;
    }
}

// mean[j], std[j] of statistics matrix j = layer*7 + s, all at once
static void matrix_stats(GPT2 *model, double *mean, double *std) {
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

// W <- (W - mean)*target/std + mean, train_gpt2.c's expression in double.
__global__ void tvr_rescale_kernel(float *w, long n, double mu, double target, double sd) {
    GRID_STRIDE(i, n) w[i] = (float)((w[i] - mu) * target / sd + mu);
}

/*
 * train_gpt2.c's weights_pass on the GPU: the seven statistics matrices of every
 * block, as they are before TVR, one weights.csv row each (all matrices in two
 * launches, matrix_stats), then, if due, TVR (paper A) on the four stored matrices
 * whose std/target is above the threshold; a rescaled module's bias is zeroed, as in
 * the authors' code. Returns the number of matrices rescaled.
 */
static int weights_pass(GPT2 *model, const TvrConfig *tvr, int step, int do_tvr, FILE *csv) {
    int count = model->st.count, total = 0;
    double *mean = (double *)malloc_check(sizeof(double) * count),
           *std = (double *)malloc_check(sizeof(double) * count);
    matrix_stats(model, mean, std);
    for (int l = 0; l < model->config.layers; l++) {
        int rescaled[NUM_BLOCK_MATRICES] = {0};
        double target = tvr_target_for_layer(tvr, l + 1);
        for (int k = 0; do_tvr && k < NUM_BLOCK_MATRICES; k++) {
            rescaled[k] = std[unit_stat_index(l, k)] / target > tvr->threshold;
        }
        for (int s = 0; csv && s < NUM_STAT_MATRICES; s++) {
            int unit = s < 3 ? 0 : s - 3, j = l * NUM_STAT_MATRICES + s;
            fprintf(csv, "%d,%d,%s,%.9g,%.9g,%d\n", step, l + 1, STAT_MATRIX_NAME[s], mean[j], std[j], rescaled[unit]);
        }
        for (int k = 0; k < NUM_BLOCK_MATRICES; k++) {
            if (!rescaled[k]) continue;
            int p = BLOCK_MATRIX_PARAM[k], pb = BLOCK_MATRIX_BIAS[k], j = unit_stat_index(l, k);
            long n = (long)param_slice_size(&model->config, p);
            tvr_rescale_kernel<<<grid_for(n), BLOCK>>>(layer_param(model, p, l), n, mean[j], target, std[j]);
            launchCheck();
            model->params16_stale = 1;
            cudaCheck(cudaMemset(layer_param(model, pb, l), 0, param_slice_size(&model->config, pb) * sizeof(float)));
            total++;
        }
    }
    if (csv) fflush(csv);
    free(mean), free(std);
    return total;
}


// ============================================================================
// 5. E3 statistics (docs/methods.md, E3): c_attn also as its three C×C parts q, k, v
// ============================================================================

// Mean and unbiased (n-1) standard deviation of n numbers (host; for the histogram's matrix).
static void weight_stats(const float *x, size_t n, double *mean, double *std) {
    double s = 0, ss = 0;
    for (size_t i = 0; i < n; i++) s += x[i];
    double mu = s / n;
    for (size_t i = 0; i < n; i++) ss += (x[i] - mu) * (x[i] - mu);
    *mean = mu;
    *std = n > 1 ? sqrt(ss / (n - 1)) : 0;
}

// hist.csv and hist_summary.csv, exactly train_gpt2.c's (one matrix, copied to the
// host; the rows: hist_rows in common/gpt2_run.h).
static void log_hist(FILE *fh, FILE *fs, GPT2 *model, int step, int layer, int s, double range) {
    size_t n = 0;
    int unit = 0;
    const float *dw = stat_matrix(model, model->params, layer - 1, s, &n, &unit);
    float *w = (float *)malloc_check(n * sizeof(float));
    cudaCheck(cudaMemcpy(w, dw, n * sizeof(float), cudaMemcpyDeviceToHost));
    double mu, sd;
    weight_stats(w, n, &mu, &sd);
    hist_rows(fh, fs, w, sizeof(float), n, mu, sd, step, layer, STAT_MATRIX_NAME[s], range);
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
static void activations_log(GPT2 *model, int step, FILE *f) {
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
        fprintf(f, "%d,%d,%.9g,%.9g\n", step, l + 1, mx, sqrt(ss / n));
    }
    fflush(f);
}

// Mean loss over the first n batches of a loader (which is reset first); with several
// ranks, rank r computes a run of them (cuda_val_split) and the batch losses are added in order.
static double evaluate(GPT2 *model, DataLoader *dl, int n) {
    dataloader_reset(dl);
    long off[DP_CHUNKS + 1];
    cuda_val_split(n, off);
    double *loss = (double *)calloc_check(n, sizeof(double)), s = 0;
    for (int i = 0; i < off[dp.rank + 1]; i++) {
        dataloader_next(dl);
        if (i < off[dp.rank]) continue;
        gpt2_forward(model, dl->inputs, dl->targets, dl->B, dl->T, 0);
        loss[i] = model->mean_loss;
    }
    cuda_share_doubles(loss, off);
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
 * As train_gpt2.c's train_step_k (docs/parallel.md): the loader holds the step's global
 * batch; this rank's micro-step k of K = --grad-accum is its rows (rank*K + k)*B onwards.
 * Each micro-step's gradient (the mean over its B*T rows) is summed in order on the
 * device, then common/cuda_dp.h adds the ranks' sums in rank order and divides by N*K,
 * on this rank's shard. The loss is the mean of the N*K micro-batch losses. acts:
 * activations.csv for the first micro-step, or NULL.
 */
static void train_step_k(GPT2 *model, const OptConfig *opt, DataLoader *dl, int step, int K, FILE *acts,
                         StepResult *res) {
    dataloader_next(dl);
    int B = model->B, T = model->T;
    double *loss = (double *)calloc_check((size_t)dp.ranks * K, sizeof(double));
    const float *sum = model->grads;
    for (int k = 0; k < K; k++) {
        long row = ((long)dp.rank * K + k) * B * T;
        gpt2_forward(model, dl->inputs + row, dl->targets + row, B, T, model->fuse_classifier);
        if (k == 0 && acts) activations_log(model, step, acts);
        gpt2_backward(model); // zeroes model->grads first
        loss[dp.rank * K + k] = model->mean_loss;
        if (K > 1) sum = cuda_accumulate(model->grads, (long)model->num_params, k);
    }
    cuda_reduce_grads(sum, model->grads, (long)model->num_params, 1.0 / (dp.ranks * K));
    res->loss = cuda_mean_loss(loss, K);
    free(loss);
    res->grad_norm = clip_grad_norm(model, opt->grad_clip);
    res->lr = lr_at(opt, step);
}

// ============================================================================
// 6. state.bin, the command line, the training loop, main
// ============================================================================

// state.bin, train_gpt2.c's format (common/train.h), so a run moves between the
// programs; written and read through the host mirrors.
#define STATE_MAGIC 20261124
#define STATE_VERSION 2

// With several ranks rank 0 gathers the shards of m and v and writes the file alone: the
// one a single rank writes, whatever N.
static void state_save(GPT2 *model, const TrainState *st, const char *path) {
    long np = (long)model->num_params;
    gpt2_params_to_host(model);
    cuda_gather_shards(model->m, np, model->h_m);
    cuda_gather_shards(model->v, np, model->h_v);
    if (dp.rank > 0) return;
    AtomicFile af;
    atomic_open(&af, path);
    state_write_header(af.f, af.tmp, STATE_MAGIC, STATE_VERSION, st, np);
    write_floats(af.f, model->h_params, sizeof(float), np, af.tmp);
    write_floats(af.f, model->h_m, sizeof(float), np, af.tmp);
    write_floats(af.f, model->h_v, sizeof(float), np, af.tmp);
    atomic_commit(&af);
}

// Every rank reads the parameters and its own shard of m and v (all of them, alone).
static void state_load(GPT2 *model, TrainState *st, const char *path) {
    long np = (long)model->num_params, lo, hi;
    dp_shard(np, &lo, &hi);
    FILE *f = state_open(path, STATE_MAGIC, STATE_VERSION, "train_gpt2", np, st);
    read_payload(f, model->h_params, sizeof(float), np, path, "parameters");
    read_payload(f, model->h_m, sizeof(float), np, path, "AdamW's m");
    read_payload(f, model->h_v, sizeof(float), np, path, "AdamW's v");
    fclose(f);
    gpt2_params_to_device(model);
    cudaCheck(cudaMemcpy(model->m, model->h_m + lo, sizeof(float) * (hi - lo), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->v, model->h_v + lo, sizeof(float) * (hi - lo), cudaMemcpyHostToDevice));
}

#ifndef TESTING
// The command line: train_gpt2.c's (settings_parse in common/gpt2_run.h), plus --tf32.
static const char *USAGE =
    "usage: train_gpt2_cu [flags]\n"
    "Train GPT-2 on one NVIDIA GPU (llm.c checkpoint and shard formats) with LIR/TVR and E3 statistics.";

#endif // TESTING

// The model's shape and host mirror from --resume, --init-from or the flags (fresh:
// initialised on the host); returns the sequence length to train with (--seq-len, or
// the checkpoint's if shorter and the flag not given). No GPU touched yet.
static int build_model_host(GPT2 *model, const Settings *s, int seq_len_given, const int shape_given[4], Rng *rng) {
    char path[4200];
    if (s->resume || s->init_from) {
        gpt2_load_host(model, s->resume ? run_file(path, sizeof(path), s->resume, "model.bin") : s->init_from);
        return checkpoint_seq_len(s, seq_len_given, shape_given, &model->config);
    }
    model->config = config_from_settings(s);
    gpt2_alloc_host(model);
    gpt2_init_host(model, s->init, s->init_std, rng);
    return s->seq_len;
}

// every rank takes part (state_save gathers AdamW's shards); rank 0 writes
static void save_checkpoint(GPT2 *model, const TrainState *st, const char *dir) {
    gpt2_params_to_host(model);
    check_finite_params(model->h_params, sizeof(float), (long)model->num_params, dir);
    char path[4200];
    if (dp.rank == 0) gpt2_save_host(model, run_file(path, sizeof(path), dir, "model.bin")); // the mirror just copied
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

// The weights the matmuls read, for MFU: the block matrices and the lm_head's V rows of wte
// (the embeddings' lookups, the biases and the LayerNorms left out).
static double gpt2_matmul_params(const GPT2Config *c) {
    double n = (double)c->vocab * c->channels;
    for (int i = 0; i < NUM_BLOCK_MATRICES; i++) n += (double)param_size(c, BLOCK_MATRIX_PARAM[i]);
    return n;
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
    if (lead) mfu_setup(&logs, gpt2_matmul_params(&model->config), model->config.layers, model->config.channels,
                        model->T, precision_bf16 ? "bf16" : s->tf32 ? "tf32" : "fp32");
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
            cuda_allgather_params(model->params, (long)model->num_params);
        }
        int do_tvr = !skip && tvr_due(&tvr, step);
        if (do_tvr) cudaCheck(cudaDeviceSynchronize()); // time TVR's pass alone
        double t_tvr = wall_seconds();
        if (do_tvr || (!skip && stats_due(s->stats_every, step))) stats_pass(model, s, &tvr, &logs, step, do_tvr);
        cudaCheck(cudaDeviceSynchronize()); // the step's time includes its last kernel
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
            Generator g;
            generator_open(&g, model);
            sample_run(&g, gpt2_next_logits, model->config.max_seq_len, s, tok, step);
            generator_close(&g);
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
    int seq_len_given = settings_parse(&s, argc, argv, USAGE, 1, shape_given);
    precision_bf16 = strcmp(s.precision, "bf16") == 0; // (settings_parse allows fp32 and bf16)
    if (precision_bf16 && s.tf32) usage_error("--precision bf16 and --tf32 1: bf16 matmuls take no TF32; pick one");
    Rng rng;
    rng_seed(&rng, (uint64_t)s.seed);
    GPT2 model;
    memset(&model, 0, sizeof(model));
    if (s.generate > 0) { // --init-from's model, no data, no training
        gpt2_load_host(&model, s.init_from);
        attention_setup(&s, model.config.channels, model.config.heads);
        Tokenizer tok;
        load_tokenizer(&s, model.config.vocab, &tok); // a misfit is an error here
        gpu_dp_setup(s.tf32, "train_gpt2");
        gpt2_alloc_device(&model);
        gpt2_params_to_device(&model);
        if (s.kv_cache) printf("note: the GPU program has no KV cache yet: each token recomputes the prefix\n");
        Generator g;
        generator_open(&g, &model);
        generate_run(&g, gpt2_next_logits, model.config.max_seq_len, &s, &tok,
                     "on the GPU, the prefix recomputed per token");
        generator_close(&g);
        tokenizer_free(&tok);
        gpt2_free(&model);
        cuda_dp_free();
        return 0;
    }
    if (s.resume) seq_len_given = gpt2_resume_settings(&s, seq_len_given, STATE_MAGIC);
    int T = build_model_host(&model, &s, seq_len_given, shape_given, &rng);
    attention_setup(&s, model.config.channels, model.config.heads);
    recompute = s.recompute;
    s.seq_len = T; // what the run uses (at most the checkpoint's), as state.bin records it
    Tokenizer tok_store, *tok = load_tokenizer(&s, model.config.vocab, &tok_store);
    // data first: a bad shard is reported before any work is done (and before the GPU is touched)
    DataLoader train_dl, val_dl;
    data_open(&s, &train_dl, &val_dl, T, model.config.vocab);
    if (dp.rank == 0) ensure_dir(s.out);
    gpu_dp_setup(s.tf32, "train_gpt2");
    gpu_memory_check(&s, gpt2_memory(&model.config, s.batch, T) + cuda_dp_memory((long)model.num_params, s.grad_accum));
    gpt2_alloc_device(&model);
    gpt2_params_to_device(&model);
    gpt2_alloc_acts(&model, s.batch, T);
    // RESCALE_FUSED_CLASSIFIER=0: the two-kernel classifier in training too (the tests' check
    // that fusing changes no bit)
    const char *fuse = getenv("RESCALE_FUSED_CLASSIFIER");
    model.fuse_classifier = !(fuse && strcmp(fuse, "0") == 0);
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
        gpt2_params_to_host(&model);
        uint64_t h = dp_hash(DP_HASH0, model.h_params, sizeof(float) * model.num_params);
        long where[4] = {st.step, st.shard, st.pos, global_batch(&s) * T};
        dp_check_same("model, step or data position", dp_hash(h, where, sizeof(where)));
    }
    const GPT2Config *c = &model.config;
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, gpu_device));
    printf("GPT-2: L %d, NH %d, C %d, V %d (padded %d), max T %d; %zu parameters; B %d, T %d; %s, %s\n", c->layers,
           c->heads, c->channels, c->vocab, c->padded_vocab, c->max_seq_len, model.num_params, s.batch, T, prop.name,
           precision_bf16 ? "bf16" : s.tf32 ? "tf32" : "fp32");
    if (precision_bf16) {
        printf("matmuls: bf16 (cuBLAS, CUDA_R_16BF inputs, fp32 sums and outputs; %.3f GiB of bf16 copies)\n",
               gpt2_memory_bf16(c, s.batch, T) / (1024.0 * 1024 * 1024));
    }
    if (dp.ranks > 1 || s.grad_accum > 1) {
        printf("data parallel: %d ranks x %d micro-steps x B %d = %ld rows a step%s\n", dp.ranks, s.grad_accum,
               s.batch, global_batch(&s), dp.ranks > 1 ? " | NCCL, one GPU a rank | ZeRO-1: AdamW's m, v sharded" : "");
    }
    train(&model, &s, &train_dl, have_val(&s) ? &val_dl : NULL, &st, tok);
    data_close(&s, &train_dl, &val_dl);
    if (tok) tokenizer_free(tok);
    gpt2_free(&model);
    cuda_dp_free();
    cublasCheck(cublasDestroy(cublas_handle));
    return 0;
}
#endif // TESTING
