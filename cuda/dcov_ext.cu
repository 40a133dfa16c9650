// fairret: torch extension around cuda/dcov_kernels.cuh, for machines where NVRTC is unavailable
// (built by torch.utils.cpp_extension.load with nvcc on first use; see fairret/ops/cuda.py).
#include <torch/extension.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "dcov_kernels.cuh"

namespace {

template <typename T, typename Kernel>
void launch_typed(Kernel kernel, torch::Tensor X, int64_t n, int64_t P, int64_t d, torch::Tensor off, torch::Tensor rs,
                  torch::Tensor consts, torch::Tensor pr, int64_t unbiased, int64_t gm, int64_t mode, int64_t tile,
                  torch::Tensor out, torch::Tensor out2, int64_t grid, int64_t threads, int64_t shared) {
    if (shared > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shared));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    kernel<<<dim3((unsigned)grid), dim3((unsigned)threads), (size_t)shared, stream>>>(
        X.data_ptr<T>(), (int)n, (int)P, (int)d, off.data_ptr<int>(), rs.data_ptr<double>(),
        consts.data_ptr<double>(), pr.data_ptr<double>(), (int)unbiased, (int)gm, (int)mode, (int)tile,
        out.data_ptr<double>(), out2.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch(torch::Tensor X, int64_t n, int64_t P, int64_t d, torch::Tensor off, torch::Tensor rs, torch::Tensor consts,
            torch::Tensor pr, int64_t unbiased, int64_t gm, int64_t mode, int64_t tile, torch::Tensor out,
            torch::Tensor out2, int64_t grid, int64_t threads, int64_t shared) {
    TORCH_CHECK(X.is_cuda() && X.is_contiguous(), "fairret dcov kernel: X must be a contiguous CUDA tensor");
    TORCH_CHECK(off.scalar_type() == torch::kInt32, "fairret dcov kernel: off must be int32");
    TORCH_CHECK(rs.scalar_type() == torch::kFloat64 && consts.scalar_type() == torch::kFloat64 &&
                    pr.scalar_type() == torch::kFloat64 && out.scalar_type() == torch::kFloat64 &&
                    out2.scalar_type() == torch::kFloat64,
                "fairret dcov kernel: centring constants and outputs must be float64");
    const c10::cuda::CUDAGuard guard(X.device());
    if (X.scalar_type() == torch::kFloat32) {
        launch_typed<float>(fdc_kernel_f32, X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2,
                            grid, threads, shared);
    } else {
        TORCH_CHECK(X.scalar_type() == torch::kFloat64, "fairret dcov kernel: X must be float32 or float64");
        launch_typed<double>(fdc_kernel_f64, X, n, P, d, off, rs, consts, pr, unbiased, gm, mode, tile, out, out2,
                             grid, threads, shared);
    }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("launch", &launch, "fairret distance-covariance kernel launch (see dcov_kernels.cuh)");
}
