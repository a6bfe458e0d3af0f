/*
 * common/dp.h: data parallelism over MPI for the CPU trainers (docs/parallel.md).
 *
 * Built with -DUSE_MPI (make train_llama_mpi, train_gpt2_mpi) a trainer runs as
 * N ranks under mpirun or srun; built without, it is one rank and every function
 * here is a few lines that leave the numbers as they always were. The rules:
 *
 *   * a step's global batch is --batch x N x --grad-accum rows, read by every
 *     rank's loader as one batch; rank n takes rows [n*K*B, (n+1)*K*B), micro-step k
 *     the k-th B rows of those (rank-major), so a run with N = 2, K = 1 and one with
 *     N = 1, K = 2 (and N = 1, K = 1, --batch 2B) see the same rows;
 *   * each rank sums its micro-steps' gradients in order, then dp_reduce_grads adds
 *     the ranks' sums in rank order, each rank for its own shard of the parameter
 *     vector, and scales by 1/(N*K): the same additions in the same order as one
 *     rank accumulating N*K micro-steps, so those two runs agree bit for bit;
 *   * ZeRO-1: a rank holds AdamW's m and v for its shard only, updates that shard,
 *     then dp_allgather_params gives every rank the whole parameter vector;
 *   * nothing here uses MPI_Allreduce on numbers that it could add in another order:
 *     every sum is taken in a fixed order, so the results do not depend on N's split.
 *
 * A failure on any rank ends them all with one message (dp_die, through die_hook
 * in common/utils.h), and the ranks check they were given the same command line.
 */
#ifndef RESCALE_DP_H
#define RESCALE_DP_H

#include "utils.h"
#ifdef USE_MPI
#include <mpi.h>
#endif

// the elementwise loops on every thread, where there is OpenMP (nvcc's host code has none)
#ifdef _OPENMP
#define DP_PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#else
#define DP_PARALLEL_FOR
#endif

typedef struct {
    int rank, ranks;
    void *acc;        // the micro-steps' gradient sum (dp_accumulate), grown on demand
    size_t acc_bytes;
    void *recv;       // dp_reduce_grads' receive buffer: every rank's copy of this shard
    size_t recv_bytes;
} DataParallel;

static DataParallel dp = {0, 1, NULL, 0, NULL, 0};

// A buffer of at least bytes, kept between calls.
static void *dp_buffer(void **p, size_t *have, size_t bytes) {
    if (bytes > *have) {
        free(*p);
        *p = malloc_check(bytes);
        *have = bytes;
    }
    return *p;
}

// This rank's shard [*lo, *hi) of a vector of n values cut into `chunks` fixed
// chunks [n*c/chunks, n*(c+1)/chunks): a rank owns whole chunks (ranks c0..c1), so
// a chunked sum (train_llama's sum_squares) splits between the ranks without change.
static void dp_chunks(int chunks, int rank, int *c0, int *c1) {
    *c0 = (int)((long)chunks * rank / dp.ranks);
    *c1 = (int)((long)chunks * (rank + 1) / dp.ranks);
}
static void dp_shard_of(long n, int chunks, int rank, long *lo, long *hi) {
    int c0, c1;
    dp_chunks(chunks, rank, &c0, &c1);
    *lo = n * c0 / chunks;
    *hi = n * c1 / chunks;
}
#define DP_CHUNKS 64 // train_llama's REDUCE_CHUNKS; at most this many ranks
static void dp_shard(long n, long *lo, long *hi) { dp_shard_of(n, DP_CHUNKS, dp.rank, lo, hi); }

#ifdef USE_MPI
// The message once and every rank ended. A rank other than 0 waits a few seconds
// first: when rank 0 fails the same way (a bad flag, a file every rank reads) it says
// so and ends the run, and this rank's copy of the message is never printed; a failure
// of this rank alone (a shard only it cannot read) is printed with its rank.
static void dp_die(int status, const char *msg) {
    fflush(stdout);
    if (dp.rank > 0) {
        for (int i = 0; i < 60; i++) usleep(50000);
        fprintf(stderr, "error: rank %d of %d: %s\n", dp.rank, dp.ranks, msg);
    } else {
        fprintf(stderr, "error: %s\n", msg);
    }
    fflush(stderr);
    atomic_cleanup();
    MPI_Abort(MPI_COMM_WORLD, status);
    exit(status);
}

// A normal exit (the end of main, --help) ends MPI too; every rank gets there together.
static void dp_finalize(void) {
    int done = 0;
    MPI_Finalized(&done);
    if (!done) MPI_Finalize();
}

static MPI_Datatype dp_type(size_t elem) { return elem == sizeof(double) ? MPI_DOUBLE : MPI_FLOAT; }

