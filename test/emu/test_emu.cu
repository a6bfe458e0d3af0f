/*
 * test/emu/test_emu.cu: the emulator's own tests, and a few of train_llama.cu's kernels
 * against plain host loops. Plain CUDA: nvcc builds it too (then it tests the GPU).
 *
 *   1. barriers: a block reverses an array through shared memory
 *   2. warp collectives: every shuffle kind, with widths, and ballot, against their definitions
 *   3. block reductions of common/cuda_reduce.h; 2-D and 3-D thread indices
 *   4. atomics across blocks that run at once
 *   5. launch limits: a launch over them fails with cudaErrorInvalidConfiguration and runs nothing
 *   6. train_llama.cu's classifier: the fused kernel (the one with a real __syncthreads)
 *      against the two-kernel path and the host formula; --precision bf16's pieces: bf16_round
 *      on the device against train_llama.c's hand-computed cases (test/test_llama.c), and
 *      gemm_batched() on bf16 inputs (cuBLAS's CUDA_R_16BF) in all four transposes
 *   7. MFU's peaks (common/cuda_train.h) against NVIDIA's data-sheet figures; the emulated
 *      device's attributes give its own peak
 *   8. (emulator only) what a GPU would not say: each of these must stop the program with its
 *      message: a divergent __syncthreads, a barrier after some threads returned, a host
 *      pointer passed to a kernel, a shuffle naming a lane that returned, a cudaMemcpy past an
 *      allocation's end. Each runs in a child process.
 * `test_emu race` runs a kernel with its __syncthreads left out: the ThreadSanitizer build
 * must report a data race there (test/test_emu.sh checks that it does).
 * Exits 1 naming the first failed check.
 */
#define TESTING
#include "../../train_llama.cu"

#include <sys/wait.h>

static int failed = 0;
static void expect(int ok, const char *what) {
    printf("  %-66s %s\n", what, ok ? "ok" : "FAIL");
    failed += !ok;
}

// ---------------------------------------------------------------------------
// 1. barriers
__global__ void reverse_kernel(int *out, const int *in, int n) {
    __shared__ int buf[1024];
    int i = threadIdx.x;
    buf[i] = in[blockIdx.x * n + i];
    __syncthreads();
    out[blockIdx.x * n + i] = buf[n - 1 - i];
}

// the same without its barrier: a race (for `test_emu race` and the schedules)
__global__ void reverse_racy_kernel(int *out, const int *in, int n) {
    __shared__ int buf2[1024];
    int i = threadIdx.x;
    buf2[i] = in[blockIdx.x * n + i];
    out[blockIdx.x * n + i] = buf2[n - 1 - i];
}

