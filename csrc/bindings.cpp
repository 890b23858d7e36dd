// The only file in csrc/ that includes Python headers: it exposes the C++ core as tinystories._core.
#include <pybind11/pybind11.h>
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "native_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "tinystories native core (private: use the tinystories.* wrappers)";
    m.def("zstd_version", &tinystories::zstd_version,
          "Version of the system zstd library this module was built against.");

    // ---- tokenizer bindings (issue: BPE tokenizer) ----

    // ---- end tokenizer bindings ----

    // ---- shard / loader bindings (issue: token shards and loader) ----

    // ---- end shard / loader bindings ----
}
