/*
 * test/emu/cuda_emu.h: run CUDA C kernels on the CPU, one CUDA thread a fiber.
 *
 * CUDA once had `nvcc -deviceemu`: the same .cu compiled for the host, every GPU thread a
 * host thread, so a kernel could be stepped through in gdb. This header brings that back
 * for the subset of CUDA the project uses. A .cu file goes through cuda2host.py (which
 * rewrites only `k<<<grid, block>>>(args)`, keeping every line in place) and is compiled
 * by g++ with this header and cublas_emu.h forced in front (-include). docs/emulator.md
 * shows how, and how to step through a kernel in gdb.
 *
 * The model
 *   - A launch runs its blocks; a block runs its threads. Each CUDA thread is a fiber: a
 *     small stack of its own and a context switch of a few instructions (below, in
 *     assembly), so a thread can stop at __syncthreads or a warp shuffle and let the
 *     others catch up. The threads of one block run on one OS thread, cooperatively;
 *     blocks are spread over OpenMP threads, so they really do run at the same time.
 *   - A thread runs until it reaches a barrier or a warp collective, or returns. Then the
 *     scheduler picks the next ready thread; EMU_SCHED says which:
 *        inorder   the lowest thread index first (the default: one thread, then the next)
 *        reverse   the highest first
 *        random    the first ready thread from a random index on (EMU_SEED=n picks the
 *                  sequence); blocks run in a random order too
 *     A correct kernel gives the same bits under every schedule. A missing __syncthreads
 *     does not: some schedule reads shared memory before it was written.
 *   - __shared__ variables are per OS thread (thread_local), i.e. per running block.
 *   - Checks that a GPU does not make, each a clear message and abort(): a __syncthreads
 *     that not every thread of the block reaches (divergent barrier, or a thread that has
 *     returned), a shuffle whose mask names a lane that does not take part, a deadlock, a
 *     host pointer passed to a kernel, a cudaMemcpy/cudaMemset outside an allocation, a
 *     cudaFree of what cudaMalloc did not return. Launch limits as an H100's: at most 1024
 *     threads a block, blockDim (1024, 1024, 64), gridDim (2^31-1, 65535, 65535), 48 KiB
 *     of dynamic shared memory; a launch over them sets cudaErrorInvalidConfiguration and
 *     runs nothing, as on a GPU.
 *   - cudaMalloc fills new memory with 0xff bytes (NaN as floats), so a kernel that reads
 *     memory nobody wrote shows NaN instead of a lucky zero.
 *
 * Environment: EMU_SCHED (above), EMU_SEED (default 1), EMU_THREADS (OS threads for blocks;
 * default OpenMP's), EMU_STACK_KB (fiber stack; default 128, 1024 under ASan), EMU_TRACE=1
 * (print every launch).
 *
 * Sanitizers: -fsanitize=address,undefined works (the fiber switches are announced to
 * ASan). -fsanitize=thread makes every CUDA thread a ThreadSanitizer fiber; barriers,
 * collectives and launch boundaries are the happens-before edges, so a missing barrier
 * is a reported data race. A TSan build runs blocks one at a time on one OS thread, each
 * after the one before: it sees races inside a block, not between blocks.
 *
 * What it cannot show: the GPU's own rounding (FMA contraction is the compiler's choice,
 * device expf is not glibc's, cuBLAS sums in another order, TF32 is only approximated),
 * timing, occupancy, registers (nvcc -Xptxas -v tells those), asynchrony (launches and
 * copies are synchronous here), an access past the end of a view inside one allocation.
 */
#ifndef RESCALE_CUDA_EMU_H
#define RESCALE_CUDA_EMU_H
#define CUDA_EMU 1

// CUDA's qualifiers mean nothing on the host. host_defines.h keeps these when
// __CUDACC__ is not defined, which it is not (this is g++).
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#if defined(__SANITIZE_THREAD__)
#define EMU_TSAN 1
#define __shared__ static // TSan: plain memory it can watch (its blocks run one at a time)
#else
#define __shared__ thread_local // one copy per OS thread = per block running on it
#endif
#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#endif
#define __DEVICE_LAUNCH_PARAMETERS_H__ // threadIdx & co. are ours, below

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef EMU_TSAN
#include <sanitizer/tsan_interface.h>
#define EMU_NO_TSAN __attribute__((no_sanitize("thread"))) // the scheduler's own bookkeeping
#else
#define EMU_NO_TSAN
#endif
#if !defined(__x86_64__)
#include <ucontext.h> // elsewhere: the portable, slower switch
#endif

