/*
 * train_llama.c: train a LLaMA on the CPU, with Layer Index Rescaling (LIR) at
 * initialisation and Target Variance Rescaling (TVR) during training.
 *
 * This file is the project's specification: the CUDA version and the PyTorch
 * reference are checked against it number by number. It reads top to bottom:
 *
 *   1. numbers and the matmul (a cache-blocked GEMM; with --precision bf16 its
 *      inputs rounded to bf16 on AMX or AVX512-BF16, common/gemm_bf16.h)
 *   2. the layers, each a *_forward / *_backward pair of plain loops
 *   3. the model: one parameter buffer described by one table, activations,
 *      init (plain, LIR, residual), forward, backward, checkpoints
 *   4. the optimizer: schedule, gradient clipping, AdamW
 *   5. TVR and the weight/activation statistics
 *   6. training: logs, state.bin, validation, main
 *
 * The model (docs/methods.md, "The models"): token embedding; per block
 *   h = x + wo . Attn(RMSNorm(x) * attn_norm)        (RoPE, grouped-query heads)
 *   x = h + w2 . (SiLU(w1 . n) * (w3 . n)),  n = RMSNorm(h) * ffn_norm
 * then logits = lm_head . (RMSNorm(x) * final_norm), mean cross-entropy.
 *
 * Build: make train_llama   Run: ./train_llama --help
 */
#include <omp.h>

#include "llama_run.h" // LlamaConfig, model.bin's header, the command line
#ifndef REAL_DOUBLE
#include "gemm_bf16.h" // --precision bf16: the AMX and AVX512-BF16 matmul kernels
#endif
#include "train.h"     // settings, schedules, state.bin, logs
#include "utils.h"

// The scalar type of parameters, activations and gradients. Checkpoints are
// always fp32 on disk; the tests also build this file with -DREAL_DOUBLE so
// that a gradient check against finite differences can be tight.
#ifdef REAL_DOUBLE
typedef double real;
#define rsqrt_ sqrt
static inline double rexp(double x) { return exp(x); }
#else
typedef float real;
#define rsqrt_ sqrtf
/*
 * exp for floats written so that the compiler vectorises the loops that call
 * it (libm's expf is a function call per element, which it cannot; the softmax
 * over a 32000-word vocabulary spent a quarter of the step there).
 * exp(x) = 2^n * exp(r) with n = round(x/ln2) and |r| <= ln2/2; exp(r) by its
 * Taylor series to degree 7 (truncation error < 1e-8, below float's 6e-8
 * rounding); 2^n is built directly in the exponent bits. Inputs are clamped to
 * [-87, 88] so 2^n stays a normal float: exp(-87) = 1.6e-38 stands in for
 * anything smaller, which is 0 for every use here (softmax and sigmoid terms).
 */
static inline float rexp(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float xn = x == x ? x : 0.0f; // a NaN x makes n 0 (no undefined int conversion) and r, so the result, NaN
    float n = (xn * 1.44269504f + 12582912.0f) - 12582912.0f; // round to nearest via 1.5*2^23
    float r = x - n * 0.693145751953125f;                    // ln2 split in two: the high part
    r = r - n * 1.42860677e-6f;                              // times n is exact
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720 +
                                                                                             r * (1.0f / 5040)))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}
#endif

// ============================================================================
// 1. numbers and the matmul
// ============================================================================

// y += alpha * x
static inline void axpy(real *restrict y, real alpha, const real *restrict x, int n) {
    for (int i = 0; i < n; i++) y[i] += alpha * x[i];
}

/*
 * The reductions of the layers work in sixteen lanes, lane u taking elements u, u+16, u+32, ...
 * (a fixed order, whatever the thread count). gcc keeps such lanes as sixteen scalars where
 * they are inlined: a maxss per logit in the classifier's row maximum, a cvtss2sd and an
 * addsd per element in its double sum of exps (2.5x the cost of the exps themselves). With
 * AVX-512 the lanes live in zmm registers instead; the lanes and their order are the same,
 * so are the results.
 */
