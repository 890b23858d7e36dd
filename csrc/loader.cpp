#include "loader.h"

#include <algorithm>
#include <cstring>
#include <future>

namespace tinystories {

namespace {
// splitmix64: tiny, fast and identical on every platform (std:: distributions are not), so the
// epoch order is the same on every machine.
struct SplitMix64 {
    uint64_t state;
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        return z ^ (z >> 31);
    }
    // Unbiased integer in [0, n) (Lemire's multiply-shift with rejection).
    uint64_t below(uint64_t n) {
        unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
        uint64_t low = static_cast<uint64_t>(m);
        if (low < n) {
            const uint64_t threshold = (0 - n) % n;
            while (low < threshold) {
                m = static_cast<unsigned __int128>(next()) * n;
                low = static_cast<uint64_t>(m);
            }
        }
        return static_cast<uint64_t>(m >> 64);
    }
};

template <typename T>
void fisher_yates(T* first, uint64_t n, SplitMix64& rng) {
    for (uint64_t i = n; i > 1; --i) std::swap(first[i - 1], first[rng.below(i)]);
}

template <typename Src>
void widen(const uint8_t* src, uint64_t count, int64_t* out) {
    const Src* s = reinterpret_cast<const Src*>(src);
    for (uint64_t i = 0; i < count; ++i) out[i] = static_cast<int64_t>(s[i]);
}
}  // namespace

struct TokenLoaderCore::CacheEntry {
    std::shared_future<BlockPtr> block;
    uint64_t last_use = 0;
};

TokenLoaderCore::TokenLoaderCore(LoaderConfig cfg) : cfg_(std::move(cfg)) {
    if (cfg_.batch_size == 0 || cfg_.seq_len == 0) throw ShardError("batch_size and seq_len must be positive");
    if (cfg_.world_size == 0 || cfg_.rank >= cfg_.world_size)
        throw ShardError("rank must be in [0, world_size), got rank " + std::to_string(cfg_.rank) +
                         " of world_size " + std::to_string(cfg_.world_size));
    cfg_.threads = std::max<uint64_t>(cfg_.threads, 1);
    cfg_.prefetch = std::max<uint64_t>(cfg_.prefetch, 1);
    cfg_.mix_blocks = std::max<uint64_t>(cfg_.mix_blocks, 1);
    if (cfg_.cache_blocks == 0) cfg_.cache_blocks = 4 * cfg_.mix_blocks + 2 * cfg_.threads;

    for (const auto& path : cfg_.shard_paths) {
        shards_.push_back(std::make_unique<ShardReader>(path));
        const ShardIndex& idx = shards_.back()->index();
        if (shards_.size() == 1) token_bytes_ = idx.token_bytes;
        if (idx.token_bytes != token_bytes_)
            throw ShardError(path + ": token size " + std::to_string(idx.token_bytes) +
                             " differs from the split's first shard");
        for (size_t b = 0; b < idx.blocks.size(); ++b) {
            block_shard_.push_back(shards_.size() - 1);
            block_local_.push_back(b);
            block_first_.push_back(total_tokens_ + idx.blocks[b].first_token);
        }
        total_tokens_ += idx.n_tokens;
    }

    const uint64_t T = cfg_.seq_len;
    if (cfg_.stories_mode) {
        uint64_t start = 0;
        for (const auto& shard : shards_) {
            for (uint32_t len : shard->index().story_lengths) {
                for (uint64_t off = 0; off + 1 < len; off += T)
                    story_units_.push_back({start + off, static_cast<uint32_t>(std::min<uint64_t>(T + 1, len - off))});
                if (len > 1) target_tokens_ += len - 1;
                start += len;
            }
        }
        units_per_epoch_ = story_units_.size();
    } else {
        units_per_epoch_ = total_tokens_ >= 2 ? (total_tokens_ - 1 + T - 1) / T : 0;
        target_tokens_ = total_tokens_ >= 2 ? total_tokens_ - 1 : 0;
    }
    // Units are sorted by start, so the units of block b are a contiguous range.
    const uint64_t n_blocks = block_first_.size();
    block_unit_begin_.resize(n_blocks + 1);
    for (uint64_t b = 0; b < n_blocks; ++b) {
        const uint64_t first = block_first_[b];
        if (cfg_.stories_mode) {
            block_unit_begin_[b] = static_cast<uint64_t>(
                std::lower_bound(story_units_.begin(), story_units_.end(), first,
                                 [](const Unit& u, uint64_t v) { return u.start < v; }) -
                story_units_.begin());
        } else {
            block_unit_begin_[b] = std::min(units_per_epoch_, (first + T - 1) / T);
        }
    }
    block_unit_begin_[n_blocks] = units_per_epoch_;

    const uint64_t W = cfg_.world_size, U = units_per_epoch_;
    // Looping ranks drop the last U % W units of each epoch so that all ranks stay in step; a single
    // pass (validation) gives every unit to exactly one rank.
    per_rank_ = cfg_.loop ? U / W : (U > cfg_.rank ? (U - cfg_.rank - 1) / W + 1 : 0);
    if (cfg_.loop && per_rank_ == 0)
        throw ShardError("the split has " + std::to_string(U) + " sequences of " + std::to_string(T) +
                         " tokens, too few for world_size " + std::to_string(W) + " (need at least one per rank)");
    total_batches_ = cfg_.loop ? UINT64_MAX : (per_rank_ + cfg_.batch_size - 1) / cfg_.batch_size;

    next_batch_ = next_claim_ = cfg_.start_batch;
    for (uint64_t i = 0; i < cfg_.threads; ++i) workers_.emplace_back(&TokenLoaderCore::worker, this);
}

