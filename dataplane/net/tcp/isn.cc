// isn.cc — see isn.h.
#include "dataplane/net/tcp/isn.h"

#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>

namespace mailseal::net::tcp {

IsnGenerator::IsnGenerator() {
  if (RAND_bytes(secret_.data(), static_cast<int>(secret_.size())) != 1) std::abort();   // see the header
}

TcpSeq IsnGenerator::Next(uint32_t local_ip, uint16_t local_port, uint32_t remote_ip, uint16_t remote_port,
                          int64_t now_us) const {
  unsigned char in[12];
  std::memcpy(in, &local_ip, 4);
  std::memcpy(in + 4, &remote_ip, 4);
  std::memcpy(in + 8, &local_port, 2);
  std::memcpy(in + 10, &remote_port, 2);
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()), in, sizeof in, mac, &len);
  uint32_t f = 0;
  std::memcpy(&f, mac, 4);
  return TcpSeq(static_cast<uint32_t>(now_us / 4) + f);
}

}  // namespace mailseal::net::tcp