// counts and displacements of every rank's shard of n values, as MPI's int
static void dp_shard_counts(long n, int *counts, int *displs) {
    for (int r = 0; r < dp.ranks; r++) {
        long lo, hi;
        dp_shard_of(n, DP_CHUNKS, r, &lo, &hi);
        if (hi > 2147483647L) die("%ld parameters: a shard past 2^31 values is more than MPI's int counts", n);
        counts[r] = (int)(hi - lo);
        displs[r] = (int)lo;
    }
}
#endif

static uint64_t dp_hash(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ULL; // FNV-1a
    return h;
}
#define DP_HASH0 0xCBF29CE484222325ULL

// Every rank must hold the same h (a hash of `what`): else all stop, rank 0 saying which differs.
static void dp_check_same(const char *what, uint64_t h) {
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    uint64_t *all = (uint64_t *)malloc_check(sizeof(uint64_t) * dp.ranks);
    MPI_Allgather(&h, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
    for (int r = 1; r < dp.ranks; r++) {
        if (all[r] != all[0]) die("rank %d has another %s than rank 0; every rank must run the same command", r, what);
    }
    free(all);
#else
    (void)what, (void)h;
#endif
}

// First thing in main: MPI (with -DUSE_MPI), this process's rank, the die hook, and
// the check that every rank was given the same command line. Ranks other than 0 print
// nothing but errors (stdout goes to /dev/null): rank 0 alone logs and writes files.
static void dp_init(int *argc, char ***argv) {
#ifdef USE_MPI
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &dp.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &dp.ranks);
    die_hook = dp_die;
    atexit(dp_finalize);
    if (dp.rank > 0 && !freopen("/dev/null", "w", stdout)) die("cannot send rank %d's output to /dev/null", dp.rank);
    if (dp.ranks > DP_CHUNKS) {
        die("%d ranks: at most %d (the gradient norm's %d fixed chunks are shared out whole)", dp.ranks, DP_CHUNKS,
            DP_CHUNKS);
    }
    uint64_t h = DP_HASH0;
    for (int i = 1; i < *argc; i++) h = dp_hash(h, (*argv)[i], strlen((*argv)[i]) + 1);
    dp_check_same("command line", h);
#else
    (void)argc;
    // a build without MPI started by mpirun would run N independent copies into one --out
    const char *vars[2] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
    for (int i = 0; i < 2; i++) {
        const char *v = getenv(vars[i]);
        if (v && atoi(v) > 1) {
            die("started as one of %s MPI ranks, but %s was built without MPI: run its MPI build (make mpi: "
                "train_llama_mpi, train_gpt2_mpi; make cuda-mpi: train_llama_cu_mpi, train_gpt2_cu_mpi)", v,
                (*argv)[0]);
        }
    }
#endif
}

// After each micro-step's backward, grads (n values of elem bytes) into the running
// sum: copied at k = 0, added (sum + grads, in that order) after. Returns the sum.
static void *dp_accumulate(const void *grads, long n, size_t elem, int k) {
    void *acc = dp_buffer(&dp.acc, &dp.acc_bytes, (size_t)n * elem);
    if (k == 0) {
        memcpy(acc, grads, (size_t)n * elem);
    } else if (elem == sizeof(float)) {
        float *a = (float *)acc;
        const float *g = (const float *)grads;
DP_PARALLEL_FOR
        for (long i = 0; i < n; i++) a[i] += g[i];
    } else {
        double *a = (double *)acc;
        const double *g = (const double *)grads;
DP_PARALLEL_FOR
        for (long i = 0; i < n; i++) a[i] += g[i];
    }
    return acc;
}

/*
 * The step's gradient: src holds this rank's sum over its micro-steps; dst gets, on
 * this rank's shard [lo, hi), the sum over the ranks in rank order, times scale (skipped
 * when 1). dst outside the shard is left as it was: nothing after this reads it.
 * src may be dst. An ordered reduce-scatter: MPI_Alltoallv brings every rank's copy of
 * the shard here, and the additions are done here, rank 0's first.
 */
static void dp_reduce_grads(const void *src, void *dst, long n, size_t elem, double scale) {
    long lo, hi;
    dp_shard(n, &lo, &hi);
    long m = hi - lo;
    if (dp.ranks == 1 && scale == 1 && src == dst) return; // one rank, one micro-step: as it is
    const char *from = (const char *)src + (size_t)lo * elem;
#ifdef USE_MPI
    if (dp.ranks > 1) {
        int *sc = (int *)malloc_check(sizeof(int) * 4 * dp.ranks), *sd = sc + dp.ranks, *rc = sd + dp.ranks,
            *rd = rc + dp.ranks;
        dp_shard_counts(n, sc, sd);
        for (int r = 0; r < dp.ranks; r++) rc[r] = (int)m, rd[r] = (int)(r * m);
        void *recv = dp_buffer(&dp.recv, &dp.recv_bytes, (size_t)dp.ranks * m * elem);
        MPI_Alltoallv(src, sc, sd, dp_type(elem), recv, rc, rd, dp_type(elem), MPI_COMM_WORLD);
        free(sc);
        from = (const char *)recv;
    }
#endif
    int N = dp.ranks; // with one rank: src's own shard, in place
    if (elem == sizeof(float)) {
        const float *r = (const float *)from;
        float *d = (float *)dst + lo, sf = (float)scale;
DP_PARALLEL_FOR
        for (long i = 0; i < m; i++) {
            float a = r[i];
            for (int k = 1; k < N; k++) a += r[(long)k * m + i];
            d[i] = scale != 1 ? a * sf : a;
        }
    } else {
        const double *r = (const double *)from;
        double *d = (double *)dst + lo, sd = scale;
DP_PARALLEL_FOR
        for (long i = 0; i < m; i++) {
            double a = r[i];
            for (int k = 1; k < N; k++) a += r[(long)k * m + i];
            d[i] = scale != 1 ? a * sd : a;
        }
    }
}

