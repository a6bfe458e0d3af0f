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

// --recompute 1: the activations that are cheap to redo (LLaMA: the RMSNorm outputs and SwiGLU's
// output; GPT-2: the LayerNorm outputs and GeLU's output) keep one layer's buffer, which the
// forward overwrites layer after layer and the backward fills again with the forward's own
// kernel before it needs it (the same kernel on the same inputs: the same bits as --recompute 0)
static int recompute = 0;

// How many layers a recomputed activation's buffer holds, and where layer l's slice starts.
static long recompute_layers(int L) { return recompute ? 1 : L; }
static long recompute_slot(int l) { return recompute ? 0 : l; }

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
 * MFU on the progress line: the model's FLOPs a token, 6 N + 6 L C T (docs/perf.md, "On a
 * GPU"; N the matmul weights, T the sequence length), times tokens/s, over the device's dense
 * peak for the precision the matmuls run in: SMs x clock x FLOP a clock per SM.
 */
static double mfu_flops_per_token(double matmul_params, int L, int C, int T) {
    return 6.0 * matmul_params + 6.0 * L * C * T;
}

// Dense FLOP a clock per SM from NVIDIA's data sheets: bf16 on tensor cores (TF32 half of
// it), fp32 on the CUDA cores (64 per SM on sm_80, 128 on sm_90, an FMA = 2 FLOP); 0 for an
// architecture not in the table ("mfu n/a"). "fp32", "tf32" or "bf16".
static double peak_flop_per_clock_per_sm(int major, int minor, const char *precision) {
    double bf16 = 0, fp32 = 0;
    if (major == 8 && minor == 0) bf16 = 2048, fp32 = 128; // A100
    if (major == 9 && minor == 0) bf16 = 4096, fp32 = 256; // H100, H200
    if (!strcmp(precision, "bf16")) return bf16;
    if (!strcmp(precision, "tf32")) return bf16 / 2;
    return fp32;
}

// FLOP/s of sms SMs at clock_khz (cudaDevAttrClockRate's unit); 0 when unknown.
static double peak_flops(int major, int minor, int sms, double clock_khz, const char *precision) {
    return peak_flop_per_clock_per_sm(major, minor, precision) * sms * clock_khz * 1e3;
}

// This GPU's peak (CUDA 13 has no cudaDeviceProp::clockRate: the attributes give the clock).
static double gpu_peak_flops(const char *precision) {
    int major = 0, minor = 0, sms = 0, khz = 0;
    cudaCheck(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, gpu_device));
    cudaCheck(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, gpu_device));
    cudaCheck(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, gpu_device));
    cudaCheck(cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, gpu_device));
    return peak_flops(major, minor, sms, khz, precision);
}

// The progress line's MFU (log_step): this run's FLOPs a token, against the peak of every rank's GPU.
static void mfu_setup(Logs *lg, double matmul_params, int L, int C, int T, const char *precision) {
    lg->flops_per_token = mfu_flops_per_token(matmul_params, L, C, T);
    lg->peak_flops = gpu_peak_flops(precision) * dp.ranks;
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
