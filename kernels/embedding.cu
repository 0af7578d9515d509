// Embedding lookup and its weight gradient: the op embedding of cganraw.ops.embedding
// (launchers embedding_forward_cuda, embedding_backward_cuda).
//
// Kernels:
//   embedding_forward_v1   gather:      y[n, d] = W[idx[n], d]
//   embedding_backward_v1  scatter-add: dW[idx[n], d] += dy[n, d]   (atomicAdd: repeated
//                          labels in a batch add into the same row from many threads)
//   embedding_backward_v2  segment by label, deterministic: a block per row k of dW, its
//                          threads along d, sums dy[n, d] over the n with idx[n] == k in n
//                          order (the labels staged through shared memory, 1024 at a time).
//                          No atomics, no zero fill, the same bits every run. THE DEFAULT.
//                          Work: K*N label compares plus N*D adds, which suits a label
//                          embedding (K <= 62 classes, N = a batch); a large vocabulary would
//                          want the labels sorted first (a radix sort and segment offsets),
//                          which this project does not need.
//   embedding_backward_v3  as v2, adding each sum into dW (the weight's .grad) instead of
//                          writing it: no separate gradient add. The default with `out`.
//
// Shapes: idx (N,) int32, W and dW (K, D), y and dy (N, D), all contiguous.
// Labels: the layers hold int64 labels; the launcher checks their range on the host and
// converts them to int32 (a batch of labels is small, and int32 halves the index traffic).
// The kernels still skip a label outside [0, K) rather than read or write out of bounds:
// the forward writes 0 for it, the backward drops its gradient.
// v1: dW must be zeroed before the backward (the launcher allocates it zeroed); the order
// of the atomic additions varies, so sums over repeated labels differ in the last bits run
// to run, as on any GPU. v2 writes every element of dW.
//
// v1: one thread per (n, d) element, consecutive threads along d, so a warp reads
// (forward) or updates (backward) a contiguous stretch of a row of W.

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

#define EMB_LABEL_CHUNK 1024

// idx: (N,), dy: (N, D) -> dW: (K, D), every element written. grid: rows k (grid-strided),
// block: threads along d (any size; loops over d in blockDim.x steps)
template <bool ACCUMULATE>
__device__ __forceinline__ void embedding_backward_rows(float* dW, const int* idx, const float* dy, int N, int K, int D)
{
    __shared__ int labels[EMB_LABEL_CHUNK];
    for (int k = blockIdx.x; k < K; k += gridDim.x) {              // uniform: barriers are safe
        for (int d0 = 0; d0 < D; d0 += blockDim.x) {
            const int d = d0 + threadIdx.x;
            float acc = 0.0f;
            for (int n0 = 0; n0 < N; n0 += EMB_LABEL_CHUNK) {
                const int cnt = min(EMB_LABEL_CHUNK, N - n0);
                __syncthreads();                                   // the previous chunk is consumed
                for (int t = threadIdx.x; t < cnt; t += blockDim.x) labels[t] = idx[n0 + t];
                __syncthreads();                                   // the chunk is staged
                if (d < D)
                    for (int t = 0; t < cnt; ++t)
                        if (labels[t] == k) acc += dy[(long long)(n0 + t) * D + d];
            }
            if (d < D) {
                if (ACCUMULATE) dW[(long long)k * D + d] += acc;
                else dW[(long long)k * D + d] = acc;
            }
        }
    }
}

extern "C" __global__ void embedding_backward_v2(float* dW, const int* idx, const float* dy, int N, int K, int D)
{
    embedding_backward_rows<false>(dW, idx, dy, N, K, D);
}

// as v2, dW += the sums
extern "C" __global__ void embedding_backward_v3(float* dW, const int* idx, const float* dy, int N, int K, int D)
{
    embedding_backward_rows<true>(dW, idx, dy, N, K, D);
}
