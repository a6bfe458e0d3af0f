/*
 * test/test_cudnn_att.cu: cuDNN's attention (common/cudnn_att.cu, --attention cudnn) against the
 * flash kernels (common/cuda_attention.h, the default, checked against the CPU loops by
 * dev/cuda/attention and test/test_gpu_emu.sh). GPU only: `make cuda-cudnn` builds it,
 * dev/gpu_check.sh (step 6) runs it. Exit 1 when a check fails.
 *
 * Random q, k, v and dout, already rounded to bf16, so that the _f32 path's rounding is exact
 * and what differs from flash is cuDNN's own bf16 (the probabilities before P.V, dS before
 * dS.K and dS^T.Q, out before it is written). Each case, in a trainer's layout:
 *   gpt2   the packed qkv (B,T,3C), q, k, v at offsets 0, C, 2C, row stride 3C; dq, dk, dv into
 *          dqkv the same way (train_gpt2.cu)
 *   llama  q (B,T,NH,hs), k and v (B,T,NKV,hs): grouped-query heads, query head h reads kv head
 *          h / (NH/NKV) (train_llama.cu)
 * Checks, each as max |cudnn - flash| / max |flash| over the tensor: out 1e-2; dq, dk, dv 3e-2;
 * the log-sum-exp, max |difference| 1e-2 (it is a logarithm: an absolute error). T 200 is not a
 * multiple of cuDNN's tiles. Also: the _bf16 entry on the same tensors, in place in the trainer's
 * strides (what a bf16 trainer will call), within the same tolerances of flash; and two backward
 * passes give the same bits (the deterministic algorithm).
 */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

#include "cuda_attention.h"
#include "cudnn_att.h"

static void check(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "CUDA error in %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

static unsigned long long rng_state = 88172645463325252ull;
static float uniform(void) { // xorshift64*, (-1, 1)
    rng_state ^= rng_state >> 12, rng_state ^= rng_state << 25, rng_state ^= rng_state >> 27;
    return (float)((rng_state * 2685821657736338717ull >> 40) / (double)(1ull << 24)) * 2 - 1;
}

template <typename T>
static T *dev(const std::vector<T> &h) {
    T *d = NULL;
    check(cudaMalloc(&d, sizeof(T) * (h.size() > 0 ? h.size() : 1)), "cudaMalloc");
    check(cudaMemcpy(d, h.data(), sizeof(T) * h.size(), cudaMemcpyHostToDevice), "copy to device");
    return d;
}
template <typename T>
static std::vector<T> host(const T *d, size_t n) {
    std::vector<T> h(n);
    check(cudaDeviceSynchronize(), "kernels");
    check(cudaMemcpy(h.data(), d, sizeof(T) * n, cudaMemcpyDeviceToHost), "copy to host");
    return h;
}
static std::vector<__nv_bfloat16> to_bf16(const std::vector<float> &x) {
    std::vector<__nv_bfloat16> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __float2bfloat16_rn(x[i]);
    return y;
}
static std::vector<float> from_bf16(const std::vector<__nv_bfloat16> &x) {
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); i++) y[i] = __bfloat162float(x[i]);
    return y;
}

static int failures = 0;
// max |a - b| / max |b| (or max |a - b| when absolute) over the n values; a line, and a failure
static void compare(const char *name, const char *what, const std::vector<float> &a, const std::vector<float> &b,
                    double tol, int absolute) {
    double maxdiff = 0, maxref = 0;
    int nonfinite = 0;
    for (size_t i = 0; i < b.size(); i++) {
        if (!isfinite(a[i])) nonfinite++;
        maxdiff = fmax(maxdiff, fabs((double)a[i] - b[i]));
        maxref = fmax(maxref, fabs((double)b[i]));
    }
    double err = absolute ? maxdiff : maxdiff / (maxref > 0 ? maxref : 1);
    int ok = nonfinite == 0 && err <= tol;
    printf("  %-6s %-22s %s %.2e (tolerance %.0e)%s  %s\n", name, what, absolute ? "max abs diff" : "max diff / max",
           err, tol, nonfinite ? " NON-FINITE" : "", ok ? "ok" : "FAIL");
    failures += !ok;
}

typedef struct {
    const char *name;
    int B, T, NH, NKV, hs, packed;
} Case;

