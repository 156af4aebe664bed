/* The selective-scan step of Mamba-1 for a range of channels: the per-token recurrence whose exp over every
   state element dominates Mamba-1's cost once the matrix products are fast. */
#ifndef TERN_SSM_H
#define TERN_SSM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* For each channel c in [c0, c1), with n over the `nstate` state elements of that channel:
     s[c][n] = exp(dt[c] * A[c][n]) * s[c][n] + dt[c] * x[c] * B[n]
     y[c]    = (sum_n s[c][n] * C[n] + D[c] * x[c]) * silu(z[c])
   dt, x, z, y, D are indexed by channel; A and s are [channels][nstate]; B and C are [nstate]. */
void tern_ssm1_step(int64_t c0, int64_t c1, int64_t nstate, const float *dt, const float *x, const float *z,
                    const float *A, const float *B, const float *C, const float *D, float *s, float *y);

#ifdef __cplusplus
}
#endif

#endif
