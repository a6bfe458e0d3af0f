/*
 * dev/cuda/global_norm.cu: the global gradient norm, sqrt(sum of g^2) over every
 * parameter (train_llama.cu's clip_grad_norm).
 *
 *   version 1: per-thread sums in double, one atomicAdd per block into a single double:
 *              one kernel, but the order of the block sums changes from run to run
 *   version 2: a fixed grid of 512 blocks writes 512 partial sums; the host adds them in
 *              order: the same bits every run (what train_llama.cu uses; the host needs
 *              the number anyway, for the log and the clipping decision)
 */
#include "common.h"

#define NORM_BLOCKS 512

__global__ void sum_squares_kernel1(double *out, const float *x, long n) {
    double s = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        s += (double)x[i] * x[i];
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

__global__ void sum_squares_kernel2(double *partial, const float *x, long n) {
    double s = 0;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        s += (double)x[i] * x[i];
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    long n = 50L * 1000 * 1000 + 17;
    float *g = make_random_float(n, 1e-3f);
    double ref = 0;
    for (long i = 0; i < n; i++) ref += (double)g[i] * g[i];
    ref = sqrt(ref);
    float *d_g = to_device(g, n);
    double *d_out = device_zeros<double>(NORM_BLOCKS), h_part[NORM_BLOCKS];
    for (int v = 1; v <= 2; v++) {
        if (!version_selected(argc, argv, v)) continue;
        auto run = [&]() -> double {
            if (v == 1) {
                cudaCheck(cudaMemset(d_out, 0, sizeof(double)));
                sum_squares_kernel1<<<NORM_BLOCKS, 256>>>(d_out, d_g, n);
                cudaCheck(cudaMemcpy(h_part, d_out, sizeof(double), cudaMemcpyDeviceToHost));
                return sqrt(h_part[0]);
            }
            sum_squares_kernel2<<<NORM_BLOCKS, 256>>>(d_out, d_g, n);
            cudaCheck(cudaMemcpy(h_part, d_out, sizeof(double) * NORM_BLOCKS, cudaMemcpyDeviceToHost));
            double s = 0;
            for (int b = 0; b < NORM_BLOCKS; b++) s += h_part[b];
            return sqrt(s);
        };
        double a = run(), b = run();
        double err = fabs(a - ref) / ref;
        printf("version %d: norm %.15g, CPU %.15g, relative error %.2e (tolerance 1e-12); rerun %s\n", v, a, ref, err,
               a == b ? "identical" : "differs in the last bits");
        if (!(err <= 1e-12) || (v == 2 && a != b)) {
            printf("  <-- FAIL\n");
            return 1;
        }
        float ms = benchmark(20, [&] { run(); });
        printf("  %.3f ms (%.0f GB/s)\n", ms, n * 4.0 / ms / 1e6);
    }
    printf("global_norm: all checks passed\n");
    return 0;
}
