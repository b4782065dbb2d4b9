// socket_util.cc — see socket_util.h.
#include "dataplane/io/socket_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace mailseal::io {

std::string FormatIp(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = "unknown";
  if (sa->sa_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
  else if (sa->sa_family == AF_INET6)
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  return buf;
}

std::string FormatAddress(const sockaddr* sa) {
  if (sa->sa_family == AF_INET)
    return StrCat(FormatIp(sa), ":", ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port));
  if (sa->sa_family == AF_INET6)
    return StrCat("[", FormatIp(sa), "]:", ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port));
  return "unknown";
}

bool MakeAddress(const std::string& ip, uint16_t port, sockaddr_storage* out, socklen_t* len) {
  *out = sockaddr_storage{};
  auto* s4 = reinterpret_cast<sockaddr_in*>(out);
  auto* s6 = reinterpret_cast<sockaddr_in6*>(out);
  if (inet_pton(AF_INET, ip.c_str(), &s4->sin_addr) == 1) {
    s4->sin_family = AF_INET;
    s4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return true;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &s6->sin6_addr) == 1) {
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return true;
  }
  return false;
}

void SetPort(sockaddr_storage* ss, uint16_t port) {
  if (ss->ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(ss)->sin_port = htons(port);
  else reinterpret_cast<sockaddr_in6*>(ss)->sin6_port = htons(port);
}

socklen_t AddressLength(const sockaddr_storage& ss) {
  return ss.ss_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6);
}

Result<int> ConnectWithTimeout(const sockaddr_storage& addr, int timeout_ms) {
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return InternalError(StrCat("socket: ", std::strerror(errno)));
  std::string where = FormatAddress(reinterpret_cast<const sockaddr*>(&addr));
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), AddressLength(addr));
  if (rc != 0 && errno != EINPROGRESS) {
    int e = errno;
    ::close(fd);
    return UnavailableError(StrCat("connect to ", where, ": ", std::strerror(e)));
  }
  if (rc != 0) {
    pollfd p{fd, POLLOUT, 0};
    int n;
    do n = ::poll(&p, 1, timeout_ms); while (n < 0 && errno == EINTR);
    if (n == 0) {
      ::close(fd);
      return UnavailableError(StrCat("connect to ", where, ": timed out"));
    }
    int err = 0;
    socklen_t len = sizeof err;
    ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (n < 0 || err != 0) {
      ::close(fd);
      return UnavailableError(StrCat("connect to ", where, ": ", std::strerror(err ? err : errno)));
    }
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

Status WriteAllTimeout(int fd, std::string_view data, int timeout_ms) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd, POLLOUT, 0};
      int r = ::poll(&p, 1, timeout_ms);
      if (r == 0) return UnavailableError("timed out sending to next hop");
      if (r < 0 && errno != EINTR) return UnavailableError(StrCat("poll: ", std::strerror(errno)));
      continue;
    }
    return UnavailableError(StrCat("lost connection while sending: ", std::strerror(errno)));
  }
  return OkStatus();
}

Result<size_t> ReadSome(int fd, char* buf, size_t cap, int timeout_ms) {
  while (true) {
    ssize_t n = ::recv(fd, buf, cap, 0);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK)
      return UnavailableError(StrCat("lost connection: ", std::strerror(errno)));
    pollfd p{fd, POLLIN, 0};
    int r = ::poll(&p, 1, timeout_ms);
    if (r == 0) return UnavailableError("timed out waiting for next hop's reply");
    if (r < 0 && errno != EINTR) return UnavailableError(StrCat("poll: ", std::strerror(errno)));
  }
}

}  // namespace mailseal::io
