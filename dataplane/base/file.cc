// file.cc — see file.h.
#include "dataplane/base/file.h"
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>

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

namespace {
std::string DirOf(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : slash == 0 ? std::string("/") : path.substr(0, slash);
}

Status SyncDirOf(const std::string& path) {
  int dfd = ::open(DirOf(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  bool synced = dfd >= 0 && ::fsync(dfd) == 0;
  int err = errno;
  if (dfd >= 0) ::close(dfd);
  if (!synced) return UnavailableError(StrCat("stored ", path, " but its directory could not be synced: ", std::strerror(err)));
  return OkStatus();
}
}  // namespace

Status WriteFileDurably(const std::string& path, const std::string& data, mode_t mode, std::optional<FileOwner> owner) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return UnavailableError(StrCat("cannot write ", tmp, ": ", std::strerror(errno)));
  size_t done = 0;
  bool ok = true;
  while (ok && done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) done += static_cast<size_t>(n);
  }
  int err = ok ? 0 : errno;
  if (ok && ((owner && ::fchown(fd, owner->uid, owner->gid) != 0) || ::fchmod(fd, mode) != 0 || ::fsync(fd) != 0)) {
    ok = false;
    err = errno;
  }
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return UnavailableError(StrCat("cannot store ", path, ": ", std::strerror(err)));
  }
  return SyncDirOf(path);
}

Status RenameDurably(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0)
    return UnavailableError(StrCat("cannot rename ", from, " to ", to, ": ", std::strerror(errno)));
  return SyncDirOf(to);
}

}  // namespace mailseal::base
