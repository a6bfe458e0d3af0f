/*
 * train_llama.cu: train a LLaMA on one NVIDIA GPU, with Layer Index Rescaling
 * (LIR) at initialisation and Target Variance Rescaling (TVR) during training.
 *
 * This is the GPU twin of train_llama.c, which is the specification: the same
 * flags, the same CSV logs, the same model.bin and state.bin, and the same
 * function names, so that the two files can be read side by side. Where the
 * CPU file has a loop, this file has a kernel (or a cuBLAS call) of the same
 * name. It reads top to bottom:
 *
 *   1. CUDA helpers and the matmul (cuBLAS, fp32; TF32 with --tf32 1)
 *   2. the layers: each *_forward / *_backward pair as kernels
 *   3. the model: the parameter table, activations, init, forward, backward,
 *      checkpoints (parameters live on the GPU; a host mirror for the files)
 *   4. the optimizer: schedule, global gradient norm, clipping, AdamW
 *   5. TVR and the weight/activation statistics
 *   6. training: logs, state.bin, validation, the micro-steps, main
 *
 * Several GPUs: built with -DUSE_MPI (make train_llama_cu_mpi) it runs as N ranks
 * under mpirun, one GPU each, as train_llama.c's MPI build does: --grad-accum K
 * micro-steps a rank, the gradients reduced over NCCL in rank order, AdamW's moments
 * sharded (ZeRO-1). common/cuda_dp.h has the exchanges; docs/parallel.md the rules.
 *
 * Precision: fp32 by default. Activations have their own type, floatX, and the
 * parameters, gradients and AdamW moments are fp32 ("master weights"). With
 * --precision bf16, train_llama.c's bf16 recipe (docs/perf.md, "bf16 on the CPU"):
 * every matmul reads its two inputs in bf16 (cuBLAS's CUDA_R_16BF, fp32 sums, fp32
 * output), rounded as the CPU rounds them. The inputs come from bf16 copies: of the
 * weights (params16, refreshed before a forward after they change), and of each
 * activation or gradient a matmul reads, written by the kernel that makes it (the
 * *16 pointers; NULL in fp32). Everything else stays fp32 (docs/gpu.md, "bf16").
 *
 * Determinism: no kernel adds into memory with atomics. Every reduction over
 * many threads (the RMSNorm gains' gradient, the embedding's gradient, norms,
 * TVR's statistics) sums fixed chunks in a fixed order, so two runs with the
 * same seed give the same bits on the same GPU.
 *
 * Build: make train_llama_cu   Run: ./train_llama_cu --help
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "llama_run.h" // LlamaConfig, model.bin's header, the command line
#include "train.h"     // settings, schedules, state.bin, logs
#include "utils.h"

// The activation type. Parameters, gradients and AdamW state are always float.
typedef float floatX;
#define CUBLAS_FLOATX CUDA_R_32F

// ============================================================================
// 1. CUDA helpers and the matmul
// ============================================================================

#include "cuda_attention.h" // flash attention: no T x T matrix (--attention flash, the default)
#include "cuda_common.h"    // checked calls, reductions, gemm_batched() over cuBLAS
#include "cuda_train.h"     // the GPU flags and set-up, token buckets
#include "cuda_dp.h"        // several ranks: gradient accumulation, NCCL, ZeRO-1 (docs/parallel.md)

// ============================================================================
// 2. the layers
// ============================================================================
// N = B*T rows; every *_backward adds into parameter gradients (+=).

// ---------------------------------------------------------------------------
// token embedding

__global__ void encoder_forward_kernel(floatX *out, const int *tokens, const float *emb, int N, int C) {
    long n = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        long row = i / C;
        int c = (int)(i % C);
        out[i] = (floatX)emb[(long)tokens[row] * C + c];
    }
}

static void encoder_forward(floatX *out, const int *tokens, const float *emb, int N, int C) {
    encoder_forward_kernel<<<grid_for((long)N * C), BLOCK>>>(out, tokens, emb, N, C);
    launchCheck();
}

/*
 * Two positions with the same token add into the same row of demb. Instead of
 * atomics (whose order, and so whose rounding, changes from run to run) the
 * host sorts the batch's positions by token (a counting sort, when the tokens
 * arrive: see TokenBuckets in common/cuda_train.h) and one block owns each distinct token: it adds
 * that token's positions in ascending order, the order of train_llama.c's
 * serial loop, so the sums are bit-identical to the CPU's for identical dout.
 */
__global__ void encoder_backward_kernel(float *demb, const floatX *dout, const int *bucket_token,
                                        const int *bucket_start, const int *bucket_pos, int C) {
    int b = blockIdx.x;
    int c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *row = demb + (long)bucket_token[b] * C;
    float acc = row[c];
    for (int p = bucket_start[b]; p < bucket_start[b + 1]; p++) acc += (float)dout[(long)bucket_pos[p] * C + c];
    row[c] = acc;
}

static void encoder_backward(float *demb, const floatX *dout, const TokenBuckets *tb, int C) {
    dim3 grid(tb->count, ceil_div(C, BLOCK));
    encoder_backward_kernel<<<grid, BLOCK>>>(demb, dout, tb->token, tb->start, tb->pos, C);
    launchCheck();
}

// ---------------------------------------------------------------------------
// RMSNorm: one warp per row

// out = x / sqrt(mean(x^2) + eps) * gain; rstd keeps 1/sqrt(...) for backward; out16 (or
// NULL) gets out in bf16
__global__ void rmsnorm_forward_kernel(floatX *out, bf16 *out16, float *rstd, const floatX *inp, const float *gain,
                                       int N, int C, float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return; // whole warps leave together: N rows, 32 lanes each
    const floatX *x = inp + (long)row * C;
    float ss = 0;
    for (int c = lane; c < C; c += 32) ss += (float)x[c] * (float)x[c];
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    floatX *o = out + (long)row * C;
    for (int c = lane; c < C; c += 32) o[c] = (floatX)((float)x[c] * r * gain[c]);
    if (out16) {
        for (int c = lane; c < C; c += 32) out16[(long)row * C + c] = bf16_round((float)o[c]);
    }
    if (lane == 0) rstd[row] = r;
}

static void rmsnorm_forward(floatX *out, bf16 *out16, float *rstd, const floatX *inp, const float *gain, int N, int C,
                            float eps) {
    rmsnorm_forward_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(out, out16, rstd, inp, gain, N, C, eps);
    launchCheck();
}

// With xhat = x*r: dx = r*(g*dy) - x * r^3/C * sum(g*dy*x). dinp is accumulated (+=);
// dinp16 (or NULL) gets the sum in bf16.
__global__ void rmsnorm_backward_dinp_kernel(floatX *dinp, bf16 *dinp16, const floatX *dout, const floatX *inp,
                                             const float *gain, const float *rstd, int N, int C) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const floatX *x = inp + (long)row * C, *dy = dout + (long)row * C;
    float r = rstd[row];
    float s = 0;
    for (int c = lane; c < C; c += 32) s += gain[c] * (float)dy[c] * (float)x[c];
    s = warp_sum(s);
    float k = s * r * r * r / C;
    floatX *dx = dinp + (long)row * C;
    for (int c = lane; c < C; c += 32) dx[c] = (floatX)((float)dx[c] + r * gain[c] * (float)dy[c] - k * (float)x[c]);
    if (dinp16) {
        for (int c = lane; c < C; c += 32) dinp16[(long)row * C + c] = bf16_round((float)dx[c]);
    }
}

// dgain sums dy*x*r over all N rows. Deterministically in two steps: each of
// GAIN_CHUNKS blocks of rows sums its rows per channel into partial[chunk][c],
// then the chunks are added in order.
#define GAIN_CHUNKS 32
__global__ void rmsnorm_backward_dgain_partial_kernel(float *partial, const floatX *dout, const floatX *inp,
                                                      const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int lo = (int)((long)N * chunk / GAIN_CHUNKS), hi = (int)((long)N * (chunk + 1) / GAIN_CHUNKS);
    float s = 0;
    for (int i = lo; i < hi; i++) s += (float)dout[(long)i * C + c] * (float)inp[(long)i * C + c] * rstd[i];
    partial[(long)chunk * C + c] = s;
}
__global__ void rmsnorm_backward_dgain_sum_kernel(float *dgain, const float *partial, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int ch = 0; ch < GAIN_CHUNKS; ch++) s += partial[(long)ch * C + c];
    dgain[c] += s;
}

static void rmsnorm_backward(floatX *dinp, bf16 *dinp16, float *dgain, float *scratch /* GAIN_CHUNKS*C */,
                             const floatX *dout, const floatX *inp, const float *gain, const float *rstd, int N,
                             int C) {
    rmsnorm_backward_dinp_kernel<<<ceil_div((long)N * 32, BLOCK), BLOCK>>>(dinp, dinp16, dout, inp, gain, rstd, N, C);
    launchCheck();
    rmsnorm_backward_dgain_partial_kernel<<<dim3(ceil_div(C, BLOCK), GAIN_CHUNKS), BLOCK>>>(scratch, dout, inp, rstd,
                                                                                           N, C);
    launchCheck();
    rmsnorm_backward_dgain_sum_kernel<<<ceil_div(C, BLOCK), BLOCK>>>(dgain, scratch, C);
    launchCheck();
}

// ---------------------------------------------------------------------------
// RoPE, llama2.c's convention: within each head the pair (2i, 2i+1) at position
// t turns by the angle t * theta^(-2i/hs). cos_t/sin_t are (T, hs/2) tables.
// x is (B, T, nheads, hs). The backward turns by the opposite angle.

// x16 (or NULL) gets the result in bf16
__global__ void rope_rotate_kernel(floatX *x, bf16 *x16, const float *cos_t, const float *sin_t, int B, int T,
                                   int nheads, int hs, float sign) {
    int half = hs / 2;
    long npairs = (long)B * T * nheads * half;
    for (long p = blockIdx.x * (long)blockDim.x + threadIdx.x; p < npairs; p += (long)gridDim.x * blockDim.x) {
        int i = (int)(p % half);
        long bth = p / half;       // (b*T + t)*nheads + h
        int t = (int)(bth / nheads % T);
        float c = cos_t[(long)t * half + i], s = sign * sin_t[(long)t * half + i];
        floatX *v = x + bth * hs;
        float v0 = (float)v[2 * i], v1 = (float)v[2 * i + 1];
        v[2 * i] = (floatX)(v0 * c - v1 * s);
        v[2 * i + 1] = (floatX)(v0 * s + v1 * c);
        if (x16) {
            x16[bth * hs + 2 * i] = bf16_round((float)v[2 * i]);
            x16[bth * hs + 2 * i + 1] = bf16_round((float)v[2 * i + 1]);
        }
    }
}

static void rope_forward(floatX *x, const float *cos_t, const float *sin_t, int B, int T, int nh, int hs) {
    rope_rotate_kernel<<<grid_for((long)B * T * nh * hs / 2), BLOCK>>>(x, nullptr, cos_t, sin_t, B, T, nh, hs, 1.0f);
    launchCheck();
}
// dx16 (or NULL): dx in bf16, for the projections' backward
static void rope_backward(floatX *dx, bf16 *dx16, const float *cos_t, const float *sin_t, int B, int T, int nh,
                          int hs) {
    rope_rotate_kernel<<<grid_for((long)B * T * nh * hs / 2), BLOCK>>>(dx, dx16, cos_t, sin_t, B, T, nh, hs, -1.0f);
    launchCheck();
}

