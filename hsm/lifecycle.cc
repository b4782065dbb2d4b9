// lifecycle.cc — see lifecycle.h. STANDARDS: RFC 5280 (path validation via OpenSSL, key
// usage, SAN), RFC 3183 §4 (names).
#include "hsm/lifecycle.h"
#include "dataplane/base/strings.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>
#include <set>

#include "hsm/csr.h"
#include "hsm/openssl_bridge.h"

namespace mailseal::hsm {
namespace {

int64_t Now(int64_t given) { return given ? given : static_cast<int64_t>(std::time(nullptr)); }

int64_t ToUnix(const ASN1_TIME* t) {
  std::tm tm{};
  ASN1_TIME_to_tm(t, &tm);
  return static_cast<int64_t>(timegm(&tm));
}

X509* ParsePem(const std::string& pem) {
  BIO* b = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  return x;
}

struct X509Deleter {
  void operator()(X509* x) const { X509_free(x); }
};
using X509Ptr = std::unique_ptr<X509, X509Deleter>;

Result<std::vector<CK_OBJECT_HANDLE>> ObjectsWithId(Session& s, const std::vector<uint8_t>& id, CK_OBJECT_CLASS* cls) {
  std::vector<CK_ATTRIBUTE> q = {{CKA_ID, const_cast<uint8_t*>(id.data()), id.size()}};
  if (cls) q.push_back({CKA_CLASS, cls, sizeof *cls});
  if (Status st = Check(s.fn()->C_FindObjectsInit(s.handle(), q.data(), q.size()), "C_FindObjectsInit"); !st.ok()) return st;
  std::vector<CK_OBJECT_HANDLE> out(32);
  CK_ULONG n = 0;
  Status st = Check(s.fn()->C_FindObjects(s.handle(), out.data(), out.size(), &n), "C_FindObjects");
  s.fn()->C_FindObjectsFinal(s.handle());
  if (!st.ok()) return st;
  out.resize(n);
  return out;
}

}  // namespace

Result<CK_OBJECT_HANDLE> InstallCertificate(Session& s, const InstallRequest& req) {
  const int64_t now = Now(req.now_unix_s);
  X509Ptr cert(ParsePem(req.cert_pem));
  if (!cert) return InvalidArgumentError("the certificate is not PEM X.509");
  Result<KeyPair> kp = FindKeyPair(s, req.key_label);
  if (!kp.ok()) return kp.status();
  // 1. It certifies our key.
  Result<EVP_PKEY*> pub = PublicKey(s, kp->pub);
  if (!pub.ok()) return pub.status();
  bool same = EVP_PKEY_eq(*pub, X509_get0_pubkey(cert.get())) == 1;
  EVP_PKEY_free(*pub);
  if (!same) return InvalidArgumentError(StrCat("the certificate is not for key '", req.key_label, "'"));
  // 2. Validity now, and at most 13 months long (SEE-2.3).
  int64_t nb = ToUnix(X509_get0_notBefore(cert.get())), na = ToUnix(X509_get0_notAfter(cert.get()));
  if (now < nb) return FailedPreconditionError("the certificate is not valid yet");
  if (now > na) return FailedPreconditionError("the certificate has expired");
  if (na - nb > kMaxCertLifetimeS)
    return FailedPreconditionError(StrCat("the certificate is valid for ", (na - nb) / kDay,
                                          " days; SEE-2.3 allows at most 13 months"));
  // 3. RFC 3183 names and key usage for domain keys.
  if (kp->purpose == Purpose::kDsaSign || kp->purpose == Purpose::kDcaEncrypt) {
    const char* authority = AuthorityName(kp->purpose);
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert.get()), NID_commonName, cn, sizeof cn);
    if (std::string(cn) != authority)
      return InvalidArgumentError(StrCat("the certificate's CN is '", cn, "', RFC 3183 wants '", authority, "'"));
    std::set<std::string> emails;
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert.get(), NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      if (g->type == GEN_EMAIL)
        emails.insert(base::AsciiLower(std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.rfc822Name)),
                                        static_cast<size_t>(ASN1_STRING_length(g->d.rfc822Name)))));
    }
    GENERAL_NAMES_free(sans);
    std::string missing;
    for (const std::string& d : req.domains) {
      std::string want = StrCat(authority, "@", base::AsciiLower(d));
      if (!emails.count(want)) missing += StrCat(missing.empty() ? "" : ", ", want);
    }
    if (!missing.empty()) return InvalidArgumentError(StrCat("the certificate does not name ", missing));
    uint32_t ku = X509_get_key_usage(cert.get());
    bool ok_ku = kp->purpose == Purpose::kDsaSign ? (ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION)) != 0
                                                  : (ku & (KU_KEY_ENCIPHERMENT | KU_KEY_AGREEMENT)) != 0;
    if (!ok_ku) return InvalidArgumentError("the certificate's key usage does not fit the key's purpose");
  }
  // 4. It chains to a trust anchor (at `now`).
  X509_STORE* store = X509_STORE_new();
  for (const std::string& a : req.anchors_pem) {
    X509Ptr x(ParsePem(a));
    if (!x) {
      X509_STORE_free(store);
      return InvalidArgumentError("a trust anchor is not PEM X.509");
    }
    X509_STORE_add_cert(store, x.get());
  }
  STACK_OF(X509)* chain = sk_X509_new_null();
  std::vector<X509Ptr> keep;
  for (const std::string& c : req.chain_pem) {
    keep.emplace_back(ParsePem(c));
    if (keep.back()) sk_X509_push(chain, keep.back().get());
  }
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  X509_STORE_CTX_init(ctx, store, cert.get(), chain);
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), static_cast<time_t>(now));
  int verified = X509_verify_cert(ctx);
  std::string why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
  X509_STORE_CTX_free(ctx);
  sk_X509_free(chain);
  X509_STORE_free(store);
  if (verified != 1) return FailedPreconditionError(StrCat("the certificate does not chain to a trust anchor: ", why));
  // 5. Store it beside the key; a previous certificate of the same key is replaced.
  CK_OBJECT_CLASS cert_class = CKO_CERTIFICATE;
  Result<std::vector<CK_OBJECT_HANDLE>> old = ObjectsWithId(s, kp->id, &cert_class);
  if (!old.ok()) return old.status();
  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert.get(), &der);
  unsigned char* subj = nullptr;
  int subj_len = i2d_X509_NAME(X509_get_subject_name(cert.get()), &subj);
  CK_CERTIFICATE_TYPE ct = CKC_X_509;
  CK_BBOOL t = CK_TRUE, f = CK_FALSE;
  CK_ATTRIBUTE a[] = {{CKA_CLASS, &cert_class, sizeof cert_class},
                      {CKA_CERTIFICATE_TYPE, &ct, sizeof ct},
                      {CKA_TOKEN, &t, sizeof t},
                      {CKA_PRIVATE, &f, sizeof f},
                      {CKA_LABEL, const_cast<char*>(req.key_label.data()), req.key_label.size()},
                      {CKA_ID, kp->id.data(), kp->id.size()},
                      {CKA_SUBJECT, subj, static_cast<CK_ULONG>(subj_len)},
                      {CKA_VALUE, der, static_cast<CK_ULONG>(der_len)}};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  Status st = Check(s.fn()->C_CreateObject(s.handle(), a, sizeof a / sizeof a[0], &h), "C_CreateObject(certificate)");
  OPENSSL_free(der);
  OPENSSL_free(subj);
  if (!st.ok()) return st;
  for (CK_OBJECT_HANDLE o : *old) s.fn()->C_DestroyObject(s.handle(), o);
  return h;
}

