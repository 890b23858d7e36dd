// Byte-level BPE (GPT-2 style): pre-tokenize with the GPT-2 pattern, then apply ranked merges to the
// bytes of each pre-token. Plain C++17; the Python binding lives in bindings.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tinystories {

// Merge number r (its rank) joins the adjacent tokens `left` and `right` into `result`.
struct Merge {
    uint32_t left, right, result;
};

// Thrown when text contains a special token the caller did not allow (a ValueError in Python).
class DisallowedSpecialError : public std::invalid_argument {
   public:
    explicit DisallowedSpecialError(const std::string& token);
    std::string token;
};

// Hash table from the bytes of a pre-token to its token ids; one per thread at a time (not thread-safe).
class PieceCache;

class BpeTokenizer {
   public:
    using SpecialTokens = std::vector<std::pair<std::string, uint32_t>>;

    // vocab[id] is the byte string of token id (entries of special ids are ignored); merges are in rank
    // order. Throws std::invalid_argument on an inconsistent model (a byte without a single-byte token,
    // a merge whose result is not left+right, duplicate tokens or merges, ids out of range).
    BpeTokenizer(std::vector<std::string> vocab, std::vector<Merge> merges, SpecialTokens special_tokens);
    ~BpeTokenizer();
    BpeTokenizer(const BpeTokenizer&) = delete;
    BpeTokenizer& operator=(const BpeTokenizer&) = delete;

    size_t n_vocab() const { return vocab_.size(); }
    const std::vector<std::string>& vocab() const { return vocab_; }
    const std::vector<Merge>& merges() const { return merges_; }
    const SpecialTokens& special_tokens() const { return specials_; }
    bool is_special(uint32_t id) const { return id < is_special_.size() && is_special_[id]; }

    // tiktoken's encode(): special tokens whose ids are in `allowed_special` become their id; any other
    // special token in the text throws DisallowedSpecialError. `text` must be valid UTF-8.
    std::vector<uint32_t> encode(std::string_view text, const std::vector<uint32_t>& allowed_special) const;
    // Special tokens are plain text.
    std::vector<uint32_t> encode_ordinary(std::string_view text) const;
    // encode() of each text on `num_threads` threads (0 = hardware concurrency). Thread-safe; on errors
    // the exception of the first failing text (by index) is rethrown.
    std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string_view>& texts,
                                                    const std::vector<uint32_t>& allowed_special,
                                                    size_t num_threads) const;
    // Concatenated bytes of the tokens (special tokens give their text). Throws on ids >= n_vocab.
    std::string decode_bytes(const uint32_t* ids, size_t count) const;

   private:
    struct PairTable;
    struct CachePool;

    void encode_segment(std::string_view text, std::vector<uint32_t>& out, PieceCache& cache) const;
    void encode_with_specials(std::string_view text, const std::vector<uint32_t>& allowed_special,
                              std::vector<uint32_t>& out, PieceCache& cache) const;
    void bpe_piece(const unsigned char* piece, size_t n, std::vector<uint32_t>& out) const;
    void bpe_long_piece(const unsigned char* piece, size_t n, std::vector<uint32_t>& out) const;

    std::vector<std::string> vocab_;
    std::vector<Merge> merges_;
    SpecialTokens specials_;
    std::vector<bool> is_special_;
    uint32_t byte_to_id_[256];
    std::unique_ptr<PairTable> pairs_;
    std::unique_ptr<CachePool> caches_;
};

}  // namespace tinystories
