// file.h — reading a whole (small) file (certificates, keys, policy texts, configuration) and
// publishing one durably.
#pragma once

#include <cstddef>
#include <string>

#include "dataplane/base/status.h"

namespace mailseal::base {

// ReadFile: the file's bytes. NotFound when it cannot be opened or read, InvalidArgument when
// it is larger than max_bytes (a path to /dev/zero or a log must not eat the memory).
Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 16u << 20);

// WriteFileDurably publishes `data` as `path` all or nothing: a temporary file beside it,
// fsync, rename, fsync of the directory. Any failure — the directory's sync included (the
// rename may not survive a crash then) — is an error, and the temporary file is removed.
// Mode 0600.
[[nodiscard]] Status WriteFileDurably(const std::string& path, const std::string& data);

}  // namespace mailseal::base