Result<int64_t> KeyAgeSeconds(Session& s, const KeyPair& key, int64_t now_unix_s) {
  // Read from the public object: SoftHSM 2.6 fails to return dates of private objects
  // (CKR_GENERAL_ERROR); both halves carry the same date.
  Result<std::string> d = Attribute(s, key.pub, CKA_START_DATE);
  if (!d.ok()) return d.status();
  if (d->size() != 8) return FailedPreconditionError(StrCat("key '", key.label, "' has no creation date (CKA_START_DATE)"));
  std::tm tm{};
  tm.tm_year = std::stoi(d->substr(0, 4)) - 1900;
  tm.tm_mon = std::stoi(d->substr(4, 2)) - 1;
  tm.tm_mday = std::stoi(d->substr(6, 2));
  return Now(now_unix_s) - static_cast<int64_t>(timegm(&tm));
}

Status CheckMayRecertify(Session& s, const KeyPair& key, int64_t now_unix_s) {
  Result<int64_t> age = KeyAgeSeconds(s, key, now_unix_s);
  if (!age.ok()) return age.status();
  if (*age > kKeyRecertifyLimitS)
    return FailedPreconditionError(StrCat("key '", key.label, "' is ", *age / kDay,
                                          " days old; SEE-2.3: a key pair is replaced after 4 years, not re-certified"));
  return OkStatus();
}

