// bytes.h — network byte order reads and writes for the packet code (big-endian, RFC 1700).
// Reads take a pointer the caller has bounds-checked; writes append to a string.
#pragma once

#include <cstdint>
#include <string>

namespace mailseal::net {

inline uint16_t Get16(const void* v) {
  const auto* p = static_cast<const uint8_t*>(v);
  return static_cast<uint16_t>(p[0] << 8 | p[1]);
}
inline uint32_t Get32(const void* v) {
  const auto* p = static_cast<const uint8_t*>(v);
  return static_cast<uint32_t>(Get16(p)) << 16 | Get16(p + 2);
}
inline void Put16(std::string* o, uint16_t v) {
  o->push_back(static_cast<char>(v >> 8));
  o->push_back(static_cast<char>(v & 0xff));
}
inline void Put32(std::string* o, uint32_t v) {
  Put16(o, static_cast<uint16_t>(v >> 16));
  Put16(o, static_cast<uint16_t>(v & 0xffff));
}

}  // namespace mailseal::net
