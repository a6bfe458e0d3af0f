/*
 * common/cudnn_att.cu: cuDNN's fused causal attention (SDPA, forward and backward) through
 * NVIDIA's header-only cudnn-frontend; the interface and its conventions are in cudnn_att.h.
 * Built once into build/cudnn_att.o and linked into the CUDA trainers by `make ... USE_CUDNN=1`
 * (the frontend is heavy C++: compiling it into each trainer would cost that time twice).
 * The frontend's headers come from the PyPI wheel nvidia-cudnn-frontend (make cudnn-frontend).
 *
 * One graph per (direction, shape, strides), built on first use and kept in a map: building
 * asks cuDNN's heuristics for a plan (milliseconds to a second), executing is one launch.
 * Tensors are named by uid, so one execute() call maps uids to this call's pointers.
 *
 * This file is compiled for the GPU only: the emulator (test/emu/) cannot run cuDNN, and an
 * emulated build never defines USE_CUDNN, so it never sees this file.
 */
#include <cstring> // before the frontend: its shim calls std::strlen without including it (1.32.0)

#include <cudnn_frontend.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "cudnn_att.h"

namespace fe = cudnn_frontend;

[[noreturn]] static void att_fail(const char *what, const std::string &msg) {
    fprintf(stderr, "error: --attention cudnn: %s: %s\n", what, msg.c_str());
    exit(1);
}
static void att_cuda(cudaError_t err, const char *what) {
    if (err != cudaSuccess) att_fail(what, cudaGetErrorString(err));
}
#define FE_CHECK(call, what)                                                                                           \
    do {                                                                                                               \
        fe::error_t e_ = (call);                                                                                       \
        if (e_.is_bad()) att_fail(what, e_.get_message());                                                             \
    } while (0)

enum : int64_t { UID_Q = 1, UID_K, UID_V, UID_O, UID_STATS, UID_DO, UID_DQ, UID_DK, UID_DV };

static cudnnHandle_t att_handle = nullptr;
static void *att_workspace = nullptr; // cuDNN's, the largest any graph asked for
static size_t att_workspace_bytes = 0;
static __nv_bfloat16 *att_scratch = nullptr; // the _f32 functions' bf16 copies
static size_t att_scratch_bytes = 0;

// (backward?, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, dkv_rs) -> its graph
typedef std::array<long, 11> GraphKey;
static std::map<GraphKey, std::shared_ptr<fe::graph::Graph>> att_graphs;

extern "C" const char *cudnn_attention_unsupported(int hs) {
    if (hs % 8 != 0) return "cuDNN's SDPA needs a head size that is a multiple of 8";
    if (hs > 128) return "cuDNN's SDPA here is limited to head sizes up to 128";
    return NULL;
}

static cudnnHandle_t handle_get(void) {
    if (!att_handle) {
        cudnnStatus_t st = cudnnCreate(&att_handle);
        if (st != CUDNN_STATUS_SUCCESS) att_fail("cudnnCreate", cudnnGetErrorString(st));
    }
    return att_handle;
}

// grows a device buffer (cudaFree waits for the work that may still read the old one)
static void grow(void **p, size_t *have, size_t need, const char *what) {
    if (need <= *have) return;
    if (*p) att_cuda(cudaFree(*p), what);
    att_cuda(cudaMalloc(p, need), what);
    *have = need;
}

// (B, H, T, hs) with row t of head h at base + (b*T + t)*rs + h*hs, as the trainers lay them out
static std::shared_ptr<fe::graph::Tensor_attributes> bhsd(fe::graph::Graph &g, const char *name, int64_t uid,
                                                           long B, long H, long T, long hs, long rs) {
    return g.tensor(fe::graph::Tensor_attributes()
                        .set_name(name)
                        .set_uid(uid)
                        .set_dim({B, H, T, hs})
                        .set_stride({T * rs, hs, rs, 1}));
}

