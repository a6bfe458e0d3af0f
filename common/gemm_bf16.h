/*
 * common/gemm_bf16.h: the bf16 pieces of train_llama.c's matmul (`--precision bf16`).
 *
 * train_llama.c's gemm() is one blocked loop (pack B, pack A, run a micro-kernel over
 * register tiles) that takes its packing and its micro-kernel from a GemmKernel. This
 * header supplies the bf16 ones; the fp32 one lives in train_llama.c beside the loop.
 *
 * What bf16 means here (docs/perf.md, "bf16 on the CPU"): every matmul INPUT is rounded
 * to bf16 (round to nearest even) as it is packed, the products of two bf16 numbers are
 * exact in fp32 and are summed in fp32; the output is fp32, and nothing stored is bf16.
 * Three kernels compute that same function and differ only in the order of the sums:
 *   amx      Intel AMX tiles: a 32 x 32 block of C in four 16 x 16 fp32 tiles,
 *            _tile_dpbf16ps on 16 x 32 bf16 tiles of A and 32 x 16 of B
 *   avx512   AVX512-BF16 (vdpbf16ps): an 8 x 32 block of C in sixteen zmm registers,
 *            each instruction adding the products of two consecutive k
 *   ref      the fp32 micro-kernel on bf16-rounded inputs: any x86-64, the workbench's and
 *            the tests' reference for the other two, and the fastest where vdpbf16ps is slow
 * bf16_pick() chooses the fastest the CPU and the kernel allow (CPUID, then Linux's
 * permission to use AMX tiles; avx512 only where vdpbf16ps outruns the fp32 FMA, timed at
 * start, since some Intel CPUs run it at half the FMA's rate); RESCALE_BF16_KERNEL=amx|avx512|ref
 * forces one.
 *
 * Packed layouts (both kernels read B the same way; k is padded to 32 with zeros):
 *   B  per 32-deep block of k: [16 k-pairs][32 columns][2], the "VNNI" pairs of
 *      consecutive k side by side, so one 64-byte row is 16 columns x 2 k
 *   A  amx:    per 32-deep block: [32 rows][32 k], a tile row is one row's 32 k
 *      avx512: per k-pair: [8 rows][2], the pair one row broadcasts
 */
#ifndef RESCALE_GEMM_BF16_H
#define RESCALE_GEMM_BF16_H

#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "utils.h"

// fp32 -> bf16, round to nearest even (a NaN stays a NaN, quiet)
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline float bf16_to_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}
// f rounded to the nearest bf16, as a float (the ref kernel's inputs)
static inline float bf16_rounded(float f) { return bf16_to_float(bf16_round(f)); }

#define BF16_KB 32 // k per packed block: one AMX tile row of bf16

// bf16_round's bits without a branch, so that gcc vectorises the packing loops
static inline uint32_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1)) >> 16, nan = (u >> 16) | 0x40;
    return (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded;
}

// src(i, k) = src[i*s_i + k*s_k] for i < w, k < kc; zero outside (a partial strip)
static inline uint32_t bf16_at(const float *src, long s_i, long s_k, int i, int k, int w, int kc) {
    return i < w && k < kc ? bf16_bits(src[i * s_i + k * s_k]) : 0;
}

// the 32-bit word every packed layout stores: bf16 of src(i, k) low, of src(i, k+1) high
static inline uint32_t bf16_pair_at(const float *src, long s_i, long s_k, int i, int k, int w, int kc) {
    return bf16_at(src, s_i, s_k, i, k, w, kc) | bf16_at(src, s_i, s_k, i, k + 1, w, kc) << 16;
}

/*
 * The packing loops for full strips, 16 values at a time in AVX-512 registers (a scalar
 * loop that transposes costs more than the AMX products it feeds). Rounding is bf16_bits'
 * integer rule, not vcvtneps2bf16, which flushes subnormal inputs to zero: every path
 * rounds every value the same way.
 */
#define V16 __attribute__((target("avx512f,avx512bw"))) static inline

