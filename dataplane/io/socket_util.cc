// socket_util.cc — see socket_util.h.
#include "dataplane/io/socket_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>

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

}  // namespace mailseal::io
