// Embedding lookup and its weight gradient: the op embedding of cganraw.ops.embedding
// (launchers embedding_forward_cuda, embedding_backward_cuda).
//
// Kernels (one version each):
//   embedding_forward_v1   gather:      y[n, d] = W[idx[n], d]
//   embedding_backward_v1  scatter-add: dW[idx[n], d] += dy[n, d]   (atomicAdd: repeated
//                          labels in a batch add into the same row from many threads)
//
// Shapes: idx (N,) int32, W and dW (K, D), y and dy (N, D), all contiguous.
// Labels: the layers hold int64 labels; the launcher checks their range on the host and
// converts them to int32 (a batch of labels is small, and int32 halves the index traffic).
// The kernels still skip a label outside [0, K) rather than read or write out of bounds:
// the forward writes 0 for it, the backward drops its gradient.
// dW must be zeroed before the backward (the launcher allocates it zeroed); the order of
// the atomic additions varies, so sums over repeated labels differ in the last bits run
// to run, as on any GPU.
//
// One version each: one thread per (n, d) element, consecutive threads along d, so a
// warp reads (forward) or updates (backward) a contiguous stretch of a row of W.

// idx: (N,), W: (K, D) -> y: (N, D)
extern "C" __global__ void embedding_forward_v1(float* y, const int* idx, const float* W, int N, int K, int D)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * D) return;
    int n = i / D;
    int d = i - n * D;
    int k = idx[n];
    y[i] = (k >= 0 && k < K) ? W[(long long)k * D + d] : 0.0f;
}

// idx: (N,), dy: (N, D) -> dW: (K, D), zeroed by the caller
extern "C" __global__ void embedding_backward_v1(float* dW, const int* idx, const float* dy, int N, int K, int D)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * D) return;
    int n = i / D;
    int d = i - n * D;
    int k = idx[n];
    if (k >= 0 && k < K) atomicAdd(&dW[(long long)k * D + d], dy[i]);
}
