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
//   label_map_concat_forward_v1, label_map_concat_backward_v1
//                          the conditional models' whole label path (Embedding, Linear,
//                          the map's concatenation after x, x's bias and LeakyReLU), one
//                          launch each way beside the GEMMs: see the section at the end.
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

// ---------------------------------------------------------------- the label path, fused

// element (n, j) of an (N, row) map: row-major, or with hw > 0 channel-major planes of hw
__device__ __forceinline__ long long lm_index(int n, int j, int row, int N, int hw)
{
    return hw > 0 ? ((long long)(j / hw) * N + n) * hw + j % hw : (long long)n * row + j;
}
// The conditional conv models' label path: labels -> Embedding(K, E) -> Linear(E, M) -> a map
// concatenated after x's L values per row (G: its noise Linear's output, D: the image):
//   out[n] = [act(x[n] + bx) | T[labels[n]] + b]      T = emb_w fc_w^T (K, M): a K-row GEMM
// the launcher runs instead of an N-row one; act = LeakyReLU(slope) when act, else identity;
// bx: x's bias (has_bx) or none.
//
//   label_map_concat_forward_v1   grid-stride over out (N, L + M): one pass writes the
//                                 concatenation (no embedding rows, no bias or activation
//                                 pass, no copies)
//   label_map_concat_forward_v2   v1 without the table: each label value is its own dot
//                                 product emb_w[labels[n]] . fc_w[m] (E terms, e in order) +
//                                 b[m]; one launch where v1 took the table GEMM and a launch.
//                                 E*M*N multiply-adds (50 * 784 * 384 = 15M for D's batch at
//                                 batch 128: microseconds), emb_w and fc_w read through L1/L2.
//                                 THE DEFAULT.
//   label_map_concat_forward_v3   v2 writing out channel-major when hw > 0: out[n] holds
//                                 planes of hw values, and (n, c, p) lies at (c*N + n)*hw + p
//                                 ((C, N, hw) memory): G's seed map, which the transposed
//                                 convolution after it takes as its GEMM operand as it lies
//                                 (no layout copy). hw = 0: v2 exactly.
//   label_map_concat_backward_v2  v1 reading d and out in v3's layout when hw > 0 (hw = 0: v1)
//   label_table_grads_v1          the label path's weight gradients from dT (K, M) in one
//                                 launch, where two GEMMs ran: demb_w = dT fc_w (K, E) and
//                                 dfc_w = dT^T emb_w (M, E), a thread per output summing in
//                                 order (K*E + M*E dot products of M or K terms: tiny), each
//                                 written or added into (the weight's .grad)
//   label_map_concat_backward_v1  grid (column tiles, row splits): a thread per (column, split)
//                                 sums its rows in order, g = d (x columns: times the LeakyReLU
//                                 mask from out, written to dx when need_dx), into
//                                 partials (splits, L + M) and, for the label columns, per
//                                 label into partials_t (splits, K, M) (the thread's own
//                                 entries: zeroed, then added to); the grid's last block
//                                 (channels.cuh's counter) adds the splits in order:
//                                 dbx (L,) (has_bx), db (M,) and dT (K, M) (need_label); dbx
//                                 and db are added to (accumulate: the biases' .grad) or written.
//                                 No atomics on values: the same bits every run.
// Labels must lie in [0, K) (checked by the launcher); one out of range is skipped.

// x: (N, L), bx: (L,) (has_bx), T: (K, M), b: (M,), labels: (N,) -> out: (N, L + M)
extern "C" __global__ void label_map_concat_forward_v1(float* out, const float* x, const float* bx, const float* T,
                                                       const float* b, const int* labels, int N, int L, int M, int K,
                                                       float slope, int act, int has_bx)
{
    const int row = L + M;
    const long long total = (long long)N * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(i / row), j = (int)(i - (long long)n * row);
        float v;
        if (j < L) {
            v = x[(long long)n * L + j];
            if (has_bx) v += bx[j];
            if (act && !(v > 0.0f)) v *= slope;
        } else {
            const int k = labels[n];
            v = (k >= 0 && k < K) ? T[(long long)k * M + (j - L)] + b[j - L] : 0.0f;
        }
        out[i] = v;
    }
}

