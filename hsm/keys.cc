// keys.cc — see keys.h.
#include "hsm/keys.h"

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <cstring>
#include <memory>

namespace mailseal::hsm {
namespace {

constexpr CK_MECHANISM_TYPE kAesKeyWrapPadSoftHsm = 0x210A;  // see keys.h

// DER of the named curves' OIDs (CKA_EC_PARAMS).
const unsigned char kP256[] = {0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
const unsigned char kP384[] = {0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22};

struct Attr {
  std::vector<CK_ATTRIBUTE> list;
  std::vector<std::unique_ptr<CK_BBOOL>> bools;
  std::vector<std::unique_ptr<CK_ULONG>> ulongs;
  void Bool(CK_ATTRIBUTE_TYPE t, bool v) {
    bools.push_back(std::make_unique<CK_BBOOL>(v ? CK_TRUE : CK_FALSE));
    list.push_back({t, bools.back().get(), sizeof(CK_BBOOL)});
  }
  void Ulong(CK_ATTRIBUTE_TYPE t, CK_ULONG v) {
    ulongs.push_back(std::make_unique<CK_ULONG>(v));
    list.push_back({t, ulongs.back().get(), sizeof(CK_ULONG)});
  }
  void Bytes(CK_ATTRIBUTE_TYPE t, const void* p, size_t n) {
    list.push_back({t, const_cast<void*>(p), static_cast<CK_ULONG>(n)});
  }
  CK_ATTRIBUTE* data() { return list.data(); }
  CK_ULONG size() const { return static_cast<CK_ULONG>(list.size()); }
};

// A token object that is ours and stays inside the token: label and id tie it to its
// purpose; private, sensitive and never extractable.
void StoredAndProtected(Attr* a, const std::string& label, const std::vector<uint8_t>& id) {
  a->Bytes(CKA_LABEL, label.data(), label.size());
  a->Bytes(CKA_ID, id.data(), id.size());
  a->Bool(CKA_TOKEN, true);
  a->Bool(CKA_PRIVATE, true);
  a->Bool(CKA_SENSITIVE, true);
  a->Bool(CKA_EXTRACTABLE, false);
}

bool IsRsa(KeyType t) { return t == KeyType::kRsa2048 || t == KeyType::kRsa3072 || t == KeyType::kRsa4096; }

CK_ULONG RsaBits(KeyType t) {
  switch (t) {
    case KeyType::kRsa3072: return 3072;
    case KeyType::kRsa4096: return 4096;
    default: return 2048;
  }
}

// What each purpose may do: signing keys sign, DCA keys decrypt/unwrap. A DCA key may also
// sign, because its PKCS#10 request must be signed by the key itself (proof of possession);
// mailseal never signs mail with it (KeyRing hands out only the DSA key for that).
void Usage(Attr* priv, Attr* pub, Purpose p) {
  bool sign = p == Purpose::kDsaSign || p == Purpose::kTls || p == Purpose::kAudit || p == Purpose::kDcaEncrypt;
  bool decrypt = p == Purpose::kDcaEncrypt || p == Purpose::kTls;
  priv->Bool(CKA_SIGN, sign);
  priv->Bool(CKA_DECRYPT, decrypt);
  priv->Bool(CKA_UNWRAP, decrypt);
  pub->Bool(CKA_VERIFY, sign);
  pub->Bool(CKA_ENCRYPT, decrypt);
  pub->Bool(CKA_WRAP, decrypt);
}

Result<std::vector<CK_OBJECT_HANDLE>> FindObjects(Session& s, Attr& query, size_t max = 16) {
  CK_FUNCTION_LIST* f = s.fn();
  if (Status st = Check(f->C_FindObjectsInit(s.handle(), query.data(), query.size()), "C_FindObjectsInit"); !st.ok())
    return st;
  std::vector<CK_OBJECT_HANDLE> out(max);
  CK_ULONG n = 0;
  Status st = Check(f->C_FindObjects(s.handle(), out.data(), max, &n), "C_FindObjects");
  f->C_FindObjectsFinal(s.handle());
  if (!st.ok()) return st;
  out.resize(n);
  return out;
}

CK_MECHANISM_TYPE SignMech(SignMechanism m) {
  switch (m) {
    case SignMechanism::kRsaPkcs1Sha256:
    case SignMechanism::kRsaPkcs1Sha384: return CKM_RSA_PKCS;
    case SignMechanism::kRsaPssSha256: return CKM_RSA_PKCS_PSS;
    case SignMechanism::kEcdsaSha256:
    case SignMechanism::kEcdsaSha384: return CKM_ECDSA;
  }
  return CKM_RSA_PKCS;
}

const char* SignMechName(SignMechanism m) {
  switch (m) {
    case SignMechanism::kRsaPkcs1Sha256:
    case SignMechanism::kRsaPkcs1Sha384: return "C_Sign(CKM_RSA_PKCS)";
    case SignMechanism::kRsaPssSha256: return "C_Sign(CKM_RSA_PKCS_PSS)";
    default: return "C_Sign(CKM_ECDSA)";
  }
}

bool Is384(SignMechanism m) { return m == SignMechanism::kRsaPkcs1Sha384 || m == SignMechanism::kEcdsaSha384; }

// DigestInfo prefixes for PKCS#1 v1.5 (RFC 8017 §9.2 note 1).
const unsigned char kSha256Prefix[] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                                       0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
const unsigned char kSha384Prefix[] = {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                                       0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30};

// ECDSA from PKCS#11 is r||s; CMS and X.509 want DER SEQUENCE { r, s }.
Result<std::string> EcdsaRawToDer(const std::string& raw) {
  if (raw.empty() || raw.size() % 2) return InternalError("ECDSA signature of odd length");
  size_t half = raw.size() / 2;
  ECDSA_SIG* sig = ECDSA_SIG_new();
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), static_cast<int>(half), nullptr);
  BIGNUM* sv = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()) + half, static_cast<int>(half), nullptr);
  ECDSA_SIG_set0(sig, r, sv);
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig, &der);
  ECDSA_SIG_free(sig);
  if (len <= 0) return InternalError("ECDSA signature encoding failed");
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

}  // namespace

