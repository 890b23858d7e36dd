#include "native_info.h"

#include <zstd.h>

namespace tinystories {
std::string zstd_version() { return ZSTD_versionString(); }
}  // namespace tinystories
