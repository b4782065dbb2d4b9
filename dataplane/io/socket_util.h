// socket_util.h — socket addresses: parsing, printing, ports (every back end names peers by them).
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "dataplane/base/status.h"

namespace mailseal::io {

// FormatAddress renders "1.2.3.4:25" or "[::1]:25".
std::string FormatAddress(const sockaddr* sa);
// FormatIp: the address alone ("192.0.2.1", "2001:db8::1"), "unknown" for other families.
std::string FormatIp(const sockaddr* sa);
// MakeAddress fills `out` from an IP literal and port; false when `ip` is not a literal.
bool MakeAddress(const std::string& ip, uint16_t port, sockaddr_storage* out, socklen_t* len);
void SetPort(sockaddr_storage* ss, uint16_t port);
socklen_t AddressLength(const sockaddr_storage& ss);

}  // namespace mailseal::io