// 16 floats -> 16 words holding their bf16 in the low half
V16 __m512i bf16_bits16(__m512 x) {
    __m512i u = _mm512_castps_si512(x);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    __m512i mag = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
    __mmask16 nan = _mm512_cmpgt_epu32_mask(mag, _mm512_set1_epi32(0x7f800000));
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
}
// rows a and b (16 floats each) -> 16 words: bf16(a[i]) low, bf16(b[i]) high
V16 __m512i bf16_pair_rows(const float *a, const float *b) {
    return _mm512_or_si512(bf16_bits16(_mm512_loadu_ps(a)), _mm512_slli_epi32(bf16_bits16(_mm512_loadu_ps(b)), 16));
}
// 32 consecutive floats -> 16 words: the pairs (x[2i], x[2i+1])
V16 __m512i bf16_pair_run(const float *x) {
    const __m512i even = _mm512_set_epi16(62, 60, 58, 56, 54, 52, 50, 48, 46, 44, 42, 40, 38, 36, 34, 32, 30, 28, 26,
                                          24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    return _mm512_permutex2var_epi16(bf16_bits16(_mm512_loadu_ps(x)), even, bf16_bits16(_mm512_loadu_ps(x + 16)));
}
// r[i][j] -> r[j][i] for a 16 x 16 block of 32-bit words
V16 void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { // lane j of r[i + c]: column 4j + c of rows i..i+3
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        t[c] = _mm512_shuffle_i32x4(r[c], r[c + 4], 0x88);
        t[c + 4] = _mm512_shuffle_i32x4(r[c], r[c + 4], 0xdd);
        t[c + 8] = _mm512_shuffle_i32x4(r[c + 8], r[c + 12], 0x88);
        t[c + 12] = _mm512_shuffle_i32x4(r[c + 8], r[c + 12], 0xdd);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_shuffle_i32x4(t[c], t[c + 8], 0x88);
        r[c + 8] = _mm512_shuffle_i32x4(t[c], t[c + 8], 0xdd);
        r[c + 4] = _mm512_shuffle_i32x4(t[c + 4], t[c + 12], 0x88);
        r[c + 12] = _mm512_shuffle_i32x4(t[c + 4], t[c + 12], 0xdd);
    }
}
// 16 floats as the ref kernel packs them: rounded to bf16 (kept as floats) with `round`,
// else as they are
V16 __m512i packed16(__m512 x, int round) {
    return round ? _mm512_slli_epi32(bf16_bits16(x), 16) : _mm512_castps_si512(x);
}
// fp32's A strip (train_llama.c's pack_strip): 8 rows s_i apart, 16 consecutive k each,
// to 16 runs of the 8 rows' values at one k (the transpose's rows 8..15 repeat 0..7);
// with `round`, each value rounded to bf16 (the ref kernel's A)
V16 void pack8x16(float *dst, const float *src, long s_i, int round) {
    __m512i r[16];
    for (int i = 0; i < 8; i++) r[i] = r[i + 8] = packed16(_mm512_loadu_ps(src + i * s_i), round);
    transpose16(r);
    for (int k = 0; k < 16; k++) _mm256_storeu_si256((__m256i *)(dst + k * 8), _mm512_castsi512_si256(r[k]));
}
// 16 floats rounded to bf16, as floats (the ref kernel's packing of a contiguous run)
V16 void round16(float *dst, const float *src) {
    _mm512_storeu_si512(dst, packed16(_mm512_loadu_ps(src), 1));
}
// fp32's B strip: 16 columns s_i apart, 16 consecutive k each, to 16 runs of the 16
// columns' values at one k, ld floats apart; `round` as in pack8x16
V16 void pack16x16(float *dst, long ld, const float *src, long s_i, int round) {
    __m512i r[16];
    for (int i = 0; i < 16; i++) r[i] = packed16(_mm512_loadu_ps(src + i * s_i), round);
    transpose16(r);
    for (int k = 0; k < 16; k++) _mm512_storeu_si512(dst + k * ld, r[k]);
}

