/*
 * common/cuda_train.h: the host plumbing both CUDA trainers share beyond
 * common/train.h: the GPU's flags and set-up, and the token buckets behind the
 * deterministic embedding gradient. Include after train.h and cuda_common.h.
 */
#ifndef RESCALE_CUDA_TRAIN_H
#define RESCALE_CUDA_TRAIN_H

#include "cuda_attention.h"
#include "cuda_common.h"
#include "train.h"
#ifdef USE_CUDNN
#include "cudnn_att.h" // --attention cudnn: cuDNN's fused attention (make ... USE_CUDNN=1)
#endif

// --attention: 1 = flash (common/cuda_attention.h, the default) or cudnn: a layer's att slot holds
// each row's log-sum-exp, (B,NH,T); 0 = matmul: it holds the probabilities, (B,NH,T,T)
static int attention_flash = 1;
// --attention cudnn (common/cudnn_att.h, a USE_CUDNN=1 build only): attention_flash is 1 too, so
// the memory plan is flash's; only the kernels differ (cuDNN's, in bf16: docs/gpu.md)
static int attention_cudnn = 0;

#ifndef USE_CUDNN
// stand-ins in a build without cuDNN (the emulator's too): attention_setup refuses the flag first
template <typename X>
static void cudnn_attention_forward(X *, float *, const X *, const X *, const X *, int, int, int, int, int, long, long,
                                    long) {
    die("--attention cudnn: not in this build");
}
template <typename X>
static void cudnn_attention_backward(X *, X *, X *, const X *, const X *, const float *, const X *, const X *,
                                     const X *, int, int, int, int, int, long, long, long, long, long) {
    die("--attention cudnn: not in this build");
}
#endif

// the values of one layer's att slot (and of the attention scratch's datt) under attention_flash
static long attention_att_size(int B, int T, int NH) { return (long)B * NH * T * (attention_flash ? 1 : T); }

// --attention from the flags, with flash's limit on the model's head size (dim / heads)
static void attention_setup(const Settings *s, int dim, int heads) {
    attention_cudnn = strcmp(s->attention, "cudnn") == 0;
    attention_flash = strcmp(s->attention, "flash") == 0 || attention_cudnn;
#ifndef USE_CUDNN
    if (attention_cudnn) {
        usage_error("--attention cudnn: this program was built without cuDNN; build it with `make cuda USE_CUDNN=1` "
                    "(docs/gpu.md, \"cuDNN attention\")");
    }
#else
    const char *why = attention_cudnn ? cudnn_attention_unsupported(dim / heads) : NULL;
    if (why) usage_error("--attention cudnn: head size %d (dim %d / heads %d): %s", dim / heads, dim, heads, why);
#endif
    if (attention_flash && !attention_cudnn && dim / heads > FA_MAX_HS) {
        usage_error("--attention flash: the head size %d (dim %d / heads %d) is over %d; use --attention matmul",
                    dim / heads, dim, heads, FA_MAX_HS);
    }
}

// This process's GPU: 0, or under MPI its rank's on the machine (gpu_dp_setup, common/cuda_dp.h).
static int gpu_device = 0;

// The GPU, or a clear error when there is none (these programs have no CPU
// fallback: cpu_program is the twin to run instead).
static void gpu_setup(int tf32, const char *cpu_program) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        die("no CUDA GPU available (%s); %s runs on the CPU",
            err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", cpu_program);
    }
    cudaCheck(cudaSetDevice(gpu_device));
    cublas_setup(tf32);
}

// memory_check's twin for the GPU programs: the run's device memory (bytes, the
// trainer's count) against the device's, said before anything is allocated.
static void gpu_memory_check(const Settings *s, double bytes) {
    cudaDeviceProp prop;
    cudaCheck(cudaGetDeviceProperties(&prop, gpu_device));
    double have = (double)prop.totalGlobalMem, gib = 1024.0 * 1024 * 1024;
    printf("GPU memory: about %.3f GiB (%.0f bytes) for parameters, AdamW's moments and activations (%.1f GiB on "
           "the device)\n", bytes / gib, bytes, have / gib);
    if (s->memory_check && bytes > have) {
        usage_error("this configuration needs about %.1f GiB of GPU memory, more than the device's %.1f GiB "
                    "(--memory-check 0 tries anyway)", bytes / gib, have / gib);
    }
}

/*
 * The batch's positions grouped by token, for the embedding's backward: one
 * block owns each distinct token and adds its positions' gradients in list
 * order, so the sum is the same on every run (no atomics). A counting sort on
 * the host, O(V + N); within a token the positions stay ascending.
 */
typedef struct {
    int count;                  // distinct tokens in the batch
    int *h_count;               // (V+1) scratch of the sort
    int *h_token, *h_start, *h_pos; // token of bucket b; its positions h_pos[h_start[b] .. h_start[b+1])
    int *token, *start, *pos;   // the same on the GPU
} TokenBuckets;

static void token_buckets_alloc(TokenBuckets *tb, int V, int N) {
    tb->count = 0;
    tb->h_count = (int *)calloc_check(V + 1, sizeof(int));
    tb->h_token = (int *)calloc_check(N, sizeof(int));
    tb->h_start = (int *)calloc_check(N + 1, sizeof(int));
    tb->h_pos = (int *)calloc_check(N, sizeof(int));
    tb->token = (int *)cuda_calloc(N, sizeof(int));
    tb->start = (int *)cuda_calloc(N + 1, sizeof(int));
    tb->pos = (int *)cuda_calloc(N, sizeof(int));
}

static void token_buckets_free(TokenBuckets *tb) {
    free(tb->h_count), free(tb->h_token), free(tb->h_start), free(tb->h_pos);
    cudaCheck(cudaFree(tb->token)), cudaCheck(cudaFree(tb->start)), cudaCheck(cudaFree(tb->pos));
    memset(tb, 0, sizeof(*tb));
}

// The sort alone (the tests call it on hosts without a GPU).
static void token_buckets_sort(TokenBuckets *tb, const int *tokens, int N, int V) {
    int *count = tb->h_count;
    memset(count, 0, sizeof(int) * (V + 1));
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    int nb = 0;
    for (int v = 0; v < V; v++) {
        if (count[v + 1] > 0) {
            tb->h_token[nb] = v;
            tb->h_start[nb] = count[v]; // the prefix sum so far: where token v's positions start
            nb++;
        }
        count[v + 1] += count[v]; // count[v + 1] is now where token v+1's positions start
    }
    tb->h_start[nb] = N;
    for (int i = 0; i < N; i++) tb->h_pos[count[tokens[i]]++] = i;
    tb->count = nb;
}

static void token_buckets_build(TokenBuckets *tb, const int *tokens, int N, int V) {
    token_buckets_sort(tb, tokens, N, V);
    int nb = tb->count;
    cudaCheck(cudaMemcpy(tb->token, tb->h_token, sizeof(int) * nb, cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(tb->start, tb->h_start, sizeof(int) * (nb + 1), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(tb->pos, tb->h_pos, sizeof(int) * N, cudaMemcpyHostToDevice));
}

#endif // RESCALE_CUDA_TRAIN_H