// After each rank updated its shard of p (n values): every rank gets the whole vector.
static void dp_allgather_params(void *p, long n, size_t elem) {
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    int *counts = (int *)malloc_check(sizeof(int) * 2 * dp.ranks), *displs = counts + dp.ranks;
    dp_shard_counts(n, counts, displs);
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, p, counts, displs, dp_type(elem), MPI_COMM_WORLD);
    free(counts);
#else
    (void)p, (void)n, (void)elem;
#endif
}

// A checkpoint's AdamW moment: the ranks' shards (this rank's: shard) gathered into
// a new n-value buffer on rank 0 (NULL elsewhere; the caller frees it).
static void *dp_gather_shards(const void *shard, long n, size_t elem) {
    void *full = dp.rank == 0 ? malloc_check((size_t)n * elem) : NULL;
#ifdef USE_MPI
    int *counts = (int *)malloc_check(sizeof(int) * 2 * dp.ranks), *displs = counts + dp.ranks;
    dp_shard_counts(n, counts, displs);
    MPI_Gatherv(shard, counts[dp.rank], dp_type(elem), full, counts, displs, dp_type(elem), 0, MPI_COMM_WORLD);
    free(counts);
#else
    memcpy(full, shard, (size_t)n * elem);
#endif
    return full;
}

// part[c] of `chunks` doubles is this rank's for c in [c0, c1): every rank gets all of them.
static void dp_allgather_chunks(double *part, int chunks) {
#ifdef USE_MPI
    if (dp.ranks == 1) return;
    int *counts = (int *)malloc_check(sizeof(int) * 2 * dp.ranks), *displs = counts + dp.ranks;
    for (int r = 0; r < dp.ranks; r++) {
        int c0, c1;
        dp_chunks(chunks, r, &c0, &c1);
        counts[r] = c1 - c0, displs[r] = c0;
    }
    MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, part, counts, displs, MPI_DOUBLE, MPI_COMM_WORLD);
    free(counts);
#else
    (void)part, (void)chunks;
#endif
}

/*
 * A sum in index order over a vector sharded in rank order (train_gpt2's gradient
 * norm, one running double as on one rank): rank r starts from rank r-1's running sum
 * (dp_chain_begin), adds its shard, and passes it on (dp_chain_end returns the total,
 * on every rank). N messages of one double, one after the other.
 */
static double dp_chain_begin(void) {
    double s = 0;
#ifdef USE_MPI
    if (dp.rank > 0) MPI_Recv(&s, 1, MPI_DOUBLE, dp.rank - 1, 17, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
#endif
    return s;
}
static double dp_chain_end(double s) {
#ifdef USE_MPI
    if (dp.ranks == 1) return s;
    if (dp.rank < dp.ranks - 1) MPI_Send(&s, 1, MPI_DOUBLE, dp.rank + 1, 17, MPI_COMM_WORLD);
    MPI_Bcast(&s, 1, MPI_DOUBLE, dp.ranks - 1, MPI_COMM_WORLD);
#endif
    return s;
}

// The step's training loss: the mean of its N*K micro-batch losses (this rank's K in
// mine), added in their global order (rank-major, as the rows are), on every rank.
static double dp_mean_loss(const double *mine, int K) {
    int NK = dp.ranks * K;
    double *all = (double *)malloc_check(sizeof(double) * NK);
#ifdef USE_MPI
    MPI_Allgather(mine, K, MPI_DOUBLE, all, K, MPI_DOUBLE, MPI_COMM_WORLD);
#else
    memcpy(all, mine, sizeof(double) * K);
#endif
    double s = 0;
    for (int j = 0; j < NK; j++) s += all[j];
    free(all);
    return s / NK;
}

// Validation's batch losses, each computed by one rank (the others hold 0 there):
// summed over the ranks, which is exact (x + 0 = x), so the order does not matter.
static void dp_share_losses(double *loss, int n) {
#ifdef USE_MPI
    if (dp.ranks > 1) MPI_Allreduce(MPI_IN_PLACE, loss, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
#else
    (void)loss, (void)n;
#endif
}

#endif // RESCALE_DP_H