/*
 * 32 values of k x 16 of i, src(i, k) = src[i*s_i + k*s_k] with one of the strides 1,
 * to 16 words per i: word kp of row i pairs k = 2kp and 2kp+1, stored at dst + i*ld.
 * (The AMX A strip's tile rows; with the transpose's roles read the other way, B's.)
 */
V16 void bf16_pairs_by_i(uint32_t *dst, long ld, const float *src, long s_i, long s_k) {
    __m512i r[16];
    if (s_k == 1) { // each i's 32 k are consecutive
        for (int i = 0; i < 16; i++) r[i] = bf16_pair_run(src + i * s_i);
    } else { // s_i == 1: each k's 16 i are consecutive; pair rows then transpose
        for (int kp = 0; kp < 16; kp++) r[kp] = bf16_pair_rows(src + 2 * kp * s_k, src + (2 * kp + 1) * s_k);
        transpose16(r);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + i * ld, r[i]);
}
// The same block as 16 words per kp in r[kp]: word i pairs k = 2kp and 2kp+1 (B's layout)
V16 void bf16_pairs_k(__m512i r[16], const float *src, long s_i, long s_k) {
    if (s_i == 1) {
        for (int kp = 0; kp < 16; kp++) r[kp] = bf16_pair_rows(src + 2 * kp * s_k, src + (2 * kp + 1) * s_k);
    } else { // s_k == 1
        for (int i = 0; i < 16; i++) r[i] = bf16_pair_run(src + i * s_i);
        transpose16(r);
    }
}
V16 void bf16_pairs_by_k(uint32_t *dst, long ld, const float *src, long s_i, long s_k) {
    __m512i r[16];
    bf16_pairs_k(r, src, s_i, s_k);
    for (int kp = 0; kp < 16; kp++) _mm512_storeu_si512(dst + kp * ld, r[kp]);
}
// ... with i 0..7 to lo + kp*8 and i 8..15 to hi + kp*8 (two 8-row strips of AVX512-BF16's A)
V16 void bf16_pairs_by_k_split(uint32_t *lo, uint32_t *hi, const float *src, long s_i, long s_k) {
    __m512i r[16];
    bf16_pairs_k(r, src, s_i, s_k);
    for (int kp = 0; kp < 16; kp++) {
        _mm256_storeu_si256((__m256i *)(lo + kp * 8), _mm512_castsi512_si256(r[kp]));
        _mm256_storeu_si256((__m256i *)(hi + kp * 8), _mm512_extracti64x4_epi64(r[kp], 1));
    }
}

/*
 * B panel (kc_pad x 32 columns) as 32-bit words: word [k/2][n] holds the bf16 of B(k, n) in
 * its low half and of B(k+1, n) in its high half. Full 32-deep blocks of a full panel go 16
 * columns at a time through the registers; the edges take the general loop.
 */
static void bf16_pack_b(void *dst_, const float *src, long s_n, long s_k, int w, int kc, int kc_pad) {
    uint32_t *dst = (uint32_t *)dst_;
    int kfull = w == 32 && (s_n == 1 || s_k == 1) ? kc / BF16_KB * BF16_KB : 0;
    for (int kb = 0; kb < kfull; kb += BF16_KB) {
        for (int n0 = 0; n0 < 32; n0 += 16) {
            bf16_pairs_by_k(dst + (kb / 2) * 32 + n0, 32, src + n0 * s_n + kb * s_k, s_n, s_k);
        }
    }
    for (int kp = kfull / 2; kp < kc_pad / 2; kp++) {
        for (int n = 0; n < 32; n++) {
            dst[kp * 32 + n] = bf16_pair_at(src, s_n, s_k, n, 2 * kp, w, kc);
        }
    }
}