#if !defined(REAL_DOUBLE) && defined(__AVX512F__)
#define LANES_ZMM 1
// lanes 0-7 and 8-15 of 16 floats as doubles
static inline __m512d widen_lo(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline __m512d widen_hi(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
#endif

// max of a row, over 16 independent lanes: without -ffast-math a compiler may not
// reorder a floating-point reduction, so a plain loop runs one compare at a time;
// sixteen explicit lanes are one AVX-512 register, combined in a fixed order
static real row_max(const real *x, int n) {
    real mx[16];
    int j = 0;
#ifdef LANES_ZMM // vmaxps(x, m) is x > m ? x : m per lane, the plain loop's rule
    __m512 mv = _mm512_set1_ps(-INFINITY);
    for (; j + 16 <= n; j += 16) mv = _mm512_max_ps(_mm512_loadu_ps(x + j), mv);
    _mm512_storeu_ps(mx, mv);
#else
    for (int u = 0; u < 16; u++) mx[u] = -INFINITY;
    for (; j + 16 <= n; j += 16) {
        for (int u = 0; u < 16; u++) mx[u] = x[j + u] > mx[u] ? x[j + u] : mx[u];
    }
#endif
    real m = -INFINITY;
    for (int u = 0; u < 16; u++) m = mx[u] > m ? mx[u] : m;
    for (; j < n; j++) m = x[j] > m ? x[j] : m;
    return m;
}

// sum of exp(x - shift) in double, over 16 lanes. The exps are computed into
// a block first: a loop that mixes the float exp with the double sum is one
// gcc will not vectorise; this one it does.
static double row_sum_exp(const real *x, int n, real shift) {
    double sm[16] = {0};
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        real e[16];
        for (int u = 0; u < 16; u++) e[u] = rexp(x[j + u] - shift);
        for (int u = 0; u < 16; u++) sm[u] += e[u];
    }
    double sum = 0;
    for (int u = 0; u < 16; u++) sum += sm[u];
    for (; j < n; j++) sum += rexp(x[j] - shift);
    return sum;
}

// x[i] = exp(x[i] - shift) in place; returns their sum in double, over 16 lanes
static double exp_in_place_sum(real *x, int n, real shift) {
    double sm[16] = {0};
    int j = 0;
#ifdef LANES_ZMM
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (; j + 16 <= n; j += 16) {
        for (int u = 0; u < 16; u++) x[j + u] = rexp(x[j + u] - shift);
        __m512 e = _mm512_loadu_ps(x + j);
        lo = _mm512_add_pd(lo, widen_lo(e));
        hi = _mm512_add_pd(hi, widen_hi(e));
    }
    _mm512_storeu_pd(sm, lo);
    _mm512_storeu_pd(sm + 8, hi);
#else
    for (; j + 16 <= n; j += 16) {
        for (int u = 0; u < 16; u++) x[j + u] = rexp(x[j + u] - shift);
        for (int u = 0; u < 16; u++) sm[u] += x[j + u];
    }
#endif
    double sum = 0;
    for (int u = 0; u < 16; u++) sum += sm[u];
    for (; j < n; j++) sum += x[j] = rexp(x[j] - shift);
    return sum;
}

// sum of x[i] * y[i] in double, over 16 lanes
static double dot_lanes(const real *x, const real *y, int n) {
    double sm[16] = {0};
    int j = 0;
#ifdef LANES_ZMM
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (; j + 16 <= n; j += 16) {
        __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(y + j);
        lo = _mm512_fmadd_pd(widen_lo(a), widen_lo(b), lo);
        hi = _mm512_fmadd_pd(widen_hi(a), widen_hi(b), hi);
    }
    _mm512_storeu_pd(sm, lo);
    _mm512_storeu_pd(sm + 8, hi);
#else
    for (; j + 16 <= n; j += 16) {
        for (int u = 0; u < 16; u++) sm[u] += (double)x[j + u] * y[j + u];
    }
#endif
    double sum = 0;
    for (int u = 0; u < 16; u++) sum += sm[u];
    for (; j < n; j++) sum += (double)x[j] * y[j];
    return sum;
}

// sum of x[i] * y[i] * z[i] in double (the product taken in double), over 16 lanes
static double dot3_lanes(const real *x, const real *y, const real *z, int n) {
    double sm[16] = {0};
    int j = 0;
#ifdef LANES_ZMM
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (; j + 16 <= n; j += 16) {
        __m512 a = _mm512_loadu_ps(x + j), b = _mm512_loadu_ps(y + j), c = _mm512_loadu_ps(z + j);
        lo = _mm512_fmadd_pd(_mm512_mul_pd(widen_lo(a), widen_lo(b)), widen_lo(c), lo);
        hi = _mm512_fmadd_pd(_mm512_mul_pd(widen_hi(a), widen_hi(b)), widen_hi(c), hi);
    }
    _mm512_storeu_pd(sm, lo);
    _mm512_storeu_pd(sm + 8, hi);
#else
    for (; j + 16 <= n; j += 16) {
        for (int u = 0; u < 16; u++) sm[u] += (double)x[j + u] * y[j + u] * z[j + u];
    }
#endif
    double sum = 0;
    for (int u = 0; u < 16; u++) sum += sm[u];
    for (; j < n; j++) sum += (double)x[j] * y[j] * z[j];
    return sum;
}

/*
 * gemm: C[m][n] = (C[m][n] if accumulate) + sum_k A(m,k) * B(k,n)
 * with A(m,k) = A[m*a_rs + k*a_cs] and B(k,n) = B[k*b_rs + n*b_cs], so one
 * routine serves out = in.W^T, dIn = dOut.W and dW = dOut^T.in by strides.
 *
 * The classic blocking (as in BLIS/GotoBLAS): B is copied ("packed") kc rows x
 * NC columns at a time into nr-wide strips, A into mr-tall strips, so that the
 * innermost kernel streams both from cache in the order it reads them. The
 * micro-kernel keeps an mr x nr tile of C in registers and does mr*nr
 * multiply-adds per k. Threads split the rows of C; every element of C is
 * summed over k in the same order whatever the thread count, so results do not
 * depend on --threads.
 *
 * What is packed, and how the tile is multiplied, is a GemmKernel: the fp32 one
 * below (8 x 32 floats = 16 AVX-512 registers), or with --precision bf16 one of
 * common/gemm_bf16.h's, which round A and B to bf16 as they pack them and sum
 * the products in fp32 (AMX tiles, AVX512-BF16, or this fp32 kernel on rounded
 * inputs where the CPU has neither).
 */
typedef struct {
    const char *name;
    int mr, nr;    // the register tile of C
    int kc;        // depth of one packed block of k
    int k_align;   // k is zero-padded to a multiple of this
    int elem;      // bytes per packed element
    // pack A's w (<= MC_MAX) rows into ceil(w/mr) strips, one after the other, and a strip
    // of w (<= nr) columns of B; kc deep, padded to kc_pad
    void (*pack_a)(void *dst, const real *src, long s_m, long s_k, int w, int kc, int kc_pad);
    void (*pack_b)(void *dst, const real *src, long s_n, long s_k, int w, int kc, int kc_pad);
    // C (mr x nr corner of the tile) = or += packed A strip . packed B strip
    void (*kernel)(int kc_pad, const void *a, const void *b, real *c, long ldc, int mr, int nr, int add);
    void (*begin)(void); // once per thread, before its first kernel (AMX's tile configuration), or NULL
} GemmKernel;

#define MR 8
#define NR (128 / (int)sizeof(real)) // 32 floats or 16 doubles: two 512-bit registers per row
#define KC 256
#define MC_MAX 128
#define NC 2048
#define GEMM_BPACK_BYTES (KC * NC * (long)sizeof(real)) // 2 MB: fp32's KC x NC, or bf16's 2*KC x NC
#define GEMM_APACK_BYTES (MC_MAX * KC * (long)sizeof(real))

static char *gemm_bpack = NULL;   // one block of B, shared by the threads
static char **gemm_apack = NULL;  // one block of A's rows per thread
static char **gemm_bpack_t = NULL; // one block of B per thread, for a serial gemm_causal

static void gemm_buffers(void) {
    if (gemm_bpack) return;
    int nt = omp_get_max_threads();
    gemm_bpack = (char *)aligned_alloc(64, GEMM_BPACK_BYTES);
    gemm_apack = (char **)malloc_check(sizeof(char *) * nt);
    gemm_bpack_t = (char **)malloc_check(sizeof(char *) * nt);
    if (!gemm_bpack) die("out of memory for matmul buffers");
    for (int t = 0; t < nt; t++) {
        gemm_apack[t] = (char *)aligned_alloc(64, GEMM_APACK_BYTES);
        gemm_bpack_t[t] = (char *)aligned_alloc(64, GEMM_BPACK_BYTES);
        if (!gemm_apack[t] || !gemm_bpack_t[t]) die("out of memory for matmul buffers");
    }
}

static inline void micro_kernel(int kc, const real *restrict a, const real *restrict b, real *restrict c, long ldc,
                                int mr, int nr, int add) {
    real acc[MR][NR];
    for (int i = 0; i < MR; i++) {
        for (int j = 0; j < NR; j++) acc[i][j] = 0;
    }
    for (int k = 0; k < kc; k++) {
        const real *ak = a + k * MR;
        const real *bk = b + k * NR;
        for (int i = 0; i < MR; i++) {
            for (int j = 0; j < NR; j++) acc[i][j] += ak[i] * bk[j];
        }
    }
    for (int i = 0; i < mr; i++) {
        real *ci = c + i * ldc;
        if (add) {
            for (int j = 0; j < nr; j++) ci[j] += acc[i][j];
        } else {
            for (int j = 0; j < nr; j++) ci[j] = acc[i][j];
        }
    }
}

#ifdef REAL_DOUBLE
#define BF16_ROUNDED(x) (x) // (no bf16 in the double build)
#else
#define BF16_ROUNDED(x) bf16_rounded(x)
#endif

// Copy a strip of `w` (<= width) rows or columns, kc deep, into dst laid out
// k-major: dst[k*width + i] = src[i*s_i + k*s_k], zero-padded to width. The
// loop order follows whichever stride is 1, so the reads are contiguous.
// With `round`, each value is rounded to bf16 (the ref kernel).
static inline void pack_strip(real *restrict dst, int width, const real *restrict src, long s_i, long s_k, int w,
                              int kc, int round) {
#define PACK_VALUE(x) (round ? BF16_ROUNDED(x) : (x))
    if (s_i == 1) {
        for (int k = 0; k < kc; k++) {
            int i = 0;
#ifndef REAL_DOUBLE
            if (round) {
                for (; i + 16 <= w; i += 16) round16(dst + k * width + i, src + k * s_k + i);
            }
#endif
            for (; i < w; i++) dst[k * width + i] = PACK_VALUE(src[k * s_k + i]);
            for (int i = w; i < width; i++) dst[k * width + i] = 0;
        }
    } else {
        // rows 0 .. done-1 are packed for k < k0 by the register transposes, the rest below
        int k0 = 0, done = 0;
#ifndef REAL_DOUBLE
        if (s_k == 1 && width == 8 && w == 8) {
            // a full 8-row strip of A with consecutive k (activations, the logits' gradient):
            // 16 k at a time through a register transpose, not element by element
            done = 8, k0 = kc / 16 * 16;
            for (int k = 0; k < k0; k += 16) pack8x16(dst + k * 8, src + k, s_i, round);
        } else if (s_k == 1 && width % 16 == 0) {
            // B's columns with consecutive k (a weight W, read as W^T): 16 columns x 16 k at a time
            done = w / 16 * 16, k0 = kc / 16 * 16;
            for (int i = 0; i < done; i += 16) {
                for (int k = 0; k < k0; k += 16) pack16x16(dst + k * width + i, width, src + i * s_i + k, s_i, round);
            }
        }
#endif
        for (int i = 0; i < w; i++) {
            for (int k = i < done ? k0 : 0; k < kc; k++) dst[k * width + i] = PACK_VALUE(src[i * s_i + k * s_k]);
        }
        for (int i = w; i < width; i++) {
            for (int k = 0; k < kc; k++) dst[k * width + i] = 0;
        }
    }
#undef PACK_VALUE
}

// A's block of w rows as MR-tall strips. When A is stored transposed (s_m == 1: the
// dW products, whose A is a gradient read down its columns), each k's w values are
// one run in memory: read k by k for the whole block, not strip by strip, which would
// touch every row of k once per strip.
static void pack_a_block(real *restrict dst, const real *restrict src, long s_m, long s_k, int w, int kc,
                         int round) {
    int strips = (w + MR - 1) / MR;
    if (s_m == 1 && w == strips * MR) {
        for (int k = 0; k < kc; k++) {
            const real *sk = src + k * s_k;
            if (k + 16 < kc) prefetch_bytes(sk + 16 * s_k, sizeof(real) * w); // 16 rows ahead
            for (int j = 0; j < strips; j++) {
                real *d = dst + (long)j * kc * MR + k * MR;
                for (int i = 0; i < MR; i++) d[i] = round ? BF16_ROUNDED(sk[j * MR + i]) : sk[j * MR + i];
            }
        }
        return;
    }
    for (int j = 0; j < strips; j++) {
        int wj = w - j * MR < MR ? w - j * MR : MR;
        pack_strip(dst + (long)j * kc * MR, MR, src + (long)j * MR * s_m, s_m, s_k, wj, kc, round);
    }
}

static void fp32_pack_a(void *dst, const real *src, long s_m, long s_k, int w, int kc, int kc_pad) {
    (void)kc_pad;
    pack_a_block((real *)dst, src, s_m, s_k, w, kc, 0);
}
static void fp32_pack_b(void *dst, const real *src, long s_n, long s_k, int w, int kc, int kc_pad) {
    (void)kc_pad;
    pack_strip((real *)dst, NR, src, s_n, s_k, w, kc, 0);
}
static void fp32_kernel(int kc, const void *a, const void *b, real *c, long ldc, int mr, int nr, int add) {
    micro_kernel(kc, (const real *)a, (const real *)b, c, ldc, mr, nr, add);
}
static const GemmKernel FP32_KERNEL = {"fp32", MR, NR, KC, 1, sizeof(real), fp32_pack_a, fp32_pack_b, fp32_kernel,
                                       NULL};

#ifndef REAL_DOUBLE
static void ref_pack_a(void *dst, const real *src, long s_m, long s_k, int w, int kc, int kc_pad) {
    (void)kc_pad;
    pack_a_block((real *)dst, src, s_m, s_k, w, kc, 1);
}
static void ref_pack_b(void *dst, const real *src, long s_n, long s_k, int w, int kc, int kc_pad) {
    (void)kc_pad;
    pack_strip((real *)dst, NR, src, s_n, s_k, w, kc, 1);
}
// indexed by Bf16Kernel (common/gemm_bf16.h)
static const GemmKernel BF16_KERNELS[] = {
    [BF16_REF] = {"bf16 (ref: fp32 kernel on rounded inputs)", MR, NR, KC, 1, sizeof(real), ref_pack_a, ref_pack_b,
                  fp32_kernel, NULL},
    [BF16_AVX512] = {"bf16 (AVX512-BF16)", 8, 32, 2 * KC, 2, 2, avx512_pack_a, bf16_pack_b, avx512bf16_kernel, NULL},
    [BF16_AMX] = {"bf16 (AMX)", 32, 32, 2 * KC, BF16_KB, 2, amx_pack_a, bf16_pack_b, amx_kernel, amx_begin},
};
#endif

static const GemmKernel *gemm_kernel = &FP32_KERNEL; // --precision bf16 switches it (set_precision)

// --precision: fp32 (the default), or bf16 matmul inputs on the fastest kernel this CPU has
static void set_precision(const char *precision) {
    if (!strcmp(precision, "fp32")) {
        gemm_kernel = &FP32_KERNEL;
        return;
    }
#ifndef REAL_DOUBLE
    if (!strcmp(precision, "bf16")) {
        gemm_kernel = &BF16_KERNELS[bf16_pick()];
        return;
    }
#endif
    usage_error("--precision %s: this build has fp32 only", precision);
}

/*
 * The zeros of causal attention's products, which the blocked loop may skip. Row i of C is
 * the sequence's position i + diag (diag > 0 for llama_decode's last rows):
 *   C_LOWER  only C(i, j) with j <= i + diag is wanted (S = Q.K^T, dP = dO.V^T); the tiles
 *            wholly above the diagonal are not computed, and the caller never reads them
 *   A_LOWER  A(i, k) = 0 for k > i + diag (P.V, dS.K): a strip of rows sums k up to its
 *            last row's diagonal
 *   A_UPPER  A(i, k) = 0 for k < i + diag (P^T.dO, dS^T.Q): a strip sums k from its first
 *            row's diagonal
 * Only exact zeros are left out, at the ends of a strip's sums, so C is what the dense
 * product computes (the kernels add k in order).
 */
typedef enum { DENSE, C_LOWER, A_LOWER, A_UPPER } Causal;

// The part [*lo, *hi) of a block of k (pc .. pc+kc, padded to kc_pad) that rows r0 .. r1-1
// of an A_LOWER or A_UPPER product must sum over, widened to the kernel's k_align (what
// lies between is zeros too); 0 when they have nothing to sum.
static int causal_k(Causal cz, int diag, int r0, int r1, int pc, int kc, int align, int kc_pad, int *lo, int *hi) {
    int l = 0, h = kc;
    if (cz == A_LOWER && r1 + diag - pc < h) h = r1 + diag - pc;
    if (cz == A_UPPER && r0 + diag - pc > l) l = r0 + diag - pc;
    if (l >= h) return 0;
    *lo = l / align * align;
    *hi = (h + align - 1) / align * align;
    if (*hi > kc_pad) *hi = kc_pad;
    return 1;
}

// One product's operands and blocking, as gemm_causal's loops pass them around.
typedef struct {
    int M, N, K;
    const real *A, *B;
    long a_rs, a_cs, b_rs, b_cs;
    real *C;
    long ldc;
    int accumulate;
    Causal cz;
    int diag;
} GemmJob;

// Pack B(pc:pc+kc, jc:jc+nc) into nr-wide strips, zero-padded: panels p0 .. p1-1 of them.
static void gemm_pack_b(const GemmJob *g, const GemmKernel *kn, char *bpack, int jc, int pc, int kc, int kc_pad,
                        int p0, int p1) {
    for (int p = p0; p < p1; p++) {
        int j0 = jc + p * kn->nr;
        int nr = g->N - j0 < kn->nr ? g->N - j0 : kn->nr;
        kn->pack_b(bpack + (long)p * kc_pad * kn->nr * kn->elem, g->B + (long)pc * g->b_rs + (long)j0 * g->b_cs,
                   g->b_cs, g->b_rs, nr, kc, kc_pad);
    }
}

// One block of mc rows of C (from row i0) against the packed B of (jc, pc): pack the
// block's rows of A into mr-tall strips and run the micro-kernel over them.
static void gemm_block(const GemmJob *g, const GemmKernel *kn, const char *bpack, char *apack, int i0, int mcb,
                       int jc, int nc, int pc, int kc, int kc_pad) {
    int mr_ = kn->mr, nr_ = kn->nr, elem = kn->elem, N = g->N, diag = g->diag;
    Causal cz = g->cz;
    int npanels = (nc + nr_ - 1) / nr_, add = g->accumulate || pc > 0;
    // the block's rows of A from k = pc + alo, apad deep (all of it unless causal)
    int alo = 0, ahi = kc_pad, a_any = 1;
    if (cz == A_LOWER || cz == A_UPPER) a_any = causal_k(cz, diag, i0, i0 + mcb, pc, kc, kn->k_align, kc_pad, &alo, &ahi);
    int akc = (ahi < kc ? ahi : kc) - alo, apad = ahi - alo;
    if (a_any) kn->pack_a(apack, g->A + (long)i0 * g->a_rs + (long)(pc + alo) * g->a_cs, g->a_rs, g->a_cs, mcb, akc, apad);
    for (int p = 0; p < npanels; p++) {
        int j0 = jc + p * nr_;
        int nr = N - j0 < nr_ ? N - j0 : nr_;
        for (int ir = 0; ir < mcb; ir += mr_) {
            int mr = mcb - ir < mr_ ? mcb - ir : mr_, lo = alo, hi = ahi;
            real *c = g->C + (long)(i0 + ir) * g->ldc + j0;
            if (cz == C_LOWER && j0 > i0 + ir + mr - 1 + diag) continue; // above the diagonal
            if ((cz == A_LOWER || cz == A_UPPER) &&
                !(a_any && causal_k(cz, diag, i0 + ir, i0 + ir + mr, pc, kc, kn->k_align, kc_pad, &lo, &hi))) {
                if (!add) { // nothing but zeros to sum: C = 0
                    for (int i = 0; i < mr; i++) memset(c + i * g->ldc, 0, sizeof(real) * nr);
                }
                continue;
            }
            // packed strips are k-major: k of a strip is k * (its width) elements in
            kn->kernel(hi - lo, apack + ((long)ir * apad + (long)(lo - alo) * mr_) * elem,
                       bpack + ((long)p * kc_pad + lo) * nr_ * elem, c, g->ldc, mr, nr, add);
        }
    }
}

// Rows m0 .. m1-1 of C, the whole product, on the calling thread alone with its own
// packing buffers (blocks of MC_MAX rows): no other thread waits on it, nor it on them.
static void gemm_rows(const GemmJob *g, const GemmKernel *kn, int m0, int m1, char *bpack, char *apack) {
    if (m0 >= m1) return;
    if (kn->begin) kn->begin();
    for (int jc = 0; jc < g->N; jc += NC) {
        int nc = g->N - jc < NC ? g->N - jc : NC;
        for (int pc = 0; pc < g->K; pc += kn->kc) {
            int kc = g->K - pc < kn->kc ? g->K - pc : kn->kc;
            int kc_pad = (kc + kn->k_align - 1) / kn->k_align * kn->k_align;
            gemm_pack_b(g, kn, bpack, jc, pc, kc, kc_pad, 0, (nc + kn->nr - 1) / kn->nr);
            for (int i0 = m0; i0 < m1; i0 += MC_MAX)
                gemm_block(g, kn, bpack, apack, i0, m1 - i0 < MC_MAX ? m1 - i0 : MC_MAX, jc, nc, pc, kc, kc_pad);
        }
    }
}

// Rows of C per thread at which each thread packs all of B for itself (GEMM_OWN_B_ROWS):
// the packing is then done once per thread instead of once, but the threads never meet
// between C's blocks of k and columns. With passive OpenMP waiting, each meeting is a sleep
// and a wake-up; lm_head's dX on the tiny model (k = 32000 deep, 125 blocks of k) spent
// more time meeting than multiplying. Below it (a decode step's one row, small weights'
// dW), the threads share one packed B and meet twice per block of k and columns.
#define GEMM_OWN_B_ROWS 32

/*
 * serial: the caller is one thread of a parallel loop (attention's heads), so this
 * product runs on that thread alone, with that thread's buffers.
 * Every element of C is summed over k in the same order in every path, so C does not
 * depend on the thread count or on which path ran.
 */
static void gemm_causal(int M, int N, int K, const real *A, long a_rs, long a_cs, const real *B, long b_rs,
                        long b_cs, real *C, long ldc, int accumulate, int serial, Causal cz, int diag) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate) {
            for (int m = 0; m < M; m++) memset(C + m * ldc, 0, sizeof(real) * N);
        }
        return;
    }
    if (!serial) gemm_buffers(); // (a serial caller made them before its parallel loop)
    const GemmKernel *kn = gemm_kernel;
    GemmJob g = {M, N, K, A, B, a_rs, a_cs, b_rs, b_cs, C, ldc, accumulate, cz, diag};
    if (serial) {
        int t = omp_get_thread_num();
        gemm_rows(&g, kn, 0, M, gemm_bpack_t[t], gemm_apack[t]);
        return;
    }
    int nt = omp_get_max_threads();
    if (M >= nt * GEMM_OWN_B_ROWS) {
        // each thread an equal share of C's rows (in whole strips of mr), the whole product
#pragma omp parallel
        {
            int t = omp_get_thread_num(), n = omp_get_num_threads();
            long strips = (M + kn->mr - 1) / kn->mr;
            int m0 = (int)(strips * t / n * kn->mr), m1 = (int)(strips * (t + 1) / n * kn->mr);
            gemm_rows(&g, kn, m0, m1 < M ? m1 : M, gemm_bpack_t[t], gemm_apack[t]);
        }
        return;
    }
    // one packed B for all threads; rows of C per block: enough blocks for every thread
    int mc = (M + nt - 1) / nt;
    mc = (mc + kn->mr - 1) / kn->mr * kn->mr;
    if (mc > MC_MAX) mc = MC_MAX;
    int nblocks = (M + mc - 1) / mc;
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        int npanels = (nc + kn->nr - 1) / kn->nr;
        for (int pc = 0; pc < K; pc += kn->kc) {
            int kc = K - pc < kn->kc ? K - pc : kn->kc;
            int kc_pad = (kc + kn->k_align - 1) / kn->k_align * kn->k_align;
#pragma omp parallel
            {
                if (kn->begin) kn->begin();
                int t = omp_get_thread_num(), n = omp_get_num_threads();
                gemm_pack_b(&g, kn, gemm_bpack, jc, pc, kc, kc_pad, npanels * t / n, npanels * (t + 1) / n);
#pragma omp barrier
#pragma omp for schedule(static)
                for (int blk = 0; blk < nblocks; blk++)
                    gemm_block(&g, kn, gemm_bpack, gemm_apack[t], blk * mc, M - blk * mc < mc ? M - blk * mc : mc, jc,
                               nc, pc, kc, kc_pad);
            }
        }
    }
}