Status CheckMaySign(Session& s, const KeyPair& key, int64_t now_unix_s) {
  Result<int64_t> age = KeyAgeSeconds(s, key, now_unix_s);
  if (!age.ok()) return age.status();
  if (*age > kKeyUseLimitS)
    return FailedPreconditionError(StrCat("key '", key.label, "' is ", *age / kDay,
                                          " days old; SEE-2.3: a key older than 5 years may not sign"));
  return OkStatus();
}

int ExpiryWarning(int64_t not_after, int64_t now) {
  if (now > not_after) return -1;
  int64_t left = not_after - now;
  for (int days : {1, 7, 14, 30})
    if (left <= days * kDay) return days;
  return 0;
}

Result<std::vector<KeyInfo>> ListKeys(Session& s) {
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  CK_ATTRIBUTE q{CKA_CLASS, &cls, sizeof cls};
  if (Status st = Check(s.fn()->C_FindObjectsInit(s.handle(), &q, 1), "C_FindObjectsInit"); !st.ok()) return st;
  std::vector<CK_OBJECT_HANDLE> privs(256);
  CK_ULONG n = 0;
  Status st = Check(s.fn()->C_FindObjects(s.handle(), privs.data(), privs.size(), &n), "C_FindObjects");
  s.fn()->C_FindObjectsFinal(s.handle());
  if (!st.ok()) return st;
  privs.resize(n);
  std::vector<KeyInfo> out;
  for (CK_OBJECT_HANDLE h : privs) {
    Result<std::string> label = Attribute(s, h, CKA_LABEL);
    Result<KeyPair> kp = label.ok() ? FindKeyPair(s, *label) : Result<KeyPair>(label.status());
    if (!kp.ok()) continue;   // a key without its public half is not one of ours
    KeyInfo k;
    k.label = kp->label;
    k.purpose = kp->purpose;
    static const char* d = "0123456789abcdef";
    for (uint8_t b : kp->id) k.id_hex += {d[b >> 4], d[b & 15]};
    Result<int64_t> age = KeyAgeSeconds(s, *kp);
    if (age.ok()) k.created_unix_s = static_cast<int64_t>(std::time(nullptr)) - *age;
    Result<EVP_PKEY*> pub = PublicKey(s, kp->pub);
    if (pub.ok()) {
      k.key_type = EVP_PKEY_base_id(*pub) == EVP_PKEY_EC ? StrCat("ec:", EVP_PKEY_get_bits(*pub) == 384 ? "P-384" : "P-256")
                                                          : StrCat("rsa:", EVP_PKEY_get_bits(*pub));
      EVP_PKEY_free(*pub);
    }
    if (Result<std::string> der = StoredCertificate(s, *kp); der.ok()) {
      const unsigned char* p = reinterpret_cast<const unsigned char*>(der->data());
      X509Ptr x(d2i_X509(nullptr, &p, static_cast<long>(der->size())));
      if (x) {
        char buf[512];
        X509_NAME_oneline(X509_get_subject_name(x.get()), buf, sizeof buf);
        k.cert_subject = buf;
        k.cert_not_after_unix_s = ToUnix(X509_get0_notAfter(x.get()));
      }
    }
    out.push_back(std::move(k));
  }
  std::sort(out.begin(), out.end(), [](const KeyInfo& a, const KeyInfo& b) { return a.label < b.label; });
  return out;
}