const char* PurposeName(Purpose p) {
  switch (p) {
    case Purpose::kDsaSign: return "dsa-sign";
    case Purpose::kDcaEncrypt: return "dca-encrypt";
    case Purpose::kTls: return "tls";
    case Purpose::kAudit: return "audit";
    case Purpose::kSpool: return "spool";
    case Purpose::kArchive: return "archive";
    case Purpose::kBackup: return "backup";
  }
  return "?";
}

const char* KeyTypeName(KeyType t) {
  switch (t) {
    case KeyType::kRsa2048: return "rsa:2048";
    case KeyType::kRsa3072: return "rsa:3072";
    case KeyType::kRsa4096: return "rsa:4096";
    case KeyType::kEcP256: return "ec:P-256";
    case KeyType::kEcP384: return "ec:P-384";
  }
  return "?";
}

Result<KeyPair> GenerateKeyPair(Session& s, const KeyPairSpec& spec) {
  if (spec.label.empty() || spec.label.size() > 64) return InvalidArgumentError("key label must be 1..64 characters");
  if (FindKeyPair(s, spec.label).ok())
    return Status(StatusCode::kAlreadyExists, StrCat("a key labelled '", spec.label, "' exists on the token"));
  KeyPair kp;
  kp.label = spec.label;
  kp.purpose = spec.purpose;
  kp.id.resize(9);
  kp.id[0] = static_cast<uint8_t>(spec.purpose);
  if (RAND_bytes(kp.id.data() + 1, 8) != 1) return InternalError("RAND_bytes failed");

  Attr pub, priv;
  CK_OBJECT_CLASS pub_class = CKO_PUBLIC_KEY, priv_class = CKO_PRIVATE_KEY;
  pub.Bytes(CKA_CLASS, &pub_class, sizeof pub_class);
  priv.Bytes(CKA_CLASS, &priv_class, sizeof priv_class);
  for (Attr* a : {&pub, &priv}) {
    a->Bool(CKA_TOKEN, true);
    a->Bytes(CKA_LABEL, spec.label.data(), spec.label.size());
    a->Bytes(CKA_ID, kp.id.data(), kp.id.size());
  }
  // CKA_START_DATE records when the pair was made: the key-age rules of SEE-2.3 read it.
  CK_DATE start{};
  {
    std::time_t t = spec.created_unix_s ? static_cast<std::time_t>(spec.created_unix_s) : std::time(nullptr);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    std::snprintf(buf, sizeof buf, "%04d%02d%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
    std::memcpy(start.year, buf, 4);
    std::memcpy(start.month, buf + 4, 2);
    std::memcpy(start.day, buf + 6, 2);
  }
  pub.Bytes(CKA_START_DATE, &start, sizeof start);
  priv.Bytes(CKA_START_DATE, &start, sizeof start);
  pub.Bool(CKA_PRIVATE, false);
  priv.Bool(CKA_PRIVATE, true);
  priv.Bool(CKA_SENSITIVE, true);
  // Sensitive + extractable = can leave the token only wrapped (C_WrapKey), never in clear.
  priv.Bool(CKA_EXTRACTABLE, spec.backup_wrappable);
  Usage(&priv, &pub, spec.purpose);

  static const unsigned char kE[] = {0x01, 0x00, 0x01};
  CK_MECHANISM mech{};
  if (IsRsa(spec.type)) {
    mech.mechanism = CKM_RSA_PKCS_KEY_PAIR_GEN;
    pub.Ulong(CKA_MODULUS_BITS, RsaBits(spec.type));
    pub.Bytes(CKA_PUBLIC_EXPONENT, kE, sizeof kE);
  } else {
    mech.mechanism = CKM_EC_KEY_PAIR_GEN;
    if (spec.type == KeyType::kEcP256) pub.Bytes(CKA_EC_PARAMS, kP256, sizeof kP256);
    else pub.Bytes(CKA_EC_PARAMS, kP384, sizeof kP384);
  }
  std::string op = StrCat("C_GenerateKeyPair(", IsRsa(spec.type) ? "CKM_RSA_PKCS_KEY_PAIR_GEN" : "CKM_EC_KEY_PAIR_GEN", ")");
  if (Status st = Check(s.fn()->C_GenerateKeyPair(s.handle(), &mech, pub.data(), pub.size(), priv.data(),
                                                  priv.size(), &kp.pub, &kp.priv),
                        op);
      !st.ok())
    return st;
  return kp;
}

Result<KeyPair> FindKeyPair(Session& s, const std::string& label) {
  KeyPair kp;
  kp.label = label;
  for (CK_OBJECT_CLASS cls : {CKO_PRIVATE_KEY, CKO_PUBLIC_KEY}) {
    Attr q;
    q.Bytes(CKA_CLASS, &cls, sizeof cls);
    q.Bytes(CKA_LABEL, label.data(), label.size());
    Result<std::vector<CK_OBJECT_HANDLE>> found = FindObjects(s, q);
    if (!found.ok()) return found.status();
    if (found->size() > 1)
      return FailedPreconditionError(StrCat("more than one key labelled '", label, "' on the token"));
    if (found->empty()) return NotFoundError(StrCat("no key labelled '", label, "' on the token"));
    (cls == CKO_PRIVATE_KEY ? kp.priv : kp.pub) = (*found)[0];
  }
  Result<std::string> id = Attribute(s, kp.priv, CKA_ID);
  if (!id.ok()) return id.status();
  kp.id.assign(id->begin(), id->end());
  if (!kp.id.empty()) kp.purpose = static_cast<Purpose>(kp.id[0]);
  return kp;
}

Result<std::string> Attribute(Session& s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
  CK_ATTRIBUTE a{type, nullptr, 0};
  if (Status st = Check(s.fn()->C_GetAttributeValue(s.handle(), obj, &a, 1), "C_GetAttributeValue"); !st.ok())
    return st;
  if (a.ulValueLen == CK_UNAVAILABLE_INFORMATION) return NotFoundError("attribute unavailable");
  std::string v(a.ulValueLen, '\0');
  a.pValue = v.data();
  if (Status st = Check(s.fn()->C_GetAttributeValue(s.handle(), obj, &a, 1), "C_GetAttributeValue"); !st.ok())
    return st;
  v.resize(a.ulValueLen);
  return v;
}

Result<bool> BoolAttribute(Session& s, CK_OBJECT_HANDLE obj, CK_ATTRIBUTE_TYPE type) {
  Result<std::string> v = Attribute(s, obj, type);
  if (!v.ok()) return v.status();
  return v->size() == 1 && (*v)[0] != 0;
}

Result<std::string> SignDigest(Session& s, CK_OBJECT_HANDLE key, SignMechanism m, std::string_view digest) {
  size_t want = Is384(m) ? 48 : 32;
  if (digest.size() != want) return InvalidArgumentError("digest length does not match the mechanism");
  std::string input;
  CK_RSA_PKCS_PSS_PARAMS pss{CKM_SHA256, CKG_MGF1_SHA256, 32};
  CK_MECHANISM mech{SignMech(m), nullptr, 0};
  if (m == SignMechanism::kRsaPkcs1Sha256 || m == SignMechanism::kRsaPkcs1Sha384) {
    input.assign(reinterpret_cast<const char*>(Is384(m) ? kSha384Prefix : kSha256Prefix), 19);
    input.append(digest);
  } else {
    input.assign(digest);
    if (m == SignMechanism::kRsaPssSha256) {
      mech.pParameter = &pss;
      mech.ulParameterLen = sizeof pss;
    }
  }
  CK_FUNCTION_LIST* f = s.fn();
  const char* op = SignMechName(m);
  if (Status st = Check(f->C_SignInit(s.handle(), &mech, key), StrCat(op, " init")); !st.ok()) return st;
  CK_ULONG len = 0;
  auto in = reinterpret_cast<CK_BYTE_PTR>(input.data());
  if (Status st = Check(f->C_Sign(s.handle(), in, input.size(), nullptr, &len), op); !st.ok()) return st;
  std::string sig(len, '\0');
  if (Status st = Check(f->C_Sign(s.handle(), in, input.size(), reinterpret_cast<CK_BYTE_PTR>(sig.data()), &len), op);
      !st.ok())
    return st;
  sig.resize(len);
  if (m == SignMechanism::kEcdsaSha256 || m == SignMechanism::kEcdsaSha384) return EcdsaRawToDer(sig);
  return sig;
}

Result<std::string> Sign(Session& s, CK_OBJECT_HANDLE key, SignMechanism m, std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), md, &n, Is384(m) ? EVP_sha384() : EVP_sha256(), nullptr) != 1)
    return InternalError("digest failed");
  return SignDigest(s, key, m, std::string_view(reinterpret_cast<char*>(md), n));
}

