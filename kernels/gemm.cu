// SGEMM: C = alpha * op(A) @ op(B) + beta * C in float32, all matrices row-major: the op
// gemm of cganraw.ops.gemm (launcher gemm_cuda(..., version=v)), under Linear, Conv2d and
// ConvTranspose2d.
//
// Kernels, the ladder (each step keeps what the previous one has):
//   gemm_v1  naive: one thread per output element, K-loop from global memory.
//   gemm_v2  adds shared-memory tiling: 32x32 tiles of op(A) and op(B) staged through
//            shared memory by a 32x32 block, one output per thread.
//   gemm_v3  adds register blocking: a 64x64 tile of C per 256-thread block, each thread
//            accumulating a 4x4 sub-tile in registers from 64x16 / 16x64 shared tiles, so
//            each shared value read feeds 4 multiply-adds; float4 global loads along each
//            operand's contiguous axis where the pointer and row stride allow (a scalar
//            path covers the rest and every edge); and split-K: blockIdx.z takes one
//            k_chunk of K and writes its partial product to its own (M, N) slice of a
//            workspace, which gemm_splitk_reduce_v1 sums in a fixed order (no atomics:
//            the result is the same from run to run). Split-K feeds the GPU on the tall
//            and skinny weight-gradient GEMMs (M*N small, K = batch*pixels large), where
//            the output tiles alone give a handful of blocks for 132 SMs.
//   gemm_v4  tensor cores: WMMA (nvcuda::wmma, <mma.h>) m16n16k8 with TF32 inputs and FP32
//            accumulation. A 64x64 tile of C per 128-thread block, 4 warps of 32x32 warp
//            tiles (2x2 WMMA tiles each, so each loaded A/B fragment feeds 2 MMAs);
//            double-buffered shared tiles (the next 16-wide K slice is loaded while the
//            current one is multiplied), filled by cp.async 16-byte copies on sm_80+
//            (plain float4 loads in the emulator and on older GPUs), float4 where
//            aligned, scalar at the edges; the shared layouts follow each operand's
//            storage (row- or column-major WMMA fragments), so no transpose is needed;
//            split-K as v3. Inputs are rounded to TF32 (10-bit mantissa): results differ
//            from FP32 at the 1e-3 level (relative error per product up to 2^-10).
//            Compiled only where <mma.h> is found (a CUDA toolkit's include folder, which
//            cganraw.ops._launch passes; the emulator has its own); else gemm_v4 is absent
//            and the launcher says so.
//   gemm_splitk_reduce_v1  C = alpha * sum_z P[z] + beta * C over the (splits, M, N)
//            workspace P, z in order.
//
// Common signature (v1..v4; k_chunk only v3/v4):
//   A      op(A) is (M, K): stored (M, K) with row stride lda when trans_a == 0,
//                           stored (K, M) with row stride lda when trans_a != 0
//   B      op(B) is (K, N): stored (K, N) with row stride ldb when trans_b == 0,
//                           stored (N, K) with row stride ldb when trans_b != 0
//   C      (M, N) with row stride ldc; read only when beta != 0 (as in BLAS, so an
//          uninitialised output may be passed with beta == 0). With gridDim.z > 1
//          (split-K) block z writes C + z*M*ldc, covering K range [z*k_chunk,
//          min(K, (z+1)*k_chunk)); k_chunk is a multiple of the K tile (16).
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

// ---------------------------------------------------------------- helpers for v3, v4

// 16-byte alignment of a pointer, for the float4 paths
__device__ __forceinline__ bool gemm_aligned16(const void* p)
{
    return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0ull;
}

// 4 consecutive values src[row * ld + col .. col + 3] of a stored matrix, zero where
// row >= row_end or col + i >= col_end; one float4 load when vec (base pointer 16-byte
// aligned, ld a multiple of 4; col is a multiple of 4) and all four are in bounds.
__device__ __forceinline__ float4 gemm_load4(const float* src, int ld, int row, int row_end,
                                             int col, int col_end, bool vec)
{
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row >= row_end) return v;
    const float* p = src + GEMM_IDX(row, col, ld);
    if (vec && col + 3 < col_end) return *reinterpret_cast<const float4*>(p);
    if (col < col_end) v.x = p[0];
    if (col + 1 < col_end) v.y = p[1];
    if (col + 2 < col_end) v.z = p[2];
    if (col + 3 < col_end) v.w = p[3];
    return v;
}