// ---------------------------------------------------------------------------
// Attention, as matmuls + a causal softmax kernel. The projections are
// (B,T,nh,hs); the batched matmuls want one head's (T,hs) block contiguous, so
// q, k, v are permuted to (B,nh,T,hs) first, and the output permuted back. In bf16
// the permuted copies of the matmuls' inputs are bf16 (Dst = bf16).

template <typename Dst>
__global__ void permute_to_heads_kernel(Dst *dst, const floatX *src, int B, int T, int nh, int hs) {
    long n = (long)B * nh * T * hs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % hs);
        int t = (int)(i / hs % T);
        int h = (int)(i / ((long)hs * T) % nh);
        long b = i / ((long)hs * T * nh);
        store_as(dst + i, (float)src[((b * T + t) * nh + h) * hs + d]); // dst (B,nh,T,hs) <- src (B,T,nh,hs)
    }
}
__global__ void permute_from_heads_kernel(floatX *dst, const floatX *src, int B, int T, int nh, int hs) {
    long n = (long)B * nh * T * hs;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        int d = (int)(i % hs);
        int t = (int)(i / hs % T);
        int h = (int)(i / ((long)hs * T) % nh);
        long b = i / ((long)hs * T * nh);
        dst[((b * T + t) * nh + h) * hs + d] = src[i]; // dst (B,T,nh,hs) <- src (B,nh,T,hs)
    }
}
template <typename Dst>
static void permute_to_heads(Dst *dst, const floatX *src, int B, int T, int nh, int hs) {
    permute_to_heads_kernel<Dst><<<grid_for((long)B * T * nh * hs), BLOCK>>>(dst, src, B, T, nh, hs);
    launchCheck();
}
// q (NH heads), k and v (NKV heads) into their head-major copies: what both directions start with
template <typename Dst>
static void permute_qkv_to_heads(Dst *qp, Dst *kp, Dst *vp, const floatX *q, const floatX *k, const floatX *v, int B,
                                 int T, int NH, int NKV, int hs) {
    permute_to_heads(qp, q, B, T, NH, hs);
    permute_to_heads(kp, k, B, T, NKV, hs);
    permute_to_heads(vp, v, B, T, NKV, hs);
}
static void permute_from_heads(floatX *dst, const floatX *src, int B, int T, int nh, int hs) {
    permute_from_heads_kernel<<<grid_for((long)B * T * nh * hs), BLOCK>>>(dst, src, B, T, nh, hs);
    launchCheck();
}

// In place over att (B*NH*T rows of T): row t of a head becomes
// softmax(scale * row[0..t]) and zeros after t. One warp per row. att16 (or NULL) gets the
// probabilities in bf16.
__global__ void softmax_causal_forward_kernel(floatX *att, bf16 *att16, int rows, int T, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    floatX *a = att + (long)row * T;
    float maxv = -INFINITY;
    for (int t2 = lane; t2 <= t; t2 += 32) maxv = fmaxf(maxv, (float)a[t2] * scale);
    maxv = warp_max(maxv);
    float sum = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) sum += expf((float)a[t2] * scale - maxv);
    sum = warp_sum(sum);
    float inv = 1.0f / sum;
    for (int t2 = lane; t2 < T; t2 += 32) {
        a[t2] = t2 <= t ? (floatX)(expf((float)a[t2] * scale - maxv) * inv) : (floatX)0;
        if (att16) att16[(long)row * T + t2] = bf16_round((float)a[t2]);
    }
}

// In place over datt: dpre = a * (datt - sum(a * datt)) * scale on t2 <= t, zero after.
// dpre16 (or NULL) gets dpre in bf16.
__global__ void softmax_causal_backward_kernel(floatX *datt, bf16 *dpre16, const floatX *att, int rows, int T,
                                               float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    int t = row % T;
    const floatX *a = att + (long)row * T;
    floatX *d = datt + (long)row * T;
    float s = 0;
    for (int t2 = lane; t2 <= t; t2 += 32) s += (float)a[t2] * (float)d[t2];
    s = warp_sum(s);
    for (int t2 = lane; t2 < T; t2 += 32) {
        d[t2] = t2 <= t ? (floatX)((float)a[t2] * ((float)d[t2] - s) * scale) : (floatX)0;
        if (dpre16) dpre16[(long)row * T + t2] = bf16_round((float)d[t2]);
    }
}

/*
 * Causal self-attention with grouped-query heads: q (B,T,NH,hs), k and v
 * (B,T,NKV,hs); query head h reads kv head h / (NH/NKV). att (B,NH,T,T) keeps
 * the probabilities for the backward; out is (B,T,NH,hs).
 *
 * GQA without copying k and v per query head: number the query heads of kv head
 * kvh as kvh*group + g. For a fixed g, the (b, kvh) pairs step through the
 * permuted q by group*T*hs and through k by T*hs: one strided batched matmul of
 * B*NKV products per g. The five products below are all the attention's matmuls;
 * in each, "x" is (B,NH,T,hs) or (B,NH,T,T), one block per query head, and "kv"
 * is (B,NKV,T,hs), one block per kv head.
 */

// (In: floatX, or bf16 with --precision bf16; the outputs are floatX)
// s = x . kv^T per query head: the scores q.k^T, and datt = dy.v^T in the backward
template <typename In>
static void attn_x_kvT(floatX *s, const In *x, const In *kv, int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 1, T, T, hs, x + g * th, hs, group * th, kv, hs, th, s + g * tt, T, group * tt, B * NKV, 0);
    }
}

// y = p . kv per query head (p a (T,T) block): y = att.v, and dq = dpre.k in the backward
template <typename In>
static void attn_p_kv(floatX *y, const In *p, const In *kv, int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    for (int g = 0; g < group; g++) {
        gemm_batched(0, 0, T, hs, T, p + g * tt, T, group * tt, kv, hs, th, y + g * th, hs, group * th, B * NKV, 0);
    }
}

// dkv = sum over the group of p^T . x: dv = sum att^T.dy and dk = sum dpre^T.q. The
// first g overwrites, the others accumulate (beta = 1), in order: deterministic.
template <typename In>
static void attn_pT_x(floatX *dkv, const In *p, const In *x, int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    long th = (long)T * hs, tt = (long)T * T;
    for (int g = 0; g < group; g++) {
        gemm_batched(1, 0, T, hs, T, p + g * tt, T, group * tt, x + g * th, hs, group * th, dkv, hs, th, B * NKV,
                     g > 0);
    }
}

// the permuted copies and the backward's scratch, reused layer after layer
typedef struct {
    floatX *qp, *kp, *vp; // (B,NH,T,hs), (B,NKV,T,hs), (B,NKV,T,hs); fp32 only
    floatX *yp;           // (B,NH,T,hs) output (forward) or d output (backward, fp32 only)
    floatX *dqp, *dkp, *dvp;
    floatX *datt;         // (B,NH,T,T)
    bf16 *qp16, *kp16, *vp16, *yp16; // bf16 only: the matmuls' inputs q, k, v, d output
    bf16 *p16;            // bf16 only: (B,NH,T,T) the probabilities, then the scores' gradient
} AttnScratch;

// attention_flash and attention_att_size(): common/cuda_train.h
/*
 * --attention matmul: the products on In = floatX (fp32) or on bf16 copies of their inputs
 * (the CPU's roundings), one code for both. qp, kp, vp (and yp) take the head-major copies of
 * q, k, v (and dout) in In. Forward: p is what p.v reads, att itself or its bf16 copy p16,
 * which the softmax writes beside att (nullptr: none).
 */
template <typename In>
static void attention_matmul_forward(floatX *out, floatX *att, const floatX *q, const floatX *k, const floatX *v,
                                     In *qp, In *kp, In *vp, bf16 *p16, const In *p, AttnScratch *w, int B, int T,
                                     int NH, int NKV, int hs) {
    int rows = B * NH * T;
    float scale = (float)(1.0 / sqrt((double)hs));
    permute_qkv_to_heads(qp, kp, vp, q, k, v, B, T, NH, NKV, hs);
    attn_x_kvT(att, qp, kp, B, T, NH, NKV, hs); // unscaled scores; the softmax scales
    softmax_causal_forward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(att, p16, rows, T, scale);
    launchCheck();
    attn_p_kv(w->yp, p, vp, B, T, NH, NKV, hs);
    permute_from_heads(out, w->yp, B, T, NH, hs);
}

// Backward: p is the probabilities the products read (att, or its bf16 copy); the softmax's
// backward writes dpre over w->datt and, when dpre16 is given, a bf16 copy there; dpre is what
// the products through q.k^T read (w->datt or that copy).
template <typename In>
static void attention_matmul_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout, const floatX *q,
                                      const floatX *k, const floatX *v, const floatX *att, In *qp, In *kp, In *vp,
                                      In *yp, const In *p, bf16 *dpre16, const In *dpre, AttnScratch *w, int B, int T,
                                      int NH, int NKV, int hs) {
    int rows = B * NH * T;
    float scale = (float)(1.0 / sqrt((double)hs));
    permute_qkv_to_heads(qp, kp, vp, q, k, v, B, T, NH, NKV, hs);
    permute_to_heads(yp, dout, B, T, NH, hs);
    // through y = att . v
    attn_x_kvT(w->datt, yp, vp, B, T, NH, NKV, hs);
    attn_pT_x(w->dvp, p, yp, B, T, NH, NKV, hs);
    // through the softmax: dpre = att * (datt - sum(att * datt)) * scale, in place
    softmax_causal_backward_kernel<<<ceil_div((long)rows * 32, BLOCK), BLOCK>>>(w->datt, dpre16, att, rows, T, scale);
    launchCheck();
    // through pre = q . k^T
    attn_p_kv(w->dqp, dpre, kp, B, T, NH, NKV, hs);
    attn_pT_x(w->dkp, dpre, qp, B, T, NH, NKV, hs);
    permute_from_heads(dq, w->dqp, B, T, NH, hs);
    permute_from_heads(dk, w->dkp, B, T, NKV, hs);
    permute_from_heads(dv, w->dvp, B, T, NKV, hs);
}

static void attention_forward(floatX *out, floatX *att, const floatX *q, const floatX *k, const floatX *v,
                              AttnScratch *w, int B, int T, int NH, int NKV, int hs) {
    if (attention_flash) {
        long C = (long)NH * hs, KVD = (long)NKV * hs;
        if (attention_cudnn) return cudnn_attention_forward(out, (float *)att, q, k, v, B, T, NH, NKV, hs, C, KVD, C);
        if (!flash_attention_forward(out, (float *)att, q, k, v, B, T, NH, NKV, hs, C, KVD, C, precision_bf16)) {
            die("--attention flash: head size %d is over %d (use --attention matmul)", hs, FA_MAX_HS);
        }
        launchCheck();
        return;
    }
    if (precision_bf16) { // the CPU's roundings: q and k for the scores, p and v for p.v
        attention_matmul_forward(out, att, q, k, v, w->qp16, w->kp16, w->vp16, w->p16, (const bf16 *)w->p16, w, B, T,
                                 NH, NKV, hs);
    } else {
        attention_matmul_forward(out, att, q, k, v, w->qp, w->kp, w->vp, nullptr, (const floatX *)att, w, B, T, NH,
                                 NKV, hs);
    }
}

