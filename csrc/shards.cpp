#include "shards.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token shards are little-endian; this build assumes a little-endian host"
#endif

namespace tinystories {

// ---- XXH64 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) ----
namespace {
constexpr uint64_t P1 = 11400714785074694791ULL, P2 = 14029467366897019727ULL,
                   P3 = 1609587929392839161ULL, P4 = 9650029242287828579ULL,
                   P5 = 2870177450012600261ULL;
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t read64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }
inline uint32_t read32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t xround(uint64_t acc, uint64_t input) { return rotl(acc + input * P2, 31) * P1; }
inline uint64_t merge(uint64_t acc, uint64_t val) { return (acc ^ xround(0, val)) * P1 + P4; }
}  // namespace

uint64_t xxh64(const void* data, size_t len, uint64_t seed) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    const uint8_t* end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
        for (; p + 32 <= end; p += 32) {
            v1 = xround(v1, read64(p));
            v2 = xround(v2, read64(p + 8));
            v3 = xround(v3, read64(p + 16));
            v4 = xround(v4, read64(p + 24));
        }
        h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
        h = merge(merge(merge(merge(h, v1), v2), v3), v4);
    } else {
        h = seed + P5;
    }
    h += static_cast<uint64_t>(len);
    for (; p + 8 <= end; p += 8) h = rotl(h ^ xround(0, read64(p)), 27) * P1 + P4;
    if (p + 4 <= end) {
        h = rotl(h ^ (static_cast<uint64_t>(read32(p)) * P1), 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; ++p) h = rotl(h ^ (*p * P5), 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

// ---- file layout constants (docs/shard_format.md) ----
namespace {
constexpr uint32_t kHeaderFrameMagic = 0x184D2A50;  // zstd skippable frame, nibble 0
constexpr uint32_t kIndexFrameMagic = 0x184D2A51;   // zstd skippable frame, nibble 1
constexpr char kHeaderTag[8] = {'T', 'S', 'T', 'O', 'K', 'E', 'N', 'S'};
constexpr char kIndexTag[8] = {'T', 'S', 'I', 'N', 'D', 'E', 'X', '\0'};
constexpr char kTrailerTag[8] = {'T', 'S', 'T', 'O', 'K', 'E', 'N', 'D'};
constexpr size_t kHeaderBytes = 24;         // 8 (skippable frame header) + 16 payload
constexpr size_t kIndexFixedBytes = 56;     // tag, version, token_bytes, 3 counts, 2 body sizes
constexpr size_t kTrailerBytes = 24;        // payload hash, index frame size, tag
constexpr size_t kBlockEntryBytes = 24;     // offset u64, compressed u32, tokens u32, hash u64

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
    const auto* b = reinterpret_cast<const uint8_t*>(&v);
    out.insert(out.end(), b, b + sizeof(T));
}
template <typename T>
T get(const uint8_t* p) {
    T v;
    std::memcpy(&v, p, sizeof(T));
    return v;
}

std::string sys_error(const std::string& path, const char* what) {
    return path + ": " + what + ": " + std::strerror(errno);
}

// Makes a rename inside the file's folder durable (a no-op where a folder cannot be opened).
void fsync_parent_dir(const std::string& path) {
    const auto slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}
}  // namespace

// ---- writer ----
ShardWriter::ShardWriter(std::string path, uint32_t token_bytes, uint32_t block_tokens, int level, unsigned threads,
                         const std::vector<std::pair<int, int>>& zstd_params)
    : path_(std::move(path)), tmp_path_(path_ + ".tmp"), block_tokens_(block_tokens), level_(level) {
    if (token_bytes != 2 && token_bytes != 4)
        throw ShardError(path_ + ": token_bytes must be 2 or 4, got " + std::to_string(token_bytes));
    if (block_tokens == 0) throw ShardError(path_ + ": block_tokens must be positive");
    for (const auto& [param, value] : zstd_params) {  // before anything is opened or allocated
        const ZSTD_bounds bounds = ZSTD_cParam_getBounds(static_cast<ZSTD_cParameter>(param));
        if (ZSTD_isError(bounds.error) || value < bounds.lowerBound || value > bounds.upperBound)
            throw ShardError(path_ + ": zstd parameter " + std::to_string(param) + " = " + std::to_string(value) +
                             " is not supported by this zstd");
    }
    index_.token_bytes = token_bytes;
    // 0666 minus the umask: the permissions a plain open() gives, so shared datasets stay readable by others.
    fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd_ < 0) throw ShardError(sys_error(tmp_path_, "cannot create shard"));
    struct stat st;
    if (::fstat(fd_, &st) == 0) {
        tmp_dev_ = static_cast<uint64_t>(st.st_dev);
        tmp_ino_ = static_cast<uint64_t>(st.st_ino);
    }
    for (unsigned i = 0; i < std::max(threads, 1u); ++i) {
        ZSTD_CCtx* cctx = ZSTD_createCCtx();
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level_);
        for (const auto& [param, value] : zstd_params)
            ZSTD_CCtx_setParameter(cctx, static_cast<ZSTD_cParameter>(param), value);  // checked above
        // The frame checksum makes zstd itself verify the decompressed content as well.
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
        cctx_.push_back(cctx);
    }
    compressed_.resize(cctx_.size());
    std::vector<uint8_t> header;
    put<uint32_t>(header, kHeaderFrameMagic);
    put<uint32_t>(header, 16);
    header.insert(header.end(), kHeaderTag, kHeaderTag + 8);
    put<uint32_t>(header, kShardFormatVersion);
    put<uint32_t>(header, token_bytes);
    write_bytes(header.data(), header.size());
    pending_.reserve(cctx_.size() * block_tokens * token_bytes);
}

