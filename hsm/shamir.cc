// shamir.cc — see shamir.h.
#include "hsm/shamir.h"

extern "C" {  // libgfshare.h has no C++ guards
#include <libgfshare.h>
}
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <set>

namespace mailseal::hsm {
namespace {
void SecureRandom(unsigned char* buf, unsigned int n) {
  if (RAND_bytes(buf, static_cast<int>(n)) != 1) std::abort();  // no entropy: never split
}
}  // namespace

Result<std::vector<Share>> Split(const Secret& secret, unsigned m, unsigned n) {
  if (m < 2 || n < m || n > 255) return InvalidArgumentError("need 2 <= M <= N <= 255");
  if (secret.empty() || secret.Reveal().size() > 1024) return InvalidArgumentError("secret must be 1..1024 bytes");
  gfshare_fill_rand = SecureRandom;
  std::vector<unsigned char> xs(n);
  for (unsigned i = 0; i < n; ++i) xs[i] = static_cast<unsigned char>(i + 1);
  unsigned size = static_cast<unsigned>(secret.Reveal().size());
  gfshare_ctx* ctx = gfshare_ctx_init_enc(xs.data(), n, static_cast<unsigned char>(m), size);
  if (!ctx) return InternalError("gfshare_ctx_init_enc failed");
  std::string copy(secret.Reveal());
  gfshare_ctx_enc_setsecret(ctx, reinterpret_cast<unsigned char*>(copy.data()));
  OPENSSL_cleanse(copy.data(), copy.size());
  std::vector<Share> out(n);
  for (unsigned i = 0; i < n; ++i) {
    out[i].x = xs[i];
    out[i].y.resize(size);
    gfshare_ctx_enc_getshare(ctx, static_cast<unsigned char>(i), reinterpret_cast<unsigned char*>(out[i].y.data()));
  }
  gfshare_ctx_free(ctx);  // libgfshare wipes its buffers on free
  return out;
}

Result<Secret> Combine(const std::vector<Share>& shares, unsigned m) {
  std::set<uint8_t> seen;
  for (const Share& s : shares) {
    if (s.x == 0) return InvalidArgumentError("share with x = 0");
    if (!seen.insert(s.x).second)
      return InvalidArgumentError(StrCat("share ", static_cast<unsigned>(s.x), " given twice"));
    if (s.y.empty() || s.y.size() != shares[0].y.size()) return InvalidArgumentError("shares differ in length");
  }
  if (shares.size() < m)
    return FailedPreconditionError(StrCat("need ", m, " distinct shares, got ", shares.size()));
  std::vector<unsigned char> xs;
  for (const Share& s : shares) xs.push_back(s.x);
  unsigned size = static_cast<unsigned>(shares[0].y.size());
  gfshare_ctx* ctx = gfshare_ctx_init_dec(xs.data(), static_cast<unsigned>(xs.size()), size);
  if (!ctx) return InternalError("gfshare_ctx_init_dec failed");
  for (size_t i = 0; i < shares.size(); ++i) {
    std::string y = shares[i].y;
    gfshare_ctx_dec_giveshare(ctx, static_cast<unsigned char>(i), reinterpret_cast<unsigned char*>(y.data()));
    OPENSSL_cleanse(y.data(), y.size());
  }
  std::string secret(size, '\0');
  gfshare_ctx_dec_extract(ctx, reinterpret_cast<unsigned char*>(secret.data()));
  gfshare_ctx_free(ctx);
  return Secret(std::move(secret));
}

}  // namespace mailseal::hsm
