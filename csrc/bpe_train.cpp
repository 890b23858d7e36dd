#include "bpe_train.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <queue>
#include <thread>
#include <unordered_map>

#include "hash.h"
#include "pretokenize.h"

namespace tinystories {

// Open-addressing table from pre-token bytes to a count; keys live in one arena.
class PieceCounter {
   public:
    struct Entry {
        uint64_t hash = 0;  // 0: empty slot
        uint64_t key_off = 0;
        uint32_t key_len = 0;
        uint64_t count = 0;
    };

    PieceCounter() { slots_.resize(1 << 12); }

    void add(uint64_t hash, const unsigned char* key, uint32_t len, uint64_t count) {
        size_t i = (hash >> 8) & (slots_.size() - 1);
        for (;; i = (i + 1) & (slots_.size() - 1)) {
            Entry& e = slots_[i];
            if (e.hash == 0) break;
            if (e.hash == hash && e.key_len == len && bytes_equal(keys_.data() + e.key_off, key, len)) {
                e.count += count;
                return;
            }
        }
        slots_[i] = Entry{hash, keys_.size(), len, count};
        keys_.insert(keys_.end(), key, key + len);
        if (++used_ * 2 > slots_.size()) grow();
    }
    void add_all(const PieceCounter& other) {
        for (const Entry& e : other.slots_)
            if (e.hash != 0) add(e.hash, other.keys_.data() + e.key_off, e.key_len, e.count);
    }
    template <class F>
    void for_each(F&& f) const {
        for (const Entry& e : slots_)
            if (e.hash != 0) f(std::string_view(reinterpret_cast<const char*>(keys_.data() + e.key_off), e.key_len), e.count);
    }
    size_t size() const { return used_; }