// Overwrites dq, dk, dv.
static void attention_backward(floatX *dq, floatX *dk, floatX *dv, const floatX *dout, const floatX *out,
                               const floatX *q, const floatX *k, const floatX *v, const floatX *att, AttnScratch *w,
                               int B, int T, int NH, int NKV, int hs) {
    if (attention_flash) { // w->datt is (B,NH,T) here: D = rowsum(dout * out)
        long C = (long)NH * hs, KVD = (long)NKV * hs;
        if (attention_cudnn) {
            return cudnn_attention_backward(dq, dk, dv, dout, out, (const float *)att, q, k, v, B, T, NH, NKV, hs, C,
                                            KVD, C, C, KVD);
        }
        flash_attention_backward(dq, dk, dv, (float *)w->datt, dout, out, (const float *)att, q, k, v, B, T, NH, NKV,
                                 hs, C, KVD, C, C, KVD, precision_bf16);
        launchCheck();
        return;
    }
    if (precision_bf16) { // every product on bf16 copies of its inputs: p's copy, then dpre's over it
        to_bf16(w->p16, att, (long)B * NH * T * T);
        attention_matmul_backward(dq, dk, dv, dout, q, k, v, att, w->qp16, w->kp16, w->vp16, w->yp16,
                                  (const bf16 *)w->p16, w->p16, (const bf16 *)w->p16, w, B, T, NH, NKV, hs);
    } else {
        attention_matmul_backward(dq, dk, dv, dout, q, k, v, att, w->qp, w->kp, w->vp, w->yp, att, nullptr,
                                  (const floatX *)w->datt, w, B, T, NH, NKV, hs);
    }
}

// ---------------------------------------------------------------------------
// SwiGLU: out = SiLU(a) * b with SiLU(a) = a * sigmoid(a); a = w1.n (gate), b = w3.n (up)

// (the *16 outputs, or NULL: the same values in bf16)
__global__ void swiglu_forward_kernel(floatX *out, bf16 *out16, const floatX *a, const floatX *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = (float)a[i];
        float sig = 1.0f / (1.0f + expf(-x));
        out[i] = (floatX)(x * sig * (float)b[i]);
        if (out16) out16[i] = bf16_round((float)out[i]);
    }
}
static void swiglu_forward(floatX *out, bf16 *out16, const floatX *a, const floatX *b, long n) {
    swiglu_forward_kernel<<<grid_for(n), BLOCK>>>(out, out16, a, b, n);
    launchCheck();
}

// d SiLU(a)/da = sig * (1 + a * (1 - sig)). Overwrites da, db.
__global__ void swiglu_backward_kernel(floatX *da, floatX *db, bf16 *da16, bf16 *db16, const floatX *dout,
                                       const floatX *a, const floatX *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = (float)a[i], dy = (float)dout[i];
        float sig = 1.0f / (1.0f + expf(-x));
        da[i] = (floatX)(dy * (float)b[i] * sig * (1.0f + x * (1.0f - sig)));
        db[i] = (floatX)(dy * x * sig);
        if (da16) da16[i] = bf16_round((float)da[i]), db16[i] = bf16_round((float)db[i]);
    }
}
static void swiglu_backward(floatX *da, floatX *db, bf16 *da16, bf16 *db16, const floatX *dout, const floatX *a,
                            const floatX *b, long n) {
    swiglu_backward_kernel<<<grid_for(n), BLOCK>>>(da, db, da16, db16, dout, a, b, n);
    launchCheck();
}

__global__ void residual_forward_kernel(floatX *out, const floatX *a, const floatX *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        out[i] = (floatX)((float)a[i] + (float)b[i]);
    }
}
static void residual_forward(floatX *out, const floatX *a, const floatX *b, long n) {
    residual_forward_kernel<<<grid_for(n), BLOCK>>>(out, a, b, n);
    launchCheck();
}

// ---------------------------------------------------------------------------
// The classifier: one block per row of logits (N, V).

// log-sum-exp of a row (every thread gets it)
__device__ inline float row_logsumexp(const floatX *l, int V) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, (float)l[j]);
    m = block_max(m);
    float s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf((float)l[j] - m);
    s = block_sum(s);
    return m + logf(s);
}

// Cross-entropy of each row against its target; keeps the log-sum-exp so that
// the backward needs one pass.
__global__ void crossentropy_forward_kernel(float *losses, float *lse, const floatX *logits, const int *targets,
                                            int V) {
    const floatX *l = logits + (long)blockIdx.x * V;
    float z = row_logsumexp(l, V);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = z;
        losses[blockIdx.x] = z - (float)l[targets[blockIdx.x]];
    }
}

// d(mean loss)/d logits = (softmax - onehot) / N, written over the logits in place; grad16
// (or NULL) gets it in bf16 too
__global__ void crossentropy_backward_inplace_kernel(floatX *logits, bf16 *grad16, const float *lse,
                                                     const int *targets, int V, float inv_n) {
    floatX *l = logits + (long)blockIdx.x * V;
    float z = lse[blockIdx.x];
    int target = targets[blockIdx.x];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf((float)l[j] - z) * inv_n;
        l[j] = (floatX)(j == target ? g - inv_n : g);
        if (grad16) grad16[(long)blockIdx.x * V + j] = bf16_round((float)l[j]);
    }
}

/*
 * The fused classifier (llm.c's idea): forward and backward of the softmax +
 * cross-entropy in one kernel, reading each row of logits twice and writing the
 * gradient over it. The training step uses it; validation and the tests that
 * look at the logits use the two kernels above.
 */
__global__ void fused_classifier_kernel(floatX *logits, bf16 *grad16, float *losses, float *lse, const int *targets,
                                        int V, float inv_n) {
    floatX *l = logits + (long)blockIdx.x * V;
    int target = targets[blockIdx.x];
    float z = row_logsumexp(l, V);
    float at_target = (float)l[target];
    __syncthreads(); // every thread has read l[target] before any thread overwrites it
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = z;
        losses[blockIdx.x] = z - at_target;
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf((float)l[j] - z) * inv_n;
        l[j] = (floatX)(j == target ? g - inv_n : g);
        if (grad16) grad16[(long)blockIdx.x * V + j] = bf16_round((float)l[j]);
    }
}

#define CLASSIFIER_BLOCK 512
static void crossentropy_forward(float *losses, float *lse, const floatX *logits, const int *targets, int N, int V) {
    crossentropy_forward_kernel<<<N, CLASSIFIER_BLOCK>>>(losses, lse, logits, targets, V);
    launchCheck();
}
// (grad16: the gradient in bf16 as well, for the lm_head's backward; NULL for none)
static void crossentropy_backward_inplace(floatX *logits, const float *lse, const int *targets, int N, int V,
                                          bf16 *grad16 = NULL) {
    crossentropy_backward_inplace_kernel<<<N, CLASSIFIER_BLOCK>>>(logits, grad16, lse, targets, V, (float)(1.0 / N));
    launchCheck();
}
static void fused_classifier(floatX *logits, float *losses, float *lse, const int *targets, int N, int V,
                             bf16 *grad16 = NULL) {
    fused_classifier_kernel<<<N, CLASSIFIER_BLOCK>>>(logits, grad16, losses, lse, targets, V, (float)(1.0 / N));
    launchCheck();
}

// ============================================================================
// 3. the model
// ============================================================================

// The one table of parameter tensors, as in train_llama.c (model.bin's order).
enum {
    P_TOK_EMB, P_ATTN_NORM, P_WQ, P_WK, P_WV, P_WO, P_FFN_NORM, P_W1, P_W3, P_W2, P_FINAL_NORM, P_LM_HEAD,
    NUM_PARAM_TENSORS
};
typedef struct {
    const char *name;
    int per_layer;    // one copy per block
    int block_matrix; // a 2-D weight inside a block: LIR and TVR act on it
    int decay;        // AdamW weight decay applies (2-D tensors only)
} ParamInfo;
static const ParamInfo PARAM_INFO[NUM_PARAM_TENSORS] = {
    {"tok_emb", 0, 0, 1}, {"attn_norm", 1, 0, 0}, {"wq", 1, 1, 1},         {"wk", 1, 1, 1},
    {"wv", 1, 1, 1},      {"wo", 1, 1, 1},        {"ffn_norm", 1, 0, 0},   {"w1", 1, 1, 1},
    {"w3", 1, 1, 1},      {"w2", 1, 1, 1},        {"final_norm", 0, 0, 0}, {"lm_head", 0, 0, 1},
};

// rows and columns of one layer's copy of tensor i (norm gains are 1 x C)
static void param_shape(const LlamaConfig *c, int i, int *rows, int *cols) {
    int C = c->dim, F = c->ffn, V = c->vocab, KVD = c->kv_heads * (c->dim / c->heads);
    int shapes[NUM_PARAM_TENSORS][2] = {
        {V, C}, {1, C}, {C, C}, {KVD, C}, {KVD, C}, {C, C}, {1, C}, {F, C}, {F, C}, {C, F}, {1, C}, {V, C},
    };
    *rows = shapes[i][0];
    *cols = shapes[i][1];
}

static long param_layer_size(const LlamaConfig *c, int i) {
    int r, k;
    param_shape(c, i, &r, &k);
    return (long)r * k;
}

static long param_count(const LlamaConfig *c, int i) {
    return param_layer_size(c, i) * (PARAM_INFO[i].per_layer ? c->layers : 1);
}

// Activations kept from the forward pass for the backward pass (on the GPU).
typedef struct {
    floatX *x0;     // (B,T,C) token embeddings
    floatX *ln1;    // (L,B,T,C) attn_norm output
    float *ln1_rstd; // (L,B,T)
    floatX *q;      // (L,B,T,C) after RoPE
    floatX *k;      // (L,B,T,KVD) after RoPE
    floatX *v;      // (L,B,T,KVD)
    floatX *att;    // (L,B,NH,T,T) attention probabilities
    floatX *atty;   // (L,B,T,C) attention output, before wo
    floatX *h;      // (L,B,T,C) residual stream after attention
    floatX *ln2;    // (L,B,T,C) ffn_norm output
    float *ln2_rstd; // (L,B,T)
    floatX *fc1;    // (L,B,T,F) w1.n, the gate's pre-activation
    floatX *fc3;    // (L,B,T,F) w3.n
    floatX *swi;    // (L,B,T,F) SiLU(fc1) * fc3
    floatX *xout;   // (L,B,T,C) block output
    floatX *lnf;    // (B,T,C)
    float *lnf_rstd; // (B,T)
    floatX *logits; // (B,T,V); after the backward (or a fused forward) it holds d loss / d logits
    float *lse;     // (B,T) log-sum-exp of each row of logits
    float *losses;  // (B,T)
    // --precision bf16 only (NULL in fp32): the matmuls' inputs in bf16, shaped as above
    bf16 *ln1_16, *atty_16, *ln2_16, *swi_16, *lnf_16;
    bf16 *dlogits_16; // (B,T,V) d loss / d logits
} Acts;

