/*
 * common/cuda_attention.h: causal self-attention without the T x T matrix (both CUDA
 * trainers' default, --attention flash; dev/cuda/attention.cu's version 3).
 *
 * Head h of row t of q lives at q[(b*T + t)*q_rs + h*hs + d]: the trainers' own layouts,
 * with no permuted copies (train_llama.cu: q (B,T,NH,hs), k and v (B,T,NKV,hs);
 * train_gpt2.cu: the packed qkv (B,T,3C) with q, k, v at offsets 0, C, 2C). Query head h
 * reads kv head h / (NH/NKV).
 *
 * Forward (online softmax, as in FlashAttention): one thread per query row holds the row of
 * q and its running output; the block's threads load 32 rows of k and v at a time into
 * shared memory. For each staged tile the thread takes its scores, the running maximum m and
 * the running sum l of exp(score - m), rescales what it had by exp(m_old - m) and adds the
 * tile's exp(score - m) * v. At the end out = acc / l, and lse = m + log l is kept
 * (B,NH,T) for the backward: 4 bytes per row instead of T*4.
 *
 * Backward, with p = exp(score - lse) recomputed from q and k, D = rowsum(dout * out) (with round:
 * rowsum(p * (dout.v)), summed by the dq kernel) and
 * ds = p * (dout.v - D):
 *   dq = scale * sum_j ds_j k_j          one thread per query row, over the keys j <= t
 *   dk = scale * sum_i ds_i q_i,         one thread per key row, over the queries i >= j of
 *   dv = sum_i p_i dout_i                each query head of its group, in head order
 * Two kernels instead of FlashAttention-2's one with atomic adds into dq: every value is
 * summed by one thread in a fixed order, so the result is the same on every run and under
 * every emulator schedule (the trainers' determinism rule), at the cost of computing p
 * twice.
 *
 * Precision: the element type X is the trainers' floatX; every sum is fp32. With `round`
 * (train_llama.cu's --precision bf16, template parameter R) the inputs of every product are
 * rounded to bf16 as train_llama.c's matmuls round them: q, k, v and dout as they are loaded,
 * p before p.v and p^T.dout, ds (scaled) before ds.k and ds^T.q. The online softmax's p is
 * not yet normalised when it is rounded (the forward divides by l after the sum), so the
 * forward cannot give the CPU's bits; docs/gpu.md, "bf16", has the tolerance. Scores are
 * (q . k) * scale with scale = 1/sqrt(hs). hs up to FA_MAX_HS = 64: the row arrays are sized
 * by the next power of two (HSX) and padded with zeros; every loop over a row or a tile that
 * indexes them is unrolled, so they stay in registers (test/test_ptxas.sh: no spills, no stack).
 *
 * Speed: written to be right and to show the data flow; on a GPU it is compared with the
 * cuBLAS path (--attention matmul) and cuDNN by `make gpu-check` (docs/gpu.md).
 */
#ifndef RESCALE_CUDA_ATTENTION_H
#define RESCALE_CUDA_ATTENTION_H

#include <cuda_runtime.h>
#include <math.h>

#include "bf16.h"

#include <type_traits>

#define FA_ROWS 64  // query rows of a block, one thread each
#define FA_KROWS 32 // key rows of a block in the dk, dv kernel
#define FA_TILE 32 // key (or query) rows staged in shared memory at a time
// A compiler barrier between a dot product over a staged row and the update that reads the
// row again: the update reloads it from shared memory instead of keeping HSX more values in
// registers (which spills at HSX = 64).
#define FA_RELOAD() asm volatile("" ::: "memory")
#define FA_MAX_HS 64 // the largest head size (GPT-2 124M and LLaMA-1B have 64)

// the rows of a head for one (b, head): base + (b*T + t)*rs + head*hs
#define FA_ROW(base, rs, b, t, head) ((base) + ((long)(b) * T + (t)) * (rs) + (long)(head) * hs)

