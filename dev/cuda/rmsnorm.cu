/*
 * dev/cuda/rmsnorm.cu: RMSNorm forward and backward (train_llama.cu's rmsnorm_*).
 *
 * forward   out = x / sqrt(mean(x^2) + eps) * gain, rstd = 1/sqrt(mean(x^2) + eps)
 * backward  dx += r*(g*dy) - x * r^3/C * sum(g*dy*x);  dgain += sum over rows of dy*x*r
 *
 *   version 1: one thread per row (forward), one thread per row for dx and one thread per
 *              channel looping over all N rows for dgain: simple, few threads busy
 *   version 2: one warp per row (lanes stride the channels, a shuffle reduction), dgain in
 *              two deterministic steps: 32 row chunks per channel, then the chunks in order
 *              (what train_llama.cu uses)
 */
#include "common.h"

// CPU reference (train_llama.c)
static void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *gain, int N, int C, float eps) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (long)i * C;
        double ss = 0;
        for (int c = 0; c < C; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int c = 0; c < C; c++) out[(long)i * C + c] = x[c] * r * gain[c];
        rstd[i] = r;
    }
}

static void rmsnorm_backward_cpu(float *dinp, float *dgain, const float *dout, const float *inp, const float *gain,
                                 const float *rstd, int N, int C) {
    for (int i = 0; i < N; i++) {
        const float *x = inp + (long)i * C, *dy = dout + (long)i * C;
        float r = rstd[i];
        double s = 0;
        for (int c = 0; c < C; c++) s += (double)gain[c] * dy[c] * x[c];
        float k = (float)(s * r * r * r / C);
        for (int c = 0; c < C; c++) dinp[(long)i * C + c] += r * gain[c] * dy[c] - k * x[c];
        for (int c = 0; c < C; c++) dgain[c] += dy[c] * x[c] * r;
    }
}

// ---------------------------------------------------------------------------
// version 1

__global__ void rmsnorm_forward_kernel1(float *out, float *rstd, const float *inp, const float *gain, int N, int C,
                                        float eps) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float *x = inp + (long)row * C;
    float ss = 0;
    for (int c = 0; c < C; c++) ss += x[c] * x[c];
    float r = 1.0f / sqrtf(ss / C + eps);
    for (int c = 0; c < C; c++) out[(long)row * C + c] = x[c] * r * gain[c];
    rstd[row] = r;
}

__global__ void rmsnorm_backward_dinp_kernel1(float *dinp, const float *dout, const float *inp, const float *gain,
                                              const float *rstd, int N, int C) {
    int row = blockIdx.x * blockDim.x + threadIdx.x;
    if (row >= N) return;
    const float *x = inp + (long)row * C, *dy = dout + (long)row * C;
    float r = rstd[row], s = 0;
    for (int c = 0; c < C; c++) s += gain[c] * dy[c] * x[c];
    float k = s * r * r * r / C;
    for (int c = 0; c < C; c++) dinp[(long)row * C + c] += r * gain[c] * dy[c] - k * x[c];
}

__global__ void rmsnorm_backward_dgain_kernel1(float *dgain, const float *dout, const float *inp, const float *rstd,
                                               int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int i = 0; i < N; i++) s += dout[(long)i * C + c] * inp[(long)i * C + c] * rstd[i];
    dgain[c] += s;
}

// ---------------------------------------------------------------------------
// version 2 (train_llama.cu)

__global__ void rmsnorm_forward_kernel2(float *out, float *rstd, const float *inp, const float *gain, int N, int C,
                                        float eps) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *x = inp + (long)row * C;
    float ss = 0;
    for (int c = lane; c < C; c += 32) ss += x[c] * x[c];
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    for (int c = lane; c < C; c += 32) out[(long)row * C + c] = x[c] * r * gain[c];
    if (lane == 0) rstd[row] = r;
}

__global__ void rmsnorm_backward_dinp_kernel2(float *dinp, const float *dout, const float *inp, const float *gain,
                                              const float *rstd, int N, int C) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    if (row >= N) return;
    const float *x = inp + (long)row * C, *dy = dout + (long)row * C;
    float r = rstd[row], s = 0;
    for (int c = lane; c < C; c += 32) s += gain[c] * dy[c] * x[c];
    s = warp_sum(s);
    float k = s * r * r * r / C;
    for (int c = lane; c < C; c += 32) dinp[(long)row * C + c] += r * gain[c] * dy[c] - k * x[c];
}

