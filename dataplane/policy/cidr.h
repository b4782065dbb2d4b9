// cidr.h — IPv4/IPv6 network blocks for trusted_networks.
//
// SECURITY: parsed from the configuration (trusted, but validated with file:line on error);
// matching reads only the peer address the transport reports.
//
// STANDARDS: RFC 4632 (CIDR), RFC 4291 §2.3 (IPv6 prefixes).
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <string>

namespace mailseal::policy {

struct Cidr {
  int family = 0;                   // AF_INET or AF_INET6
  std::array<uint8_t, 16> addr{};
  int prefix = 0;
};

// ParseCidr reads "10.0.0.0/8", "::1/128" or a bare address (full-length prefix).
bool ParseCidr(const std::string& text, Cidr* out);
// Contains tells whether a socket address lies in the block (IPv4-mapped IPv6 counts as IPv4).
bool Contains(const Cidr& block, const sockaddr* sa);

}  // namespace mailseal::policy