// a product's input: x, or with R x rounded to bf16
template <bool R>
__device__ inline float fa_in(float x) {
    return R ? bf16_rounded(x) : x;
}

template <typename X, int HSX, bool R>
__global__ void flash_forward_kernel(X *out, float *lse, const X *q, const X *k, const X *v, int T, int NH, int NKV,
                                     int hs, long q_rs, long kv_rs, long o_rs, float scale) {
    __shared__ float ks[FA_TILE][HSX], vs[FA_TILE][HSX];
    int b = blockIdx.z, h = blockIdx.y, kvh = h / (NH / NKV);
    int t = blockIdx.x * FA_ROWS + threadIdx.x, live = t < T;
    float qr[HSX], acc[HSX];
    const X *qt = FA_ROW(q, q_rs, b, live ? t : 0, h);
#pragma unroll
    for (int d = 0; d < HSX; d++) qr[d] = live && d < hs ? fa_in<R>((float)qt[d]) : 0.0f, acc[d] = 0;
    float m = -INFINITY, l = 0;
    int kend = min(T, (int)(blockIdx.x + 1) * FA_ROWS); // the block's last row sees keys < kend
    for (int j0 = 0; j0 < kend; j0 += FA_TILE) {
        __syncthreads(); // the previous tile is used up
        for (int i = threadIdx.x; i < FA_TILE * HSX; i += blockDim.x) {
            int jj = i / HSX, d = i % HSX, j = j0 + jj, ok = j < T && d < hs;
            ks[jj][d] = ok ? fa_in<R>((float)FA_ROW(k, kv_rs, b, j, kvh)[d]) : 0.0f;
            vs[jj][d] = ok ? fa_in<R>((float)FA_ROW(v, kv_rs, b, j, kvh)[d]) : 0.0f;
        }
        __syncthreads();
        if (!live || j0 > t) continue; // (every thread still reaches both barriers)
        int n = min(FA_TILE, t - j0 + 1);
        float s[FA_TILE], mnew = m; // (loops over the tile are unrolled: s stays in registers)
#pragma unroll
        for (int jj = 0; jj < FA_TILE; jj++) {
            float dot = 0;
#pragma unroll
            for (int d = 0; d < HSX; d++) dot += qr[d] * ks[jj][d];
            s[jj] = dot * scale;
            if (jj < n) mnew = fmaxf(mnew, s[jj]);
        }
        float corr = expf(m - mnew); // 0 on the first tile (m = -inf), when acc and l are 0
        l *= corr;
#pragma unroll
        for (int d = 0; d < HSX; d++) acc[d] *= corr;
#pragma unroll
        for (int jj = 0; jj < FA_TILE; jj++) {
            float p = jj < n ? expf(s[jj] - mnew) : 0.0f, pin = fa_in<R>(p); // l sums p unrounded
            l += p;
#pragma unroll
            for (int d = 0; d < HSX; d++) acc[d] += pin * vs[jj][d];
        }
        m = mnew;
    }
    if (!live) return;
    X *ot = FA_ROW(out, o_rs, b, t, h);
#pragma unroll
    for (int d = 0; d < HSX; d++) {
        if (d < hs) ot[d] = (X)(acc[d] / l);
    }
    lse[((long)b * NH + h) * T + t] = m + logf(l);
}

// D (B,NH,T) = rowsum(dout * out), one thread per row (without R; with R the dq kernel sums D)
template <typename X>
__global__ void flash_backward_rowdot_kernel(float *D, const X *dout, const X *out, int B, int T, int NH, int hs,
                                             long o_rs) {
    long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
    if (i >= (long)B * NH * T) return;
    int t = (int)(i % T), h = (int)(i / T % NH), b = (int)(i / ((long)T * NH));
    const X *dy = FA_ROW(dout, o_rs, b, t, h), *y = FA_ROW(out, o_rs, b, t, h);
    float s = 0;
    for (int d = 0; d < hs; d++) s += (float)dy[d] * (float)y[d];
    D[i] = s;
}

