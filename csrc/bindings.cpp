// The only file in csrc/ that includes Python headers: it exposes the C++ core as tinystories._core.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bpe.h"
#include "bpe_train.h"
#include "decode_step.h"
#include "loader.h"
#include "native_info.h"
#include "pretokenize.h"
#include "shards.h"

#include <zstd.h>

#include <map>

namespace py = pybind11;

// ---- tokenizer helpers (issue: BPE tokenizer) ----
namespace {

using tinystories::BpeTokenizer;

// UTF-8 view of a str without copying (the str keeps the buffer alive). Lone surrogates raise
// UnicodeEncodeError, which the Python wrapper handles like tiktoken (replacing them with U+FFFD).
std::string_view utf8_view(const py::handle& text) {
    if (!PyUnicode_Check(text.ptr())) throw py::type_error("expected str, got " + std::string(py::str(py::type::handle_of(text).attr("__name__"))));
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(text.ptr(), &size);
    if (data == nullptr) throw py::error_already_set();
    return {data, static_cast<size_t>(size)};
}

std::vector<uint32_t> ids_from_python(const py::handle& ids, size_t n_vocab) {
    std::vector<int64_t> raw = py::isinstance<py::array>(ids)
        ? [&] {
              auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(ids);
              if (!a) throw py::type_error("token ids must be integers");
              return std::vector<int64_t>(a.data(), a.data() + a.size());
          }()
        : [&] {
              try {
                  return ids.cast<std::vector<int64_t>>();
              } catch (const py::cast_error&) {
                  throw py::type_error("token ids must be a sequence of integers");
              }
          }();
    std::vector<uint32_t> out(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] < 0 || static_cast<uint64_t>(raw[i]) >= n_vocab)
            throw py::value_error("token id " + std::to_string(raw[i]) + " is out of range (n_vocab = " +
                                  std::to_string(n_vocab) + ")");
        out[i] = static_cast<uint32_t>(raw[i]);
    }
    return out;
}

// uint16 when every id fits, else uint32 (handed over without a copy).
py::array ids_to_numpy(std::vector<uint32_t>&& ids, size_t n_vocab) {
    if (n_vocab <= 65536) {
        py::array_t<uint16_t> out(ids.size());
        uint16_t* dst = out.mutable_data();
        for (size_t i = 0; i < ids.size(); ++i) dst[i] = static_cast<uint16_t>(ids[i]);
        return out;
    }
    auto* owned = new std::vector<uint32_t>(std::move(ids));
    py::capsule free_when_done(owned, [](void* p) { delete static_cast<std::vector<uint32_t>*>(p); });
    return py::array_t<uint32_t>(owned->size(), owned->data(), free_when_done);
}

// list[int] from ids. Python ints for token ids are created once and shared (ints are immutable), which
// makes building the list several times faster than allocating a new int per token.
py::list ids_to_list(const std::vector<uint32_t>& ids) {
    static std::vector<PyObject*> ints;  // guarded by the GIL; entries live for the process
    py::list out(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
        const uint32_t id = ids[i];
        if (id >= ints.size()) {
            const size_t old = ints.size();
            ints.resize(std::max<size_t>(id + 1, old * 2));
            for (size_t k = old; k < ints.size(); ++k) ints[k] = PyLong_FromSize_t(k);
        }
        Py_INCREF(ints[id]);
        PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), ints[id]);
    }
    return out;
}

std::vector<std::string_view> utf8_views(const py::sequence& texts) {
    std::vector<std::string_view> views;
    views.reserve(texts.size());
    for (const auto& t : texts) views.push_back(utf8_view(t));
    return views;
}

