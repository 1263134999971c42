// score_select.cu -- fused segmented score-and-select for SEALS active learning (seals_gpu.kernels).
//
// One round scores, for U units (concept x strategy x mode), the candidates of a CSR batch and keeps the
// top-b of each unit by (score descending, global id ascending). Self-contained: no CUDA headers, so it
// compiles unchanged with NVRTC (CuPy RawModule) and with `nvcc -c`.
//
// Inputs (all device pointers, row-major, contiguous):
//   emb      (N, d)   float32, or float16 passed as raw bits (unsigned short)   embedding matrix (resident)
//   rows     (M,)     int64     row position of each candidate in emb
//   ids      (M,)     int64     global id of each candidate (tie-break key, returned)
//   offsets  (U+1,)   int64     CSR bounds: unit u owns candidates [offsets[u], offsets[u+1]); may be empty
//   W        (U, d)   float32   per-unit weights;   bias (U,) float32
//   kind     (U,)     int8      0 maxent = H(p), 1 mlp = p, 2 id = H(p) * max(x.ref_u, 0)^beta,
//                               p = sigmoid(w_u.x + b_u), H the binary entropy in nats
//   ref      (U, d)   float32   per-unit reference mean (read only for kind-2 units)
//
// Phase 1 -- score_rows_{f32_v4,f32_v1,f16_v8,f16_v1}(...) -> scores (M,) float32
//   grid  (gx, min(U, 65535)), block SCORE_THREADS = 256 (8 warps), dynamic smem = (1 or 2) * d * 4 bytes.
//   Block (x, y) serves unit u = y, y + gridDim.y, ...: it stages w_u (and ref_u for kind 2) in shared
//   memory, then every warp takes SCORE_ROWS = 4 candidates at a time (grid-stride over the segment), its
//   lanes reading the 4 gathered rows with 16-byte loads (float4, or 8 halves; the _v1 variants use
//   scalar loads when d or the base pointer is not 16-byte aligned), accumulating in fp32 and finishing
//   with a butterfly shuffle reduction. Only the M scores are written -- the gathered (M, d) matrix is
//   never materialised. Identical rows give bit-identical scores (fixed reduction order).
//
// Phase 2 -- topb_select(...)
//   grid (n_tasks), block SEL_THREADS = 512, ~13.3 KB static smem. A task is a range [lo, hi) of a
//   (scores, ids) array; its block writes the range's top-min(b, len) sorted (score desc, id asc) at
//   out + task_out[t]. If len > b: 4 radix-select passes (8 bits each, warp-aggregated shared-memory
//   histogram via __match_any_sync) find the b-th largest score key T; if the boundary tie group is
//   larger than needed, 8 more passes over the 64-bit id keys of the score == T items find the id cut,
//   so ties are broken by lower id exactly. The selected b items are compacted into shared memory
//   (ballot + one atomic per warp) and bitonic-sorted there (b <= MAX_B = 1024).
//   Segments longer than one block are reduced on the host side in levels: each level splits every long
//   segment into chunks, a block per chunk keeps the chunk's top-b, and the next level selects among the
//   survivors; the last level runs one block per unit with final_layout = 1 (pads to b with -inf / -1
//   and writes counts). The top-b of the union of disjoint chunks' top-b is the global top-b because the
//   order (score desc, id asc) is total.
//
// Score keys: float -> order-preserving uint32 (NaN is treated as -inf, -0 as +0); ids -> uint64 with the
// sign bit flipped so that signed order is preserved.