// Gradient scratch for the backward pass, reused layer after layer.
typedef struct {
    floatX *dres;  // (B,T,C) gradient of the residual stream
    floatX *dln;   // (B,T,C)
    floatX *dq;    // (B,T,C)
    floatX *dk;    // (B,T,KVD)
    floatX *dv;    // (B,T,KVD)
    floatX *datty; // (B,T,C)
    floatX *dfc1;  // (B,T,F)
    floatX *dfc3;  // (B,T,F)
    floatX *dswi;  // (B,T,F)
    float *dgain_partial; // (GAIN_CHUNKS, C) rmsnorm_backward's partial sums
    AttnScratch attn;
    bf16 *dres_16, *dq_16, *dk_16, *dv_16, *dfc1_16, *dfc3_16; // bf16 only (NULL in fp32)
} Scratch;

// A block matrix as TVR and weights.csv see it, in the CSV's order (layer, then table order).
typedef struct {
    float **ptr; // device array of device pointers
    long *n;     // device array of sizes
    int count;   // L * 7
    long max_n;
    double *partial;   // device (count, MOMENT_CHUNKS, 2): sum and sum of squares per chunk
    double *h_partial; // host copy
    double *coef;      // device (count, 2): TVR's mean and scale; scale 0 = leave the matrix alone
    double *h_coef;
} MatrixTable;

typedef struct {
    LlamaConfig config;
    long num_params;
    float *params; // all parameters on the GPU, one buffer, in table order
    float *grads;  // same layout
    float *m, *v;  // AdamW moments: this rank's shard of the layout (all of it on one rank; ZeRO-1)
    float *tensor[NUM_PARAM_TENSORS];  // views into params
    float *gtensor[NUM_PARAM_TENSORS]; // views into grads
    bf16 *params16;     // --precision bf16: the parameters in bf16, the matmuls' weights (NULL in fp32)
    int params16_stale; // params changed since params16 was written: llama_forward refreshes it
    float *h_params; // host mirror: init, checkpoints (h_m and h_v for state.bin)
    float *h_m, *h_v; // all of m and v: state.bin's (rank 0 gathers the shards there)
    int B, T;        // batch shape the activations were allocated for
    Acts acts;
    Scratch scratch;
    MatrixTable mats;
    float *rope_cos, *rope_sin; // (max_seq_len, hs/2), on the GPU
    int *tokens, *targets;      // (B,T) the last forward's inputs, host
    int *d_tokens, *d_targets;  // the same on the GPU
    TokenBuckets buckets;        // encoder_backward's: the positions of each distinct token
    float *h_losses;     // (B,T) host copy of the losses
    double *norm_partial, *h_norm_partial; // global_norm's per-block sums
    double *act_partial, *h_act_partial;   // activations_log's per-block max and sum of squares
    int logits_are_grad; // the last forward ran the fused classifier
    float loss;          // mean loss of the last forward
} Llama;

// Layer l's (0-based) copy of per-layer tensor i, and of its gradient (on the GPU).
static float *layer_param(const Llama *model, int i, int l) {
    return model->tensor[i] + (long)l * param_layer_size(&model->config, i);
}
static float *layer_grad(const Llama *model, int i, int l) {
    return model->gtensor[i] + (long)l * param_layer_size(&model->config, i);
}
// the bf16 copy of a parameter view (NULL in fp32)
static const bf16 *param16(const Llama *model, const float *p) {
    return model->params16 ? model->params16 + (p - model->params) : NULL;
}
// a bf16 buffer of n values with --precision bf16; NULL in fp32
static bf16 *bf16_calloc(long n) { return precision_bf16 ? (bf16 *)cuda_calloc(n, sizeof(bf16)) : NULL; }

#define MOMENT_CHUNKS 64 // blocks per matrix in TVR's statistics
#define ACT_CHUNKS 64    // blocks per layer in activations_log

static void matrix_table_build(Llama *model) {
    const LlamaConfig *c = &model->config;
    MatrixTable *mt = &model->mats;
    int count = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) count += PARAM_INFO[i].block_matrix ? c->layers : 0;
    float **h_ptr = (float **)malloc_check(sizeof(float *) * count);
    long *h_n = (long *)malloc_check(sizeof(long) * count);
    int j = 0;
    mt->max_n = 0;
    for (int l = 0; l < c->layers; l++) {
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            h_ptr[j] = layer_param(model, i, l);
            h_n[j] = param_layer_size(c, i);
            if (h_n[j] > mt->max_n) mt->max_n = h_n[j];
            j++;
        }
    }
    mt->count = count;
    mt->ptr = (float **)cuda_calloc(count, sizeof(float *));
    mt->n = (long *)cuda_calloc(count, sizeof(long));
    cudaCheck(cudaMemcpy(mt->ptr, h_ptr, sizeof(float *) * count, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(mt->n, h_n, sizeof(long) * count, cudaMemcpyHostToDevice));
    mt->partial = (double *)cuda_calloc((long)count * MOMENT_CHUNKS * 2, sizeof(double));
    mt->h_partial = (double *)malloc_check(sizeof(double) * count * MOMENT_CHUNKS * 2);
    mt->coef = (double *)cuda_calloc((long)count * 2, sizeof(double));
    mt->h_coef = (double *)malloc_check(sizeof(double) * count * 2);
    free(h_ptr);
    free(h_n);
}

static void llama_build(Llama *model, LlamaConfig config) {
    memset(model, 0, sizeof(*model));
    config_check(&config, "model config");
    model->config = config;
    long n = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += param_count(&config, i);
    model->num_params = n;
    model->params = (float *)cuda_calloc(n, sizeof(float));
    model->grads = (float *)cuda_calloc(n, sizeof(float));
    model->params16 = bf16_calloc(n);
    model->params16_stale = 1;
    long lo, hi;
    dp_shard(n, &lo, &hi);
    model->m = (float *)cuda_calloc(hi - lo, sizeof(float));
    model->v = (float *)cuda_calloc(hi - lo, sizeof(float));
    model->h_params = (float *)calloc_check(n, sizeof(float));
    model->h_m = (float *)calloc_check(n, sizeof(float));
    model->h_v = (float *)calloc_check(n, sizeof(float));
    long off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        model->tensor[i] = model->params + off;
        model->gtensor[i] = model->grads + off;
        off += param_count(&config, i);
    }
    matrix_table_build(model);
    // RoPE table, computed on the host in double and rounded once, as train_llama.c does
    int hs = config.dim / config.heads, half = hs / 2;
    float *h_cos = (float *)malloc_check(sizeof(float) * config.max_seq_len * half);
    float *h_sin = (float *)malloc_check(sizeof(float) * config.max_seq_len * half);
    for (int t = 0; t < config.max_seq_len; t++) {
        for (int i = 0; i < half; i++) {
            double freq = 1.0 / pow((double)config.rope_theta, (2.0 * i) / hs);
            h_cos[t * half + i] = (float)cos(t * freq);
            h_sin[t * half + i] = (float)sin(t * freq);
        }
    }
    model->rope_cos = (float *)cuda_calloc((long)config.max_seq_len * half, sizeof(float));
    model->rope_sin = (float *)cuda_calloc((long)config.max_seq_len * half, sizeof(float));
    cudaCheck(cudaMemcpy(model->rope_cos, h_cos, sizeof(float) * config.max_seq_len * half, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->rope_sin, h_sin, sizeof(float) * config.max_seq_len * half, cudaMemcpyHostToDevice));
    free(h_cos);
    free(h_sin);
    model->norm_partial = (double *)cuda_calloc(DP_NORM_BLOCKS, sizeof(double));
    model->h_norm_partial = (double *)malloc_check(sizeof(double) * DP_NORM_BLOCKS);
    model->act_partial = (double *)cuda_calloc((long)config.layers * ACT_CHUNKS * 2, sizeof(double));
    model->h_act_partial = (double *)malloc_check(sizeof(double) * config.layers * ACT_CHUNKS * 2);
}

// the host mirror to the GPU and back
static void llama_params_to_device(Llama *model) {
    cudaCheck(cudaMemcpy(model->params, model->h_params, sizeof(float) * model->num_params, cudaMemcpyHostToDevice));
    model->params16_stale = 1;
}
static void llama_params_to_host(Llama *model) {
    cudaCheck(cudaMemcpy(model->h_params, model->params, sizeof(float) * model->num_params, cudaMemcpyDeviceToHost));
}

// --recompute 1 (common/cuda_train.h): ln1, ln2 and swi hold one layer
static void recompute_sizes(const LlamaConfig *c, long *sizes) {
    int slots[] = {1, 9, 13}; // ln1, ln2, swi in acts_sizes' order
    for (int i = 0; i < 3; i++) sizes[slots[i]] = sizes[slots[i]] / c->layers * recompute_layers(c->layers);
}

// Allocate activations for batches of B sequences of length T (T <= max_seq_len).
// What training this model on B x T batches needs on the GPU: parameters, gradients,
// AdamW's m and v, the activations, the backward's and attention's scratch (4-byte
// values; cuBLAS's workspace aside), and with --precision bf16 the bf16 copies
// (llama_memory_bf16, 2-byte values).
static double llama_memory_bf16(const LlamaConfig *c, int B, int T) {
    if (!precision_bf16) return 0;
    double np = 0, N = (double)B * T, L = c->layers, C = c->dim, F = c->ffn, V = c->vocab;
    double KVD = (double)c->kv_heads * (c->dim / c->heads);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) np += param_count(c, i);
    double RL = recompute_layers(c->layers);            // ln1, ln2, swi: one layer with --recompute 1
    double n = np + N * (RL * (2 * C + F) + L * C) + N * C + N * V; // params16; ln1, ln2, swi, atty, lnf, d logits
    n += 2 * N * C + 2 * N * KVD + 2 * N * F;            // dres, dq, dk, dv, dfc1, dfc3
    if (!attention_flash) n += 2 * N * C + 2 * N * KVD + (double)B * c->heads * T * T; // qp, kp, vp, yp, p
    return n * 2;
}
static double llama_memory(const LlamaConfig *c, int B, int T) {
    long sizes[NUM_ACT_SLOTS], gsizes[NUM_SCRATCH_SLOTS];
    acts_sizes(c, B, T, sizes, gsizes);
    sizes[ACT_SLOT_ATT] = (long)c->layers * attention_att_size(B, T, c->heads);
    recompute_sizes(c, sizes);
    double n = 0, N = (double)B * T, C = c->dim, KVD = (double)c->kv_heads * (c->dim / c->heads);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += 4.0 * param_count(c, i);
    for (int i = 0; i < NUM_ACT_SLOTS; i++) n += sizes[i];
    for (int i = 0; i < NUM_SCRATCH_SLOTS; i++) n += gsizes[i];
    n += GAIN_CHUNKS * C + attention_att_size(B, T, c->heads); // dgain_partial, AttnScratch's datt
    if (!attention_flash) n += 3 * N * C + 4 * N * KVD;       // and its permuted copies
    if (!attention_flash && precision_bf16) n -= N * C + 2 * N * KVD; // (q, k, v's are bf16 there)
    return n * 4 + llama_memory_bf16(c, B, T);
}