template <typename X, int HSX, bool R>
__global__ void flash_backward_dq_kernel(X *dq, const X *dout, const float *lse, float *D, const X *q,
                                         const X *k, const X *v, int T, int NH, int NKV, int hs, long q_rs,
                                         long kv_rs, long o_rs, long dq_rs, float scale) {
    __shared__ float ks[FA_TILE][HSX], vs[FA_TILE][HSX], dyown[FA_ROWS][HSX + 1];
    int b = blockIdx.z, h = blockIdx.y, kvh = h / (NH / NKV);
    int t = blockIdx.x * FA_ROWS + threadIdx.x, live = t < T, tl = live ? t : 0;
    float qr[HSX], acc[HSX], *dy = dyown[threadIdx.x];
    const X *qt = FA_ROW(q, q_rs, b, tl, h), *dyt = FA_ROW(dout, o_rs, b, tl, h);
#pragma unroll
    for (int d = 0; d < HSX; d++) {
        qr[d] = live && d < hs ? fa_in<R>((float)qt[d]) : 0.0f;
        dy[d] = live && d < hs ? fa_in<R>((float)dyt[d]) : 0.0f;
        acc[d] = 0;
    }
    long row = ((long)b * NH + h) * T + tl;
    float L = lse[row], Dt = R ? 0.0f : D[row];
    int kend = min(T, (int)(blockIdx.x + 1) * FA_ROWS);
    // With R a first pass sums D = rowsum(p * (dout.v)) over the rounded dout and v, as the CPU
    // does (rowsum(dout * out) would carry the forward's rounding of p into ds = p * (dout.v - D),
    // a difference of near numbers); D is written for the dk, dv kernel.
    for (int pass = R ? 0 : 1; pass < 2; pass++) {
        float Dsum = 0;
        for (int j0 = 0; j0 < kend; j0 += FA_TILE) {
            __syncthreads();
            for (int i = threadIdx.x; i < FA_TILE * HSX; i += blockDim.x) {
                int jj = i / HSX, d = i % HSX, j = j0 + jj, ok = j < T && d < hs;
                ks[jj][d] = ok ? fa_in<R>((float)FA_ROW(k, kv_rs, b, j, kvh)[d]) : 0.0f;
                vs[jj][d] = ok ? fa_in<R>((float)FA_ROW(v, kv_rs, b, j, kvh)[d]) : 0.0f;
            }
            __syncthreads();
            if (!live || j0 > t) continue;
            int n = min(FA_TILE, t - j0 + 1);
#pragma unroll 1
            for (int jj = 0; jj < n; jj++) {
                float qk = 0, dyv = 0;
#pragma unroll
                for (int d = 0; d < HSX; d++) qk += qr[d] * ks[jj][d], dyv += dy[d] * vs[jj][d];
                float p = expf(qk * scale - L);
                if (pass == 0) {
                    Dsum += p * dyv;
                    continue;
                }
                float ds = p * (dyv - Dt);
                if (R) ds = bf16_rounded(ds * scale); // the CPU rounds the scaled ds (then no scale below)
                FA_RELOAD();
#pragma unroll
                for (int d = 0; d < HSX; d++) acc[d] += ds * ks[jj][d];
            }
        }
        if (pass == 0) {
            Dt = Dsum;
            if (live) D[row] = Dt;
        }
    }
    if (!live) return;
    X *dqt = FA_ROW(dq, dq_rs, b, t, h);
#pragma unroll
    for (int d = 0; d < HSX; d++) {
        if (d < hs) dqt[d] = (X)(R ? acc[d] : acc[d] * scale);
    }
}