static bool step_ok(fe::error_t e, const char *what, std::string *err) {
    if (e.is_good()) return true;
    *err = std::string(what) + ": " + e.get_message();
    return false;
}

// One graph, built and planned; on failure NULL and *err says which step and why.
static std::shared_ptr<fe::graph::Graph> graph_build(int bwd, int deterministic, int B, int T, int NH, int NKV, int hs,
                                                     long q_rs, long kv_rs, long o_rs, long dq_rs, long dkv_rs,
                                                     std::string *err) {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    auto Q = bhsd(*g, "Q", UID_Q, B, NH, T, hs, q_rs);
    auto K = bhsd(*g, "K", UID_K, B, NKV, T, hs, kv_rs);
    auto V = bhsd(*g, "V", UID_V, B, NKV, T, hs, kv_rs);
    float scale = (float)(1.0 / sqrt((double)hs));
    // (B, NH, T, 1) fp32, packed: the flash kernels' (B, NH, T) log-sum-exp
    std::vector<int64_t> sdim = {B, NH, T, 1}, sstride = {(int64_t)NH * T, T, 1, 1};
    if (!bwd) {
        auto opts = fe::graph::SDPA_attributes()
                        .set_name("attention_forward")
                        .set_generate_stats(true)
                        .set_causal_mask(true)
                        .set_attn_scale(scale);
        auto outs = g->sdpa(Q, K, V, opts);
        outs[0]->set_output(true).set_uid(UID_O).set_dim({B, NH, T, hs}).set_stride({(int64_t)T * o_rs, hs, o_rs, 1});
        outs[1]->set_output(true).set_uid(UID_STATS).set_data_type(fe::DataType_t::FLOAT).set_dim(sdim).set_stride(
            sstride);
    } else {
        auto O = bhsd(*g, "O", UID_O, B, NH, T, hs, o_rs);
        auto dO = bhsd(*g, "dO", UID_DO, B, NH, T, hs, o_rs);
        auto stats = g->tensor(fe::graph::Tensor_attributes()
                                   .set_name("stats")
                                   .set_uid(UID_STATS)
                                   .set_dim(sdim)
                                   .set_stride(sstride)
                                   .set_data_type(fe::DataType_t::FLOAT));
        auto opts = fe::graph::SDPA_backward_attributes()
                        .set_name("attention_backward")
                        .set_causal_mask(true)
                        .set_attn_scale(scale)
                        .set_deterministic_algorithm(deterministic != 0);
        auto grads = g->sdpa_backward(Q, K, V, O, dO, stats, opts);
        grads[0]->set_output(true).set_uid(UID_DQ).set_dim({B, NH, T, hs}).set_stride(
            {(int64_t)T * dq_rs, hs, dq_rs, 1});
        grads[1]->set_output(true).set_uid(UID_DK).set_dim({B, NKV, T, hs}).set_stride(
            {(int64_t)T * dkv_rs, hs, dkv_rs, 1});
        grads[2]->set_output(true).set_uid(UID_DV).set_dim({B, NKV, T, hs}).set_stride(
            {(int64_t)T * dkv_rs, hs, dkv_rs, 1});
    }
    cudnnHandle_t h = handle_get();
    // each step only after the one before it succeeded
    if (!step_ok(g->validate(), "graph validate", err) ||
        !step_ok(g->build_operation_graph(h), "build_operation_graph", err) ||
        !step_ok(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", err) ||
        !step_ok(g->check_support(), "check_support (no cuDNN engine for this graph)", err) ||
        !step_ok(g->build_plans(), "build_plans", err)) {
        return nullptr;
    }
    return g;
}

static fe::graph::Graph &graph_get(int bwd, int B, int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs,
                                   long dq_rs, long dkv_rs) {
    GraphKey key = {bwd, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, dkv_rs};
    auto it = att_graphs.find(key);
    if (it != att_graphs.end()) return *it->second;
    const char *why = cudnn_attention_unsupported(hs);
    if (why) att_fail("head size", why);
    if (NKV <= 0 || NH % NKV != 0) att_fail("heads", "the query heads must be a multiple of the kv heads");
    std::string err, err2;
    auto g = graph_build(bwd, 1, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, dkv_rs, &err);
    if (!g && bwd) { // no deterministic engine: the ordinary one, said once (reruns then differ)
        g = graph_build(bwd, 0, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, dkv_rs, &err2);
        if (g) {
            fprintf(stderr,
                    "warning: --attention cudnn: no deterministic backward for B %d, T %d, NH %d, NKV %d, hs %d "
                    "(%s); using cuDNN's ordinary one: reruns are not bitwise reproducible\n",
                    B, T, NH, NKV, hs, err.c_str());
        }
    }
    if (!g) att_fail(bwd ? "backward graph" : "forward graph", bwd ? err + "; without determinism: " + err2 : err);
    int64_t ws = 0;
    FE_CHECK(g->get_workspace_size(ws), "get_workspace_size");
    grow(&att_workspace, &att_workspace_bytes, (size_t)ws, "cuDNN workspace");
    att_graphs[key] = g;
    return *g;
}

static void graph_run(fe::graph::Graph &g, std::unordered_map<int64_t, void *> &ptrs, const char *what) {
    FE_CHECK(g.execute(handle_get(), ptrs, att_workspace), what);
}

extern "C" void cudnn_attention_forward_bf16(__nv_bfloat16 *out, float *stats, const __nv_bfloat16 *q,
                                             const __nv_bfloat16 *k, const __nv_bfloat16 *v, int B, int T, int NH,
                                             int NKV, int hs, long q_rs, long kv_rs, long o_rs) {
    fe::graph::Graph &g = graph_get(0, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, 0, 0);
    std::unordered_map<int64_t, void *> ptrs = {{UID_Q, (void *)q},         {UID_K, (void *)k},
                                                {UID_V, (void *)v},         {UID_O, (void *)out},
                                                {UID_STATS, (void *)stats}};
    graph_run(g, ptrs, "forward execute");
}

extern "C" void cudnn_attention_backward_bf16(__nv_bfloat16 *dq, __nv_bfloat16 *dk, __nv_bfloat16 *dv,
                                              const __nv_bfloat16 *dout, const __nv_bfloat16 *out, const float *stats,
                                              const __nv_bfloat16 *q, const __nv_bfloat16 *k, const __nv_bfloat16 *v,
                                              int B, int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs,
                                              long dq_rs, long dkv_rs) {
    fe::graph::Graph &g = graph_get(1, B, T, NH, NKV, hs, q_rs, kv_rs, o_rs, dq_rs, dkv_rs);
    std::unordered_map<int64_t, void *> ptrs = {
        {UID_Q, (void *)q},   {UID_K, (void *)k},   {UID_V, (void *)v},   {UID_O, (void *)out},
        {UID_DO, (void *)dout}, {UID_STATS, (void *)stats}, {UID_DQ, (void *)dq}, {UID_DK, (void *)dk},
        {UID_DV, (void *)dv}};
    graph_run(g, ptrs, "backward execute");
}

// ---------------------------------------------------------------------------------------------
// fp32 tensors: round to packed bf16 (rows of width values, rs apart in the source), widen back

__global__ void att_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, long rows, int width, long rs) {
    long n = rows * width;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        dst[i] = __float2bfloat16_rn(src[i / width * rs + i % width]);
    }
}
__global__ void att_from_bf16_kernel(float *dst, long rs, const __nv_bfloat16 *src, long rows, int width) {
    long n = rows * width;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        dst[i / width * rs + i % width] = __bfloat162float(src[i]);
    }
}
static int att_grid(long n) {
    long g = (n + 255) / 256;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}
