/*
 * common/utils.h: what every program in this project does the same way.
 *
 * Checked I/O and allocation (a failure names the file, the source line and the
 * reason, then exits), a wall clock, a seeded random number generator, and an
 * atomic file writer so that a crash never leaves a torn checkpoint.
 * The mathematics of each experiment lives in its own file, not here.
 */
#ifndef RESCALE_UTILS_H
#define RESCALE_UTILS_H

#ifndef _GNU_SOURCE // g++ (and so nvcc) predefines it
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// Exit statuses: 2 for a bad command line (nothing was done), 1 for anything
// that went wrong while working (a bad file, an unwritable directory, ...).
#define EXIT_USAGE 2
#define EXIT_RUNTIME 1

// A program running as one of several MPI ranks (common/dp.h) sets die_hook: it says
// the message once and ends every rank, not only this one (a lone exit would leave the
// others waiting in their next collective). It does not return.
static void (*die_hook)(int status, const char *msg) = NULL;

// Print "error: <message>" on one line and exit with the given status.
static void die_status(int status, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));
static void die_status(int status, const char *fmt, ...) {
    va_list ap;
    if (die_hook) {
        char msg[8192];
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        die_hook(status, msg);
    }
    va_start(ap, fmt);
    fprintf(stderr, "error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(status);
}
#define die(...) die_status(EXIT_RUNTIME, __VA_ARGS__)

// ----------------------------------------------------------------------------
// checked I/O: every call names the file it was working on

static FILE *fopen_check_(const char *path, const char *mode, const char *src, int line) {
    FILE *f = fopen(path, mode);
    if (f == NULL) {
        die("cannot open %s (mode %s): %s [%s:%d]", path, mode, strerror(errno), src, line);
    }
    return f;
}
#define fopen_check(path, mode) fopen_check_(path, mode, __FILE__, __LINE__)

// fread_check reads exactly n items or dies, naming the file: a short read means a truncated file.
static void fread_check_(void *dst, size_t size, size_t n, FILE *f, const char *path, const char *src, int line) {
    size_t got = fread(dst, size, n, f);
    if (got != n) {
        die("%s is truncated or unreadable: wanted %zu items of %zu bytes, got %zu [%s:%d]", path, n, size, got,
            src, line);
    }
}
#define fread_check(dst, size, n, f, path) fread_check_(dst, size, n, f, path, __FILE__, __LINE__)

static void fwrite_check_(const void *src_buf, size_t size, size_t n, FILE *f, const char *path, const char *src,
                          int line) {
    if (fwrite(src_buf, size, n, f) != n) {
        die("cannot write %s: %s [%s:%d]", path, strerror(errno), src, line);
    }
}
#define fwrite_check(buf, size, n, f, path) fwrite_check_(buf, size, n, f, path, __FILE__, __LINE__)

static void fclose_check_(FILE *f, const char *path, const char *src, int line) {
    if (fclose(f) != 0) {
        die("cannot close %s: %s [%s:%d]", path, strerror(errno), src, line);
    }
}
#define fclose_check(f, path) fclose_check_(f, path, __FILE__, __LINE__)

static void *malloc_check_(size_t size, const char *src, int line) {
    void *p = malloc(size > 0 ? size : 1);
    if (p == NULL) {
        die("out of memory allocating %zu bytes [%s:%d]", size, src, line);
    }
    return p;
}
#define malloc_check(size) malloc_check_(size, __FILE__, __LINE__)

static void *calloc_check_(size_t n, size_t size, const char *src, int line) {
    void *p = calloc(n > 0 ? n : 1, size > 0 ? size : 1);
    if (p == NULL) {
        die("out of memory allocating %zu x %zu bytes [%s:%d]", n, size, src, line);
    }
    return p;
}
#define calloc_check(n, size) calloc_check_(n, size, __FILE__, __LINE__)

// Size of a file in bytes, or -1 if it cannot be read.
static long file_size(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) return -1;
    return (long)st.st_size;
}

// Make a directory and any missing parents (as mkdir -p), and check it is writable.
static void ensure_dir(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof(buf)) die("--out %s: path too long", path);
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) { // each parent in turn: a/b/c makes a, then a/b
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
            die("cannot create directory %s (for --out %s): %s", buf, path, strerror(errno));
        }
        *p = '/';
    }
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) die("--out %s exists and is not a directory", path);
    } else if (mkdir(path, 0755) != 0) {
        die("cannot create output directory %s: %s", path, strerror(errno));
    }
    if (access(path, W_OK) != 0) die("output directory %s is not writable", path);
}

// ----------------------------------------------------------------------------
// atomic file writing: write "<path>.tmp", flush it to disk, then rename over
// <path>. rename() is atomic on POSIX file systems, so a reader (or a resumed
// run after a crash) sees either the old complete file or the new complete one.

typedef struct {
    FILE *f;
    char path[4096];
    char tmp[4096 + 8];
} AtomicFile;

// The temporary file being written, if any: a run that dies before its rename (a full
// disk, a bad number found mid-write) removes it on the way out instead of leaving it.
static char atomic_pending[4096 + 8];
static void atomic_cleanup(void) {
    if (atomic_pending[0]) unlink(atomic_pending);
}

static void atomic_open(AtomicFile *af, const char *path) {
    if (strlen(path) + 5 > sizeof(af->path)) die("path too long: %s", path);
    snprintf(af->path, sizeof(af->path), "%s", path);
    snprintf(af->tmp, sizeof(af->tmp), "%s.tmp", path);
    static int registered = 0;
    if (!registered) atexit(atomic_cleanup), registered = 1;
    af->f = fopen_check(af->tmp, "wb");
    snprintf(atomic_pending, sizeof(atomic_pending), "%s", af->tmp);
}

static void atomic_commit(AtomicFile *af) {
    if (fflush(af->f) != 0 || fsync(fileno(af->f)) != 0) die("cannot flush %s: %s", af->tmp, strerror(errno));
    fclose_check(af->f, af->tmp);
    if (rename(af->tmp, af->path) != 0) die("cannot rename %s to %s: %s", af->tmp, af->path, strerror(errno));
    atomic_pending[0] = 0;
}

/*
 * Ask for the `bytes` at p in L1, a 64-byte line at a time: for a packing loop that reads a
 * transposed matrix in short runs per row over many rows, too many streams for the hardware
 * prefetcher to follow. The caller fetches the rows it will read next while it converts the
 * ones before them.
 */
static inline void prefetch_bytes(const void *p, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char *)p + off, 0, 3);
}

// ----------------------------------------------------------------------------
// time

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ----------------------------------------------------------------------------
// random numbers: xorshift64* for bits, Box-Muller for normals. The whole state
// is one uint64 so that a checkpoint can save and restore it exactly.

typedef struct {
    uint64_t s;
} Rng;

static void rng_seed(Rng *r, uint64_t seed) {
    // splitmix64 scrambles the seed so that seeds 0, 1, 2 give unrelated streams
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    r->s = z ? z : 0x2545F4914F6CDD1DULL;
}

static uint64_t rng_u64(Rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1DULL;
}

// uniform in [0, 1) with 53 random bits
static double rng_uniform(Rng *r) { return (double)(rng_u64(r) >> 11) * (1.0 / 9007199254740992.0); }

// standard normal; one call, one sample (the second Box-Muller value is dropped
// so that the state alone says where the stream is)
static double rng_normal(Rng *r) {
    double u1 = rng_uniform(r);
    double u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

#endif // RESCALE_UTILS_H
