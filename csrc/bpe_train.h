// Byte-level BPE training over GPT-2 pre-tokens: count pre-tokens on threads, then merge pairs with
// incrementally updated pair counts and a lazy max-heap.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bpe.h"

namespace tinystories {

class PieceCounter;  // pre-token bytes -> occurrences

class BpeTrainer {
   public:
    // Special tokens are cut out of the text before pre-tokenization (never part of a pre-token).
    BpeTrainer(std::vector<std::string> special_tokens, size_t num_threads);
    ~BpeTrainer();

    // Counts the pre-tokens of each text (valid UTF-8; texts are independent documents).
    void add_texts(const std::vector<std::string_view>& texts);
    size_t num_pieces() const;  // distinct pre-tokens seen so far

    // Learns merges until the vocabulary (256 byte tokens + one per merge) has max_tokens tokens or no
    // pair occurs any more. Each step merges the most frequent pair; ties go to the pair whose
    // (left bytes, right bytes) is lexicographically smallest. Token id b < 256 is byte b.
    std::pair<std::vector<std::string>, std::vector<Merge>> train(size_t max_tokens) const;

   private:
    std::vector<std::string> specials_;
    size_t num_threads_;
    std::unique_ptr<PieceCounter> counts_;
};

}  // namespace tinystories