static void to_bf16(__nv_bfloat16 *dst, const float *src, long rows, int width, long rs) {
    att_to_bf16_kernel<<<att_grid(rows * width), 256>>>(dst, src, rows, width, rs);
    att_cuda(cudaGetLastError(), "fp32 -> bf16 launch");
}
static void from_bf16(float *dst, long rs, const __nv_bfloat16 *src, long rows, int width) {
    att_from_bf16_kernel<<<att_grid(rows * width), 256>>>(dst, rs, src, rows, width);
    att_cuda(cudaGetLastError(), "bf16 -> fp32 launch");
}
// n elements of bf16 scratch (the callers cut it into pieces of multiples of 8: 16-byte aligned)
static __nv_bfloat16 *scratch_get(size_t n) {
    size_t bytes = n * sizeof(__nv_bfloat16);
    grow((void **)&att_scratch, &att_scratch_bytes, bytes, "bf16 scratch");
    return att_scratch;
}
static size_t pad8(size_t n) { return (n + 7) / 8 * 8; }

extern "C" void cudnn_attention_forward_f32(float *out, float *stats, const float *q, const float *k, const float *v,
                                            int B, int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs) {
    long rows = (long)B * T;
    int C = NH * hs, KVD = NKV * hs;
    size_t nq = pad8((size_t)rows * C), nkv = pad8((size_t)rows * KVD);
    __nv_bfloat16 *qb = scratch_get(2 * nq + 2 * nkv), *kb = qb + nq, *vb = kb + nkv, *ob = vb + nkv;
    to_bf16(qb, q, rows, C, q_rs);
    to_bf16(kb, k, rows, KVD, kv_rs);
    to_bf16(vb, v, rows, KVD, kv_rs);
    cudnn_attention_forward_bf16(ob, stats, qb, kb, vb, B, T, NH, NKV, hs, C, KVD, C);
    from_bf16(out, o_rs, ob, rows, C);
}