static int run_reverse(int racy) {
    const int n = 256, blocks = 8;
    int h[n * blocks], r[n * blocks];
    for (int i = 0; i < n * blocks; i++) h[i] = i * 7 + 1;
    int *d_in = (int *)cuda_calloc(n * blocks, sizeof(int)), *d_out = (int *)cuda_calloc(n * blocks, sizeof(int));
    cudaCheck(cudaMemcpy(d_in, h, sizeof(h), cudaMemcpyHostToDevice));
    if (racy) reverse_racy_kernel<<<blocks, n>>>(d_out, d_in, n);
    else reverse_kernel<<<blocks, n>>>(d_out, d_in, n);
    launchCheck();
    cudaCheck(cudaMemcpy(r, d_out, sizeof(r), cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int b = 0; b < blocks; b++)
        for (int i = 0; i < n; i++) wrong += r[b * n + i] != h[b * n + n - 1 - i];
    cudaCheck(cudaFree(d_in));
    cudaCheck(cudaFree(d_out));
    return wrong;
}

// ---------------------------------------------------------------------------
// 2. warp collectives: out[k * 32 + lane] for each k
__global__ void shuffle_kernel(int *out) {
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int *o = out + w * 8 * 32;
    int v = 100 + lane;
    o[0 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
    o[1 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3);
    o[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 2);
    o[3 * 32 + lane] = __shfl_sync(0xffffffffu, v, 31 - lane);
    o[4 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    o[5 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 9, 16);
    o[6 * 32 + lane] = (int)__ballot_sync(0xffffffffu, lane % 3 == 0);
    double d = __shfl_sync(0xffffffffu, 0.5 + lane, 7, 16); // 8-byte values
    o[7 * 32 + lane] = (int)(d * 2);
}

static void test_shuffles(void) {
    const int warps = 2;
    int *d = (int *)cuda_calloc(warps * 8 * 32, sizeof(int)), h[warps * 8 * 32];
    shuffle_kernel<<<1, warps * 32>>>(d);
    launchCheck();
    cudaCheck(cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost));
    int bad = 0;
    unsigned ballot = 0;
    for (int l = 0; l < 32; l++) ballot |= (l % 3 == 0) << l;
    for (int w = 0; w < warps; w++) {
        const int *o = h + w * 8 * 32;
        for (int l = 0; l < 32; l++) {
            int seg8 = l & ~7, seg16 = l & ~15;
            bad += o[0 * 32 + l] != 100 + (l ^ 5);
            bad += o[1 * 32 + l] != 100 + (l + 3 < 32 ? l + 3 : l);
            bad += o[2 * 32 + l] != 100 + (l >= 2 ? l - 2 : l);
            bad += o[3 * 32 + l] != 100 + 31 - l;
            bad += o[4 * 32 + l] != 100 + (l + 3 < seg8 + 8 ? l + 3 : l);
            bad += o[5 * 32 + l] != 100 + ((l ^ 9) < seg16 + 16 ? l ^ 9 : l);
            bad += (unsigned)o[6 * 32 + l] != ballot;
            bad += o[7 * 32 + l] != (int)((0.5 + seg16 + 7) * 2);
        }
    }
    expect(bad == 0, "shuffles xor/down/up/idx (widths 32, 16, 8), ballot, 8-byte values");
    cudaCheck(cudaFree(d));
}

// ---------------------------------------------------------------------------
// 3. block reductions and multi-dimensional indices
__global__ void reduce_kernel(float *out, double *out_d, const float *x, int n) {
    float s = 0, m = -INFINITY;
    double sd = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i], sd += x[i], m = fmaxf(m, x[i]);
    s = block_sum(s);
    m = block_max(m); // straight after block_sum: the slots are reused safely
    sd = block_sum_d(sd);
    double sd2 = block_sum_d(2 * sd / blockDim.x); // twice in a row on one slot array (as TVR's statistics)
    if (threadIdx.x == 0) out[0] = s, out[1] = m, out_d[0] = sd, out_d[1] = sd2;
    if (threadIdx.x == blockDim.x - 1) out[2] = s, out[3] = m; // every thread has the result
}

__global__ void index_kernel(int *out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 1000 + t;
}

static void test_reductions(void) {
    const int n = 5000;
    float h[n], r[4];
    double rd[2], want_d = 0, want_m = -1e30;
    for (int i = 0; i < n; i++) h[i] = (float)((i * 37 % 101) - 50) / 8, want_d += h[i], want_m = fmax(want_m, h[i]);
    float *d_x = (float *)cuda_calloc(n, sizeof(float)), *d_r = (float *)cuda_calloc(4, sizeof(float));
    double *d_rd = (double *)cuda_calloc(2, sizeof(double));
    cudaCheck(cudaMemcpy(d_x, h, sizeof(h), cudaMemcpyHostToDevice));
    for (int threads = 32; threads <= 1024; threads *= 4) {
        reduce_kernel<<<1, threads>>>(d_r, d_rd, d_x, n);
        launchCheck();
        cudaCheck(cudaMemcpy(r, d_r, sizeof(r), cudaMemcpyDeviceToHost));
        cudaCheck(cudaMemcpy(rd, d_rd, sizeof(rd), cudaMemcpyDeviceToHost));
        char what[96];
        snprintf(what, sizeof(what), "block_sum, block_max, block_sum_d (twice) with %d threads", threads);
        expect(fabs(r[0] - want_d) < 1e-3 && r[1] == want_m && rd[0] == want_d && fabs(rd[1] - 2 * want_d) < 1e-9 &&
                   r[2] == r[0] && r[3] == r[1],
               what);
    }
    cudaCheck(cudaFree(d_x));
    cudaCheck(cudaFree(d_r));
    cudaCheck(cudaFree(d_rd));

    dim3 grid(3, 2, 2), block(4, 3, 5);
    int nt = 60, nb = 12, hi[60 * 12], bad = 0;
    int *d = (int *)cuda_calloc(nt * nb, sizeof(int));
    index_kernel<<<grid, block>>>(d);
    launchCheck();
    cudaCheck(cudaMemcpy(hi, d, sizeof(hi), cudaMemcpyDeviceToHost));
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < nt; t++) bad += hi[b * nt + t] != b * 1000 + t;
    expect(bad == 0, "threadIdx/blockIdx in 3-D: grid (3,2,2) x block (4,3,5)");
    cudaCheck(cudaFree(d));
}

