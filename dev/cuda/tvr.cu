/*
 * dev/cuda/tvr.cu: Target Variance Rescaling and the statistics (train_llama.cu's
 * matrix_stats, weights_pass and activations_log).
 *
 * TVR (docs/methods.md, paper A): for each block matrix, mean and unbiased std; if
 * std/target > threshold, W <- (W - mean) * target/std + mean; otherwise untouched.
 *   version 1: per matrix, two reductions (mean, then the squared deviations from it: the
 *              CPU's two passes), then the rescale: three launches and reads per matrix
 *   version 2: all matrices in one launch: 64 chunks per matrix sum x and x^2 in double,
 *              the host finishes mean/std/decision, one launch rescales the matrices over
 *              the threshold (what train_llama.cu uses: 2 launches for the whole model)
 * Also the activation statistics: max |x| and rms of each layer's output, chunked the same way.
 */
#include "common.h"

#define CHUNKS 64

// version 1
__global__ void sum_kernel(double *partial, const float *w, long n, double shift, int squares) {
    long lo = n * blockIdx.x / gridDim.x, hi = n * (blockIdx.x + 1) / gridDim.x;
    double s = 0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double d = (double)w[i] - shift;
        s += squares ? d * d : d;
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}
__global__ void rescale_kernel(float *w, long n, double mu, double scale) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        w[i] = (float)(((double)w[i] - mu) * scale + mu);
    }
}

// version 2 (train_llama.cu)
__global__ void matrix_moments_kernel(double *partial, float *const *ptr, const long *ns) {
    int mat = blockIdx.y, chunk = blockIdx.x;
    const float *w = ptr[mat];
    long n = ns[mat];
    long lo = n * chunk / gridDim.x, hi = n * (chunk + 1) / gridDim.x;
    double s = 0, ss = 0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        double x = w[i];
        s += x;
        ss += x * x;
    }
    s = block_sum_d(s);
    ss = block_sum_d(ss);
    if (threadIdx.x == 0) {
        partial[((long)mat * gridDim.x + chunk) * 2] = s;
        partial[((long)mat * gridDim.x + chunk) * 2 + 1] = ss;
    }
}
__global__ void tvr_rescale_kernel(float *const *ptr, const long *ns, const double *coef) {
    int mat = blockIdx.y;
    double mu = coef[2 * mat], scale = coef[2 * mat + 1];
    if (scale == 0) return;
    float *w = ptr[mat];
    long n = ns[mat];
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        w[i] = (float)(((double)w[i] - mu) * scale + mu);
    }
}

