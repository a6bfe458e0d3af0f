/*
 * common/cuda_dp.h: data parallelism for the CUDA trainers, common/dp.h's rules on the
 * GPU (docs/parallel.md). Built with -DUSE_MPI (make train_llama_cu_mpi, train_gpt2_cu_mpi;
 * emulated: train_llama_emu_mpi, train_gpt2_emu_mpi) a trainer runs as N ranks, one GPU each;
 * built without, it is one rank and every function here keeps the numbers as they were.
 *
 *   * MPI starts the ranks (dp_init: the die hook, the command-line check) and passes
 *     NCCL's id from rank 0 to the others; from then on the vectors move over NCCL;
 *   * a rank adds its micro-steps' gradients in order on the device (cuda_accumulate);
 *   * cuda_reduce_grads is dp_reduce_grads on the GPU: ncclSend/ncclRecv bring every rank's
 *     copy of this rank's shard here, and one kernel adds the N copies in rank order and
 *     scales by 1/(N*K). ncclReduceScatter is not used: it adds in an order of its own, and
 *     the order is what makes N ranks equal one rank accumulating N micro-steps, bit for bit;
 *   * ZeRO-1: AdamW's m and v exist for this rank's shard only; cuda_allgather gives every
 *     rank the updated parameters. The shards are dp.h's (whole chunks of DP_CHUNKS), of
 *     unequal sizes, so the all-gather is ncclSend/ncclRecv pairs in one group (each rank
 *     sends its shard to every other: the (N-1)/N of the vector a ring all-gather sends);
 *   * the gradient norm (cuda_sum_squares) sums DP_CHUNKS fixed chunks of the vector, each
 *     inside one rank's shard, so it is the same number for any N.
 * Under the emulator (test/emu/) device memory is host memory, and test/emu/nccl_emu.h
 * serves these NCCL calls with MPI. Include after cuda_train.h, from the .cu file itself: the
 * kernel launches below are rewritten for the emulator like a .cu's (the Makefile's
 * $(EMU_SRC)/common/cuda_dp.h, found there before common/).
 */
#ifndef RESCALE_CUDA_DP_H
#define RESCALE_CUDA_DP_H

#include "cuda_train.h"
#include "dp.h"

#ifdef USE_MPI
#ifdef CUDA_EMU
#include "emu/nccl_emu.h" // NCCL's calls served by MPI (device memory is host memory here)
#else
#include <nccl.h>
#endif

static void nccl_check_(ncclResult_t r, const char *what, const char *src, int line) {
    if (r != ncclSuccess) die("NCCL error in %s: %s [%s:%d]", what, ncclGetErrorString(r), src, line);
}
#define ncclCheck(call) nccl_check_((call), #call, __FILE__, __LINE__)
#endif

typedef struct {
    float *acc;     // the micro-steps' gradient sum (cuda_accumulate), grown on demand
    long acc_n;
    float *recv;    // every rank's copy of this rank's shard (cuda_reduce_grads), or the
    long recv_n;    // shards a checkpoint gathers on rank 0
    double *share;  // host numbers on their way between the ranks (cuda_share_doubles)
    long share_n;
#ifdef USE_MPI
    ncclComm_t comm;
#endif
} CudaDP;

static CudaDP cdp;

// A device buffer of at least n floats (or doubles: elem), kept between calls.
static void *cdp_buffer(void *p, long *have, long n, size_t elem) {
    void **q = (void **)p;
    if (n > *have) {
        cudaCheck(cudaFree(*q));
        *q = cuda_calloc(n, elem);
        *have = n;
    }
    return *q;
}

// off[r], r = 0..N: rank r's shard of n values is [off[r], off[r + 1]) (common/dp.h's).
static void cuda_shard_offsets(long n, long *off) {
    for (int r = 0; r < dp.ranks; r++) {
        long hi;
        dp_shard_of(n, DP_CHUNKS, r, &off[r], &hi);
    }
    off[dp.ranks] = n;
}

/*
 * This rank's GPU: its index among the ranks on its machine (MPI's shared-memory split),
 * one GPU a rank. The emulator has one device, which its ranks share.
 */
