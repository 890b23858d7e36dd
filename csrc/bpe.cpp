#include "bpe.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <queue>
#include <thread>
#include <unordered_map>

#include "hash.h"
#include "pretokenize.h"

namespace tinystories {

DisallowedSpecialError::DisallowedSpecialError(const std::string& tok)
    : std::invalid_argument("Encountered text corresponding to disallowed special token '" + tok +
                            "'. Pass allowed_special={'" + tok + "'} (or \"all\") to encode it as a special "
                            "token, or use encode_ordinary() to encode it as plain text."),
      token(tok) {}

namespace {

constexpr uint32_t kNoRank = UINT32_MAX;
constexpr size_t kShortPiece = 64;      // pieces up to this many bytes use the array merge loop
constexpr size_t kMaxCachedPiece = 64;  // longer pieces are rare and not cached

}  // namespace

// Open-addressing hash table (pair of ids) -> (rank, result): the inner loop of BPE.
struct BpeTokenizer::PairTable {
    static constexpr uint64_t kEmpty = UINT64_MAX;
    std::vector<uint64_t> keys;
    std::vector<uint64_t> values;  // rank << 32 | result
    unsigned shift = 64;

    explicit PairTable(const std::vector<Merge>& merges) {
        unsigned bits = 4;
        while ((size_t{1} << bits) < merges.size() * 2 + 16) ++bits;
        shift = 64 - bits;
        keys.assign(size_t{1} << bits, kEmpty);
        values.assign(size_t{1} << bits, 0);
        for (uint32_t rank = 0; rank < merges.size(); ++rank) {
            const uint64_t key = (uint64_t(merges[rank].left) << 32) | merges[rank].right;
            size_t i = slot(key);
            while (keys[i] != kEmpty) {
                if (keys[i] == key)
                    throw std::invalid_argument("duplicate merge of tokens " + std::to_string(merges[rank].left) +
                                                " and " + std::to_string(merges[rank].right));
                i = (i + 1) & (keys.size() - 1);
            }
            keys[i] = key;
            values[i] = (uint64_t(rank) << 32) | merges[rank].result;
        }
    }
    size_t slot(uint64_t key) const { return size_t((key * 0x9E3779B97F4A7C15ull) >> shift); }
    // Rank of merging (a, b) (kNoRank if none); `result` receives the merged id.
    uint32_t find(uint32_t a, uint32_t b, uint32_t& result) const {
        const uint64_t key = (uint64_t(a) << 32) | b;
        for (size_t i = slot(key);; i = (i + 1) & (keys.size() - 1)) {
            const uint64_t k = keys[i];
            if (k == key) {
                result = uint32_t(values[i]);
                return uint32_t(values[i] >> 32);
            }
            if (k == kEmpty) return kNoRank;
        }
    }
};

// Pre-token bytes -> token ids. Keys and values live in two flat arenas; the table is cleared when it
// grows past its budget so memory stays bounded on endless streams of distinct words.
class PieceCache {
   public:
    PieceCache() { slots_.resize(1 << 12); }
    const uint32_t* find(uint64_t hash, const unsigned char* key, uint32_t len, uint32_t& count) const {
        for (size_t i = (hash >> 8) & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
            const Slot& s = slots_[i];
            if (s.hash == 0) return nullptr;
            if (s.hash == hash && s.key_len == len && bytes_equal(keys_.data() + s.key_off, key, len)) {
                count = s.value_len;
                return values_.data() + s.value_off;
            }
        }
    }
    void insert(uint64_t hash, const unsigned char* key, uint32_t len, const uint32_t* ids, uint32_t count) {
        if (used_ >= kMaxEntries) clear();
        if ((used_ + 1) * 2 > slots_.size()) grow();
        Slot s{hash, uint32_t(keys_.size()), len, uint32_t(values_.size()), count};
        keys_.insert(keys_.end(), key, key + len);
        values_.insert(values_.end(), ids, ids + count);
        place(s);
        ++used_;
    }