// d, out: (N, L + M), labels: (N,) -> dx: (N, L) (need_dx), dbx: (L,) (has_bx),
// db: (M,) (+= or =, accumulate) and dT: (K, M) = (need_label); partials: (splits, L + M), partials_t:
// (splits, K, M) scratch; counter: a zeroed unsigned, left zeroed.
// grid (ceil((L + M) / blockDim.x), splits); rows of split s: [s * chunk, (s + 1) * chunk)
extern "C" __global__ void label_map_concat_backward_v1(float* dx, float* dbx, float* dT, float* db, float* partials,
                                                        float* partials_t, unsigned int* counter, const float* d,
                                                        const float* out, const int* labels, int N, int L, int M,
                                                        int K, float slope, int act, int need_dx, int has_bx,
                                                        int need_label, int accumulate, int splits)
{
    const int row = L + M;
    const int s = blockIdx.y;
    const int chunk = (N + splits - 1) / splits;
    const int n0 = min(s * chunk, N), n1 = min(n0 + chunk, N);
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < row; j += gridDim.x * blockDim.x) {
        float sum = 0.0f;
        if (j < L) {
            for (int n = n0; n < n1; ++n) {
                const long long i = (long long)n * row + j;
                float g = d[i];
                if (act && !(out[i] > 0.0f)) g *= slope;
                if (need_dx) dx[(long long)n * L + j] = g;
                sum += g;
            }
        } else if (need_label) {
            const int m = j - L;
            float* pt = partials_t + (long long)s * K * M + m;
            for (int k = 0; k < K; ++k) pt[(long long)k * M] = 0.0f;
            for (int n = n0; n < n1; ++n) {
                const float g = d[(long long)n * row + j];
                const int k = labels[n];
                if (k >= 0 && k < K) pt[(long long)k * M] += g;
                sum += g;
            }
        }
        partials[(long long)s * row + j] = sum;
    }
    // the last block to finish adds the splits up, in split order
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1u;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* p = partials;
    const volatile float* q = partials_t;
    for (int j = threadIdx.x; j < row; j += blockDim.x) {
        if (j < L ? !has_bx : !need_label) continue;
        float t = 0.0f;
        for (int ss = 0; ss < splits; ++ss) t += p[(long long)ss * row + j];
        float* o = j < L ? dbx + j : db + (j - L);
        *o = accumulate ? *o + t : t;
    }
    if (need_label) {
        for (int e = threadIdx.x; e < K * M; e += blockDim.x) {
            float t = 0.0f;
            for (int ss = 0; ss < splits; ++ss) t += q[(long long)ss * K * M + e];
            dT[e] = t;
        }
    }
    if (threadIdx.x == 0) *counter = 0u;
}

// x: (N, L), bx: (L,) (has_bx), emb_w: (K, E), fc_w: (M, E), b: (M,), labels: (N,) -> out: (N, L + M)
extern "C" __global__ void label_map_concat_forward_v2(float* out, const float* x, const float* bx,
                                                       const float* emb_w, const float* fc_w, const float* b,
                                                       const int* labels, int N, int L, int M, int K, int E,
                                                       float slope, int act, int has_bx)
{
    const int row = L + M;
    const long long total = (long long)N * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(i / row), j = (int)(i - (long long)n * row);
        float v;
        if (j < L) {
            v = x[(long long)n * L + j];
            if (has_bx) v += bx[j];
            if (act && !(v > 0.0f)) v *= slope;
        } else {
            const int k = labels[n];
            if (k >= 0 && k < K) {
                const float* er = emb_w + (long long)k * E;
                const float* wr = fc_w + (long long)(j - L) * E;
                float t = 0.0f;
                for (int e = 0; e < E; ++e) t += er[e] * wr[e];
                v = t + b[j - L];
            } else {
                v = 0.0f;
            }
        }
        out[i] = v;
    }
}

