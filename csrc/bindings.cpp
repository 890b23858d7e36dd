// The only file in csrc/ that includes Python headers: it exposes the C++ core as tinystories._core.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "loader.h"
#include "native_info.h"
#include "shards.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "tinystories native core (private: use the tinystories.* wrappers)";
    m.def("zstd_version", &tinystories::zstd_version,
          "Version of the system zstd library this module was built against.");

    // ---- tokenizer bindings (issue: BPE tokenizer) ----

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
            .def(py::init<std::string, uint32_t, uint32_t, int>(), py::arg("path"), py::arg("token_bytes"),
                 py::arg("block_tokens"), py::arg("level"))
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
