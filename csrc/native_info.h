#pragma once
#include <string>

namespace tinystories {
// Version string of the zstd library linked into the native core.
std::string zstd_version();
}  // namespace tinystories