static void gemm(int M, int N, int K, const real *A, long a_rs, long a_cs, const real *B, long b_rs, long b_cs,
                 real *C, long ldc, int accumulate) {
    gemm_causal(M, N, K, A, a_rs, a_cs, B, b_rs, b_cs, C, ldc, accumulate, 0, DENSE, 0);
}

// ============================================================================
// 2. the layers
// ============================================================================
// N = B*T rows; every *_backward adds into parameter gradients (+=).

/*
 * Fake quantization, for evaluation only (--eval-only 1 --quant; docs/methods.md,
 * "Quantized evaluation"): symmetric integers of `bits` bits, rounded to nearest (ties to
 * even), and dequantized at once, so that the matmuls run in fp32 on the values an integer
 * kernel would multiply:
 *     x' = s * clamp(round(x / s), -qmax, qmax),   s = max|x| / qmax,   qmax = 2^(bits-1) - 1
 * with one scale s per group of values: a weight row (an output channel) or `group` of its
 * inputs; a matmul's whole input (per tensor) or one row of it (per token). The
 * activations' scales are dynamic: each from the batch being multiplied, no calibration.
 * What is quantized: the inputs and weights of every matmul with a weight, the 7 linears
 * of every block and lm_head; not the token embedding (a lookup), the norm gains, or
 * attention's Q.K^T and P.V products (they have no weights).
 */
typedef struct {
    const char *name;  // --quant's value (QUANT_CHOICES, common/train.h)
    int wbits, wgroup; // weights: bits (0 = kept in fp32); inputs per scale (0 = the whole row)
    int abits;         // matmul inputs: bits (0 = kept)
    int per_token;     // 1: one scale per row of the input, 0: one per matrix
} QuantSetting;
static const QuantSetting QUANT_SETTINGS[] = {
    {"none", 0, 0, 0, 0},   {"w8a8", 8, 0, 8, 0},     {"w8a8-token", 8, 0, 8, 1}, {"w8", 8, 0, 0, 0},
    {"w4g128", 4, 128, 0, 0}, {"a8", 0, 0, 8, 0},     {"a8-token", 0, 0, 8, 1},   {"a4", 0, 0, 4, 0},
    {"a4-token", 0, 0, 4, 1}, {"w16a16", 16, 0, 16, 0}, // w16a16: a check (quantization's rounding only)
};
#define NUM_QUANT_SETTINGS (int)(sizeof(QUANT_SETTINGS) / sizeof(QUANT_SETTINGS[0]))
static QuantSetting quant = {"none", 0, 0, 0, 0}; // what matmul_forward does to its input

static const QuantSetting *quant_setting(const char *name) {
    for (int i = 0; i < NUM_QUANT_SETTINGS; i++) {
        if (!strcmp(QUANT_SETTINGS[i].name, name)) return &QUANT_SETTINGS[i];
    }
    usage_error("--quant must be one of %s, got '%s'", QUANT_CHOICES, name);
    return NULL;
}

static double max_abs(const real *x, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) m = fabs((double)x[i]) > m ? fabs((double)x[i]) : m;
    return m;
}

// out[0..n) = x[0..n) on the grid of step `scale` (out may be x); scale 0: all zeros
static void quant_apply(real *out, const real *x, long n, double scale, int bits) {
    double qmax = (double)((1 << (bits - 1)) - 1);
    for (long i = 0; i < n; i++) {
        double q = scale > 0 ? nearbyint((double)x[i] / scale) : 0;
        out[i] = (real)(fmin(fmax(q, -qmax), qmax) * scale);
    }
}

// one group, its own scale: max|x| / qmax
static void quant_group(real *out, const real *x, long n, int bits) {
    quant_apply(out, x, n, max_abs(x, n) / ((1 << (bits - 1)) - 1), bits);
}

// a (rows, cols) weight matrix in place: each row's inputs in groups of `group` (0 or more
// than cols: the whole row; the last group of a row may be shorter)
static void quant_matrix(real *w, int rows, int cols, int bits, int group) {
    int g = group > 0 && group < cols ? group : cols;
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        for (int c0 = 0; c0 < cols; c0 += g) {
            quant_group(w + (long)r * cols + c0, w + (long)r * cols + c0, cols - c0 < g ? cols - c0 : g, bits);
        }
    }
}

// matmul_forward's input, quantized into a buffer of its own (the input itself is kept:
// wq, wk and wv read the same one, and the backward never runs in evaluation)
static real *quant_buf = NULL;
static long quant_buf_n = 0;
static const real *quant_input(const real *x, int N, int C, int bits, int per_token) {
    long n = (long)N * C;
    if (n > quant_buf_n) {
        free(quant_buf);
        quant_buf = (real *)malloc_check(sizeof(real) * n);
        quant_buf_n = n;
    }
    if (per_token) {
#pragma omp parallel for
        for (int i = 0; i < N; i++) quant_group(quant_buf + (long)i * C, x + (long)i * C, C, bits);
        return quant_buf;
    }
    double mx = 0; // the rows' maxima in parallel, their max serially (max is order-free anyway)
#pragma omp parallel for reduction(max : mx)
    for (int i = 0; i < N; i++) {
        double m = max_abs(x + (long)i * C, C);
        mx = m > mx ? m : mx;
    }
    double scale = mx / ((1 << (bits - 1)) - 1);
#pragma omp parallel for
    for (int i = 0; i < N; i++) quant_apply(quant_buf + (long)i * C, x + (long)i * C, C, scale, bits);
    return quant_buf;
}

// out (N, C) = inp (N, Cin) . W^T, W (Cout, Cin) as nn.Linear stores it
static void matmul_forward(real *out, const real *inp, const real *W, int N, int Cin, int Cout) {
    if (quant.abits) inp = quant_input(inp, N, Cin, quant.abits, quant.per_token);
    gemm(N, Cout, Cin, inp, Cin, 1, W, 1, Cin, out, Cout, 0);
}

// dW += dout^T . inp;  dinp = dout . W (or += when accumulate_dinp)
static void matmul_backward(real *dinp, real *dW, const real *dout, const real *inp, const real *W, int N, int Cin,
                            int Cout, int accumulate_dinp) {
    gemm(Cout, Cin, N, dout, 1, Cout, inp, Cin, 1, dW, Cin, 1);
    gemm(N, Cin, Cout, dout, Cout, 1, W, Cin, 1, dinp, Cin, accumulate_dinp);
}

static void encoder_forward(real *out, const int *tokens, const real *emb, int N, int C) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) memcpy(out + (long)i * C, emb + (long)tokens[i] * C, sizeof(real) * C);
}

// serial on purpose: two positions with the same token add into the same row
static void encoder_backward(real *demb, const real *dout, const int *tokens, int N, int C) {
    for (int i = 0; i < N; i++) axpy(demb + (long)tokens[i] * C, 1, dout + (long)i * C, C);
}

// out = x / sqrt(mean(x^2) + eps) * gain; rstd keeps 1/sqrt(...) for backward
static void rmsnorm_forward(real *out, real *rstd, const real *inp, const real *gain, int N, int C, float eps) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const real *x = inp + (long)i * C;
        double ss = dot_lanes(x, x, C);
        real r = (real)(1.0 / sqrt(ss / C + eps));
        real *o = out + (long)i * C;
        for (int c = 0; c < C; c++) o[c] = x[c] * r * gain[c];
        rstd[i] = r;
    }
}

// With xhat = x*r: dx = r*(g*dy) - x * r^3/C * sum(g*dy*x), dgain += dy*xhat.
// dinp is accumulated (+=): it is the residual stream's gradient.
static void rmsnorm_backward(real *dinp, real *dgain, const real *dout, const real *inp, const real *gain,
                             const real *rstd, int N, int C) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const real *x = inp + (long)i * C;
        const real *dy = dout + (long)i * C;
        real r = rstd[i];
        double s = dot3_lanes(gain, dy, x, C);
        real k = (real)(s * r * r * r / C);
        real *dx = dinp + (long)i * C;
        for (int c = 0; c < C; c++) dx[c] += r * gain[c] * dy[c] - k * x[c];
    }
    // the gain's gradient sums over all rows; done serially so it is deterministic
    for (int i = 0; i < N; i++) {
        const real *x = inp + (long)i * C;
        const real *dy = dout + (long)i * C;
        real r = rstd[i];
        for (int c = 0; c < C; c++) dgain[c] += dy[c] * x[c] * r;
    }
}

/*
 * RoPE, llama2.c's convention: within each head, the pair (2i, 2i+1) at position
 * t is rotated by the angle t * theta^(-2i/hs). cos_t/sin_t are (T, hs/2) tables.
 * x is (B, T, nheads, hs). The backward is the rotation by the opposite angle
 * (a rotation's inverse is its transpose).
 */
