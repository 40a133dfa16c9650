// fairret: CUDA kernels of the pairwise-distance core of the distance-covariance family.
//
// Self-contained (no includes) so that NVRTC compiles it as is; cuda/dcov_ext.cu includes it for nvcc builds, and
// cuda/emulate_host.h lets a C++ compiler build it for the CPU (one thread per block) so that its arithmetic is
// tested without a GPU.
//
// Data layout: X is (n, P) row-major, the columns of d variables side by side; variable k owns the columns
// off[k] .. off[k+1]-1 (d <= FDC_MAX_VARS, P <= FDC_MAX_COLS). One thread owns one row i and sweeps every row j
// (tiles of rows j staged in shared memory); per-thread sums are accumulated in double.
//
// With a_ij^(k) = |x_i^(k) - x_j^(k)| and the centring constants rs (d, n) and tot (d) computed by the caller
// (rs_k[i] = r_k[i] / n, tot_k = R_k / n^2 for V; / (n-2) and / ((n-1)(n-2)) for U), the centred distance is
// A_ij^(k) = a_ij^(k) - rs_k[i] - rs_k[j] + tot_k and the factor f_ij^(k) = c - A_ij^(k). Pairs j == i are skipped
// when `unbiased`.
//
// The double scalars travel in device memory, consts = [tot_0 .. tot_{d-1}, c, prtot] (d + 2 doubles), not as
// kernel arguments: how a launcher passes a Python float (C float or double) then cannot matter, and the caller
// never synchronises with the device to read prtot. Each mode reads only the buffers it uses (mode 0 reads neither
// rs nor consts; pr only in mode 2 with gm >= 0): the caller passes 1-element placeholders for the others.
//
// mode 0 (row sums):    out[i * d + k] = sum_j a_ij^(k)                          (no centring involved)
// mode 1 (P row sums):  out[i] = sum_j prod_{k != gm} f_ij^(k)
// mode 2 (sweep):       out[block] = sum over the block's rows i of sum_j prod_k f_ij^(k)
//                       and, when gm >= 0, with P_ij = prod_{k != gm} f_ij^(k) and G_ij = (pr[i] - prtot) + pr[j] - P_ij
//                       (pr (n), prtot: the centring constants of P, like rs and tot),
//                       out2[i * p_gm + q] = 2 sum_j G_ij (x_i^(gm) - x_j^(gm))_q / a_ij^(gm)   (0 where a_ij = 0)
//
// The centring constants (rs, tot, pr, prtot) are double, and the factors f are formed and multiplied in double:
// only the distances themselves are evaluated in T (float32 or float64).
//
// Dynamic shared memory: tile * P elements of T for the rows j, rounded up to a multiple of 8 bytes, then
// tile * (d + 1) doubles for their rs and pr values, then blockDim.x doubles for the block reduction
// (fdc_shared_bytes below).

// Bytes of dynamic shared memory a launch needs (the host computes the same).
#define FDC_SHARED_BYTES(tsize, tile, P, d, threads) \
    ((((size_t)(tsize) * (size_t)(tile) * (size_t)(P) + 7) / 8) * 8 + 8 * ((size_t)(tile) * ((size_t)(d) + 1) + (size_t)(threads)))

#define FDC_MAX_VARS 8
#define FDC_MAX_COLS 128
#define FDC_MAX_GRAD_COLS 16

template <typename T>
__device__ __forceinline__ T fdc_sqrt(T v);

template <>
__device__ __forceinline__ float fdc_sqrt<float>(float v) { return sqrtf(v); }

template <>
__device__ __forceinline__ double fdc_sqrt<double>(double v) { return sqrt(v); }