// A's block of w rows for AMX: strips of 32 rows x kc_pad, each per 32-deep block of k
// [32 rows][32 k] (16 words a row). Block of k by block of k, all strips in each, so a
// transposed A (s_m == 1) is read in runs of w values.
static void amx_pack_a(void *dst_, const float *src, long s_m, long s_k, int w, int kc, int kc_pad) {
    uint32_t *dst = (uint32_t *)dst_;
    int strips = (w + 31) / 32;
    int kfull = s_m == 1 || s_k == 1 ? kc / BF16_KB * BF16_KB : 0;
    for (int kb = 0; kb < kc_pad; kb += BF16_KB) {
        // a transposed A's next block of k (prefetch_bytes; for lm_head's dW on one core at
        // mid's shape, 124-138 ms without, 104-110 ms with)
        for (int k = kb + BF16_KB; s_m == 1 && k < kb + 2 * BF16_KB && k < kfull; k++)
            prefetch_bytes(src + k * s_k, sizeof(float) * w);
        for (int j = 0; j < strips; j++) {
            uint32_t *blk = dst + (long)j * 16 * kc_pad + (long)kb * 16; // 32 rows x 16 words
            const float *sj = src + (long)j * 32 * s_m;
            int wj = w - j * 32 < 32 ? w - j * 32 : 32;
            if (kb < kfull && wj == 32) {
                for (int m0 = 0; m0 < 32; m0 += 16) bf16_pairs_by_i(blk + m0 * 16, 16, sj + m0 * s_m + kb * s_k, s_m, s_k);
                continue;
            }
            for (int m = 0; m < 32; m++) {
                for (int kp = 0; kp < BF16_KB / 2; kp++) {
                    blk[m * 16 + kp] = bf16_pair_at(sj, s_m, s_k, m, kb + 2 * kp, wj, kc);
                }
            }
        }
    }
}

// A's block of w rows for AVX512-BF16: strips of 8 rows, 32-bit words [k/2][m], B's pairing.
// Full 32-deep blocks of two full strips at a time go through the registers; the edges take
// the general loop.
static void avx512_pack_a(void *dst_, const float *src, long s_m, long s_k, int w, int kc, int kc_pad) {
    uint32_t *dst = (uint32_t *)dst_;
    int kfull = s_m == 1 || s_k == 1 ? kc / BF16_KB * BF16_KB : 0, jfull = w / 16 * 2;
    for (int j = 0; j < jfull; j += 2) {
        uint32_t *d = dst + (long)j * 4 * kc_pad;
        for (int kb = 0; kb < kfull; kb += BF16_KB) {
            bf16_pairs_by_k_split(d + kb * 4, d + 4 * kc_pad + kb * 4, src + (long)j * 8 * s_m + kb * s_k, s_m, s_k);
        }
    }
    for (int j = 0; j < (w + 7) / 8; j++) {
        const float *sj = src + (long)j * 8 * s_m;
        uint32_t *d = dst + (long)j * 4 * kc_pad;
        int wj = w - j * 8 < 8 ? w - j * 8 : 8;
        for (int kp = j < jfull ? kfull / 2 : 0; kp < kc_pad / 2; kp++) {
            for (int m = 0; m < 8; m++) {
                d[kp * 8 + m] = bf16_pair_at(sj, s_m, s_k, m, 2 * kp, wj, kc);
            }
        }
    }
}

// Write (or add) an mr x nr corner of a 32-wide fp32 tile buffer into C.
static inline void tile_to_c(float *c, long ldc, const float *t, int mr, int nr, int add) {
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        const float *ti = t + i * 32;
        if (add) {
            for (int j = 0; j < nr; j++) ci[j] += ti[j];
        } else {
            memcpy(ci, ti, sizeof(float) * nr);
        }
    }
}

// ---------------------------------------------------------------------------
// AMX

// Linux hands out AMX's 8 KB of tile registers only to a process that asks
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} TileConfig;

// tiles 0-3: C (16 rows x 16 fp32); 4, 5: A (16 rows x 32 bf16); 6, 7: B (16 k-pairs x 16 columns x 2)
__attribute__((target("amx-tile"))) static void amx_begin(void) {
    static __thread int configured = 0;
    if (configured) return;
    TileConfig cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    // not _tile_loadconfig: gcc 12 does not see that the builtin reads all 64 bytes and drops
    // part of the memset above (an invalid configuration, then SIGSEGV); the asm's input does
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg));
    configured = 1;
}

