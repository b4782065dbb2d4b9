// socket_util.h — small helpers over kernel sockets shared by the kernel back end.
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

// ConnectWithTimeout: a blocking TCP socket connected within timeout_ms, or an error.
Result<int> ConnectWithTimeout(const sockaddr_storage& addr, int timeout_ms);
// WriteAllTimeout writes everything; each wait for room is bounded by timeout_ms.
Status WriteAllTimeout(int fd, std::string_view data, int timeout_ms);
// ReadSome reads what is there (up to cap), waiting at most timeout_ms. 0 bytes: peer closed.
Result<size_t> ReadSome(int fd, char* buf, size_t cap, int timeout_ms);

}  // namespace mailseal::io
