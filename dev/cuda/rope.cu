/*
 * dev/cuda/rope.cu: rotary position embedding, llama2.c's convention (train_llama.cu's
 * rope_forward / rope_backward): within each head, the pair (2i, 2i+1) at position t turns
 * by t * theta^(-2i/hs); the backward turns by the opposite angle.
 *
 *   version 1: one thread per pair (what train_llama.cu uses)
 * Checks: forward against the CPU loop, and backward(forward(x)) == x (a rotation's
 * inverse is its transpose).
 */
#include "common.h"

static void rope_rotate_cpu(float *x, const float *cos_t, const float *sin_t, int B, int T, int nheads, int hs, int sign) {
    int half = hs / 2;
    for (long bt = 0; bt < (long)B * T; bt++) {
        int t = (int)(bt % T);
        for (int h = 0; h < nheads; h++) {
            float *v = x + (bt * nheads + h) * hs;
            for (int i = 0; i < half; i++) {
                float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
                float v0 = v[2 * i], v1 = v[2 * i + 1];
                v[2 * i] = v0 * c - v1 * s;
                v[2 * i + 1] = v0 * s + v1 * c;
            }
        }
    }
}

__global__ void rope_rotate_kernel(float *x, const float *cos_t, const float *sin_t, int B, int T, int nheads, int hs,
                                   float sign) {
    int half = hs / 2;
    long npairs = (long)B * T * nheads * half;
    for (long p = blockIdx.x * (long)blockDim.x + threadIdx.x; p < npairs; p += (long)gridDim.x * blockDim.x) {
        int i = (int)(p % half);
        long bth = p / half;
        int t = (int)(bth / nheads % T);
        float c = cos_t[(long)t * half + i], s = sign * sin_t[(long)t * half + i];
        float *v = x + bth * hs;
        float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * c - v1 * s;
        v[2 * i + 1] = v0 * s + v1 * c;
    }
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    (void)argc;
    int B = 8, T = 1024, NH = 12, hs = 64, half = hs / 2;
    long n = (long)B * T * NH * hs;
    float *cos_t = (float *)malloc(sizeof(float) * T * half), *sin_t = (float *)malloc(sizeof(float) * T * half);
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < half; i++) {
            double freq = 1.0 / pow(10000.0, (2.0 * i) / hs);
            cos_t[t * half + i] = (float)cos(t * freq);
            sin_t[t * half + i] = (float)sin(t * freq);
        }
    }
    float *x = make_random_float(n, 1), *y = (float *)malloc(sizeof(float) * n);
    memcpy(y, x, sizeof(float) * n);
    rope_rotate_cpu(y, cos_t, sin_t, B, T, NH, hs, 1);
    float *d_x = to_device(x, n), *d_cos = to_device(cos_t, (long)T * half), *d_sin = to_device(sin_t, (long)T * half);
    int grid = ceil_div(n / 2, 256) < 65536 ? ceil_div(n / 2, 256) : 65536;
    printf("version 1\n");
    rope_rotate_kernel<<<grid, 256>>>(d_x, d_cos, d_sin, B, T, NH, hs, 1.0f);
    cudaCheck(cudaGetLastError());
    validate_result(d_x, y, "forward", n, 1e-6);
    rope_rotate_kernel<<<grid, 256>>>(d_x, d_cos, d_sin, B, T, NH, hs, -1.0f);
    validate_result(d_x, x, "bwd(fwd(x))", n, 1e-6);
    float ms = benchmark(20, [&] { rope_rotate_kernel<<<grid, 256>>>(d_x, d_cos, d_sin, B, T, NH, hs, 1.0f); });
    printf("  %.3f ms (%.0f GB/s)\n", ms, 2.0 * n * 4 / ms / 1e6);
    printf("rope: all checks passed\n");
    return 0;
}