ShardWriter::~ShardWriter() {
    for (void* cctx : cctx_) ZSTD_freeCCtx(static_cast<ZSTD_CCtx*>(cctx));
    if (fd_ >= 0) ::close(fd_);
    struct stat st;
    if (!finished_ && ::stat(tmp_path_.c_str(), &st) == 0 && static_cast<uint64_t>(st.st_dev) == tmp_dev_ &&
        static_cast<uint64_t>(st.st_ino) == tmp_ino_)
        ::unlink(tmp_path_.c_str());
}

void ShardWriter::write_bytes(const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (len > 0) {
        ssize_t n = ::write(fd_, p, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            throw ShardError(sys_error(tmp_path_, "write failed"));
        }
        p += n;
        len -= static_cast<size_t>(n);
        offset_ += static_cast<uint64_t>(n);
    }
}

void ShardWriter::flush_blocks() {
    if (pending_.empty()) return;
    const size_t block_bytes = static_cast<size_t>(block_tokens_) * index_.token_bytes;
    const size_t n_blocks = (pending_.size() + block_bytes - 1) / block_bytes;
    std::vector<size_t> sizes(n_blocks);
    auto compress = [&](size_t i) {
        const size_t begin = i * block_bytes, len = std::min(block_bytes, pending_.size() - begin);
        compressed_[i].resize(ZSTD_compressBound(len));
        sizes[i] = ZSTD_compress2(static_cast<ZSTD_CCtx*>(cctx_[i]), compressed_[i].data(), compressed_[i].size(),
                                  pending_.data() + begin, len);
    };
    std::vector<std::thread> helpers;
    for (size_t i = 1; i < n_blocks; ++i) helpers.emplace_back(compress, i);
    compress(0);
    for (auto& t : helpers) t.join();
    for (size_t i = 0; i < n_blocks; ++i) {
        if (ZSTD_isError(sizes[i]))
            throw ShardError(path_ + ": zstd compression failed: " + ZSTD_getErrorName(sizes[i]));
        BlockInfo b;
        b.offset = offset_;
        b.compressed_bytes = static_cast<uint32_t>(sizes[i]);
        b.n_tokens = static_cast<uint32_t>(std::min(block_bytes, pending_.size() - i * block_bytes) / index_.token_bytes);
        b.hash = xxh64(compressed_[i].data(), sizes[i]);
        b.first_token = index_.n_tokens;
        write_bytes(compressed_[i].data(), sizes[i]);
        index_.blocks.push_back(b);
        index_.n_tokens += b.n_tokens;
    }
    pending_.clear();
}

void ShardWriter::add_stories(const void* tokens, size_t n_tokens, const int64_t* lengths, size_t n_stories) {
    if (finished_) throw ShardError(path_ + ": add_stories after finish");
    uint64_t total = 0;
    for (size_t i = 0; i < n_stories; ++i) {
        if (lengths[i] <= 0 || lengths[i] > UINT32_MAX)
            throw ShardError(path_ + ": story length must be in 1..2^32-1, got " + std::to_string(lengths[i]));
        total += static_cast<uint64_t>(lengths[i]);
    }
    if (total != n_tokens)
        throw ShardError(path_ + ": story lengths sum to " + std::to_string(total) + " but " +
                         std::to_string(n_tokens) + " tokens were given");
    const auto* p = static_cast<const uint8_t*>(tokens);
    const size_t tb = index_.token_bytes, batch_bytes = cctx_.size() * block_tokens_ * tb;
    size_t left = n_tokens * tb;
    while (left > 0) {
        size_t take = std::min(left, batch_bytes - pending_.size());
        pending_.insert(pending_.end(), p, p + take);
        p += take;
        left -= take;
        if (pending_.size() == batch_bytes) flush_blocks();
    }
    for (size_t i = 0; i < n_stories; ++i) index_.story_lengths.push_back(static_cast<uint32_t>(lengths[i]));
}

