// spineagent slice preprocessing on CUDA: the transform of kernels/src/spec.rs.
// Compiled at run time by NVRTC. One batch = slices of one shape (a series).
// Stored values must fit 16 bits (signed or unsigned): the histogram covers
// [-32768, 65535].

#define HIST_OFFSET 32768
#define HIST_BINS 98304

extern "C" __global__ void histogram(const int* x, int n_per, int* hist) {
    int slice = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_per) return;
    int v = x[(long)slice * n_per + i] + HIST_OFFSET;
    v = v < 0 ? 0 : (v >= HIST_BINS ? HIST_BINS - 1 : v);
    atomicAdd(&hist[(long)slice * HIST_BINS + v], 1);
}

// Nearest-rank thresholds: the smallest v with cumulative count >= rank.
// One block per slice; a block-wide scan over the bins in chunks.
extern "C" __global__ void thresholds(const int* hist, int rank_lo, int rank_hi, int* lo, int* hi) {
    __shared__ int partial[1024];
    __shared__ int base;
    __shared__ int found_lo, found_hi;
    int slice = blockIdx.x;
    const int* h = hist + (long)slice * HIST_BINS;
    if (threadIdx.x == 0) { base = 0; found_lo = -1; found_hi = -1; }
    __syncthreads();
    for (int chunk = 0; chunk < HIST_BINS; chunk += blockDim.x) {
        int idx = chunk + threadIdx.x;
        partial[threadIdx.x] = idx < HIST_BINS ? h[idx] : 0;
        __syncthreads();
        // Inclusive scan (Hillis-Steele).
        for (int off = 1; off < blockDim.x; off <<= 1) {
            int t = threadIdx.x >= off ? partial[threadIdx.x - off] : 0;
            __syncthreads();
            partial[threadIdx.x] += t;
            __syncthreads();
        }
        int cum = base + partial[threadIdx.x];
        int prev = base + (threadIdx.x > 0 ? partial[threadIdx.x - 1] : 0);
        if (idx < HIST_BINS) {
            if (cum >= rank_lo && prev < rank_lo) found_lo = idx;
            if (cum >= rank_hi && prev < rank_hi) found_hi = idx;
        }
        __syncthreads();
        if (threadIdx.x == blockDim.x - 1) base = cum;
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        lo[slice] = found_lo - HIST_OFFSET;
        hi[slice] = found_hi - HIST_OFFSET;
    }
}

// Scale, invert, pad (implicitly) and resample along columns, only for the
// cropped output columns: tmp[slice][r][k].
extern "C" __global__ void horizontal(const int* x, int rows, int cols, const int* lo, const int* hi, int invert,
                                      int off_c, int c0, int crop, const int* start, const int* len,
                                      const int* woff, const float* w, float* tmp) {
    int slice = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * crop) return;
    int r = i / crop, k = i % crop, o = c0 + k;
    float l = (float)lo[slice];
    float range = (float)(hi[slice] - lo[slice]);
    float inv = range > 0.0f ? 1.0f / range : 0.0f;
    const int* row = x + (long)slice * rows * cols + (long)r * cols;
    float acc = 0.0f;
    for (int t = 0; t < len[o]; t++) {
        int c = start[o] + t - off_c;
        if (c < 0 || c >= cols) continue;
        float y = fminf(fmaxf(((float)row[c] - l) * inv, 0.0f), 1.0f);
        if (invert) y = 1.0f - y;
        acc += w[woff[o] + t] * y;
    }
    tmp[(long)slice * rows * crop + i] = acc;
}

// Resample along rows for the cropped output rows, normalize, write NCHW.
extern "C" __global__ void vertical(const float* tmp, int rows, int off_r, int c0, int crop, const int* start,
                                    const int* len, const int* woff, const float* w, float m0, float m1, float m2,
                                    float s0, float s1, float s2, float* out) {
    int slice = blockIdx.y;
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= crop * crop) return;
    int oi = i / crop, k = i % crop, o = c0 + oi;
    const float* t0 = tmp + (long)slice * rows * crop;
    float acc = 0.0f;
    for (int t = 0; t < len[o]; t++) {
        int r = start[o] + t - off_r;
        if (r < 0 || r >= rows) continue;
        acc += w[woff[o] + t] * t0[(long)r * crop + k];
    }
    long plane = (long)crop * crop;
    float* dst = out + (long)slice * 3 * plane + i;
    dst[0] = (acc - m0) / s0;
    dst[plane] = (acc - m1) / s1;
    dst[2 * plane] = (acc - m2) / s2;
}