// ---------------------------------------------------------------------------
// 4. atomics
__global__ void count_kernel(unsigned *count, double *sum) {
    atomicAdd(count, 1u);
    atomicAdd(sum, 0.5);
}

static void test_atomics(void) {
    unsigned *d_c = (unsigned *)cuda_calloc(1, sizeof(unsigned)), c;
    double *d_s = (double *)cuda_calloc(1, sizeof(double)), s;
    count_kernel<<<64, 128>>>(d_c, d_s);
    launchCheck();
    cudaCheck(cudaMemcpy(&c, d_c, sizeof(c), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(&s, d_s, sizeof(s), cudaMemcpyDeviceToHost));
    expect(c == 64 * 128 && s == 64 * 128 * 0.5, "atomicAdd from 64 blocks x 128 threads (unsigned, double)");
    cudaCheck(cudaFree(d_c));
    cudaCheck(cudaFree(d_s));
}

// ---------------------------------------------------------------------------
// 5. launch limits
__global__ void touch_kernel(int *flag) {
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) *flag = 1; // one writer: no race
}

static void test_limits(void) {
    int *d = (int *)cuda_calloc(1, sizeof(int)), h = 0;
    struct {
        dim3 grid, block;
        size_t shared;
        const char *what;
    } bad[] = {
        {dim3(1), dim3(1025), 0, "1025 threads in a block"},
        {dim3(1), dim3(1, 1, 65), 0, "blockDim.z 65"},
        {dim3(1, 65536), dim3(32), 0, "gridDim.y 65536"},
        {dim3(0), dim3(32), 0, "an empty grid"},
        {dim3(1), dim3(32), (48 << 10) + 1, "48 KiB + 1 byte of dynamic shared memory"},
    };
    for (auto &c : bad) {
        touch_kernel<<<c.grid, c.block, c.shared>>>(d);
        cudaError_t err = cudaGetLastError();
        cudaCheck(cudaMemcpy(&h, d, sizeof(h), cudaMemcpyDeviceToHost));
        char what[96];
        snprintf(what, sizeof(what), "refused, and nothing ran: %s", c.what);
        expect(err == cudaErrorInvalidConfiguration && h == 0, what);
    }
    touch_kernel<<<dim3(1, 65535), dim3(1)>>>(d);
    cudaError_t err = cudaGetLastError();
    touch_kernel<<<dim3(1), dim3(1024)>>>(d);
    err = err != cudaSuccess ? err : cudaGetLastError();
    cudaCheck(cudaMemcpy(&h, d, sizeof(h), cudaMemcpyDeviceToHost));
    expect(err == cudaSuccess && h == 1, "accepted: gridDim.y 65535, and 1024 threads in a block");
    cudaCheck(cudaFree(d));
}