Result<std::string> Decrypt(Session& s, CK_OBJECT_HANDLE key, DecryptMechanism m, std::string_view ct) {
  CK_RSA_PKCS_OAEP_PARAMS oaep{};
  CK_MECHANISM mech{CKM_RSA_PKCS, nullptr, 0};
  const char* op = "C_Decrypt(CKM_RSA_PKCS)";
  if (m != DecryptMechanism::kRsaPkcs1) {
    bool sha1 = m == DecryptMechanism::kRsaOaepSha1;
    oaep = {sha1 ? CKM_SHA_1 : CKM_SHA256, sha1 ? CKG_MGF1_SHA1 : CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, nullptr, 0};
    mech = {CKM_RSA_PKCS_OAEP, &oaep, sizeof oaep};
    op = "C_Decrypt(CKM_RSA_PKCS_OAEP)";
  }
  CK_FUNCTION_LIST* f = s.fn();
  if (Status st = Check(f->C_DecryptInit(s.handle(), &mech, key), StrCat(op, " init")); !st.ok()) return st;
  std::string out(ct.size(), '\0');
  CK_ULONG len = out.size();
  auto in = reinterpret_cast<CK_BYTE_PTR>(const_cast<char*>(ct.data()));
  if (Status st = Check(f->C_Decrypt(s.handle(), in, ct.size(), reinterpret_cast<CK_BYTE_PTR>(out.data()), &len), op);
      !st.ok())
    return st;
  out.resize(len);
  return out;
}

