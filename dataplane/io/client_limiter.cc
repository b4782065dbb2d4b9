// client_limiter.cc — see client_limiter.h.
#include "dataplane/io/client_limiter.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <cstring>

#include "dataplane/base/status.h"

namespace mailseal::io {

std::string ClientLimiter::ClientKey(const sockaddr* peer) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (peer->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(peer)->sin_addr, buf, sizeof buf);
    return buf;
  }
  if (peer->sa_family == AF_INET6) {
    in6_addr a = reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
      inet_ntop(AF_INET, a.s6_addr + 12, buf, sizeof buf);
      return buf;
    }
    std::memset(a.s6_addr + 8, 0, 8);   // one client per /64: a host has a whole /64 to rotate through
    inet_ntop(AF_INET6, &a, buf, sizeof buf);
    return StrCat(buf, "/64");
  }
  return "?";
}

void ClientLimiter::DropIdle(int64_t now_ms) {
  for (auto it = table_.begin(); it != table_.end();)
    it = it->second.concurrent == 0 && now_ms - it->second.window_start_ms >= 60000 ? table_.erase(it) : std::next(it);
}

bool ClientLimiter::Admit(const std::string& key, uint32_t max_concurrent, uint32_t max_per_minute, int64_t now_ms,
                          std::string* why) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = table_.find(key);
  if (it == table_.end()) {
    if (table_.size() >= max_clients_) DropIdle(now_ms);
    if (table_.size() >= max_clients_) {
      *why = "too many different clients at once";
      return false;
    }
    it = table_.emplace(key, Entry{}).first;
  }
  Entry& e = it->second;
  if (now_ms - e.window_start_ms >= 60000) {
    e.window_start_ms = now_ms;
    e.in_window = 0;
  }
  if (e.concurrent >= max_concurrent) {
    *why = StrCat("too many connections from ", key, " (", max_concurrent, " at once)");
    return false;
  }
  if (e.in_window >= max_per_minute) {
    *why = StrCat("too many connections from ", key, " (", max_per_minute, " a minute)");
    return false;
  }
  ++e.concurrent;
  ++e.in_window;
  return true;
}

void ClientLimiter::Release(const std::string& key) {
  std::lock_guard<std::mutex> l(mu_);
  auto it = table_.find(key);
  if (it != table_.end() && it->second.concurrent > 0) --it->second.concurrent;
}

size_t ClientLimiter::clients() const {
  std::lock_guard<std::mutex> l(mu_);
  return table_.size();
}

}  // namespace mailseal::io
