// token_key.cc — see token_key.h. The RSA_METHOD / EC_KEY_METHOD APIs are deprecated in
// OpenSSL 3.0 (as the ENGINE API is); they are the supported way to plug a token key into
// the legacy EVP path until a PKCS#11 provider is in Debian, so the warning is silenced here.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "hsm/token_key.h"

#include <openssl/ec.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include <array>
#include <cstdlib>
#include <vector>

#include <cstring>
#include <mutex>
#include <string>

#include "dataplane/base/log.h"

namespace mailseal::hsm {
namespace {

thread_local uint64_t token_failures = 0;

// Binding: what a key's private operations run on — a session and the key's object handle
// (a worker's own key), or a SharedTokenKey that finds both for each operation.
struct Binding {
  Session* session;
  CK_OBJECT_HANDLE handle;
  SharedTokenKey* shared = nullptr;
};

int RsaIndex() {
  static int idx = RSA_get_ex_new_index(0, nullptr, nullptr, nullptr,
                                        [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
                                          delete static_cast<Binding*>(ptr);
                                        });
  return idx;
}
int EcIndex() {
  static int idx = EC_KEY_get_ex_new_index(0, nullptr, nullptr, nullptr,
                                           [](void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
                                             delete static_cast<Binding*>(ptr);
                                           });
  return idx;
}

// Op runs one single-part C_Sign or C_Decrypt. Failures are logged (OpenSSL's callbacks can
// only return -1) and leave an OpenSSL error for the caller's message.
int OpOn(Session* session, CK_OBJECT_HANDLE key, CK_MECHANISM_TYPE mech_type, bool sign, const unsigned char* in,
         size_t inlen, unsigned char* out, size_t outcap) {
  CK_FUNCTION_LIST* f = session->fn();
  CK_SESSION_HANDLE h = session->handle();
  CK_MECHANISM mech{mech_type, nullptr, 0};
  CK_RV rv = sign ? f->C_SignInit(h, &mech, key) : f->C_DecryptInit(h, &mech, key);
  CK_ULONG len = outcap;
  auto* pin = const_cast<CK_BYTE_PTR>(in);
  if (rv == CKR_OK) rv = sign ? f->C_Sign(h, pin, inlen, out, &len) : f->C_Decrypt(h, pin, inlen, out, &len);
  if (rv != CKR_OK) {
    ++token_failures;
    Status st = Check(rv, sign ? "C_Sign" : "C_Decrypt");
    base::Log(base::LogLevel::kWarning, "hsm", "token private-key operation failed", {{"error", st.message()}});
    ERR_raise_data(ERR_LIB_RSA, ERR_R_OPERATION_FAIL, "%s", st.message().c_str());
    return -1;
  }
  return static_cast<int>(len);
}

int Op(const Binding* b, CK_MECHANISM_TYPE mech_type, bool sign, const unsigned char* in, size_t inlen,
       unsigned char* out, size_t outcap) {
  if (b && b->shared) {
    int n = -1;
    Status st = b->shared->WithKey([&](Session* s, CK_OBJECT_HANDLE key) {
      n = OpOn(s, key, mech_type, sign, in, inlen, out, outcap);
    });
    if (!st.ok()) {
      ++token_failures;
      base::Log(base::LogLevel::kWarning, "hsm", "token key not usable",
                {{"label", b->shared->label()}, {"error", st.message()}});
      ERR_raise_data(ERR_LIB_RSA, ERR_R_OPERATION_FAIL, "%s", st.message().c_str());
    }
    return n;
  }
  if (!b || !b->session) {
    ++token_failures;
    return -1;
  }
  return OpOn(b->session, b->handle, mech_type, sign, in, inlen, out, outcap);
}

int RsaPrivEnc(int flen, const unsigned char* from, unsigned char* to, RSA* rsa, int padding) {
  // PKCS#1 v1.5 over a DigestInfo (RSA_sign without a method hook), or raw for PSS done above.
  CK_MECHANISM_TYPE m = padding == RSA_PKCS1_PADDING ? CKM_RSA_PKCS : padding == RSA_NO_PADDING ? CKM_RSA_X_509 : 0;
  if (!m) return -1;
  return Op(static_cast<Binding*>(RSA_get_ex_data(rsa, RsaIndex())), m, true, from, static_cast<size_t>(flen), to,
            static_cast<size_t>(RSA_size(rsa)));
}

// InputFits: a ciphertext the token can be asked about — exactly the modulus' length and below
// the modulus (RFC 8017 §5.1.2). Anything else is bad input from outside: it never reaches the
// token, so it never counts as (or causes) a token failure (issue #12).
bool InputFits(const unsigned char* from, int flen, const RSA* rsa) {
  if (flen != RSA_size(rsa)) return false;
  BIGNUM* c = BN_bin2bn(from, flen, nullptr);
  bool fits = c && BN_cmp(c, RSA_get0_n(rsa)) < 0;
  BN_free(c);
  return fits;
}

// SyntheticKey: what a PKCS#1 v1.5 key transport that does not decrypt yields instead of an
// error (implicit rejection, RFC 3218 §2.3 and the Marvin-attack countermeasure): a 32-byte
// value derived from the ciphertext under a per-process secret, so that the same damaged
// message always opens the same way and every kind of damage (padding, length, range) goes on
// to the same content-decryption failure — nothing tells padding from other damage.
int SyntheticKey(const unsigned char* from, int flen, unsigned char* to) {
  static const std::array<unsigned char, 32> secret = [] {
    std::array<unsigned char, 32> k{};
    if (RAND_bytes(k.data(), static_cast<int>(k.size())) != 1) std::abort();   // no randomness: a broken environment
    return k;
  }();
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), from, static_cast<size_t>(flen), to, &len);
  return static_cast<int>(len);
}