void bind_tokenizer(py::module_& m) {
    py::class_<BpeTokenizer>(m, "BpeTokenizer")
        .def(py::init([](const std::vector<py::bytes>& vocab, const std::vector<std::tuple<uint32_t, uint32_t, uint32_t>>& merges,
                         const std::vector<std::pair<std::string, uint32_t>>& special_tokens) {
                 std::vector<std::string> v(vocab.begin(), vocab.end());
                 std::vector<tinystories::Merge> ms;
                 ms.reserve(merges.size());
                 for (const auto& [a, b, r] : merges) ms.push_back({a, b, r});
                 return std::make_unique<BpeTokenizer>(std::move(v), std::move(ms), special_tokens);
             }),
             py::arg("vocab"), py::arg("merges"), py::arg("special_tokens"))
        .def_property_readonly("n_vocab", &BpeTokenizer::n_vocab)
        .def("vocab", [](const BpeTokenizer& t) {
            py::list out;
            for (const auto& token : t.vocab()) out.append(py::bytes(token));
            return out;
        })
        .def("merges", [](const BpeTokenizer& t) {
            py::list out;
            for (const auto& mg : t.merges()) out.append(py::make_tuple(mg.left, mg.right, mg.result));
            return out;
        })
        .def("special_tokens", &BpeTokenizer::special_tokens)
        .def("encode", [](const BpeTokenizer& t, const py::object& text, const std::vector<uint32_t>& allowed) {
            const auto view = utf8_view(text);
            std::vector<uint32_t> ids;
            {
                py::gil_scoped_release release;
                ids = t.encode(view, allowed);
            }
            return ids_to_list(ids);
        }, py::arg("text"), py::arg("allowed_special"))
        .def("encode_ordinary", [](const BpeTokenizer& t, const py::object& text) {
            const auto view = utf8_view(text);
            std::vector<uint32_t> ids;
            {
                py::gil_scoped_release release;
                ids = t.encode_ordinary(view);
            }
            return ids_to_list(ids);
        }, py::arg("text"))
        .def("encode_to_numpy", [](const BpeTokenizer& t, const py::object& text, const std::vector<uint32_t>& allowed) {
            const auto view = utf8_view(text);
            std::vector<uint32_t> ids;
            {
                py::gil_scoped_release release;
                ids = t.encode(view, allowed);
            }
            return ids_to_numpy(std::move(ids), t.n_vocab());
        }, py::arg("text"), py::arg("allowed_special"))
        .def("encode_batch", [](const BpeTokenizer& t, const py::sequence& texts, const std::vector<uint32_t>& allowed,
                                size_t num_threads) {
            const auto views = utf8_views(texts);
            std::vector<std::vector<uint32_t>> batch;
            {
                py::gil_scoped_release release;
                batch = t.encode_batch(views, allowed, num_threads);
            }
            py::list out(batch.size());
            for (size_t i = 0; i < batch.size(); ++i) out[i] = ids_to_list(batch[i]);
            return out;
        }, py::arg("texts"), py::arg("allowed_special"), py::arg("num_threads"))
        .def("encode_batch_to_numpy", [](const BpeTokenizer& t, const py::sequence& texts,
                                         const std::vector<uint32_t>& allowed, size_t num_threads) {
            const auto views = utf8_views(texts);
            std::vector<std::vector<uint32_t>> batch;
            {
                py::gil_scoped_release release;
                batch = t.encode_batch(views, allowed, num_threads);
            }
            py::list out;
            for (auto& ids : batch) out.append(ids_to_numpy(std::move(ids), t.n_vocab()));
            return out;
        }, py::arg("texts"), py::arg("allowed_special"), py::arg("num_threads"))
        .def("decode_bytes", [](const BpeTokenizer& t, const py::handle& ids) {
            const auto checked = ids_from_python(ids, t.n_vocab());
            std::string bytes;
            {
                py::gil_scoped_release release;
                bytes = t.decode_bytes(checked.data(), checked.size());
            }
            return py::bytes(bytes);
        }, py::arg("ids"));

    py::class_<tinystories::BpeTrainer>(m, "BpeTrainer")
        .def(py::init<std::vector<std::string>, size_t>(), py::arg("special_tokens"), py::arg("num_threads"))
        .def("add_texts", [](tinystories::BpeTrainer& t, const py::sequence& texts) {
            const auto views = utf8_views(texts);
            py::gil_scoped_release release;
            t.add_texts(views);
        }, py::arg("texts"))
        .def("num_pieces", &tinystories::BpeTrainer::num_pieces)
        .def("train", [](const tinystories::BpeTrainer& t, size_t max_tokens) {
            std::pair<std::vector<std::string>, std::vector<tinystories::Merge>> result;
            {
                py::gil_scoped_release release;
                result = t.train(max_tokens);
            }
            py::list vocab, merges;
            for (const auto& token : result.first) vocab.append(py::bytes(token));
            for (const auto& mg : result.second) merges.append(py::make_tuple(mg.left, mg.right, mg.result));
            return py::make_tuple(vocab, merges);
        }, py::arg("max_tokens"));

    m.def("pretokenize", [](const py::object& text) {
        const auto view = utf8_view(text);
        py::list pieces;
        tinystories::for_each_pretoken(view, [&](size_t b, size_t e) {
            pieces.append(py::str(view.data() + b, e - b));
        });
        return pieces;
    }, py::arg("text"), "The GPT-2 pre-tokens of text (for tests and inspection).");
}

}  // namespace
// ---- end tokenizer helpers ----

