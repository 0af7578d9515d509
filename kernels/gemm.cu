// SGEMM: C = alpha * op(A) @ op(B) + beta * C in float32, all matrices row-major: the op
// gemm of cganraw.ops.gemm (launcher gemm_cuda(..., version=v)), under Linear, Conv2d and
// ConvTranspose2d.
//
// Kernels:
//   gemm_v1  naive: one thread per output element, K-loop from global memory.
//   gemm_v2  adds shared-memory tiling: 32x32 tiles of op(A) and op(B) staged through
//            shared memory by a 32x32 block, one output per thread.
//   gemm_v3  adds register blocking: a 64x64 tile of C per 256-thread block, each thread
//            accumulating a 4x4 sub-tile in registers from 64x16 / 16x64 shared tiles, so
//            each shared value read feeds 4 multiply-adds.
//
// Common signature:
//   A      op(A) is (M, K): stored (M, K) with row stride lda when trans_a == 0,
//                           stored (K, M) with row stride lda when trans_a != 0
//   B      op(B) is (K, N): stored (K, N) with row stride ldb when trans_b == 0,
//                           stored (N, K) with row stride ldb when trans_b != 0
//   C      (M, N) with row stride ldc; read only when beta != 0 (as in BLAS, so an
//          uninitialised output may be passed with beta == 0)
// The layers need A^T.B (weight gradients) and A.B^T (dense forward) on the same
// buffers, so the transposes are flags read at load time, never copies.
//
// No size has to divide a tile or a block: GAN shapes are 7x7, 14x14, 28x28 and odd
// batches (M, N, K = 1, 7, 147, 1152 ...). Every global load is bounds-checked (tiles
// are zero-filled past the edge) and every store is guarded. Tile loops grid-stride, so
// any grid works (gridDim.y is capped at 65535 by the launcher). Element offsets are
// computed in 64 bits: a (2048, 64*784) column matrix already has 1e8 elements.

#define GEMM_IDX(row, col, ld) ((long long)(row) * (long long)(ld) + (long long)(col))

// op(A)[m, k] and op(B)[k, n] through the transpose flags (callers check the bounds)
__device__ __forceinline__ float load_a(const float* A, int lda, int trans_a, int m, int k)
{
    return trans_a ? A[GEMM_IDX(k, m, lda)] : A[GEMM_IDX(m, k, lda)];
}

__device__ __forceinline__ float load_b(const float* B, int ldb, int trans_b, int k, int n)
{
    return trans_b ? B[GEMM_IDX(n, k, ldb)] : B[GEMM_IDX(k, n, ldb)];
}

// C[m, n] = alpha * acc + beta * C[m, n], without reading C when beta == 0
__device__ __forceinline__ void store_c(float* C, int ldc, int m, int n, float acc, float alpha, float beta)
{
    long long o = GEMM_IDX(m, n, ldc);
    C[o] = beta == 0.0f ? alpha * acc : alpha * acc + beta * C[o];
}

// ---------------------------------------------------------------- version 1
// block (32, 8): threadIdx.x runs along n so that the C stores (and the B loads when B
// is not transposed) of a warp are contiguous. Grid (ceil(N/32), ceil(M/8)) or fewer:
// both axes grid-stride.
extern "C" __global__ void gemm_v1(const float* A, const float* B, float* C,
                                         int M, int N, int K, int lda, int ldb, int ldc,
                                         int trans_a, int trans_b, float alpha, float beta)
{
    for (int m = blockIdx.y * blockDim.y + threadIdx.y; m < M; m += gridDim.y * blockDim.y) {
        for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
            float acc = 0.0f;
            for (int k = 0; k < K; ++k)
                acc += load_a(A, lda, trans_a, m, k) * load_b(B, ldb, trans_b, k, n);
            store_c(C, ldc, m, n, acc, alpha, beta);
        }
    }
}

// ---------------------------------------------------------------- version 2
// block (32, 32) must be launched exactly so (the tile loads use all 1024 threads).
// Tile loop: blockIdx.y over ceil(M/32) row tiles, blockIdx.x over ceil(N/32) column
// tiles, both grid-strided; every thread of a block runs the same trip counts, so the
// barriers are uniform. Threads outside C only load and hold the barriers.
#define V2_TILE 32