Result<EVP_PKEY*> PublicKey(Session& s, CK_OBJECT_HANDLE pub) {
  Result<std::string> type = Attribute(s, pub, CKA_KEY_TYPE);
  if (!type.ok()) return type.status();
  CK_KEY_TYPE kt = 0;
  std::memcpy(&kt, type->data(), std::min(type->size(), sizeof kt));
  OSSL_PARAM_BLD* bld = OSSL_PARAM_BLD_new();
  EVP_PKEY_CTX* ctx = nullptr;
  BIGNUM *n = nullptr, *e = nullptr;
  std::string point_owned, group;
  if (kt == CKK_RSA) {
    Result<std::string> mod = Attribute(s, pub, CKA_MODULUS);
    Result<std::string> exp = Attribute(s, pub, CKA_PUBLIC_EXPONENT);
    if (!mod.ok() || !exp.ok()) {
      OSSL_PARAM_BLD_free(bld);
      return !mod.ok() ? mod.status() : exp.status();
    }
    n = BN_bin2bn(reinterpret_cast<const unsigned char*>(mod->data()), static_cast<int>(mod->size()), nullptr);
    e = BN_bin2bn(reinterpret_cast<const unsigned char*>(exp->data()), static_cast<int>(exp->size()), nullptr);
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
    OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
    ctx = EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr);
  } else if (kt == CKK_EC) {
    Result<std::string> params = Attribute(s, pub, CKA_EC_PARAMS);
    Result<std::string> point = Attribute(s, pub, CKA_EC_POINT);
    if (!params.ok() || !point.ok()) {
      OSSL_PARAM_BLD_free(bld);
      return !params.ok() ? params.status() : point.status();
    }
    if (params->size() == sizeof kP256 && std::memcmp(params->data(), kP256, sizeof kP256) == 0) group = "P-256";
    else if (params->size() == sizeof kP384 && std::memcmp(params->data(), kP384, sizeof kP384) == 0) group = "P-384";
    else {
      OSSL_PARAM_BLD_free(bld);
      return InvalidArgumentError("unsupported EC curve on token");
    }
    // CKA_EC_POINT is a DER OCTET STRING around the uncompressed point.
    const unsigned char* p = reinterpret_cast<const unsigned char*>(point->data());
    ASN1_OCTET_STRING* os = d2i_ASN1_OCTET_STRING(nullptr, &p, static_cast<long>(point->size()));
    if (os) {
      point_owned.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(os)), static_cast<size_t>(ASN1_STRING_length(os)));
      ASN1_OCTET_STRING_free(os);
    } else {
      point_owned = *point;  // some tokens return the raw point
    }
    OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group.c_str(), 0);
    OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, point_owned.data(), point_owned.size());
    ctx = EVP_PKEY_CTX_new_from_name(nullptr, "EC", nullptr);
  } else {
    OSSL_PARAM_BLD_free(bld);
    return InvalidArgumentError("unsupported key type on token");
  }
  OSSL_PARAM* params = OSSL_PARAM_BLD_to_param(bld);
  EVP_PKEY* pkey = nullptr;
  bool ok = ctx && EVP_PKEY_fromdata_init(ctx) == 1 && EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) == 1;
  OSSL_PARAM_free(params);
  OSSL_PARAM_BLD_free(bld);
  EVP_PKEY_CTX_free(ctx);
  BN_free(n);
  BN_free(e);
  if (!ok) return InternalError("could not build the public key from token attributes");
  return pkey;
}

