// The ops im2col and col2im of cganraw.ops.conv (launchers im2col_cuda, col2im_cuda), on
// which Conv2d and ConvTranspose2d run: conv2d is im2col + GEMM (kernels/gemm.cu or
// cuBLAS) + bias (kernels/bias.cu), its data gradient GEMM + col2im; a transposed conv is
// the same pair the other way round. The convolutions have no kernels of their own.
//
// Kernels:
//   im2col_v1   x (N, C, H, W) -> cols (C*k*k, N*Ho*Wo); one thread per cols element.
//   im2col_v2   adds a 2-D grid and 32-bit index math: blockIdx.y walks the cols rows
//               (c, i, j), decoded once per row, and threads walk the columns q = (n, oy,
//               ox) with two 32-bit divisions each, instead of one 64-bit division and
//               six 32-bit ones per element (a 64-bit division alone is ~70 instructions
//               on a GPU). THE DEFAULT.
//   col2im_v1   cols -> x, scatter: one thread per cols element, atomicAdd into x
//               (x must be zeroed first).
//   col2im_v2   cols -> x, gather: one thread per x element, summing the cols entries
//               of the windows that cover it; no atomics, no zero fill.
//   col2im_v3   v2 with a 2-D grid and 32-bit index math: blockIdx.y walks the (n, c)
//               planes, threads the plane's pixels. THE DEFAULT.
//   im2col_v3   im2col_v2 with the taps flipped when `flip` is 1: row (c, i, j) holds tap
//   col2im_v4   (k-1-i, k-1-j), and likewise col2im_v3 reads tap (i, j) from row (c, k-1-i,
//               k-1-j). A stride-1 conv with one output channel run as a transposed conv
//               (G's last Conv2d(w -> 1, k7), ops/conv.py) then takes its weight (1, C, k, k)
//               as the (C, k*k) GEMM operand it is, and gets its weight gradient the same
//               way: no flipped copy of W or of dW, no add of that copy into .grad (three
//               launches a step). flip 0 is v2 / v3 exactly.
// 32-bit versions need every index below 2^31: cols and x below 2^31 elements, which
// the launchers check on the host (ValueError naming the sizes); v1 and v2 index in 64
// bits but split an element into row and column with 32-bit parts, so they need the
// column count N*Ho*Wo below 2^31 (checked likewise). The k4 s2 p1 transposed conv no
// longer runs through col2im (ops/conv.py: phase-split GEMMs).
//
// Column layout (cganraw/ops/conv.py): row r = (c*k + i)*k + j, column q = (n*Ho + oy)*Wo + ox
// holds x[n, c, oy*s + i - p, ox*s + j - p], zero where that falls in the padding.
// Ho, Wo are passed in, not derived: a transposed conv fixes them to its input size
// (`out_hw`), and windows may overhang the far edge (up to s-1 pixels past the padding).
// Padding is handled by bounds checks, never by a padded copy. All loops grid-stride
// over a 64-bit element index (cols reach 1e8 elements at batch 64), so no size has to
// divide the block or the grid; one 64-bit division splits it into a row and a column
// (each < 2^31), and the rest of the index arithmetic is 32-bit (cheaper on a GPU).
//
// col2im: scatter (v1) or gather (v2)? Gather is the default. Let A be the number of
// cols elements that land inside x (the in-bounds taps) and |x| the pixels.
//   v1 scatter: reads all of cols (coalesced), zero-fills x (|x| writes, a separate
//               memset), then A atomicAdds: A read-modify-writes resolved in L2, with
//               (k/s)^2 threads colliding on each pixel (4 for k4 s2, 49 for G's last
//               conv, k7 s1, run as a transposed conv). Sum order is nondeterministic.
//   v2 gather:  reads the same A cols elements (each exactly once overall; a warp reads
//               runs of consecutive ox), writes x once; no atomics, no memset,
//               deterministic. Its extra cost is integer index work, which the tap
//               loop keeps to the ceil(k/s)^2 taps that can hit (start at (y+p) mod s,
//               step s) instead of testing all k*k.
// Traffic in float32 words for the conv cGAN (width 128, batch 3; bench/col2im_compare.py):
//   G.convT2 fwd  (2048, 588) -> (3,128,28,28): v1 3.74M, v2 1.42M (2.6x)
//   G.conv7 fwd   (49, 2352)  -> (3,1,28,28):   v1 0.32M, v2 0.10M (3.1x; 49-way atomics)
//   D.conv2 dx    (1152, 147) -> (3,128,14,14): v1 0.55M, v2 0.23M (2.4x)
// Emulator time (2 cores, 1 worker, best of 5), v1 / v2: G.convT2 159 / 39 ms,
// G.conv7 9.0 / 0.46 ms, D.conv2 17.6 / 8.4 ms, G.convT1 29.8 / 9.5 ms; at batch 16
// G.convT2 483 / 199 ms. Both on paper and in the emulator v2 wins, so it is the default;
// v1 stays as the reference scatter formulation and for comparison on GPUs.

