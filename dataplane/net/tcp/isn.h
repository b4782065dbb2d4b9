// isn.h — initial sequence numbers per RFC 6528: ISN = M + F(4-tuple, secret), where M is a
// timer ticking every 4 microseconds and F a keyed hash (HMAC-SHA-256 truncated to 32 bits),
// so that an off-path attacker cannot guess a connection's ISN, and a new incarnation of a
// 4-tuple starts above the old one's (the timer).
//
// SECURITY: the secret is 32 random bytes drawn at start (OpenSSL's RAND), never logged;
// without randomness the process stops (a guessable ISN allows blind injection).
//
// STANDARDS: RFC 6528, RFC 9293 §3.4.1.
#pragma once

#include <array>
#include <cstdint>

#include "dataplane/net/tcp/seq.h"

namespace mailseal::net::tcp {

class IsnGenerator {
 public:
  IsnGenerator();   // draws the secret
  // Next: the ISN for (local, remote) addresses and ports (host order, IPv4 here; IPv6 takes
  // the same path with its 16-byte addresses) at monotonic time now_us.
  TcpSeq Next(uint32_t local_ip, uint16_t local_port, uint32_t remote_ip, uint16_t remote_port, int64_t now_us) const;

 private:
  std::array<unsigned char, 32> secret_{};
};

}  // namespace mailseal::net::tcp
