// seq.h — TCP sequence numbers with wraparound-safe comparison (RFC 9293 §3.4: arithmetic
// modulo 2^32; "a < b" means a comes before b within half the sequence space).
#pragma once

#include <cstdint>

namespace mailseal::net::tcp {

class TcpSeq {
 public:
  constexpr TcpSeq() = default;
  constexpr explicit TcpSeq(uint32_t v) : v_(v) {}
  constexpr uint32_t raw() const { return v_; }
  constexpr TcpSeq operator+(uint32_t n) const { return TcpSeq(v_ + n); }
  constexpr TcpSeq operator-(uint32_t n) const { return TcpSeq(v_ - n); }
  constexpr TcpSeq& operator+=(uint32_t n) {
    v_ += n;
    return *this;
  }
  // Distance b - a as a signed number: negative when b comes before a.
  friend constexpr int32_t operator-(TcpSeq b, TcpSeq a) { return static_cast<int32_t>(b.v_ - a.v_); }
  friend constexpr bool operator==(TcpSeq a, TcpSeq b) { return a.v_ == b.v_; }
  friend constexpr bool operator<(TcpSeq a, TcpSeq b) { return (b - a) > 0; }
  friend constexpr bool operator<=(TcpSeq a, TcpSeq b) { return (b - a) >= 0; }
  friend constexpr bool operator>(TcpSeq a, TcpSeq b) { return b < a; }
  friend constexpr bool operator>=(TcpSeq a, TcpSeq b) { return b <= a; }

 private:
  uint32_t v_ = 0;
};

}  // namespace mailseal::net::tcp