static void rope_rotate(real *x, const real *cos_t, const real *sin_t, int B, int T, int nheads, int hs, int sign) {
    int half = hs / 2;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int t = 0; t < T; t++) {
            const real *cs = cos_t + (long)t * half;
            const real *sn = sin_t + (long)t * half;
            for (int h = 0; h < nheads; h++) {
                real *v = x + (((long)b * T + t) * nheads + h) * hs;
                for (int i = 0; i < half; i++) {
                    real c = cs[i], s = sign * sn[i];
                    real v0 = v[2 * i], v1 = v[2 * i + 1];
                    v[2 * i] = v0 * c - v1 * s;
                    v[2 * i + 1] = v0 * s + v1 * c;
                }
            }
        }
    }
}
static void rope_forward(real *x, const real *cos_t, const real *sin_t, int B, int T, int nh, int hs) {
    rope_rotate(x, cos_t, sin_t, B, T, nh, hs, +1);
}
static void rope_backward(real *dx, const real *cos_t, const real *sin_t, int B, int T, int nh, int hs) {
    rope_rotate(dx, cos_t, sin_t, B, T, nh, hs, -1);
}

/*
 * Causal self-attention with grouped-query heads: q (B,T,NH,hs), k and v
 * (B,T,NKV,hs); query head h reads kv head h / (NH/NKV). att (B,NH,T,T) keeps
 * the softmax probabilities for the backward (0 above the diagonal); out is
 * (B,T,NH,hs). Each head's products are matmuls on the gemm above (so with
 * --precision bf16 their inputs are bf16 too), one head per thread at a time:
 *   S = Q.K^T (T x T; the tiles above the diagonal are not computed), P = softmax,
 *   O = P.V  (each strip of rows sums only up to its diagonal: gemm_causal).
 */
// Row t of the softmax in place: a[0..t] = softmax(a[0..t] * scale), a[t+1..n) = 0.
// The batch forward's rows and llama_decode's one position both go through it.
static void softmax_row(real *a, int t, int n, real scale) {
    for (int t2 = 0; t2 <= t; t2++) a[t2] *= scale;
    real maxv = row_max(a, t + 1);
    double sum = exp_in_place_sum(a, t + 1, maxv);
    real inv = (real)(1.0 / sum);
    for (int t2 = 0; t2 <= t; t2++) a[t2] *= inv;
    for (int t2 = t + 1; t2 < n; t2++) a[t2] = 0;
}

// One head: queries q (rows `qs` apart) against keys k and values v (rows `ks`
// apart) at positions 0..n-1; att (n x n) the probabilities, out (rows qs apart).
// llama_decode calls it for one query row (m = 1, at position n-1).
static void attention_head(real *out, real *att, const real *q, const real *k, const real *v, int m, int n, long qs,
                           long ks, int hs, int serial) {
    real scale = (real)(1.0 / sqrt((double)hs));
    gemm_causal(m, n, hs, q, qs, 1, k, 1, ks, att, n, 0, serial, C_LOWER, n - m);
    for (int t = 0; t < m; t++) softmax_row(att + (long)t * n, n - m + t, n, scale);
    gemm_causal(m, hs, n, att, n, 1, v, ks, 1, out, qs, 0, serial, A_LOWER, n - m);
}

static void attention_forward(real *out, real *att, const real *q, const real *k, const real *v, int B, int T,
                              int NH, int NKV, int hs) {
    int group = NH / NKV;
    long qs = (long)NH * hs, ks = (long)NKV * hs; // row strides
    gemm_buffers();
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            long q0 = (long)b * T * qs + h * hs, kv0 = (long)b * T * ks + (h / group) * hs;
            attention_head(out + q0, att + ((long)b * NH + h) * T * T, q + q0, k + kv0, v + kv0, T, T, qs, ks, hs, 1);
        }
    }
}

// Per-thread T x T scratch for the backward's d(probabilities), kept between calls.
static real **attn_scratch = NULL;
static long attn_scratch_n = 0;
static void attention_scratch(long n) {
    if (n > attn_scratch_n) {
        int nt = omp_get_max_threads();
        if (!attn_scratch) attn_scratch = (real **)calloc_check(nt, sizeof(real *));
        for (int t = 0; t < nt; t++) {
            free(attn_scratch[t]);
            attn_scratch[t] = (real *)malloc_check(sizeof(real) * n);
        }
        attn_scratch_n = n;
    }
}

/*
 * Overwrites dq, dk, dv. Per head, with P = att and dO = dout:
 *   dP = dO.V^T;  dS = P * (dP - rowsum(P * dP)) * scale   (the softmax's Jacobian)
 *   dQ = dS.K;  dK += dS^T.Q;  dV += P^T.dO
 * Threads split (batch, kv head): the query heads of a group add into the same
 * dk/dv rows, in head order, on one thread.
 */
static void attention_backward(real *dq, real *dk, real *dv, const real *dout, const real *q, const real *k,
                               const real *v, const real *att, int B, int T, int NH, int NKV, int hs) {
    int group = NH / NKV;
    real scale = (real)(1.0 / sqrt((double)hs));
    long qs = (long)NH * hs, ks = (long)NKV * hs;
    gemm_buffers();
    attention_scratch((long)T * T);
#pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++) {
        for (int kvh = 0; kvh < NKV; kvh++) {
            real *ds = attn_scratch[omp_get_thread_num()];
            long kv0 = (long)b * T * ks + kvh * hs;
            for (int h = kvh * group; h < (kvh + 1) * group; h++) {
                long q0 = (long)b * T * qs + h * hs;
                const real *p = att + ((long)b * NH + h) * T * T;
                int first = h == kvh * group; // the group's first head overwrites dk and dv
                gemm_causal(T, T, hs, dout + q0, qs, 1, v + kv0, 1, ks, ds, T, 0, 1, C_LOWER, 0);      // dP
                gemm_causal(T, hs, T, p, 1, T, dout + q0, qs, 1, dv + kv0, ks, !first, 1, A_UPPER, 0); // dV
                for (int t = 0; t < T; t++) {
                    const real *pt = p + (long)t * T;
                    real *dst = ds + (long)t * T;
                    double sum = dot_lanes(pt, dst, t + 1);
                    for (int t2 = 0; t2 <= t; t2++) dst[t2] = pt[t2] * (dst[t2] - (real)sum) * scale;
                    for (int t2 = t + 1; t2 < T; t2++) dst[t2] = 0;
                }
                gemm_causal(T, hs, T, ds, T, 1, k + kv0, ks, 1, dq + q0, qs, 0, 1, A_LOWER, 0);        // dQ
                gemm_causal(T, hs, T, ds, 1, T, q + q0, qs, 1, dk + kv0, ks, !first, 1, A_UPPER, 0);   // dK
            }
        }
    }
}

// SwiGLU: out = SiLU(a) * b with SiLU(a) = a * sigmoid(a); a = w1.n (gate), b = w3.n (up)
static void swiglu_forward(real *out, const real *a, const real *b, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        real sig = 1 / (1 + rexp(-a[i]));
        out[i] = a[i] * sig * b[i];
    }
}

// d SiLU(a)/da = sig * (1 + a * (1 - sig)). Overwrites da, db.
static void swiglu_backward(real *da, real *db, const real *dout, const real *a, const real *b, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        real sig = 1 / (1 + rexp(-a[i]));
        real silu = a[i] * sig;
        da[i] = dout[i] * b[i] * sig * (1 + a[i] * (1 - sig));
        db[i] = dout[i] * silu;
    }
}

static void residual_forward(real *out, const real *a, const real *b, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// Cross-entropy of each row of logits (N, V) against its target. Keeps the
// log-sum-exp of each row so that the backward needs one pass.
static void crossentropy_forward(real *losses, real *lse, const real *logits, const int *targets, int N, int V) {
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const real *l = logits + (long)i * V;
        real maxv = row_max(l, V);
        lse[i] = maxv + (real)log(row_sum_exp(l, V, maxv));
        losses[i] = lse[i] - l[targets[i]];
    }
}

// The training step's classifier (as llm.c's fused classifier): the loss of each row and,
// written over its logits, d(mean loss)/d logits = (softmax - onehot) / N, in one visit
// to the row while it is in cache: the exps of the sum are kept and scaled, not computed
// again. (The (N, V) logits are the largest activation; nothing needs them after this.)
static void crossentropy_fused(real *losses, real *lse, real *logits, const int *targets, int N, int V) {
    real inv_n = (real)(1.0 / N);
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        real *l = logits + (long)i * V;
        real maxv = row_max(l, V), target = l[targets[i]];
        double sum = exp_in_place_sum(l, V, maxv);
        lse[i] = maxv + (real)log(sum);
        losses[i] = lse[i] - target;
        real scale = (real)(inv_n / sum);
        for (int j = 0; j < V; j++) l[j] *= scale;
        l[targets[i]] -= inv_n;
    }
}

// d(mean loss)/d logits = (softmax - onehot) / N, written over the logits in
// place, for a forward that kept them (the tests' and evaluation's).
static void crossentropy_backward_inplace(real *logits, const real *lse, const int *targets, int N, int V) {
    real inv_n = (real)(1.0 / N);
#pragma omp parallel for
    for (int i = 0; i < N; i++) {
        real *l = logits + (long)i * V;
        for (int j = 0; j < V; j++) l[j] = rexp(l[j] - lse[i]) * inv_n;
        l[targets[i]] -= inv_n;
    }
}

// ============================================================================
// 3. the model
// ============================================================================


/*
 * The one table of parameter tensors. Allocation, the checkpoint reader and
 * writer, init, weight decay, TVR, the logs and the tests all read it. Order is
 * model.bin's order (docs/formats.md). A per-layer tensor is L consecutive (rows, cols)
 * matrices; block matrices are the ones LIR scales and TVR rescales.
 */
enum {
    P_TOK_EMB, P_ATTN_NORM, P_WQ, P_WK, P_WV, P_WO, P_FFN_NORM, P_W1, P_W3, P_W2, P_FINAL_NORM, P_LM_HEAD,
    NUM_PARAM_TENSORS
};
typedef struct {
    const char *name;
    int per_layer;    // one copy per block
    int block_matrix; // a 2-D weight inside a block: LIR and TVR act on it
    int decay;        // AdamW weight decay applies (2-D tensors only)
} ParamInfo;
static const ParamInfo PARAM_INFO[NUM_PARAM_TENSORS] = {
    {"tok_emb", 0, 0, 1}, {"attn_norm", 1, 0, 0}, {"wq", 1, 1, 1},         {"wk", 1, 1, 1},
    {"wv", 1, 1, 1},      {"wo", 1, 1, 1},        {"ffn_norm", 1, 0, 0},   {"w1", 1, 1, 1},
    {"w3", 1, 1, 1},      {"w2", 1, 1, 1},        {"final_norm", 0, 0, 0}, {"lm_head", 0, 0, 1},
};

// rows and columns of one layer's copy of tensor i (norm gains are 1 x C)
static void param_shape(const LlamaConfig *c, int i, int *rows, int *cols) {
    int C = c->dim, F = c->ffn, V = c->vocab, KVD = c->kv_heads * (c->dim / c->heads);
    int shapes[NUM_PARAM_TENSORS][2] = {
        {V, C}, {1, C}, {C, C}, {KVD, C}, {KVD, C}, {C, C}, {1, C}, {F, C}, {F, C}, {C, F}, {1, C}, {V, C},
    };
    *rows = shapes[i][0];
    *cols = shapes[i][1];
}

static long param_layer_size(const LlamaConfig *c, int i) {
    int r, k;
    param_shape(c, i, &r, &k);
    return (long)r * k;
}

static long param_count(const LlamaConfig *c, int i) {
    return param_layer_size(c, i) * (PARAM_INFO[i].per_layer ? c->layers : 1);
}

// Activations kept from the forward pass for the backward pass.
typedef struct {
    real *x0;       // (B,T,C) token embeddings
    real *ln1;      // (L,B,T,C) attn_norm output
    real *ln1_rstd; // (L,B,T)
    real *q;        // (L,B,T,C) after RoPE
    real *k;        // (L,B,T,KVD) after RoPE
    real *v;        // (L,B,T,KVD)
    real *att;      // (L,B,NH,T,T) attention probabilities
    real *atty;     // (L,B,T,C) attention output, before wo
    real *h;        // (L,B,T,C) residual stream after attention
    real *ln2;      // (L,B,T,C) ffn_norm output
    real *ln2_rstd; // (L,B,T)
    real *fc1;      // (L,B,T,F) w1.n, the gate's pre-activation
    real *fc3;      // (L,B,T,F) w3.n
    real *swi;      // (L,B,T,F) SiLU(fc1) * fc3
    real *xout;     // (L,B,T,C) block output
    real *lnf;      // (B,T,C)
    real *lnf_rstd; // (B,T)
    real *logits;   // (B,T,V); after backward it holds d loss / d logits
    real *lse;      // (B,T) log-sum-exp of each row of logits
    real *losses;   // (B,T)
} Acts;