template <typename T>
__device__ void fdc_body(const T* __restrict__ X, int n, int P, int d, const int* __restrict__ off,
                         const double* __restrict__ rs, const double* __restrict__ consts,
                         const double* __restrict__ pr, int unbiased, int gm, int mode, int tile,
                         double* __restrict__ out, double* __restrict__ out2) {
    extern __shared__ unsigned char fdc_smem[];
    T* xs = reinterpret_cast<T*>(fdc_smem);                                              // tile * P
    double* rss = reinterpret_cast<double*>(fdc_smem) + (sizeof(T) * (size_t)tile * P + 7) / 8;  // tile * d
    double* prs = rss + (size_t)tile * d;                                                   // tile
    double* red = prs + tile;                                                               // blockDim.x

    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    const bool active = i < n;
    const bool centred = mode != 0;            // modes 1 and 2 read rs and consts
    const bool with_pr = mode == 2 && gm >= 0;  // only the gradient sweep reads pr

    // this thread's row and centring terms
    T xi[FDC_MAX_COLS];
    double rsi[FDC_MAX_VARS];
    double toti[FDC_MAX_VARS];
    int offs[FDC_MAX_VARS + 1];
    for (int k = 0; k <= d; ++k) offs[k] = off[k];
    for (int k = 0; k < d; ++k) toti[k] = centred ? consts[k] : 0.0;
    const double c = centred ? consts[d] : 0.0;
    const double prtot = with_pr ? consts[d + 1] : 0.0;
    if (active) {
        for (int q = 0; q < P; ++q) xi[q] = X[(size_t)i * P + q];
        if (centred) for (int k = 0; k < d; ++k) rsi[k] = rs[(size_t)k * n + i];
    }
    const double pri = (active && with_pr) ? pr[i] : 0.0;
    const int gcols = gm >= 0 ? offs[gm + 1] - offs[gm] : 0;

    double acc_rows[FDC_MAX_VARS];
    for (int k = 0; k < FDC_MAX_VARS; ++k) acc_rows[k] = 0.0;
    double acc_total = 0.0;
    double acc_grad[FDC_MAX_GRAD_COLS];
    for (int q = 0; q < FDC_MAX_GRAD_COLS; ++q) acc_grad[q] = 0.0;

    for (int j0 = 0; j0 < n; j0 += tile) {
        const int jn = (n - j0) < tile ? (n - j0) : tile;
        // stage rows j0 .. j0 + jn - 1 (all threads of the block cooperate)
        for (int e = threadIdx.x; e < jn * P; e += blockDim.x) xs[e] = X[(size_t)j0 * P + e];
        if (centred) {
            for (int e = threadIdx.x; e < jn * d; e += blockDim.x) {
                const int k = e / jn, jj = e % jn;
                rss[jj * d + k] = rs[(size_t)k * n + j0 + jj];
            }
        }
        if (with_pr) {
            for (int e = threadIdx.x; e < jn; e += blockDim.x) prs[e] = pr[j0 + e];
        }
        __syncthreads();
        if (active) {
            for (int jj = 0; jj < jn; ++jj) {
                const int j = j0 + jj;
                if (unbiased && j == i) continue;
                const T* xj = xs + jj * P;
                double prod_all = 1.0, prod_other = 1.0, agm = 0.0;
                for (int k = 0; k < d; ++k) {
                    T sq = T(0);
                    for (int q = offs[k]; q < offs[k + 1]; ++q) {
                        const T diff = xi[q] - xj[q];
                        sq += diff * diff;
                    }
                    const T a = fdc_sqrt<T>(sq);
                    if (mode == 0) {
                        acc_rows[k] += (double)a;
                        continue;
                    }
                    const double f = c - (((double)a - rsi[k]) - rss[jj * d + k] + toti[k]);
                    prod_all *= f;
                    if (k == gm) {
                        agm = (double)a;
                    } else {
                        prod_other *= f;
                    }
                }
                if (mode == 1) {
                    acc_rows[0] += prod_other;
                } else if (mode == 2) {
                    acc_total += prod_all;
                    if (gm >= 0 && agm > 0.0) {
                        const double g = (pri - prtot) + prs[jj] - prod_other;
                        const double w = 2.0 * g / agm;
                        for (int q = 0; q < gcols; ++q) {
                            const int col = offs[gm] + q;
                            acc_grad[q] += w * (double)(xi[col] - xj[col]);
                        }
                    }
                }
            }
        }
        __syncthreads();
    }

    if (mode == 0) {
        if (active) for (int k = 0; k < d; ++k) out[(size_t)i * d + k] = acc_rows[k];
        return;
    }
    if (mode == 1) {
        if (active) out[i] = acc_rows[0];
        return;
    }
    if (active && gm >= 0) {
        for (int q = 0; q < gcols; ++q) out2[(size_t)i * gcols + q] = acc_grad[q];
    }
    // block reduction of the total (a fixed order: the result does not depend on scheduling)
    red[threadIdx.x] = active ? acc_total : 0.0;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = red[0];
}

extern "C" __global__ void fdc_kernel_f32(const float* X, int n, int P, int d, const int* off, const double* rs,
                                          const double* consts, const double* pr, int unbiased, int gm, int mode,
                                          int tile, double* out, double* out2) {
    fdc_body<float>(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2);
}

extern "C" __global__ void fdc_kernel_f64(const double* X, int n, int P, int d, const int* off, const double* rs,
                                          const double* consts, const double* pr, int unbiased, int gm, int mode,
                                          int tile, double* out, double* out2) {
    fdc_body<double>(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2);
}