// Pkcs1Unpad: the message of an RSAES-PKCS1-v1_5 block (RFC 8017 §7.2.2), or the synthetic key
// when the padding is wrong. The checks run over the whole block without early exits.
int Pkcs1Unpad(const unsigned char* em, int k, const unsigned char* ciphertext, unsigned char* to) {
  unsigned good = (em[0] == 0) & (em[1] == 2);
  int zero_at = 0;
  unsigned found = 0;
  for (int i = 2; i < k; ++i) {
    unsigned is_zero = em[i] == 0;
    unsigned first = is_zero & (found ^ 1u);
    zero_at = first ? i : zero_at;
    found |= is_zero;
  }
  good &= found & (zero_at >= 10);   // at least 8 bytes of padding string
  int mlen = k - zero_at - 1;
  good &= mlen > 0;
  unsigned char synthetic[32];
  int slen = SyntheticKey(ciphertext, k, synthetic);
  if (!good) {
    std::memcpy(to, synthetic, static_cast<size_t>(slen));
    return slen;
  }
  std::memcpy(to, em + zero_at + 1, static_cast<size_t>(mlen));
  return mlen;
}

int RsaPrivDec(int flen, const unsigned char* from, unsigned char* to, RSA* rsa, int padding) {
  // PKCS#1 v1.5 key transport and OAEP both run as a raw RSA operation in the token; the
  // padding is checked here (v1.5, with implicit rejection) or by OpenSSL (OAEP). A damaged
  // encrypted key is thus bad input, never a token failure that would defer the message.
  if (padding != RSA_PKCS1_PADDING && padding != RSA_NO_PADDING) return -1;
  if (!InputFits(from, flen, rsa)) {
    if (padding == RSA_PKCS1_PADDING) return SyntheticKey(from, flen, to);
    ERR_raise_data(ERR_LIB_RSA, RSA_R_DATA_TOO_LARGE_FOR_MODULUS, "ciphertext does not fit the key");
    return -1;
  }
  int k = RSA_size(rsa);
  std::vector<unsigned char> em(static_cast<size_t>(k));
  int n = Op(static_cast<Binding*>(RSA_get_ex_data(rsa, RsaIndex())), CKM_RSA_X_509, false, from,
             static_cast<size_t>(flen), padding == RSA_PKCS1_PADDING ? em.data() : to, static_cast<size_t>(k));
  if (n < 0 || padding == RSA_NO_PADDING) return n;
  if (n > k) return -1;
  if (n < k) {   // some tokens drop the leading zero bytes of a raw result: put them back
    std::memmove(em.data() + (k - n), em.data(), static_cast<size_t>(n));
    std::memset(em.data(), 0, static_cast<size_t>(k - n));
  }
  int m = Pkcs1Unpad(em.data(), k, from, to);
  OPENSSL_cleanse(em.data(), em.size());
  return m;
}

const RSA_METHOD* TokenRsaMethod() {
  static RSA_METHOD* m = [] {
    RSA_METHOD* r = RSA_meth_dup(RSA_PKCS1_OpenSSL());
    RSA_meth_set1_name(r, "mailseal PKCS#11 session key");
    RSA_meth_set_priv_enc(r, RsaPrivEnc);
    RSA_meth_set_priv_dec(r, RsaPrivDec);
    return r;
  }();
  return m;
}

int EcSign(int, const unsigned char* dgst, int dlen, unsigned char* sig, unsigned int* siglen, const BIGNUM*,
           const BIGNUM*, EC_KEY* ec) {
  auto* b = static_cast<Binding*>(EC_KEY_get_ex_data(ec, EcIndex()));
  unsigned char raw[2 * 66];
  int n = Op(b, CKM_ECDSA, true, dgst, static_cast<size_t>(dlen), raw, sizeof raw);
  if (n <= 0 || n % 2) return 0;
  ECDSA_SIG* s = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(raw, n / 2, nullptr);
  BIGNUM* t = BN_bin2bn(raw + n / 2, n / 2, nullptr);
  ECDSA_SIG_set0(s, r, t);
  unsigned char* p = sig;
  int len = i2d_ECDSA_SIG(s, &p);
  ECDSA_SIG_free(s);
  if (len <= 0) return 0;
  *siglen = static_cast<unsigned int>(len);
  return 1;
}