// ============================================================================
// 1. settings and messages
// ============================================================================
namespace emu {

[[noreturn]] __attribute__((format(printf, 1, 2))) inline void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fflush(stdout);
    fprintf(stderr, "cuda_emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    abort();
}

enum Schedule { SCHED_INORDER, SCHED_REVERSE, SCHED_RANDOM };

struct Settings {
    Schedule sched = SCHED_INORDER;
    uint64_t seed = 1;
    int os_threads = 0, trace = 0;
    size_t stack_bytes;
    size_t memory_gib = 16; // the device memory cudaGetDeviceProperties reports (EMU_MEMORY_GIB)
    Settings() {
        const char *s = getenv("EMU_SCHED");
        if (s && *s) {
            if (!strcmp(s, "inorder")) sched = SCHED_INORDER;
            else if (!strcmp(s, "reverse")) sched = SCHED_REVERSE;
            else if (!strcmp(s, "random")) sched = SCHED_RANDOM;
            else fail("EMU_SCHED=%s: want inorder, reverse or random", s);
        }
        if ((s = getenv("EMU_SEED")) && *s) seed = strtoull(s, nullptr, 10);
        if ((s = getenv("EMU_THREADS")) && *s) os_threads = atoi(s);
        if ((s = getenv("EMU_TRACE")) && *s) trace = atoi(s);
        if ((s = getenv("EMU_MEMORY_GIB")) && *s) memory_gib = strtoull(s, nullptr, 10);
#ifdef EMU_ASAN
        size_t kb = 1024;
#else
        size_t kb = 128;
#endif
        if ((s = getenv("EMU_STACK_KB")) && *s) kb = strtoull(s, nullptr, 10);
        stack_bytes = kb << 10;
    }
};
inline Settings &settings() {
    static Settings s;
    return s;
}
inline const char *schedule_name() {
    switch (settings().sched) {
    case SCHED_REVERSE: return "reverse";
    case SCHED_RANDOM: return "random";
    default: return "inorder";
    }
}

struct Rng { // splitmix64: small, and good enough to shuffle threads
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    uint32_t below(uint32_t n) { return (uint32_t)(next() % n); }
};

// the last error, as cudaGetLastError reports it (per host thread, as in CUDA)
inline thread_local cudaError_t last_error = cudaSuccess;
inline cudaError_t set_error(cudaError_t e) { return last_error = e; }

// ============================================================================
// 2. device memory: a registry of what cudaMalloc handed out
// ============================================================================
struct Registry {
    std::mutex mu;
    std::map<uintptr_t, size_t> blocks; // start -> bytes
    // is [p, p + n) inside one live allocation?
    bool holds(const void *p, size_t n) {
        std::lock_guard<std::mutex> g(mu);
        uintptr_t a = (uintptr_t)p;
        auto it = blocks.upper_bound(a);
        if (it == blocks.begin()) return false;
        --it;
        return a >= it->first && a - it->first + n <= it->second;
    }
};
inline Registry &registry() {
    static Registry r;
    return r;
}

// ============================================================================
// 3. fibers: a stack and a saved stack pointer per CUDA thread
// ============================================================================
#if defined(__x86_64__)
// emu_switch(from, to): push the callee-saved registers of the System V ABI (rbx, rbp,
// r12-r15) on the current stack, store the stack pointer in *from, load `to`, pop the same
// registers from there and return into whatever that stack was doing. A new fiber's stack
// is prepared to "return" into fiber_entry. (The SSE and x87 control words are callee-saved
// too; no kernel changes them, so they are left alone: saving them costs more than the rest.)
extern "C" void emu_switch(void **from, void *to);
asm(R"(
    .text
    .weak emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
struct Context {
    void *sp;
};
#else
struct Context {
    ucontext_t uc;
};
#endif

struct Stack {
    char *lo; // lowest usable byte; a PROT_NONE guard page lies under it
    size_t size;
};

// per OS thread: stacks of finished threads, reused by the next ones (a plain array, kept
// out of ThreadSanitizer's sight: the fibers of one OS thread share it, one at a time)
struct StackPool {
    Stack free_stacks[1024]; // at most a block's 1024 threads are alive at once
    int nfree = 0;
    unsigned made = 0;
    EMU_NO_TSAN Stack get() {
        if (nfree > 0) return free_stacks[--nfree];
        size_t page = (size_t)sysconf(_SC_PAGESIZE), size = (settings().stack_bytes + page - 1) / page * page + (64 << 10);
        char *p = (char *)mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                               -1, 0);
        if (p == MAP_FAILED) fail("no memory for a %zu KiB fiber stack", size >> 10);
        mprotect(p, page, PROT_NONE); // a stack overflow faults here (raise EMU_STACK_KB)
        // Stacks of equal size start at equal offsets into a page, so the busy tops of 1024 of
        // them would all fall in the same few cache sets; shifting each by another multiple of
        // 64 bytes (up to 64 KiB) spreads them.
        size_t color = (size_t)(made++ * 13u % 1024u) * 64u;
        return Stack{p + page, size - color};
    }
    EMU_NO_TSAN void put(Stack s) { free_stacks[nfree++] = s; }
};

enum State : uint8_t { NEW, READY, AT_BARRIER, AT_COLLECTIVE, DONE };

struct Thread {
    Context ctx;
    Stack stack;
    uint3 idx;
    int lane, warp;
    State state;
#ifdef EMU_ASAN
    void *asan_fake;
#endif
#ifdef EMU_TSAN
    void *tsan;
#endif
};

enum Collective { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR, BALLOT, SYNCWARP };
inline const char *collective_name(int k) {
    static const char *n[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync",
                              "__ballot_sync", "__syncwarp"};
    return n[k];
}

// a warp collective in progress: who has arrived, with what
struct Warp {
    unsigned live; // lanes that have not returned (the last warp of a block may be partial)
    unsigned arrived, mask;
    int kind, arg, width; // arg: the first lane's (the others must match, but for __shfl_sync)
    const char *file;
    int line;
    uint64_t in[32], out[32];
    int src_lane[32]; // __shfl_sync: the lane each lane reads
#ifdef EMU_TSAN
    char hb[2]; // TSan sync objects, alternating by generation
    int gen;
#endif
};

struct Block {
    const char *kernel;
    int nthreads, nlive, nwarps;
    Thread *threads;
    Warp *warps;
    uint64_t ready[16]; // a bit per thread: may run now
    int bar_arrived;
    const char *bar_file;
    int bar_line;
    Rng rng;
    char *dynamic_shared;
    void (*body)(void *);
    void *arg;
    Context sched;
#ifdef EMU_ASAN
    const void *asan_sched_lo;
    size_t asan_sched_size;
    void *asan_sched_fake;
#endif
#ifdef EMU_TSAN
    long seq; // blocks run before this one in the launch
    void *tsan_sched;
    char bar_hb[2];
    int bar_gen;
#endif
};

// the running block and thread on this OS thread, and CUDA's built-in variables
inline thread_local Block *cur_block;
inline thread_local Thread *cur_thread;
inline thread_local uint3 t_threadIdx, t_blockIdx, t_blockDim, t_gridDim;
inline thread_local StackPool stacks;

#ifdef EMU_TSAN
// happens-before edges: host -> kernel ([0]), kernel -> host ([1]), and one block -> the next
// (block_hb): a TSan build runs blocks in turn and their __shared__ variables are one static copy, so
// the next block's threads must be seen to come after the last one's (on a GPU each block has
// shared memory of its own). The price: TSan sees races inside a block, not between blocks.
inline char launch_hb[2];
inline char block_hb[2]; // block k releases [k % 2]; block k + 1 acquires it
#endif

inline void fiber_entry();

EMU_NO_TSAN inline void prepare(Thread &t) {
    t.stack = stacks.get();
#if defined(__x86_64__)
    // what emu_switch pops: r15..rbp, then the return address
    uintptr_t top = ((uintptr_t)(t.stack.lo + t.stack.size)) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = nullptr;              // fiber_entry's own return address: it never returns
    *--sp = (void *)&fiber_entry; // where emu_switch's ret goes
    for (int i = 0; i < 6; i++) *--sp = nullptr;
    t.ctx.sp = sp;
#else
    getcontext(&t.ctx.uc);
    t.ctx.uc.uc_stack.ss_sp = t.stack.lo;
    t.ctx.uc.uc_stack.ss_size = t.stack.size;
    t.ctx.uc.uc_link = nullptr;
    makecontext(&t.ctx.uc, (void (*)())fiber_entry, 0);
#endif
#ifdef EMU_TSAN
    // one TSan fiber per thread index, kept for the next blocks (TSan runs them in turn)
    static void *fibers[1024];
    int lin = (int)(t.idx.x + t_blockDim.x * (t.idx.y + t_blockDim.y * t.idx.z));
    if (!fibers[lin]) fibers[lin] = __tsan_create_fiber(0);
    t.tsan = fibers[lin];
    char name[160];
    snprintf(name, sizeof(name), "CUDA thread (%u,%u,%u) of block (%u,%u,%u) in %s", t.idx.x, t.idx.y, t.idx.z,
             t_blockIdx.x, t_blockIdx.y, t_blockIdx.z, cur_block->kernel);
    __tsan_set_fiber_name(t.tsan, name);
#endif
    t.state = READY;
}

EMU_NO_TSAN inline void raw_switch(Context &from, Context &to) {
#if defined(__x86_64__)
    emu_switch(&from.sp, to.sp);
#else
    swapcontext(&from.uc, &to.uc);
#endif
}

// scheduler -> thread t, until t waits or returns
EMU_NO_TSAN inline void run_thread(Block &b, Thread &t) {
    cur_thread = &t;
    t_threadIdx = t.idx;
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(t.tsan, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(&b.asan_sched_fake, t.stack.lo, t.stack.size);
#endif
    raw_switch(b.sched, t.ctx);
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(b.asan_sched_fake, nullptr, nullptr);
#endif
}

// thread -> scheduler; `finished`: this fiber never runs again
EMU_NO_TSAN inline void yield_to_scheduler(bool finished) {
    Block &b = *cur_block;
    Thread &t = *cur_thread;
#ifdef EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &t.asan_fake, b.asan_sched_lo, b.asan_sched_size);
#endif
#ifdef EMU_TSAN
    __tsan_switch_to_fiber(b.tsan_sched, __tsan_switch_to_fiber_no_sync);
#endif
    raw_switch(t.ctx, b.sched);
    (void)finished;
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(t.asan_fake, nullptr, nullptr);
#endif
}

EMU_NO_TSAN inline void set_ready(Block &b, int i) { b.ready[i >> 6] |= 1ull << (i & 63); }

// ============================================================================
// 4. barriers and warp collectives
// ============================================================================
#define EMU_AT "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)"
#define EMU_WHO(b, t) (b).kernel, t_blockIdx.x, t_blockIdx.y, t_blockIdx.z, (t).idx.x, (t).idx.y, (t).idx.z

EMU_NO_TSAN inline void open_barrier(Block &b) {
    for (int i = 0; i < b.nthreads; i++)
        if (b.threads[i].state == AT_BARRIER) b.threads[i].state = READY, set_ready(b, i);
    b.bar_arrived = 0;
#ifdef EMU_TSAN
    b.bar_gen++;
#endif
}

// __syncthreads(): wait until every thread of the block is here, at this same line
EMU_NO_TSAN inline void syncthreads(const char *file, int line) {
    Block &b = *cur_block;
    Thread &t = *cur_thread;
    if (b.nlive < b.nthreads)
        fail(EMU_AT ": __syncthreads at %s:%d after %d of the block's %d threads returned (a barrier the whole "
                    "block must reach)",
             EMU_WHO(b, t), file, line, b.nthreads - b.nlive, b.nthreads);
    if (b.bar_arrived == 0) {
        b.bar_file = file, b.bar_line = line;
    } else if (line != b.bar_line || (file != b.bar_file && strcmp(file, b.bar_file))) {
        fail(EMU_AT ": divergent __syncthreads: this thread at %s:%d, %d others at %s:%d", EMU_WHO(b, t), file, line,
             b.bar_arrived, b.bar_file, b.bar_line);
    }
#ifdef EMU_TSAN
    int gen = b.bar_gen;
    __tsan_release(&b.bar_hb[gen & 1]);
#endif
    t.state = AT_BARRIER;
    if (++b.bar_arrived == b.nlive) open_barrier(b);
    yield_to_scheduler(false); // even the last to arrive: the schedule decides who goes first
#ifdef EMU_TSAN
    __tsan_acquire(&b.bar_hb[gen & 1]);
#endif
}

// the value lane `lane` gets from a finished collective
EMU_NO_TSAN inline uint64_t collective_result(Block &b, Warp &w, int first, int lane) {
    if (w.kind == BALLOT) {
        unsigned bits = 0;
        for (int l = 0; l < 32; l++)
            if ((w.mask >> l & 1) && w.in[l]) bits |= 1u << l;
        return bits;
    }
    if (w.kind == SYNCWARP) return 0;
    int width = w.width, seg = lane & ~(width - 1), src = lane;
    switch (w.kind) {
    case SHFL_IDX: src = seg + (w.src_lane[lane] & (width - 1)); break;
    case SHFL_UP: src = lane - w.arg >= seg ? lane - w.arg : lane; break;
    case SHFL_DOWN: src = lane + w.arg < seg + width ? lane + w.arg : lane; break;
    case SHFL_XOR: src = (lane ^ w.arg) < seg + width ? lane ^ w.arg : lane; break;
    }
    if (!(w.mask >> src & 1)) {
        Thread &t = b.threads[first + lane];
        fail(EMU_AT ": %s at %s:%d reads lane %d, which its mask 0x%08x leaves out", EMU_WHO(b, t),
             collective_name(w.kind), w.file, w.line, src, w.mask);
    }
    return w.in[src];
}

// one lane's part in a warp collective: wait for every lane of `mask`, then take the result
EMU_NO_TSAN inline uint64_t collective(int kind, const char *file, int line, unsigned mask, uint64_t value, int arg,
                                       int width) {
    Block &b = *cur_block;
    Thread &t = *cur_thread;
    Warp &w = b.warps[t.warp];
    unsigned me = 1u << t.lane;
    if (!(mask & me)) fail(EMU_AT ": %s at %s:%d with mask 0x%08x, which leaves out this lane (%d)", EMU_WHO(b, t),
                           collective_name(kind), file, line, mask, t.lane);
    if (mask & ~w.live)
        fail(EMU_AT ": %s at %s:%d: mask 0x%08x names lanes 0x%08x that have returned or do not exist",
             EMU_WHO(b, t), collective_name(kind), file, line, mask, mask & ~w.live);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail(EMU_AT ": %s at %s:%d: width %d is not a power of two up to 32", EMU_WHO(b, t), collective_name(kind),
             file, line, width);
    if (w.arrived == 0) {
        w.mask = mask, w.kind = kind, w.arg = arg, w.width = width, w.file = file, w.line = line;
    } else if (w.mask != mask || w.kind != kind || w.line != line || (w.file != file && strcmp(w.file, file)) ||
               (kind != SHFL_IDX && w.arg != arg)) {
        fail(EMU_AT ": %s at %s:%d (mask 0x%08x) while lanes 0x%08x of its warp wait in %s at %s:%d (mask 0x%08x)",
             EMU_WHO(b, t), collective_name(kind), file, line, mask, w.arrived, collective_name(w.kind), w.file, w.line,
             w.mask);
    }
    w.in[t.lane] = value;
    w.src_lane[t.lane] = arg;
    w.arrived |= me;
    t.state = AT_COLLECTIVE;
#ifdef EMU_TSAN
    int gen = w.gen;
    __tsan_release(&w.hb[gen & 1]);
#endif
    if (w.arrived == w.mask) {
        int first = t.warp * 32;
        for (int l = 0; l < 32; l++) {
            if (!(w.mask >> l & 1)) continue;
            w.out[l] = collective_result(b, w, first, l); // reads only w.in and w.src_lane
            b.threads[first + l].state = READY;
            set_ready(b, first + l);
        }
        w.arrived = 0;
#ifdef EMU_TSAN
        w.gen++;
#endif
    }
    yield_to_scheduler(false);
#ifdef EMU_TSAN
    __tsan_acquire(&w.hb[gen & 1]);
#endif
    return w.out[t.lane];
}

template <class T> inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type over 8 bytes");
    uint64_t u = 0;
    memcpy(&u, &v, sizeof(T));
    return u;
}
template <class T> inline T from_bits(uint64_t u) {
    T v;
    memcpy(&v, &u, sizeof(T));
    return v;
}
template <class T> inline T shfl(int kind, const char *file, int line, unsigned mask, T v, int arg, int width = 32) {
    return from_bits<T>(collective(kind, file, line, mask, to_bits(v), arg, width));
}

// ============================================================================
// 5. running a grid
// ============================================================================
// which ready thread runs next
EMU_NO_TSAN inline int pick(Block &b) {
    int words = (b.nthreads + 63) / 64;
    switch (settings().sched) {
    case SCHED_INORDER:
        for (int i = 0; i < words; i++)
            if (b.ready[i]) return i * 64 + __builtin_ctzll(b.ready[i]);
        return -1;
    case SCHED_REVERSE:
        for (int i = words - 1; i >= 0; i--)
            if (b.ready[i]) return i * 64 + 63 - __builtin_clzll(b.ready[i]);
        return -1;
    default: { // the first ready thread at or after a random index, wrapping around
        int r = (int)b.rng.below((uint32_t)b.nthreads), w0 = r >> 6;
        uint64_t first = b.ready[w0] & (~0ull << (r & 63));
        if (first) return w0 * 64 + __builtin_ctzll(first);
        for (int k = 1; k <= words; k++) {
            int i = (w0 + k) % words;
            if (b.ready[i]) return i * 64 + __builtin_ctzll(b.ready[i]);
        }
        return -1;
    }
    }
}

EMU_NO_TSAN inline void fiber_entry() {
#ifdef EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &cur_block->asan_sched_lo, &cur_block->asan_sched_size);
#endif
#ifdef EMU_TSAN
    __tsan_acquire(&launch_hb[0]);
    __tsan_acquire(&block_hb[(cur_block->seq + 1) & 1]); // every thread of the block before
#endif
    Block &b = *cur_block;
    b.body(b.arg); // the kernel, as this thread
#ifdef EMU_TSAN
    __tsan_release(&launch_hb[1]);
    __tsan_release(&block_hb[b.seq & 1]);
#endif
    Thread &t = *cur_thread;
    t.state = DONE;
    b.nlive--;
    Warp &w = b.warps[t.warp];
    w.live &= ~(1u << t.lane);
    if (w.arrived && (w.mask >> t.lane & 1))
        fail(EMU_AT ": returned while lanes 0x%08x of its warp wait for it in %s at %s:%d", EMU_WHO(b, t), w.arrived,
             collective_name(w.kind), w.file, w.line);
    if (b.bar_arrived > 0)
        fail(EMU_AT ": returned while %d threads wait at __syncthreads (%s:%d) for the whole block", EMU_WHO(b, t),
             b.bar_arrived, b.bar_file, b.bar_line);
#ifndef EMU_TSAN
    stacks.put(t.stack); // nothing runs on it after the switch below
#endif
    // (TSan: a stack handed from one thread to the next would be a happens-before edge
    // between them that a GPU does not have; the stacks go back after the block, below)
    yield_to_scheduler(true);
    __builtin_unreachable();
}

// the threads of one block, as many fibers, to the end
EMU_NO_TSAN inline void run_block(Block &b) {
    while (b.nlive > 0) {
        int i = pick(b);
        if (i < 0) {
            for (int k = 0; k < b.nthreads; k++) {
                Thread &t = b.threads[k];
                if (t.state == AT_COLLECTIVE) {
                    Warp &w = b.warps[t.warp];
                    fail(EMU_AT ": deadlock: waits in %s at %s:%d for lanes 0x%08x of mask 0x%08x", EMU_WHO(b, t),
                         collective_name(w.kind), w.file, w.line, w.mask & ~w.arrived, w.mask);
                }
            }
            fail("kernel %s, block (%u,%u,%u): deadlock with %d threads at __syncthreads (%s:%d)", b.kernel,
                 t_blockIdx.x, t_blockIdx.y, t_blockIdx.z, b.bar_arrived, b.bar_file, b.bar_line);
        }
        b.ready[i >> 6] &= ~(1ull << (i & 63));
        Thread &t = b.threads[i];
        if (t.state == NEW) prepare(t);
        run_thread(b, t);
    }
}

struct DeviceLimits {
    unsigned threads = 1024, bx = 1024, by = 1024, bz = 64;
    unsigned gx = 2147483647u, gy = 65535, gz = 65535;
    size_t dynamic_shared = 48 << 10;
};

inline std::atomic<long> &launch_count() {
    static std::atomic<long> n{0};
    return n;
}

// run body(arg) as every thread of every block of grid x block
EMU_NO_TSAN inline void run_grid(const char *kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void *),
                                 void *arg) {
    long nblocks = (long)grid.x * grid.y * grid.z;
    int nthreads = (int)(block.x * block.y * block.z);
    long seq = launch_count()++;
    std::vector<long> order;
    if (settings().sched == SCHED_RANDOM) { // blocks in a random order, as a GPU may run them
        order.resize(nblocks);
        for (long i = 0; i < nblocks; i++) order[i] = i;
        Rng r{settings().seed * 0x2545F4914F6CDD1Dull + (uint64_t)seq};
        for (long i = nblocks - 1; i > 0; i--) std::swap(order[i], order[r.next() % (uint64_t)(i + 1)]);
    }
    int os_threads = settings().os_threads;
#ifdef _OPENMP
    if (os_threads <= 0) os_threads = omp_get_max_threads();
#endif
#ifdef EMU_TSAN
    os_threads = 1;
#endif
    if (os_threads < 1) os_threads = 1;
    if (nblocks < os_threads) os_threads = (int)nblocks;
    std::atomic<long> next{0};
#ifdef EMU_TSAN
    __tsan_release(&launch_hb[0]);
#endif
#pragma omp parallel num_threads(os_threads)
    {
        Block b{};
        b.kernel = kernel;
        b.nthreads = nthreads;
        b.nwarps = (nthreads + 31) / 32;
        b.threads = (Thread *)calloc((size_t)nthreads, sizeof(Thread));
        b.warps = (Warp *)calloc((size_t)b.nwarps, sizeof(Warp));
        b.dynamic_shared = (char *)malloc(shared_bytes ? shared_bytes : 1);
        b.body = body;
        b.arg = arg;
        t_blockDim = block;
        t_gridDim = grid;
        for (long k; (k = next++) < nblocks;) {
            long id = order.empty() ? k : order[k];
            t_blockIdx = uint3{(unsigned)(id % grid.x), (unsigned)(id / grid.x % grid.y),
                               (unsigned)(id / ((long)grid.x * grid.y))};
            b.nlive = nthreads;
            b.bar_arrived = 0;
            b.rng = Rng{settings().seed ^ ((uint64_t)seq << 32) ^ (uint64_t)id * 0x9e3779b97f4a7c15ull};
            memset(b.ready, 0, sizeof(b.ready));
            memset(b.dynamic_shared, 0xff, shared_bytes); // shared memory starts as garbage
            for (int i = 0; i < nthreads; i++) {
                Thread &t = b.threads[i];
                t.idx = uint3{(unsigned)(i % block.x), (unsigned)(i / block.x % block.y),
                              (unsigned)(i / (block.x * block.y))};
                t.lane = i % 32, t.warp = i / 32;
                t.state = NEW;
                set_ready(b, i);
            }
            for (int wi = 0; wi < b.nwarps; wi++) {
                Warp &w = b.warps[wi];
                int n = std::min(32, nthreads - wi * 32);
                w.live = n == 32 ? 0xffffffffu : (1u << n) - 1;
                w.arrived = 0;
            }
            cur_block = &b;
#ifdef EMU_TSAN
            b.tsan_sched = __tsan_get_current_fiber();
            b.seq = k;
#endif
            run_block(b);
#ifdef EMU_TSAN
            for (int i = 0; i < nthreads; i++) stacks.put(b.threads[i].stack);
#endif
        }
        cur_block = nullptr;
        cur_thread = nullptr;
        free(b.threads);
        free(b.warps);
        free(b.dynamic_shared);
    }
#ifdef EMU_TSAN
    __tsan_acquire(&launch_hb[1]);
#endif
}