// ---------------------------------------------------------------------------
// 6. train_llama.cu's classifier kernels against the host formula
static void test_classifier(void) {
    const int N = 6, V = 1500; // V not a multiple of the block
    float *h = (float *)malloc_check(sizeof(float) * N * V), *g1 = (float *)malloc_check(sizeof(float) * N * V);
    float *g2 = (float *)malloc_check(sizeof(float) * N * V), loss1[N], loss2[N];
    int targets[N];
    Rng rng;
    rng_seed(&rng, 3);
    for (long i = 0; i < (long)N * V; i++) h[i] = (float)(4 * rng_uniform(&rng) - 2);
    for (int r = 0; r < N; r++) targets[r] = (r * 977) % V;
    float *d_l = (float *)cuda_calloc((long)N * V, sizeof(float)), *d_loss = (float *)cuda_calloc(N, sizeof(float));
    float *d_lse = (float *)cuda_calloc(N, sizeof(float));
    int *d_t = (int *)cuda_calloc(N, sizeof(int));
    cudaCheck(cudaMemcpy(d_t, targets, sizeof(targets), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(d_l, h, sizeof(float) * N * V, cudaMemcpyHostToDevice));
    fused_classifier(d_l, d_loss, d_lse, d_t, N, V);
    cudaCheck(cudaMemcpy(g1, d_l, sizeof(float) * N * V, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(loss1, d_loss, sizeof(loss1), cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(d_l, h, sizeof(float) * N * V, cudaMemcpyHostToDevice));
    crossentropy_forward(d_loss, d_lse, d_l, d_t, N, V);
    crossentropy_backward_inplace(d_l, d_lse, d_t, N, V);
    cudaCheck(cudaMemcpy(g2, d_l, sizeof(float) * N * V, cudaMemcpyDeviceToHost));
    cudaCheck(cudaMemcpy(loss2, d_loss, sizeof(loss2), cudaMemcpyDeviceToHost));
    double worst = 0;
    int same = 1;
    for (int r = 0; r < N; r++) {
        double m = -1e30, s = 0;
        for (int j = 0; j < V; j++) m = fmax(m, h[r * V + j]);
        for (int j = 0; j < V; j++) s += exp(h[r * V + j] - m);
        double z = m + log(s);
        worst = fmax(worst, fabs(loss1[r] - (z - h[r * V + targets[r]])));
        for (int j = 0; j < V; j++) {
            double g = (exp(h[r * V + j] - z) - (j == targets[r])) / N;
            worst = fmax(worst, fabs(g1[r * V + j] - g) * N);
            same &= g1[r * V + j] == g2[r * V + j];
        }
        same &= loss1[r] == loss2[r];
    }
    // float32 exp/log over 1500 terms: ~1e-6 relative; a wrong formula or index is O(1e-2)
    printf("  classifier: worst |loss or N*dlogit - host double| = %.2e (tolerance 1e-5)\n", worst);
    expect(worst < 1e-5, "fused_classifier_kernel against the host formula");
    expect(same, "fused classifier = crossentropy forward + backward, bit for bit");
    cudaCheck(cudaFree(d_l));
    cudaCheck(cudaFree(d_loss));
    cudaCheck(cudaFree(d_lse));
    cudaCheck(cudaFree(d_t));
    free(h), free(g1), free(g2);
}

// ---------------------------------------------------------------------------
// 7. MFU's peak FLOP/s: SMs x clock x the table's FLOP a clock per SM
static int near(double x, double want) { return fabs(x - want) <= 0.01 * want; }
static void test_peaks(void) {
    expect(near(peak_flops(9, 0, 132, 1830000, "bf16"), 989.4e12),
           "H100 SXM (sm_90, 132 SMs, 1830 MHz): bf16 989.4 TFLOP/s");
    expect(near(peak_flops(9, 0, 132, 1830000, "tf32"), 494.7e12), "H100 SXM: TF32 494.7 TFLOP/s");
    expect(near(peak_flops(9, 0, 132, 1980000, "fp32"), 66.9e12), "H100 SXM at 1980 MHz: fp32 66.9 TFLOP/s");
    double a100[3] = {peak_flops(8, 0, 108, 1410000, "bf16"), peak_flops(8, 0, 108, 1410000, "tf32"),
                      peak_flops(8, 0, 108, 1410000, "fp32")};
    expect(near(a100[0], 312e12) && near(a100[1], 156e12) && near(a100[2], 19.5e12),
           "A100 SXM (sm_80, 108 SMs, 1410 MHz): bf16 312, TF32 156, fp32 19.5 TFLOP/s");
    expect(peak_flops(8, 6, 84, 1860000, "bf16") == 0 && peak_flops(10, 0, 148, 1965000, "fp32") == 0,
           "an architecture not in the table (sm_86, sm_100): 0, printed as mfu n/a");
    expect(mfu_flops_per_token(1e8, 12, 768, 1024) == 6e8 + 6.0 * 12 * 768 * 1024, "FLOPs a token: 6 N + 6 L C T");
#ifdef CUDA_EMU
    expect(gpu_peak_flops("fp32") == 256e9, "the emulated device (sm_90, 1 SM, 1 GHz): fp32 256 GFLOP/s");
#endif
}

// ---------------------------------------------------------------------------
// 8. mistakes the emulator must stop, each in a child process
#ifdef CUDA_EMU
__global__ void divergent_barrier_kernel(int *x) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncthreads();
    x[threadIdx.x] = 1;
}
__global__ void barrier_after_return_kernel(int *x) {
    if (threadIdx.x >= 40) return;
    __syncthreads();
    x[threadIdx.x] = 1;
}
__global__ void shuffle_with_returned_lane_kernel(int *x) {
    if (threadIdx.x == 3) return;
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, (int)threadIdx.x, 1);
}

// run f in a child; it must die with `message` in its stderr
static void expect_death(const char *what, const char *message, void (*f)(int *)) {
    int pipefd[2];
    if (pipe(pipefd) != 0) die("pipe failed");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pipefd[1], 2);
        close(pipefd[0]);
        int *d = (int *)cuda_calloc(64, sizeof(int));
        f(d);
        cudaDeviceSynchronize();
        _exit(0); // not stopped: the parent reports it
    }
    close(pipefd[1]);
    char buf[4096];
    size_t len = 0;
    ssize_t got;
    while (len < sizeof(buf) - 1 && (got = read(pipefd[0], buf + len, sizeof(buf) - 1 - len)) > 0) len += got;
    buf[len] = 0;
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    int ok = !(WIFEXITED(status) && WEXITSTATUS(status) == 0) && strstr(buf, message);
    char line[160];
    snprintf(line, sizeof(line), "stopped: %s", what);
    expect(ok, line);
    if (!ok) printf("    child's stderr: %s\n", buf);
}
static void divergent(int *d) { divergent_barrier_kernel<<<1, 64>>>(d); }
static void after_return(int *d) { barrier_after_return_kernel<<<1, 64>>>(d); }
static void returned_lane(int *d) { shuffle_with_returned_lane_kernel<<<1, 32>>>(d); }
static void host_pointer(int *) {
    static int host[4];
    touch_kernel<<<1, 1>>>(host);
}
static void copy_past_end(int *d) {
    int h[65];
    cudaMemcpy(h, d, sizeof(h), cudaMemcpyDeviceToHost);
}
static void test_deaths(void) {
    expect_death("a divergent __syncthreads", "divergent __syncthreads", divergent);
    expect_death("a __syncthreads after some threads returned", "returned", after_return);
    expect_death("a shuffle whose mask names a returned lane", "returned", returned_lane);
    expect_death("a host pointer passed to a kernel", "not device memory", host_pointer);
    expect_death("a cudaMemcpy past the end of an allocation", "the source is not", copy_past_end);
}
#endif

