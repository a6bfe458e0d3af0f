/*
 * common/cuda_reduce.h: warp and block reductions (sum in float and double, max),
 * shared by the CUDA trainers (through common/cuda_common.h) and the dev/cuda
 * workbenches. Block versions need blockDim.x a multiple of 32, at most 1024.
 */
#ifndef RESCALE_CUDA_REDUCE_H
#define RESCALE_CUDA_REDUCE_H

#include <cuda_runtime.h>
#include <math.h>

__device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide reductions (blockDim.x a multiple of 32, at most 1024). Every
// thread gets the result. The first __syncthreads lets a block call them twice
// in a row: nobody writes the shared slots while another warp still reads them.
__device__ inline float block_sum(float v) {
    __shared__ float slot[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) slot[warp] = v;
    __syncthreads();
    return warp_sum(lane < nwarps ? slot[lane] : 0.0f);
}
__device__ inline double block_sum_d(double v) {
    __shared__ double slot_d[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) slot_d[warp] = v;
    __syncthreads();
    return warp_sum_d(lane < nwarps ? slot_d[lane] : 0.0);
}
__device__ inline float block_max(float v) {
    __shared__ float slot_m[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) slot_m[warp] = v;
    __syncthreads();
    return warp_max(lane < nwarps ? slot_m[lane] : -INFINITY);
}

#endif // RESCALE_CUDA_REDUCE_H