   private:
    void grow() {
        std::vector<Entry> old(slots_.size() * 2);
        old.swap(slots_);
        for (const Entry& e : old) {
            if (e.hash == 0) continue;
            size_t i = (e.hash >> 8) & (slots_.size() - 1);
            while (slots_[i].hash != 0) i = (i + 1) & (slots_.size() - 1);
            slots_[i] = e;
        }
    }
    std::vector<Entry> slots_;
    std::vector<unsigned char> keys_;
    size_t used_ = 0;
};

BpeTrainer::BpeTrainer(std::vector<std::string> special_tokens, size_t num_threads)
    : specials_(std::move(special_tokens)),
      num_threads_(num_threads == 0 ? std::max(1u, std::thread::hardware_concurrency()) : num_threads),
      counts_(std::make_unique<PieceCounter>()) {
    for (const auto& s : specials_)
        if (s.empty()) throw std::invalid_argument("empty special token");
}

BpeTrainer::~BpeTrainer() = default;

size_t BpeTrainer::num_pieces() const { return counts_->size(); }

namespace {

constexpr size_t kWorkBytes = 1 << 20;  // long texts are cut into work items of about this size

// Cuts text at offsets where its pre-tokens do not change: just before a '\n' whose previous byte is
// ASCII and not white space (the pre-token before ends there; the one after starts with the '\n').
void cut_for_threads(std::string_view text, std::vector<std::string_view>& out) {
    while (text.size() > kWorkBytes) {
        size_t cut = std::string_view::npos;
        for (size_t p = text.find('\n', kWorkBytes); p != std::string_view::npos; p = text.find('\n', p + 1)) {
            const unsigned char prev = static_cast<unsigned char>(text[p - 1]);
            if (prev < 0x80 && prev != ' ' && !(prev >= '\t' && prev <= '\r')) {
                cut = p;
                break;
            }
        }
        if (cut == std::string_view::npos) break;
        out.push_back(text.substr(0, cut));
        text.remove_prefix(cut);
    }
    if (!text.empty()) out.push_back(text);
}

}  // namespace

void BpeTrainer::add_texts(const std::vector<std::string_view>& texts) {
    // Work items: the text between special tokens, long stretches cut further.
    std::vector<std::string_view> items;
    for (std::string_view text : texts) {
        while (!text.empty()) {
            size_t at = std::string_view::npos, len = 0;
            for (const auto& s : specials_) {
                const size_t p = text.find(s);
                if (p < at || (p == at && p != std::string_view::npos && s.size() > len)) at = p, len = s.size();
            }
            cut_for_threads(text.substr(0, at), items);
            if (at == std::string_view::npos) break;
            text.remove_prefix(at + len);
        }
    }
    const size_t n_threads = std::max<size_t>(1, std::min(num_threads_, items.size()));
    std::vector<PieceCounter> local(n_threads);
    std::atomic<size_t> next{0};
    auto worker = [&](PieceCounter& counter) {
        for (size_t i; (i = next.fetch_add(1)) < items.size();) {
            const std::string_view item = items[i];
            const auto* s = reinterpret_cast<const unsigned char*>(item.data());
            for_each_pretoken(item, [&](size_t b, size_t e) {
                counter.add(hash_key(s + b, e - b), s + b, uint32_t(e - b), 1);
            });
        }
    };
    std::vector<std::thread> threads;
    for (size_t t = 1; t < n_threads; ++t) threads.emplace_back(worker, std::ref(local[t]));
    worker(local[0]);
    for (auto& t : threads) t.join();
    for (const auto& counter : local) counts_->add_all(counter);
}

namespace {

inline uint64_t pair_key(uint32_t a, uint32_t b) { return (uint64_t(a) << 32) | b; }
inline uint32_t pair_left(uint64_t p) { return uint32_t(p >> 32); }
inline uint32_t pair_right(uint64_t p) { return uint32_t(p); }

struct Word {
    std::vector<uint32_t> symbols;
    int64_t count;
};

struct Candidate {
    int64_t count;
    uint64_t pair;
};

}  // namespace

std::pair<std::vector<std::string>, std::vector<Merge>> BpeTrainer::train(size_t max_tokens) const {
    std::vector<std::string> vocab;
    for (int b = 0; b < 256; ++b) vocab.emplace_back(1, static_cast<char>(b));
    std::vector<Merge> merges;

    // Words in a fixed order (sorted bytes) so that nothing depends on hash-table layout.
    std::vector<std::pair<std::string_view, uint64_t>> pieces;
    pieces.reserve(counts_->size());
    counts_->for_each([&](std::string_view key, uint64_t count) { pieces.emplace_back(key, count); });
    std::sort(pieces.begin(), pieces.end());
    std::vector<Word> words;
    words.reserve(pieces.size());
    for (const auto& [key, count] : pieces) {
        if (key.size() < 2) continue;  // nothing to merge
        Word w{std::vector<uint32_t>(key.size()), int64_t(count)};
        for (size_t i = 0; i < key.size(); ++i) w.symbols[i] = static_cast<unsigned char>(key[i]);
        words.push_back(std::move(w));
    }

    std::unordered_map<uint64_t, int64_t> pair_count;
    std::unordered_map<uint64_t, std::vector<uint32_t>> pair_words;  // may hold stale or repeated entries
    for (uint32_t w = 0; w < words.size(); ++w) {
        const auto& s = words[w].symbols;
        for (size_t i = 0; i + 1 < s.size(); ++i) {
            const uint64_t p = pair_key(s[i], s[i + 1]);
            pair_count[p] += words[w].count;
            auto& list = pair_words[p];
            if (list.empty() || list.back() != w) list.push_back(w);
        }
    }

    // Max-heap on count, then on lexicographically smallest (left bytes, right bytes).
    auto lower_priority = [&vocab](const Candidate& x, const Candidate& y) {
        if (x.count != y.count) return x.count < y.count;
        const std::string& xl = vocab[pair_left(x.pair)];
        const std::string& yl = vocab[pair_left(y.pair)];
        if (xl != yl) return xl > yl;
        return vocab[pair_right(x.pair)] > vocab[pair_right(y.pair)];
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> heap(lower_priority);
    for (const auto& [p, c] : pair_count) heap.push({c, p});

    std::vector<uint32_t> last_visit(words.size(), UINT32_MAX);
    std::vector<std::pair<uint64_t, int64_t>> deltas;
    while (vocab.size() < max_tokens && !heap.empty()) {
        const Candidate top = heap.top();
        heap.pop();
        const auto found = pair_count.find(top.pair);
        const int64_t current = found == pair_count.end() ? 0 : found->second;
        if (current != top.count) {  // stale entry: requeue with the true count
            if (current > 0) heap.push({current, top.pair});
            continue;
        }
        if (current <= 0) continue;
        const uint32_t a = pair_left(top.pair), b = pair_right(top.pair);
        const uint32_t merged = uint32_t(vocab.size());
        const uint32_t step = uint32_t(merges.size());
        vocab.push_back(vocab[a] + vocab[b]);
        merges.push_back({a, b, merged});

        std::vector<uint32_t> affected = std::move(pair_words[top.pair]);
        pair_words.erase(top.pair);
        deltas.clear();
        for (const uint32_t w : affected) {
            if (last_visit[w] == step) continue;
            last_visit[w] = step;
            auto& s = words[w].symbols;
            const int64_t c = words[w].count;
            bool present = false;
            for (size_t i = 0; i + 1 < s.size() && !present; ++i) present = s[i] == a && s[i + 1] == b;
            if (!present) continue;
            for (size_t i = 0; i + 1 < s.size(); ++i) deltas.emplace_back(pair_key(s[i], s[i + 1]), -c);
            size_t out = 0;
            for (size_t i = 0; i < s.size();) {
                if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
                    s[out++] = merged;
                    i += 2;
                } else {
                    s[out++] = s[i++];
                }
            }
            s.resize(out);
            for (size_t i = 0; i + 1 < s.size(); ++i) {
                const uint64_t p = pair_key(s[i], s[i + 1]);
                deltas.emplace_back(p, c);
                if (s[i] == merged || s[i + 1] == merged) {
                    auto& list = pair_words[p];
                    if (list.empty() || list.back() != w) list.push_back(w);
                }
            }
        }
        std::sort(deltas.begin(), deltas.end());
        for (size_t i = 0; i < deltas.size();) {
            const uint64_t p = deltas[i].first;
            int64_t d = 0;
            for (; i < deltas.size() && deltas[i].first == p; ++i) d += deltas[i].second;
            if (d == 0) continue;
            int64_t& count = pair_count[p];
            count += d;
            if (count == 0) pair_count.erase(p);
            else if (d > 0) heap.push({count, p});
        }
    }
    return {std::move(vocab), std::move(merges)};
}

}  // namespace tinystories
