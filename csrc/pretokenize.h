// GPT-2 pre-tokenization, exactly as tiktoken's regex engine runs the pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// hand-compiled into a scanner over UTF-8 (no regex engine, no allocation).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tinystories {

enum CharClass : uint8_t { kLetter = 0, kNumber = 1, kSpace = 2, kOther = 3 };

// Class of a code point >= 0x80 (two-level table built from unicode_tables.cpp on first use).
CharClass non_ascii_class(uint32_t cp);

namespace detail {

extern const CharClass kAsciiClass[128];

struct Char {
    CharClass cls;
    uint32_t len;  // bytes
};

// The class and length of the character starting at s[i]; `s` must be valid UTF-8.
inline Char char_at(const unsigned char* s, size_t i) {
    const unsigned char c = s[i];
    if (c < 0x80) return {kAsciiClass[c], 1};
    if (c < 0xE0) return {non_ascii_class(((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu)), 2};
    if (c < 0xF0)
        return {non_ascii_class(((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu)), 3};
    return {non_ascii_class(((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
                            (s[i + 3] & 0x3Fu)),
            4};
}

}  // namespace detail

// End (exclusive byte offset) of the pre-token that starts at byte `i` < n of valid UTF-8 `s`.
// The alternatives are tried in the pattern's order, as the leftmost-first regex does.
inline size_t next_pretoken(const unsigned char* s, size_t n, size_t i) {
    using detail::char_at;
    const unsigned char c = s[i];
    if (c == '\'' && i + 1 < n) {  // 's 't 'm 'd 're 've 'll (case-sensitive)
        const unsigned char d = s[i + 1];
        if (d == 's' || d == 't' || d == 'm' || d == 'd') return i + 2;
        if (i + 2 < n) {
            const unsigned char e = s[i + 2];
            if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) return i + 3;
        }
    }
    detail::Char ch = char_at(s, i);
    size_t j = i + ch.len;
    CharClass run = ch.cls;
    if (run == kSpace) {
        if (c == ' ' && j < n) {  // " ?X+" : one ASCII space may lead a letter/number/other run
            const detail::Char next = char_at(s, j);
            if (next.cls != kSpace) {
                run = next.cls;
                j += next.len;
                goto scan_run;
            }
        }
        // \s+(?!\S) | \s+ : a run of white space gives its last character to the next pre-token
        // when a non-space follows it, unless the run is a single character.
        size_t last_start = i;
        while (j < n) {
            const detail::Char next = char_at(s, j);
            if (next.cls != kSpace) return last_start == i ? j : last_start;
            last_start = j;
            j += next.len;
        }
        return j;
    }
scan_run:
    while (j < n) {
        const detail::Char next = char_at(s, j);
        if (next.cls != run) break;
        j += next.len;
    }
    return j;
}

// Calls on_piece(begin, end) for each pre-token of valid UTF-8 `text`, in order.
template <class OnPiece>
inline void for_each_pretoken(std::string_view text, OnPiece&& on_piece) {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    const size_t n = text.size();
    for (size_t i = 0; i < n;) {
        const size_t j = next_pretoken(s, n, i);
        on_piece(i, j);
        i = j;
    }
}

}  // namespace tinystories