inline char *dynamic_shared() { return cur_block->dynamic_shared; }

// a kernel's pointer argument must be device memory (or null), as it must on a GPU
template <class T> inline void check_argument(const char *kernel, const char *file, int line, int i, const T &v) {
    if constexpr (std::is_pointer<T>::value) {
        if (v && !registry().holds((const void *)v, 1))
            fail("%s:%d: argument %d of %s is %p, not device memory (a host pointer, or freed)", file, line, i + 1,
                 kernel, (const void *)v);
    }
    (void)kernel, (void)file, (void)line, (void)i, (void)v;
}

// what `k<<<grid, block, shared, stream>>>` becomes: a callable that takes the arguments
template <class... P> struct Launch {
    void (*kernel)(P...);
    const char *name, *file;
    int line;
    dim3 grid, block;
    size_t shared_bytes;

    template <class... A> void operator()(A &&...args) const {
        static_assert(sizeof...(A) == sizeof...(P), "kernel launched with the wrong number of arguments");
        DeviceLimits lim;
        unsigned long long n = (unsigned long long)block.x * block.y * block.z;
        const char *why = nullptr;
        if (!grid.x || !grid.y || !grid.z || !block.x || !block.y || !block.z) why = "a dimension is 0";
        else if (n > lim.threads) why = "more than 1024 threads per block";
        else if (block.x > lim.bx || block.y > lim.by || block.z > lim.bz) why = "blockDim over (1024, 1024, 64)";
        else if (grid.x > lim.gx || grid.y > lim.gy || grid.z > lim.gz) why = "gridDim over (2^31-1, 65535, 65535)";
        else if (shared_bytes > lim.dynamic_shared) why = "dynamic shared memory over 48 KiB";
        if (why) {
            fprintf(stderr, "cuda_emu: %s:%d: %s<<<(%u,%u,%u), (%u,%u,%u), %zu>>>: invalid configuration: %s\n", file,
                    line, name, grid.x, grid.y, grid.z, block.x, block.y, block.z, shared_bytes, why);
            set_error(cudaErrorInvalidConfiguration);
            return;
        }
        // a kernel's parameters are copies, converted to the parameter types
        std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
        int i = 0;
        std::apply([&](const auto &...v) { (check_argument(name, file, line, i++, v), ...); }, params);
        if (settings().trace)
            fprintf(stderr, "cuda_emu: %s:%d: %s<<<(%u,%u,%u), (%u,%u,%u), %zu>>>\n", file, line, name, grid.x,
                    grid.y, grid.z, block.x, block.y, block.z, shared_bytes);
        struct Call {
            void (*kernel)(P...);
            std::tuple<std::decay_t<P>...> *params;
        } call{kernel, &params};
        run_grid(name, grid, block, shared_bytes,
                 [](void *p) {
                     Call &c = *(Call *)p;
                     std::apply(c.kernel, *c.params); // each thread gets its own copy of the parameters
                 },
                 &call);
    }
};