// The x element that cols element e = (r, q) holds, or -1 where it falls in the padding.
// One 64-bit division splits e into a row r = (c, i, j) and a column q = (n, oy, ox).
__device__ __forceinline__ long long cols_source(long long e, long long L, int C, int H, int W,
                                                 int k, int s, int p, int Ho, int Wo)
{
    const long long r64 = e / L;
    const int r = (int)r64, q = (int)(e - r64 * L);
    const int ox = q % Wo, oy = (q / Wo) % Ho, n = q / (Wo * Ho);
    const int j = r % k, i = (r / k) % k, c = r / (k * k);
    const int yy = oy * s + i - p, xx = ox * s + j - p;
    if (yy < 0 || yy >= H || xx < 0 || xx >= W) return -1;
    return (((long long)n * C + c) * H + yy) * W + xx;
}

// x (N, C, H, W) -> cols (C*k*k, N*Ho*Wo)
// Thread e <-> cols element (r, q): consecutive threads write consecutive q, i.e.
// consecutive ox, so stores coalesce and loads are s-strided runs of one image row.
extern "C" __global__ void im2col_v1(const float* x, float* cols,
                                         int N, int C, int H, int W, int k, int s, int p,
                                         int Ho, int Wo)
{
    const long long L = (long long)N * Ho * Wo;           // columns
    const long long total = (long long)C * k * k * L;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long xi = cols_source(e, L, C, H, W, k, s, p, Ho, Wo);
        cols[e] = xi >= 0 ? x[xi] : 0.0f;
    }
}

// cols (C*k*k, N*Ho*Wo) -> x (N, C, H, W), scatter-add. x must hold zeros on entry.
// Thread e <-> cols element (r, q): coalesced reads of cols; the (k/s)^2 windows
// covering a pixel collide on it, hence atomicAdd.
extern "C" __global__ void col2im_v1(const float* cols, float* x,
                                          int N, int C, int H, int W, int k, int s, int p,
                                          int Ho, int Wo)
{
    const long long L = (long long)N * Ho * Wo;
    const long long total = (long long)C * k * k * L;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long xi = cols_source(e, L, C, H, W, k, s, p, Ho, Wo);
        if (xi >= 0) atomicAdd(&x[xi], cols[e]);      // taps in the padding are dropped
    }
}

// cols (C*k*k, N*Ho*Wo) -> x (N, C, H, W), gather: x is written, not accumulated.
// Thread e <-> x element (n, c, y, xo). The padded coordinate y + p equals oy*s + i, so
// the taps that hit are i = (y+p) mod s, +s, ... < k with 0 <= oy = (y+p-i)/s < Ho
// (likewise j/ox); at most ceil(k/s)^2 of them, each cols element read by one thread.
extern "C" __global__ void col2im_v2(const float* cols, float* x,
                                          int N, int C, int H, int W, int k, int s, int p,
                                          int Ho, int Wo)
{
    const long long L = (long long)N * Ho * Wo;
    const long long total = (long long)N * C * H * W;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long plane = e / ((long long)H * W);      // n*C + c
        const int pix = (int)(e - plane * H * W);
        const int xo = pix % W, y = pix / W;
        const int c = (int)(plane % C), n = (int)(plane / C);
        const int py = y + p, px = xo + p;          // coordinates in the padded image
        float acc = 0.0f;
        for (int i = py % s; i < k; i += s) {
            if (py - i < 0) break;                  // i only grows: no later tap hits
            int oy = (py - i) / s;
            if (oy >= Ho) continue;                 // window row past the last one
            for (int j = px % s; j < k; j += s) {
                if (px - j < 0) break;
                int ox = (px - j) / s;
                if (ox >= Wo) continue;
                long long r = ((long long)c * k + i) * k + j;
                acc += cols[r * L + ((long long)n * Ho + oy) * Wo + ox];
            }
        }
        x[e] = acc;
    }
}

// ---------------------------------------------------------------- 32-bit, 2-D grid versions

