// Token shards: a file of independently decompressable zstd frames ("blocks") of tokens, with a
// block index and story lengths at the end. The whole file is a valid .zst stream (the header and
// the index are zstd skippable frames), so `zstd -dc shard.tok.zst` prints the raw tokens.
// docs/shard_format.md is the byte-level specification.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace tinystories {

constexpr uint32_t kShardFormatVersion = 1;

// Any problem with a shard file: the message always names the file and what is wrong.
class ShardError : public std::runtime_error {
   public:
    using std::runtime_error::runtime_error;
};

// XXH64 (the xxHash 64-bit algorithm, as used by zstd's frame checksum).
uint64_t xxh64(const void* data, size_t len, uint64_t seed = 0);

struct BlockInfo {
    uint64_t offset = 0;            // byte offset of the zstd frame in the file
    uint32_t compressed_bytes = 0;  // size of the frame
    uint32_t n_tokens = 0;          // tokens in the block
    uint64_t hash = 0;              // xxh64 of the frame's bytes, checked whenever the block is read
    uint64_t first_token = 0;       // derived on load: index of the block's first token in the shard
};

struct ShardIndex {
    uint32_t token_bytes = 2;  // 2 = uint16, 4 = uint32
    uint64_t n_tokens = 0;
    std::vector<BlockInfo> blocks;
    std::vector<uint32_t> story_lengths;  // tokens per story (each story is stored followed by its EOT)
    uint64_t file_bytes = 0;
};

// Writes one shard to `path + ".tmp"` and renames it to `path` on finish(), so a reader never sees
// a half-written shard under the final name. Up to `threads` full blocks are compressed in parallel
// (compressing costs more than tokenizing). `zstd_params` are advanced zstd parameters
// (ZSTD_cParameter, value) set after the level, e.g. a cheaper search at a level's strategy.
// Not thread-safe; one writer per shard.
class ShardWriter {
   public:
    ShardWriter(std::string path, uint32_t token_bytes, uint32_t block_tokens, int level, unsigned threads = 1,
                const std::vector<std::pair<int, int>>& zstd_params = {});
    ~ShardWriter();  // an unfinished writer removes its temp file
    ShardWriter(const ShardWriter&) = delete;
    ShardWriter& operator=(const ShardWriter&) = delete;

    // Appends stories given as one contiguous token array (already in the shard's dtype) and the
    // number of tokens of each story.
    void add_stories(const void* tokens, size_t n_tokens, const int64_t* lengths, size_t n_stories);
    // Flushes the last block, writes the index, fsyncs and renames. Returns the final index.
    const ShardIndex& finish();

    uint64_t n_tokens() const { return index_.n_tokens + pending_.size() / index_.token_bytes; }
    uint64_t n_stories() const { return index_.story_lengths.size(); }
    uint32_t token_bytes() const { return index_.token_bytes; }

   private:
    void flush_blocks();  // compresses and writes every pending block (the last may be partial)
    void write_bytes(const void* data, size_t len);

    std::string path_, tmp_path_;
    uint32_t block_tokens_;
    int level_;
    int fd_ = -1;
    uint64_t tmp_dev_ = 0, tmp_ino_ = 0;  // identity of our temp file, so cleanup never removes another's
    uint64_t offset_ = 0;
    bool finished_ = false;
    ShardIndex index_;
    std::vector<uint8_t> pending_;                 // tokens of up to `threads` blocks being filled
    std::vector<std::vector<uint8_t>> compressed_;  // one scratch buffer per thread
    std::vector<void*> cctx_;                       // one ZSTD_CCtx per thread
};

// Random access to the blocks of one shard; all methods are thread-safe (pread on a shared fd).
class ShardReader {
   public:
    explicit ShardReader(std::string path);
    ~ShardReader();
    ShardReader(const ShardReader&) = delete;
    ShardReader& operator=(const ShardReader&) = delete;

    const std::string& path() const { return path_; }
    const ShardIndex& index() const { return index_; }
    // Reads block `b`, checks its hash, decompresses it and checks its size; `out` receives
    // n_tokens * token_bytes bytes.
    void read_block(size_t b, std::vector<uint8_t>& out) const;

   private:
    void pread_exact(void* buf, size_t len, uint64_t offset, const char* what) const;
    std::string path_;
    int fd_ = -1;
    ShardIndex index_;
};

}  // namespace tinystories