static void llama_alloc_acts(Llama *model, int B, int T) {
    const LlamaConfig *c = &model->config;
    if (T > c->max_seq_len) die("seq-len %d exceeds the model's maximum %d", T, c->max_seq_len);
    long C = c->dim, V = c->vocab, NH = c->heads;
    long KVD = c->kv_heads * (C / NH), N = (long)B * T;
    model->B = B;
    model->T = T;
    Acts *a = &model->acts;
    // floatX and float are both 4 bytes in this version; sizeof(floatX) is used for all
    // floatX slots so that a 2-byte floatX allocates right.
    void **slots[] = {(void **)&a->x0,  (void **)&a->ln1,  (void **)&a->ln1_rstd, (void **)&a->q,
                      (void **)&a->k,   (void **)&a->v,    (void **)&a->att,      (void **)&a->atty,
                      (void **)&a->h,   (void **)&a->ln2,  (void **)&a->ln2_rstd, (void **)&a->fc1,
                      (void **)&a->fc3, (void **)&a->swi,  (void **)&a->xout,     (void **)&a->lnf,
                      (void **)&a->lnf_rstd, (void **)&a->logits, (void **)&a->lse, (void **)&a->losses};
    long sizes[NUM_ACT_SLOTS], gsizes[NUM_SCRATCH_SLOTS], L = c->layers, F = c->ffn;
    acts_sizes(c, B, T, sizes, gsizes); // common/llama_run.h, train_llama.c's slots in the same order
    sizes[ACT_SLOT_ATT] = c->layers * attention_att_size(B, T, NH);
    recompute_sizes(c, sizes);
    int is_float[NUM_ACT_SLOTS] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 1};
    for (int s = 0; s < NUM_ACT_SLOTS; s++) {
        *slots[s] = cuda_calloc(sizes[s], is_float[s] ? sizeof(float) : sizeof(floatX));
    }
    long RL = recompute_layers(c->layers); // ln1, ln2, swi and their copies: one layer with --recompute 1
    a->ln1_16 = bf16_calloc(RL * N * C), a->atty_16 = bf16_calloc(L * N * C), a->ln2_16 = bf16_calloc(RL * N * C);
    a->swi_16 = bf16_calloc(RL * N * F), a->lnf_16 = bf16_calloc(N * C), a->dlogits_16 = bf16_calloc(N * V);
    Scratch *g = &model->scratch;
    floatX **gslots[] = {&g->dres, &g->dln, &g->dq, &g->dk, &g->dv, &g->datty, &g->dfc1, &g->dfc3, &g->dswi};
    for (int s = 0; s < NUM_SCRATCH_SLOTS; s++) *gslots[s] = (floatX *)cuda_calloc(gsizes[s], sizeof(floatX));
    g->dgain_partial = (float *)cuda_calloc((long)GAIN_CHUNKS * C, sizeof(float));
    g->dres_16 = bf16_calloc(N * C), g->dq_16 = bf16_calloc(N * C), g->dk_16 = bf16_calloc(N * KVD);
    g->dv_16 = bf16_calloc(N * KVD), g->dfc1_16 = bf16_calloc(N * F), g->dfc3_16 = bf16_calloc(N * F);
    AttnScratch *w = &g->attn;
    floatX **wslots[] = {&w->qp, &w->kp, &w->vp, &w->yp, &w->dqp, &w->dkp, &w->dvp, &w->datt};
    long wsizes[] = {N * C, N * KVD, N * KVD, N * C, N * C, N * KVD, N * KVD, attention_att_size(B, T, NH)};
    if (attention_flash) memset(wsizes, 0, sizeof(long) * 7); // flash needs no permuted copies
    if (precision_bf16) memset(wsizes, 0, sizeof(long) * 3);  // bf16 permutes q, k, v into the *16 below
    for (size_t s = 0; s < sizeof(wsizes) / sizeof(wsizes[0]); s++) {
        *wslots[s] = (floatX *)cuda_calloc(wsizes[s], sizeof(floatX));
    }
    if (!attention_flash) {
        w->qp16 = bf16_calloc(N * C), w->kp16 = bf16_calloc(N * KVD), w->vp16 = bf16_calloc(N * KVD);
        w->yp16 = bf16_calloc(N * C), w->p16 = bf16_calloc(B * NH * T * T);
    }
    model->tokens = (int *)calloc_check(N, sizeof(int));
    model->targets = (int *)calloc_check(N, sizeof(int));
    model->d_tokens = (int *)cuda_calloc(N, sizeof(int));
    model->d_targets = (int *)cuda_calloc(N, sizeof(int));
    token_buckets_alloc(&model->buckets, V, N);
    model->h_losses = (float *)calloc_check(N, sizeof(float));
}

// What llama_alloc_acts allocated.
static void llama_free_acts(Llama *model) {
    void **acts = (void **)&model->acts;
    for (size_t s = 0; s < sizeof(Acts) / sizeof(void *); s++) cudaCheck(cudaFree(acts[s]));
    Scratch *g = &model->scratch;
    void *gs[] = {g->dres,       g->dln,       g->dq,         g->dk,         g->dv,         g->datty,
                  g->dfc1,       g->dfc3,      g->dswi,       g->attn.qp,    g->attn.kp,    g->attn.vp,
                  g->attn.yp,    g->attn.dqp,  g->attn.dkp,   g->attn.dvp,   g->attn.datt,  g->attn.qp16,
                  g->attn.kp16,  g->attn.vp16, g->attn.yp16,  g->attn.p16,   g->dres_16,    g->dq_16,
                  g->dk_16,      g->dv_16,     g->dfc1_16,    g->dfc3_16};
    for (size_t s = 0; s < sizeof(gs) / sizeof(gs[0]); s++) cudaCheck(cudaFree(gs[s]));
    cudaCheck(cudaFree(g->dgain_partial)), cudaCheck(cudaFree(model->d_tokens)), cudaCheck(cudaFree(model->d_targets));
    free(model->tokens), free(model->targets), free(model->h_losses);
    token_buckets_free(&model->buckets);
}

static void llama_free(Llama *model) {
    void *dev[] = {model->params,       model->grads,       model->m,           model->v,  model->params16,
                   model->rope_cos,     model->rope_sin,    model->norm_partial, model->act_partial,
                   model->mats.ptr,     model->mats.n,      model->mats.partial, model->mats.coef};
    for (size_t s = 0; s < sizeof(dev) / sizeof(dev[0]); s++) cudaCheck(cudaFree(dev[s]));
    void *host[] = {model->h_params, model->h_m, model->h_v, model->h_norm_partial, model->h_act_partial,
                    model->mats.h_partial, model->mats.h_coef};
    for (size_t s = 0; s < sizeof(host) / sizeof(host[0]); s++) free(host[s]);
    llama_free_acts(model);
}

/*
 * Initialisation, exactly train_llama.c's (docs/methods.md, "The init schemes"): drawn on
 * the host with the same generator in the same order, then copied to the GPU,
 * so a fresh run starts from the same bits on both programs.
 */
typedef enum { INIT_PLAIN, INIT_LIR, INIT_RESIDUAL } InitScheme;

static double init_std(const LlamaConfig *c, InitScheme scheme, double sigma, int i, int layer /* 1-based */) {
    if (scheme == INIT_LIR && PARAM_INFO[i].block_matrix) return sigma / sqrt((double)layer);
    if (scheme == INIT_RESIDUAL && (i == P_WO || i == P_W2)) return sigma / sqrt(2.0 * c->layers);
    return sigma;
}

static void llama_init(Llama *model, InitScheme scheme, double sigma, Rng *rng) {
    const LlamaConfig *c = &model->config;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        int nl = PARAM_INFO[i].per_layer ? c->layers : 1;
        long n = param_layer_size(c, i);
        int is_norm = (i == P_ATTN_NORM || i == P_FFN_NORM || i == P_FINAL_NORM);
        float *w = model->h_params + (model->tensor[i] - model->params);
        for (int l = 0; l < nl; l++) {
            double std = init_std(c, scheme, sigma, i, l + 1);
            for (long j = 0; j < n; j++) w[l * n + j] = is_norm ? 1 : (float)(std * rng_normal(rng));
        }
    }
    llama_params_to_device(model);
}

// ---------------------------------------------------------------------------
// forward and backward

/*
 * Forward pass on tokens (B,T) with targets (B,T) (host arrays); sets
 * model->loss. With fuse_backward the classifier also writes d loss / d logits
 * over the logits (the training step); without, the logits stay (validation,
 * tests), and llama_backward computes that gradient itself.
 */
static void llama_forward(Llama *model, const int *tokens, const int *targets, int B, int T, int fuse_backward) {
    if (B != model->B || T != model->T) {
        die("internal: forward with %dx%d, activations are %dx%d", B, T, model->B, model->T);
    }
    const LlamaConfig *c = &model->config;
    int L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads, NKV = c->kv_heads;
    int hs = C / NH, KVD = NKV * hs, N = B * T;
    Acts *a = &model->acts;
    memcpy(model->tokens, tokens, sizeof(int) * N);
    memcpy(model->targets, targets, sizeof(int) * N);
    cudaCheck(cudaMemcpy(model->d_tokens, tokens, sizeof(int) * N, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->d_targets, targets, sizeof(int) * N, cudaMemcpyHostToDevice));
    token_buckets_build(&model->buckets, tokens, N, V);
    if (model->params16 && model->params16_stale) { // the weights changed (AdamW, TVR, a load): their bf16 copy
        to_bf16(model->params16, model->params, model->num_params);
        model->params16_stale = 0;
    }

    encoder_forward(a->x0, model->d_tokens, model->tensor[P_TOK_EMB], N, C);
    for (int l = 0; l < L; l++) {
        const floatX *x = l == 0 ? a->x0 : a->xout + (long)(l - 1) * N * C;
        floatX *ln1 = a->ln1 + recompute_slot(l) * N * C;
        float *ln1_rstd = a->ln1_rstd + (long)l * N;
        floatX *q = a->q + (long)l * N * C, *k = a->k + (long)l * N * KVD, *v = a->v + (long)l * N * KVD;
        floatX *att = a->att + l * attention_att_size(B, T, NH), *atty = a->atty + (long)l * N * C;
        floatX *h = a->h + (long)l * N * C, *ln2 = a->ln2 + recompute_slot(l) * N * C;
        float *ln2_rstd = a->ln2_rstd + (long)l * N;
        floatX *fc1 = a->fc1 + (long)l * N * F, *fc3 = a->fc3 + (long)l * N * F;
        floatX *swi = a->swi + recompute_slot(l) * N * F;
        floatX *xout = a->xout + (long)l * N * C;
        floatX *tmp = model->scratch.dln; // (N, C) scratch for the projections' outputs
        // the bf16 copies of the matmuls' inputs (NULL in fp32)
        bf16 *ln1_16 = a->ln1_16 ? a->ln1_16 + recompute_slot(l) * N * C : NULL; // (ln1, ln2, swi's slots)
        bf16 *atty_16 = a->atty_16 ? a->atty_16 + (long)l * N * C : NULL;
        bf16 *ln2_16 = a->ln2_16 ? a->ln2_16 + recompute_slot(l) * N * C : NULL;
        bf16 *swi_16 = a->swi_16 ? a->swi_16 + recompute_slot(l) * N * F : NULL;
// (a weight and its bf16 copy: two arguments)
#define W(i) layer_param(model, i, l), param16(model, layer_param(model, i, l))
        rmsnorm_forward(ln1, ln1_16, ln1_rstd, x, layer_param(model, P_ATTN_NORM, l), N, C, c->norm_eps);
        matmul_forward(q, ln1, ln1_16, W(P_WQ), N, C, C);
        matmul_forward(k, ln1, ln1_16, W(P_WK), N, C, KVD);
        matmul_forward(v, ln1, ln1_16, W(P_WV), N, C, KVD);
        rope_forward(q, model->rope_cos, model->rope_sin, B, T, NH, hs);
        rope_forward(k, model->rope_cos, model->rope_sin, B, T, NKV, hs);
        attention_forward(atty, att, q, k, v, &model->scratch.attn, B, T, NH, NKV, hs);
        if (atty_16) to_bf16(atty_16, atty, (long)N * C);
        matmul_forward(tmp, atty, atty_16, W(P_WO), N, C, C);
        residual_forward(h, x, tmp, (long)N * C);
        rmsnorm_forward(ln2, ln2_16, ln2_rstd, h, layer_param(model, P_FFN_NORM, l), N, C, c->norm_eps);
        matmul_forward(fc1, ln2, ln2_16, W(P_W1), N, C, F);
        matmul_forward(fc3, ln2, ln2_16, W(P_W3), N, C, F);
        swiglu_forward(swi, swi_16, fc1, fc3, (long)N * F);
        matmul_forward(tmp, swi, swi_16, W(P_W2), N, F, C);
        residual_forward(xout, h, tmp, (long)N * C);
#undef W
    }
    const floatX *xlast = a->xout + (long)(L - 1) * N * C;
    rmsnorm_forward(a->lnf, a->lnf_16, a->lnf_rstd, xlast, model->tensor[P_FINAL_NORM], N, C, c->norm_eps);
    matmul_forward(a->logits, a->lnf, a->lnf_16, model->tensor[P_LM_HEAD], param16(model, model->tensor[P_LM_HEAD]),
                   N, C, V);
    if (fuse_backward) {
        fused_classifier(a->logits, a->losses, a->lse, model->d_targets, N, V, a->dlogits_16);
    } else {
        crossentropy_forward(a->losses, a->lse, a->logits, model->d_targets, N, V);
    }
    model->logits_are_grad = fuse_backward;
    // the mean loss: summed on the host in double, in position order, as train_llama.c does
    cudaCheck(cudaMemcpy(model->h_losses, a->losses, sizeof(float) * N, cudaMemcpyDeviceToHost));
    double sum = 0;
    for (int i = 0; i < N; i++) sum += model->h_losses[i];
    model->loss = (float)(sum / N);
}