static void run_case(const Case &c) {
    int B = c.B, T = c.T, NH = c.NH, NKV = c.NKV, hs = c.hs;
    long C = (long)NH * hs, KVD = (long)NKV * hs, rows = (long)B * T;
    // the trainer's layout: one buffer (packed qkv) or three
    long q_rs = c.packed ? 3 * C : C, kv_rs = c.packed ? 3 * C : KVD, o_rs = C;
    long nin = c.packed ? rows * 3 * C : rows * (C + 2 * KVD);
    long koff = c.packed ? C : rows * C, voff = c.packed ? 2 * C : rows * (C + KVD);
    printf("%s: B %d, T %d, NH %d, NKV %d, hs %d (%s)\n", c.name, B, T, NH, NKV, hs,
           c.packed ? "packed qkv, row stride 3C" : "q, k, v apart");
    std::vector<float> in(nin), dout(rows * C);
    for (auto &x : in) x = bf16_rounded(2.0f * uniform()); // scores of std 4/3 after the scale: peaked rows
    for (auto &x : dout) x = bf16_rounded(uniform());
    float *d_in = dev(in), *d_dout = dev(dout);
    const float *q = d_in, *k = d_in + koff, *v = d_in + voff;
    long nst = (long)B * NH * T;
    std::vector<float> zo(rows * C, 0.0f), zs(nst, 0.0f), zg(nin, 0.0f);
    float *out_f = dev(zo), *out_c = dev(zo), *lse_f = dev(zs), *lse_c = dev(zs), *D = dev(zs);
    float *g_f = dev(zg), *g_c = dev(zg), *g_c2 = dev(zg); // dq, dk, dv in the input's layout
    // flash
    if (!flash_attention_forward(out_f, lse_f, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs)) {
        fprintf(stderr, "flash: head size %d over %d\n", hs, FA_MAX_HS);
        exit(1);
    }
    flash_attention_backward(g_f, g_f + koff, g_f + voff, D, d_dout, out_f, lse_f, q, k, v, B, T, NH, NKV, hs, q_rs,
                             kv_rs, o_rs, q_rs, kv_rs);
    check(cudaGetLastError(), "flash launches");
    // cuDNN, through the fp32 entry (what the fp32 trainers call), backward twice
    cudnn_attention_forward_f32(out_c, lse_c, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs);
    cudnn_attention_backward_f32(g_c, g_c + koff, g_c + voff, d_dout, out_c, lse_c, q, k, v, B, T, NH, NKV, hs, q_rs,
                                 kv_rs, o_rs, q_rs, kv_rs);
    cudnn_attention_backward_f32(g_c2, g_c2 + koff, g_c2 + voff, d_dout, out_c, lse_c, q, k, v, B, T, NH, NKV, hs,
                                 q_rs, kv_rs, o_rs, q_rs, kv_rs);
    std::vector<float> hout_f = host(out_f, rows * C), hout_c = host(out_c, rows * C);
    std::vector<float> hlse_f = host(lse_f, nst), hlse_c = host(lse_c, nst);
    std::vector<float> hg_f = host(g_f, nin), hg_c = host(g_c, nin), hg_c2 = host(g_c2, nin);
    // the gradients by tensor: q's columns, k's, v's
    auto part = [&](const std::vector<float> &g, int which) {
        std::vector<float> r;
        long off = which == 0 ? 0 : which == 1 ? koff : voff, w = which == 0 ? C : KVD, rs = which == 0 ? q_rs : kv_rs;
        for (long t = 0; t < rows; t++) r.insert(r.end(), g.begin() + off + t * rs, g.begin() + off + t * rs + w);
        return r;
    };
    compare(c.name, "f32 entry: out", hout_c, hout_f, 1e-2, 0);
    compare(c.name, "f32 entry: log-sum-exp", hlse_c, hlse_f, 1e-2, 1);
    compare(c.name, "f32 entry: dq", part(hg_c, 0), part(hg_f, 0), 3e-2, 0);
    compare(c.name, "f32 entry: dk", part(hg_c, 1), part(hg_f, 1), 3e-2, 0);
    compare(c.name, "f32 entry: dv", part(hg_c, 2), part(hg_f, 2), 3e-2, 0);
    int same = memcmp(hg_c.data(), hg_c2.data(), sizeof(float) * nin) == 0;
    printf("  %-6s %-22s %s\n", c.name, "backward twice", same ? "the same bits  ok" : "DIFFERENT bits  FAIL");
    failures += !same;

    // the bf16 entry on the trainer's own strides (no packing)
    std::vector<__nv_bfloat16> in_b = to_bf16(in), dout_b = to_bf16(dout), zob(rows * C), zgb(nin);
    __nv_bfloat16 *b_in = dev(in_b), *b_dout = dev(dout_b), *b_out = dev(zob), *b_g = dev(zgb);
    float *lse_b = dev(zs);
    cudnn_attention_forward_bf16(b_out, lse_b, b_in, b_in + koff, b_in + voff, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs);
    cudnn_attention_backward_bf16(b_g, b_g + koff, b_g + voff, b_dout, b_out, lse_b, b_in, b_in + koff, b_in + voff, B,
                                  T, NH, NKV, hs, q_rs, kv_rs, o_rs, q_rs, kv_rs);
    std::vector<float> hb_out = from_bf16(host(b_out, rows * C)), hb_g = from_bf16(host(b_g, nin));
    compare(c.name, "bf16 entry: out", hb_out, hout_f, 1e-2, 0);
    compare(c.name, "bf16 entry: log-sum-exp", host(lse_b, nst), hlse_f, 1e-2, 1);
    compare(c.name, "bf16 entry: dq", part(hb_g, 0), part(hg_f, 0), 3e-2, 0);
    compare(c.name, "bf16 entry: dk", part(hb_g, 1), part(hg_f, 1), 3e-2, 0);
    compare(c.name, "bf16 entry: dv", part(hb_g, 2), part(hg_f, 2), 3e-2, 0);
    void *ptrs[] = {d_in, d_dout, out_f, out_c, lse_f, lse_c, D, g_f, g_c, g_c2, b_in, b_dout, b_out, b_g, lse_b};
    for (void *p : ptrs) check(cudaFree(p), "cudaFree");
}

int main(void) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
        printf("skipped: no CUDA GPU (cuDNN's attention runs on a GPU only)\n");
        return 0;
    }
    long fe = 0, lib = cudnn_attention_version(&fe);
    printf("cuDNN %ld, cudnn-frontend %ld\n", lib, fe);
    const Case cases[] = {
        {"gpt2", 2, 200, 4, 4, 64, 1},  // GPT-2's packed qkv, hs 64 (GPT-2 124M's)
        {"llama", 2, 200, 8, 2, 64, 0}, // grouped-query, 4 query heads per kv head
        {"llama", 3, 128, 4, 2, 32, 0}, // the tiny LLaMA's head size
        {"gpt2", 1, 1024, 2, 2, 64, 1}, // GPT-2's sequence length
    };
    for (const Case &c : cases) run_case(c);
    cudnn_attention_free();
    printf("test_cudnn_att: %s (%d failed)\n", failures ? "FAIL" : "all ok", failures);
    return failures ? 1 : 0;
}
