// backup.cc — see backup.h. STANDARDS: RFC 5652/5083 (CMS, AuthEnvelopedData), RFC 5649.
#include "hsm/backup.h"
#include "dataplane/base/sha256_sign.h"

#include "dataplane/base/openssl_error.h"

#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <chrono>
#include <cstring>
#include <memory>

#include "hsm/shamir.h"

namespace mailseal::hsm {
namespace {
using mailseal::v1::KeyBackup;
using mailseal::v1::KeyShare;

constexpr char kCheckLabel[] = "mailseal key backup check v1";


std::string KekCheck(const Secret& kek) {
  unsigned char mac[32];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kek.Reveal().data(), static_cast<int>(kek.Reveal().size()),
       reinterpret_cast<const unsigned char*>(kCheckLabel), sizeof kCheckLabel - 1, mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

// A session AES key holding the KEK; destroyed when this goes out of scope.
class SessionKek {
 public:
  static Result<std::unique_ptr<SessionKek>> Import(Session& s, const Secret& kek) {
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE kt = CKK_AES;
    CK_BBOOL t = CK_TRUE, f = CK_FALSE;
    std::string v(kek.Reveal());
    CK_ATTRIBUTE a[] = {{CKA_CLASS, &cls, sizeof cls},        {CKA_KEY_TYPE, &kt, sizeof kt},
                        {CKA_TOKEN, &f, sizeof f},            {CKA_PRIVATE, &t, sizeof t},
                        {CKA_SENSITIVE, &t, sizeof t},        {CKA_EXTRACTABLE, &f, sizeof f},
                        {CKA_WRAP, &t, sizeof t},             {CKA_UNWRAP, &t, sizeof t},
                        {CKA_VALUE, v.data(), v.size()}};
    CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
    Status st = Check(s.fn()->C_CreateObject(s.handle(), a, sizeof a / sizeof a[0], &h), "C_CreateObject(backup KEK)");
    OPENSSL_cleanse(v.data(), v.size());
    if (!st.ok()) return st;
    return std::unique_ptr<SessionKek>(new SessionKek(s, h));
  }
  ~SessionKek() { s_.fn()->C_DestroyObject(s_.handle(), h_); }
  CK_OBJECT_HANDLE handle() const { return h_; }

 private:
  SessionKek(Session& s, CK_OBJECT_HANDLE h) : s_(s), h_(h) {}
  Session& s_;
  CK_OBJECT_HANDLE h_;
};

Result<std::string> PublicDer(Session& s, CK_OBJECT_HANDLE pub) {
  Result<EVP_PKEY*> k = PublicKey(s, pub);
  if (!k.ok()) return k.status();
  unsigned char* der = nullptr;
  int n = i2d_PUBKEY(*k, &der);
  EVP_PKEY_free(*k);
  if (n <= 0) return InternalError("public key encoding failed");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n));
  OPENSSL_free(der);
  return out;
}

// Creates the public-key object for a restored key from its SubjectPublicKeyInfo.
Result<CK_OBJECT_HANDLE> CreatePublicObject(Session& s, EVP_PKEY* pk, const std::string& label,
                                            const std::string& id) {
  CK_OBJECT_CLASS cls = CKO_PUBLIC_KEY;
  CK_BBOOL t = CK_TRUE, f = CK_FALSE;
  CK_KEY_TYPE kt;
  std::vector<CK_ATTRIBUTE> a = {{CKA_CLASS, &cls, sizeof cls},
                                 {CKA_TOKEN, &t, sizeof t},
                                 {CKA_PRIVATE, &f, sizeof f},
                                 {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
                                 {CKA_ID, const_cast<char*>(id.data()), id.size()}};
  std::string n, e, params, point;
  if (EVP_PKEY_is_a(pk, "RSA")) {
    kt = CKK_RSA;
    BIGNUM *bn_n = nullptr, *bn_e = nullptr;
    EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_N, &bn_n);
    EVP_PKEY_get_bn_param(pk, OSSL_PKEY_PARAM_RSA_E, &bn_e);
    n.resize(static_cast<size_t>(BN_num_bytes(bn_n)));
    e.resize(static_cast<size_t>(BN_num_bytes(bn_e)));
    BN_bn2bin(bn_n, reinterpret_cast<unsigned char*>(n.data()));
    BN_bn2bin(bn_e, reinterpret_cast<unsigned char*>(e.data()));
    BN_free(bn_n);
    BN_free(bn_e);
    a.push_back({CKA_MODULUS, n.data(), n.size()});
    a.push_back({CKA_PUBLIC_EXPONENT, e.data(), e.size()});
  } else if (EVP_PKEY_is_a(pk, "EC")) {
    kt = CKK_EC;
    char group[64] = {};
    size_t glen = 0;
    EVP_PKEY_get_utf8_string_param(pk, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group, &glen);
    ASN1_OBJECT* oid = OBJ_txt2obj(std::strcmp(group, "prime256v1") == 0 || std::strcmp(group, "P-256") == 0
                                       ? "1.2.840.10045.3.1.7" : "1.3.132.0.34", 1);
    unsigned char* der = nullptr;
    int len = i2d_ASN1_OBJECT(oid, &der);
    params.assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    ASN1_OBJECT_free(oid);
    unsigned char raw[200];
    size_t rlen = 0;
    EVP_PKEY_get_octet_string_param(pk, OSSL_PKEY_PARAM_PUB_KEY, raw, sizeof raw, &rlen);
    ASN1_OCTET_STRING* os = ASN1_OCTET_STRING_new();
    ASN1_OCTET_STRING_set(os, raw, static_cast<int>(rlen));
    der = nullptr;
    len = i2d_ASN1_OCTET_STRING(os, &der);
    point.assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    ASN1_OCTET_STRING_free(os);
    a.push_back({CKA_EC_PARAMS, params.data(), params.size()});
    a.push_back({CKA_EC_POINT, point.data(), point.size()});
  } else {
    return InvalidArgumentError("backed-up public key of unsupported type");
  }
  a.push_back({CKA_KEY_TYPE, &kt, sizeof kt});
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (Status st = Check(s.fn()->C_CreateObject(s.handle(), a.data(), a.size(), &h), "C_CreateObject(public key)"); !st.ok())
    return st;
  return h;
}

}  // namespace