#define FULL_MASK 0xffffffffu
#define SCORE_THREADS 256
#define SCORE_ROWS 4
#define SEL_THREADS 512
#define SEL_WARPS (SEL_THREADS / 32)
#define MAX_B 1024
#define ID_SIGN 0x8000000000000000ull

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float half_bits_to_float(unsigned short h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// ------------------------------------------------------------------------------------ strategy score
// Numerically stable in fp32 over the whole range of z: e = exp(-|z|), softplus(+-z) = max(+-z, 0) + log1p(e)
// H(p) = p * softplus(-z) + (1 - p) * softplus(z)   (= -p log p - (1-p) log(1-p))
__device__ __forceinline__ float strategy_score(float z, int kind, float sim, float beta) {
    const float e = expf(-fabsf(z));
    const float l = log1pf(e);
    const float inv = 1.0f / (1.0f + e);
    const float p = z >= 0.0f ? inv : e * inv;
    const float q = z >= 0.0f ? e * inv : inv;
    float s;
    if (kind == 1) {
        s = p;
    } else {
        const float sp_pos = fmaxf(z, 0.0f) + l;   // -log(1 - p)
        const float sp_neg = fmaxf(-z, 0.0f) + l;  // -log(p)
        s = p * sp_neg + q * sp_pos;
        if (kind == 2) s = s * powf(fmaxf(sim, 0.0f), beta);
    }
    if (s != s) s = neg_inf();  // NaN (from NaN inputs) ranks last
    if (s == 0.0f) s = 0.0f;    // canonical +0
    return s;
}

// --------------------------------------------------------------------------------- vector loaders
template <typename T, int VW>
struct Loader;

template <>
struct Loader<float, 4> {
    static __device__ __forceinline__ void load(const float* p, int j, float* out) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p) + j);
        out[0] = v.x; out[1] = v.y; out[2] = v.z; out[3] = v.w;
    }
};

template <>
struct Loader<float, 1> {
    static __device__ __forceinline__ void load(const float* p, int j, float* out) { out[0] = __ldg(p + j); }
};

template <>
struct Loader<unsigned short, 8> {
    static __device__ __forceinline__ void load(const unsigned short* p, int j, float* out) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p) + j);
        const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            out[2 * t] = half_bits_to_float((unsigned short)(w[t] & 0xffffu));
            out[2 * t + 1] = half_bits_to_float((unsigned short)(w[t] >> 16));
        }
    }
};

template <>
struct Loader<unsigned short, 1> {
    static __device__ __forceinline__ void load(const unsigned short* p, int j, float* out) {
        out[0] = half_bits_to_float(__ldg(p + j));
    }
};

// Shared-memory weight loads (the staging area is 16-byte aligned and d % VW == 0 for VW > 1).
template <int VW>
__device__ __forceinline__ void load_smem(const float* s, int j, float* out) {
    if (VW == 1) {
        out[0] = s[j];
    } else {
#pragma unroll
        for (int q = 0; q < VW / 4; ++q) {
            const float4 v = reinterpret_cast<const float4*>(s)[j * (VW / 4) + q];
            out[4 * q] = v.x; out[4 * q + 1] = v.y; out[4 * q + 2] = v.z; out[4 * q + 3] = v.w;
        }
    }
}

// ------------------------------------------------------------------------------------------ phase 1
template <typename T, int VW>
__device__ __forceinline__ void score_rows_impl(const T* __restrict__ emb, int d, const long long* __restrict__ rows,
                                                const long long* __restrict__ offsets, const float* __restrict__ W,
                                                const float* __restrict__ bias, const signed char* __restrict__ kinds,
                                                const float* __restrict__ ref, float beta, int U,
                                                float* __restrict__ scores) {
    extern __shared__ float4 smem_f4[];  // float4 for 16-byte alignment
    float* s_w = reinterpret_cast<float*>(smem_f4);
    float* s_r = s_w + d;  // only used by kind-2 units (then 2 * d floats are allocated)
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int n_warps = blockDim.x >> 5;
    const int nvec = d / VW;
    for (int u = blockIdx.y; u < U; u += gridDim.y) {
        const long long lo = offsets[u];
        const long long hi = offsets[u + 1];
        const long long first = lo + (long long)blockIdx.x * n_warps * SCORE_ROWS;
        if (first >= hi) continue;  // block-uniform: nothing of this segment for this block
        const int k = kinds[u];
        __syncthreads();  // the previous unit's readers are done with the staging area
        const float* wu = W + (long long)u * d;
        const float* ru = ref + (long long)u * d;
        for (int i = threadIdx.x; i < d; i += blockDim.x) {
            s_w[i] = wu[i];
            if (k == 2) s_r[i] = ru[i];
        }
        __syncthreads();
        const float bu = bias[u];
        const long long stride = (long long)gridDim.x * n_warps * SCORE_ROWS;
        for (long long base = first + (long long)warp * SCORE_ROWS; base < hi; base += stride) {
            const T* xr[SCORE_ROWS];
#pragma unroll
            for (int r = 0; r < SCORE_ROWS; ++r) {
                const long long i = base + r;
                const long long row = __ldg(rows + (i < hi ? i : base));
                xr[r] = emb + row * (long long)d;
            }
            float acc[SCORE_ROWS];
            float accr[SCORE_ROWS];
#pragma unroll
            for (int r = 0; r < SCORE_ROWS; ++r) {
                acc[r] = 0.0f;
                accr[r] = 0.0f;
            }
            for (int j = lane; j < nvec; j += 32) {
                float w[VW];
                load_smem<VW>(s_w, j, w);
                float x[SCORE_ROWS][VW];
#pragma unroll
                for (int r = 0; r < SCORE_ROWS; ++r) Loader<T, VW>::load(xr[r], j, x[r]);
#pragma unroll
                for (int r = 0; r < SCORE_ROWS; ++r) {
#pragma unroll
                    for (int t = 0; t < VW; ++t) acc[r] = fmaf(x[r][t], w[t], acc[r]);
                }
                if (k == 2) {
                    float rv[VW];
                    load_smem<VW>(s_r, j, rv);
#pragma unroll
                    for (int r = 0; r < SCORE_ROWS; ++r) {
#pragma unroll
                        for (int t = 0; t < VW; ++t) accr[r] = fmaf(x[r][t], rv[t], accr[r]);
                    }
                }
            }
#pragma unroll
            for (int r = 0; r < SCORE_ROWS; ++r) {
#pragma unroll
                for (int off = 16; off > 0; off >>= 1) {
                    acc[r] += __shfl_xor_sync(FULL_MASK, acc[r], off);
                    accr[r] += __shfl_xor_sync(FULL_MASK, accr[r], off);
                }
            }
#pragma unroll
            for (int r = 0; r < SCORE_ROWS; ++r) {
                if (lane == r && base + r < hi) scores[base + r] = strategy_score(acc[r] + bu, k, accr[r], beta);
            }
        }
    }
}

