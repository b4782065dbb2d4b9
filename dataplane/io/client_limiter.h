// client_limiter.h — per-client connection limits shared by the net threads (issue #13).
//
// One client must not take every connection and lock out the agency's own mail servers. For
// each address outside trusted_networks: at most `max_concurrent` connections at once and at
// most `max_per_minute` new ones in any minute (Postfix's smtpd_client_connection_count_limit
// and smtpd_client_connection_rate_limit are the model); trusted networks are not limited here
// and, in the net threads, keep 1/8 of max_connections for themselves.
//
// SECURITY: the table grows with distinct client addresses: it is bounded (`max_clients`);
// when full, idle entries are dropped first, and a new address that still finds no room is
// refused (4xx) rather than allowed to grow memory. IPv6 clients are counted by /64.
// Thread safety: one mutex; taken once per accepted and once per closed connection.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_map>

namespace mailseal::io {

class ClientLimiter {
 public:
  explicit ClientLimiter(size_t max_clients = 65536) : max_clients_(max_clients) {}
  // ClientKey: the address a limit counts by ("192.0.2.7", "2001:db8:1:2::/64").
  static std::string ClientKey(const sockaddr* peer);
  // Admit: whether a new connection from `key` may be served; when not, `why` says which
  // limit (for the 421 and the log). A true answer must be paired with Release(key).
  bool Admit(const std::string& key, uint32_t max_concurrent, uint32_t max_per_minute, int64_t now_ms, std::string* why);
  void Release(const std::string& key);
  size_t clients() const;

 private:
  struct Entry {
    uint32_t concurrent = 0;
    int64_t window_start_ms = 0;   // the current one-minute window
    uint32_t in_window = 0;
  };
  void DropIdle(int64_t now_ms);
  mutable std::mutex mu_;
  size_t max_clients_;
  std::unordered_map<std::string, Entry> table_;
};

}  // namespace mailseal::io