// One thread per key row j (blocks of FA_KROWS); its k row and dk in registers, its v row and
// dv in shared memory (padded: the threads' rows fall in different banks), so that the
// registers hold HSX = 64 without spilling.
template <typename X, int HSX, bool R>
__global__ void flash_backward_dkv_kernel(X *dk, X *dv, const X *dout, const float *lse, const float *D, const X *q,
                                          const X *k, const X *v, int T, int NH, int NKV, int hs, long q_rs,
                                          long kv_rs, long o_rs, long dkv_rs, float scale) {
    __shared__ float qs[FA_TILE][HSX], dys[FA_TILE][HSX], Ls[FA_TILE], Ds[FA_TILE];
    __shared__ float vown[FA_KROWS][HSX + 1], dvown[FA_KROWS][HSX + 1];
    int b = blockIdx.z, kvh = blockIdx.y, group = NH / NKV;
    int j = blockIdx.x * FA_KROWS + threadIdx.x, live = j < T, jl = live ? j : 0;
    float kr[HSX], dka[HSX], *vr = vown[threadIdx.x], *dva = dvown[threadIdx.x];
    const X *kt = FA_ROW(k, kv_rs, b, jl, kvh), *vt = FA_ROW(v, kv_rs, b, jl, kvh);
#pragma unroll
    for (int d = 0; d < HSX; d++) {
        kr[d] = live && d < hs ? fa_in<R>((float)kt[d]) : 0.0f;
        vr[d] = live && d < hs ? fa_in<R>((float)vt[d]) : 0.0f;
        dka[d] = dva[d] = 0;
    }
    int istart = blockIdx.x * FA_KROWS; // the block's first key: no query before it sees it
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        for (int i0 = istart; i0 < T; i0 += FA_TILE) {
            __syncthreads();
            for (int e = threadIdx.x; e < FA_TILE * HSX; e += blockDim.x) {
                int ii = e / HSX, d = e % HSX, i = i0 + ii, ok = i < T && d < hs;
                qs[ii][d] = ok ? fa_in<R>((float)FA_ROW(q, q_rs, b, i, h)[d]) : 0.0f;
                dys[ii][d] = ok ? fa_in<R>((float)FA_ROW(dout, o_rs, b, i, h)[d]) : 0.0f;
            }
            for (int ii = threadIdx.x; ii < FA_TILE; ii += blockDim.x) {
                long row = ((long)b * NH + h) * T + i0 + ii;
                Ls[ii] = i0 + ii < T ? lse[row] : 0.0f;
                Ds[ii] = i0 + ii < T ? D[row] : 0.0f;
            }
            __syncthreads();
            if (!live || i0 + FA_TILE <= j) continue;
            int first = j > i0 ? j - i0 : 0, n = min(FA_TILE, T - i0);
#pragma unroll 1
            for (int ii = first; ii < n; ii++) {
                float qk = 0, dyv = 0;
#pragma unroll
                for (int d = 0; d < HSX; d++) qk += qs[ii][d] * kr[d], dyv += dys[ii][d] * vr[d];
                float p = expf(qk * scale - Ls[ii]), ds = p * (dyv - Ds[ii]);
                if (R) p = bf16_rounded(p), ds = bf16_rounded(ds * scale);
                FA_RELOAD();
#pragma unroll
                for (int d = 0; d < HSX; d++) dva[d] += p * dys[ii][d], dka[d] += ds * qs[ii][d];
            }
        }
    }
    if (!live) return;
    X *dkt = FA_ROW(dk, dkv_rs, b, j, kvh), *dvt = FA_ROW(dv, dkv_rs, b, j, kvh);
#pragma unroll
    for (int d = 0; d < HSX; d++) {
        if (d < hs) dkt[d] = (X)(R ? dka[d] : dka[d] * scale), dvt[d] = (X)dva[d];
    }
}
#undef FA_ROW

