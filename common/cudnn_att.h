/*
 * common/cudnn_att.h: causal self-attention through cuDNN's fused SDPA (flash-style, forward
 * and backward), the interface of common/cudnn_att.cu. Both CUDA trainers use it under
 * `--attention cudnn` in a build with USE_CUDNN=1 (make ... USE_CUDNN=1; docs/gpu.md,
 * "cuDNN attention"). The frontend's C++ stays in that one object file: this header is all
 * a trainer sees.
 *
 * Layout, as common/cuda_attention.h's flash kernels: head h of row t of q lives at
 * q[(b*T + t)*q_rs + h*hs + d] (row strides in elements; k and v share kv_rs, out and dout
 * share o_rs, dk and dv share dkv_rs). Query head h reads kv head h / (NH/NKV) (grouped-query
 * attention: cuDNN takes K and V with NKV heads as they are, no copies). stats is (B,NH,T)
 * fp32: each row's log-sum-exp (natural log) of the scaled scores, the same numbers the flash
 * kernels keep in a layer's att slot. Scale 1/sqrt(hs), causal (query t sees keys <= t).
 *
 * Precision: cuDNN's SDPA takes fp16/bf16 only. The _bf16 functions hand the tensors over as
 * they are; the _f32 functions (what the fp32 trainers call) round q, k, v, out and dout to bf16
 * in scratch, run the same graphs and widen out, dq, dk, dv back to fp32. Every sum inside is
 * fp32 (cuDNN's compute type). So `--attention cudnn` is bf16 attention in an otherwise fp32
 * program: a bf16-level difference from flash, not a bug.
 *
 * Determinism: the backward asks for cuDNN's deterministic algorithm (no atomic adds into dq),
 * so reruns give the same bits, as with the flash kernels. Where cuDNN has no deterministic
 * engine for a shape, it says so once on stderr and uses its ordinary one.
 *
 * All calls run on the default stream. Graphs are built once per shape and kept; the scratch
 * (bf16 copies and cuDNN's workspace) grows to the largest shape seen and is not part of the
 * trainers' memory estimate. Any cuDNN error prints what failed and exits.
 */
#ifndef RESCALE_CUDNN_ATT_H
#define RESCALE_CUDNN_ATT_H

#include <cuda_bf16.h>

#ifdef __cplusplus
extern "C" {
#endif

// NULL when cuDNN's SDPA takes head size hs, else why not (for the caller's usage error)
const char *cudnn_attention_unsupported(int hs);

void cudnn_attention_forward_bf16(__nv_bfloat16 *out, float *stats, const __nv_bfloat16 *q, const __nv_bfloat16 *k,
                                  const __nv_bfloat16 *v, int B, int T, int NH, int NKV, int hs, long q_rs,
                                  long kv_rs, long o_rs);
// dq, dk, dv are overwritten
void cudnn_attention_backward_bf16(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                                   const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const float *stats,
                                   const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B,
                                   int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs, long dq_rs,
                                   long dkv_rs);

void cudnn_attention_forward_f32(float *out, float *stats, const float *q, const float *k, const float *v, int B,
                                 int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs);
void cudnn_attention_backward_f32(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *stats, const float *q, const float *k, const float *v, int B, int T,
                                  int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs, long dq_rs, long dkv_rs);

// the cuDNN library's version (e.g. 91900), and the frontend's headers' (e.g. 13200)
long cudnn_attention_version(long *frontend);

// frees the graphs, the handle and the scratch (optional: the process's exit does the same)
void cudnn_attention_free(void);

#ifdef __cplusplus
}

// The trainers call these with their floatX, whichever it is.
static inline void cudnn_attention_forward(float *out, float *stats, const float *q, const float *k, const float *v,
                                           int B, int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs) {
    cudnn_attention_forward_f32(out, stats, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs);
}
static inline void cudnn_attention_forward(__nv_bfloat16 *out, float *stats, const __nv_bfloat16 *q,
                                           const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B, int T, int NH,
                                           int NKV, int hs, long q_rs, long kv_rs, long o_rs) {
    cudnn_attention_forward_bf16(out, stats, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs);
}
static inline void cudnn_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                            const float *stats, const float *q, const float *k, const float *v, int B,
                                            int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs,
                                            long dq_rs, long dkv_rs) {
    cudnn_attention_backward_f32(dq, dk, dv, dout, out, stats, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs,
                                 dkv_rs);
}
static inline void cudnn_attention_backward(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                                            const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const float *stats,
                                            const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                            int B, int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs,
                                            long dq_rs, long dkv_rs) {
    cudnn_attention_backward_bf16(dq, dk, dv, dout, out, stats, q, k, v, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs,
                                  dkv_rs);
}
#endif

#endif // RESCALE_CUDNN_ATT_H