#define SCORE_ENTRY(NAME, T, VW)                                                                           \
    extern "C" __global__ void __launch_bounds__(SCORE_THREADS)                                          \
        NAME(const T* __restrict__ emb, int d, const long long* __restrict__ rows,                        \
             const long long* __restrict__ offsets, const float* __restrict__ W, const float* __restrict__ bias, \
             const signed char* __restrict__ kinds, const float* __restrict__ ref, float beta, int U,     \
             float* __restrict__ scores) {                                                                \
        score_rows_impl<T, VW>(emb, d, rows, offsets, W, bias, kinds, ref, beta, U, scores);             \
    }

SCORE_ENTRY(score_rows_f32_v4, float, 4)
SCORE_ENTRY(score_rows_f32_v1, float, 1)
SCORE_ENTRY(score_rows_f16_v8, unsigned short, 8)
SCORE_ENTRY(score_rows_f16_v1, unsigned short, 1)

// ------------------------------------------------------------------------------------------ phase 2
__device__ __forceinline__ unsigned int score_key(float s) {
    if (s != s) s = neg_inf();
    if (s == 0.0f) s = 0.0f;
    const unsigned int u = __float_as_uint(s);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_score(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

__device__ __forceinline__ unsigned long long id_key(long long id) { return (unsigned long long)id ^ ID_SIGN; }

// (ka, ia) sorts before (kb, ib): larger score key first, then smaller id key.
__device__ __forceinline__ bool before(unsigned int ka, unsigned long long ia, unsigned int kb, unsigned long long ib) {
    return ka > kb || (ka == kb && ia < ib);
}

// Warp 0 only (all 32 lanes): find the histogram bin holding the `need`-th element (1-based) in scan order
// (bins 255 -> 0 when desc, else 0 -> 255); writes the bin and the count of elements in earlier bins.
__device__ __forceinline__ void find_bin(const unsigned int* hist, unsigned int need, bool desc,
                                         unsigned int* out_digit, unsigned int* out_before) {
    const int lane = threadIdx.x & 31;
    unsigned int local[8];
    unsigned int sum = 0;
#pragma unroll
    for (int t = 0; t < 8; ++t) {
        const int bin = desc ? 255 - (lane * 8 + t) : lane * 8 + t;
        local[t] = hist[bin];
        sum += local[t];
    }
    unsigned int incl = sum;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
        const unsigned int v = __shfl_up_sync(FULL_MASK, incl, off);
        if (lane >= off) incl += v;
    }
    const unsigned int excl = incl - sum;
    if (excl < need && need <= incl) {  // exactly one lane
        unsigned int c = excl;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            if (c + local[t] >= need) {
                *out_digit = (unsigned int)(desc ? 255 - (lane * 8 + t) : lane * 8 + t);
                *out_before = c;
                break;
            }
            c += local[t];
        }
    }
}

