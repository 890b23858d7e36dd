#include "pretokenize.h"

#include <array>
#include <map>
#include <memory>
#include <vector>

#include "unicode_tables.h"

namespace tinystories {
namespace detail {

#define L kLetter
#define N kNumber
#define S kSpace
#define O kOther
const CharClass kAsciiClass[128] = {
    O, O, O, O, O, O, O, O, O, S, S, S, S, S, O, O,  // \t \n \v \f \r are white space
    O, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,  // U+001C..U+001F are not (unlike str.isspace)
    S, O, O, O, O, O, O, O, O, O, O, O, O, O, O, O,  //   ! " # ...
    N, N, N, N, N, N, N, N, N, N, O, O, O, O, O, O,  // 0-9
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,  // @ A-O
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,  // P-Z
    O, L, L, L, L, L, L, L, L, L, L, L, L, L, L, L,  // ` a-o
    L, L, L, L, L, L, L, L, L, L, L, O, O, O, O, O,  // p-z
};
#undef L
#undef N
#undef S
#undef O

}  // namespace detail

namespace {

// Two-level lookup: kBlockOf[cp >> 8] picks a 256-entry block of classes; identical blocks are shared,
// so the whole of Unicode fits in a few hundred KB that is mostly never touched.
struct ClassTable {
    std::vector<uint16_t> block_of;                  // 0x1100 entries
    std::vector<std::array<CharClass, 256>> blocks;  // distinct blocks

    ClassTable() {
        std::vector<CharClass> all(0x110000, kOther);
        auto paint = [&](const CodePointRange* ranges, size_t count, CharClass cls) {
            for (size_t r = 0; r < count; ++r)
                for (uint32_t cp = ranges[r].first; cp <= ranges[r].last; ++cp) all[cp] = cls;
        };
        paint(kLetterRanges, kLetterRangesSize, kLetter);
        paint(kNumberRanges, kNumberRangesSize, kNumber);
        paint(kWhiteSpaceRanges, kWhiteSpaceRangesSize, kSpace);
        std::map<std::array<CharClass, 256>, size_t> index;
        block_of.resize(0x1100);
        for (uint32_t b = 0; b < 0x1100; ++b) {
            std::array<CharClass, 256> block;
            for (uint32_t k = 0; k < 256; ++k) block[k] = all[(b << 8) | k];
            auto [it, inserted] = index.emplace(block, blocks.size());
            if (inserted) blocks.push_back(block);
            block_of[b] = static_cast<uint16_t>(it->second);
        }
    }
};

const ClassTable& class_table() {
    static const ClassTable table;  // thread-safe one-time construction
    return table;
}

}  // namespace

CharClass non_ascii_class(uint32_t cp) {
    static const ClassTable& t = class_table();
    if (cp >= 0x110000) return kOther;
    return t.blocks[t.block_of[cp >> 8]][cp & 0xFF];
}

}  // namespace tinystories
