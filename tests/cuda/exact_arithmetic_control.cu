// The control of tests/cuda/check_exact_ptx.cmake: plain float arithmetic that nvcc contracts
// into a multiply-add under its default flags. The check must find it here, or it could not find
// it in zero's kernels either. Compiled to PTX only.
__global__ void plain_axpy(float* y, const float* x, float a, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
}
