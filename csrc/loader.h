// The threaded batch loader over the shards of one split.
//
// A split is the concatenation of its shards' tokens (each story followed by its EOT). The loader
// cuts it into "units" of at most seq_len + 1 tokens (x = unit[:-1], y = unit[1:]):
//   packed:  unit k = tokens [k*T, k*T + T + 1), over the concatenated stream (the last one short);
//   stories: every story is split into consecutive units of T targets; each unit starts at a story
//            start or where the previous unit of the same story stopped; short units are padded.
// An epoch visits every unit once, in an order that is a pure function of (seed, epoch): blocks are
// permuted, taken `mix_blocks` at a time, and the units starting in those blocks are permuted
// together (a two-level shuffle that keeps decompression sequential enough to be cheap). Rank r of
// world_size W takes epoch positions r, r+W, r+2W, ...; batch n of a rank is its positions
// [n*B, n*B + B) of the concatenation of its epochs, so resuming at batch n is exact.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "shards.h"

namespace tinystories {

constexpr int64_t kIgnoreIndex = -100;

struct LoaderConfig {
    std::vector<std::string> shard_paths;  // in split order
    uint64_t batch_size = 1;
    uint64_t seq_len = 1;
    bool stories_mode = false;
    uint64_t seed = 0;
    uint64_t rank = 0;
    uint64_t world_size = 1;
    uint64_t prefetch = 4;  // batches assembled ahead of the consumer
    uint64_t threads = 2;
    bool shuffle = true;
    bool loop = true;
    int64_t pad_token = 0;  // x value at padded positions (y gets kIgnoreIndex there)
    uint64_t mix_blocks = 8;
    uint64_t cache_blocks = 0;  // 0: chosen from mix_blocks and threads
    uint64_t start_batch = 0;
};

// One (B, T) batch: x then y, int64, contiguous; `rows` may be < batch_size only for the last
// batch of a loop=false pass.
struct Batch {
    std::vector<int64_t> data;
    uint64_t rows = 0;
    uint64_t index = 0;
};

class TokenLoaderCore {
   public:
    explicit TokenLoaderCore(LoaderConfig cfg);
    ~TokenLoaderCore();
    TokenLoaderCore(const TokenLoaderCore&) = delete;
    TokenLoaderCore& operator=(const TokenLoaderCore&) = delete;

    // Blocks until the next batch is ready; returns nullptr after the last batch (loop=false).
    // Rethrows a worker's error (e.g. a damaged block) at the batch that needed it.
    std::unique_ptr<Batch> next();

    uint64_t units_per_epoch() const { return units_per_epoch_; }
    uint64_t units_per_rank_epoch() const { return per_rank_; }
    uint64_t target_tokens_per_epoch() const { return target_tokens_; }
    uint64_t total_tokens() const { return total_tokens_; }
    uint64_t next_batch() const { return next_batch_; }
    // Batches in a loop=false pass (UINT64_MAX when looping).
    uint64_t total_batches() const { return total_batches_; }

    // Random access to the split's token stream (used by tests and `stats`): tokens [start, start+count).
    void read_tokens(uint64_t start, uint64_t count, int64_t* out);

   private:
    struct Unit {
        uint64_t start;
        uint32_t len;
    };
    using BlockPtr = std::shared_ptr<const std::vector<uint8_t>>;

    Unit unit(uint64_t u) const;
    uint64_t unit_block(uint64_t start) const;
    std::shared_ptr<const std::vector<uint64_t>> permutation(uint64_t epoch);
    BlockPtr block(uint64_t global_block);
    void produce(uint64_t n, Batch& out);
    void worker();

    LoaderConfig cfg_;
    std::vector<std::unique_ptr<ShardReader>> shards_;
    std::vector<uint64_t> block_shard_, block_local_, block_first_;  // per global block
    uint64_t total_tokens_ = 0, token_bytes_ = 2;
    std::vector<Unit> story_units_;  // stories mode only
    std::vector<uint64_t> block_unit_begin_;  // units whose start lies in block b: [begin[b], begin[b+1])
    uint64_t units_per_epoch_ = 0, per_rank_ = 0, target_tokens_ = 0, total_batches_ = 0;

    std::mutex perm_mutex_;
    std::map<uint64_t, std::shared_ptr<const std::vector<uint64_t>>> perms_;

    struct CacheEntry;
    std::mutex cache_mutex_;
    std::map<uint64_t, std::shared_ptr<CacheEntry>> cache_;
    uint64_t cache_tick_ = 0;

    std::mutex mutex_;
    std::condition_variable produced_cv_, space_cv_;
    std::map<uint64_t, std::unique_ptr<Batch>> ready_;
    std::map<uint64_t, std::exception_ptr> errors_;
    uint64_t next_claim_ = 0, next_batch_ = 0;
    bool stopping_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace tinystories
