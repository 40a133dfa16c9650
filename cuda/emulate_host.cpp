// fairret: CPU launcher of the emulated kernels (see emulate_host.h). Built by tests/test_cuda_kernels.py:
//   g++ -std=c++20 -O2 -shared -fPIC -pthread emulate_host.cpp -o libfdc_emulate.so
#include "emulate_host.h"

#include <thread>
#include <vector>

thread_local fdc_dim3 threadIdx, blockIdx, blockDim;
std::barrier<>* fdc_block_barrier = nullptr;
alignas(16) unsigned char fdc_smem[1 << 24];

#include "dcov_kernels.cuh"

template <typename T, typename K>
static void fdc_emulate(K kernel, int grid, int threads, const T* X, int n, int P, int d, const int* off,
                        const double* rs, const double* consts, const double* pr, int unbiased, int gm, int mode,
                        int tile, double* out, double* out2) {
    std::barrier<> bar(threads);
    fdc_block_barrier = &bar;
    for (int b = 0; b < grid; ++b) {
        std::vector<std::thread> pool;
        for (int t = 0; t < threads; ++t) {
            pool.emplace_back([=]() {
                threadIdx = {(unsigned)t, 0, 0};
                blockIdx = {(unsigned)b, 0, 0};
                blockDim = {(unsigned)threads, 1, 1};
                kernel(X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2);
            });
        }
        for (auto& th : pool) th.join();
    }
    fdc_block_barrier = nullptr;
}

extern "C" int fdc_emulate_shared_fits(int tsize, int tile, int P, int d, int threads) {
    return FDC_SHARED_BYTES(tsize, tile, P, d, threads) <= sizeof(fdc_smem);
}

extern "C" void fdc_emulate_f32(int grid, int threads, const float* X, int n, int P, int d, const int* off,
                                const double* rs, const double* consts, const double* pr, int unbiased, int gm,
                                int mode, int tile, double* out, double* out2) {
    fdc_emulate<float>(fdc_kernel_f32, grid, threads, X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile,
                       out, out2);
}

extern "C" void fdc_emulate_f64(int grid, int threads, const double* X, int n, int P, int d, const int* off,
                                const double* rs, const double* consts, const double* pr, int unbiased, int gm,
                                int mode, int tile, double* out, double* out2) {
    fdc_emulate<double>(fdc_kernel_f64, grid, threads, X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile,
                        out, out2);
}
