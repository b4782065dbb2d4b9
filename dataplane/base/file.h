// file.h — reading a whole (small) file: certificates, keys, policy texts, configuration.
#pragma once

#include <cstddef>
#include <string>

#include "dataplane/base/status.h"

namespace mailseal::base {

// ReadFile: the file's bytes. NotFound when it cannot be opened or read, InvalidArgument when
// it is larger than max_bytes (a path to /dev/zero or a log must not eat the memory).
Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 16u << 20);

}  // namespace mailseal::base