static int cuda_dp_device(void) {
    int local = 0, count = 0;
#ifdef USE_MPI
    if (dp.ranks > 1) {
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, dp.rank, MPI_INFO_NULL, &node);
        MPI_Comm_rank(node, &local);
        MPI_Comm_free(&node);
    }
#endif
    cudaCheck(cudaGetDeviceCount(&count));
#ifdef CUDA_EMU
    local = 0;
#else
    if (local >= count) {
        die("rank %d is the %d-th rank on its machine, which has %d GPUs: one rank a GPU "
            "(mpirun -np at most the GPUs of a machine, or --map-by ppr:%d:node)", dp.rank, local + 1, count, count);
    }
#endif
    return local;
}

// The GPU (gpu_setup, on this rank's device), then NCCL's communicator over the ranks:
// rank 0 makes its id, MPI sends it to the others.
static void gpu_dp_setup(int tf32, const char *cpu_program) {
    gpu_device = cuda_dp_device();
    gpu_setup(tf32, cpu_program);
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    ncclUniqueId id;
    if (dp.rank == 0) ncclCheck(ncclGetUniqueId(&id));
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclCheck(ncclCommInitRank(&cdp.comm, dp.ranks, id, dp.rank));
#endif
}

static void cuda_dp_free(void) {
#ifdef USE_MPI
    if (dp.ranks > 1) ncclCheck(ncclCommDestroy(cdp.comm));
#endif
    cudaCheck(cudaFree(cdp.acc)), cudaCheck(cudaFree(cdp.recv)), cudaCheck(cudaFree(cdp.share));
    memset(&cdp, 0, sizeof(cdp));
}

/*
 * The all-gather of a device vector p of elem-byte values whose part [off[r], off[r+1])
 * rank r holds: afterwards every rank holds all of it. ncclSend/ncclRecv pairs in one
 * group, so the parts may differ in size (an empty part is neither sent nor received).
 */
static void cuda_allgatherv(void *p, size_t elem, const long *off) {
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    char *b = (char *)p;
    ncclDataType_t type = elem == sizeof(double) ? ncclDouble : ncclFloat;
    long mine = off[dp.rank + 1] - off[dp.rank];
    ncclCheck(ncclGroupStart());
    for (int r = 0; r < dp.ranks; r++) {
        if (r == dp.rank) continue;
        long theirs = off[r + 1] - off[r];
        if (mine > 0) ncclCheck(ncclSend(b + off[dp.rank] * elem, (size_t)mine, type, r, cdp.comm, 0));
        if (theirs > 0) ncclCheck(ncclRecv(b + off[r] * elem, (size_t)theirs, type, r, cdp.comm, 0));
    }
    ncclCheck(ncclGroupEnd());
#else
    (void)p, (void)elem, (void)off;
#endif
}

// After each rank updated its shard of the parameters p (n floats): every rank gets them all.
static void cuda_allgather_params(float *p, long n) {
    long off[DP_CHUNKS + 1];
    cuda_shard_offsets(n, off);
    cuda_allgatherv(p, sizeof(float), off);
}

/*
 * Host doubles x[0..total) of which this rank computed [off[rank], off[rank+1]): every
 * rank gets every rank's part (through a device buffer: NCCL moves device memory).
 */
static void cuda_share_doubles(double *x, const long *off) {
    if (dp.ranks == 1) return;
    long total = off[dp.ranks], lo = off[dp.rank], m = off[dp.rank + 1] - lo;
    double *d = (double *)cdp_buffer(&cdp.share, &cdp.share_n, total, sizeof(double));
    if (m > 0) cudaCheck(cudaMemcpy(d + lo, x + lo, sizeof(double) * m, cudaMemcpyHostToDevice));
    cuda_allgatherv(d, sizeof(double), off);
    cudaCheck(cudaMemcpy(x, d, sizeof(double) * total, cudaMemcpyDeviceToHost));
}

