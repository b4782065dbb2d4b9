// file.h — reading a whole (small) file (certificates, keys, policy texts, configuration) and
// publishing one durably.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>

#include "dataplane/base/status.h"

namespace mailseal::base {

// ReadFile: the file's bytes. NotFound when it cannot be opened or read, InvalidArgument when
// it is larger than max_bytes (a path to /dev/zero or a log must not eat the memory).
Result<std::string> ReadFile(const std::string& path, size_t max_bytes = 16u << 20);

// FileOwner: who a published file belongs to (root tools writing a daemon user's file).
struct FileOwner {
  uid_t uid = 0;
  gid_t gid = 0;
};

// WriteFileDurably publishes `data` as `path` all or nothing: a temporary file beside it
// (created 0600, never through a symlink), its owner and mode set, fsync, rename, fsync of the
// directory. Any failure — the directory's sync included (the rename may not survive a crash
// then) — is an error, and the temporary file is removed.
[[nodiscard]] Status WriteFileDurably(const std::string& path, const std::string& data, mode_t mode = 0600,
                                      std::optional<FileOwner> owner = std::nullopt);

// RenameDurably: rename `from` to `to`, then fsync `to`'s directory (an error if either fails).
[[nodiscard]] Status RenameDurably(const std::string& from, const std::string& to);

}  // namespace mailseal::base
