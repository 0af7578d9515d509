// philox.cuh: the counter-based generator Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC 2011; Random123), shared by philox.cu and dropout.cu.
// Included by relative path, as reduce.cuh is.
//
// One call maps a 128-bit counter and a 64-bit key to 128 random bits (four uint32 words),
// with no state: any element of any stream is computed on its own, by any thread, in any
// order, so every backend draws the same numbers. cganraw.ops.philox holds the NumPy twin
// (philox4x32_numpy) and the known-answer vectors of Random123's kat_vectors file.
//
// How cganraw lays out a draw (cganraw.ops.philox.Stream):
//   key     = (seed & 0xffffffff, seed >> 32)      64-bit seed of the model or the run
//   counter = (element >> 2, stream, step, call)   stream: what is drawn (noise, labels, a
//             Dropout layer's id); step: the training step; call: the draw within the step
//   element e takes word e & 3 of the block of its four.
//
// Conversions (exact integer arithmetic, or double rounded once to float, so the NumPy
// reference gives the same values):
//   philox_keep      dropout: keep iff (word >> 8) >= threshold, threshold = ceil(p 2^24)
//   philox_below     integer in [0, range): (word * range) >> 32 (Lemire's multiply-shift)
//   philox_unit      (word + 0.5) 2^-32 in (0, 1), a double
//   normals          Box-Muller on words (0, 1) and (2, 3), in double, rounded to float
#pragma once

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

struct philox_words { unsigned int w[4]; };

__device__ __forceinline__ void philox_round(unsigned int& c0, unsigned int& c1, unsigned int& c2,
                                             unsigned int& c3, unsigned int k0, unsigned int k1)
{
    unsigned long long p0 = (unsigned long long)PHILOX_M0 * c0;
    unsigned long long p1 = (unsigned long long)PHILOX_M1 * c2;
    unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
    unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
}

// Philox4x32 with 10 rounds: the key is bumped by the Weyl constants between rounds.
__device__ __forceinline__ philox_words philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2,
                                                      unsigned int c3, unsigned int k0, unsigned int k1)
{
    for (int r = 0; r < 10; ++r) {
        if (r) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        philox_round(c0, c1, c2, c3, k0, k1);
    }
    philox_words out;
    out.w[0] = c0; out.w[1] = c1; out.w[2] = c2; out.w[3] = c3;
    return out;
}

// The four words of block `block` (elements 4 block .. 4 block + 3) of a stream.
__device__ __forceinline__ philox_words philox_block(unsigned int block, unsigned int seed_lo,
                                                     unsigned int seed_hi, unsigned int stream,
                                                     unsigned int step, unsigned int call)
{
    return philox4x32_10(block, stream, step, call, seed_lo, seed_hi);
}

__device__ __forceinline__ bool philox_keep(unsigned int word, unsigned int threshold)
{
    return (word >> 8) >= threshold;
}

__device__ __forceinline__ unsigned int philox_below(unsigned int word, unsigned int range)
{
    return (unsigned int)(((unsigned long long)word * range) >> 32);
}

__device__ __forceinline__ double philox_unit(unsigned int word)
{
    return ((double)word + 0.5) * 2.3283064365386963e-10;   // 2^-32
}