// the K range of split z: [k_begin, k_end)
__device__ __forceinline__ void gemm_k_range(int K, int k_chunk, int& k_begin, int& k_end)
{
    long long b = (long long)blockIdx.z * k_chunk;
    k_begin = b < K ? (int)b : K;
    k_end = b + k_chunk < K ? (int)(b + k_chunk) : K;
}

// ---------------------------------------------------------------- version 3
// block (256): a 64x64 tile of C, K consumed 16 at a time. Thread t = (ty, tx) =
// (t / 16, t % 16) owns rows m0 + ty + 16*i and columns n0 + tx + 16*j (i, j < 4):
// strided rather than adjacent, so that a warp's shared reads of Bs hit 16 consecutive
// words (no bank conflicts) and its C stores are 16-float contiguous runs.
// Shared tiles are k-major, As[k][m] and Bs[k][n], rows padded to 68 floats (16-byte
// aligned rows for the float4 stores). Each thread loads one float4 group of each tile
// along the stored matrix's contiguous axis: A (M, K) along k, A^T (K, M) along m,
// B (K, N) along n, B^T (N, K) along k.
#define V3_BM 64
#define V3_BN 64
#define V3_BK 16
#define V3_TM 4
#define V3_TN 4
#define V3_THREADS 256
#define V3_PAD 4

extern "C" __global__ void gemm_v3(const float* A, const float* B, float* C,
                                   int M, int N, int K, int lda, int ldb, int ldc,
                                   int trans_a, int trans_b, float alpha, float beta, int k_chunk)
{
    __shared__ __align__(16) float As[V3_BK][V3_BM + V3_PAD];
    __shared__ __align__(16) float Bs[V3_BK][V3_BN + V3_PAD];
    const int t = threadIdx.x;          // blockDim.x must be V3_THREADS (the launcher's)
    const int tx = t % 16, ty = t / 16;
    const int tiles_m = (M + V3_BM - 1) / V3_BM;
    const int tiles_n = (N + V3_BN - 1) / V3_BN;
    int k_begin, k_end;
    gemm_k_range(K, k_chunk, k_begin, k_end);
    float* Cz = C + (long long)blockIdx.z * M * ldc;   // this split's slice (C itself when unsplit)
    const bool vec_a = gemm_aligned16(A) && lda % 4 == 0;
    const bool vec_b = gemm_aligned16(B) && ldb % 4 == 0;

    for (int bm = blockIdx.y; bm < tiles_m; bm += gridDim.y) {
        for (int bn = blockIdx.x; bn < tiles_n; bn += gridDim.x) {
            const int m0 = bm * V3_BM, n0 = bn * V3_BN;
            float acc[V3_TM][V3_TN];
#pragma unroll
            for (int i = 0; i < V3_TM; ++i)
#pragma unroll
                for (int j = 0; j < V3_TN; ++j) acc[i][j] = 0.0f;

            for (int k0 = k_begin; k0 < k_end; k0 += V3_BK) {
                // op(A) tile 64 x 16 = 256 float4 groups, one per thread; op(B) alike
                if (!trans_a) {   // A (M, K): row m, 4 k's
                    const int mm = t / 4, kk = (t % 4) * 4;
                    float4 v = gemm_load4(A, lda, m0 + mm, M, k0 + kk, k_end, vec_a);
                    As[kk][mm] = v.x; As[kk + 1][mm] = v.y; As[kk + 2][mm] = v.z; As[kk + 3][mm] = v.w;
                } else {          // A^T (K, M): row k, 4 m's
                    const int kk = t / 16, mm = (t % 16) * 4;
                    *reinterpret_cast<float4*>(&As[kk][mm]) = gemm_load4(A, lda, k0 + kk, k_end, m0 + mm, M, vec_a);
                }
                if (!trans_b) {   // B (K, N): row k, 4 n's
                    const int kk = t / 16, nn = (t % 16) * 4;
                    *reinterpret_cast<float4*>(&Bs[kk][nn]) = gemm_load4(B, ldb, k0 + kk, k_end, n0 + nn, N, vec_b);
                } else {          // B^T (N, K): row n, 4 k's
                    const int nn = t / 4, kk = (t % 4) * 4;
                    float4 v = gemm_load4(B, ldb, n0 + nn, N, k0 + kk, k_end, vec_b);
                    Bs[kk][nn] = v.x; Bs[kk + 1][nn] = v.y; Bs[kk + 2][nn] = v.z; Bs[kk + 3][nn] = v.w;
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
                    if (n < N) store_c(Cz, ldc, m, n, acc[i][j], alpha, beta);
                }
            }
        }
    }
}

