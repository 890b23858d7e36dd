// A small, fast 64-bit hash for short byte strings (pre-tokens); never returns 0 (0 marks empty slots).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace tinystories {

inline uint64_t hash_key(const unsigned char* p, size_t n) {
    constexpr uint64_t kMul = 0x9E3779B97F4A7C15ull;
    uint64_t h = 0x243F6A8885A308D3ull ^ (n * kMul);
    while (n >= 8) {
        uint64_t w;
        std::memcpy(&w, p, 8);
        h = (h ^ w) * kMul;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    if (n > 0) {
        uint64_t w = 0;
        std::memcpy(&w, p, n);
        h = (h ^ w) * kMul;
    }
    h ^= h >> 32;
    h *= 0xD6E8FEB86659FD93ull;
    h ^= h >> 32;
    return h | 1;
}

// Equality of two short byte strings of length n, inlined (pre-tokens average ~5 bytes, where a call
// to memcmp costs more than the comparison).
inline bool bytes_equal(const unsigned char* a, const unsigned char* b, size_t n) {
    while (n >= 8) {
        uint64_t x, y;
        std::memcpy(&x, a, 8);
        std::memcpy(&y, b, 8);
        if (x != y) return false;
        a += 8;
        b += 8;
        n -= 8;
    }
    for (size_t i = 0; i < n; ++i)
        if (a[i] != b[i]) return false;
    return true;
}

}  // namespace tinystories