/*
 * C (mr x nr, at most 32 x 32) = or += A (32 x kc_pad) . B (kc_pad x 32). Each step of 32 k
 * loads two tiles of A and two of B and issues four tile products (16 x 16 x 32 multiply-adds
 * each), so every element of C is summed over k in the same order whatever the thread count.
 */
__attribute__((target("amx-tile,amx-bf16"))) static void amx_kernel(int kc_pad, const void *a_, const void *b_,
                                                                      float *c, long ldc, int mr, int nr, int add) {
    const char *a = (const char *)a_, *b = (const char *)b_;
    // a full tile of C is loaded and stored in place; a partial one goes through t
    float t[32 * 32] __attribute__((aligned(64)));
    int full = mr == 32 && nr == 32;
    float *cc = full ? c : t;
    long ld = full ? ldc : 32;
    if (full && add) {
        _tile_loadd(0, cc, ld * 4);
        _tile_loadd(1, cc + 16, ld * 4);
        _tile_loadd(2, cc + 16 * ld, ld * 4);
        _tile_loadd(3, cc + 16 * ld + 16, ld * 4);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (int k = 0; k < kc_pad; k += BF16_KB) {
        const char *ak = a + (long)k * 32 * 2, *bk = b + (long)k * 32 * 2; // 2 KB blocks
        _tile_loadd(4, ak, 64);
        _tile_loadd(5, ak + 16 * 64, 64);
        _tile_loadd(6, bk, 128);
        _tile_loadd(7, bk + 64, 128);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, cc, ld * 4);
    _tile_stored(1, cc + 16, ld * 4);
    _tile_stored(2, cc + 16 * ld, ld * 4);
    _tile_stored(3, cc + 16 * ld + 16, ld * 4);
    if (!full) tile_to_c(c, ldc, t, mr, nr, add);
}

// ---------------------------------------------------------------------------
// AVX512-BF16

__attribute__((target("avx512f,avx512bf16"))) static void avx512bf16_kernel(int kc_pad, const void *a_, const void *b_,
                                                                              float *c, long ldc, int mr, int nr,
                                                                              int add) {
    const uint32_t *a = (const uint32_t *)a_; // one bf16 pair per (k-pair, row)
    const char *b = (const char *)b_;
    __m512 acc[8][2];
    for (int i = 0; i < 8; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int kp = 0; kp < kc_pad / 2; kp++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (long)kp * 128);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (long)kp * 128 + 64);
        for (int i = 0; i < 8; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[kp * 8 + i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, b1);
        }
    }
    float t[8 * 32] __attribute__((aligned(64)));
    for (int i = 0; i < 8; i++) {
        _mm512_store_ps(t + i * 32, acc[i][0]);
        _mm512_store_ps(t + i * 32 + 16, acc[i][1]);
    }
    tile_to_c(c, ldc, t, mr, nr, add);
}

// ---------------------------------------------------------------------------
// which one this CPU runs

typedef enum { BF16_NONE, BF16_REF, BF16_AVX512, BF16_AMX } Bf16Kernel;
static const char *const BF16_KERNEL_NAMES[] = {"none", "ref", "avx512", "amx"};

static int cpu_has_amx_bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    if (!(d & (1u << 22)) || !(d & (1u << 24))) return 0; // AMX-BF16, AMX-TILE
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) return 0; // OSXSAVE
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return 0; // the OS saves XTILECFG and XTILEDATA
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static int cpu_has_avx512bf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    return (a & (1u << 5)) && __builtin_cpu_supports("avx512f");
}

