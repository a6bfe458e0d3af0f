/*
 * test/emu/nccl_emu.h: the NCCL calls of common/cuda_dp.h, served by MPI, for the emulated
 * multi-rank builds (make train_llama_emu_mpi, train_gpt2_emu_mpi; docs/emulator.md).
 *
 * Under test/emu/cuda_emu.h device memory is host memory and every launch and copy is done
 * when it returns, so a rank's device buffer can go straight into MPI. NCCL's own header
 * gives the types and declarations; this file defines the few functions the trainers
 * call, with NCCL's semantics where they use them:
 *   - ncclGetUniqueId / ncclCommInitRank: the communicator is MPI_COMM_WORLD's ranks in the
 *     order of the NCCL ranks (the id is checked to be the same on every rank);
 *   - ncclSend / ncclRecv: point to point, matched in the order they were posted between a
 *     pair of ranks (MPI's non-overtaking rule is NCCL's rule too); inside
 *     ncclGroupStart/ncclGroupEnd they are posted at once and completed at ncclGroupEnd, so
 *     the pairs of an all-to-all do not wait for each other;
 *   - a buffer must be device memory (cudaMalloc's), as NCCL requires: a host pointer is
 *     refused with a message, as the emulator refuses one passed to a kernel.
 * Not emulated: the collectives (ncclAllReduce & co.), streams other than the default,
 * communicator splits, more than one communicator.
 */
#ifndef RESCALE_NCCL_EMU_H
#define RESCALE_NCCL_EMU_H

#include <mpi.h>
#include <nccl.h>

#include <vector>

struct ncclComm {
    MPI_Comm comm;
    int rank, nranks;
};

namespace emu {
struct NcclGroup {
    int depth = 0;
    std::vector<MPI_Request> pending;
};
inline NcclGroup &nccl_group() {
    static NcclGroup g;
    return g;
}
inline size_t nccl_type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}
// One message of count values as bytes, cut in pieces MPI's int counts can say.
inline ncclResult_t nccl_p2p(bool send, void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                             const char *what) {
    size_t es = nccl_type_size(t), bytes = count * es;
    if (es == 0 || !comm || peer < 0 || peer >= comm->nranks || peer == comm->rank) return ncclInvalidArgument;
    if (bytes && !registry().holds(buf, bytes)) {
        fail("%s(%p, %zu values): not that many bytes of one device allocation (NCCL takes device memory)", what,
             buf, count);
    }
    NcclGroup &g = nccl_group();
    const size_t piece = (size_t)1 << 30;
    for (size_t at = 0; at < bytes; at += piece) {
        int n = (int)(bytes - at < piece ? bytes - at : piece);
        MPI_Request r;
        char *p = (char *)buf + at;
        int rc = send ? MPI_Isend(p, n, MPI_BYTE, peer, 1, comm->comm, &r)
                      : MPI_Irecv(p, n, MPI_BYTE, peer, 1, comm->comm, &r);
        if (rc != MPI_SUCCESS) return ncclSystemError;
        g.pending.push_back(r);
    }
    if (g.depth > 0) return ncclSuccess;
    int rc = MPI_Waitall((int)g.pending.size(), g.pending.data(), MPI_STATUSES_IGNORE);
    g.pending.clear();
    return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}
} // namespace emu

#define NCCL_EMU_API extern "C" __attribute__((weak))

NCCL_EMU_API const char *ncclGetErrorString(ncclResult_t r) {
    switch (r) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (nccl_emu)";
    case ncclInvalidUsage: return "invalid usage (nccl_emu)";
    case ncclSystemError: return "MPI failed under it (nccl_emu)";
    default: return "unhandled error (nccl_emu)";
    }
}

NCCL_EMU_API ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof(*id));
    snprintf(id->internal, sizeof(id->internal), "nccl_emu pid %d", (int)getpid());
    return ncclSuccess;
}

NCCL_EMU_API ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    int world = 0;
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    if (nranks != world || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    // every rank must have been given rank 0's id: a stray one is a bug in the caller
    ncclUniqueId first = id;
    MPI_Bcast(&first, sizeof(first), MPI_BYTE, 0, MPI_COMM_WORLD);
    if (memcmp(&first, &id, sizeof(id)) != 0) return ncclInvalidUsage;
    ncclComm *c = new ncclComm();
    MPI_Comm_split(MPI_COMM_WORLD, 0, rank, &c->comm); // MPI's ranks in NCCL's order
    c->rank = rank, c->nranks = nranks;
    *comm = c;
    return ncclSuccess;
}

NCCL_EMU_API ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclInvalidArgument;
    MPI_Comm_free(&comm->comm);
    delete comm;
    return ncclSuccess;
}

NCCL_EMU_API ncclResult_t ncclGroupStart() {
    emu::nccl_group().depth++;
    return ncclSuccess;
}

NCCL_EMU_API ncclResult_t ncclGroupEnd() {
    emu::NcclGroup &g = emu::nccl_group();
    if (g.depth == 0) return ncclInvalidUsage;
    if (--g.depth > 0) return ncclSuccess;
    int rc = MPI_Waitall((int)g.pending.size(), g.pending.data(), MPI_STATUSES_IGNORE);
    g.pending.clear();
    return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}

NCCL_EMU_API ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                                   cudaStream_t) {
    return emu::nccl_p2p(true, (void *)buf, count, t, peer, comm, "ncclSend");
}

NCCL_EMU_API ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t t, int peer, ncclComm_t comm,
                                   cudaStream_t) {
    return emu::nccl_p2p(false, buf, count, t, peer, comm, "ncclRecv");
}

#endif // RESCALE_NCCL_EMU_H