// ---------------------------------------------------------------- split-K reduction
// P: (splits, M, N) partial products (contiguous) -> C (M, N, row stride ldc):
// C = alpha * (P[0] + P[1] + ... ) + beta * C, each sum in split order. Grid-strided.
extern "C" __global__ void gemm_splitk_reduce_v1(float* C, const float* P, int M, int N, int ldc,
                                                 int splits, float alpha, float beta)
{
    const long long mn = (long long)M * N;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < mn;
         e += (long long)gridDim.x * blockDim.x) {
        float acc = 0.0f;
        for (int z = 0; z < splits; ++z) acc += P[z * mn + e];
        const int m = (int)(e / N), n = (int)(e - (long long)m * N);
        store_c(C, ldc, m, n, acc, alpha, beta);
    }
}

// ---------------------------------------------------------------- version 4 (tensor cores)
#if defined(__has_include)
#if __has_include(<mma.h>)
#include <mma.h>
#define GEMM_HAVE_WMMA 1
#endif
#endif

#if defined(GEMM_HAVE_WMMA)
// cp.async (sm_80+): a 16-byte global -> shared copy that bypasses registers, committed
// in groups and awaited per stage. Elsewhere (the emulator, older GPUs) a float4 copy.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800 && !defined(CUDA_EMU)
#define GEMM_CP_ASYNC 1
#endif

__device__ __forceinline__ void gemm_copy16(float* dst_shared, const float* src)
{
#if defined(GEMM_CP_ASYNC)
    unsigned dst = (unsigned)__cvta_generic_to_shared(dst_shared);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
#else
    *reinterpret_cast<float4*>(dst_shared) = *reinterpret_cast<const float4*>(src);
#endif
}