const ShardIndex& ShardWriter::finish() {
    if (finished_) return index_;
    flush_blocks();
    // Body: block table + story lengths, zstd-compressed (story lengths compress ~4x).
    std::vector<uint8_t> body;
    body.reserve(index_.blocks.size() * kBlockEntryBytes + index_.story_lengths.size() * 4);
    for (const auto& b : index_.blocks) {
        put<uint64_t>(body, b.offset);
        put<uint32_t>(body, b.compressed_bytes);
        put<uint32_t>(body, b.n_tokens);
        put<uint64_t>(body, b.hash);
    }
    for (uint32_t len : index_.story_lengths) put<uint32_t>(body, len);
    std::vector<uint8_t> zbody(ZSTD_compressBound(body.size()));
    size_t zn = ZSTD_compress(zbody.data(), zbody.size(), body.data(), body.size(), 19);
    if (ZSTD_isError(zn)) throw ShardError(path_ + ": zstd compression of the index failed");
    zbody.resize(zn);

    std::vector<uint8_t> payload;
    payload.insert(payload.end(), kIndexTag, kIndexTag + 8);
    put<uint32_t>(payload, kShardFormatVersion);
    put<uint32_t>(payload, index_.token_bytes);
    put<uint64_t>(payload, index_.n_tokens);
    put<uint64_t>(payload, index_.blocks.size());
    put<uint64_t>(payload, index_.story_lengths.size());
    put<uint64_t>(payload, body.size());
    put<uint64_t>(payload, zbody.size());
    payload.insert(payload.end(), zbody.begin(), zbody.end());
    put<uint64_t>(payload, xxh64(payload.data(), payload.size()));
    const uint64_t frame_bytes = 8 + payload.size() + 16;
    put<uint64_t>(payload, frame_bytes);
    payload.insert(payload.end(), kTrailerTag, kTrailerTag + 8);

    std::vector<uint8_t> frame;
    put<uint32_t>(frame, kIndexFrameMagic);
    put<uint32_t>(frame, static_cast<uint32_t>(payload.size()));
    frame.insert(frame.end(), payload.begin(), payload.end());
    write_bytes(frame.data(), frame.size());
    index_.file_bytes = offset_;

    if (::fsync(fd_) != 0) throw ShardError(sys_error(tmp_path_, "fsync failed"));
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_path_.c_str(), path_.c_str()) != 0)
        throw ShardError(sys_error(path_, "cannot rename the finished temp file into place"));
    fsync_parent_dir(path_);
    finished_ = true;
    return index_;
}