// Gradient scratch for the backward pass, reused layer after layer.
typedef struct {
    real *dres;  // (B,T,C) gradient of the residual stream
    real *dln;   // (B,T,C)
    real *dq;    // (B,T,C)
    real *dk;    // (B,T,KVD)
    real *dv;    // (B,T,KVD)
    real *datty; // (B,T,C)
    real *dfc1;  // (B,T,F)
    real *dfc3;  // (B,T,F)
    real *dswi;  // (B,T,F)
} Scratch;

typedef struct {
    LlamaConfig config;
    long num_params;
    real *params; // all parameters, one buffer, in table order
    real *grads;  // same layout
    real *m, *v;  // AdamW moments, same layout
    real *tensor[NUM_PARAM_TENSORS];  // views into params
    real *gtensor[NUM_PARAM_TENSORS]; // views into grads
    int B, T;     // batch shape the activations were allocated for
    Acts acts;
    Scratch scratch;
    real *rope_cos, *rope_sin; // (max_seq_len, hs/2)
    int *tokens;  // (B,T) the last forward's inputs, for encoder_backward
    int *targets; // (B,T)
    real loss;    // mean loss of the last forward
    int fuse_classifier; // 1: the forward writes d loss / d logits over the logits (training steps)
    int logits_are_grad; // the forward did (or the backward has): acts.logits holds the gradient
    struct Decoder *dec; // generation's KV cache and buffers (llama_decode), NULL until used
} Llama;

// Layer l's (0-based) copy of per-layer tensor i, and of its gradient.
static real *layer_param(const Llama *model, int i, int l) {
    return model->tensor[i] + (long)l * param_layer_size(&model->config, i);
}
static real *layer_grad(const Llama *model, int i, int l) {
    return model->gtensor[i] + (long)l * param_layer_size(&model->config, i);
}

/*
 * A large zeroed buffer on 2 MB pages where Linux offers them (transparent huge pages in
 * "madvise" mode here): the matmuls read and write these tensors with row strides of up
 * to V floats (the logits, 128 KB a row), so one 4 KB page per row read would cost a TLB
 * miss per row. free() releases it like any other.
 */
#include <sys/mman.h>
static real *calloc_big(long n) {
    size_t bytes = sizeof(real) * (size_t)(n > 0 ? n : 1), huge = 2u << 20;
    if (bytes < huge) return (real *)calloc_check(n > 0 ? n : 1, sizeof(real));
    void *p = NULL;
    if (posix_memalign(&p, huge, (bytes + huge - 1) / huge * huge) != 0) die("out of memory allocating %zu bytes", bytes);
    madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE); // a hint: without it, 4 KB pages
    memset(p, 0, bytes);
    return (real *)p;
}

static void llama_build(Llama *model, LlamaConfig config) {
    memset(model, 0, sizeof(*model));
    config_check(&config, "model config");
    model->config = config;
    long n = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += param_count(&config, i);
    model->num_params = n;
    model->params = calloc_big(n);
    model->grads = calloc_big(n);
    model->m = calloc_big(n);
    model->v = calloc_big(n);
    long off = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        model->tensor[i] = model->params + off;
        model->gtensor[i] = model->grads + off;
        off += param_count(&config, i);
    }
    // RoPE table, computed in double and rounded once (the PyTorch reference does the same)
    int hs = config.dim / config.heads, half = hs / 2;
    model->rope_cos = (real *)malloc_check(sizeof(real) * config.max_seq_len * half);
    model->rope_sin = (real *)malloc_check(sizeof(real) * config.max_seq_len * half);
    for (int t = 0; t < config.max_seq_len; t++) {
        for (int i = 0; i < half; i++) {
            double freq = 1.0 / pow((double)config.rope_theta, (2.0 * i) / hs);
            model->rope_cos[t * half + i] = (real)cos(t * freq);
            model->rope_sin[t * half + i] = (real)sin(t * freq);
        }
    }
}

// Allocate activations for batches of B sequences of length T (T <= max_seq_len).
// What training this model on B x T batches needs: parameters, gradients, AdamW's
// m and v, the activations and the backward's scratch (the matmul buffers aside).
static double llama_memory(const LlamaConfig *c, int B, int T) {
    long sizes[NUM_ACT_SLOTS], gsizes[NUM_SCRATCH_SLOTS];
    acts_sizes(c, B, T, sizes, gsizes);
    double n = 0;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += 4.0 * param_count(c, i);
    for (int i = 0; i < NUM_ACT_SLOTS; i++) n += sizes[i];
    for (int i = 0; i < NUM_SCRATCH_SLOTS; i++) n += gsizes[i];
    return n * sizeof(real);
}

static void llama_alloc_acts(Llama *model, int B, int T) {
    const LlamaConfig *c = &model->config;
    if (T > c->max_seq_len) die("seq-len %d exceeds the model's maximum %d", T, c->max_seq_len);
    model->B = B;
    model->T = T;
    long sizes[NUM_ACT_SLOTS], gsizes[NUM_SCRATCH_SLOTS], N = (long)B * T;
    acts_sizes(c, B, T, sizes, gsizes);
    Acts *a = &model->acts;
    real **slots[NUM_ACT_SLOTS] = {&a->x0,   &a->ln1, &a->ln1_rstd, &a->q,        &a->k,   &a->v,   &a->att,
                                   &a->atty, &a->h,   &a->ln2,      &a->ln2_rstd, &a->fc1, &a->fc3, &a->swi,
                                   &a->xout, &a->lnf, &a->lnf_rstd, &a->logits,   &a->lse, &a->losses};
    for (int s = 0; s < NUM_ACT_SLOTS; s++) *slots[s] = calloc_big(sizes[s]);
    Scratch *g = &model->scratch;
    real **gslots[NUM_SCRATCH_SLOTS] = {&g->dres,  &g->dln,  &g->dq,   &g->dk,  &g->dv,
                                        &g->datty, &g->dfc1, &g->dfc3, &g->dswi};
    for (int s = 0; s < NUM_SCRATCH_SLOTS; s++) *gslots[s] = calloc_big(gsizes[s]);
    model->tokens = (int *)calloc_check(N, sizeof(int));
    model->targets = (int *)calloc_check(N, sizeof(int));
}

/*
 * Generation one token at a time (llama_decode, below): every layer's keys and
 * values of the positions so far, and buffers for one position. Its own memory:
 * a sample during training never touches the activations of the training step.
 */
typedef struct Decoder {
    real *kc, *vc; // (L, max_seq_len, KVD) RoPE'd keys, values
    real *x, *ln, *q, *att, *atty, *tmp, *h, *fc1, *fc3, *swi, *logits, rstd;
    float *flogits; // (V) the logits as the sampler reads them
    int len;        // positions in the cache
    int kv_cache;   // 0: llama_next_logits recomputes the prefix with llama_forward (a check)
    int *window;    // (T) that prefix, padded (kv_cache 0)
} Decoder;

static void llama_decoder_free(Llama *model) {
    Decoder *d = model->dec;
    if (!d) return;
    real *bufs[] = {d->kc, d->vc, d->x, d->ln, d->q, d->att, d->atty, d->tmp, d->h, d->fc1, d->fc3, d->swi, d->logits};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    free(d->flogits), free(d->window), free(d);
    model->dec = NULL;
}

static void llama_free(Llama *model) {
    free(model->params);
    free(model->grads);
    free(model->m);
    free(model->v);
    free(model->rope_cos);
    free(model->rope_sin);
    real **acts = (real **)&model->acts;
    for (size_t s = 0; s < sizeof(Acts) / sizeof(real *); s++) free(acts[s]);
    real **scr = (real **)&model->scratch;
    for (size_t s = 0; s < sizeof(Scratch) / sizeof(real *); s++) free(scr[s]);
    free(model->tokens);
    free(model->targets);
    llama_decoder_free(model);
}

/*
 * Initialisation (docs/methods.md, "The init schemes" and LIR):
 *   plain    every matrix ~ N(0, sigma^2)
 *   lir      block l's matrices (l = 1..L) ~ N(0, (sigma/sqrt(l))^2); embeddings and lm_head sigma
 *   residual wo and w2 ~ N(0, (sigma/sqrt(2L))^2), the rest sigma (GPT-2's special residual init)
 * Norm gains start at 1. Draws go tensor by tensor, layer by layer, in table order.
 */
typedef enum { INIT_PLAIN, INIT_LIR, INIT_RESIDUAL } InitScheme;

static double init_std(const LlamaConfig *c, InitScheme scheme, double sigma, int i, int layer /* 1-based */) {
    if (scheme == INIT_LIR && PARAM_INFO[i].block_matrix) return sigma / sqrt((double)layer);
    if (scheme == INIT_RESIDUAL && (i == P_WO || i == P_W2)) return sigma / sqrt(2.0 * c->layers);
    return sigma;
}

static void llama_init(Llama *model, InitScheme scheme, double sigma, Rng *rng) {
    const LlamaConfig *c = &model->config;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        int nl = PARAM_INFO[i].per_layer ? c->layers : 1;
        long n = param_layer_size(c, i);
        int is_norm = (i == P_ATTN_NORM || i == P_FFN_NORM || i == P_FINAL_NORM);
        for (int l = 0; l < nl; l++) {
            real *w = layer_param(model, i, l);
            double std = init_std(c, scheme, sigma, i, l + 1);
            for (long j = 0; j < n; j++) w[j] = is_norm ? 1 : (real)(std * rng_normal(rng));
        }
    }
}

// ---------------------------------------------------------------------------
// forward and backward

// Forward pass on tokens (B,T) with targets (B,T); sets model->loss.
static void llama_forward(Llama *model, const int *tokens, const int *targets, int B, int T) {
    if (B != model->B || T != model->T) {
        die("internal: forward with %dx%d, activations are %dx%d", B, T, model->B, model->T);
    }
    const LlamaConfig *c = &model->config;
    int L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads, NKV = c->kv_heads;
    int hs = C / NH, KVD = NKV * hs, N = B * T;
    Acts *a = &model->acts;
    memcpy(model->tokens, tokens, sizeof(int) * N);
    memcpy(model->targets, targets, sizeof(int) * N);

    encoder_forward(a->x0, tokens, model->tensor[P_TOK_EMB], N, C);
    for (int l = 0; l < L; l++) {
        const real *x = l == 0 ? a->x0 : a->xout + (long)(l - 1) * N * C;
        real *ln1 = a->ln1 + (long)l * N * C, *ln1_rstd = a->ln1_rstd + (long)l * N;
        real *q = a->q + (long)l * N * C, *k = a->k + (long)l * N * KVD, *v = a->v + (long)l * N * KVD;
        real *att = a->att + (long)l * B * NH * T * T, *atty = a->atty + (long)l * N * C;
        real *h = a->h + (long)l * N * C, *ln2 = a->ln2 + (long)l * N * C, *ln2_rstd = a->ln2_rstd + (long)l * N;
        real *fc1 = a->fc1 + (long)l * N * F, *fc3 = a->fc3 + (long)l * N * F, *swi = a->swi + (long)l * N * F;
        real *xout = a->xout + (long)l * N * C;
        real *tmp = model->scratch.dln; // (N, C) scratch for the projections' outputs

        rmsnorm_forward(ln1, ln1_rstd, x, layer_param(model, P_ATTN_NORM, l), N, C, c->norm_eps);
        matmul_forward(q, ln1, layer_param(model, P_WQ, l), N, C, C);
        matmul_forward(k, ln1, layer_param(model, P_WK, l), N, C, KVD);
        matmul_forward(v, ln1, layer_param(model, P_WV, l), N, C, KVD);
        rope_forward(q, model->rope_cos, model->rope_sin, B, T, NH, hs);
        rope_forward(k, model->rope_cos, model->rope_sin, B, T, NKV, hs);
        attention_forward(atty, att, q, k, v, B, T, NH, NKV, hs);
        matmul_forward(tmp, atty, layer_param(model, P_WO, l), N, C, C);
        residual_forward(h, x, tmp, (long)N * C);
        rmsnorm_forward(ln2, ln2_rstd, h, layer_param(model, P_FFN_NORM, l), N, C, c->norm_eps);
        matmul_forward(fc1, ln2, layer_param(model, P_W1, l), N, C, F);
        matmul_forward(fc3, ln2, layer_param(model, P_W3, l), N, C, F);
        swiglu_forward(swi, fc1, fc3, (long)N * F);
        matmul_forward(tmp, swi, layer_param(model, P_W2, l), N, F, C);
        residual_forward(xout, h, tmp, (long)N * C);
    }
    const real *xlast = a->xout + (long)(L - 1) * N * C;
    rmsnorm_forward(a->lnf, a->lnf_rstd, xlast, model->tensor[P_FINAL_NORM], N, C, c->norm_eps);
    matmul_forward(a->logits, a->lnf, model->tensor[P_LM_HEAD], N, C, V);
    model->logits_are_grad = model->fuse_classifier;
    if (model->fuse_classifier) {
        crossentropy_fused(a->losses, a->lse, a->logits, targets, N, V);
    } else {
        crossentropy_forward(a->losses, a->lse, a->logits, targets, N, V);
    }
    double sum = 0;
    for (int i = 0; i < N; i++) sum += a->losses[i];
    model->loss = (real)(sum / N);
}