static void llama_zero_grad(Llama *model) {
    cudaCheck(cudaMemset(model->grads, 0, sizeof(float) * model->num_params));
}

// Backward pass for the last forward; adds into model->grads (zero them first).
static void llama_backward(Llama *model) {
    const LlamaConfig *c = &model->config;
    int B = model->B, T = model->T;
    int L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads, NKV = c->kv_heads;
    int hs = C / NH, KVD = NKV * hs, N = B * T;
    Acts *a = &model->acts;
    Scratch *s = &model->scratch;
    float *gp = s->dgain_partial;

    if (!model->logits_are_grad) {
        crossentropy_backward_inplace(a->logits, a->lse, model->d_targets, N, V, a->dlogits_16);
    }
    model->logits_are_grad = 1;
    const floatX *dlogits = a->logits;
    matmul_backward(s->dln, model->gtensor[P_LM_HEAD], dlogits, a->dlogits_16, a->lnf, a->lnf_16,
                    model->tensor[P_LM_HEAD], param16(model, model->tensor[P_LM_HEAD]), N, C, V, 0);
    cudaCheck(cudaMemset(s->dres, 0, sizeof(floatX) * N * C));
    rmsnorm_backward(s->dres, s->dres_16, model->gtensor[P_FINAL_NORM], gp, s->dln, a->xout + (long)(L - 1) * N * C,
                     model->tensor[P_FINAL_NORM], a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        const floatX *x = l == 0 ? a->x0 : a->xout + (long)(l - 1) * N * C;
        floatX *ln1 = a->ln1 + recompute_slot(l) * N * C;
        float *ln1_rstd = a->ln1_rstd + (long)l * N;
        const floatX *q = a->q + (long)l * N * C, *k = a->k + (long)l * N * KVD, *v = a->v + (long)l * N * KVD;
        const floatX *att = a->att + l * attention_att_size(B, T, NH), *atty = a->atty + (long)l * N * C;
        const floatX *h = a->h + (long)l * N * C;
        floatX *ln2 = a->ln2 + recompute_slot(l) * N * C;
        float *ln2_rstd = a->ln2_rstd + (long)l * N;
        const floatX *fc1 = a->fc1 + (long)l * N * F, *fc3 = a->fc3 + (long)l * N * F;
        floatX *swi = a->swi + recompute_slot(l) * N * F;
        const bf16 *atty_16 = a->atty_16 ? a->atty_16 + (long)l * N * C : NULL;
        bf16 *ln1_16 = a->ln1_16 ? a->ln1_16 + recompute_slot(l) * N * C : NULL;
        bf16 *ln2_16 = a->ln2_16 ? a->ln2_16 + recompute_slot(l) * N * C : NULL;
        bf16 *swi_16 = a->swi_16 ? a->swi_16 + recompute_slot(l) * N * F : NULL;
#define W(i) layer_param(model, i, l), param16(model, layer_param(model, i, l))
#define DW(i) layer_grad(model, i, l)
        // s->dres holds d loss / d xout; xout = h + w2.swi, so it is also d loss / d h (so far).
        // --recompute 1: swi, ln2 and ln1 again (and their bf16 copies), each just before its use
        // (rstd rewritten, the same)
        if (recompute) swiglu_forward(swi, swi_16, fc1, fc3, (long)N * F);
        matmul_backward(s->dswi, DW(P_W2), s->dres, s->dres_16, swi, swi_16, W(P_W2), N, F, C, 0);
        swiglu_backward(s->dfc1, s->dfc3, s->dfc1_16, s->dfc3_16, s->dswi, fc1, fc3, (long)N * F);
        if (recompute) {
            rmsnorm_forward(ln2, ln2_16, ln2_rstd, h, layer_param(model, P_FFN_NORM, l), N, C, c->norm_eps);
        }
        matmul_backward(s->dln, DW(P_W1), s->dfc1, s->dfc1_16, ln2, ln2_16, W(P_W1), N, C, F, 0);
        matmul_backward(s->dln, DW(P_W3), s->dfc3, s->dfc3_16, ln2, ln2_16, W(P_W3), N, C, F, 1);
        rmsnorm_backward(s->dres, s->dres_16, DW(P_FFN_NORM), gp, s->dln, h, layer_param(model, P_FFN_NORM, l),
                         ln2_rstd, N, C);
        // now s->dres = d loss / d h; h = x + wo.atty
        matmul_backward(s->datty, DW(P_WO), s->dres, s->dres_16, atty, atty_16, W(P_WO), N, C, C, 0);
        attention_backward(s->dq, s->dk, s->dv, s->datty, atty, q, k, v, att, &s->attn, B, T, NH, NKV, hs);
        rope_backward(s->dq, s->dq_16, model->rope_cos, model->rope_sin, B, T, NH, hs);
        rope_backward(s->dk, s->dk_16, model->rope_cos, model->rope_sin, B, T, NKV, hs);
        if (s->dv_16) to_bf16(s->dv_16, s->dv, (long)N * KVD);
        if (recompute) {
            rmsnorm_forward(ln1, ln1_16, ln1_rstd, x, layer_param(model, P_ATTN_NORM, l), N, C, c->norm_eps);
        }
        matmul_backward(s->dln, DW(P_WQ), s->dq, s->dq_16, ln1, ln1_16, W(P_WQ), N, C, C, 0);
        matmul_backward(s->dln, DW(P_WK), s->dk, s->dk_16, ln1, ln1_16, W(P_WK), N, C, KVD, 1);
        matmul_backward(s->dln, DW(P_WV), s->dv, s->dv_16, ln1, ln1_16, W(P_WV), N, C, KVD, 1);
        rmsnorm_backward(s->dres, s->dres_16, DW(P_ATTN_NORM), gp, s->dln, x, layer_param(model, P_ATTN_NORM, l),
                         ln1_rstd, N, C);
        // now s->dres = d loss / d x, the previous block's output
#undef W
#undef DW
    }
    encoder_backward(model->gtensor[P_TOK_EMB], s->dres, &model->buckets, C);
}

// ---------------------------------------------------------------------------
// model.bin (docs/formats.md): int32 header[256], then every tensor as fp32 in table order.
// The files are written and read through the host mirror: llama_save_host writes it as it is
// (save_checkpoint copies the parameters there first, once, and checks them).

static void llama_save_host(const Llama *model, const char *path) {
    AtomicFile af;
    atomic_open(&af, path);
    llama_header_write(af.f, af.tmp, &model->config);
    fwrite_check(model->h_params, sizeof(float), model->num_params, af.f, af.tmp);
    atomic_commit(&af);
}

// Load parameters from a model.bin whose config equals the model's.
static void llama_load_params(Llama *model, const char *path) {
    llama_check_size(path, model->num_params);
    FILE *f = fopen_check(path, "rb");
    fseek(f, HEADER_INTS * 4, SEEK_SET);
    read_payload(f, model->h_params, sizeof(float), model->num_params, path, "parameters");
    fclose(f);
    llama_params_to_device(model);
}

// ---------------------------------------------------------------------------
// generation on the GPU: the forward above (its kernels verified against
// train_llama.c) over one sequence of the model's length, once per new token.
// Causal attention makes the padding after the prefix irrelevant. No KV cache
// yet: a token costs a forward of T positions (train_llama.c's llama_decode is the
// cached path; the tests compare the two token for token).

typedef struct {
    Llama gen;     // the model's parameters, with activations for 1 x max_seq_len of its own
    int *window;   // (2T) the prefix padded with 0, then zero targets
    float *logits; // (V) the last position's logits, on the host
} Generator;

static void generator_open(Generator *g, const Llama *model) {
    g->gen = *model; // shares the parameters and tables; llama_alloc_acts replaces only the copy's buffers
    int T = model->config.max_seq_len;
    llama_alloc_acts(&g->gen, 1, T);
    g->window = (int *)calloc_check(2 * T, sizeof(int));
    g->logits = (float *)malloc_check(sizeof(float) * model->config.vocab);
}

static void generator_close(Generator *g) {
    llama_free_acts(&g->gen);
    free(g->window), free(g->logits);
}

// NextLogits (common/sample.h)
static const float *llama_next_logits(void *p, const int *tokens, int n) {
    Generator *g = (Generator *)p;
    int T = g->gen.T, V = g->gen.config.vocab;
    if (n > T) die("internal: generation at position %d, the model's maximum is %d", n, T);
    memset(g->window, 0, sizeof(int) * 2 * T);
    memcpy(g->window, tokens, sizeof(int) * n);
    llama_forward(&g->gen, g->window, g->window + T, 1, T, 0);
    cudaCheck(cudaMemcpy(g->logits, g->gen.acts.logits + (long)(n - 1) * V, sizeof(float) * V, cudaMemcpyDeviceToHost));
    return g->logits;
}

// ============================================================================
// 4. the optimizer
// ============================================================================

__global__ void scale_kernel(float *x, float factor, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        x[i] *= factor;
    }
}

