// cidr.cc — see cidr.h.
#include "dataplane/policy/cidr.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace mailseal::policy {

bool ParseCidr(const std::string& text, Cidr* out) {
  size_t slash = text.find('/');
  std::string host = text.substr(0, slash);
  Cidr c;
  if (inet_pton(AF_INET, host.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET;
    c.prefix = 32;
  } else if (inet_pton(AF_INET6, host.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET6;
    c.prefix = 128;
  } else {
    return false;
  }
  if (slash != std::string::npos) {
    std::string p = text.substr(slash + 1);
    int v = -1;
    auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (p.empty() || ec != std::errc() || ptr != p.data() + p.size() || v < 0 || v > c.prefix)
      return false;
    c.prefix = v;
  }
  *out = c;
  return true;
}

bool Contains(const Cidr& block, const sockaddr* sa) {
  const uint8_t* a = nullptr;
  if (sa->sa_family == AF_INET) {
    if (block.family != AF_INET) return false;
    a = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(sa)->sin_addr);
  } else if (sa->sa_family == AF_INET6) {
    const auto* a6 = reinterpret_cast<const uint8_t*>(
        &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr);
    static const uint8_t kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (block.family == AF_INET && std::memcmp(a6, kMapped, 12) == 0) a = a6 + 12;
    else if (block.family == AF_INET6) a = a6;
    else return false;
  } else {
    return false;
  }
  int full = block.prefix / 8, rest = block.prefix % 8;
  if (std::memcmp(a, block.addr.data(), static_cast<size_t>(full)) != 0) return false;
  if (rest == 0) return true;
  uint8_t mask = static_cast<uint8_t>(0xff << (8 - rest));
  return (a[full] & mask) == (block.addr[static_cast<size_t>(full)] & mask);
}

}  // namespace mailseal::policy