// x (N, C, H, W) -> cols (C*k*k, N*Ho*Wo). grid (x: column blocks, y: rows), both grid-strided.
// Requires C*k*k*N*Ho*Wo < 2^31 and N*C*H*W < 2^31 (host-checked).
extern "C" __global__ void im2col_v2(const float* x, float* cols,
                                     int N, int C, int H, int W, int k, int s, int p,
                                     int Ho, int Wo)
{
    const int L = N * Ho * Wo;
    const int R = C * k * k;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        const int j = r % k, i = (r / k) % k, c = r / (k * k);      // once per row
        float* row = cols + r * L;
        for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < L; q += gridDim.x * blockDim.x) {
            const int t = q / Wo;
            const int ox = q - t * Wo;
            const int n = t / Ho;
            const int oy = t - n * Ho;
            const int yy = oy * s + i - p, xx = ox * s + j - p;
            row[q] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((n * C + c) * H + yy) * W + xx] : 0.0f;
        }
    }
}

// cols (C*k*k, N*Ho*Wo) -> x (N, C, H, W), gather as col2im_v2. grid (x: pixel blocks,
// y: planes n*C + c), both grid-strided. Same 32-bit requirements as im2col_v2.
extern "C" __global__ void col2im_v3(const float* cols, float* x,
                                     int N, int C, int H, int W, int k, int s, int p,
                                     int Ho, int Wo)
{
    const int L = N * Ho * Wo;
    const int HW = H * W;
    for (int plane = blockIdx.y; plane < N * C; plane += gridDim.y) {
        const int c = plane % C, n = plane / C;                      // once per plane
        for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < HW; pix += gridDim.x * blockDim.x) {
            const int y = pix / W;
            const int xo = pix - y * W;
            const int py = y + p, px = xo + p;
            float acc = 0.0f;
            for (int i = py % s; i < k; i += s) {
                if (py - i < 0) break;
                const int oy = (py - i) / s;
                if (oy >= Ho) continue;
                for (int jj = px % s; jj < k; jj += s) {
                    if (px - jj < 0) break;
                    const int ox = (px - jj) / s;
                    if (ox >= Wo) continue;
                    acc += cols[((c * k + i) * k + jj) * L + (n * Ho + oy) * Wo + ox];
                }
            }
            x[plane * HW + pix] = acc;
        }
    }
}

// ---------------------------------------------------------------- flipped taps

// im2col_v2, with row (c, i, j) holding tap (k-1-i, k-1-j) when flip != 0.
extern "C" __global__ void im2col_v3(const float* x, float* cols,
                                     int N, int C, int H, int W, int k, int s, int p,
                                     int Ho, int Wo, int flip)
{
    const int L = N * Ho * Wo;
    const int R = C * k * k;
    for (int r = blockIdx.y; r < R; r += gridDim.y) {
        int j = r % k, i = (r / k) % k;
        const int c = r / (k * k);
        if (flip) { i = k - 1 - i; j = k - 1 - j; }
        float* row = cols + r * L;
        for (int q = blockIdx.x * blockDim.x + threadIdx.x; q < L; q += gridDim.x * blockDim.x) {
            const int t = q / Wo;
            const int ox = q - t * Wo;
            const int n = t / Ho;
            const int oy = t - n * Ho;
            const int yy = oy * s + i - p, xx = ox * s + j - p;
            row[q] = (yy >= 0 && yy < H && xx >= 0 && xx < W) ? x[((n * C + c) * H + yy) * W + xx] : 0.0f;
        }
    }
}

// col2im_v3, with tap (i, j) read from row (c, k-1-i, k-1-j) when flip != 0.
extern "C" __global__ void col2im_v4(const float* cols, float* x,
                                     int N, int C, int H, int W, int k, int s, int p,
                                     int Ho, int Wo, int flip)
{
    const int L = N * Ho * Wo;
    const int HW = H * W;
    for (int plane = blockIdx.y; plane < N * C; plane += gridDim.y) {
        const int c = plane % C, n = plane / C;
        for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < HW; pix += gridDim.x * blockDim.x) {
            const int y = pix / W;
            const int xo = pix - y * W;
            const int py = y + p, px = xo + p;
            float acc = 0.0f;
            for (int i = py % s; i < k; i += s) {
                if (py - i < 0) break;
                const int oy = (py - i) / s;
                if (oy >= Ho) continue;
                const int ri = flip ? k - 1 - i : i;
                for (int jj = px % s; jj < k; jj += s) {
                    if (px - jj < 0) break;
                    const int ox = (px - jj) / s;
                    if (ox >= Wo) continue;
                    const int rj = flip ? k - 1 - jj : jj;
                    acc += cols[((c * k + ri) * k + rj) * L + (n * Ho + oy) * Wo + ox];
                }
            }
            x[plane * HW + pix] = acc;
        }
    }
}