extern "C" void cudnn_attention_backward_f32(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                             const float *stats, const float *q, const float *k, const float *v, int B,
                                             int T, int NH, int NKV, int hs, long q_rs, long kv_rs, long o_rs,
                                             long dq_rs, long dkv_rs) {
    long rows = (long)B * T;
    int C = NH * hs, KVD = NKV * hs;
    size_t nq = pad8((size_t)rows * C), nkv = pad8((size_t)rows * KVD);
    __nv_bfloat16 *qb = scratch_get(4 * nq + 4 * nkv), *kb = qb + nq, *vb = kb + nkv, *ob = vb + nkv;
    __nv_bfloat16 *dob = ob + nq, *dqb = dob + nq, *dkb = dqb + nq, *dvb = dkb + nkv;
    // the forward's out was widened from bf16, so rounding it again gives the forward's bits
    to_bf16(qb, q, rows, C, q_rs);
    to_bf16(kb, k, rows, KVD, kv_rs);
    to_bf16(vb, v, rows, KVD, kv_rs);
    to_bf16(ob, out, rows, C, o_rs);
    to_bf16(dob, dout, rows, C, o_rs);
    cudnn_attention_backward_bf16(dqb, dkb, dvb, dob, ob, stats, qb, kb, vb, B, T, NH, NKV, hs, C, KVD, C, C, KVD);
    from_bf16(dq, dq_rs, dqb, rows, C);
    from_bf16(dk, dkv_rs, dkb, rows, KVD);
    from_bf16(dv, dkv_rs, dvb, rows, KVD);
}

extern "C" long cudnn_attention_version(long *frontend) {
    if (frontend) *frontend = CUDNN_FRONTEND_VERSION;
    return (long)cudnnGetVersion();
}

extern "C" void cudnn_attention_free(void) {
    att_graphs.clear();
    if (att_workspace) cudaFree(att_workspace);
    if (att_scratch) cudaFree(att_scratch);
    att_workspace = nullptr, att_scratch = nullptr;
    att_workspace_bytes = 0, att_scratch_bytes = 0;
    if (att_handle) cudnnDestroy(att_handle);
    att_handle = nullptr;
}