// ---- reader ----
ShardReader::ShardReader(std::string path) : path_(std::move(path)) {
    fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw ShardError(sys_error(path_, "cannot open shard"));
    struct stat st;
    if (::fstat(fd_, &st) != 0) throw ShardError(sys_error(path_, "cannot stat shard"));
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    index_.file_bytes = size;
    if (size < kHeaderBytes + 8 + kIndexFixedBytes + kTrailerBytes)
        throw ShardError(path_ + ": truncated: " + std::to_string(size) + " bytes is too small for a token shard");

    uint8_t header[kHeaderBytes];
    pread_exact(header, kHeaderBytes, 0, "header");
    if (get<uint32_t>(header) != kHeaderFrameMagic || get<uint32_t>(header + 4) != kHeaderBytes - 8 ||
        std::memcmp(header + 8, kHeaderTag, 8) != 0)
        throw ShardError(path_ + ": not a tinystories token shard (bad header magic)");
    const uint32_t version = get<uint32_t>(header + 16);
    if (version != kShardFormatVersion)
        throw ShardError(path_ + ": shard format version " + std::to_string(version) +
                         ", but this build reads version " + std::to_string(kShardFormatVersion));
    index_.token_bytes = get<uint32_t>(header + 20);
    if (index_.token_bytes != 2 && index_.token_bytes != 4)
        throw ShardError(path_ + ": corrupt header: token size " + std::to_string(index_.token_bytes));

    uint8_t tail[16];
    pread_exact(tail, 16, size - 16, "index trailer");
    if (std::memcmp(tail + 8, kTrailerTag, 8) != 0)
        throw ShardError(path_ + ": truncated or damaged: no index trailer at the end of the file");
    const uint64_t frame_bytes = get<uint64_t>(tail);
    if (frame_bytes < 8 + kIndexFixedBytes + kTrailerBytes || frame_bytes > size - kHeaderBytes)
        throw ShardError(path_ + ": corrupt index trailer (index size " + std::to_string(frame_bytes) + ")");
    const uint64_t frame_offset = size - frame_bytes;
    std::vector<uint8_t> frame(frame_bytes);
    pread_exact(frame.data(), frame_bytes, frame_offset, "index");
    const uint8_t* payload = frame.data() + 8;
    const size_t payload_bytes = frame_bytes - 8;
    const size_t hashed_bytes = payload_bytes - 24;
    if (get<uint32_t>(frame.data()) != kIndexFrameMagic || get<uint32_t>(frame.data() + 4) != payload_bytes ||
        get<uint64_t>(payload + hashed_bytes) != xxh64(payload, hashed_bytes))
        throw ShardError(path_ + ": index hash mismatch (the file is damaged)");
    if (std::memcmp(payload, kIndexTag, 8) != 0 || get<uint32_t>(payload + 8) != version ||
        get<uint32_t>(payload + 12) != index_.token_bytes)
        throw ShardError(path_ + ": index does not match the header (damaged file)");
    index_.n_tokens = get<uint64_t>(payload + 16);
    const uint64_t n_blocks = get<uint64_t>(payload + 24), n_stories = get<uint64_t>(payload + 32);
    const uint64_t body_bytes = get<uint64_t>(payload + 40), zbody_bytes = get<uint64_t>(payload + 48);
    if (body_bytes != n_blocks * kBlockEntryBytes + n_stories * 4 || kIndexFixedBytes + zbody_bytes != hashed_bytes)
        throw ShardError(path_ + ": index sizes are inconsistent (damaged file)");
    std::vector<uint8_t> body(body_bytes);
    size_t got = ZSTD_decompress(body.data(), body.size(), payload + kIndexFixedBytes, zbody_bytes);
    if (ZSTD_isError(got) || got != body_bytes) throw ShardError(path_ + ": cannot decompress the index");

    uint64_t expected_offset = kHeaderBytes, tokens = 0;
    index_.blocks.resize(n_blocks);
    for (uint64_t i = 0; i < n_blocks; ++i) {
        const uint8_t* e = body.data() + i * kBlockEntryBytes;
        BlockInfo& b = index_.blocks[i];
        b.offset = get<uint64_t>(e);
        b.compressed_bytes = get<uint32_t>(e + 8);
        b.n_tokens = get<uint32_t>(e + 12);
        b.hash = get<uint64_t>(e + 16);
        b.first_token = tokens;
        if (b.offset != expected_offset || b.n_tokens == 0)
            throw ShardError(path_ + ": block table is inconsistent at block " + std::to_string(i));
        expected_offset += b.compressed_bytes;
        tokens += b.n_tokens;
    }
    if (expected_offset != frame_offset || tokens != index_.n_tokens)
        throw ShardError(path_ + ": block table does not cover the file (damaged or truncated)");
    index_.story_lengths.resize(n_stories);
    if (n_stories) std::memcpy(index_.story_lengths.data(), body.data() + n_blocks * kBlockEntryBytes, n_stories * 4);
    uint64_t story_tokens = 0;
    for (uint32_t len : index_.story_lengths) story_tokens += len;
    if (story_tokens != index_.n_tokens)
        throw ShardError(path_ + ": story lengths do not add up to the token count (damaged file)");
}

ShardReader::~ShardReader() {
    if (fd_ >= 0) ::close(fd_);
}

void ShardReader::pread_exact(void* buf, size_t len, uint64_t offset, const char* what) const {
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
        ssize_t n = ::pread(fd_, p, len, static_cast<off_t>(offset));
        if (n < 0) {
            if (errno == EINTR) continue;
            throw ShardError(sys_error(path_, "read failed"));
        }
        if (n == 0) throw ShardError(path_ + ": truncated: unexpected end of file while reading the " + what);
        p += n;
        len -= static_cast<size_t>(n);
        offset += static_cast<uint64_t>(n);
    }
}

void ShardReader::read_block(size_t b, std::vector<uint8_t>& out) const {
    if (b >= index_.blocks.size()) throw ShardError(path_ + ": block " + std::to_string(b) + " out of range");
    const BlockInfo& info = index_.blocks[b];
    std::vector<uint8_t> frame(info.compressed_bytes);
    pread_exact(frame.data(), frame.size(), info.offset, "block");
    if (xxh64(frame.data(), frame.size()) != info.hash)
        throw ShardError(path_ + ": block " + std::to_string(b) + " hash mismatch (the file is damaged)");
    const size_t raw = static_cast<size_t>(info.n_tokens) * index_.token_bytes;
    out.resize(raw);
    size_t n = ZSTD_decompress(out.data(), raw, frame.data(), frame.size());
    if (ZSTD_isError(n) || n != raw)
        throw ShardError(path_ + ": block " + std::to_string(b) + " does not decompress to " +
                         std::to_string(info.n_tokens) + " tokens" +
                         (ZSTD_isError(n) ? std::string(" (") + ZSTD_getErrorName(n) + ")" : std::string()));
}

}  // namespace tinystories