Result<BackupBundle> CreateBackup(Session& s, const std::string& token_label, const std::vector<std::string>& key_labels,
                                  const std::vector<Custodian>& custodians, unsigned threshold) {
  if (key_labels.empty()) return InvalidArgumentError("nothing to back up");
  if (custodians.size() < 2 || threshold < 2 || threshold > custodians.size())
    return InvalidArgumentError(StrCat("a backup needs 2 <= M <= N custodians (M=", threshold, ", N=", custodians.size(), ")"));
  // Every custodian certificate must parse before anything touches the token.
  std::vector<X509*> certs;
  auto free_certs = [&] {
    for (X509* c : certs) X509_free(c);
  };
  for (const Custodian& c : custodians) {
    BIO* b = BIO_new_mem_buf(c.cert_pem.data(), static_cast<int>(c.cert_pem.size()));
    X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
    BIO_free(b);
    if (!x) {
      free_certs();
      return InvalidArgumentError(StrCat("custodian ", c.name, ": unreadable certificate"));
    }
    certs.push_back(x);
  }
  std::string kek_bytes(32, '\0');
  if (RAND_priv_bytes(reinterpret_cast<unsigned char*>(kek_bytes.data()), 32) != 1) {
    free_certs();
    return InternalError("no randomness for the backup key");
  }
  Secret kek(std::move(kek_bytes));
  BackupBundle out;
  KeyBackup& b = out.backup;
  b.set_version(1);
  unsigned char idb[12];
  RAND_bytes(idb, sizeof idb);
  static const char kHex[] = "0123456789abcdef";
  std::string id;
  for (unsigned char c : idb) id += {kHex[c >> 4], kHex[c & 15]};
  b.set_backup_id(id);
  b.set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch()).count());
  b.set_threshold(threshold);
  b.set_share_count(static_cast<uint32_t>(custodians.size()));
  b.set_kek_check(KekCheck(kek));
  b.set_source_token(token_label);
  {
    Result<std::unique_ptr<SessionKek>> sk = SessionKek::Import(s, kek);
    if (!sk.ok()) {
      free_certs();
      return sk.status();
    }
    for (const std::string& label : key_labels) {
      Result<KeyPair> kp = FindKeyPair(s, label);
      Result<std::string> wrapped = kp.ok() ? WrapKey(s, (*sk)->handle(), kp->priv) : Result<std::string>(kp.status());
      Result<std::string> pub = kp.ok() ? PublicDer(s, kp->pub) : Result<std::string>(kp.status());
      if (!wrapped.ok() || !pub.ok()) {
        free_certs();
        const Status& why = !wrapped.ok() ? wrapped.status() : pub.status();
        return Status(why.code(), StrCat("key '", label, "': ", why.message()));
      }
      auto* w = b.add_keys();
      w->set_label(label);
      w->set_id(std::string(kp->id.begin(), kp->id.end()));
      w->set_wrapped(*wrapped);
      w->set_public_key_der(*pub);
      Result<std::string> kt = Attribute(s, kp->priv, CKA_KEY_TYPE);
      CK_KEY_TYPE t = 0;
      if (kt.ok()) std::memcpy(&t, kt->data(), std::min(kt->size(), sizeof t));
      w->set_key_type(t == CKK_EC ? "ec" : "rsa");
    }
  }  // the KEK object is destroyed on the token here
  Result<std::vector<Share>> shares = Split(kek, threshold, static_cast<unsigned>(custodians.size()));
  kek.Wipe();
  if (!shares.ok()) {
    free_certs();
    return shares.status();
  }
  for (size_t i = 0; i < custodians.size(); ++i) {
    b.add_custodians(custodians[i].name);
    KeyShare ks;
    ks.set_backup_id(b.backup_id());
    ks.set_x((*shares)[i].x);
    ks.set_threshold(threshold);
    ks.set_y((*shares)[i].y);
    ks.set_custodian(custodians[i].name);
    std::string plain;
    ks.SerializeToString(&plain);
    OPENSSL_cleanse((*shares)[i].y.data(), (*shares)[i].y.size());
    STACK_OF(X509)* recips = sk_X509_new_null();
    sk_X509_push(recips, certs[i]);
    BIO* in = BIO_new_mem_buf(plain.data(), static_cast<int>(plain.size()));
    CMS_ContentInfo* cms = CMS_encrypt(recips, in, EVP_aes_256_gcm(), CMS_BINARY);
    BIO_free(in);
    OPENSSL_cleanse(plain.data(), plain.size());
    sk_X509_free(recips);
    if (!cms) {
      free_certs();
      return InternalError(base::OpenSslError(StrCat("encrypting the share for ", custodians[i].name)));
    }
    unsigned char* der = nullptr;
    int n = i2d_CMS_ContentInfo(cms, &der);
    CMS_ContentInfo_free(cms);
    out.share_files.emplace_back(reinterpret_cast<char*>(der), static_cast<size_t>(n));
    OPENSSL_free(der);
  }
  free_certs();
  return out;
}