TokenLoaderCore::~TokenLoaderCore() {
    {
        std::lock_guard<std::mutex> lk(mutex_);
        stopping_ = true;
    }
    space_cv_.notify_all();
    for (auto& t : workers_) t.join();
}

TokenLoaderCore::Unit TokenLoaderCore::unit(uint64_t u) const {
    if (cfg_.stories_mode) return story_units_[u];
    const uint64_t start = u * cfg_.seq_len;
    return {start, static_cast<uint32_t>(std::min<uint64_t>(cfg_.seq_len + 1, total_tokens_ - start))};
}

std::shared_ptr<const std::vector<uint64_t>> TokenLoaderCore::permutation(uint64_t epoch) {
    std::lock_guard<std::mutex> lk(perm_mutex_);
    auto it = perms_.find(epoch);
    if (it != perms_.end()) return it->second;
    SplitMix64 rng{cfg_.seed * 0x9E3779B97F4A7C15ULL ^ (epoch + 0xD1B54A32D192ED03ULL)};
    rng.next();
    const uint64_t n_blocks = block_first_.size();
    std::vector<uint64_t> block_order(n_blocks);
    for (uint64_t b = 0; b < n_blocks; ++b) block_order[b] = b;
    fisher_yates(block_order.data(), n_blocks, rng);
    auto perm = std::make_shared<std::vector<uint64_t>>();
    perm->reserve(units_per_epoch_);
    for (uint64_t g = 0; g < n_blocks; g += cfg_.mix_blocks) {
        const uint64_t group_begin = perm->size();
        for (uint64_t k = g; k < std::min(n_blocks, g + cfg_.mix_blocks); ++k)
            for (uint64_t u = block_unit_begin_[block_order[k]]; u < block_unit_begin_[block_order[k] + 1]; ++u)
                perm->push_back(u);
        fisher_yates(perm->data() + group_begin, perm->size() - group_begin, rng);
    }
    // Workers are at most a few batches apart, so older epochs are never needed again.
    while (!perms_.empty() && perms_.begin()->first + 1 < epoch) perms_.erase(perms_.begin());
    perms_[epoch] = perm;
    return perm;
}

TokenLoaderCore::BlockPtr TokenLoaderCore::block(uint64_t b) {
    std::shared_future<BlockPtr> fut;
    std::promise<BlockPtr> promise;
    bool load = false;
    {
        std::lock_guard<std::mutex> lk(cache_mutex_);
        auto& entry = cache_[b];
        if (!entry) {
            entry = std::make_shared<CacheEntry>();
            entry->block = promise.get_future().share();
            load = true;
            if (cache_.size() > cfg_.cache_blocks) {
                auto victim = cache_.end();
                for (auto it = cache_.begin(); it != cache_.end(); ++it)
                    if (it->first != b && (victim == cache_.end() || it->second->last_use < victim->second->last_use))
                        victim = it;
                cache_.erase(victim);
            }
        }
        entry->last_use = ++cache_tick_;
        fut = entry->block;
    }
    if (load) {
        try {
            auto data = std::make_shared<std::vector<uint8_t>>();
            shards_[block_shard_[b]]->read_block(block_local_[b], *data);
            promise.set_value(std::move(data));
        } catch (...) {
            promise.set_exception(std::current_exception());
        }
    }
    return fut.get();
}

