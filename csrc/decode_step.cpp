// The decode step's attention and GELU on the CPU (see decode_step.h). At a decode step every (row, head) pair
// attends one query to its own few hundred keys: as a batched matmul that is thousands of tiny GEMMs, each paying
// its call overhead; here it is one pass over the cache. The GELU is one pass instead of PyTorch's six. Loops
// are written for the compiler to vectorise for the machine it runs on (function clones for AVX-512, AVX2 and
// the baseline, picked at load time where the toolchain can).

#include "decode_step.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// GCC 12 dispatches x86-64-v4/v3 clones by instruction set (older GCCs and clang build the baseline only).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12 && defined(__x86_64__) && defined(__linux__)
#define TS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TS_CLONES
#endif
#if defined(__GNUC__)
#define TS_INLINE inline __attribute__((always_inline))  // compiled into each clone, for its instruction set
#else
#define TS_INLINE inline
#endif

namespace tinystories {
namespace {

// e^x for x <= 0 (scores minus their maximum) within 2 ulp (8.1e-8 relative at worst over [-87, 0], measured), in
// plain arithmetic so that loops over it vectorise: x = n ln2 + r with |r| <= ln2 / 2, e^r by Cephes' expf
// polynomial, then scaled by 2^n through the exponent bits. Below -87.3 (e^x under FLT_MIN) it is 0.
TS_INLINE float exp_nonpositive(float x) {
    const float clamped = x < -87.3f ? -87.3f : x;
    const float n = std::nearbyint(clamped * 1.44269504088896341f);
    float r = clamped - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    const float r2 = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float er = p * r2 + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return x < -87.3f ? 0.0f : er * scale;
}

template <int D>  // D > 0: the head size known at compile time (loops unrolled); D == 0: `dim` at run time
TS_INLINE void attend(const float* q, const float* k, const float* v, int64_t first, int64_t last, int64_t dim,
                      float* scores, float* out) {
    const int64_t d_n = D > 0 ? D : dim, count = last - first + 1;
    float best = -INFINITY;
    for (int64_t i = 0; i < count; ++i) {
        const float* ks = k + (first + i) * d_n;
        float dot = 0.0f;
        for (int64_t d = 0; d < d_n; ++d) dot += q[d] * ks[d];
        scores[i] = dot;
        best = dot > best ? dot : best;
    }
    float total = 0.0f;
    for (int64_t i = 0; i < count; ++i) {
        const float e = exp_nonpositive(scores[i] - best);
        scores[i] = e;
        total += e;
    }
    float fixed[D > 0 ? D : 1] = {};
    std::vector<float> sized(D > 0 ? 0 : d_n, 0.0f);
    float* sum = D > 0 ? fixed : sized.data();
    for (int64_t i = 0; i < count; ++i) {
        const float* vs = v + (first + i) * d_n;
        const float w = scores[i];
        for (int64_t d = 0; d < d_n; ++d) sum[d] += w * vs[d];
    }
    const float inv = 1.0f / total;
    for (int64_t d = 0; d < d_n; ++d) out[d] = sum[d] * inv;
}

template <int D>
TS_CLONES void decode_attention_impl(const float* qkv, int64_t queries, int64_t heads, int64_t dim, float* keys,
                                     float* values, int64_t length, const int64_t* slots, const int64_t* positions,
                                     int64_t window, float* out) {
    const int64_t width = heads * dim;
    for (int64_t r = 0; r < queries; ++r) {  // every new key and value first: a prompt's queries see each other's
        const float* row = qkv + r * 3 * width;
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t at = ((slots[r] * heads + h) * length + positions[r]) * dim;
            std::memcpy(keys + at, row + width + h * dim, sizeof(float) * dim);
            std::memcpy(values + at, row + 2 * width + h * dim, sizeof(float) * dim);
        }
    }
    std::vector<float> scores(static_cast<size_t>(length));
    for (int64_t r = 0; r < queries; ++r) {
        const int64_t p = positions[r];
        const int64_t first = window > 0 ? std::max<int64_t>(0, p - window + 1) : 0;
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t head = (slots[r] * heads + h) * length * dim;
            attend<D>(qkv + r * 3 * width + h * dim, keys + head, values + head, first, p, dim, scores.data(),
                      out + r * width + h * dim);
        }
    }
}

TS_CLONES void gelu_tanh_impl(float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
        // With e = e^(-2|u|) <= 1 (never overflows): 1 + tanh(u) = 2 / (1 + e) for u >= 0 and 2e / (1 + e) for
        // u < 0, the second without the cancellation of 1 + tanh(u) near -1.
        const float e = exp_nonpositive(-2.0f * (u < 0.0f ? -u : u));
        x[i] = v * (u < 0.0f ? e : 1.0f) / (1.0f + e);
    }
}

}  // namespace

void gelu_tanh(float* x, int64_t n) { gelu_tanh_impl(x, n); }

void decode_attention(const float* qkv, int64_t queries, int64_t heads, int64_t head_dim, float* keys, float* values,
                      int64_t length, const int64_t* slots, const int64_t* positions, int64_t window, float* out) {
    switch (head_dim) {  // the paper's and the demo's head sizes, unrolled; any other size runs the generic loop
        case 4: return decode_attention_impl<4>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        case 8: return decode_attention_impl<8>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        case 16: return decode_attention_impl<16>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        case 32: return decode_attention_impl<32>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        case 48: return decode_attention_impl<48>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        case 64: return decode_attention_impl<64>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
        default: return decode_attention_impl<0>(qkv, queries, heads, head_dim, keys, values, length, slots, positions, window, out);
    }
}

}  // namespace tinystories