static void llama_zero_grad(Llama *model) { memset(model->grads, 0, sizeof(real) * model->num_params); }

// Backward pass for the last forward; adds into model->grads (zero them first).
static void llama_backward(Llama *model) {
    const LlamaConfig *c = &model->config;
    int B = model->B, T = model->T;
    int L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads, NKV = c->kv_heads;
    int hs = C / NH, KVD = NKV * hs, N = B * T;
    Acts *a = &model->acts;
    Scratch *s = &model->scratch;

    if (!model->logits_are_grad) crossentropy_backward_inplace(a->logits, a->lse, model->targets, N, V);
    model->logits_are_grad = 1;
    const real *dlogits = a->logits;
    matmul_backward(s->dln, model->gtensor[P_LM_HEAD], dlogits, a->lnf, model->tensor[P_LM_HEAD], N, C, V, 0);
    memset(s->dres, 0, sizeof(real) * N * C);
    rmsnorm_backward(s->dres, model->gtensor[P_FINAL_NORM], s->dln, a->xout + (long)(L - 1) * N * C,
                     model->tensor[P_FINAL_NORM], a->lnf_rstd, N, C);

    for (int l = L - 1; l >= 0; l--) {
        const real *x = l == 0 ? a->x0 : a->xout + (long)(l - 1) * N * C;
        const real *ln1 = a->ln1 + (long)l * N * C, *ln1_rstd = a->ln1_rstd + (long)l * N;
        const real *q = a->q + (long)l * N * C, *k = a->k + (long)l * N * KVD, *v = a->v + (long)l * N * KVD;
        const real *att = a->att + (long)l * B * NH * T * T, *atty = a->atty + (long)l * N * C;
        const real *h = a->h + (long)l * N * C, *ln2 = a->ln2 + (long)l * N * C;
        const real *ln2_rstd = a->ln2_rstd + (long)l * N;
        const real *fc1 = a->fc1 + (long)l * N * F, *fc3 = a->fc3 + (long)l * N * F, *swi = a->swi + (long)l * N * F;
#define W(i) layer_param(model, i, l)
#define DW(i) layer_grad(model, i, l)
        // s->dres holds d loss / d xout; xout = h + w2.swi, so it is also d loss / d h (so far)
        matmul_backward(s->dswi, DW(P_W2), s->dres, swi, W(P_W2), N, F, C, 0);
        swiglu_backward(s->dfc1, s->dfc3, s->dswi, fc1, fc3, (long)N * F);
        matmul_backward(s->dln, DW(P_W1), s->dfc1, ln2, W(P_W1), N, C, F, 0);
        matmul_backward(s->dln, DW(P_W3), s->dfc3, ln2, W(P_W3), N, C, F, 1);
        rmsnorm_backward(s->dres, DW(P_FFN_NORM), s->dln, h, W(P_FFN_NORM), ln2_rstd, N, C);
        // now s->dres = d loss / d h; h = x + wo.atty
        matmul_backward(s->datty, DW(P_WO), s->dres, atty, W(P_WO), N, C, C, 0);
        attention_backward(s->dq, s->dk, s->dv, s->datty, q, k, v, att, B, T, NH, NKV, hs);
        rope_backward(s->dq, model->rope_cos, model->rope_sin, B, T, NH, hs);
        rope_backward(s->dk, model->rope_cos, model->rope_sin, B, T, NKV, hs);
        matmul_backward(s->dln, DW(P_WQ), s->dq, ln1, W(P_WQ), N, C, C, 0);
        matmul_backward(s->dln, DW(P_WK), s->dk, ln1, W(P_WK), N, C, KVD, 1);
        matmul_backward(s->dln, DW(P_WV), s->dv, ln1, W(P_WV), N, C, KVD, 1);
        rmsnorm_backward(s->dres, DW(P_ATTN_NORM), s->dln, x, W(P_ATTN_NORM), ln1_rstd, N, C);
        // now s->dres = d loss / d x, the previous block's output
#undef W
#undef DW
    }
    encoder_backward(model->gtensor[P_TOK_EMB], s->dres, model->tokens, N, C);
}

// ---------------------------------------------------------------------------
// model.bin (docs/formats.md): int32 header[256], then every tensor as fp32 in table order

static void llama_save(const Llama *model, const char *path) {
    AtomicFile af;
    atomic_open(&af, path);
    llama_header_write(af.f, af.tmp, &model->config);
    write_floats(af.f, model->params, sizeof(real), model->num_params, af.tmp);
    atomic_commit(&af);
}

// Load parameters from a model.bin whose config equals the model's.
static void llama_load_params(Llama *model, const char *path) {
    llama_check_size(path, model->num_params);
    FILE *f = fopen_check(path, "rb");
    fseek(f, HEADER_INTS * 4, SEEK_SET);
    read_payload(f, model->params, sizeof(real), model->num_params, path, "parameters");
    fclose(f);
}

// ---------------------------------------------------------------------------
// generation: one position at a time with a KV cache (docs/formats.md, "Text samples")

static Decoder *llama_decoder(Llama *model) {
    if (model->dec) return model->dec;
    const LlamaConfig *c = &model->config;
    long T = c->max_seq_len, C = c->dim, F = c->ffn, KVD = (long)c->kv_heads * (C / c->heads);
    Decoder *d = (Decoder *)calloc_check(1, sizeof(Decoder));
    d->kc = (real *)calloc_check(c->layers * T * KVD, sizeof(real));
    d->vc = (real *)calloc_check(c->layers * T * KVD, sizeof(real));
    real **bufs[] = {&d->x, &d->ln, &d->q, &d->atty, &d->tmp, &d->h};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) *bufs[i] = (real *)calloc_check(C, sizeof(real));
    d->att = (real *)calloc_check(T, sizeof(real));
    d->fc1 = (real *)calloc_check(F, sizeof(real));
    d->fc3 = (real *)calloc_check(F, sizeof(real));
    d->swi = (real *)calloc_check(F, sizeof(real));
    d->logits = (real *)calloc_check(c->vocab, sizeof(real));
    d->flogits = (float *)calloc_check(c->vocab, sizeof(float));
    d->kv_cache = 1;
    model->dec = d;
    return d;
}

/*
 * The logits after `token` at position pos, given the cache holds positions
 * 0..pos-1: llama_forward for one row, with the same layer functions and the
 * attention's loops in attention_forward's order, so it computes what the batch
 * forward computes at that position (test/test_llama.c measures how close).
 */
static const float *llama_decode(Llama *model, int token, int pos) {
    const LlamaConfig *c = &model->config;
    Decoder *d = llama_decoder(model);
    int L = c->layers, C = c->dim, F = c->ffn, V = c->vocab, NH = c->heads, NKV = c->kv_heads;
    int hs = C / NH, KVD = NKV * hs, group = NH / NKV, half = hs / 2;
    long T = c->max_seq_len;
    if (pos >= T) die("internal: decode at position %d, the model's maximum is %ld", pos, T);
    memcpy(d->x, model->tensor[P_TOK_EMB] + (long)token * C, sizeof(real) * C);
    gemm_buffers(); // (a serial gemm_causal's)
    for (int l = 0; l < L; l++) {
        real *kc = d->kc + (long)l * T * KVD, *vc = d->vc + (long)l * T * KVD;
        rmsnorm_forward(d->ln, &d->rstd, d->x, layer_param(model, P_ATTN_NORM, l), 1, C, c->norm_eps);
        matmul_forward(d->q, d->ln, layer_param(model, P_WQ, l), 1, C, C);
        matmul_forward(kc + (long)pos * KVD, d->ln, layer_param(model, P_WK, l), 1, C, KVD);
        matmul_forward(vc + (long)pos * KVD, d->ln, layer_param(model, P_WV, l), 1, C, KVD);
        const real *cs = model->rope_cos + (long)pos * half, *sn = model->rope_sin + (long)pos * half;
        rope_forward(d->q, cs, sn, 1, 1, NH, hs);
        rope_forward(kc + (long)pos * KVD, cs, sn, 1, 1, NKV, hs);
        for (int h = 0; h < NH; h++) {
            int kvh = h / group;
            // serial: one row's products are too small to share out between threads
            attention_head(d->atty + h * hs, d->att, d->q + h * hs, kc + kvh * hs, vc + kvh * hs, 1, pos + 1, C, KVD,
                           hs, 1);
        }
        matmul_forward(d->tmp, d->atty, layer_param(model, P_WO, l), 1, C, C);
        residual_forward(d->h, d->x, d->tmp, C);
        rmsnorm_forward(d->ln, &d->rstd, d->h, layer_param(model, P_FFN_NORM, l), 1, C, c->norm_eps);
        matmul_forward(d->fc1, d->ln, layer_param(model, P_W1, l), 1, C, F);
        matmul_forward(d->fc3, d->ln, layer_param(model, P_W3, l), 1, C, F);
        swiglu_forward(d->swi, d->fc1, d->fc3, F);
        matmul_forward(d->tmp, d->swi, layer_param(model, P_W2, l), 1, F, C);
        residual_forward(d->x, d->h, d->tmp, C);
    }
    rmsnorm_forward(d->ln, &d->rstd, d->x, model->tensor[P_FINAL_NORM], 1, C, c->norm_eps);
    matmul_forward(d->logits, d->ln, model->tensor[P_LM_HEAD], 1, C, V);
    for (int i = 0; i < V; i++) d->flogits[i] = (float)d->logits[i];
    d->len = pos + 1;
    return d->flogits;
}

// NextLogits (common/sample.h) for generate(): with the cache, only the positions
// not yet in it are decoded; without (kv_cache 0), the whole prefix goes through
// llama_forward (activations allocated for one sequence of the model's length),
// an independent path the tests compare with.
static const float *llama_next_logits(void *m, const int *tokens, int n) {
    Llama *model = (Llama *)m;
    Decoder *d = llama_decoder(model);
    if (n == 1 || n <= d->len) d->len = 0; // a new sequence
    if (d->kv_cache) {
        const float *logits = NULL;
        for (int pos = d->len; pos < n; pos++) logits = llama_decode(model, tokens[pos], pos);
        return logits;
    }
    int T = model->T, V = model->config.vocab;
    if (model->B != 1 || n > T) die("internal: recompute needs activations of 1 x %d, have %d x %d", n, model->B, T);
    if (!d->window) d->window = (int *)calloc_check(2 * T, sizeof(int)); // tokens, then zero targets
    memset(d->window, 0, sizeof(int) * 2 * T);
    memcpy(d->window, tokens, sizeof(int) * n); // causal: the padding after n changes nothing before it
    llama_forward(model, d->window, d->window + T, 1, T);
    for (int i = 0; i < V; i++) d->flogits[i] = (float)model->acts.logits[(long)(n - 1) * V + i];
    return d->flogits;
}

// ============================================================================
// 4. the optimizer
// ============================================================================

// Sum of squares of x in double. The vector is cut into a fixed number of
// chunks whatever the thread count, and the chunks are added in order, so the
// result is the same with 1 or 16 threads.
#define REDUCE_CHUNKS DP_CHUNKS // common/dp.h shares the chunks out between the ranks, whole
// Sum of (x[i] - shift)^p over [lo, hi), p = 1 or 2, in double. Sixteen interleaved partial
// sums, added in a fixed order at the end: one running sum is a chain of dependent adds (four
// cycles each), which held the gradient norm of a 56M-parameter model to about 2 GB/s.
static double sum_power_range(const real *x, long lo, long hi, double shift, int p) {
    double acc[16] = {0}, s = 0;
    long i = lo;
    for (; i + 16 <= hi; i += 16) {
        for (int j = 0; j < 16; j++) {
            double d = (double)x[i + j] - shift;
            acc[j] += p == 2 ? d * d : d;
        }
    }
    for (; i < hi; i++) {
        double d = (double)x[i] - shift;
        s += p == 2 ? d * d : d;
    }
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

// part[ch] for the chunks ch in [c0, c1) (sum_squares: all of them)
static void sum_squares_chunks(const real *x, long n, double shift, double *part, int c0, int c1) {
#pragma omp parallel for
    for (int ch = c0; ch < c1; ch++) {
        part[ch] = sum_power_range(x, n * ch / REDUCE_CHUNKS, n * (ch + 1) / REDUCE_CHUNKS, shift, 2);
    }
}

static double sum_squares(const real *x, long n, double shift) {
    double part[REDUCE_CHUNKS];
    sum_squares_chunks(x, n, shift, part, 0, REDUCE_CHUNKS);
    double s = 0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) s += part[ch];
    return s;
}