void TokenLoaderCore::read_tokens(uint64_t start, uint64_t count, int64_t* out) {
    if (start + count > total_tokens_)
        throw ShardError("token range [" + std::to_string(start) + ", " + std::to_string(start + count) +
                         ") is past the end of the split (" + std::to_string(total_tokens_) + " tokens)");
    while (count > 0) {
        const uint64_t b =
            static_cast<uint64_t>(std::upper_bound(block_first_.begin(), block_first_.end(), start) - block_first_.begin()) - 1;
        BlockPtr data = block(b);
        const uint64_t offset = start - block_first_[b];
        const uint64_t take = std::min(count, data->size() / token_bytes_ - offset);
        const uint8_t* src = data->data() + offset * token_bytes_;
        if (token_bytes_ == 2)
            widen<uint16_t>(src, take, out);
        else
            widen<uint32_t>(src, take, out);
        start += take;
        count -= take;
        out += take;
    }
}

void TokenLoaderCore::produce(uint64_t n, Batch& out) {
    const uint64_t B = cfg_.batch_size, T = cfg_.seq_len, W = cfg_.world_size;
    const uint64_t first = n * B;
    const uint64_t rows = cfg_.loop ? B : std::min(B, per_rank_ - first);
    out.index = n;
    out.rows = rows;
    out.data.resize(2 * rows * T);
    int64_t* xs = out.data.data();
    int64_t* ys = xs + rows * T;
    std::shared_ptr<const std::vector<uint64_t>> perm;
    uint64_t perm_epoch = UINT64_MAX;
    for (uint64_t i = 0; i < rows; ++i) {
        const uint64_t p = first + i, epoch = p / per_rank_;
        const uint64_t pos = cfg_.rank + (p % per_rank_) * W;
        if (cfg_.shuffle && epoch != perm_epoch) {
            perm = permutation(epoch);
            perm_epoch = epoch;
        }
        const Unit u = unit(cfg_.shuffle ? (*perm)[pos] : pos);
        const uint64_t n_pred = u.len - 1;  // x = unit[:-1], y = unit[1:]
        int64_t* x = xs + i * T;
        int64_t* y = ys + i * T;
        read_tokens(u.start, n_pred, x);
        read_tokens(u.start + 1, n_pred, y);
        std::fill(x + n_pred, x + T, cfg_.pad_token);
        std::fill(y + n_pred, y + T, kIgnoreIndex);
    }
}

void TokenLoaderCore::worker() {
    for (;;) {
        uint64_t n;
        {
            std::unique_lock<std::mutex> lk(mutex_);
            space_cv_.wait(lk, [&] {
                return stopping_ || next_claim_ >= total_batches_ || next_claim_ < next_batch_ + cfg_.prefetch;
            });
            if (stopping_ || next_claim_ >= total_batches_) return;
            n = next_claim_++;
        }
        auto batch = std::make_unique<Batch>();
        std::exception_ptr error;
        try {
            produce(n, *batch);
        } catch (...) {
            error = std::current_exception();
        }
        {
            std::lock_guard<std::mutex> lk(mutex_);
            if (error)
                errors_[n] = error;
            else
                ready_[n] = std::move(batch);
        }
        produced_cv_.notify_all();
    }
}

std::unique_ptr<Batch> TokenLoaderCore::next() {
    std::unique_lock<std::mutex> lk(mutex_);
    if (next_batch_ >= total_batches_) return nullptr;
    produced_cv_.wait(lk, [&] { return ready_.count(next_batch_) || errors_.count(next_batch_); });
    auto err = errors_.find(next_batch_);
    if (err != errors_.end()) std::rethrow_exception(err->second);
    auto it = ready_.find(next_batch_);
    std::unique_ptr<Batch> batch = std::move(it->second);
    ready_.erase(it);
    ++next_batch_;
    lk.unlock();
    space_cv_.notify_all();
    return batch;
}

}  // namespace tinystories