// The step's training loss: the mean of the N*K micro-batch losses, this rank's K at
// loss[rank*K ..] (loss has N*K slots), added in their global order, on every rank.
static double cuda_mean_loss(double *loss, int K) {
    long off[DP_CHUNKS + 1];
    for (int r = 0; r <= dp.ranks; r++) off[r] = (long)r * K;
    cuda_share_doubles(loss, off);
    double s = 0;
    for (long j = 0; j < off[dp.ranks]; j++) s += loss[j];
    return s / off[dp.ranks];
}

__global__ void dp_add_kernel(float *acc, const float *g, long n) {
    GRID_STRIDE(i, n) acc[i] += g[i];
}

// After micro-step k's backward: grads (n floats) into the running sum, copied at k = 0,
// added (sum + grads, in that order) after. Returns the sum (device).
static const float *cuda_accumulate(const float *grads, long n, int k) {
    float *acc = (float *)cdp_buffer(&cdp.acc, &cdp.acc_n, n, sizeof(float));
    if (k == 0) {
        cudaCheck(cudaMemcpy(acc, grads, sizeof(float) * n, cudaMemcpyDeviceToDevice));
    } else {
        dp_add_kernel<<<grid_for(n), BLOCK>>>(acc, grads, n);
        launchCheck();
    }
    return acc;
}

// dst[i] = the N copies' sum (copies[k*m + i], k in rank order), times scale when scaled:
// common/dp.h's loop, expression for expression.
__global__ void dp_sum_copies_kernel(float *dst, const float *copies, long m, int N, float scale, int scaled) {
    GRID_STRIDE(i, m) {
        float a = copies[i];
        for (int k = 1; k < N; k++) a += copies[(long)k * m + i];
        dst[i] = scaled ? a * scale : a;
    }
}

/*
 * The step's gradient (device): src holds this rank's sum over its micro-steps; dst gets,
 * on this rank's shard, the sum over the ranks in rank order, times scale (skipped when 1).
 * dst outside the shard is left as it was: nothing after this reads it. src may be dst.
 */
static void cuda_reduce_grads(const float *src, float *dst, long n, double scale) {
    long off[DP_CHUNKS + 1];
    cuda_shard_offsets(n, off);
    long lo = off[dp.rank], m = off[dp.rank + 1] - lo;
    if (dp.ranks == 1 && scale == 1 && src == dst) return; // one rank, one micro-step: as it is
    const float *from = src + lo;
#ifdef USE_MPI
    if (dp.ranks > 1) {
        float *recv = (float *)cdp_buffer(&cdp.recv, &cdp.recv_n, (long)dp.ranks * m, sizeof(float));
        if (m > 0) {
            cudaCheck(cudaMemcpy(recv + (long)dp.rank * m, src + lo, sizeof(float) * m, cudaMemcpyDeviceToDevice));
        }
        ncclCheck(ncclGroupStart());
        for (int r = 0; r < dp.ranks; r++) {
            if (r == dp.rank) continue;
            long theirs = off[r + 1] - off[r];
            if (theirs > 0) ncclCheck(ncclSend(src + off[r], (size_t)theirs, ncclFloat, r, cdp.comm, 0));
            if (m > 0) ncclCheck(ncclRecv(recv + (long)r * m, (size_t)m, ncclFloat, r, cdp.comm, 0));
        }
        ncclCheck(ncclGroupEnd());
        from = recv;
    }
#endif
    if (m == 0) return;
    dp_sum_copies_kernel<<<grid_for(m), BLOCK>>>(dst + lo, from, m, dp.ranks, (float)scale, scale != 1);
    launchCheck();
}

/*
 * A checkpoint's AdamW moment: every rank's shard of it (this rank's: shard, on the
 * device) into host (n floats) on rank 0; the others send theirs, and their host is
 * not written.
 */