static double sum_values(const real *x, long n) {
    double part[REDUCE_CHUNKS];
#pragma omp parallel for
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) {
        part[ch] = sum_power_range(x, n * ch / REDUCE_CHUNKS, n * (ch + 1) / REDUCE_CHUNKS, 0, 1);
    }
    double s = 0;
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) s += part[ch];
    return s;
}

// Global gradient norm over all parameters, then clipping (docs/methods.md): scale by
// max/(norm + 1e-6) when that is below 1. Returns the norm before clipping. With several
// ranks each holds the step's gradient on its shard only (common/dp.h): it sums its
// whole chunks, the ranks swap their chunks' sums, and every rank adds the 64 in order,
// the same number as one rank's sum_squares over the whole gradient.
static double clip_grad_norm(Llama *model, double max_norm) {
    double part[REDUCE_CHUNKS], s = 0;
    int c0, c1;
    dp_chunks(REDUCE_CHUNKS, dp.rank, &c0, &c1);
    sum_squares_chunks(model->grads, model->num_params, 0, part, c0, c1);
    dp_allgather_chunks(part, REDUCE_CHUNKS);
    for (int ch = 0; ch < REDUCE_CHUNKS; ch++) s += part[ch];
    double norm = sqrt(s);
    if (max_norm > 0) {
        double coef = max_norm / (norm + 1e-6);
        if (coef < 1) {
            real cf = (real)coef;
            long lo, hi;
            dp_shard(model->num_params, &lo, &hi);
#pragma omp parallel for
            for (long i = lo; i < hi; i++) model->grads[i] *= cf;
        }
    }
    return norm;
}

/*
 * AdamW as torch.optim.AdamW computes it (step t from 1):
 *   p <- p * (1 - lr*wd)                         (decoupled decay, 2-D tensors only)
 *   m <- m + (1-beta1)*(g - m);  v <- beta2*v + (1-beta2)*g^2
 *   p <- p - lr/(1-beta1^t) * m / (sqrt(v)/sqrt(1-beta2^t) + eps)
 * ZeRO-1 (common/dp.h): a rank updates its shard [lo, hi) of the parameters, where its
 * m and v are (m[0] is parameter lo's); one rank's shard is everything.
 */
static void adamw_update(Llama *model, const OptConfig *o, double lr, int t) {
    double bc1 = 1 - pow(o->beta1, t), bc2_sqrt = sqrt(1 - pow(o->beta2, t));
    real step_size = (real)(lr / bc1), inv_bc2 = (real)(1 / bc2_sqrt);
    real b1 = (real)o->beta1, b2 = (real)o->beta2, eps = (real)o->eps;
    long lo, hi;
    dp_shard(model->num_params, &lo, &hi);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        real decay = PARAM_INFO[i].decay ? (real)(1 - lr * o->weight_decay) : 1;
        long a = model->tensor[i] - model->params, b = a + param_count(&model->config, i); // the tensor's range
        if (a < lo) a = lo;
        if (b > hi) b = hi;
        if (a >= b) continue;
        real *p = model->params + a, *g = model->grads + a, *m = model->m + (a - lo), *v = model->v + (a - lo);
        long n = b - a;
#pragma omp parallel for
        for (long j = 0; j < n; j++) {
            p[j] *= decay;
            m[j] += (1 - b1) * (g[j] - m[j]);
            v[j] = b2 * v[j] + (1 - b2) * g[j] * g[j];
            p[j] -= step_size * m[j] / (rsqrt_(v[j]) * inv_bc2 + eps);
        }
    }
}

// ============================================================================
// 5. TVR and statistics
// ============================================================================

// mean and unbiased (n-1) standard deviation, two passes in double
static void weight_stats(const real *w, long n, double *mean, double *std) {
    *mean = sum_values(w, n) / n;
    *std = n > 1 ? sqrt(sum_squares(w, n, *mean) / (n - 1)) : 0;
}

/*
 * Target Variance Rescaling (docs/methods.md, paper A): if the matrix's std s is
 * above threshold*target, W <- (W - mean) * target/s + mean. The mean is kept,
 * only the spread changes; Adam's moments are left alone. Returns 1 if it
 * rescaled. mean and std (before) are returned for the log.
 */
static int tvr_rescale(real *w, long n, double target, double threshold, double *mean, double *std) {
    weight_stats(w, n, mean, std);
    if (!(*std / target > threshold)) return 0;
    double mu = *mean, scale = target / *std;
#pragma omp parallel for
    for (long i = 0; i < n; i++) w[i] = (real)(((double)w[i] - mu) * scale + mu);
    return 1;
}

// For every block matrix: statistics (and TVR if due), one weights.csv row each.
// Returns the number of matrices rescaled.
static int weights_pass(Llama *model, const TvrConfig *tvr, int step, int do_tvr, FILE *csv) {
    const LlamaConfig *c = &model->config;
    int total = 0;
    for (int l = 0; l < c->layers; l++) {
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
            if (!PARAM_INFO[i].block_matrix) continue;
            real *w = layer_param(model, i, l);
            long n = param_layer_size(c, i);
            double mean, std;
            int rescaled = 0;
            if (do_tvr) {
                rescaled = tvr_rescale(w, n, tvr_target_for_layer(tvr, l + 1), tvr->threshold, &mean, &std);
            } else {
                weight_stats(w, n, &mean, &std);
            }
            if (csv) fprintf(csv, "%d,%d,%s,%.9g,%.9g,%d\n", step, l + 1, PARAM_INFO[i].name, mean, std, rescaled);
            total += rescaled;
        }
    }
    if (csv) fflush(csv);
    return total;
}

// max |x| and rms of each block's output on the last forward's batch
static void activations_log(const Llama *model, int step, FILE *csv) {
    long n = (long)model->B * model->T * model->config.dim;
    for (int l = 0; l < model->config.layers; l++) {
        const real *x = model->acts.xout + l * n;
        double maxabs = 0;
        for (long i = 0; i < n; i++) maxabs = fabs((double)x[i]) > maxabs ? fabs((double)x[i]) : maxabs;
        double rms = sqrt(sum_squares(x, n, 0) / n);
        fprintf(csv, "%d,%d,%.9g,%.9g\n", step, l + 1, maxabs, rms);
    }
    fflush(csv);
}

// ============================================================================
// 6. training
// ============================================================================

#define STATE_MAGIC 20261123
#define STATE_VERSION 1

// state.bin (common/train.h): the step, the data loader's place, the RNG, and
// params, m and v in the parameter table's order. With several ranks, rank 0 gathers
// the shards of m and v and writes the file alone: it is the one a single rank writes.
static void state_save(const Llama *model, const TrainState *st, const char *path) {
    long np = model->num_params;
    real *m = model->m, *v = model->v, *full_m = NULL, *full_v = NULL;
    if (dp.ranks > 1) {
        m = full_m = (real *)dp_gather_shards(model->m, np, sizeof(real));
        v = full_v = (real *)dp_gather_shards(model->v, np, sizeof(real));
    }
    if (dp.rank == 0) {
        AtomicFile af;
        atomic_open(&af, path);
        state_write_header(af.f, af.tmp, STATE_MAGIC, STATE_VERSION, st, np);
        write_floats(af.f, model->params, sizeof(real), np, af.tmp);
        write_floats(af.f, m, sizeof(real), np, af.tmp);
        write_floats(af.f, v, sizeof(real), np, af.tmp);
        atomic_commit(&af);
    }
    free(full_m);
    free(full_v);
}

// Every rank reads the parameters and its own shard of m and v (all of them, alone).
static void state_load(Llama *model, TrainState *st, const char *path) {
    long np = model->num_params, lo, hi;
    dp_shard(np, &lo, &hi);
    FILE *f = state_open(path, STATE_MAGIC, STATE_VERSION, "train_llama", np, st);
    read_payload(f, model->params, sizeof(real), np, path, "parameters");
    for (int k = 0; k < 2; k++) { // m, then v: each np values, this rank's [lo, hi) of them
        long start = (long)STATE_HEADER_INTS * 4 + (1 + k) * np * 4 + lo * 4;
        if (fseek(f, start, SEEK_SET) != 0) die("cannot seek in %s: %s", path, strerror(errno));
        read_payload(f, k ? model->v : model->m, sizeof(real), hi - lo, path, k ? "AdamW's v" : "AdamW's m");
    }
    fclose(f);
}

// ZeRO-1: with several ranks, m and v hold this rank's shard only (common/dp.h).
static void llama_shard_moments(Llama *model) {
    if (dp.ranks == 1) return;
    long lo, hi;
    dp_shard(model->num_params, &lo, &hi);
    free(model->m);
    free(model->v);
    model->m = calloc_big(hi - lo);
    model->v = calloc_big(hi - lo);
}

#define USAGE "usage: train_llama [flags]   train a LLaMA on the CPU with LIR and TVR (see README.md)"

// mean loss over the first val_batches batches of the validation shards; with several
// ranks, rank r computes batches r, r + N, ... and the batch losses are added in order
static double evaluate(Llama *model, DataLoader *val, int batches) {
    dataloader_reset(val);
    double *loss = (double *)calloc_check(batches, sizeof(double)), sum = 0;
    for (int i = 0; i < batches; i++) {
        dataloader_next(val);
        if (i % dp.ranks != dp.rank) continue;
        llama_forward(model, val->inputs, val->targets, model->B, model->T);
        loss[i] = model->loss;
    }
    dp_share_losses(loss, batches);
    for (int i = 0; i < batches; i++) sum += loss[i];
    free(loss);
    return sum / batches;
}

// --quant's weights: every matrix a matmul multiplies by (the block linears and lm_head),
// in place; the token embedding and the norm gains are kept
static void llama_quantize_weights(Llama *model, const QuantSetting *q) {
    if (!q->wbits) return;
    const LlamaConfig *c = &model->config;
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        if (!PARAM_INFO[i].block_matrix && i != P_LM_HEAD) continue;
        int rows, cols;
        param_shape(c, i, &rows, &cols);
        for (int l = 0; l < (PARAM_INFO[i].per_layer ? c->layers : 1); l++) {
            quant_matrix(layer_param(model, i, l), rows, cols, q->wbits, q->wgroup);
        }
    }
}

/*
 * How spread out each matmul's input is, which is what sets the error of quantizing it:
 * with one scale per tensor every value's rounding error is up to max|x| / (2 qmax), so
 * the error against the input's typical size grows with max|x| / rms(x) (per tensor), or
 * with each row's own max / rms (per token). Over the evaluation's batches, for the inputs
 * of each layer (ln1: wq, wk, wv's; atty: wo's; ln2: w1, w3's; swi: w2's) and lnf (lm_head's):
 * the largest |x|, the rms, the mean over batches of max / rms and the mean over rows of
 * their own max / rms.
 */
#define NUM_INPUT_KINDS 4
static const char *INPUT_KINDS[NUM_INPUT_KINDS] = {"ln1", "atty", "ln2", "swi"};
typedef struct {
    double max_abs, ss, tensor_ratio, token_ratio;
    long n, batches, rows;
} InputStat;

static void input_stat_add(InputStat *st, const real *x, int N, int C) {
    double mx = 0, ss = 0, rr = 0;
#pragma omp parallel for reduction(max : mx) reduction(+ : ss, rr)
    for (int i = 0; i < N; i++) {
        const real *r = x + (long)i * C;
        double m = max_abs(r, C), s = 0;
        for (int c = 0; c < C; c++) s += (double)r[c] * r[c];
        mx = m > mx ? m : mx;
        ss += s;
        rr += s > 0 ? m / sqrt(s / C) : 0;
    }
    st->max_abs = mx > st->max_abs ? mx : st->max_abs;
    st->ss += ss;
    st->n += (long)N * C;
    st->tensor_ratio += ss > 0 ? mx / sqrt(ss / ((double)N * C)) : 0;
    st->batches++;
    st->token_ratio += rr;
    st->rows += N;
}

/*
 * --eval-only 1: the mean loss of --init-from's model over the first --val-batches batches
 * of --val (the batches a training run's validation reads, summed as evaluate() sums them),
 * with --quant's weights and matmul inputs; printed, and one row appended to eval.csv in
 * --out (docs/formats.md); the matmul inputs' spread (InputStat) into inputs.csv.
 */