// Warp-aggregated histogram increment; digit 256 means "not counted". All 32 lanes must call it.
__device__ __forceinline__ void hist_add(unsigned int* hist, unsigned int digit) {
    const unsigned int peers = __match_any_sync(FULL_MASK, digit);
    const int lane = threadIdx.x & 31;
    if (digit < 256u && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], (unsigned int)__popc(peers));
}

// Warp-aggregated append of the selected lanes' items into shared memory (slots >= limit are dropped).
// All 32 lanes must call it.
__device__ __forceinline__ void append(bool sel, unsigned int key, unsigned long long idk, unsigned int* s_count,
                                       unsigned int limit, unsigned int* s_key, unsigned long long* s_id) {
    const unsigned int bal = __ballot_sync(FULL_MASK, sel);
    if (bal == 0u) return;  // warp-uniform
    const int lane = threadIdx.x & 31;
    const int leader = __ffs(bal) - 1;
    unsigned int base = 0;
    if (lane == leader) base = atomicAdd(s_count, (unsigned int)__popc(bal));
    base = __shfl_sync(FULL_MASK, base, leader);
    if (sel) {
        const unsigned int slot = base + (unsigned int)__popc(bal & ((1u << lane) - 1u));
        if (slot < limit) {
            s_key[slot] = key;
            s_id[slot] = idk;
        }
    }
}