// as v2; out channel-major planes of hw when hw > 0
extern "C" __global__ void label_map_concat_forward_v3(float* out, const float* x, const float* bx,
                                                       const float* emb_w, const float* fc_w, const float* b,
                                                       const int* labels, int N, int L, int M, int K, int E,
                                                       float slope, int act, int has_bx, int hw)
{
    const int row = L + M;
    const long long total = (long long)N * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(i / row), j = (int)(i - (long long)n * row);
        float v;
        if (j < L) {
            v = x[(long long)n * L + j];
            if (has_bx) v += bx[j];
            if (act && !(v > 0.0f)) v *= slope;
        } else {
            const int k = labels[n];
            if (k >= 0 && k < K) {
                const float* er = emb_w + (long long)k * E;
                const float* wr = fc_w + (long long)(j - L) * E;
                float t = 0.0f;
                for (int e = 0; e < E; ++e) t += er[e] * wr[e];
                v = t + b[j - L];
            } else {
                v = 0.0f;
            }
        }
        out[lm_index(n, j, row, N, hw)] = v;
    }
}

// as v1; d and out channel-major planes of hw when hw > 0 (label_map_concat_forward_v3's layout)
extern "C" __global__ void label_map_concat_backward_v2(float* dx, float* dbx, float* dT, float* db, float* partials,
                                                        float* partials_t, unsigned int* counter, const float* d,
                                                        const float* out, const int* labels, int N, int L, int M,
                                                        int K, float slope, int act, int need_dx, int has_bx,
                                                        int need_label, int accumulate, int splits,
                                                        int hw)
{
    const int row = L + M;
    const int s = blockIdx.y;
    const int chunk = (N + splits - 1) / splits;
    const int n0 = min(s * chunk, N), n1 = min(n0 + chunk, N);
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < row; j += gridDim.x * blockDim.x) {
        float sum = 0.0f;
        if (j < L) {
            for (int n = n0; n < n1; ++n) {
                const long long i = lm_index(n, j, row, N, hw);
                float g = d[i];
                if (act && !(out[i] > 0.0f)) g *= slope;
                if (need_dx) dx[(long long)n * L + j] = g;
                sum += g;
            }
        } else if (need_label) {
            const int m = j - L;
            float* pt = partials_t + (long long)s * K * M + m;
            for (int k = 0; k < K; ++k) pt[(long long)k * M] = 0.0f;
            for (int n = n0; n < n1; ++n) {
                const float g = d[lm_index(n, j, row, N, hw)];
                const int k = labels[n];
                if (k >= 0 && k < K) pt[(long long)k * M] += g;
                sum += g;
            }
        }
        partials[(long long)s * row + j] = sum;
    }
    // the last block to finish adds the splits up, in split order
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x * gridDim.y - 1u;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* p = partials;
    const volatile float* q = partials_t;
    for (int j = threadIdx.x; j < row; j += blockDim.x) {
        if (j < L ? !has_bx : !need_label) continue;
        float t = 0.0f;
        for (int ss = 0; ss < splits; ++ss) t += p[(long long)ss * row + j];
        float* o = j < L ? dbx + j : db + (j - L);
        *o = accumulate ? *o + t : t;
    }
    if (need_label) {
        for (int e = threadIdx.x; e < K * M; e += blockDim.x) {
            float t = 0.0f;
            for (int ss = 0; ss < splits; ++ss) t += q[(long long)ss * K * M + e];
            dT[e] = t;
        }
    }
    if (threadIdx.x == 0) *counter = 0u;
}


// dT (K, M), emb_w (K, E), fc_w (M, E) -> demb (K, E) = dT fc_w, dfc_w (M, E) = dT^T emb_w;
// each added into when its acc flag is set, else written
extern "C" __global__ void label_table_grads_v1(float* demb, float* dfc_w, const float* dT, const float* emb_w,
                                                const float* fc_w, int K, int M, int E, int acc_emb, int acc_fc)
{
    const long long ke = (long long)K * E;
    const long long total = ke + (long long)M * E;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        if (i < ke) {
            const int k = (int)(i / E), e = (int)(i - (long long)k * E);
            float t = 0.0f;
            for (int m = 0; m < M; ++m) t += dT[(long long)k * M + m] * fc_w[(long long)m * E + e];
            demb[i] = acc_emb ? demb[i] + t : t;
        } else {
            const long long j = i - ke;
            const int m = (int)(j / E), e = (int)(j - (long long)m * E);
            float t = 0.0f;
            for (int k = 0; k < K; ++k) t += dT[(long long)k * M + m] * emb_w[(long long)k * E + e];
            dfc_w[j] = acc_fc ? dfc_w[j] + t : t;
        }
    }
}
