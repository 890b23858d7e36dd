// Unicode code point ranges used by the GPT-2 pre-tokenizer (generated data in unicode_tables.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tinystories {

struct CodePointRange {
    uint32_t first, last;  // inclusive
};

extern const CodePointRange kLetterRanges[];      // General_Category L*  (regex \p{L})
extern const size_t kLetterRangesSize;
extern const CodePointRange kNumberRanges[];      // General_Category N*  (regex \p{N})
extern const size_t kNumberRangesSize;
extern const CodePointRange kWhiteSpaceRanges[];  // White_Space property (regex \s)
extern const size_t kWhiteSpaceRangesSize;

}  // namespace tinystories
