// file.cc — see file.h.
#include "dataplane/base/file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace mailseal::base {

Result<std::string> ReadFile(const std::string& path, size_t max_bytes) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return NotFoundError(StrCat(path, ": cannot be read (", std::strerror(errno), ")"));
  std::string out;
  char buf[16384];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    if (out.size() + n > max_bytes) {
      std::fclose(f);
      return InvalidArgumentError(StrCat(path, ": larger than ", max_bytes, " bytes"));
    }
    out.append(buf, n);
  }
  bool failed = std::ferror(f);
  std::fclose(f);
  if (failed) return NotFoundError(StrCat(path, ": read error"));
  return out;
}

}  // namespace mailseal::base
