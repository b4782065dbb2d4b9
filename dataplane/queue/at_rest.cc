// at_rest.cc — see at_rest.h.
#include "dataplane/queue/at_rest.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "dataplane/base/strings.h"

namespace mailseal::queue {
namespace {
std::mutex g_mu;
std::shared_ptr<AtRestKeys> g_keys;   // under g_mu

struct Ctx {
  Ctx() : c(EVP_CIPHER_CTX_new()) {}
  ~Ctx() { EVP_CIPHER_CTX_free(c); }
  EVP_CIPHER_CTX* c;
};

// The additional data: the record type and the file's salt.
std::string Aad(uint8_t type, std::string_view salt) {
  std::string a(1, static_cast<char>(type));
  a.append(salt);
  return a;
}
}  // namespace

DataKey::~DataKey() { OPENSSL_cleanse(key.data(), key.size()); }

void InstallAtRestKeys(std::shared_ptr<AtRestKeys> keys) {
  std::lock_guard<std::mutex> l(g_mu);
  g_keys = std::move(keys);
}

std::shared_ptr<AtRestKeys> InstalledAtRestKeys() {
  std::lock_guard<std::mutex> l(g_mu);
  return g_keys;
}

std::string SealRecord(const DataKey& key, uint8_t type, std::string_view salt, std::string_view plain) {
  std::string out(kRecordOverhead + plain.size(), '\0');
  auto* o = reinterpret_cast<unsigned char*>(out.data());
  // A failure of the DRBG or the cipher here is an inside fault: nothing may be written in
  // clear instead, so the process stops (the message was not acknowledged yet, or its
  // status append is retried after the restart).
  if (RAND_bytes(o, 12) != 1) std::abort();
  key.sealed.fetch_add(1, std::memory_order_relaxed);
  Ctx ctx;
  std::string aad = Aad(type, salt);
  int n = 0;
  if (!ctx.c || EVP_EncryptInit_ex(ctx.c, EVP_aes_256_gcm(), nullptr, key.key.data(), o) != 1 ||
      EVP_EncryptUpdate(ctx.c, nullptr, &n, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.c, o + 12, &n, reinterpret_cast<const unsigned char*>(plain.data()),
                        static_cast<int>(plain.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.c, o + 12 + n, &n) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.c, EVP_CTRL_GCM_GET_TAG, 16, o + 12 + plain.size()) != 1)
    std::abort();
  return out;
}

Result<std::string> OpenRecord(const DataKey& key, uint8_t type, std::string_view salt, std::string_view sealed) {
  if (sealed.size() < kRecordOverhead) return DataLossError("encrypted record too short");
  const auto* in = reinterpret_cast<const unsigned char*>(sealed.data());
  size_t len = sealed.size() - kRecordOverhead;
  std::string out(len, '\0');
  Ctx ctx;
  std::string aad = Aad(type, salt);
  int n = 0;
  unsigned char tag[16];
  std::memcpy(tag, in + 12 + len, 16);
  if (!ctx.c || EVP_DecryptInit_ex(ctx.c, EVP_aes_256_gcm(), nullptr, key.key.data(), in) != 1 ||
      EVP_DecryptUpdate(ctx.c, nullptr, &n, reinterpret_cast<const unsigned char*>(aad.data()),
                        static_cast<int>(aad.size())) != 1 ||
      EVP_DecryptUpdate(ctx.c, reinterpret_cast<unsigned char*>(out.data()), &n, in + 12, static_cast<int>(len)) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.c, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1 ||
      EVP_DecryptFinal_ex(ctx.c, reinterpret_cast<unsigned char*>(out.data()) + n, &n) != 1) {
    OPENSSL_cleanse(out.data(), out.size());
    return DataLossError(StrCat("record fails authentication under data key ", key.id));
  }
  return out;
}

namespace {
constexpr std::string_view kBlobMagic = "MSSEAL1\n";
constexpr uint8_t kBlobType = 0xB0;
}  // namespace

std::string SealBlob(std::string_view plain) {
  std::shared_ptr<AtRestKeys> ring = InstalledAtRestKeys();
  std::shared_ptr<const DataKey> key = ring ? ring->Current() : nullptr;
  if (!key) return std::string(plain);
  std::string salt(kFileSaltBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(salt.data()), static_cast<int>(salt.size())) != 1) std::abort();
  std::string out(kBlobMagic);
  out.push_back(static_cast<char>(key->id.size()));
  out += key->id;
  out += salt;
  out += SealRecord(*key, kBlobType, salt, plain);
  return out;
}

Result<std::string> OpenBlob(std::string data) {
  if (!std::string_view(data).starts_with(kBlobMagic)) return data;
  std::string_view v(data);
  v.remove_prefix(kBlobMagic.size());
  if (v.empty() || v.size() < 1 + static_cast<uint8_t>(v[0]) + kFileSaltBytes) return DataLossError("sealed file too short");
  std::string id(v.substr(1, static_cast<uint8_t>(v[0])));
  v.remove_prefix(1 + id.size());
  std::string salt(v.substr(0, kFileSaltBytes));
  v.remove_prefix(kFileSaltBytes);
  std::shared_ptr<AtRestKeys> ring = InstalledAtRestKeys();
  if (!ring) return UnavailableError(StrCat("sealed under data key ", id, ", and no key ring is loaded"));
  Result<std::shared_ptr<const DataKey>> key = ring->Find(id);
  if (!key.ok()) return key.status();
  return OpenRecord(**key, kBlobType, salt, v);
}

}  // namespace mailseal::queue