// --precision bf16: common/bf16.h's rounding on the device, bit for bit, and the bf16 matmul
static void test_bf16(void) {
    const uint32_t in[] = {0x3f800000, 0x3f808000, 0x3f818000, 0x3f808001, 0x3f807fff, 0xc0200000,
                           0x7f7fffff, 0xff800000, 0x00000001, 0x7fc00001, 0x7f800001};
    const uint16_t want[] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xc020, 0x7f80, 0xff80, 0x0000, 0x7fc0, 0x7fc0};
    const int nc = (int)(sizeof(in) / sizeof(in[0]));
    float *d_in = (float *)cuda_calloc(nc, sizeof(float));
    bf16 *d_out = (bf16 *)cuda_calloc(nc, sizeof(bf16)), got[16];
    cudaCheck(cudaMemcpy(d_in, in, sizeof(in), cudaMemcpyHostToDevice));
    to_bf16(d_out, d_in, nc);
    cudaCheck(cudaMemcpy(got, d_out, sizeof(bf16) * nc, cudaMemcpyDeviceToHost));
    int wrong = 0;
    for (int i = 0; i < nc; i++) wrong += got[i].bits != want[i];
    expect(wrong == 0, "bf16_round on the device: 11 cases (ties to even, inf, NaN, subnormal)");
    // C (M,N) = op(A) . op(B) on bf16 inputs, against the host's double sums of the same values
    const int M = 5, N = 7, K = 33;
    Rng rng;
    rng_seed(&rng, 5);
    float h[2 * K * 8], c[M * N];
    for (int i = 0; i < 2 * K * 8; i++) h[i] = (float)(2 * rng_uniform(&rng) - 1);
    float *d_f = (float *)cuda_calloc(2 * K * 8, sizeof(float)), *d_c = (float *)cuda_calloc(M * N, sizeof(float));
    bf16 *d_h = (bf16 *)cuda_calloc(2 * K * 8, sizeof(bf16));
    cudaCheck(cudaMemcpy(d_f, h, sizeof(h), cudaMemcpyHostToDevice));
    to_bf16(d_h, d_f, 2 * K * 8);
    const float *ha = h, *hb = h + K * 8;
    double worst = 0;
    precision_bf16 = 1;
    if (!cublas_handle) cublas_setup(0);
    for (int ta = 0; ta < 2; ta++) {
        for (int tb = 0; tb < 2; tb++) {
            int lda = ta ? M : K, ldb = tb ? K : N; // A (M,K) or stored (K,M); B (K,N) or stored (N,K)
            gemm_batched(ta, tb, M, N, K, d_h, lda, 0, d_h + K * 8, ldb, 0, d_c, N, 0, 1, 0);
            cudaCheck(cudaMemcpy(c, d_c, sizeof(c), cudaMemcpyDeviceToHost));
            for (int i = 0; i < M; i++) {
                for (int j = 0; j < N; j++) {
                    double sum = 0, mag = 0;
                    for (int k = 0; k < K; k++) {
                        double p = (double)bf16_rounded(ta ? ha[k * M + i] : ha[i * K + k]) *
                                   bf16_rounded(tb ? hb[j * K + k] : hb[k * N + j]);
                        sum += p, mag += fabs(p);
                    }
                    worst = fmax(worst, fabs(c[i * N + j] - sum) / mag);
                }
            }
        }
    }
    precision_bf16 = 0;
    // the products of bf16 values are exact: only the sum rounds. Emulated (double sums, one
    // rounding) ~6e-8 of sum |a b|; a GPU's fp32 sums in any order stay within gamma_K = K u /
    // (1 - K u), u = 2^-24; the tolerance is twice that. Unrounded inputs are ~1e-4 off.
    double gamma = K * 0x1p-24 / (1 - K * 0x1p-24);
    printf("  bf16 gemm: worst |C - host double| / sum |a b| = %.2e (tolerance 2 gamma_K = %.1e)\n", worst,
           2 * gamma);
    expect(worst < 2 * gamma, "gemm_batched on bf16 inputs (CUDA_R_16BF), 4 transposes, against the host");
    cudaCheck(cudaFree(d_in)), cudaCheck(cudaFree(d_out)), cudaCheck(cudaFree(d_f)), cudaCheck(cudaFree(d_c));
    cudaCheck(cudaFree(d_h));
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "race")) {
        int wrong = run_reverse(1);
        printf("racy reverse: %d of 2048 values wrong\n", wrong);
        return 0; // the ThreadSanitizer report is the result
    }
#ifdef CUDA_EMU
    printf("test_emu: cuda_emu, EMU_SCHED=%s EMU_SEED=%llu\n", emu::schedule_name(),
           (unsigned long long)emu::settings().seed);
#endif
    expect(run_reverse(0) == 0, "__syncthreads: 8 blocks reverse 256 values through shared memory");
    test_shuffles();
    test_reductions();
    test_atomics();
    test_limits();
    test_classifier();
    test_bf16();
    test_peaks();
#if defined(CUDA_EMU) && !defined(EMU_TSAN)
    test_deaths();
    // without its barrier the reversal reads shared memory before it is written: every
    // schedule runs some reader before its writer (inorder: thread 0 reads slot 255 first)
    expect(run_reverse(1) > 0, "the same reversal without __syncthreads gives wrong values");
#endif
    if (failed) {
        printf("FAIL: %d checks\n", failed);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
