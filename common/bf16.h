/*
 * common/bf16.h: bf16 on the GPU (train_llama.cu's --precision bf16; docs/gpu.md, "bf16"). A
 * bf16 value is the top 16 bits of a float, as cuBLAS's CUDA_R_16BF reads it; the struct keeps
 * it from mixing with integers. bf16_round is common/gemm_bf16.h's rule (nearest, ties to even,
 * in integers: subnormals round like any value, a NaN stays a quiet NaN), not
 * __float2bfloat16, so that the GPU rounds every value exactly as train_llama.c does.
 * Include in CUDA code (or under test/emu/cuda_emu.h): the functions are __host__ __device__.
 */
#ifndef RESCALE_BF16_H
#define RESCALE_BF16_H

#include <stdint.h>
#include <string.h>

typedef struct {
    uint16_t bits;
} bf16;

__host__ __device__ inline bf16 bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    bf16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (uint16_t)((u >> 16) | 0x40);
    } else {
        h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
    }
    return h;
}
__host__ __device__ inline float bf16_to_float(bf16 h) {
    uint32_t u = (uint32_t)h.bits << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}
// f rounded to bf16, as a float: what a bf16 matmul reads (the flash kernels round on load)
__host__ __device__ inline float bf16_rounded(float f) { return bf16_to_float(bf16_round(f)); }

#endif // RESCALE_BF16_H