__device__ __forceinline__ void gemm_cp_commit()
{
#if defined(GEMM_CP_ASYNC)
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// wait until at most `pending` of this thread's committed groups are still in flight
template <int pending>
__device__ __forceinline__ void gemm_cp_wait()
{
#if defined(GEMM_CP_ASYNC)
    asm volatile("cp.async.wait_group %0;\n" ::"n"(pending));
#endif
}

#define V4_BM 64
#define V4_BN 64
#define V4_BK 16
#define V4_THREADS 128          // 4 warps: 2 (m) x 2 (n) warp tiles of 32 x 32
#define V4_PAD 4                // row padding in floats: rows stay 16-byte aligned, ldm % 4 == 0
#define V4_STAGE (V4_BM * (V4_BK + V4_PAD))   // floats per operand per stage (>= V4_BK * (V4_BM + V4_PAD))

// One operand's tile into shared memory: ROWS x COLS of the stored matrix (COLS along
// its contiguous axis) at (row0, col0), rows < row_end and cols < col_end valid (zero
// past them), into dst with row pitch PITCH. 16-byte groups, spread over the block.
template <int ROWS, int COLS, int PITCH>
__device__ __forceinline__ void gemm_v4_load_tile(float* dst, const float* src, int ld, int row0,
                                                  int row_end, int col0, int col_end, bool vec)
{
    for (int g = threadIdx.x; g < ROWS * COLS / 4; g += V4_THREADS) {
        const int r = g / (COLS / 4), c = (g % (COLS / 4)) * 4;
        const int row = row0 + r, col = col0 + c;
        float* d = dst + r * PITCH + c;
        if (vec && row < row_end && col + 3 < col_end) {
            gemm_copy16(d, src + GEMM_IDX(row, col, ld));
        } else {
            float4 v = gemm_load4(src, ld, row, row_end, col, col_end, false);
            d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
        }
    }
}

template <bool COL> struct gemm_wmma_layout { typedef nvcuda::wmma::row_major type; };
template <> struct gemm_wmma_layout<true> { typedef nvcuda::wmma::col_major type; };

// Shared layouts (per stage), following each operand's storage:
//   A (M, K), TA = 0: [BM][BK + PAD], m rows     -> matrix_a row_major, ldm BK + PAD
//   A^T (K, M), TA:   [BK][BM + PAD], k rows     -> matrix_a col_major, ldm BM + PAD
//   B (K, N), TB = 0: [BK][BN + PAD], k rows     -> matrix_b row_major, ldm BN + PAD
//   B^T (N, K), TB:   [BN][BK + PAD], n rows     -> matrix_b col_major, ldm BK + PAD
// Fragment pointers land on 32-byte boundaries (WMMA needs 256-bit alignment): row
// offsets are multiples of 16 rows and column offsets multiples of 8 floats.
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_v4_load_stage(float* as, float* bs, const float* A, const float* B,
                                                   int lda, int ldb, int M, int N, int m0, int n0,
                                                   int k0, int k_end, bool vec_a, bool vec_b)
{
    if (!TA) gemm_v4_load_tile<V4_BM, V4_BK, V4_BK + V4_PAD>(as, A, lda, m0, M, k0, k_end, vec_a);
    else     gemm_v4_load_tile<V4_BK, V4_BM, V4_BM + V4_PAD>(as, A, lda, k0, k_end, m0, M, vec_a);
    if (!TB) gemm_v4_load_tile<V4_BK, V4_BN, V4_BN + V4_PAD>(bs, B, ldb, k0, k_end, n0, N, vec_b);
    else     gemm_v4_load_tile<V4_BN, V4_BK, V4_BK + V4_PAD>(bs, B, ldb, n0, N, k0, k_end, vec_b);
    gemm_cp_commit();
}

// As, Bs: [2][V4_STAGE] (two stages); staging: [4][256], one epilogue tile per warp
template <bool TA, bool TB>
__device__ __forceinline__ void gemm_v4_body(const float* A, const float* B, float* C,
                                             int M, int N, int K, int lda, int ldb, int ldc,
                                             float alpha, float beta, int k_chunk,
                                             float* As, float* Bs, float* staging)
{
    using namespace nvcuda;
    typedef typename gemm_wmma_layout<TA>::type LayoutA;
    typedef typename gemm_wmma_layout<TB>::type LayoutB;
    const int LDA_S = TA ? V4_BM + V4_PAD : V4_BK + V4_PAD;
    const int LDB_S = TB ? V4_BK + V4_PAD : V4_BN + V4_PAD;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 2, wn = warp % 2;            // this warp's 32 x 32 tile in the block
    float* stage_tile = staging + warp * 256;
    const int tiles_m = (M + V4_BM - 1) / V4_BM;
    const int tiles_n = (N + V4_BN - 1) / V4_BN;
    int k_begin, k_end;
    gemm_k_range(K, k_chunk, k_begin, k_end);
    const int k_tiles = (k_end - k_begin + V4_BK - 1) / V4_BK;
    float* Cz = C + (long long)blockIdx.z * M * ldc;
    const bool vec_a = gemm_aligned16(A) && lda % 4 == 0;
    const bool vec_b = gemm_aligned16(B) && ldb % 4 == 0;

    for (int bm = blockIdx.y; bm < tiles_m; bm += gridDim.y) {
        for (int bn = blockIdx.x; bn < tiles_n; bn += gridDim.x) {
            const int m0 = bm * V4_BM, n0 = bn * V4_BN;
            wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

            if (k_tiles > 0)
                gemm_v4_load_stage<TA, TB>(As, Bs, A, B, lda, ldb, M, N, m0, n0, k_begin, k_end, vec_a, vec_b);
            for (int kt = 0; kt < k_tiles; ++kt) {
                const float* as = As + (kt & 1) * V4_STAGE;
                const float* bs = Bs + (kt & 1) * V4_STAGE;
                if (kt + 1 < k_tiles) {   // prefetch the next slice into the other stage
                    const int nxt = ((kt + 1) & 1) * V4_STAGE;
                    gemm_v4_load_stage<TA, TB>(As + nxt, Bs + nxt, A, B, lda, ldb, M, N, m0, n0,
                                               k_begin + (kt + 1) * V4_BK, k_end, vec_a, vec_b);
                    gemm_cp_wait<1>();    // this thread's copies of the current stage are done
                } else {
                    gemm_cp_wait<0>();
                }
                __syncthreads();          // ... and every thread's: the stage is complete

#pragma unroll
                for (int kk = 0; kk < V4_BK; kk += 8) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LayoutA> fa[2];
                    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LayoutB> fb[2];
#pragma unroll
                    for (int i = 0; i < 2; ++i) {
                        const int mm = wm * 32 + i * 16;
                        wmma::load_matrix_sync(fa[i], TA ? as + kk * LDA_S + mm : as + mm * LDA_S + kk, LDA_S);
#pragma unroll
                        for (int e = 0; e < fa[i].num_elements; ++e) fa[i].x[e] = wmma::__float_to_tf32(fa[i].x[e]);
                    }
#pragma unroll
                    for (int j = 0; j < 2; ++j) {
                        const int nn = wn * 32 + j * 16;
                        wmma::load_matrix_sync(fb[j], TB ? bs + nn * LDB_S + kk : bs + kk * LDB_S + nn, LDB_S);
#pragma unroll
                        for (int e = 0; e < fb[j].num_elements; ++e) fb[j].x[e] = wmma::__float_to_tf32(fb[j].x[e]);
                    }
#pragma unroll
                    for (int i = 0; i < 2; ++i)
#pragma unroll
                        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
                }
                __syncthreads();          // everyone done reading before the stage is refilled
            }

            // epilogue: each 16 x 16 accumulator through the warp's staging tile, then
            // bounds-checked stores with alpha/beta (lanes 0-15 and 16-31 write two rows)
#pragma unroll
            for (int i = 0; i < 2; ++i) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    wmma::store_matrix_sync(stage_tile, acc[i][j], 16, wmma::mem_row_major);
                    __syncwarp();
                    for (int e = lane; e < 256; e += 32) {
                        const int m = m0 + wm * 32 + i * 16 + e / 16;
                        const int n = n0 + wn * 32 + j * 16 + e % 16;
                        if (m < M && n < N) store_c(Cz, ldc, m, n, stage_tile[e], alpha, beta);
                    }
                    __syncwarp();         // the staging tile is read before the next store
                }
            }
        }
    }
}

// block (128) exactly; grid (tiles_n, min(tiles_m, 65535), splits). The shared arrays
// live here, not in the templated body, so the four instantiations share them.
extern "C" __global__ __launch_bounds__(V4_THREADS) void gemm_v4(
    const float* A, const float* B, float* C, int M, int N, int K, int lda, int ldb, int ldc,
    int trans_a, int trans_b, float alpha, float beta, int k_chunk)
{
    __shared__ __align__(32) float As[2 * V4_STAGE];
    __shared__ __align__(32) float Bs[2 * V4_STAGE];
    __shared__ __align__(32) float staging[(V4_THREADS / 32) * 256];
    if (!trans_a && !trans_b)
        gemm_v4_body<false, false>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, k_chunk, As, Bs, staging);
    else if (trans_a && !trans_b)
        gemm_v4_body<true, false>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, k_chunk, As, Bs, staging);
    else if (!trans_a)
        gemm_v4_body<false, true>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, k_chunk, As, Bs, staging);
    else
        gemm_v4_body<true, true>(A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, k_chunk, As, Bs, staging);
}
#endif  // GEMM_HAVE_WMMA
