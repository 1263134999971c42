// pq_score.cu -- linear scoring of IVF-PQ encoded candidates through per-unit lookup tables
// (seals_gpu.kernels). Self-contained: no CUDA headers (NVRTC / CuPy RawModule and `nvcc -c` alike).
//
// With residual encoding an item is reconstructed as x^ = c_list + [q_0[code_0], ..., q_{m-1}[code_{m-1}]]
// (coarse centroid + one 256-entry sub-codebook per sub-space), so for a unit with weights w_u:
//   w_u . x^ = w_u . c_list + sum_m LUT_u[m][code_m],   LUT_u[m][j] = w_u[m-th sub-vector] . q_m[j].
//
// Inputs (device pointers, row-major, contiguous):
//   codes     (M, m_sub)     uint8    PQ codes of the CSR candidates (8 bits per sub-quantizer)
//   list_ids  (M,)           int32    inverted list of each candidate (read only when coarse_mode == 0)
//   offsets   (U+1,)         int64    CSR bounds: unit u owns candidates [offsets[u], offsets[u+1])
//   lut       (U, m_sub, 256) float32 per-unit lookup tables
//   coarse    coarse_mode 0: (U, nlist) float32 table w_u . c_l, indexed by list_ids
//             coarse_mode 1: (M,) float32, the coarse term already gathered per candidate
//   bias      (U,)           float32
// Output:
//   out       (M,)           float32  logits w_u . x^ + b_u, in CSR order
//
// Launch: pq_logits_u32 (m_sub % 4 == 0 and `codes` 4-byte aligned; reads codes 4 bytes at a time) or
// pq_logits_u8 (byte loads). grid (gx, min(U, 65535)), block PQ_THREADS = 256, one thread per candidate
// (grid-stride over the unit's segment), dynamic smem = m_sub * 256 * 4 bytes holding LUT_u (opt in beyond
// 48 KB for m_sub > 48). Lookups hit shared memory; the coarse table is read through the read-only cache.

#define PQ_THREADS 256

template <bool U32>
__device__ __forceinline__ void pq_logits_impl(const unsigned char* __restrict__ codes, int m_sub,
                                               const int* __restrict__ list_ids,
                                               const long long* __restrict__ offsets,
                                               const float* __restrict__ lut, const float* __restrict__ coarse,
                                               int coarse_mode, int nlist, const float* __restrict__ bias, int U,
                                               float* __restrict__ out) {
    extern __shared__ float s_lut[];
    const int table = m_sub * 256;
    for (int u = blockIdx.y; u < U; u += gridDim.y) {
        const long long lo = offsets[u];
        const long long hi = offsets[u + 1];
        const long long first = lo + (long long)blockIdx.x * blockDim.x;
        if (first >= hi) continue;  // block-uniform
        __syncthreads();            // the previous unit's lookups are done
        const float* lu = lut + (long long)u * table;
        for (int i = threadIdx.x; i < table; i += blockDim.x) s_lut[i] = lu[i];
        __syncthreads();
        const float bu = bias[u];
        const long long stride = (long long)gridDim.x * blockDim.x;
        for (long long i = first + threadIdx.x; i < hi; i += stride) {
            const unsigned char* c = codes + i * (long long)m_sub;
            float acc = 0.0f;
            if (U32) {
                const unsigned int* c4 = reinterpret_cast<const unsigned int*>(c);
                for (int m = 0; m < m_sub; m += 4) {
                    const unsigned int w = __ldg(c4 + (m >> 2));
                    acc += s_lut[m * 256 + (w & 255u)];
                    acc += s_lut[(m + 1) * 256 + ((w >> 8) & 255u)];
                    acc += s_lut[(m + 2) * 256 + ((w >> 16) & 255u)];
                    acc += s_lut[(m + 3) * 256 + (w >> 24)];
                }
            } else {
                for (int m = 0; m < m_sub; ++m) acc += s_lut[m * 256 + __ldg(c + m)];
            }
            float ct;
            if (coarse_mode == 0) {
                ct = __ldg(coarse + (long long)u * nlist + __ldg(list_ids + i));
            } else {
                ct = __ldg(coarse + i);
            }
            out[i] = bu + ct + acc;
        }
    }
}

extern "C" __global__ void __launch_bounds__(PQ_THREADS)
    pq_logits_u32(const unsigned char* __restrict__ codes, int m_sub, const int* __restrict__ list_ids,
                  const long long* __restrict__ offsets, const float* __restrict__ lut,
                  const float* __restrict__ coarse, int coarse_mode, int nlist, const float* __restrict__ bias,
                  int U, float* __restrict__ out) {
    pq_logits_impl<true>(codes, m_sub, list_ids, offsets, lut, coarse, coarse_mode, nlist, bias, U, out);
}

extern "C" __global__ void __launch_bounds__(PQ_THREADS)
    pq_logits_u8(const unsigned char* __restrict__ codes, int m_sub, const int* __restrict__ list_ids,
                 const long long* __restrict__ offsets, const float* __restrict__ lut,
                 const float* __restrict__ coarse, int coarse_mode, int nlist, const float* __restrict__ bias,
                 int U, float* __restrict__ out) {
    pq_logits_impl<false>(codes, m_sub, list_ids, offsets, lut, coarse, coarse_mode, nlist, bias, U, out);
}