#define GAIN_CHUNKS 32
__global__ void rmsnorm_backward_dgain_partial_kernel2(float *partial, const float *dout, const float *inp,
                                                       const float *rstd, int N, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, chunk = blockIdx.y;
    if (c >= C) return;
    int lo = (int)((long)N * chunk / GAIN_CHUNKS), hi = (int)((long)N * (chunk + 1) / GAIN_CHUNKS);
    float s = 0;
    for (int i = lo; i < hi; i++) s += dout[(long)i * C + c] * inp[(long)i * C + c] * rstd[i];
    partial[(long)chunk * C + c] = s;
}
__global__ void rmsnorm_backward_dgain_sum_kernel2(float *dgain, const float *partial, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float s = 0;
    for (int ch = 0; ch < GAIN_CHUNKS; ch++) s += partial[(long)ch * C + c];
    dgain[c] += s;
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    int N = 8 * 1024, C = 768;
    float eps = 1e-5f;
    long n = (long)N * C;
    float *x = make_random_float(n, 2), *gain = make_random_float(C, 1), *dy = make_random_float(n, 1);
    float *dinp0 = make_random_float(n, 1), *dgain0 = make_random_float(C, 1);
    float *out = (float *)malloc(sizeof(float) * n), *rstd = (float *)malloc(sizeof(float) * N);
    float *dinp = (float *)malloc(sizeof(float) * n), *dgain = (float *)malloc(sizeof(float) * C);
    memcpy(dinp, dinp0, sizeof(float) * n);
    memcpy(dgain, dgain0, sizeof(float) * C);
    rmsnorm_forward_cpu(out, rstd, x, gain, N, C, eps);
    rmsnorm_backward_cpu(dinp, dgain, dy, x, gain, rstd, N, C);

    float *d_x = to_device(x, n), *d_gain = to_device(gain, C), *d_dy = to_device(dy, n);
    float *d_out = device_zeros<float>(n), *d_rstd = device_zeros<float>(N), *d_dinp = device_zeros<float>(n);
    float *d_dgain = device_zeros<float>(C), *d_partial = device_zeros<float>((long)GAIN_CHUNKS * C);
    for (int v = 1; v <= 2; v++) {
        if (!version_selected(argc, argv, v)) continue;
        printf("version %d\n", v);
        auto fwd = [&] {
            if (v == 1) rmsnorm_forward_kernel1<<<ceil_div(N, 256), 256>>>(d_out, d_rstd, d_x, d_gain, N, C, eps);
            else rmsnorm_forward_kernel2<<<ceil_div((long)N * 32, 256), 256>>>(d_out, d_rstd, d_x, d_gain, N, C, eps);
        };
        auto bwd = [&] {
            if (v == 1) {
                rmsnorm_backward_dinp_kernel1<<<ceil_div(N, 256), 256>>>(d_dinp, d_dy, d_x, d_gain, d_rstd, N, C);
                rmsnorm_backward_dgain_kernel1<<<ceil_div(C, 256), 256>>>(d_dgain, d_dy, d_x, d_rstd, N, C);
            } else {
                rmsnorm_backward_dinp_kernel2<<<ceil_div((long)N * 32, 256), 256>>>(d_dinp, d_dy, d_x, d_gain, d_rstd, N, C);
                rmsnorm_backward_dgain_partial_kernel2<<<dim3(ceil_div(C, 256), GAIN_CHUNKS), 256>>>(d_partial, d_dy, d_x,
                                                                                                    d_rstd, N, C);
                rmsnorm_backward_dgain_sum_kernel2<<<ceil_div(C, 256), 256>>>(d_dgain, d_partial, C);
            }
        };
        fwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_out, out, "out", n, 1e-5);
        validate_result(d_rstd, rstd, "rstd", N, 1e-5);
        cudaCheck(cudaMemcpy(d_dinp, dinp0, sizeof(float) * n, cudaMemcpyHostToDevice));
        cudaCheck(cudaMemcpy(d_dgain, dgain0, sizeof(float) * C, cudaMemcpyHostToDevice));
        bwd();
        cudaCheck(cudaGetLastError());
        validate_result(d_dinp, dinp, "dinp", n, 1e-5);
        validate_result(d_dgain, dgain, "dgain", C, 1e-4); // a sum over 8192 rows
        float tf = benchmark(20, fwd), tb = benchmark(20, bwd);
        printf("  forward %.3f ms (%.0f GB/s) | backward %.3f ms (%.0f GB/s)\n", tf, 2.0 * n * 4 / tf / 1e6, tb,
               5.0 * n * 4 / tb / 1e6);
    }
    printf("rmsnorm: all checks passed\n");
    return 0;
}