PYBIND11_MODULE(_core, m) {
    m.doc() = "tinystories native core (private: use the tinystories.* wrappers)";
    m.def("zstd_version", &tinystories::zstd_version,
          "Version of the system zstd library this module was built against.");

    // ---- the generation engine's native step: attention and GELU (tinystories.model.decode) ----
    m.def("decode_attention",
          [](py::array_t<float, py::array::c_style> qkv, py::array_t<float, py::array::c_style> keys,
             py::array_t<float, py::array::c_style> values, py::array_t<int64_t, py::array::c_style> slots,
             py::array_t<int64_t, py::array::c_style> positions, int64_t window,
             py::array_t<float, py::array::c_style> out) {
              auto fail = [](const std::string& why) { throw py::value_error("decode_attention: " + why); };
              if (keys.ndim() != 4 || values.ndim() != 4) fail("keys and values must be (slots, heads, length, head_dim)");
              for (int i = 0; i < 4; ++i)
                  if (keys.shape(i) != values.shape(i)) fail("keys and values differ in shape");
              const int64_t capacity = keys.shape(0), heads = keys.shape(1), length = keys.shape(2), dim = keys.shape(3);
              if (qkv.ndim() != 2 || qkv.shape(1) != 3 * heads * dim) fail("qkv must be (queries, 3 * heads * head_dim)");
              const int64_t queries = qkv.shape(0);
              if (slots.ndim() != 1 || slots.shape(0) != queries) fail("slots must be (queries,)");
              if (positions.ndim() != 1 || positions.shape(0) != queries) fail("positions must be (queries,)");
              if (out.ndim() != 2 || out.shape(0) != queries || out.shape(1) != heads * dim)
                  fail("out must be (queries, heads * head_dim)");
              if (window < 0) fail("window must be >= 0");
              if (!keys.writeable() || !values.writeable() || !out.writeable()) fail("keys, values and out must be writeable");
              const int64_t *slot = slots.data(), *position = positions.data();
              for (int64_t r = 0; r < queries; ++r) {
                  if (slot[r] < 0 || slot[r] >= capacity)
                      fail("slot " + std::to_string(slot[r]) + " is outside the cache's " + std::to_string(capacity) + " slots");
                  if (position[r] < 0 || position[r] >= length)
                      fail("position " + std::to_string(position[r]) + " is outside the cache's " + std::to_string(length) +
                           " positions");
              }
              const float* q = qkv.data();
              float *k = keys.mutable_data(), *v = values.mutable_data(), *o = out.mutable_data();
              py::gil_scoped_release unlocked;
              tinystories::decode_attention(q, queries, heads, dim, k, v, length, slot, position, window, o);
          },
          py::arg("qkv").noconvert(), py::arg("keys").noconvert(), py::arg("values").noconvert(),
          py::arg("slots").noconvert(), py::arg("positions").noconvert(), py::arg("window"), py::arg("out").noconvert(),
          "New tokens of the rows in cache slots `slots` at `positions`: writes their keys and values into the cache, "
          "then attends (fp32, no scaling, causal, within `window` keys unless 0) into `out`. See csrc/decode_step.h.");
    m.def("gelu_tanh",
          [](py::array_t<float, py::array::c_style> x) {
              if (!x.writeable()) throw py::value_error("gelu_tanh: x must be writeable");
              float* data = x.mutable_data();
              const int64_t n = x.size();
              py::gil_scoped_release unlocked;
              tinystories::gelu_tanh(data, n);
          },
          py::arg("x").noconvert(), "x <- 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))) in place (fp32, C order).");

    // ---- tokenizer bindings (issue: BPE tokenizer) ----
    bind_tokenizer(m);

    // ---- end tokenizer bindings ----

    // ---- shard / loader bindings (issue: token shards and loader) ----
    {
        using namespace tinystories;
        py::register_exception<ShardError>(m, "ShardError", PyExc_ValueError);
        // numpy view of a vector owned by a heap object that the array keeps alive (no copy).
        auto owned_array = [](auto* owner, const void* data, py::ssize_t n, py::dtype dtype) {
            using Owner = std::remove_pointer_t<decltype(owner)>;
            py::capsule base(owner, [](void* o) { delete static_cast<Owner*>(o); });
            return py::array(dtype, {n}, {dtype.itemsize()}, data, base);
        };
        auto token_dtype = [](uint32_t token_bytes) {
            return token_bytes == 2 ? py::dtype::of<uint16_t>() : py::dtype::of<uint32_t>();
        };

        m.def("xxh64", [](py::buffer data, uint64_t seed) {
                  py::buffer_info info = data.request();
                  return xxh64(info.ptr, static_cast<size_t>(info.size * info.itemsize), seed);
              },
              py::arg("data"), py::arg("seed") = 0, "XXH64 of a bytes-like object (the block hash of token shards).");

        py::class_<ShardWriter>(m, "ShardWriter")
            .def(py::init([](std::string path, uint32_t token_bytes, uint32_t block_tokens, int level, unsigned threads,
                             const std::map<std::string, int>& zstd_params) {
                     // zstd's advanced parameters by name (a stable API: the numbers are part of zstd's ABI).
                     static const std::map<std::string, int> ids = {
                         {"window_log", ZSTD_c_windowLog},   {"hash_log", ZSTD_c_hashLog},
                         {"chain_log", ZSTD_c_chainLog},     {"search_log", ZSTD_c_searchLog},
                         {"min_match", ZSTD_c_minMatch},     {"target_length", ZSTD_c_targetLength},
                         {"strategy", ZSTD_c_strategy}};
                     std::vector<std::pair<int, int>> params;
                     for (const auto& [name, value] : zstd_params) {
                         auto it = ids.find(name);
                         if (it == ids.end()) throw py::value_error("unknown zstd parameter '" + name + "'");
                         params.emplace_back(it->second, value);
                     }
                     return new ShardWriter(std::move(path), token_bytes, block_tokens, level, threads, params);
                 }),
                 py::arg("path"), py::arg("token_bytes"), py::arg("block_tokens"), py::arg("level"), py::arg("threads") = 1,
                 py::arg("zstd_params") = std::map<std::string, int>{})
            .def("add_stories",
                 [](ShardWriter& w, py::array tokens, py::array_t<int64_t, py::array::c_style | py::array::forcecast> lengths) {
                     py::buffer_info t = tokens.request(), l = lengths.request();
                     if (t.ndim != 1 || (t.size > 1 && t.strides[0] != t.itemsize))
                         throw ShardError("add_stories: tokens must be a contiguous 1-D array");
                     if (tokens.dtype().kind() != 'u' || static_cast<uint32_t>(t.itemsize) != w.token_bytes())
                         throw ShardError("add_stories: tokens must be uint" + std::to_string(8 * w.token_bytes()) +
                                          ", got " + std::string(py::str(tokens.dtype())));
                     py::gil_scoped_release release;
                     w.add_stories(t.ptr, static_cast<size_t>(t.size), static_cast<const int64_t*>(l.ptr),
                                   static_cast<size_t>(l.size));
                 },
                 py::arg("tokens"), py::arg("lengths"))
            .def("finish", [](ShardWriter& w) {
                     ShardIndex idx;
                     {
                         py::gil_scoped_release release;
                         idx = w.finish();
                     }
                     py::dict d;
                     d["tokens"] = idx.n_tokens;
                     d["stories"] = idx.story_lengths.size();
                     d["blocks"] = idx.blocks.size();
                     d["bytes"] = idx.file_bytes;
                     return d;
                 })
            .def_property_readonly("n_tokens", &ShardWriter::n_tokens)
            .def_property_readonly("n_stories", &ShardWriter::n_stories);

        py::class_<ShardReader>(m, "ShardReader")
            .def(py::init<std::string>(), py::arg("path"))
            .def_property_readonly("path", &ShardReader::path)
            .def_property_readonly("token_bytes", [](const ShardReader& r) { return r.index().token_bytes; })
            .def_property_readonly("n_tokens", [](const ShardReader& r) { return r.index().n_tokens; })
            .def_property_readonly("n_blocks", [](const ShardReader& r) { return r.index().blocks.size(); })
            .def_property_readonly("file_bytes", [](const ShardReader& r) { return r.index().file_bytes; })
            .def_property_readonly("story_lengths", [](const ShardReader& r) {
                const auto& v = r.index().story_lengths;
                return py::array_t<uint32_t>(static_cast<py::ssize_t>(v.size()), v.data());
            })
            .def("block_info", [](const ShardReader& r, size_t b) {
                     if (b >= r.index().blocks.size()) throw py::index_error("block index out of range");
                     const BlockInfo& i = r.index().blocks[b];
                     py::dict d;
                     d["offset"] = i.offset;
                     d["compressed_bytes"] = i.compressed_bytes;
                     d["tokens"] = i.n_tokens;
                     d["first_token"] = i.first_token;
                     d["hash"] = i.hash;
                     return d;
                 }, py::arg("block"))
            .def("read_block", [owned_array, token_dtype](const ShardReader& r, size_t b) {
                     auto* out = new std::vector<uint8_t>();
                     try {
                         py::gil_scoped_release release;
                         r.read_block(b, *out);
                     } catch (...) {
                         delete out;
                         throw;
                     }
                     py::dtype dt = token_dtype(r.index().token_bytes);
                     return owned_array(out, out->data(), static_cast<py::ssize_t>(out->size() / dt.itemsize()), dt);
                 }, py::arg("block"), "Tokens of one block (hash-checked), as a uint16/uint32 array.");

        py::class_<TokenLoaderCore>(m, "TokenLoaderCore")
            .def(py::init([](std::vector<std::string> shard_paths, uint64_t batch_size, uint64_t seq_len,
                             bool stories_mode, uint64_t seed, uint64_t rank, uint64_t world_size, uint64_t prefetch,
                             uint64_t threads, bool shuffle, bool loop, int64_t pad_token, uint64_t mix_blocks,
                             uint64_t start_batch) {
                     LoaderConfig c;
                     c.shard_paths = std::move(shard_paths);
                     c.batch_size = batch_size;
                     c.seq_len = seq_len;
                     c.stories_mode = stories_mode;
                     c.seed = seed;
                     c.rank = rank;
                     c.world_size = world_size;
                     c.prefetch = prefetch;
                     c.threads = threads;
                     c.shuffle = shuffle;
                     c.loop = loop;
                     c.pad_token = pad_token;
                     c.mix_blocks = mix_blocks;
                     c.start_batch = start_batch;
                     py::gil_scoped_release release;
                     return std::make_unique<TokenLoaderCore>(std::move(c));
                 }),
                 py::arg("shard_paths"), py::arg("batch_size"), py::arg("seq_len"), py::arg("stories_mode"),
                 py::arg("seed"), py::arg("rank"), py::arg("world_size"), py::arg("prefetch"), py::arg("threads"),
                 py::arg("shuffle"), py::arg("loop"), py::arg("pad_token"), py::arg("mix_blocks"),
                 py::arg("start_batch"))
            .def("next", [owned_array](TokenLoaderCore& l) -> py::object {
                     std::unique_ptr<Batch> b;
                     {
                         py::gil_scoped_release release;
                         b = l.next();
                     }
                     if (!b) return py::none();
                     const auto rows = static_cast<py::ssize_t>(b->rows);
                     const auto T = static_cast<py::ssize_t>(b->data.size() / (2 * std::max<uint64_t>(b->rows, 1)));
                     const int64_t* data = b->data.data();
                     py::array flat = owned_array(b.release(), data, 2 * rows * T, py::dtype::of<int64_t>());
                     py::array both = flat.attr("reshape")(2, rows, T);
                     return py::make_tuple(both[py::int_(0)], both[py::int_(1)]);
                 },
                 "Next (x, y) batch as int64 arrays viewing one buffer, or None after the last batch.")
            .def("read_tokens", [](TokenLoaderCore& l, uint64_t start, uint64_t count) {
                     py::array_t<int64_t> out(static_cast<py::ssize_t>(count));
                     int64_t* p = out.mutable_data();
                     py::gil_scoped_release release;
                     l.read_tokens(start, count, p);
                     return out;
                 }, py::arg("start"), py::arg("count"))
            .def_property_readonly("next_batch", &TokenLoaderCore::next_batch)
            .def_property_readonly("total_batches", &TokenLoaderCore::total_batches)
            .def_property_readonly("units_per_epoch", &TokenLoaderCore::units_per_epoch)
            .def_property_readonly("units_per_rank_epoch", &TokenLoaderCore::units_per_rank_epoch)
            .def_property_readonly("target_tokens_per_epoch", &TokenLoaderCore::target_tokens_per_epoch)
            .def_property_readonly("total_tokens", &TokenLoaderCore::total_tokens);
    }

    // ---- end shard / loader bindings ----
}