Result<std::string> StoredCertificate(Session& s, const KeyPair& key) {
  CK_OBJECT_CLASS cert_class = CKO_CERTIFICATE;
  Result<std::vector<CK_OBJECT_HANDLE>> certs = ObjectsWithId(s, key.id, &cert_class);
  if (!certs.ok()) return certs.status();
  if (certs->empty()) return NotFoundError(StrCat("no certificate installed for key '", key.label, "'"));
  return Attribute(s, (*certs)[0], CKA_VALUE);
}

Status DestroyKeyPair(Session& s, const KeyPair& key) {
  Result<std::vector<CK_OBJECT_HANDLE>> objs = ObjectsWithId(s, key.id, nullptr);
  if (!objs.ok()) return objs.status();
  if (objs->empty()) return NotFoundError(StrCat("no objects for key '", key.label, "'"));
  for (CK_OBJECT_HANDLE o : *objs)
    if (Status st = Check(s.fn()->C_DestroyObject(s.handle(), o), "C_DestroyObject"); !st.ok()) return st;
  return OkStatus();
}

void KeyRing::Activate(Purpose purpose, const std::string& label, int64_t now, int64_t overlap_s) {
  std::string& slot = purpose == Purpose::kDcaEncrypt ? active_dca : active_dsa;
  if (!slot.empty() && slot != label) {
    // A retired DSA key is never used again; a retired DCA key keeps opening mail in flight.
    retired.push_back({slot, purpose == Purpose::kDcaEncrypt ? now + overlap_s : now, false});
  }
  slot = label;
}

std::vector<std::string> KeyRing::DecryptCandidates(int64_t now) const {
  std::vector<std::string> out;
  if (!active_dca.empty()) out.push_back(active_dca);
  for (auto it = retired.rbegin(); it != retired.rend(); ++it)
    if (now <= it->decrypt_until_unix_s && it->label != active_dca) out.push_back(it->label);
  return out;
}

std::vector<std::string> KeyRing::ExpiredRetirees(int64_t now) const {
  std::vector<std::string> out;
  for (const RetiredKey& r : retired)
    if (now > r.decrypt_until_unix_s) out.push_back(r.label);
  return out;
}

void KeyRing::MarkCompromised(const std::string& label, int64_t now, int64_t in_flight_s) {
  if (active_dsa == label) active_dsa.clear();
  bool was_dca = active_dca == label;
  if (was_dca) active_dca.clear();
  for (RetiredKey& r : retired) {
    if (r.label == label) {
      r.compromised = true;
      r.decrypt_until_unix_s = std::min(r.decrypt_until_unix_s, now + in_flight_s);
      return;
    }
  }
  retired.push_back({label, was_dca ? now + in_flight_s : now, true});
}

Result<Replacement> BeginCompromiseRecovery(Session& s, OpenSslBridge& bridge, const std::string& token_label,
                                            KeyRing& ring, const std::string& compromised_label,
                                            const KeyPairSpec& new_key, const CsrRequest& csr,
                                            int64_t now_unix_s, int64_t in_flight_s) {
  if (!FindKeyPair(s, compromised_label).ok())
    return NotFoundError(StrCat("no key '", compromised_label, "' to retire"));
  ring.MarkCompromised(compromised_label, Now(now_unix_s), in_flight_s);
  Result<KeyPair> kp = GenerateKeyPair(s, new_key);
  if (!kp.ok()) return kp.status();
  Result<EVP_PKEY*> priv = bridge.LoadPrivateKey(token_label, new_key.label);
  if (!priv.ok()) return priv.status();
  Result<std::string> pem = BuildCsrPem(*priv, csr);
  EVP_PKEY_free(*priv);
  if (!pem.ok()) return pem.status();
  return Replacement{*kp, *pem};
}

}  // namespace mailseal::hsm