Result<KeyShare> OpenShareFile(const std::string& cms_der, EVP_PKEY* key, const std::string& cert_pem) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(cms_der.data());
  CMS_ContentInfo* cms = d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(cms_der.size()));
  if (!cms) return InvalidArgumentError(base::OpenSslError("share file is not CMS"));
  BIO* cb = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* cert = PEM_read_bio_X509(cb, nullptr, nullptr, nullptr);
  BIO_free(cb);
  BIO* out = BIO_new(BIO_s_mem());
  bool ok = cert && CMS_decrypt(cms, key, cert, nullptr, out, CMS_BINARY) == 1;
  Status err = ok ? OkStatus() : Status(StatusCode::kPermissionDenied, base::OpenSslError("this share is not for this custodian key"));
  X509_free(cert);
  CMS_ContentInfo_free(cms);
  KeyShare ks;
  if (ok) {
    char* data = nullptr;
    long n = BIO_get_mem_data(out, &data);
    ok = ks.ParseFromArray(data, static_cast<int>(n));
    OPENSSL_cleanse(data, static_cast<size_t>(n));
    if (!ok) err = InvalidArgumentError("share file content is not a key share");
  }
  BIO_free(out);
  if (!ok) return err;
  return ks;
}

Result<std::vector<KeyPair>> RestoreBackup(Session& s, const KeyBackup& b, const std::vector<KeyShare>& shares) {
  if (b.version() != 1) return InvalidArgumentError(StrCat("unknown backup version ", b.version()));
  std::vector<Share> parts;
  for (const KeyShare& ks : shares) {
    if (ks.backup_id() != b.backup_id())
      return InvalidArgumentError(StrCat("share ", ks.x(), " (", ks.custodian(), ") belongs to another backup"));
    if (ks.x() == 0 || ks.x() > b.share_count()) return InvalidArgumentError(StrCat("share number ", ks.x(), " out of range"));
    parts.push_back({static_cast<uint8_t>(ks.x()), ks.y()});
  }
  Result<Secret> kek = Combine(parts, b.threshold());
  for (Share& p : parts) OPENSSL_cleanse(p.y.data(), p.y.size());
  if (!kek.ok()) return kek.status();
  if (KekCheck(*kek) != b.kek_check())
    return Status(StatusCode::kPermissionDenied,
                  "the shares do not rebuild the backup key (a share is wrong or altered)");
  Result<std::unique_ptr<SessionKek>> sk = SessionKek::Import(s, *kek);
  kek->Wipe();
  if (!sk.ok()) return sk.status();
  std::vector<KeyPair> restored;
  auto undo = [&](Status why) -> Result<std::vector<KeyPair>> {
    for (const KeyPair& k : restored) {
      s.fn()->C_DestroyObject(s.handle(), k.priv);
      s.fn()->C_DestroyObject(s.handle(), k.pub);
    }
    return why;
  };
  for (const auto& w : b.keys()) {
    if (FindKeyPair(s, w.label()).ok())
      return undo(Status(StatusCode::kAlreadyExists, StrCat("key '", w.label(), "' already exists on the target token")));
    if (w.id().empty()) return undo(InvalidArgumentError(StrCat("key '", w.label(), "' has no id")));
    Purpose purpose = static_cast<Purpose>(static_cast<uint8_t>(w.id()[0]));
    std::vector<uint8_t> id(w.id().begin(), w.id().end());
    Result<CK_OBJECT_HANDLE> priv =
        UnwrapPrivateKey(s, (*sk)->handle(), w.wrapped(), w.key_type() == "ec" ? CKK_EC : CKK_RSA, w.label(), id, purpose);
    if (!priv.ok()) return undo(Status(priv.status().code(), StrCat("key '", w.label(), "': ", priv.status().message())));
    const unsigned char* p = reinterpret_cast<const unsigned char*>(w.public_key_der().data());
    EVP_PKEY* pk = d2i_PUBKEY(nullptr, &p, static_cast<long>(w.public_key_der().size()));
    if (!pk) {
      s.fn()->C_DestroyObject(s.handle(), *priv);
      return undo(InvalidArgumentError(StrCat("key '", w.label(), "': unreadable public key")));
    }
    Result<CK_OBJECT_HANDLE> pub = CreatePublicObject(s, pk, w.label(), w.id());
    KeyPair kp{*priv, pub.ok() ? *pub : CK_INVALID_HANDLE, w.label(), id, purpose};
    if (!pub.ok()) {
      EVP_PKEY_free(pk);
      s.fn()->C_DestroyObject(s.handle(), *priv);
      return undo(pub.status());
    }
    restored.push_back(kp);
    // Prove the pair: a signature (or, for decryption-only keys, a decryption) must check.
    bool proved = true;
    if (purpose == Purpose::kDsaSign || purpose == Purpose::kAudit || purpose == Purpose::kTls) {
      bool ec = w.key_type() == "ec";
      Result<std::string> sig = Sign(s, *priv, ec ? SignMechanism::kEcdsaSha256 : SignMechanism::kRsaPkcs1Sha256, b.backup_id());
      proved = sig.ok() && base::Sha256Verify(pk, b.backup_id(), *sig);
    }
    EVP_PKEY_free(pk);
    if (!proved) return undo(DataLossError(StrCat("key '", w.label(), "' does not match its backed-up public key")));
  }
  return restored;
}

}  // namespace mailseal::hsm
