/*
 * dev/cuda/swiglu.cu: SwiGLU, out = SiLU(a) * b with SiLU(a) = a * sigmoid(a), and its
 * backward: da = dout * b * sig * (1 + a * (1 - sig)), db = dout * SiLU(a)
 * (train_llama.cu's swiglu_forward / swiglu_backward).
 *
 *   version 1: one thread per element, grid-stride (what train_llama.cu uses)
 *   version 2: the same with float4 loads and stores (n a multiple of 4): for when this
 *              shows up in a profile
 */
#include "common.h"

__global__ void swiglu_forward_kernel1(float *out, const float *a, const float *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float sig = 1.0f / (1.0f + expf(-a[i]));
        out[i] = a[i] * sig * b[i];
    }
}
__global__ void swiglu_backward_kernel1(float *da, float *db, const float *dout, const float *a, const float *b, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        float x = a[i], dy = dout[i], sig = 1.0f / (1.0f + expf(-x));
        da[i] = dy * b[i] * sig * (1.0f + x * (1.0f - sig));
        db[i] = dy * x * sig;
    }
}

__global__ void swiglu_forward_kernel2(float4 *out, const float4 *a, const float4 *b, long n4) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n4; i += (long)gridDim.x * blockDim.x) {
        float4 x = a[i], y = b[i], o;
        o.x = x.x / (1.0f + expf(-x.x)) * y.x;
        o.y = x.y / (1.0f + expf(-x.y)) * y.y;
        o.z = x.z / (1.0f + expf(-x.z)) * y.z;
        o.w = x.w / (1.0f + expf(-x.w)) * y.w;
        out[i] = o;
    }
}

static void swiglu_cpu(float *out, float *da, float *db, const float *dout, const float *a, const float *b, long n) {
    for (long i = 0; i < n; i++) {
        float sig = 1.0f / (1.0f + expf(-a[i]));
        out[i] = a[i] * sig * b[i];
        da[i] = dout[i] * b[i] * sig * (1.0f + a[i] * (1.0f - sig));
        db[i] = dout[i] * a[i] * sig;
    }
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    long n = 8L * 1024 * 2048;
    float *a = make_random_float(n, 6), *b = make_random_float(n, 2), *dout = make_random_float(n, 1);
    float *out = (float *)malloc(sizeof(float) * n), *da = (float *)malloc(sizeof(float) * n);
    float *db = (float *)malloc(sizeof(float) * n);
    swiglu_cpu(out, da, db, dout, a, b, n);
    float *d_a = to_device(a, n), *d_b = to_device(b, n), *d_dout = to_device(dout, n);
    float *d_out = device_zeros<float>(n), *d_da = device_zeros<float>(n), *d_db = device_zeros<float>(n);
    int grid = 65536;
    if (version_selected(argc, argv, 1)) {
        printf("version 1\n");
        auto fwd = [&] { swiglu_forward_kernel1<<<grid, 256>>>(d_out, d_a, d_b, n); };
        auto bwd = [&] { swiglu_backward_kernel1<<<grid, 256>>>(d_da, d_db, d_dout, d_a, d_b, n); };
        fwd();
        bwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", n, 1e-6);
        validate_result(d_da, da, "da", n, 1e-6);
        validate_result(d_db, db, "db", n, 1e-6);
        float tf = benchmark(20, fwd), tb = benchmark(20, bwd);
        printf("  forward %.3f ms (%.0f GB/s) | backward %.3f ms (%.0f GB/s)\n", tf, 3.0 * n * 4 / tf / 1e6, tb,
               5.0 * n * 4 / tb / 1e6);
    }
    if (version_selected(argc, argv, 2)) {
        printf("version 2 (float4, forward)\n");
        auto fwd = [&] { swiglu_forward_kernel2<<<grid, 256>>>((float4 *)d_out, (const float4 *)d_a, (const float4 *)d_b, n / 4); };
        fwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", n, 1e-6);
        float tf = benchmark(20, fwd);
        printf("  forward %.3f ms (%.0f GB/s)\n", tf, 3.0 * n * 4 / tf / 1e6);
    }
    printf("swiglu: all checks passed\n");
    return 0;
}