   private:
    struct Slot {
        uint64_t hash;  // never 0 for a used slot (see hash_key)
        uint32_t key_off, key_len, value_off, value_len;
    };
    static constexpr size_t kMaxEntries = size_t{1} << 20;
    void place(const Slot& s) {
        size_t i = (s.hash >> 8) & (slots_.size() - 1);
        while (slots_[i].hash != 0) i = (i + 1) & (slots_.size() - 1);
        slots_[i] = s;
    }
    void grow() {
        std::vector<Slot> old(slots_.size() * 2);
        old.swap(slots_);
        for (const Slot& s : old)
            if (s.hash != 0) place(s);
    }
    void clear() {
        std::fill(slots_.begin(), slots_.end(), Slot{});
        keys_.clear();
        values_.clear();
        used_ = 0;
    }
    std::vector<Slot> slots_;
    std::vector<unsigned char> keys_;
    std::vector<uint32_t> values_;
    size_t used_ = 0;
};

// Caches are reused across calls; each call borrows one (or a fresh one when all are in use).
struct BpeTokenizer::CachePool {
    std::mutex mutex;
    std::vector<std::unique_ptr<PieceCache>> idle;

    std::unique_ptr<PieceCache> acquire() {
        std::lock_guard<std::mutex> lock(mutex);
        if (idle.empty()) return std::make_unique<PieceCache>();
        auto cache = std::move(idle.back());
        idle.pop_back();
        return cache;
    }
    void release(std::unique_ptr<PieceCache> cache) {
        std::lock_guard<std::mutex> lock(mutex);
        idle.push_back(std::move(cache));
    }
    // Borrows a cache for one scope.
    struct Lease {
        explicit Lease(CachePool& p) : pool(p), cache(p.acquire()) {}
        ~Lease() { pool.release(std::move(cache)); }
        Lease(const Lease&) = delete;
        Lease& operator=(const Lease&) = delete;
        CachePool& pool;
        std::unique_ptr<PieceCache> cache;
    };
};


BpeTokenizer::BpeTokenizer(std::vector<std::string> vocab, std::vector<Merge> merges, SpecialTokens special_tokens)
    : vocab_(std::move(vocab)), merges_(std::move(merges)), specials_(std::move(special_tokens)) {
    const size_t n = vocab_.size();
    if (n >= UINT32_MAX) throw std::invalid_argument("vocabulary too large");
    is_special_.assign(n, false);
    for (const auto& [text, id] : specials_) {
        if (id >= n)
            throw std::invalid_argument("special token '" + text + "' has id " + std::to_string(id) +
                                        " outside the vocabulary of " + std::to_string(n));
        if (text.empty()) throw std::invalid_argument("empty special token");
        if (is_special_[id]) throw std::invalid_argument("two special tokens share id " + std::to_string(id));
        is_special_[id] = true;
        vocab_[id] = text;
    }
    std::unordered_map<std::string_view, uint32_t> id_of;
    id_of.reserve(n);
    std::fill(std::begin(byte_to_id_), std::end(byte_to_id_), UINT32_MAX);
    for (uint32_t id = 0; id < n; ++id) {
        if (is_special_[id]) continue;
        const std::string& t = vocab_[id];
        if (t.empty()) throw std::invalid_argument("token " + std::to_string(id) + " is empty");
        if (!id_of.emplace(t, id).second)
            throw std::invalid_argument("tokens " + std::to_string(id_of[t]) + " and " + std::to_string(id) +
                                        " have the same bytes");
        if (t.size() == 1) byte_to_id_[static_cast<unsigned char>(t[0])] = id;
    }
    for (int b = 0; b < 256; ++b)
        if (byte_to_id_[b] == UINT32_MAX)
            throw std::invalid_argument("byte " + std::to_string(b) + " has no single-byte token (not byte-level)");
    for (size_t r = 0; r < merges_.size(); ++r) {
        const Merge& m = merges_[r];
        if (m.left >= n || m.right >= n || m.result >= n)
            throw std::invalid_argument("merge " + std::to_string(r) + " refers to a token id outside the vocabulary");
        if (is_special_[m.left] || is_special_[m.right] || is_special_[m.result])
            throw std::invalid_argument("merge " + std::to_string(r) + " involves a special token");
        if (vocab_[m.result] != vocab_[m.left] + vocab_[m.right])
            throw std::invalid_argument("merge " + std::to_string(r) + ": token " + std::to_string(m.result) +
                                        " is not the concatenation of tokens " + std::to_string(m.left) + " and " +
                                        std::to_string(m.right));
    }
    pairs_ = std::make_unique<PairTable>(merges_);
    caches_ = std::make_unique<CachePool>();
}

BpeTokenizer::~BpeTokenizer() = default;

// BPE of one pre-token: repeatedly merge the adjacent pair of lowest rank (leftmost on ties).
void BpeTokenizer::bpe_piece(const unsigned char* piece, size_t n, std::vector<uint32_t>& out) const {
    if (n == 1) {
        out.push_back(byte_to_id_[piece[0]]);
        return;
    }
    if (n > kShortPiece) {
        bpe_long_piece(piece, n, out);
        return;
    }
    uint32_t ids[kShortPiece], ranks[kShortPiece], results[kShortPiece];  // ranks[i]: pair (i, i+1)
    size_t m = n;
    for (size_t i = 0; i < n; ++i) ids[i] = byte_to_id_[piece[i]];
    for (size_t i = 0; i + 1 < m; ++i) ranks[i] = pairs_->find(ids[i], ids[i + 1], results[i]);
    while (m > 1) {
        size_t best = 0;
        uint32_t best_rank = ranks[0];
        for (size_t i = 1; i + 1 < m; ++i)
            if (ranks[i] < best_rank) best_rank = ranks[i], best = i;
        if (best_rank == kNoRank) break;
        ids[best] = results[best];
        const size_t tail = m - best - 2;  // entries after the removed one
        std::memmove(ids + best + 1, ids + best + 2, tail * sizeof(uint32_t));
        std::memmove(ranks + best + 1, ranks + best + 2, tail * sizeof(uint32_t));
        std::memmove(results + best + 1, results + best + 2, tail * sizeof(uint32_t));
        --m;
        if (best > 0) ranks[best - 1] = pairs_->find(ids[best - 1], ids[best], results[best - 1]);
        if (best + 1 < m) ranks[best] = pairs_->find(ids[best], ids[best + 1], results[best]);
    }
    out.insert(out.end(), ids, ids + m);
}

// The same BPE in O(n log n) with a heap and a linked list, for long pre-tokens (runs of spaces...).
void BpeTokenizer::bpe_long_piece(const unsigned char* piece, size_t n, std::vector<uint32_t>& out) const {
    constexpr uint32_t kNone = UINT32_MAX;
    std::vector<uint32_t> id(n), next(n), prev(n);
    for (size_t i = 0; i < n; ++i) {
        id[i] = byte_to_id_[piece[i]];
        next[i] = i + 1 < n ? uint32_t(i + 1) : kNone;
        prev[i] = i > 0 ? uint32_t(i - 1) : kNone;
    }
    struct Candidate {
        uint32_t rank, pos, left, right, result;
        bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
    auto consider = [&](uint32_t pos) {
        if (pos == kNone || next[pos] == kNone) return;
        uint32_t result;
        const uint32_t rank = pairs_->find(id[pos], id[next[pos]], result);
        if (rank != kNoRank) heap.push({rank, pos, id[pos], id[next[pos]], result});
    };
    for (uint32_t i = 0; i + 1 < n; ++i) consider(i);
    while (!heap.empty()) {
        const Candidate c = heap.top();
        heap.pop();
        const uint32_t right = next[c.pos];
        if (id[c.pos] != c.left || right == kNone || id[right] != c.right) continue;  // stale
        id[c.pos] = c.result;
        id[right] = kNone;
        next[c.pos] = next[right];
        if (next[right] != kNone) prev[next[right]] = c.pos;
        consider(prev[c.pos]);
        consider(c.pos);
    }
    for (uint32_t i = 0; i != kNone; i = next[i]) out.push_back(id[i]);
}

void BpeTokenizer::encode_segment(std::string_view text, std::vector<uint32_t>& out, PieceCache& cache) const {
    const auto* s = reinterpret_cast<const unsigned char*>(text.data());
    for_each_pretoken(text, [&](size_t begin, size_t end) {
        const unsigned char* p = s + begin;
        const size_t n = end - begin;
        if (n == 1) {
            out.push_back(byte_to_id_[*p]);
            return;
        }
        if (n > kMaxCachedPiece) {
            bpe_piece(p, n, out);
            return;
        }
        const uint64_t h = hash_key(p, n);
        uint32_t count;
        if (const uint32_t* ids = cache.find(h, p, uint32_t(n), count)) {
            if (count == 1) out.push_back(*ids);  // most pre-tokens are one token
            else out.insert(out.end(), ids, ids + count);
            return;
        }
        const size_t before = out.size();
        bpe_piece(p, n, out);
        cache.insert(h, p, uint32_t(n), out.data() + before, uint32_t(out.size() - before));
    });
}

void BpeTokenizer::encode_with_specials(std::string_view text, const std::vector<uint32_t>& allowed_special,
                                        std::vector<uint32_t>& out, PieceCache& cache) const {
    if (specials_.empty()) {
        encode_segment(text, out, cache);
        return;
    }
    // Like tiktoken, refuse the whole text if any disallowed special token occurs in it.
    std::vector<const std::pair<std::string, uint32_t>*> allowed;
    size_t first_bad = std::string_view::npos;
    const std::string* bad = nullptr;
    for (const auto& special : specials_) {
        const bool ok = std::find(allowed_special.begin(), allowed_special.end(), special.second) !=
                        allowed_special.end();
        if (ok) {
            allowed.push_back(&special);
            continue;
        }
        const size_t pos = text.find(special.first);
        if (pos < first_bad || (pos == first_bad && pos != std::string_view::npos && special.first.size() > bad->size()))
            first_bad = pos, bad = &special.first;
    }
    if (bad != nullptr && first_bad != std::string_view::npos) throw DisallowedSpecialError(*bad);
    // Split at allowed special tokens (the longest one where several start at the same place).
    std::vector<size_t> next_at(allowed.size(), 0);
    for (size_t k = 0; k < allowed.size(); ++k) next_at[k] = text.find(allowed[k]->first);
    size_t start = 0;
    while (true) {
        size_t best = std::string_view::npos, best_k = 0;
        for (size_t k = 0; k < allowed.size(); ++k) {
            if (next_at[k] != std::string_view::npos && next_at[k] < start)
                next_at[k] = text.find(allowed[k]->first, start);
            if (next_at[k] < best || (next_at[k] == best && best != std::string_view::npos &&
                                      allowed[k]->first.size() > allowed[best_k]->first.size()))
                best = next_at[k], best_k = k;
        }
        if (best == std::string_view::npos) break;
        encode_segment(text.substr(start, best - start), out, cache);
        out.push_back(allowed[best_k]->second);
        start = best + allowed[best_k]->first.size();
    }
    encode_segment(text.substr(start), out, cache);
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text, const std::vector<uint32_t>& allowed_special) const {
    std::vector<uint32_t> out;
    out.reserve(text.size() / 4 + 16);
    CachePool::Lease lease(*caches_);
    encode_with_specials(text, allowed_special, out, *lease.cache);
    return out;
}

std::vector<uint32_t> BpeTokenizer::encode_ordinary(std::string_view text) const {
    std::vector<uint32_t> out;
    out.reserve(text.size() / 4 + 16);
    CachePool::Lease lease(*caches_);
    encode_segment(text, out, *lease.cache);
    return out;
}

std::vector<std::vector<uint32_t>> BpeTokenizer::encode_batch(const std::vector<std::string_view>& texts,
                                                              const std::vector<uint32_t>& allowed_special,
                                                              size_t num_threads) const {
    std::vector<std::vector<uint32_t>> results(texts.size());
    if (num_threads == 0) num_threads = std::max(1u, std::thread::hardware_concurrency());
    num_threads = std::max<size_t>(1, std::min(num_threads, texts.size()));
    std::atomic<size_t> next_text{0};
    std::vector<std::exception_ptr> errors(texts.size());
    std::atomic<bool> failed{false};
    auto worker = [&]() {
        CachePool::Lease lease(*caches_);
        constexpr size_t kGrain = 8;  // texts taken at a time: small enough to balance uneven lengths
        while (!failed.load(std::memory_order_relaxed)) {
            const size_t begin = next_text.fetch_add(kGrain);
            if (begin >= texts.size()) break;
            for (size_t i = begin; i < std::min(begin + kGrain, texts.size()); ++i) {
                try {
                    results[i].reserve(texts[i].size() / 4 + 16);
                    encode_with_specials(texts[i], allowed_special, results[i], *lease.cache);
                } catch (...) {
                    errors[i] = std::current_exception();
                    failed = true;
                }
            }
        }
    };
    if (num_threads == 1) {
        worker();
    } else {
        std::vector<std::thread> threads;
        for (size_t t = 0; t < num_threads; ++t) threads.emplace_back(worker);
        for (auto& t : threads) t.join();
    }
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
    return results;
}

std::string BpeTokenizer::decode_bytes(const uint32_t* ids, size_t count) const {
    size_t total = 0;
    for (size_t i = 0; i < count; ++i) {
        if (ids[i] >= vocab_.size())
            throw std::invalid_argument("token id " + std::to_string(ids[i]) + " is out of range (n_vocab = " +
                                        std::to_string(vocab_.size()) + ")");
        total += vocab_[ids[i]].size();
    }
    std::string out;
    out.reserve(total);
    for (size_t i = 0; i < count; ++i) out += vocab_[ids[i]];
    return out;
}

}  // namespace tinystories