// How many times the fp32 FMA's flop rate vdpbf16ps reaches on this core: fourteen
// independent chains of each instruction (no memory, no dependence between chains), the
// best of seven alternating trials of about 30 microseconds each. CPUID cannot tell: an
// Emerald Rapids Xeon whose hypervisor hides AMX ran vdpbf16ps at 80 GFLOP/s a core against
// 160 for vfmadd231ps (0.5), where Zen 5 runs it at twice the FMA's rate. The two rates
// differ by 2x one way or the other, so the verdict does not depend on the noise of a
// shared machine.
#define CHAINS14(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13)
#define DPBF16_CHAIN(i) "vdpbf16ps %%zmm14, %%zmm15, %%zmm" #i "\n\t"
#define FMA_CHAIN(i) "vfmadd231ps %%zmm14, %%zmm15, %%zmm" #i "\n\t"
#define ZMM0_15 "zmm0", "zmm1", "zmm2", "zmm3", "zmm4", "zmm5", "zmm6", "zmm7", "zmm8", "zmm9", \
                "zmm10", "zmm11", "zmm12", "zmm13", "zmm14", "zmm15"
// zeroed operands each round: no denormal or NaN slows either instruction
#define TIME_CHAINS(CHAIN)                                                                                  \
    for (int it = 0; it < ITERS; it++)                                                                      \
        __asm__ volatile("vpxord %%zmm14, %%zmm14, %%zmm14\n\tvpxord %%zmm15, %%zmm15, %%zmm15\n\t" CHAINS14(CHAIN)::: ZMM0_15)
__attribute__((target("avx512f,avx512bf16"))) static double dpbf16_over_fma(void) {
    enum { ITERS = 2048 };
    double best_dp = 1e30, best_fma = 1e30;
    for (int trial = 0; trial < 7; trial++) {
        double t0 = wall_seconds();
        TIME_CHAINS(DPBF16_CHAIN);
        double t1 = wall_seconds();
        TIME_CHAINS(FMA_CHAIN);
        double t2 = wall_seconds();
        if (t1 - t0 < best_dp) best_dp = t1 - t0;
        if (t2 - t1 < best_fma) best_fma = t2 - t1;
    }
    return 2.0 * best_fma / best_dp; // vdpbf16ps does 64 flops a zmm, vfmadd231ps 32
}

// The kernel to run: RESCALE_BF16_KERNEL if set (an error names it when this CPU
// lacks it), else the fastest this CPU has: AMX, then AVX512-BF16 where vdpbf16ps beats
// the fp32 FMA (dpbf16_over_fma), else ref. Says on stderr which, once, when it is not AMX.
static Bf16Kernel bf16_pick(void) {
    int amx = cpu_has_amx_bf16(), avx = cpu_has_avx512bf16();
    Bf16Kernel k = amx ? BF16_AMX : avx ? BF16_AVX512 : BF16_REF;
    const char *env = getenv("RESCALE_BF16_KERNEL");
    if (env && *env) {
        if (!strcmp(env, "amx")) {
            if (!amx) die("RESCALE_BF16_KERNEL=amx, but this CPU (or the kernel) offers no AMX bf16 tiles");
            k = BF16_AMX;
        } else if (!strcmp(env, "avx512")) {
            if (!avx) die("RESCALE_BF16_KERNEL=avx512, but this CPU has no AVX512-BF16");
            k = BF16_AVX512;
        } else if (!strcmp(env, "ref")) {
            k = BF16_REF;
        } else {
            die("RESCALE_BF16_KERNEL=%s: expected amx, avx512 or ref", env);
        }
    } else if (k == BF16_AVX512) { // timed only here, where it decides
        double ratio = dpbf16_over_fma();
        if (ratio <= 1.25) {
            k = BF16_REF;
            fprintf(stderr, "note: vdpbf16ps reaches %.2f times the fp32 FMA's flop rate on this CPU (no AMX here): "
                            "bf16 matmuls run on the fp32 micro-kernel with bf16-rounded inputs, the same products "
                            "summed in another order (RESCALE_BF16_KERNEL=avx512 forces AVX512-BF16)\n", ratio);
        }
    } else if (k == BF16_REF) {
        fprintf(stderr, "note: this CPU has neither AMX nor AVX512-BF16: bf16 matmuls run on the fp32 "
                        "micro-kernel with bf16-rounded inputs (the same numbers, slowly)\n");
    }
    return k;
}

#endif