// The launches, by the smallest HSX >= hs and R = round. Returns 0 when hs > FA_MAX_HS (the
// caller says so).
template <typename X, int HSX, bool R>
static void flash_forward_launch(X *out, float *lse, const X *q, const X *k, const X *v, int B, int T, int NH,
                                 int NKV, int hs, long q_rs, long kv_rs, long o_rs) {
    dim3 grid((T + FA_ROWS - 1) / FA_ROWS, NH, B);
    flash_forward_kernel<X, HSX, R><<<grid, FA_ROWS>>>(out, lse, q, k, v, T, NH, NKV, hs, q_rs, kv_rs, o_rs,
                                                      (float)(1.0 / sqrt((double)hs)));
}
template <typename X, int HSX, bool R>
static void flash_backward_launch(X *dq, X *dk, X *dv, float *D, const X *dout, const X *out, const float *lse,
                                  const X *q, const X *k, const X *v, int B, int T, int NH, int NKV, int hs,
                                  long q_rs, long kv_rs, long o_rs, long dq_rs, long dkv_rs) {
    float scale = (float)(1.0 / sqrt((double)hs));
    long rows = (long)B * NH * T;
    if (!R) flash_backward_rowdot_kernel<X><<<(int)((rows + 255) / 256), 256>>>(D, dout, out, B, T, NH, hs, o_rs);
    flash_backward_dq_kernel<X, HSX, R><<<dim3((T + FA_ROWS - 1) / FA_ROWS, NH, B), FA_ROWS>>>(
        dq, dout, lse, D, q, k, v, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, scale);
    flash_backward_dkv_kernel<X, HSX, R><<<dim3((T + FA_KROWS - 1) / FA_KROWS, NKV, B), FA_KROWS>>>(
        dk, dv, dout, lse, D, q, k, v, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dkv_rs, scale);
}

// Calls f with std::integral_constant<int, HSX> for the smallest HSX in 8, 16, 32, 64 that holds
// hs; returns 0 (and calls nothing) when hs > FA_MAX_HS.
template <typename F>
static int flash_dispatch_hs(int hs, F f) {
    if (hs <= 8) return f(std::integral_constant<int, 8>()), 1;
    if (hs <= 16) return f(std::integral_constant<int, 16>()), 1;
    if (hs <= 32) return f(std::integral_constant<int, 32>()), 1;
    if (hs <= 64) return f(std::integral_constant<int, 64>()), 1;
    return 0;
}
// the same, f called with (HSX, std::integral_constant<bool, round>)
template <typename F>
static int flash_dispatch(int hs, bool round, F f) {
    if (round) return flash_dispatch_hs(hs, [&](auto hsx) { f(hsx, std::integral_constant<bool, true>()); });
    return flash_dispatch_hs(hs, [&](auto hsx) { f(hsx, std::integral_constant<bool, false>()); });
}

// out (rows o_rs apart) and lse (B,NH,T) from q, k, v; with round, bf16 product inputs.
// Returns 0 if hs > FA_MAX_HS.
template <typename X>
static int flash_attention_forward(X *out, float *lse, const X *q, const X *k, const X *v, int B, int T, int NH,
                                   int NKV, int hs, long q_rs, long kv_rs, long o_rs, bool round = false) {
    return flash_dispatch(hs, round, [&](auto hsx, auto r) {
        flash_forward_launch<X, decltype(hsx)::value, decltype(r)::value>(out, lse, q, k, v, B, T, NH, NKV, hs, q_rs,
                                                                          kv_rs, o_rs);
    });
}

// dq, dk, dv (overwritten) from dout, the forward's out and lse; D is (B,NH,T) scratch.
template <typename X>
static int flash_attention_backward(X *dq, X *dk, X *dv, float *D, const X *dout, const X *out, const float *lse,
                                    const X *q, const X *k, const X *v, int B, int T, int NH, int NKV, int hs,
                                    long q_rs, long kv_rs, long o_rs, long dq_rs, long dkv_rs, bool round = false) {
    return flash_dispatch(hs, round, [&](auto hsx, auto r) {
        flash_backward_launch<X, decltype(hsx)::value, decltype(r)::value>(dq, dk, dv, D, dout, out, lse, q, k, v, B,
                                                                           T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs,
                                                                           dkv_rs);
    });
}

#endif // RESCALE_CUDA_ATTENTION_H
