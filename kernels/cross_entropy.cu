// Softmax cross-entropy on logits, mean-reduced over the batch: the op
// softmax_cross_entropy of cganraw.ops.cross_entropy (launchers
// softmax_cross_entropy_forward_cuda, softmax_cross_entropy_backward_cuda), behind the loss
// cganraw.losses.softmax_cross_entropy (the evaluation classifier's training loss).
//
//   logp[n, k] = (z[n, k] - m_n) - log(sum_j exp(z[n, j] - m_n)),  m_n = max_j z[n, j]
//   loss = mean_n(-logp[n, y_n]);   dz[n, k] = (exp(logp[n, k]) - [k == y_n]) * dloss / N
// The log-sum-exp form only exponentiates non-positive numbers: logits of +-1e4 stay
// finite. The operations are the NumPy reference's, in its order.
//
// Kernels:
//   softmax_cross_entropy_forward_v1         one thread per row n: its max, its sum of
//                                            exponentials, the row of logp (the backward's
//                                            cache) and the row's loss -logp[n, y_n]
//   softmax_cross_entropy_forward_reduce_v1  then one block sums the N row losses in a
//                                            fixed order and divides by N: no atomics, the
//                                            same loss on every run
//   softmax_cross_entropy_backward_v1        one thread per (n, k) element
// One version each: the rows are short (K = 10 to 47 classes), so a thread per row is
// enough parallelism for the classifier's batches.
//
// Shapes: z, logp, dz (N, K) contiguous; y (N,) int32 labels, range-checked on the host; a
// label outside [0, K) still never reads out of bounds: its row's loss is 0 and its
// gradient has no one-hot term. losses (N,); loss (1,).
// The reduction needs blockDim.x a multiple of 32 (full-mask shuffles), at most 1024.

#include "reduce.cuh"   // block_sum

// z (N, K), y (N,) -> logp (N, K), losses (N,)
extern "C" __global__ void softmax_cross_entropy_forward_v1(float* logp, float* losses, const float* z,
                                                            const int* y, int N, int K)
{
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
        const float* zr = z + (long long)n * K;
        float* lr = logp + (long long)n * K;
        float m = zr[0];
        for (int k = 1; k < K; k++)                         // a NaN becomes the max and stays,
            if (zr[k] > m || zr[k] != zr[k]) m = zr[k];       // as NumPy's max propagates it
        float sum = 0.0f;
        for (int k = 0; k < K; k++) sum += expf(zr[k] - m);
        const float log_sum = logf(sum);
        for (int k = 0; k < K; k++) lr[k] = (zr[k] - m) - log_sum;
        const int label = y[n];
        losses[n] = (label >= 0 && label < K) ? -lr[label] : 0.0f;
    }
}

// losses (N,) -> loss (1,) = sum / N; launched as a single block
extern "C" __global__ void softmax_cross_entropy_forward_reduce_v1(float* loss, const float* losses, int N)
{
    __shared__ float partials[32];
    float sum = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) sum += losses[i];
    sum = block_sum(sum, partials);
    if (threadIdx.x == 0) loss[0] = sum / (float)N;
}

// logp (N, K), y (N,) -> dz (N, K); scale = dloss / N
extern "C" __global__ void softmax_cross_entropy_backward_v1(float* dz, const float* logp, const int* y,
                                                             float scale, int N, int K)
{
    const long long total = (long long)N * K;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(e / K);
        const int k = (int)(e - (long long)n * K);
        float p = expf(logp[e]);
        if (k == y[n]) p = p - 1.0f;
        dz[e] = p * scale;
    }
}