__global__ void activation_stats_kernel(double *partial, const float *xout, long n) {
    int layer = blockIdx.y, chunk = blockIdx.x;
    const float *x = xout + (long)layer * n;
    long lo = n * chunk / gridDim.x, hi = n * (chunk + 1) / gridDim.x;
    float mx = 0;
    double ss = 0;
    for (long i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        mx = fmaxf(mx, fabsf(x[i]));
        ss += (double)x[i] * x[i];
    }
    mx = block_max(mx);
    ss = block_sum_d(ss);
    if (threadIdx.x == 0) {
        partial[((long)layer * gridDim.x + chunk) * 2] = mx;
        partial[((long)layer * gridDim.x + chunk) * 2 + 1] = ss;
    }
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    // 12 layers of a C = 768, F = 2048 model: 84 matrices, 7 shapes
    int L = 12, C = 768, F = 2048, count = 7 * L;
    long sizes[7] = {(long)C * C, (long)C * C / 4, (long)C * C / 4, (long)C * C, (long)F * C, (long)F * C, (long)C * F};
    double target = 0.01, threshold = 1.2;
    long total = 0, *n = (long *)malloc(sizeof(long) * count), *off = (long *)malloc(sizeof(long) * count);
    for (int j = 0; j < count; j++) off[j] = total, n[j] = sizes[j % 7], total += n[j];
    float *w = (float *)malloc(sizeof(float) * total);
    for (int j = 0; j < count; j++) { // std from 0.6x to 2.4x the target, mean 1e-4 j
        float sd = (float)(target * (0.6 + 1.8 * (j % 5) / 4.0));
        for (long i = 0; i < n[j]; i++) w[off[j] + i] = sd * 1.7320508f * rand_uniform() + 1e-4f * j;
    }
    // CPU: two passes in double (train_llama.c)
    float *want = (float *)malloc(sizeof(float) * total);
    int rescaled = 0;
    for (int j = 0; j < count; j++) {
        const float *x = w + off[j];
        double mean = 0, ss = 0;
        for (long i = 0; i < n[j]; i++) mean += x[i];
        mean /= n[j];
        for (long i = 0; i < n[j]; i++) ss += ((double)x[i] - mean) * ((double)x[i] - mean);
        double sd = sqrt(ss / (n[j] - 1));
        int r = sd / target > threshold;
        rescaled += r;
        for (long i = 0; i < n[j]; i++) want[off[j] + i] = r ? (float)(((double)x[i] - mean) * target / sd + mean) : x[i];
    }
    printf("%d matrices, %ld weights, %d over the threshold\n", count, total, rescaled);
    float *d_w = to_device(w, total);
    double *d_partial = device_zeros<double>((long)count * CHUNKS * 2), *h_partial = (double *)malloc(sizeof(double) * count * CHUNKS * 2);
    double *h_coef = (double *)malloc(sizeof(double) * 2 * count), *d_coef = device_zeros<double>(2 * count);
    float **h_ptr = (float **)malloc(sizeof(float *) * count);
    for (int j = 0; j < count; j++) h_ptr[j] = d_w + off[j];
    float **d_ptr = to_device(h_ptr, count);
    long *d_n = to_device(n, count);
    for (int v = 1; v <= 2; v++) {
        if (!version_selected(argc, argv, v)) continue;
        printf("version %d\n", v);
        auto run = [&] {
            if (v == 1) {
                for (int j = 0; j < count; j++) {
                    sum_kernel<<<CHUNKS, 256>>>(d_partial, h_ptr[j], n[j], 0, 0);
                    cudaCheck(cudaMemcpy(h_partial, d_partial, sizeof(double) * CHUNKS, cudaMemcpyDeviceToHost));
                    double s = 0;
                    for (int c = 0; c < CHUNKS; c++) s += h_partial[c];
                    double mean = s / n[j];
                    sum_kernel<<<CHUNKS, 256>>>(d_partial, h_ptr[j], n[j], mean, 1);
                    cudaCheck(cudaMemcpy(h_partial, d_partial, sizeof(double) * CHUNKS, cudaMemcpyDeviceToHost));
                    double ss = 0;
                    for (int c = 0; c < CHUNKS; c++) ss += h_partial[c];
                    double sd = sqrt(ss / (n[j] - 1));
                    if (sd / target > threshold) rescale_kernel<<<ceil_div(n[j], 2048), 256>>>(h_ptr[j], n[j], mean, target / sd);
                }
            } else {
                matrix_moments_kernel<<<dim3(CHUNKS, count), 256>>>(d_partial, d_ptr, d_n);
                cudaCheck(cudaMemcpy(h_partial, d_partial, sizeof(double) * count * CHUNKS * 2, cudaMemcpyDeviceToHost));
                for (int j = 0; j < count; j++) {
                    double s = 0, ss = 0;
                    for (int c = 0; c < CHUNKS; c++) s += h_partial[(j * CHUNKS + c) * 2], ss += h_partial[(j * CHUNKS + c) * 2 + 1];
                    double mean = s / n[j], sd = sqrt((ss - s * mean) / (n[j] - 1));
                    h_coef[2 * j] = mean;
                    h_coef[2 * j + 1] = sd / target > threshold ? target / sd : 0;
                }
                cudaCheck(cudaMemcpy(d_coef, h_coef, sizeof(double) * 2 * count, cudaMemcpyHostToDevice));
                tvr_rescale_kernel<<<dim3(ceil_div(F * (long)C, 2048), count), 256>>>(d_ptr, d_n, d_coef);
            }
        };
        cudaCheck(cudaMemcpy(d_w, w, sizeof(float) * total, cudaMemcpyHostToDevice));
        run();
        cudaCheck(cudaGetLastError());
        validate_result(d_w, want, "weights", total, 1e-6);
        // timing on the original weights each time (a rescaled matrix is then under the threshold)
        float ms = benchmark(5, [&] {
            cudaCheck(cudaMemcpy(d_w, w, sizeof(float) * total, cudaMemcpyHostToDevice));
            run();
        });
        float copy_ms = benchmark(5, [&] { cudaCheck(cudaMemcpy(d_w, w, sizeof(float) * total, cudaMemcpyHostToDevice)); });
        printf("  %.3f ms for all %d matrices (the upload of the weights, %.3f ms, subtracted)\n", ms - copy_ms, count, copy_ms);
    }
    // activation statistics: the weights stand in for L layer outputs of equal size
    long per = total / L;
    double *act = device_zeros<double>((long)L * CHUNKS * 2);
    cudaCheck(cudaMemcpy(d_w, w, sizeof(float) * total, cudaMemcpyHostToDevice));
    activation_stats_kernel<<<dim3(CHUNKS, L), 256>>>(act, d_w, per);
    cudaCheck(cudaMemcpy(h_partial, act, sizeof(double) * L * CHUNKS * 2, cudaMemcpyDeviceToHost));
    float *got = (float *)malloc(sizeof(float) * 2 * L), *ref = (float *)malloc(sizeof(float) * 2 * L);
    for (int l = 0; l < L; l++) {
        double mx = 0, ss = 0, cmx = 0, css = 0;
        for (int c = 0; c < CHUNKS; c++) mx = fmax(mx, h_partial[(l * CHUNKS + c) * 2]), ss += h_partial[(l * CHUNKS + c) * 2 + 1];
        for (long i = 0; i < per; i++) cmx = fmax(cmx, fabs(w[l * per + i])), css += (double)w[l * per + i] * w[l * per + i];
        got[2 * l] = (float)mx, got[2 * l + 1] = (float)sqrt(ss / per);
        ref[2 * l] = (float)cmx, ref[2 * l + 1] = (float)sqrt(css / per);
    }
    float *d_got = to_device(got, 2 * L);
    printf("activation statistics\n");
    validate_result(d_got, ref, "max|x|, rms", 2 * L, 1e-7);
    printf("tvr: all checks passed\n");
    return 0;
}