template <class... P>
inline Launch<P...> launch(void (*kernel)(P...), const char *name, const char *file, int line, dim3 grid, dim3 block,
                           size_t shared_bytes = 0, cudaStream_t = nullptr) {
    return Launch<P...>{kernel, name, file, line, grid, block, shared_bytes};
}

} // namespace emu

// ============================================================================
// 6. what kernels see: built-in variables, barriers, shuffles, atomics, math
// ============================================================================
#define threadIdx (::emu::t_threadIdx)
#define blockIdx (::emu::t_blockIdx)
#define blockDim (::emu::t_blockDim)
#define gridDim (::emu::t_gridDim)
static constexpr int warpSize = 32;

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __shfl_sync(mask, v, src, ...) ::emu::shfl(::emu::SHFL_IDX, __FILE__, __LINE__, mask, v, src, ##__VA_ARGS__)
#define __shfl_up_sync(mask, v, d, ...) ::emu::shfl(::emu::SHFL_UP, __FILE__, __LINE__, mask, v, d, ##__VA_ARGS__)
#define __shfl_down_sync(mask, v, d, ...) ::emu::shfl(::emu::SHFL_DOWN, __FILE__, __LINE__, mask, v, d, ##__VA_ARGS__)
#define __shfl_xor_sync(mask, v, m, ...) ::emu::shfl(::emu::SHFL_XOR, __FILE__, __LINE__, mask, v, m, ##__VA_ARGS__)
#define __ballot_sync(mask, p) \
    ((unsigned)::emu::collective(::emu::BALLOT, __FILE__, __LINE__, mask, (uint64_t)((p) != 0), 0, 32))
#define __any_sync(mask, p) (__ballot_sync(mask, p) != 0u)
#define __all_sync(mask, p) (__ballot_sync(mask, p) == (unsigned)(mask))
#define __syncwarp(...) ::emu::syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)
#define __activemask() (::emu::cur_block->warps[::emu::cur_thread->warp].live)
#define __threadfence() std::atomic_thread_fence(std::memory_order_seq_cst)
#define __threadfence_block() std::atomic_thread_fence(std::memory_order_seq_cst)

namespace emu {
EMU_NO_TSAN inline void syncwarp(const char *file, int line, unsigned mask = 0xffffffffu) {
    collective(SYNCWARP, file, line, mask, 0, 0, 32);
}

// atomics: blocks do run at once on several OS threads, so these are real atomics
template <class T, class F> inline T atomic_update(T *p, F f) {
    static_assert(sizeof(T) == 4 || sizeof(T) == 8, "atomics on 4 or 8 bytes");
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U *q = (U *)p, seen = __atomic_load_n(q, __ATOMIC_RELAXED), want;
    for (;;) {
        T old = from_bits<T>(seen), nu = f(old);
        memcpy(&want, &nu, sizeof(T));
        if (__atomic_compare_exchange_n(q, &seen, want, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
    }
}
} // namespace emu
template <class T> inline T atomicAdd(T *p, T v) { return ::emu::atomic_update(p, [v](T o) { return (T)(o + v); }); }
template <class T> inline T atomicMax(T *p, T v) { return ::emu::atomic_update(p, [v](T o) { return o < v ? v : o; }); }
template <class T> inline T atomicMin(T *p, T v) { return ::emu::atomic_update(p, [v](T o) { return v < o ? v : o; }); }
template <class T> inline T atomicExch(T *p, T v) { return ::emu::atomic_update(p, [v](T) { return v; }); }
template <class T> inline T atomicCAS(T *p, T expected, T v) {
    __atomic_compare_exchange_n(p, &expected, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
}

// device math that the C library does not have (the rest is <math.h>'s: expf, sqrtf, ...)
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
template <class T> inline T __ldg(const T *p) { return *p; }
using std::max;
using std::min;

// ============================================================================
// 7. the runtime API the programs call (launches and copies are synchronous)
// ============================================================================
#define EMU_API extern "C" __attribute__((weak))

EMU_API cudaError_t cudaGetLastError(void) {
    cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}
EMU_API cudaError_t cudaPeekAtLastError(void) { return emu::last_error; }
EMU_API const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    default: return "unknown error (cuda_emu)";
    }
}
EMU_API const char *cudaGetErrorName(cudaError_t e) { return cudaGetErrorString(e); }
EMU_API cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
EMU_API cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : emu::set_error(cudaErrorInvalidDevice); }
EMU_API cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
EMU_API cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
    if (d != 0) return emu::set_error(cudaErrorInvalidDevice);
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "cuda_emu on the CPU (EMU_SCHED=%s)", emu::schedule_name());
    p->major = 9, p->minor = 0;
    p->warpSize = 32;
    emu::DeviceLimits lim; // what the launches enforce
    p->maxThreadsPerBlock = (int)lim.threads;
    p->maxThreadsDim[0] = (int)lim.bx, p->maxThreadsDim[1] = (int)lim.by, p->maxThreadsDim[2] = (int)lim.bz;
    p->maxGridSize[0] = (int)lim.gx, p->maxGridSize[1] = (int)lim.gy, p->maxGridSize[2] = (int)lim.gz;
    p->sharedMemPerBlock = lim.dynamic_shared;
    p->sharedMemPerBlockOptin = 227 << 10;
    p->totalGlobalMem = emu::settings().memory_gib << 30;
    p->multiProcessorCount = 1;
    return cudaSuccess;
}
// The attributes the trainers read (MFU's peak): the properties' above, and a nominal 1 GHz
// clock (CUDA 13's cudaDeviceProp has no clockRate).
EMU_API cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, d) != cudaSuccess) return cudaErrorInvalidDevice;
    switch (a) {
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrClockRate: *v = 1000000; break; // kHz
    default: return emu::set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
EMU_API cudaError_t cudaDeviceSynchronize(void) { return emu::last_error; }
EMU_API cudaError_t cudaDeviceReset(void) { return cudaSuccess; }

EMU_API cudaError_t cudaMalloc(void **p, size_t n) {
    void *q = malloc(n ? n : 1);
    if (!q) return emu::set_error(cudaErrorMemoryAllocation);
    memset(q, 0xff, n); // cudaMalloc does not clear: NaN shows a read of what nobody wrote
    emu::Registry &r = emu::registry();
    {
        std::lock_guard<std::mutex> g(r.mu);
        r.blocks[(uintptr_t)q] = n ? n : 1;
    }
    *p = q;
    return cudaSuccess;
}
EMU_API cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    emu::Registry &r = emu::registry();
    {
        std::lock_guard<std::mutex> g(r.mu);
        auto it = r.blocks.find((uintptr_t)p);
        if (it == r.blocks.end()) emu::fail("cudaFree(%p): not a pointer cudaMalloc returned (or freed twice)", p);
        r.blocks.erase(it);
    }
    free(p);
    return cudaSuccess;
}
EMU_API cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind) {
    if (n == 0) return cudaSuccess;
    emu::Registry &r = emu::registry();
    bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    const char *bad = nullptr;
    if (kind == cudaMemcpyDefault || kind == cudaMemcpyHostToHost) bad = "a kind the project does not use";
    else if (dst_dev && !r.holds(dst, n)) bad = "the destination is not that many bytes of one device allocation";
    else if (src_dev && !r.holds(src, n)) bad = "the source is not that many bytes of one device allocation";
    else if (!dst_dev && r.holds(dst, 1)) bad = "the destination is device memory, the kind says host";
    else if (!src_dev && r.holds(src, 1)) bad = "the source is device memory, the kind says host";
    if (bad) emu::fail("cudaMemcpy(%p, %p, %zu bytes, kind %d): %s", dst, src, n, (int)kind, bad);
    memmove(dst, src, n);
    return cudaSuccess;
}
EMU_API cudaError_t cudaMemset(void *p, int v, size_t n) {
    if (n && !emu::registry().holds(p, n))
        emu::fail("cudaMemset(%p, %d, %zu bytes): not that many bytes of one device allocation", p, v, n);
    memset(p, v, n);
    return cudaSuccess;
}
EMU_API cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind k, cudaStream_t) {
    return cudaMemcpy(d, s, n, k);
}
EMU_API cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) { return cudaMemset(p, v, n); }
EMU_API cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::last_error; }

// events measure host time here: what they report is the emulator's speed, not a GPU's
struct CUevent_st {
    std::chrono::steady_clock::time_point at;
};
EMU_API cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new CUevent_st();
    return cudaSuccess;
}
EMU_API cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
EMU_API cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) {
    e->at = std::chrono::steady_clock::now();
    return cudaSuccess;
}
EMU_API cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
EMU_API cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
    return cudaSuccess;
}

#endif // RESCALE_CUDA_EMU_H
