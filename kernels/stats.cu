// The training step's numbers, kept on the device: the op step_stats of cganraw.ops.stats
// (launcher step_stats_cuda; the reference step_stats_numpy).
//
// One launch per step gathers the losses (each a 0-d result of its own kernel) and the
// mean D outputs into one vector, which the trainer reads back only every --log-every
// steps, and records the first non-finite or exploded value in a flag that the trainer
// reads at log steps and before every checkpoint. So a step never waits for the device.
//
//   stats[0] d_loss = real + fake + mismatch_weight * mismatch
//   stats[1..5] the losses d_loss_real, d_loss_fake, d_loss_mismatch, g_loss,
//               g_loss_mode_seeking (0 where `present` lacks the term: bit 0 mismatch,
//               bit 1 mode seeking)
//   stats[6], stats[7] mean sigmoid of the real and fake logits: D(x), D(G(z))
//   health (int[4]): untouched while health[0] != 0, so it keeps the first bad step; else,
//               for the first i in 0..7 with stats[i] not finite, or then the first i of
//               bounded_mask with |stats[i]| > bound: health = {1 (non-finite) or 2 (past the
//               bound), step, i, the bits of stats[i]}
//
// Kernels (one version):
//   step_stats_v1  one block (a multiple of 32 threads): block sums of the two sigmoids
//                  (reduce.cuh), then thread 0 writes everything.

#include "reduce.cuh"

__device__ __forceinline__ float stats_sigmoid(float x)
{
    float e = expf(-fabsf(x));
    return x >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

__device__ float mean_sigmoid(const float* x, int n, float* partials)
{
    float sum = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) sum += stats_sigmoid(x[i]);
    sum = block_sum(sum, partials);
    return n > 0 ? sum / (float)n : 0.0f;
}

extern "C" __global__ void step_stats_v1(float* stats, int* health, const float* loss_real, const float* loss_fake,
                                         const float* loss_mismatch, const float* loss_g, const float* loss_ms,
                                         float mismatch_weight, const float* logits_real, const float* logits_fake,
                                         int n_real, int n_fake, int present, int step, float bound, int bounded_mask)
{
    __shared__ float partials[32];
    float d_real = mean_sigmoid(logits_real, n_real, partials);
    float d_fake = mean_sigmoid(logits_fake, n_fake, partials);
    if (threadIdx.x != 0) return;
    float v[8];
    float mismatch = (present & 1) ? loss_mismatch[0] : 0.0f;
    v[0] = (loss_real[0] + loss_fake[0]) + mismatch_weight * mismatch;
    v[1] = loss_real[0];
    v[2] = loss_fake[0];
    v[3] = mismatch;
    v[4] = loss_g[0];
    v[5] = (present & 2) ? loss_ms[0] : 0.0f;
    v[6] = d_real;
    v[7] = d_fake;
    for (int i = 0; i < 8; ++i) stats[i] = v[i];
    if (health[0] != 0) return;
    int code = 0, at = 0;
    for (int i = 0; i < 8 && !code; ++i)
        if (!isfinite(v[i])) { code = 1; at = i; }
    for (int i = 0; i < 8 && !code; ++i)
        if (((bounded_mask >> i) & 1) && fabsf(v[i]) > bound) { code = 2; at = i; }
    if (code) {
        health[0] = code;
        health[1] = step;
        health[2] = at;
        health[3] = __float_as_int(v[at]);
    }
}
