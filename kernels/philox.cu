// Random numbers drawn on the device from Philox4x32-10 (philox.cuh): the ops philox_bits,
// philox_normal, philox_integers and philox_shift_labels of cganraw.ops.philox (launchers
// <op>_cuda; the NumPy twins <op>_numpy draw the same values on the CPU).
//
// Every kernel takes the stream as (seed_lo, seed_hi, stream, step, call) and a first block
// `block0` (0 except in the known-answer tests), and computes one block of four elements
// per thread: element e = 4 (block - block0) + j takes word j of Philox(block, ...).
// Bounds-checked, grid-strided over blocks; no size needs to be a multiple of 4.
//
// Kernels (one version each):
//   philox_bits_v1          the raw words (uint32): known-answer tests, and a mask source
//   philox_normal_v1        N(0, 1) floats: Box-Muller on words (0, 1) and (2, 3) in double,
//                           rounded to float (the NumPy twin computes the same doubles)
//   philox_integers_v1      int32 in [low, low + range) by multiply-shift; with fold > 0
//                           element i >= fold repeats element i - fold (the mode-seeking
//                           pairs share their labels)
//   philox_shift_labels_v1  (label + 1 + below(word, K - 1)) mod K: every label moved to a
//                           different one of K classes (the mismatch term's wrong labels)
//   philox_step_draws_v1    a training step's draws for D's batch in one launch: the noise
//                           z (philox_normal_v1 of stream `noise`), and the batch's labels
//                           [real | wrong | fake]: the real labels copied, the wrong ones as
//                           philox_shift_labels_v1 (stream `wrong`; no such segment when
//                           parts = 2), the fake ones as philox_integers_v1 in [0, K) with
//                           fold (stream `fake`). The same values as the three kernels and
//                           the copy it replaces (four launches), bit for bit.

#include "philox.cuh"

#define PHILOX_ARGS unsigned int seed_lo, unsigned int seed_hi, unsigned int stream, unsigned int step, \
                    unsigned int call, unsigned int block0

// out: (n,) uint32
extern "C" __global__ void philox_bits_v1(unsigned int* out, int n, PHILOX_ARGS)
{
    int blocks = (n + 3) / 4;
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += gridDim.x * blockDim.x) {
        philox_words r = philox_block(block0 + (unsigned int)b, seed_lo, seed_hi, stream, step, call);
        for (int j = 0; j < 4; ++j) {
            int e = 4 * b + j;
            if (e < n) out[e] = r.w[j];
        }
    }
}

// out: (n,) float32
extern "C" __global__ void philox_normal_v1(float* out, int n, PHILOX_ARGS)
{
    const double two_pi = 6.283185307179586;
    int blocks = (n + 3) / 4;
    for (int b = blockIdx.x * blockDim.x + threadIdx.x; b < blocks; b += gridDim.x * blockDim.x) {
        philox_words r = philox_block(block0 + (unsigned int)b, seed_lo, seed_hi, stream, step, call);
        for (int pair = 0; pair < 2; ++pair) {
            double radius = sqrt(-2.0 * log(philox_unit(r.w[2 * pair])));
            double angle = two_pi * philox_unit(r.w[2 * pair + 1]);
            int e = 4 * b + 2 * pair;
            if (e < n) out[e] = (float)(radius * cos(angle));
            if (e + 1 < n) out[e + 1] = (float)(radius * sin(angle));
        }
    }
}

// out: (n,) int32 in [low, low + range); element i >= fold takes the value of i - fold
extern "C" __global__ void philox_integers_v1(int* out, int n, int low, unsigned int range, int fold, PHILOX_ARGS)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        int e = (fold > 0 && i >= fold) ? i - fold : i;
        philox_words r = philox_block(block0 + (unsigned int)(e >> 2), seed_lo, seed_hi, stream, step, call);
        out[i] = low + (int)philox_below(r.w[e & 3], range);
    }
}

// labels, out: (n,) int32 with labels in [0, k), k >= 2; out may alias labels
extern "C" __global__ void philox_shift_labels_v1(int* out, const int* labels, int n, int k, PHILOX_ARGS)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        philox_words r = philox_block(block0 + (unsigned int)(i >> 2), seed_lo, seed_hi, stream, step, call);
        int shift = 1 + (int)philox_below(r.w[i & 3], (unsigned int)(k - 1));
        int label = labels[i];
        out[i] = (label + shift) % k;
    }
}

// z: (nz,) float32; labels: (parts*n,) int32 = [real | wrong (parts 3) | fake]; real: (n,)
// int32 in [0, k), k >= 2. Threads walk the nz/4 blocks of z, then the parts*n labels.
extern "C" __global__ void philox_step_draws_v1(float* z, int* labels, const int* real, int nz, int n, int parts,
                                                int k, int fold, unsigned int noise, unsigned int fake,
                                                unsigned int wrong, unsigned int seed_lo, unsigned int seed_hi,
                                                unsigned int step, unsigned int call)
{
    const double two_pi = 6.283185307179586;
    const int zblocks = (nz + 3) / 4;
    const int total = zblocks + parts * n;
    for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < total; t += gridDim.x * blockDim.x) {
        if (t < zblocks) {                       // philox_normal_v1's block t
            philox_words r = philox_block((unsigned int)t, seed_lo, seed_hi, noise, step, call);
            for (int pair = 0; pair < 2; ++pair) {
                double radius = sqrt(-2.0 * log(philox_unit(r.w[2 * pair])));
                double angle = two_pi * philox_unit(r.w[2 * pair + 1]);
                int e = 4 * t + 2 * pair;
                if (e < nz) z[e] = (float)(radius * cos(angle));
                if (e + 1 < nz) z[e + 1] = (float)(radius * sin(angle));
            }
            continue;
        }
        const int i = t - zblocks;               // the label's row in D's batch
        const int seg = i / n, j = i - seg * n;
        if (seg == 0) {
            labels[i] = real[j];
        } else if (seg < parts - 1) {            // the wrong labels: philox_shift_labels_v1
            philox_words r = philox_block((unsigned int)(j >> 2), seed_lo, seed_hi, wrong, step, call);
            int shift = 1 + (int)philox_below(r.w[j & 3], (unsigned int)(k - 1));
            labels[i] = (real[j] + shift) % k;
        } else {                                 // the fake labels: philox_integers_v1, low 0
            int e = (fold > 0 && j >= fold) ? j - fold : j;
            philox_words r = philox_block((unsigned int)(e >> 2), seed_lo, seed_hi, fake, step, call);
            labels[i] = (int)philox_below(r.w[e & 3], (unsigned int)k);
        }
    }
}
