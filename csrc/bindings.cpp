// The only file in csrc/ that includes Python headers: it exposes the C++ core as tinystories._core.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bpe.h"
#include "bpe_train.h"
#include "native_info.h"
#include "pretokenize.h"

namespace py = pybind11;

// ---- tokenizer helpers (issue: BPE tokenizer) ----
namespace {

using tinystories::BpeTokenizer;

// UTF-8 view of a str without copying (the str keeps the buffer alive). Lone surrogates raise
// UnicodeEncodeError, which the Python wrapper handles like tiktoken (replacing them with U+FFFD).
std::string_view utf8_view(const py::handle& text) {
    if (!PyUnicode_Check(text.ptr())) throw py::type_error("expected str, got " + std::string(py::str(text.get_type())));
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
        : ids.cast<std::vector<int64_t>>();
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
        .def("encode", [](const BpeTokenizer& t, const py::str& text, const std::vector<uint32_t>& allowed) {
            const auto view = utf8_view(text);
            py::gil_scoped_release release;
            return t.encode(view, allowed);
        }, py::arg("text"), py::arg("allowed_special"))
        .def("encode_ordinary", [](const BpeTokenizer& t, const py::str& text) {
            const auto view = utf8_view(text);
            py::gil_scoped_release release;
            return t.encode_ordinary(view);
        }, py::arg("text"))
        .def("encode_to_numpy", [](const BpeTokenizer& t, const py::str& text, const std::vector<uint32_t>& allowed) {
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
            py::gil_scoped_release release;
            return t.encode_batch(views, allowed, num_threads);
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

    m.def("pretokenize", [](const py::str& text) {
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

    // ---- tokenizer bindings (issue: BPE tokenizer) ----
    bind_tokenizer(m);

    // ---- end tokenizer bindings ----

    // ---- shard / loader bindings (issue: token shards and loader) ----

    // ---- end shard / loader bindings ----
}
