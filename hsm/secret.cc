// secret.cc — see secret.h.
#include "hsm/secret.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace mailseal::hsm {

Secret& Secret::operator=(Secret&& o) noexcept {
  if (this != &o) {
    Wipe();
    value_ = std::move(o.value_);
    o.Wipe();
  }
  return *this;
}

void Secret::Wipe() {
  if (!value_.empty()) OPENSSL_cleanse(value_.data(), value_.size());
  value_.clear();
  value_.shrink_to_fit();
}

Result<Secret> ReadSecretFile(const std::string& path, std::optional<uid_t> owner) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return InvalidArgumentError(StrCat("secret file ", path, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return InvalidArgumentError(StrCat("secret file ", path, ": not a regular file"));
  }
  // Root running a tool (keygen, the ceremony helpers) may read the daemon user's file; the
  // daemon itself always says whose it must be.
  uid_t want = owner.value_or(::geteuid());
  bool owner_ok = st.st_uid == want || (!owner && ::geteuid() == 0);
  if ((st.st_mode & 077) != 0 || !owner_ok) {
    ::close(fd);
    return Status(StatusCode::kPermissionDenied,
                  StrCat("secret file ", path, ": must be owned by ", want == ::geteuid() ? "us" : StrCat("uid ", want),
                         " with mode 0600 or 0400"));
  }
  char buf[258];
  ssize_t n = ::read(fd, buf, sizeof buf);
  ::close(fd);
  if (n < 0 || n > 257) {
    OPENSSL_cleanse(buf, sizeof buf);
    return InvalidArgumentError(StrCat("secret file ", path, ": unreadable or longer than 256 bytes"));
  }
  size_t len = static_cast<size_t>(n);
  if (len && buf[len - 1] == '\n') --len;
  if (len && buf[len - 1] == '\r') --len;
  Secret s(std::string(buf, len));
  OPENSSL_cleanse(buf, sizeof buf);
  if (s.empty()) return InvalidArgumentError(StrCat("secret file ", path, ": empty"));
  return s;
}

}  // namespace mailseal::hsm