static void eval_run(Llama *model, const Settings *s, const char *ckpt) {
    if (dp.ranks > 1) usage_error("--eval-only 1 runs on one rank, not %d (mpirun -np 1, or no mpirun)", dp.ranks);
    DataLoader val;
    dataloader_init(&val, s->val, "--val", s->batch, s->seq_len, model->config.vocab);
    ensure_dir(s->out);
    llama_load_params(model, ckpt);
    const QuantSetting *q = quant_setting(s->quant);
    llama_quantize_weights(model, q);
    quant = *q; // matmul_forward quantizes its inputs from here on
    llama_alloc_acts(model, s->batch, s->seq_len);
    double t0 = wall_seconds();
    const LlamaConfig *c = &model->config;
    int L = c->layers, N = s->batch * s->seq_len, width[NUM_INPUT_KINDS] = {c->dim, c->dim, c->dim, c->ffn};
    InputStat *st = (InputStat *)calloc_check((long)NUM_INPUT_KINDS * L + 1, sizeof(InputStat));
    double loss = 0;
    dataloader_reset(&val);
    for (int b = 0; b < s->val_batches; b++) {
        dataloader_next(&val);
        llama_forward(model, val.inputs, val.targets, s->batch, s->seq_len);
        loss += model->loss;
        const Acts *a = &model->acts;
        const real *kinds[NUM_INPUT_KINDS] = {a->ln1, a->atty, a->ln2, a->swi};
        for (int l = 0; l < L; l++) {
            for (int k = 0; k < NUM_INPUT_KINDS; k++) {
                input_stat_add(&st[l * NUM_INPUT_KINDS + k], kinds[k] + (long)l * N * width[k], N, width[k]);
            }
        }
        input_stat_add(&st[L * NUM_INPUT_KINDS], a->lnf, N, c->dim);
    }
    loss /= s->val_batches;
    quant = QUANT_SETTINGS[0];
    char path[4200];
    run_file(path, sizeof(path), s->out, "inputs.csv");
    int fresh_inputs = file_size(path) <= 0;
    FILE *fi = fopen(path, "a");
    if (!fi) die("cannot open %s for appending: %s", path, strerror(errno));
    if (fresh_inputs) fprintf(fi, "model,quant,layer,input,max_abs,rms,tensor_max_over_rms,token_max_over_rms\n");
    for (int i = 0; i <= NUM_INPUT_KINDS * L; i++) {
        const InputStat *e = &st[i];
        fprintf(fi, "%s,%s,%d,%s,%.6g,%.6g,%.6g,%.6g\n", ckpt, q->name, i < NUM_INPUT_KINDS * L ? i / NUM_INPUT_KINDS + 1 : 0,
                i < NUM_INPUT_KINDS * L ? INPUT_KINDS[i % NUM_INPUT_KINDS] : "lnf", e->max_abs, sqrt(e->ss / e->n),
                e->tensor_ratio / e->batches, e->token_ratio / e->rows);
    }
    fclose_check(fi, path);
    free(st);
    run_file(path, sizeof(path), s->out, "eval.csv");
    int fresh = file_size(path) <= 0;
    FILE *f = fopen(path, "a");
    if (!f) die("cannot open %s for appending: %s", path, strerror(errno));
    if (fresh) fprintf(f, "model,quant,precision,batch,seq_len,val_batches,val_loss\n");
    fprintf(f, "%s,%s,%s,%d,%d,%d,%.9g\n", ckpt, q->name, s->precision, s->batch, s->seq_len, s->val_batches, loss);
    fclose_check(f, path);
    printf("eval: val loss %.6f | quant %s | %d batches of %dx%d | %.1f s | %s\n", loss, q->name, s->val_batches,
           s->batch, s->seq_len, wall_seconds() - t0, path);
    dataloader_free(&val);
}

// every rank takes part (state_save gathers AdamW's shards); rank 0 writes
static void save_checkpoint(const Llama *model, const TrainState *st, const char *dir) {
    check_finite_params(model->params, sizeof(real), model->num_params, dir);
    char path[4200];
    if (dp.rank == 0) llama_save(model, run_file(path, sizeof(path), dir, "model.bin"));
    state_save(model, st, run_file(path, sizeof(path), dir, "state.bin"));
}

/*
 * One step's gradient and loss (docs/parallel.md): the K = --grad-accum micro-steps of
 * this rank's rows of the global batch the loader holds (rank r's micro-step k is rows
 * (r*K + k)*B onwards), each gradient the mean over its B*T rows, summed in order;
 * then common/dp.h adds the ranks' sums in rank order and divides by N*K, on this
 * rank's shard of model->grads. Returns the mean loss over the N*K micro-batches.
 * The activations of the first micro-step are kept for activations.csv (want_acts).
 */
static double llama_micro_steps(Llama *model, const DataLoader *dl, int K, int want_acts, FILE *acts_csv,
                                int step) {
    int B = model->B, T = model->T;
    double loss[K];
    const void *sum = model->grads;
    for (int k = 0; k < K; k++) {
        long row = ((long)dp.rank * K + k) * B * T;
        model->fuse_classifier = 1; // the backward follows at once
        llama_forward(model, dl->inputs + row, dl->targets + row, B, T);
        model->fuse_classifier = 0;
        if (k == 0 && want_acts && acts_csv) activations_log(model, step, acts_csv);
        loss[k] = model->loss;
        llama_zero_grad(model);
        llama_backward(model);
        if (K > 1) sum = dp_accumulate(model->grads, model->num_params, sizeof(real), k);
    }
    int NK = dp.ranks * K;
    dp_reduce_grads(sum, model->grads, model->num_params, sizeof(real), 1.0 / NK);
    return dp_mean_loss(loss, K);
}

// tok: the vocabulary for text samples, NULL for none.
static void train(Llama *model, const Settings *s, DataLoader *train_dl, DataLoader *val_dl, TrainState *st,
                  const Tokenizer *tok) {
    OptConfig opt = opt_config(s);
    TvrConfig tvr = tvr_config(s);
    // rank 0 alone writes the logs and samples; every rank runs the same steps, TVR
    // and statistics on the same (all-gathered) parameters (docs/parallel.md)
    int lead = dp.rank == 0, K = s->grad_accum > 0 ? s->grad_accum : 1;
    Logs logs;
    memset(&logs, 0, sizeof(logs));
    if (lead) logs = logs_open(s->out, s->resume ? st->step : -1, 0);
    if (st->step == 0) {
        weights_pass(model, &tvr, 0, 0, logs.weights);
        if (val_dl && s->steps > 0) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, 0, v);
        }
    }
    while (st->step < s->steps) {
        int step = st->step + 1;
        double t0 = wall_seconds();
        dataloader_next(train_dl); // the step's global batch, on every rank
        double loss = llama_micro_steps(model, train_dl, K, step == 1 || stats_due(s->stats_every, step), logs.acts,
                                        step);
        double norm = clip_grad_norm(model, opt.grad_clip);
        double lr = lr_at(&opt, step);
        int skip = nonfinite_step(s, &logs, step, loss, norm); // stops the run unless --skip-nonfinite 1
        if (!skip) {
            adamw_update(model, &opt, lr, step); // this rank's shard
            dp_allgather_params(model->params, model->num_params, sizeof(real));
        }
        int do_tvr = !skip && tvr_due(&tvr, step);
        double t_tvr = wall_seconds();
        if (do_tvr || (!skip && stats_due(s->stats_every, step))) weights_pass(model, &tvr, step, do_tvr, logs.weights);
        double tvr_ms = do_tvr ? 1000 * (wall_seconds() - t_tvr) : -1;
        st->step = step;
        st->shard = train_dl->shard;
        st->pos = dataloader_position(train_dl);
        if (lead) {
            log_step(&logs, step, s->steps, loss, lr, norm, 1000 * (wall_seconds() - t0), global_batch(s) * model->T,
                     tvr_ms);
        }
        if (val_dl && val_due(s, step)) {
            double v = evaluate(model, val_dl, s->val_batches);
            if (lead) log_val(&logs, step, v);
        }
        if (lead && tok && sample_due(s, step)) {
            sample_run(model, llama_next_logits, model->config.max_seq_len, s, tok, step);
        }
        if (checkpoint_due(s, step)) save_checkpoint(model, st, s->out);
        fflush(stdout);
    }
    save_checkpoint(model, st, s->out);
    if (lead) logs_close(&logs);
}

#ifndef TESTING
int main(int argc, char **argv) {
    dp_init(&argc, &argv); // MPI's ranks, when built with it (common/dp.h)
    Settings s;
    int arch_given;
    int seq_len_given = settings_parse(&s, argc, argv, USAGE, 0, &arch_given);
    if (s.threads > 0) omp_set_num_threads(s.threads);
    set_precision(s.precision);

    // the model: a fresh one from the flags, or the architecture from a checkpoint
    char ckpt[4200];
    LlamaConfig config = run_config(&s, seq_len_given, arch_given, ckpt, sizeof(ckpt));
    if (ckpt[0]) { // the file's size against its header before any allocation the header sizes
        long n = 0;
        for (int i = 0; i < NUM_PARAM_TENSORS; i++) n += param_count(&config, i);
        llama_check_size(ckpt, n);
    }
    int32_t shape[STATE_CONFIG_INTS];
    int nshape = llama_config_ints(&config, shape);
    if (s.resume) resume_settings(&s, seq_len_given, s.resume, STATE_MAGIC, "train_llama", shape, nshape);
    if (!s.generate) memory_check(&s, llama_memory(&config, s.batch, s.seq_len));
    Llama model;
    llama_build(&model, config);
    llama_shard_moments(&model);
    Tokenizer tok_store, *tok = load_tokenizer(&s, config.vocab, &tok_store);
    if (tok && !s.generate && !s.kv_cache) {
        printf("note: samples during training use the KV cache (--kv-cache 0 is for --generate)\n");
    }
    if (s.generate > 0) {
        llama_load_params(&model, ckpt);
        llama_decoder(&model)->kv_cache = s.kv_cache;
        if (!s.kv_cache) llama_alloc_acts(&model, 1, config.max_seq_len);
        generate_run(&model, llama_next_logits, config.max_seq_len, &s, tok,
                     s.kv_cache ? "with the KV cache" : "no cache: the prefix recomputed for every token");
        tokenizer_free(tok);
        llama_free(&model);
        return 0;
    }
    if (s.eval_only) {
        eval_run(&model, &s, ckpt);
        if (tok) tokenizer_free(tok);
        llama_free(&model);
        return 0;
    }
    // data first: a bad shard is reported before any work is done
    DataLoader train_dl, val_dl;
    data_open(&s, &train_dl, &val_dl, s.seq_len, config.vocab);
    if (dp.rank == 0) ensure_dir(s.out);
    llama_alloc_acts(&model, s.batch, s.seq_len);

    TrainState st = state_new(&s, shape, nshape);
    Rng rng;
    rng_seed(&rng, (uint64_t)s.seed);
    if (s.init_from) {
        llama_load_params(&model, ckpt);
    } else if (!s.resume) { // a resumed run reads its parameters from state.bin below
        InitScheme scheme = !strcmp(s.init, "lir")        ? INIT_LIR
                            : !strcmp(s.init, "residual") ? INIT_RESIDUAL
                                                          : INIT_PLAIN;
        llama_init(&model, scheme, s.init_std, &rng);
    }
    if (s.resume) {
        char path[4200];
        state_load(&model, &st, run_file(path, sizeof(path), s.resume, "state.bin"));
        state_resume(&s, &st, &rng, &train_dl);
    }
    st.rng = rng.s;
    // every rank starts from the same parameters, step and data position (a rank that read
    // another checkpoint or shard set stops the run here rather than train apart)
    if (dp.ranks > 1) {
        uint64_t h = dp_hash(DP_HASH0, model.params, sizeof(real) * model.num_params);
        long where[4] = {st.step, st.shard, st.pos, global_batch(&s) * s.seq_len};
        dp_check_same("model, step or data position", dp_hash(h, where, sizeof(where)));
    }
    printf("train_llama: L=%d C=%d NH=%d NKV=%d F=%d V=%d T=%d | %ld parameters | B=%d | %d threads\n", config.layers,
           config.dim, config.heads, config.kv_heads, config.ffn, config.vocab, s.seq_len, model.num_params, s.batch,
           omp_get_max_threads());
    if (dp.ranks > 1 || s.grad_accum > 1) {
        printf("data parallel: %d ranks x %d micro-steps x B=%d = %ld rows a step%s\n", dp.ranks,
               s.grad_accum, s.batch, global_batch(&s), dp.ranks > 1 ? " | ZeRO-1: AdamW's m, v sharded" : "");
    }
    printf("init %s sigma %g | tvr target %g every %d | steps %d from %d | out %s\n", ckpt[0] ? ckpt : s.init,
           s.init_std, s.tvr_target, s.tvr_every, s.steps, st.step, s.out);
    printf("matmuls: %s\n", gemm_kernel->name);
    double t0 = wall_seconds();
    train(&model, &s, &train_dl, have_val(&s) ? &val_dl : NULL, &st, tok);
    printf("done: %d steps in %.1f s; checkpoint in %s\n", st.step, wall_seconds() - t0, s.out);
    data_close(&s, &train_dl, &val_dl);
    if (tok) tokenizer_free(tok);
    llama_free(&model);
    return 0;
}
#endif