ECDSA_SIG* EcSignSig(const unsigned char* dgst, int dlen, const BIGNUM*, const BIGNUM*, EC_KEY* ec) {
  unsigned char der[160];
  unsigned int len = 0;
  if (EcSign(0, dgst, dlen, der, &len, nullptr, nullptr, ec) != 1) return nullptr;
  const unsigned char* p = der;
  return d2i_ECDSA_SIG(nullptr, &p, len);
}

const EC_KEY_METHOD* TokenEcMethod() {
  static EC_KEY_METHOD* m = [] {
    EC_KEY_METHOD* e = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    EC_KEY_METHOD_set_sign(e, EcSign, nullptr, EcSignSig);
    return e;
  }();
  return m;
}

}  // namespace

uint64_t TokenFailuresOnThisThread() { return token_failures; }

namespace {
// BindPublic: an EVP_PKEY (caller frees) with `pub`'s public half whose private operations
// go through `b` (taken over); nothing on failure.
EVP_PKEY* BindPublic(EVP_PKEY* pub, Binding* b) {
  EVP_PKEY* out = EVP_PKEY_new();
  bool ok = false;
  if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_RSA) {
    RSA* rsa = EVP_PKEY_get1_RSA(pub);
    ok = rsa && RSA_set_method(rsa, TokenRsaMethod()) == 1 && RSA_set_ex_data(rsa, RsaIndex(), b) == 1 &&
         EVP_PKEY_assign_RSA(out, rsa) == 1;
    if (!ok && rsa && RSA_get_ex_data(rsa, RsaIndex()) == b) b = nullptr;   // the RSA's free deletes it
    if (!ok) RSA_free(rsa);
  } else if (EVP_PKEY_get_base_id(pub) == EVP_PKEY_EC) {
    EC_KEY* ec = EVP_PKEY_get1_EC_KEY(pub);
    ok = ec && EC_KEY_set_method(ec, TokenEcMethod()) == 1 && EC_KEY_set_ex_data(ec, EcIndex(), b) == 1 &&
         EVP_PKEY_assign_EC_KEY(out, ec) == 1;
    if (!ok && ec && EC_KEY_get_ex_data(ec, EcIndex()) == b) b = nullptr;
    if (!ok) EC_KEY_free(ec);
  }
  if (!ok) {
    delete b;
    EVP_PKEY_free(out);
    ERR_clear_error();
    return nullptr;
  }
  return out;
}
}  // namespace

Result<EVP_PKEY*> TokenPrivateKey(Session* session, const KeyPair& key) {
  Result<EVP_PKEY*> pub = PublicKey(*session, key.pub);
  if (!pub.ok()) return pub.status();
  EVP_PKEY* out = BindPublic(*pub, new Binding{session, key.priv});
  EVP_PKEY_free(*pub);
  if (!out) return InvalidArgumentError(StrCat("key '", key.label, "' is neither RSA nor EC, or cannot be bound"));
  return out;
}

Result<std::unique_ptr<SharedTokenKey>> SharedTokenKey::Create(TokenManager* token, std::string label,
                                                                EVP_PKEY* certificate_key) {
  if (!token) return FailedPreconditionError(StrCat("key '", label, "' is on the token, and no hsm is configured"));
  std::unique_ptr<SharedTokenKey> k(new SharedTokenKey());
  k->token_ = token;
  k->label_ = std::move(label);
  k->public_ = EVP_PKEY_dup(certificate_key);
  k->pkey_ = k->public_ ? BindPublic(k->public_, new Binding{nullptr, CK_INVALID_HANDLE, k.get()}) : nullptr;
  if (!k->pkey_) return InvalidArgumentError(StrCat("key '", k->label_, "': the certificate's key is neither RSA nor EC"));
  return k;
}

SharedTokenKey::~SharedTokenKey() {
  EVP_PKEY_free(pkey_);
  EVP_PKEY_free(public_);
}

Status SharedTokenKey::WithKey(const std::function<void(Session*, CK_OBJECT_HANDLE)>& fn) {
  std::shared_ptr<TokenHandle> h = token_->Handle();
  if (!h) return UnavailableError("security module unavailable");
  SessionPool::Lease lease = h->pool->Acquire();
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (generation_ == h->generation) key = priv_;
  }
  if (key == CK_INVALID_HANDLE) {
    // First use on this opening of the token: find the pair and make sure it is the
    // certificate's (a token re-keyed under the same label must not serve the old certificate).
    Result<KeyPair> kp = FindKeyPair(*lease, label_);
    if (!kp.ok()) return kp.status();
    Result<EVP_PKEY*> pub = PublicKey(*lease, kp->pub);
    if (!pub.ok()) return pub.status();
    bool same = EVP_PKEY_eq(*pub, public_) == 1;
    EVP_PKEY_free(*pub);
    ERR_clear_error();
    if (!same) return FailedPreconditionError(StrCat("token key '", label_, "' is not the certificate's key"));
    key = kp->priv;
    std::lock_guard<std::mutex> l(mu_);
    generation_ = h->generation;
    priv_ = key;
  }
  fn(&*lease, key);
  return OkStatus();
}

Status SharedTokenKey::Check() {
  return WithKey([](Session*, CK_OBJECT_HANDLE) {});
}

}  // namespace mailseal::hsm
