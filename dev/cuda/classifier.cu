/*
 * dev/cuda/classifier.cu: softmax + cross-entropy over the vocabulary and its gradient
 * (train_llama.cu's crossentropy_forward, crossentropy_backward_inplace, fused_classifier).
 *
 * losses[i] = logsumexp(logits[i]) - logits[i][target]; d(mean loss)/d logits =
 * (softmax - onehot)/N, written over the logits in place.
 *   version 1: two kernels, a block per row each: the forward keeps the log-sum-exp, the
 *              backward rereads the row (validation and the logits tests use these)
 *   version 2: one fused kernel: max, sum of exp, loss, and the gradient in place: the
 *              row is read twice instead of three times (the training step uses it)
 */
#include "common.h"

__device__ inline float row_logsumexp(const float *l, int V) {
    float m = -INFINITY;
    for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, l[j]);
    m = block_max(m);
    float s = 0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) s += expf(l[j] - m);
    s = block_sum(s);
    return m + logf(s);
}

__global__ void crossentropy_forward_kernel(float *losses, float *lse, const float *logits, const int *targets, int V) {
    const float *l = logits + (long)blockIdx.x * V;
    float z = row_logsumexp(l, V);
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = z;
        losses[blockIdx.x] = z - l[targets[blockIdx.x]];
    }
}

__global__ void crossentropy_backward_inplace_kernel(float *logits, const float *lse, const int *targets, int V, float inv_n) {
    float *l = logits + (long)blockIdx.x * V;
    float z = lse[blockIdx.x];
    int target = targets[blockIdx.x];
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(l[j] - z) * inv_n;
        l[j] = j == target ? g - inv_n : g;
    }
}

__global__ void fused_classifier_kernel(float *logits, float *losses, float *lse, const int *targets, int V, float inv_n) {
    float *l = logits + (long)blockIdx.x * V;
    int target = targets[blockIdx.x];
    float z = row_logsumexp(l, V);
    float at_target = l[target];
    __syncthreads(); // l[target] is read by all before anyone overwrites it
    if (threadIdx.x == 0) {
        lse[blockIdx.x] = z;
        losses[blockIdx.x] = z - at_target;
    }
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float g = expf(l[j] - z) * inv_n;
        l[j] = j == target ? g - inv_n : g;
    }
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    int N = 2048, V = 32000;
    long n = (long)N * V;
    float *logits = make_random_float(n, 8);
    int *targets = make_random_int(N, V);
    float *losses = (float *)malloc(sizeof(float) * N), *grad = (float *)malloc(sizeof(float) * n);
    for (int i = 0; i < N; i++) { // CPU reference in double
        const float *l = logits + (long)i * V;
        double m = -INFINITY, s = 0;
        for (int j = 0; j < V; j++) m = l[j] > m ? l[j] : m;
        for (int j = 0; j < V; j++) s += exp(l[j] - m);
        double z = m + log(s);
        losses[i] = (float)(z - l[targets[i]]);
        for (int j = 0; j < V; j++) grad[(long)i * V + j] = (float)(exp(l[j] - z) - (j == targets[i]));
    }
    float *d_logits = to_device(logits, n), *d_losses = device_zeros<float>(N), *d_lse = device_zeros<float>(N);
    int *d_targets = to_device(targets, N);
    float inv_n = 1.0f; // checked as softmax - onehot (values in [-1, 1]); the 1/N is one multiply
    for (int v = 1; v <= 2; v++) {
        if (!version_selected(argc, argv, v)) continue;
        printf("version %d\n", v);
        auto run = [&] {
            if (v == 1) {
                crossentropy_forward_kernel<<<N, 512>>>(d_losses, d_lse, d_logits, d_targets, V);
                crossentropy_backward_inplace_kernel<<<N, 512>>>(d_logits, d_lse, d_targets, V, inv_n);
            } else {
                fused_classifier_kernel<<<N, 512>>>(d_logits, d_losses, d_lse, d_targets, V, inv_n);
            }
        };
        cudaCheck(cudaMemcpy(d_logits, logits, sizeof(float) * n, cudaMemcpyHostToDevice));
        run();
        cudaCheck(cudaGetLastError());
        validate_result(d_losses, losses, "losses", N, 1e-5);
        validate_result(d_logits, grad, "dlogits", n, 1e-6);
        // timing: later runs read the gradients left in place; the work per row is the same
        float ms = benchmark(10, run);
        printf("  %.3f ms (%.0f GB/s for %s)\n", ms, (v == 1 ? 4.0 : 3.0) * n * 4 / ms / 1e6,
               v == 1 ? "3 passes over the logits + 1 write" : "2 passes + 1 write");
    }
    printf("classifier: all checks passed\n");
    return 0;
}
