#pragma once
#include <cstdint>

// The two operations of the generation engine's decode step (tinystories/model/decode.py) that PyTorch runs
// slowly on a CPU at one token per row: attention over each row's own cache, and the tanh GELU. Everything is
// fp32; the Python binding checks shapes and positions before calling these.
namespace tinystories {

// Self-attention of new tokens over a per-row (slot) key/value cache, as GPT-Neo computes it: no 1/sqrt(head_dim)
// scaling, causal, and for a local layer a sliding window (a query at position p sees the keys at
// p - window + 1 .. p). Query r belongs to the row in cache slot slots[r], at position positions[r]: one query per
// row at a decode step, a prompt's every token (positions 0, 1, ...) when it is prefilled.
//
//   qkv     (queries, 3 * heads * head_dim): each query's q, k and v, side by side (q | k | v).
//   keys, values (slots, heads, length, head_dim): the cache. Every new key and value is written at
//           [slots[r], h, positions[r]] before any query attends, so a token sees itself and a prompt's earlier
//           tokens.
//   window  0 for a global layer.
//   out     (queries, heads * head_dim): the attention output, heads side by side (what the output projection reads).
void decode_attention(const float* qkv, int64_t queries, int64_t heads, int64_t head_dim, float* keys, float* values,
                      int64_t length, const int64_t* slots, const int64_t* positions, int64_t window, float* out);

// x <- gelu_new(x) = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), in place, for n values.
void gelu_tanh(float* x, int64_t n);

}  // namespace tinystories