// Global gradient norm over all parameters, then clipping (docs/methods.md): scale by
// max/(norm + 1e-6) when that is below 1. Returns the norm before clipping. The sum of
// squares is common/cuda_dp.h's, in fixed chunks (the same number on any count of ranks);
// with several ranks each holds the step's gradient on its shard only, and scales that.
static double clip_grad_norm(Llama *model, double max_norm) {
    double norm = sqrt(cuda_sum_squares(model->grads, model->num_params, model->norm_partial, model->h_norm_partial));
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1) {
            long lo, hi;
            dp_shard(model->num_params, &lo, &hi);
            scale_kernel<<<grid_for(hi - lo), BLOCK>>>(model->grads + lo, (float)coef, hi - lo);
            launchCheck();
        }
    }
    return norm;
}

/*
 * AdamW as torch.optim.AdamW computes it (step t from 1):
 *   p <- p * (1 - lr*wd)                         (decoupled decay, 2-D tensors only)
 *   m <- m + (1-beta1)*(g - m);  v <- beta2*v + (1-beta2)*g^2
 *   p <- p - lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
 * The same float expressions as train_llama.c's loop, one thread per parameter.
 * ZeRO-1: a rank updates its shard [lo, hi) of the parameters, where its m and v are
 * (m[0] is parameter lo's); one rank's shard is everything.
 */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, long n, float decay, float b1, float b2,
                             float eps, float step_size, float inv_bc2) {
    for (long j = blockIdx.x * (long)blockDim.x + threadIdx.x; j < n; j += (long)gridDim.x * blockDim.x) {
        float gj = g[j];
        float pj = p[j] * decay;
        float mj = m[j] + (1 - b1) * (gj - m[j]);
        float vj = b2 * v[j] + (1 - b2) * gj * gj;
        pj -= step_size * mj / (sqrtf(vj) * inv_bc2 + eps);
        p[j] = pj;
        m[j] = mj;
        v[j] = vj;
    }
}

static void adamw_update(Llama *model, const OptConfig *o, double lr, int t) {
    double bc1 = 1 - pow(o->beta1, t), bc2_sqrt = sqrt(1 - pow(o->beta2, t));
    float step_size = (float)(lr / bc1), inv_bc2 = (float)(1 / bc2_sqrt);
    float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
    long lo, hi;
    dp_shard(model->num_params, &lo, &hi);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        float decay = PARAM_INFO[i].decay ? (float)(1 - lr * o->weight_decay) : 1.0f;
        long a = model->tensor[i] - model->params, b = a + param_count(&model->config, i); // the tensor's range
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        if (a >= b) continue;
        adamw_kernel<<<grid_for(b - a), BLOCK>>>(model->params + a, model->grads + a, model->m + (a - lo),
                                                 model->v + (a - lo), b - a, decay, b1, b2, eps, step_size, inv_bc2);
        launchCheck();
    }
    model->params16_stale = 1;
}

// ============================================================================
// 5. TVR and statistics
// ============================================================================

/*
 * TVR in two passes over all L*7 block matrices at once (one launch each):
 *   1. matrix_moments: MOMENT_CHUNKS blocks per matrix sum x and x^2 in double;
 *      the host adds the chunks in order: mean, unbiased std, and the decision.
 *   2. tvr_rescale_kernel: W <- (W - mean) * target/std + mean on the matrices whose
 *      std/target is above the threshold; the others are not touched.
 * Mean and variance from the sums of x and x^2 in double: with |mean| << std,
 * as for any weight matrix, the cancellation costs nothing at double precision
 * (train_llama.c's two-pass version agrees to ~1e-15 relative).
 */
__global__ void matrix_moments_kernel(double *partial, float *const *ptr, const long *ns) {
    int mat = blockIdx.y, chunk = blockIdx.x;
    const float *w = ptr[mat];
    long n = ns[mat];
    long lo = n * chunk / gridDim.x, hi = n * (chunk + 1) / gridDim.x;
    double s = 0, ss = 0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double x = w[i];
        s += x;
        ss += x * x;
    }
    s = block_sum_d(s);
    ss = block_sum_d(ss);
    if (threadIdx.x == 0) {
        partial[((long)mat * gridDim.x + chunk) * 2] = s;
        partial[((long)mat * gridDim.x + chunk) * 2 + 1] = ss;
    }
}

__global__ void tvr_rescale_kernel(float *const *ptr, const long *ns, const double *coef) {
    int mat = blockIdx.y;
    double mu = coef[2 * mat], scale = coef[2 * mat + 1];
    if (scale == 0) return; // under the threshold: untouched
    float *w = ptr[mat];
    long n = ns[mat];
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        w[i] = (float)(((double)w[i] - mu) * scale + mu);
    }
}

// mean and unbiased (n-1) standard deviation of every block matrix (into mean[], std[])
static void matrix_stats(Llama *model, double *mean, double *std) {
    MatrixTable *mt = &model->mats;
    matrix_moments_kernel<<<dim3(MOMENT_CHUNKS, mt->count), BLOCK>>>(mt->partial, mt->ptr, mt->n);
    launchCheck();
    cudaCheck(cudaMemcpy(mt->h_partial, mt->partial, sizeof(double) * mt->count * MOMENT_CHUNKS * 2,
                         cudaMemcpyDeviceToHost));
    const LlamaConfig *c = &model->config;
    int j = 0;
    for (int l = 0; l < c->layers; l++) {
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            long n = param_layer_size(c, i);
            double s = 0, ss = 0;
            for (int ch = 0; ch < MOMENT_CHUNKS; ch++) {
                s += mt->h_partial[((long)j * MOMENT_CHUNKS + ch) * 2];
                ss += mt->h_partial[((long)j * MOMENT_CHUNKS + ch) * 2 + 1];
            }
            mean[j] = s / n;
            double var = n > 1 ? (ss - s * mean[j]) / (n - 1) : 0;
            std[j] = var > 0 ? sqrt(var) : 0;
            j++;
        }
    }
}

/*
 * Target Variance Rescaling (docs/methods.md, paper A), as train_llama.c's
 * weights_pass: the statistics of every block matrix, one weights.csv row each
 * (mean and std before TVR), and, if due, every matrix whose std s is above
 * threshold*target becomes (W - mean) * target/s + mean, all in one launch. The
 * mean is kept, only the spread changes; Adam's moments are left alone. Returns
 * the number of matrices rescaled.
 */
static int weights_pass(Llama *model, const TvrConfig *tvr, int step, int do_tvr, FILE *csv) {
    const LlamaConfig *c = &model->config;
    MatrixTable *mt = &model->mats;
    double *mean = (double *)malloc_check(sizeof(double) * mt->count);
    double *std = (double *)malloc_check(sizeof(double) * mt->count);
    matrix_stats(model, mean, std);
    int j = 0, total = 0;
    for (int l = 0; l < c->layers; l++) {
        double target = tvr_target_for_layer(tvr, l + 1);
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            int rescaled = do_tvr && std[j] / target > tvr->threshold;
            mt->h_coef[2 * j] = mean[j];
            mt->h_coef[2 * j + 1] = rescaled ? target / std[j] : 0; // 0: tvr_rescale_kernel leaves it alone
            if (csv) {
                fprintf(csv, "%d,%d,%s,%.9g,%.9g,%d\n", step, l + 1, PARAM_INFO[i].name, mean[j], std[j], rescaled);
            }
            total += rescaled;
            j++;
        }
    }
    if (csv) fflush(csv);
    if (total > 0) {
        cudaCheck(cudaMemcpy(mt->coef, mt->h_coef, sizeof(double) * 2 * mt->count, cudaMemcpyHostToDevice));
        tvr_rescale_kernel<<<dim3(ceil_div(mt->max_n, BLOCK * 8), mt->count), BLOCK>>>(mt->ptr, mt->n, mt->coef);
        launchCheck();
        model->params16_stale = 1;
    }
    free(mean), free(std);
    return total;
}

