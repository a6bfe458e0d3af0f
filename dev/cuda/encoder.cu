/*
 * dev/cuda/encoder.cu: the token embedding, forward (a gather) and backward (a scatter-add
 * into the rows of the tokens that occurred), train_llama.cu's encoder_*.
 *
 * The backward is where determinism is won or lost: positions with the same token add into
 * the same row.
 *   version 1: one thread per (position, channel) with atomicAdd: fast, but the order of
 *              the additions (so the rounding) changes from run to run
 *   version 2: the host groups the positions by token (a counting sort, O(V + N)); one block
 *              per distinct token adds its positions in ascending order: the same order as
 *              train_llama.c's serial loop, so the result equals the CPU's bit for bit
 *              (what train_llama.cu uses)
 */
#include "common.h"

__global__ void encoder_forward_kernel(float *out, const int *tokens, const float *emb, int N, int C) {
    long n = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        out[i] = emb[(long)tokens[i / C] * C + i % C];
    }
}

__global__ void encoder_backward_kernel1(float *demb, const float *dout, const int *tokens, int N, int C) {
    long n = (long)N * C;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
        atomicAdd(&demb[(long)tokens[i / C] * C + i % C], dout[i]);
    }
}

__global__ void encoder_backward_kernel2(float *demb, const float *dout, const int *bucket_token,
                                         const int *bucket_start, const int *bucket_pos, int C) {
    int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float *row = demb + (long)bucket_token[b] * C;
    float acc = row[c];
    for (int p = bucket_start[b]; p < bucket_start[b + 1]; p++) acc += dout[(long)bucket_pos[p] * C + c];
    row[c] = acc;
}

// the host side of version 2 (train_llama.cu's encoder_buckets)
static int make_buckets(const int *tokens, int N, int V, int *bucket_token, int *bucket_start, int *bucket_pos) {
    int *count = (int *)calloc(V + 1, sizeof(int));
    for (int i = 0; i < N; i++) count[tokens[i] + 1]++;
    int nb = 0;
    for (int v = 0; v < V; v++) {
        if (count[v + 1] > 0) bucket_token[nb] = v, bucket_start[nb] = count[v], nb++;
        count[v + 1] += count[v];
    }
    bucket_start[nb] = N;
    for (int i = 0; i < N; i++) bucket_pos[count[tokens[i]]++] = i;
    free(count);
    return nb;
}

int main(int argc, char **argv) {
    require_gpu(argv[0]);
    int N = 8 * 1024, C = 768, V = 32000;
    long n = (long)N * C;
    int *tokens = make_random_int(N, 500); // a small range: many repeated tokens
    float *emb = make_random_float((long)V * C, 1), *dout = make_random_float(n, 1);
    float *out = (float *)malloc(sizeof(float) * n), *demb = make_random_float((long)V * C, 1);
    float *demb0 = (float *)malloc(sizeof(float) * V * C);
    memcpy(demb0, demb, sizeof(float) * V * C);
    for (int i = 0; i < N; i++) memcpy(out + (long)i * C, emb + (long)tokens[i] * C, sizeof(float) * C);
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) demb[(long)tokens[i] * C + c] += dout[(long)i * C + c];
    }
    int *bt = (int *)malloc(sizeof(int) * N), *bs = (int *)malloc(sizeof(int) * (N + 1)), *bp = (int *)malloc(sizeof(int) * N);
    int nb = make_buckets(tokens, N, V, bt, bs, bp);

    int *d_tokens = to_device(tokens, N), *d_bt = to_device(bt, nb), *d_bs = to_device(bs, nb + 1), *d_bp = to_device(bp, N);
    float *d_emb = to_device(emb, (long)V * C), *d_dout = to_device(dout, n), *d_out = device_zeros<float>(n);
    float *d_demb = to_device(demb0, (long)V * C);
    auto fwd = [&] { encoder_forward_kernel<<<ceil_div(n, 256), 256>>>(d_out, d_tokens, d_emb, N, C); };
    fwd();
    printf("forward\n");
    validate_result(d_out, out, "out", n, 0);
    printf("  %.3f ms\n", benchmark(20, fwd));
    for (int v = 1; v <= 2; v++) {
        if (!version_selected(argc, argv, v)) continue;
        printf("backward version %d (%d distinct tokens in %d positions)\n", v, nb, N);
        auto bwd = [&] {
            if (v == 1) encoder_backward_kernel1<<<ceil_div(n, 256), 256>>>(d_demb, d_dout, d_tokens, N, C);
            else encoder_backward_kernel2<<<dim3(nb, ceil_div(C, 256)), 256>>>(d_demb, d_dout, d_bt, d_bs, d_bp, C);
        };
        cudaCheck(cudaMemcpy(d_demb, demb0, sizeof(float) * V * C, cudaMemcpyHostToDevice));
        bwd();
        cudaCheck(cudaGetLastError());
        // version 2 adds in the CPU's order: exactly equal
        validate_result(d_demb, demb, "demb", (long)V * C, v == 2 ? 0 : 1e-5);
        printf("  %.3f ms\n", benchmark(20, bwd));
    }
    printf("encoder: all checks passed\n");
    return 0;
}