extern "C" __global__ void __launch_bounds__(SEL_THREADS)
    topb_select(const float* __restrict__ scores, const long long* __restrict__ ids,
                const long long* __restrict__ task_lo, const long long* __restrict__ task_hi,
                const long long* __restrict__ task_out, int n_tasks, int b, int final_layout,
                float* __restrict__ out_scores, long long* __restrict__ out_ids, long long* __restrict__ out_counts) {
    __shared__ unsigned int hist[256];
    __shared__ unsigned int s_key[MAX_B];
    __shared__ unsigned long long s_id[MAX_B];
    __shared__ unsigned int s_digit;
    __shared__ unsigned int s_before;
    __shared__ unsigned int s_count;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int t = blockIdx.x; t < n_tasks; t += gridDim.x) {
        const long long lo = task_lo[t];
        const long long hi = task_hi[t];
        const long long len = hi > lo ? hi - lo : 0;
        const int take = (int)(len < (long long)b ? len : (long long)b);
        if (threadIdx.x == 0) s_count = 0u;
        __syncthreads();
        if (len <= (long long)b) {
            for (long long i = lo + threadIdx.x; i < hi; i += SEL_THREADS) {
                const int slot = (int)(i - lo);
                s_key[slot] = score_key(scores[i]);
                s_id[slot] = id_key(ids[i]);
            }
        } else {
            // ---- radix select of the b-th largest score key T (MSB first, 8 bits per pass)
            unsigned int prefix = 0u, mask = 0u, need = (unsigned int)b, eq_count = 0u;
            for (int shift = 24; shift >= 0; shift -= 8) {
                for (int j = threadIdx.x; j < 256; j += SEL_THREADS) hist[j] = 0u;
                __syncthreads();
                for (long long base = lo + (long long)warp * 32; base < hi; base += SEL_THREADS) {
                    const long long i = base + lane;
                    unsigned int digit = 256u;
                    if (i < hi) {
                        const unsigned int key = score_key(scores[i]);
                        if ((key & mask) == prefix) digit = (key >> shift) & 255u;
                    }
                    hist_add(hist, digit);
                }
                __syncthreads();
                if (warp == 0) find_bin(hist, need, true, &s_digit, &s_before);
                __syncthreads();
                const unsigned int dg = s_digit;
                need -= s_before;
                eq_count = hist[dg];
                prefix |= dg << shift;
                mask |= 255u << shift;
                __syncthreads();  // all reads of hist / s_digit done before the next pass clears them
            }
            const unsigned int T = prefix;  // count(key > T) = b - need, count(key == T) = eq_count >= need
            if (eq_count == need) {
                for (long long base = lo + (long long)warp * 32; base < hi; base += SEL_THREADS) {
                    const long long i = base + lane;
                    unsigned int key = 0u;
                    unsigned long long idk = 0ull;
                    bool sel = false;
                    if (i < hi) {
                        key = score_key(scores[i]);
                        sel = key >= T;
                        if (sel) idk = id_key(ids[i]);
                    }
                    append(sel, key, idk, &s_count, (unsigned int)b, s_key, s_id);
                }
            } else {
                // ---- the tie group at T is larger than needed: radix select the need-th smallest id key
                unsigned long long idp = 0ull, idm = 0ull;
                unsigned int needi = need;
                for (int shift = 56; shift >= 0; shift -= 8) {
                    for (int j = threadIdx.x; j < 256; j += SEL_THREADS) hist[j] = 0u;
                    __syncthreads();
                    for (long long base = lo + (long long)warp * 32; base < hi; base += SEL_THREADS) {
                        const long long i = base + lane;
                        unsigned int digit = 256u;
                        if (i < hi && score_key(scores[i]) == T) {
                            const unsigned long long idk = id_key(ids[i]);
                            if ((idk & idm) == idp) digit = (unsigned int)((idk >> shift) & 255ull);
                        }
                        hist_add(hist, digit);
                    }
                    __syncthreads();
                    if (warp == 0) find_bin(hist, needi, false, &s_digit, &s_before);
                    __syncthreads();
                    const unsigned int dg = s_digit;
                    needi -= s_before;
                    idp |= (unsigned long long)dg << shift;
                    idm |= 255ull << shift;
                    __syncthreads();
                }
                const unsigned long long Tid = idp;
                // sweep 1: everything strictly before (T, Tid) -- fewer than b items
                for (long long base = lo + (long long)warp * 32; base < hi; base += SEL_THREADS) {
                    const long long i = base + lane;
                    unsigned int key = 0u;
                    unsigned long long idk = 0ull;
                    bool sel = false;
                    if (i < hi) {
                        key = score_key(scores[i]);
                        if (key > T) {
                            sel = true;
                            idk = id_key(ids[i]);
                        } else if (key == T) {
                            idk = id_key(ids[i]);
                            sel = idk < Tid;
                        }
                    }
                    append(sel, key, idk, &s_count, (unsigned int)b, s_key, s_id);
                }
                __syncthreads();
                // sweep 2: copies of (T, Tid) fill the remaining slots (one, unless ids repeat)
                for (long long base = lo + (long long)warp * 32; base < hi; base += SEL_THREADS) {
                    const long long i = base + lane;
                    bool sel = false;
                    if (i < hi && score_key(scores[i]) == T) sel = id_key(ids[i]) == Tid;
                    append(sel, T, Tid, &s_count, (unsigned int)b, s_key, s_id);
                }
            }
        }
        __syncthreads();
        // ---- bitonic sort of the `take` selected items (padded to a power of two) in shared memory
        int n2 = 1;
        while (n2 < take) n2 <<= 1;
        for (int i = take + threadIdx.x; i < n2; i += SEL_THREADS) {
            s_key[i] = 0u;  // below every real key (f2key(-inf) = 0x007fffff)
            s_id[i] = ~0ull;
        }
        __syncthreads();
        for (int k = 2; k <= n2; k <<= 1) {
            for (int j = k >> 1; j > 0; j >>= 1) {
                for (int i = threadIdx.x; i < n2; i += SEL_THREADS) {
                    const int ixj = i ^ j;
                    if (ixj > i) {
                        const unsigned int ka = s_key[i], kb = s_key[ixj];
                        const unsigned long long ia = s_id[i], ib = s_id[ixj];
                        const bool fwd = (i & k) == 0;
                        if (fwd ? before(kb, ib, ka, ia) : before(ka, ia, kb, ib)) {
                            s_key[i] = kb;
                            s_key[ixj] = ka;
                            s_id[i] = ib;
                            s_id[ixj] = ia;
                        }
                    }
                }
                __syncthreads();
            }
        }
        // ---- write out
        const long long o = task_out[t];
        for (int j = threadIdx.x; j < take; j += SEL_THREADS) {
            out_scores[o + j] = key_score(s_key[j]);
            out_ids[o + j] = (long long)(s_id[j] ^ ID_SIGN);
        }
        if (final_layout) {
            for (int j = take + threadIdx.x; j < b; j += SEL_THREADS) {
                out_scores[o + j] = neg_inf();
                out_ids[o + j] = -1;
            }
            if (threadIdx.x == 0) out_counts[t] = take;
        }
        __syncthreads();  // shared memory is reused by the next task of this block
    }
}