// Per layer, ACT_CHUNKS blocks each: the max |x| and the sum of x^2 (double) of a chunk.
__global__ void activation_stats_kernel(double *partial, const floatX *xout, long n) {
    int layer = blockIdx.y, chunk = blockIdx.x;
    const floatX *x = xout + (long)layer * n;
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

// max |x| and rms of each block's output on the last forward's batch
static void activations_log(Llama *model, int step, FILE *csv) {
    long n = (long)model->B * model->T * model->config.dim;
    int L = model->config.layers;
    activation_stats_kernel<<<dim3(ACT_CHUNKS, L), BLOCK>>>(model->act_partial, model->acts.xout, n);
    launchCheck();
    cudaCheck(cudaMemcpy(model->h_act_partial, model->act_partial, sizeof(double) * L * ACT_CHUNKS * 2,
                         cudaMemcpyDeviceToHost));
    for (int l = 0; l < L; l++) {
        double maxabs = 0, ss = 0;
        for (int ch = 0; ch < ACT_CHUNKS; ch++) {
            const double *p = model->h_act_partial + ((long)l * ACT_CHUNKS + ch) * 2;
            maxabs = p[0] > maxabs ? p[0] : maxabs;
            ss += p[1];
        }
        fprintf(csv, "%d,%d,%.9g,%.9g\n", step, l + 1, maxabs, sqrt(ss / n));
    }
    fflush(csv);
}

// ============================================================================
// 6. training
// ============================================================================

#define STATE_MAGIC 20261123
#define STATE_VERSION 1

// state.bin, exactly train_llama.c's format (common/train.h), so a run moves
// between the programs; written and read through the host mirrors. With several ranks,
// rank 0 gathers the shards of m and v and writes the file alone: the one a single rank
// writes, whatever N.
static void state_save(Llama *model, const TrainState *st, const char *path) {
    long np = model->num_params;
    llama_params_to_host(model);
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
static void state_load(Llama *model, TrainState *st, const char *path) {
    long np = model->num_params, lo, hi;
    dp_shard(np, &lo, &hi);
    FILE *f = state_open(path, STATE_MAGIC, STATE_VERSION, "train_llama", np, st);
    read_payload(f, model->h_params, sizeof(float), np, path, "parameters");
    read_payload(f, model->h_m, sizeof(float), np, path, "AdamW's m");
    read_payload(f, model->h_v, sizeof(float), np, path, "AdamW's v");
    fclose(f);
    llama_params_to_device(model);
    cudaCheck(cudaMemcpy(model->m, model->h_m + lo, sizeof(float) * (hi - lo), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(model->v, model->h_v + lo, sizeof(float) * (hi - lo), cudaMemcpyHostToDevice));
}

#define USAGE "usage: train_llama_cu [flags]   train a LLaMA on one NVIDIA GPU with LIR and TVR (see docs/gpu.md)"

// mean loss over the first val_batches batches of the validation shards; with several
// ranks, rank r computes a run of them (cuda_val_split) and the batch losses are added in order
static double evaluate(Llama *model, DataLoader *val, int batches) {
    dataloader_reset(val);
    long off[DP_CHUNKS + 1];
    cuda_val_split(batches, off);
    double *loss = (double *)calloc_check(batches, sizeof(double)), sum = 0;
    for (int i = 0; i < off[dp.rank + 1]; i++) {
        dataloader_next(val);
        if (i < off[dp.rank]) continue;
        llama_forward(model, val->inputs, val->targets, model->B, model->T, 0);
        loss[i] = model->loss;
    }
    cuda_share_doubles(loss, off);
    for (int i = 0; i < batches; i++) sum += loss[i];
    free(loss);
    return sum / batches;
}

// every rank takes part (state_save gathers AdamW's shards); rank 0 writes
static void save_checkpoint(Llama *model, const TrainState *st, const char *dir) {
    llama_params_to_host(model);
    check_finite_params(model->h_params, sizeof(float), model->num_params, dir);
    char path[4200];
    if (dp.rank == 0) llama_save_host(model, run_file(path, sizeof(path), dir, "model.bin"));
    state_save(model, st, run_file(path, sizeof(path), dir, "state.bin"));
}

/*
 * One step's gradient and loss, as train_llama.c's llama_micro_steps (docs/parallel.md):
 * the K = --grad-accum micro-steps of this rank's rows of the global batch the loader
 * holds (rank r's micro-step k is rows (r*K + k)*B onwards), each gradient the mean over
 * its B*T rows, summed in order on the device; then common/cuda_dp.h adds the ranks' sums
 * in rank order and divides by N*K, on this rank's shard of model->grads. Returns the
 * mean loss over the N*K micro-batches. activations.csv (acts_csv, or NULL) gets the first
 * micro-step's activations.
 */
static double llama_micro_steps(Llama *model, const DataLoader *dl, int K, FILE *acts_csv, int step) {
    int B = model->B, T = model->T;
    double *loss = (double *)calloc_check((size_t)dp.ranks * K, sizeof(double));
    const float *sum = model->grads;
    for (int k = 0; k < K; k++) {
        long row = ((long)dp.rank * K + k) * B * T;
        llama_forward(model, dl->inputs + row, dl->targets + row, B, T, 1);
        if (k == 0 && acts_csv) activations_log(model, step, acts_csv);
        loss[dp.rank * K + k] = model->loss;
        llama_zero_grad(model);
        llama_backward(model);
        if (K > 1) sum = cuda_accumulate(model->grads, model->num_params, k);
    }
    cuda_reduce_grads(sum, model->grads, model->num_params, 1.0 / (dp.ranks * K));
    double mean = cuda_mean_loss(loss, K);
    free(loss);
    return mean;
}

// The weights the matmuls read, for MFU: the block matrices and lm_head (tok_emb is a lookup).
static double llama_matmul_params(const LlamaConfig *c) {
    double n = (double)param_count(c, P_LM_HEAD);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += PARAM_INFO[i].block_matrix ? param_count(c, i) : 0;
    return n;
}

// tok: the vocabulary for text samples, NULL for none.
static void train(Llama *model, const Settings *s, DataLoader *train_dl, DataLoader *val_dl, TrainState *st,
                  const Tokenizer *tok) {
    OptConfig opt = opt_config(s);
    TvrConfig tvr = tvr_config(s);
    // rank 0 alone writes the logs and samples; every rank runs the same steps, TVR
    // and statistics on the same (all-gathered) parameters (docs/parallel.md)
    int lead = dp.rank == 0, K = s->grad_accum > 0 ? s->grad_accum : 1;
    Logs logs;
    memset(&logs, 0, sizeof(logs));
    if (lead) logs = logs_open(s->out, s->resume ? st->step : -1, 0);
    if (lead) mfu_setup(&logs, llama_matmul_params(&model->config), model->config.layers, model->config.dim, model->T,
                        precision_bf16 ? "bf16" : s->tf32 ? "tf32" : "fp32");
    if (st->step == 0) {
        weights_pass(model, &tvr, 0, 0, logs.weights);
        if (val_dl && s->steps > 0) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, 0, v);
        }
    }
    while (st->step < s->steps) {
        int step = st->step + 1;
        double t0 = wall_seconds();
        dataloader_next(train_dl); // the step's global batch, on every rank
        int want_acts = step == 1 || stats_due(s->stats_every, step);
        double loss = llama_micro_steps(model, train_dl, K, want_acts ? logs.acts : NULL, step);
        double norm = clip_grad_norm(model, opt.grad_clip);
        double lr = lr_at(&opt, step);
        int skip = nonfinite_step(s, &logs, step, loss, norm); // stops the run unless --skip-nonfinite 1
        if (!skip) {
            adamw_update(model, &opt, lr, step); // this rank's shard
            cuda_allgather_params(model->params, model->num_params);
        }
        int do_tvr = !skip && tvr_due(&tvr, step);
        if (do_tvr) cudaCheck(cudaDeviceSynchronize()); // time TVR's pass alone
        double t_tvr = wall_seconds();
        if (do_tvr || (!skip && stats_due(s->stats_every, step))) weights_pass(model, &tvr, step, do_tvr, logs.weights);
        cudaCheck(cudaDeviceSynchronize()); // the step's time includes its last kernel
        double tvr_ms = do_tvr ? 1000 * (wall_seconds() - t_tvr) : -1;
        st->step = step;
        st->shard = train_dl->shard;
        st->pos = dataloader_position(train_dl);
        if (lead) {
            log_step(&logs, step, s->steps, loss, lr, norm, 1000 * (wall_seconds() - t0), global_batch(s) * model->T,
                     tvr_ms);
        }
        if (val_dl && val_due(s, step)) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, step, v);
        }
        if (lead && tok && sample_due(s, step)) {
            Generator g;
            generator_open(&g, model);
            sample_run(&g, llama_next_logits, model->config.max_seq_len, s, tok, step);
            generator_close(&g);
        }
        if (checkpoint_due(s, step)) save_checkpoint(model, st, s->out);
        fflush(stdout);
    }
    save_checkpoint(model, st, s->out);
    if (lead) logs_close(&logs);
}

#ifndef TESTING
int main(int argc, char **argv) {
    dp_init(&argc, &argv); // MPI's ranks, when built with it (common/dp.h)
    Settings s;
    int arch_given;
    int seq_len_given = settings_parse(&s, argc, argv, USAGE, 1, &arch_given);
    precision_bf16 = strcmp(s.precision, "bf16") == 0; // (settings_parse allows fp32 and bf16)
    if (precision_bf16 && s.tf32) usage_error("--precision bf16 and --tf32 1: bf16 matmuls take no TF32; pick one");

    // the model: a fresh one from the flags, or the architecture from a checkpoint
    char ckpt[4200];
    LlamaConfig config = run_config(&s, seq_len_given, arch_given, ckpt, sizeof(ckpt));
    attention_setup(&s, config.dim, config.heads);
    recompute = s.recompute;
    if (ckpt[0]) { // the file's size against its header before any allocation the header sizes
        long n = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += param_count(&config, i);
        llama_check_size(ckpt, n);
    }
    int32_t shape[STATE_CONFIG_INTS];
    int nshape = llama_config_ints(&config, shape);
    if (s.resume) resume_settings(&s, seq_len_given, s.resume, STATE_MAGIC, "train_llama", shape, nshape);
    Tokenizer tok_store, *tok = load_tokenizer(&s, config.vocab, &tok_store);
    if (s.generate > 0) {
        gpu_dp_setup(s.tf32, "train_llama");
        Llama model;
        llama_build(&model, config);
        llama_load_params(&model, ckpt);
        if (s.kv_cache) printf("note: the GPU program has no KV cache yet: each token recomputes the prefix\n");
        Generator g;
        generator_open(&g, &model);
        generate_run(&g, llama_next_logits, config.max_seq_len, &s, tok, "on the GPU, the prefix recomputed per token");
        generator_close(&g);
        tokenizer_free(tok);
        llama_free(&model);
        cuda_dp_free();
        return 0;
    }
    // data first: a bad shard is reported before any work is done (and before the GPU is touched)
    DataLoader train_dl, val_dl;
    data_open(&s, &train_dl, &val_dl, s.seq_len, config.vocab);
    if (dp.rank == 0) ensure_dir(s.out);
    gpu_dp_setup(s.tf32, "train_llama");
    long np = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) np += param_count(&config, i);
    gpu_memory_check(&s, llama_memory(&config, s.batch, s.seq_len) + cuda_dp_memory(np, s.grad_accum));
    Llama model;
    llama_build(&model, config);
    llama_alloc_acts(&model, s.batch, s.seq_len);

    TrainState st = state_new(&s, shape, nshape);
    Rng rng;
    rng_seed(&rng, (uint64_t)s.seed);
    if (s.init_from) {
        llama_load_params(&model, ckpt);
    } else if (!s.resume) { // a resumed run reads its parameters from state.bin below
        InitScheme scheme = !strcmp(s.init, "lir")        ? INIT_LIR
                            : !strcmp(s.init, "residual") ? INIT_RESIDUAL
                                                          : INIT_PLAIN;
        llama_init(&model, scheme, s.init_std, &rng);
    }
    if (s.resume) {
        char path[4200];
        state_load(&model, &st, run_file(path, sizeof(path), s.resume, "state.bin"));
        state_resume(&s, &st, &rng, &train_dl);
    }
    st.rng = rng.s;
    // every rank starts from the same parameters, step and data position (a rank that read
    // another checkpoint or shard set stops the run here rather than train apart)
    if (dp.ranks > 1) {
        llama_params_to_host(&model);
        uint64_t h = dp_hash(DP_HASH0, model.h_params, sizeof(float) * model.num_params);
        long where[4] = {st.step, st.shard, st.pos, global_batch(&s) * s.seq_len};
        dp_check_same("model, step or data position", dp_hash(h, where, sizeof(where)));
    }
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, gpu_device));
    printf("train_llama_cu: L=%d C=%d NH=%d NKV=%d F=%d V=%d T=%d | %ld parameters | B=%d | %s | %s\n", config.layers,
           config.dim, config.heads, config.kv_heads, config.ffn, config.vocab, s.seq_len, model.num_params, s.batch,
           prop.name, precision_bf16 ? "bf16" : s.tf32 ? "tf32" : "fp32");
    if (precision_bf16) {
        printf("matmuls: bf16 (cuBLAS, CUDA_R_16BF inputs rounded as train_llama.c rounds, fp32 sums and outputs; "
               "%.3f GiB of bf16 copies)\n", llama_memory_bf16(&config, s.batch, s.seq_len) / (1024.0 * 1024 * 1024));
    }
    if (dp.ranks > 1 || s.grad_accum > 1) {
        printf("data parallel: %d ranks x %d micro-steps x B=%d = %ld rows a step%s\n", dp.ranks, s.grad_accum,
               s.batch, global_batch(&s), dp.ranks > 1 ? " | NCCL, one GPU a rank | ZeRO-1: AdamW's m, v sharded" : "");
    }
    printf("init %s sigma %g | tvr target %g every %d | steps %d from %d | out %s\n", ckpt[0] ? ckpt : s.init,
           s.init_std, s.tvr_target, s.tvr_every, s.steps, st.step, s.out);
    double t0 = wall_seconds();
    train(&model, &s, &train_dl, have_val(&s) ? &val_dl : NULL, &st, tok);
    printf("done: %d steps in %.1f s; checkpoint in %s\n", st.step, wall_seconds() - t0, s.out);
    data_close(&s, &train_dl, &val_dl);
    if (tok) tokenizer_free(tok);
    llama_free(&model);
    cuda_dp_free();
    cublasCheck(cublasDestroy(cublas_handle));
    return 0;
}
#endif