extern "C" __global__ void gemm_v2(const float* A, const float* B, float* C,
                                         int M, int N, int K, int lda, int ldb, int ldc,
                                         int trans_a, int trans_b, float alpha, float beta)
{
    // As[m][k], Bs[k][n]; +1 column so the transposed stores (as[tx][ty]) hit 32 banks
    __shared__ float As[V2_TILE][V2_TILE + 1];
    __shared__ float Bs[V2_TILE][V2_TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tiles_m = (M + V2_TILE - 1) / V2_TILE;
    const int tiles_n = (N + V2_TILE - 1) / V2_TILE;

    for (int bm = blockIdx.y; bm < tiles_m; bm += gridDim.y) {
        for (int bn = blockIdx.x; bn < tiles_n; bn += gridDim.x) {
            const int m0 = bm * V2_TILE, n0 = bn * V2_TILE;
            float acc = 0.0f;
            for (int k0 = 0; k0 < K; k0 += V2_TILE) {
                // coalesced loads: consecutive tx read consecutive addresses of the stored
                // matrix, whichever way it is transposed; zero past the edges
                if (!trans_a) {   // A (M, K): tx along k
                    int m = m0 + ty, k = k0 + tx;
                    As[ty][tx] = (m < M && k < K) ? A[GEMM_IDX(m, k, lda)] : 0.0f;
                } else {          // A (K, M): tx along m
                    int m = m0 + tx, k = k0 + ty;
                    As[tx][ty] = (m < M && k < K) ? A[GEMM_IDX(k, m, lda)] : 0.0f;
                }
                if (!trans_b) {   // B (K, N): tx along n
                    int k = k0 + ty, n = n0 + tx;
                    Bs[ty][tx] = (k < K && n < N) ? B[GEMM_IDX(k, n, ldb)] : 0.0f;
                } else {          // B (N, K): tx along k
                    int k = k0 + tx, n = n0 + ty;
                    Bs[tx][ty] = (k < K && n < N) ? B[GEMM_IDX(n, k, ldb)] : 0.0f;
                }
                __syncthreads();   // tiles complete before anyone reads them
#pragma unroll 8
                for (int kk = 0; kk < V2_TILE; ++kk)
                    acc += As[ty][kk] * Bs[kk][tx];   // As broadcast, Bs consecutive: no conflicts
                __syncthreads();   // everyone done reading before the next tiles overwrite
            }
            const int m = m0 + ty, n = n0 + tx;
            if (m < M && n < N)
                store_c(C, ldc, m, n, acc, alpha, beta);
        }
    }
}

// ---------------------------------------------------------------- version 3
// block (256): a 64x64 tile of C, K consumed 16 at a time. Thread t = (ty, tx) =
// (t / 16, t % 16) owns rows m0 + ty + 16*i and columns n0 + tx + 16*j (i, j < 4):
// strided rather than adjacent, so that a warp's shared reads of Bs hit 16 consecutive
// words (no bank conflicts) and its C stores are 16-float contiguous runs.
// Shared tiles are k-major, As[k][m] and Bs[k][n], with rows padded to 66 floats: the
// loads that walk k across a warp (A not transposed, B transposed) then store to
// banks 2k + {0, 1}, all distinct.
#define V3_BM 64
#define V3_BN 64
#define V3_BK 16
#define V3_TM 4
#define V3_TN 4
#define V3_THREADS 256
#define V3_PAD 2

extern "C" __global__ void gemm_v3(const float* A, const float* B, float* C,
                                         int M, int N, int K, int lda, int ldb, int ldc,
                                         int trans_a, int trans_b, float alpha, float beta)
{
    __shared__ float As[V3_BK][V3_BM + V3_PAD];
    __shared__ float Bs[V3_BK][V3_BN + V3_PAD];
    const int t = threadIdx.x;          // blockDim.x must be V3_THREADS (the launcher's)
    const int tx = t % 16, ty = t / 16;
    const int tiles_m = (M + V3_BM - 1) / V3_BM;
    const int tiles_n = (N + V3_BN - 1) / V3_BN;

    for (int bm = blockIdx.y; bm < tiles_m; bm += gridDim.y) {
        for (int bn = blockIdx.x; bn < tiles_n; bn += gridDim.x) {
            const int m0 = bm * V3_BM, n0 = bn * V3_BN;
            float acc[V3_TM][V3_TN];
#pragma unroll
            for (int i = 0; i < V3_TM; ++i)
#pragma unroll
                for (int j = 0; j < V3_TN; ++j) acc[i][j] = 0.0f;

            for (int k0 = 0; k0 < K; k0 += V3_BK) {
                // op(A) tile 64 x 16 = 1024 values, 4 per thread; op(B) tile 16 x 64 likewise.
                // Each mapping makes consecutive threads read consecutive stored addresses.
#pragma unroll
                for (int r = 0; r < (V3_BM * V3_BK) / V3_THREADS; ++r) {
                    int e = t + r * V3_THREADS;
                    int mm, kk;
                    if (!trans_a) { kk = e % V3_BK; mm = e / V3_BK; }   // A (M, K): along k
                    else          { mm = e % V3_BM; kk = e / V3_BM; }   // A (K, M): along m
                    int m = m0 + mm, k = k0 + kk;
                    As[kk][mm] = (m < M && k < K) ? load_a(A, lda, trans_a, m, k) : 0.0f;
                }
#pragma unroll
                for (int r = 0; r < (V3_BN * V3_BK) / V3_THREADS; ++r) {
                    int e = t + r * V3_THREADS;
                    int nn, kk;
                    if (!trans_b) { nn = e % V3_BN; kk = e / V3_BN; }   // B (K, N): along n
                    else          { kk = e % V3_BK; nn = e / V3_BK; }   // B (N, K): along k
                    int n = n0 + nn, k = k0 + kk;
                    Bs[kk][nn] = (n < N && k < K) ? load_b(B, ldb, trans_b, k, n) : 0.0f;
                }
                __syncthreads();   // tiles complete before anyone reads them

#pragma unroll
                for (int kk = 0; kk < V3_BK; ++kk) {
                    float a[V3_TM], b[V3_TN];
#pragma unroll
                    for (int i = 0; i < V3_TM; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
                    for (int j = 0; j < V3_TN; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
                    for (int i = 0; i < V3_TM; ++i)
#pragma unroll
                        for (int j = 0; j < V3_TN; ++j) acc[i][j] += a[i] * b[j];
                }
                __syncthreads();   // everyone done reading before the next tiles overwrite
            }

#pragma unroll
            for (int i = 0; i < V3_TM; ++i) {
                int m = m0 + ty + 16 * i;
                if (m >= M) continue;
#pragma unroll
                for (int j = 0; j < V3_TN; ++j) {
                    int n = n0 + tx + 16 * j;
                    if (n < N) store_c(C, ldc, m, n, acc[i][j], alpha, beta);
                }
            }
        }
    }
}
