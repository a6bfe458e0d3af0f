/*
 * dev/cuda/adamw.cu: AdamW as torch.optim.AdamW computes it (train_llama.cu's adamw_update):
 *   p <- p * (1 - lr*wd);  m <- m + (1-beta1)*(g - m);  v <- beta2*v + (1-beta2)*g^2
 *   p <- p - lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
 *
 *   version 1: one thread per parameter, grid-stride, the same float expressions as
 *              train_llama.c's loop (what train_llama.cu uses: one launch per tensor so
 *              that weight decay can differ between tensors)
 * Checked over several steps against the CPU loop (the two may differ by FMA contraction
 * only, a rounding of the last bit).
 */
#include "common.h"

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

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    (void)argc;
    long n = 20L * 1000 * 1000;
    double lr = 3e-3, wd = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
    float *p = make_random_float(n, 0.05f), *m = (float *)calloc(n, sizeof(float)), *v = (float *)calloc(n, sizeof(float));
    float *d_p = to_device(p, n), *d_m = device_zeros<float>(n), *d_v = device_zeros<float>(n);
    float *d_g = device_zeros<float>(n);
    printf("version 1\n");
    for (int t = 1; t <= 3; t++) {
        float *g = make_random_float(n, 1e-2f);
        cudaCheck(cudaMemcpy(d_g, g, sizeof(float) * n, cudaMemcpyHostToDevice));
        double bc1 = 1 - pow(beta1, t), bc2_sqrt = sqrt(1 - pow(beta2, t));
        float step_size = (float)(lr / bc1), inv_bc2 = (float)(1 / bc2_sqrt);
        float b1 = (float)beta1, b2 = (float)beta2, e = (float)eps, decay = (float)(1 - lr * wd);
        for (long j = 0; j < n; j++) {
            p[j] *= decay;
            m[j] += (1 - b1) * (g[j] - m[j]);
            v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
            p[j] -= step_size * m[j] / (sqrtf(v[j]) * inv_bc2 + e);
        }
        adamw_kernel<<<65536, 256>>>(d_p, d_g, d_m, d_v, n, decay, b1, b2, e, step_size, inv_bc2);
        cudaCheck(cudaGetLastError());
        printf(" step %d\n", t);
        validate_result(d_p, p, "params", n, 1e-6);
        validate_result(d_m, m, "m", n, 1e-6);
        validate_result(d_v, v, "v", n, 1e-6);
        free(g);
    }
    float ms = benchmark(20, [&] {
        adamw_kernel<<<65536, 256>>>(d_p, d_g, d_m, d_v, n, 0.9997f, 0.9f, 0.95f, 1e-8f, 1e-3f, 1.0f);
    });
    printf("  %.3f ms (%.0f GB/s: 4 reads, 3 writes per parameter)\n", ms, 7.0 * n * 4 / ms / 1e6);
    printf("adamw: all checks passed\n");
    return 0;
}