static void cuda_gather_shards(const float *shard, long n, float *host) {
    long off[DP_CHUNKS + 1];
    cuda_shard_offsets(n, off);
    long lo = off[dp.rank], m = off[dp.rank + 1] - lo;
    if (dp.rank == 0 && m > 0) cudaCheck(cudaMemcpy(host, shard, sizeof(float) * m, cudaMemcpyDeviceToHost));
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    if (dp.rank == 0) {
        float *recv = (float *)cdp_buffer(&cdp.recv, &cdp.recv_n, n, sizeof(float));
        ncclCheck(ncclGroupStart());
        for (int r = 1; r < dp.ranks; r++) {
            long theirs = off[r + 1] - off[r];
            if (theirs > 0) ncclCheck(ncclRecv(recv + off[r], (size_t)theirs, ncclFloat, r, cdp.comm, 0));
        }
        ncclCheck(ncclGroupEnd());
        cudaCheck(cudaMemcpy(host + off[1], recv + off[1], sizeof(float) * (n - off[1]), cudaMemcpyDeviceToHost));
    } else if (m > 0) {
        ncclCheck(ncclSend(shard, (size_t)m, ncclFloat, 0, cdp.comm, 0));
    }
#else
    (void)lo;
#endif
}

/*
 * The sum of squares of the gradient (n floats, this rank's shard of it up to date) in
 * double: DP_CHUNKS fixed chunks of the vector [n*c/DP_CHUNKS, n*(c+1)/DP_CHUNKS), each
 * summed by NORM_CHUNK_BLOCKS blocks; a rank sums its shard's chunks, the ranks swap the
 * partial sums, and every rank adds all DP_NORM_BLOCKS of them in order on the host. The
 * chunks do not depend on N, so neither does the number.
 */
#define NORM_CHUNK_BLOCKS 8
#define DP_NORM_BLOCKS (DP_CHUNKS * NORM_CHUNK_BLOCKS)
__global__ void dp_sum_squares_kernel(double *partial, const float *x, long n, int c0) {
    int b = c0 * NORM_CHUNK_BLOCKS + blockIdx.x;
    int ch = b / NORM_CHUNK_BLOCKS, sub = b % NORM_CHUNK_BLOCKS;
    long lo = n * ch / DP_CHUNKS, hi = n * (ch + 1) / DP_CHUNKS;
    double s = 0;
    for (long i = lo + (long)sub * blockDim.x + threadIdx.x; i < hi; i += (long)NORM_CHUNK_BLOCKS * blockDim.x) {
        s += (double)x[i] * x[i];
    }
    s = block_sum_d(s);
    if (threadIdx.x == 0) partial[b] = s;
}

// partial (device) and h_partial (host): DP_NORM_BLOCKS doubles each
static double cuda_sum_squares(const float *x, long n, double *partial, double *h_partial) {
    int c0, c1;
    dp_chunks(DP_CHUNKS, dp.rank, &c0, &c1);
    if (c1 > c0) {
        dp_sum_squares_kernel<<<(c1 - c0) * NORM_CHUNK_BLOCKS, BLOCK>>>(partial, x, n, c0);
        launchCheck();
    }
    long off[DP_CHUNKS + 1];
    for (int r = 0; r < dp.ranks; r++) {
        int r0, r1;
        dp_chunks(DP_CHUNKS, r, &r0, &r1);
        off[r] = (long)r0 * NORM_CHUNK_BLOCKS;
    }
    off[dp.ranks] = DP_NORM_BLOCKS;
    cuda_allgatherv(partial, sizeof(double), off);
    cudaCheck(cudaMemcpy(h_partial, partial, sizeof(double) * DP_NORM_BLOCKS, cudaMemcpyDeviceToHost));
    double s = 0;
    for (int b = 0; b < DP_NORM_BLOCKS; b++) s += h_partial[b];
    return s;
}

// Validation's batches: rank r computes [off[r], off[r+1]) of the n (whole blocks, so that
// cuda_share_doubles can swap them); the losses are then added in batch order on every rank.
static void cuda_val_split(int n, long *off) {
    for (int r = 0; r <= dp.ranks; r++) off[r] = (long)n * r / dp.ranks;
}

// Device memory the data parallelism adds to a run of np parameters (ZeRO-1 saves
// (N-1)/N of m and v; the micro-step sum and the shards' copies cost a vector each).
static double cuda_dp_memory(long np, int K) {
    double extra = 0, N = dp.ranks;
    if (K > 1) extra += 4.0 * np;
    if (dp.ranks > 1) extra += 4.0 * np - 2 * 4.0 * np * (N - 1) / N;
    return extra;
}

#endif // RESCALE_CUDA_DP_H