namespace {
// An AES key on the token for one use: wrapping keys (C_WrapKey) or block operations (ECB).
Result<CK_OBJECT_HANDLE> GenerateAes(Session& s, const std::string& label, Purpose purpose, size_t bits, bool trusted,
                                     bool block_ops) {
  if (bits != 128 && bits != 192 && bits != 256) return InvalidArgumentError("AES key size must be 128, 192 or 256");
  Attr a;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  std::vector<uint8_t> id(9);
  id[0] = static_cast<uint8_t>(purpose);
  RAND_bytes(id.data() + 1, 8);
  a.Bytes(CKA_CLASS, &cls, sizeof cls);
  a.Bytes(CKA_KEY_TYPE, &kt, sizeof kt);
  a.Ulong(CKA_VALUE_LEN, bits / 8);
  StoredAndProtected(&a, label, id);
  a.Bool(CKA_WRAP, !block_ops);
  a.Bool(CKA_UNWRAP, !block_ops);
  a.Bool(CKA_ENCRYPT, block_ops);
  a.Bool(CKA_DECRYPT, block_ops);
  if (trusted) a.Bool(CKA_TRUSTED, true);
  CK_MECHANISM mech{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (Status st = Check(s.fn()->C_GenerateKey(s.handle(), &mech, a.data(), a.size(), &h), "C_GenerateKey(CKM_AES_KEY_GEN)");
      !st.ok())
    return st;
  return h;
}
}  // namespace

Result<CK_OBJECT_HANDLE> GenerateAesKey(Session& s, const std::string& label, Purpose purpose, size_t bits,
                                        bool trusted) {
  return GenerateAes(s, label, purpose, bits, trusted, /*block_ops=*/false);
}

Result<CK_OBJECT_HANDLE> GenerateAesBlockKek(Session& s, const std::string& label, Purpose purpose) {
  return GenerateAes(s, label, purpose, 256, /*trusted=*/false, /*block_ops=*/true);
}

namespace {
// One AES block through the token: CKM_AES_ECB over exactly 16 bytes.
Status AesBlock(Session& s, CK_OBJECT_HANDLE kek, bool encrypt, unsigned char block[16]) {
  CK_MECHANISM mech{CKM_AES_ECB, nullptr, 0};
  CK_FUNCTION_LIST* f = s.fn();
  const char* op = encrypt ? "C_Encrypt(CKM_AES_ECB)" : "C_Decrypt(CKM_AES_ECB)";
  CK_RV rv = encrypt ? f->C_EncryptInit(s.handle(), &mech, kek) : f->C_DecryptInit(s.handle(), &mech, kek);
  if (Status st = Check(rv, StrCat(op, " init")); !st.ok()) return st;
  unsigned char out[16];
  CK_ULONG len = sizeof out;
  rv = encrypt ? f->C_Encrypt(s.handle(), block, 16, out, &len) : f->C_Decrypt(s.handle(), block, 16, out, &len);
  if (Status st = Check(rv, op); !st.ok()) return st;
  if (len != 16) return InternalError(StrCat(op, ": not one block"));
  std::memcpy(block, out, 16);
  OPENSSL_cleanse(out, sizeof out);
  return OkStatus();
}
constexpr unsigned char kKwIv[8] = {0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6};
}  // namespace

Result<std::string> KwWrapDataKey(Session& s, CK_OBJECT_HANDLE kek, const Secret& data_key) {
  std::string_view p = data_key.Reveal();
  if (p.size() != 16 && p.size() != 32) return InvalidArgumentError("a data key is 128 or 256 bits");
  const size_t n = p.size() / 8;
  std::string r(p);   // R[1..n]
  unsigned char a[8];
  std::memcpy(a, kKwIv, 8);
  unsigned char b[16];
  for (uint64_t j = 0; j < 6; ++j) {   // RFC 3394 §2.2.1
    for (size_t i = 0; i < n; ++i) {
      std::memcpy(b, a, 8);
      std::memcpy(b + 8, r.data() + 8 * i, 8);
      if (Status st = AesBlock(s, kek, true, b); !st.ok()) {
        OPENSSL_cleanse(r.data(), r.size());
        OPENSSL_cleanse(b, sizeof b);
        return st;
      }
      uint64_t t = n * j + i + 1;
      for (int k = 0; k < 8; ++k) a[k] = b[k] ^ static_cast<unsigned char>(t >> (8 * (7 - k)));
      std::memcpy(r.data() + 8 * i, b + 8, 8);
    }
  }
  OPENSSL_cleanse(b, sizeof b);
  return std::string(reinterpret_cast<char*>(a), 8) + r;
}

Result<Secret> KwUnwrapDataKey(Session& s, CK_OBJECT_HANDLE kek, std::string_view c) {
  if (c.size() != 24 && c.size() != 40) return DataLossError("a wrapped data key is 24 or 40 bytes");
  const size_t n = c.size() / 8 - 1;
  unsigned char a[8];
  std::memcpy(a, c.data(), 8);
  std::string r(c.substr(8));
  unsigned char b[16];
  for (int64_t j = 5; j >= 0; --j) {   // RFC 3394 §2.2.2
    for (size_t i = n; i >= 1; --i) {
      uint64_t t = n * static_cast<uint64_t>(j) + i;
      for (int k = 0; k < 8; ++k) b[k] = a[k] ^ static_cast<unsigned char>(t >> (8 * (7 - k)));
      std::memcpy(b + 8, r.data() + 8 * (i - 1), 8);
      if (Status st = AesBlock(s, kek, false, b); !st.ok()) {
        OPENSSL_cleanse(r.data(), r.size());
        OPENSSL_cleanse(b, sizeof b);
        return st;
      }
      std::memcpy(a, b, 8);
      std::memcpy(r.data() + 8 * (i - 1), b + 8, 8);
    }
  }
  OPENSSL_cleanse(b, sizeof b);
  if (CRYPTO_memcmp(a, kKwIv, 8) != 0) {
    OPENSSL_cleanse(r.data(), r.size());
    return DataLossError("the wrapped data key fails its integrity check (damaged, or wrapped by another key)");
  }
  return Secret(std::move(r));
}

Result<CK_OBJECT_HANDLE> FindSecretKey(Session& s, const std::string& label) {
  Attr q;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  q.Bytes(CKA_CLASS, &cls, sizeof cls);
  q.Bytes(CKA_LABEL, label.data(), label.size());
  Result<std::vector<CK_OBJECT_HANDLE>> found = FindObjects(s, q);
  if (!found.ok()) return found.status();
  if (found->size() != 1)
    return NotFoundError(StrCat(found->empty() ? "no" : "more than one", " secret key labelled '", label, "'"));
  return (*found)[0];
}

Result<std::string> WrapKey(Session& s, CK_OBJECT_HANDLE wrapping, CK_OBJECT_HANDLE key) {
  CK_MECHANISM mech{kAesKeyWrapPadSoftHsm, nullptr, 0};
  CK_ULONG len = 0;
  const char* op = "C_WrapKey(CKM_AES_KEY_WRAP_PAD)";
  if (Status st = Check(s.fn()->C_WrapKey(s.handle(), &mech, wrapping, key, nullptr, &len), op); !st.ok()) return st;
  std::string out(len, '\0');
  if (Status st = Check(s.fn()->C_WrapKey(s.handle(), &mech, wrapping, key, reinterpret_cast<CK_BYTE_PTR>(out.data()), &len), op);
      !st.ok())
    return st;
  out.resize(len);
  return out;
}

Result<CK_OBJECT_HANDLE> UnwrapPrivateKey(Session& s, CK_OBJECT_HANDLE wrapping, std::string_view wrapped,
                                          CK_KEY_TYPE key_type, const std::string& label,
                                          const std::vector<uint8_t>& id, Purpose purpose) {
  Attr a, ignored_pub;
  CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
  a.Bytes(CKA_CLASS, &cls, sizeof cls);
  a.Bytes(CKA_KEY_TYPE, &key_type, sizeof key_type);
  StoredAndProtected(&a, label, id);
  Usage(&a, &ignored_pub, purpose);
  CK_MECHANISM mech{kAesKeyWrapPadSoftHsm, nullptr, 0};
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  if (Status st = Check(s.fn()->C_UnwrapKey(s.handle(), &mech, wrapping,
                                            reinterpret_cast<CK_BYTE_PTR>(const_cast<char*>(wrapped.data())),
                                            wrapped.size(), a.data(), a.size(), &h),
                        "C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)");
      !st.ok())
    return st;
  return h;
}

Result<Secret> NewDataKey() {
  std::string k(32, '\0');
  if (RAND_priv_bytes(reinterpret_cast<unsigned char*>(k.data()), 32) != 1) return InternalError("no randomness");
  return Secret(std::move(k));
}

namespace {
// A session object holding a data key in clear inside the token, destroyed on scope exit.
struct SessionObject {
  Session& s;
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  ~SessionObject() {
    if (h != CK_INVALID_HANDLE) s.fn()->C_DestroyObject(s.handle(), h);
  }
};
}  // namespace

Result<std::string> WrapDataKey(Session& s, CK_OBJECT_HANDLE kek, const Secret& data_key) {
  if (data_key.Reveal().size() != 16 && data_key.Reveal().size() != 32)
    return InvalidArgumentError("a data key is 128 or 256 bits");
  Attr a;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  std::string v(data_key.Reveal());
  a.Bytes(CKA_CLASS, &cls, sizeof cls);
  a.Bytes(CKA_KEY_TYPE, &kt, sizeof kt);
  a.Bool(CKA_TOKEN, false);
  a.Bool(CKA_PRIVATE, true);
  a.Bool(CKA_SENSITIVE, true);
  a.Bool(CKA_EXTRACTABLE, true);
  a.Bytes(CKA_VALUE, v.data(), v.size());
  SessionObject obj{s};
  Status st = Check(s.fn()->C_CreateObject(s.handle(), a.data(), a.size(), &obj.h), "C_CreateObject(data key)");
  OPENSSL_cleanse(v.data(), v.size());
  if (!st.ok()) return st;
  return WrapKey(s, kek, obj.h);
}

Result<Secret> UnwrapDataKey(Session& s, CK_OBJECT_HANDLE kek, std::string_view wrapped) {
  Attr a;
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE kt = CKK_AES;
  a.Bytes(CKA_CLASS, &cls, sizeof cls);
  a.Bytes(CKA_KEY_TYPE, &kt, sizeof kt);
  a.Bool(CKA_TOKEN, false);
  a.Bool(CKA_PRIVATE, true);
  a.Bool(CKA_SENSITIVE, false);   // a data key is used in software: that is its purpose
  a.Bool(CKA_EXTRACTABLE, true);
  CK_MECHANISM mech{kAesKeyWrapPadSoftHsm, nullptr, 0};
  SessionObject obj{s};
  if (Status st = Check(s.fn()->C_UnwrapKey(s.handle(), &mech, kek,
                                            reinterpret_cast<CK_BYTE_PTR>(const_cast<char*>(wrapped.data())),
                                            wrapped.size(), a.data(), a.size(), &obj.h),
                        "C_UnwrapKey(CKM_AES_KEY_WRAP_PAD)");
      !st.ok())
    return st;
  Result<std::string> v = Attribute(s, obj.h, CKA_VALUE);
  if (!v.ok()) return v.status();
  Secret key(std::move(v.value()));
  return key;
}

}  // namespace mailseal::hsm
