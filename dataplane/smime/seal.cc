// seal.cc — see seal.h. STANDARDS: RFC 8551 (S/MIME 4.0), RFC 5652 (CMS), RFC 5083/5084
// (AuthEnvelopedData, AES-GCM), RFC 3183 (domain security), RFC 9788 (header protection).
#include "dataplane/smime/seal.h"

#include "dataplane/base/openssl_error.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/x509.h>
#include <openssl/asn1t.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <ctime>
#include <cstring>
#include <memory>
#include <strings.h>

#include "dataplane/mime/canonical.h"
#include "dataplane/pki/validator.h"
#include "dataplane/mime/parser.h"
#include "dataplane/smime/naming.h"

namespace mailseal::smime {
namespace {

// RFC 9788 "wrapped message": forwarded="no" tells header-protection-aware readers that the
// inner message is this one, not a forward.
constexpr char kWrapper[] = "Content-Type: message/rfc822; forwarded=\"no\"\r\n\r\n";


struct BioDel { void operator()(BIO* b) const { BIO_free_all(b); } };
struct CmsDel { void operator()(CMS_ContentInfo* c) const { CMS_ContentInfo_free(c); } };
using BioPtr = std::unique_ptr<BIO, BioDel>;
using CmsPtr = std::unique_ptr<CMS_ContentInfo, CmsDel>;

BioPtr MemIn(const std::string& s) { return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size()))); }

// StringSink: a write-only BIO that appends to a std::string. OpenSSL's memory BIO grows by
// realloc-and-cleanse, which for megabyte messages costs more than the cipher (measured with
// tools/bench/smime: 2 MiB seals ran at ~80 MB/s, mostly memmove and page faults).
int SinkWrite(BIO* b, const char* data, int n) {
  static_cast<std::string*>(BIO_get_data(b))->append(data, static_cast<size_t>(n));
  return n;
}
int SinkPuts(BIO* b, const char* str) { return SinkWrite(b, str, static_cast<int>(std::strlen(str))); }
long SinkCtrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
int SinkCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}
BioPtr StringSink(std::string* out) {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "mailseal string sink");
    BIO_meth_set_write(m, SinkWrite);
    BIO_meth_set_puts(m, SinkPuts);
    BIO_meth_set_ctrl(m, SinkCtrl);
    BIO_meth_set_create(m, SinkCreate);
    return m;
  }();
  BIO* b = BIO_new(method);
  BIO_set_data(b, out);
  return BioPtr(b);
}

std::string Pkcs7Entity(const char* smime_type, const std::string& der) {
  std::string out = StrCat("Content-Type: application/pkcs7-mime; smime-type=", smime_type,
                           "; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n"
                           "Content-Disposition: attachment; filename=smime.p7m\r\n\r\n");
  mime::AppendBase64Lines(&out, der);
  return out;
}

}  // namespace

namespace {
// RootHeader parses only an entity's own header block (its body may be anything).
bool RootHeader(const std::string& entity, mime::Part* root) {
  size_t end = entity.find("\n\r\n");
  size_t end_lf = entity.find("\n\n");
  size_t cut = std::min(end == std::string::npos ? entity.size() : end + 3,
                        end_lf == std::string::npos ? entity.size() : end_lf + 2);
  mime::Parser p;
  if (!p.Feed(std::string_view(entity).substr(0, cut)).ok() || !p.Finish().ok()) return false;
  *root = p.parts()[0];
  return root->header_complete;
}

// IsSmime: whether an entity's own Content-Type is an S/MIME layer to peel.
bool IsSmime(const std::string& entity) {
  mime::Part root;
  if (!RootHeader(entity, &root)) return false;
  return (root.type == "application" && (root.subtype == "pkcs7-mime" || root.subtype == "x-pkcs7-mime")) ||
         (root.type == "multipart" && root.subtype == "signed");
}
}  // namespace

X509Ref Ref(X509* owned) { return X509Ref(owned, X509_free); }
X509Ref RefUp(X509* borrowed) {
  if (borrowed) X509_up_ref(borrowed);
  return Ref(borrowed);
}

const char* CertStatusName(CertStatus s) {
  switch (s) {
    case CertStatus::kValid: return "valid";
    case CertStatus::kStatusUnknown: return "status-unknown";
    case CertStatus::kExpired: return "expired";
    case CertStatus::kNotYetValid: return "not-yet-valid";
    case CertStatus::kUnknownCa: return "unknown-ca";
    case CertStatus::kRevoked: return "revoked";
  }
  return "?";
}

const std::vector<std::string>& OurCapabilities() {
  // Content ciphers strongest first, then the key transport we can unwrap (RFC 8551 §2.5.2).
  static const std::vector<std::string> kCaps = {"id-aes256-GCM", "id-aes128-GCM", "AES-256-CBC", "AES-192-CBC",
                                                 "AES-128-CBC", "RSAES-OAEP"};
  return kCaps;
}

KeyTransport KeyTransportFor(const std::vector<std::string>& caps) {
  for (const std::string& c : caps)
    if (c == "RSAES-OAEP") return KeyTransport::kRsaOaep;
  return KeyTransport::kRsaPkcs1;
}

const char* CipherName(ContentCipher c) {
  switch (c) {
    case ContentCipher::kAes256Gcm: return "AES-256-GCM";
    case ContentCipher::kAes128Gcm: return "AES-128-GCM";
    case ContentCipher::kAes256Cbc: return "AES-256-CBC";
    case ContentCipher::kAes192Cbc: return "AES-192-CBC";
    case ContentCipher::kAes128Cbc: return "AES-128-CBC";
  }
  return "?";
}

ContentCipher ChooseCipher(const std::vector<std::string>& caps) {
  if (caps.empty()) return ContentCipher::kAes256Cbc;
  static const std::pair<const char*, ContentCipher> kOurs[] = {
      {"id-aes256-GCM", ContentCipher::kAes256Gcm}, {"id-aes128-GCM", ContentCipher::kAes128Gcm},
      {"AES-256-CBC", ContentCipher::kAes256Cbc},   {"AES-192-CBC", ContentCipher::kAes192Cbc},
      {"AES-128-CBC", ContentCipher::kAes128Cbc}};
  for (const auto& [name, cipher] : kOurs)
    if (std::find(caps.begin(), caps.end(), name) != caps.end()) return cipher;
  return ContentCipher::kAes128Cbc;
}

namespace {
const EVP_CIPHER* EvpCipher(ContentCipher c) {
  switch (c) {
    case ContentCipher::kAes256Gcm: return EVP_aes_256_gcm();
    case ContentCipher::kAes128Gcm: return EVP_aes_128_gcm();
    case ContentCipher::kAes256Cbc: return EVP_aes_256_cbc();
    case ContentCipher::kAes192Cbc: return EVP_aes_192_cbc();
    case ContentCipher::kAes128Cbc: return EVP_aes_128_cbc();
  }
  return EVP_aes_256_cbc();
}
}  // namespace

// SignedCms starts signed-data (streamed; `extra_flags` adds CMS_DETACHED) with our
// certificate and chain, SHA-256, and our own SMIMECapabilities (OpenSSL's default list omits
// AES-GCM), strongest first. Null on failure (the OpenSSL error is queued).
CmsPtr SignedCms(const Signer& signer, int extra_flags) {
  STACK_OF(X509)* chain = sk_X509_new_null();
  for (X509* c : signer.chain) sk_X509_push(chain, c);
  CmsPtr cms(CMS_sign(nullptr, nullptr, chain, nullptr, CMS_BINARY | CMS_PARTIAL | CMS_STREAM | extra_flags));
  sk_X509_free(chain);
  if (!cms) return nullptr;
  CMS_SignerInfo* si = CMS_add1_signer(cms.get(), signer.cert, signer.key, EVP_sha256(), CMS_BINARY | CMS_NOSMIMECAP);
  STACK_OF(X509_ALGOR)* caps = nullptr;
  bool ok = si != nullptr;
  for (const std::string& name : OurCapabilities())
    ok = ok && CMS_add_simple_smimecap(&caps, OBJ_txt2nid(name.c_str()), -1) == 1;
  ok = ok && CMS_add_smimecap(si, caps) == 1;
  sk_X509_ALGOR_pop_free(caps, X509_ALGOR_free);
  return ok ? std::move(cms) : nullptr;
}

// SignDetached makes a multipart/signed entity (CRLF line ends) over `canonical`, which must
// already be 7-bit (mime::ToSevenBit).
Result<std::string> SignDetached(const std::string& canonical, const Signer& signer) {
  BioPtr in = MemIn(canonical);
  CmsPtr cms = SignedCms(signer, CMS_DETACHED);
  std::string out;
  out.reserve(canonical.size() + 16384);
  BioPtr sink = StringSink(&out);
  if (!cms || SMIME_write_CMS(sink.get(), cms.get(), in.get(), CMS_DETACHED | CMS_BINARY | CMS_STREAM | CMS_CRLFEOL) != 1)
    return InternalError(base::OpenSslError("signing failed"));
  return out;
}

// SignEntity makes opaque signed-data (DER) over `content`, streamed (BER, indefinite length):
// the content goes straight from `in` to the output.
Result<std::string> SignEntity(const std::string& content, const Signer& signer) {
  BioPtr in = MemIn(content);
  CmsPtr cms = SignedCms(signer, 0);
  std::string der;
  der.reserve(content.size() + 16384);
  BioPtr out = StringSink(&der);
  if (!cms || i2d_CMS_bio_stream(out.get(), cms.get(), in.get(), CMS_BINARY | CMS_STREAM) != 1)
    return InternalError(base::OpenSslError("signing failed"));
  return der;
}

Result<std::string> Seal(const std::string& message, const Signer& signer, const std::vector<X509*>& recipients,
                         const SealOptions& options) {
  if (!signer.cert || !signer.key) return InvalidArgumentError("no signer");
  if (recipients.empty() && !options.sign_only) return InvalidArgumentError("no recipient certificate");
  // The outer header: the routing fields of the original, byte-exact; the rest stays inside.
  mime::Part root;
  if (!RootHeader(message, &root)) return InvalidArgumentError("message cannot be sealed: no complete header");
  std::string outer = options.trace;
  for (const mime::HeaderField& f : root.headers) {
    for (const char* keep : {"From", "To", "Cc", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References"}) {
      if (f.name.size() == std::strlen(keep) && strncasecmp(f.name.c_str(), keep, f.name.size()) == 0) outer += f.raw;
    }
  }
  // 1. Sign the wrapped message (signer cert, chain, SMIMECapabilities): opaque signed-data,
  // or multipart/signed over its canonical 7-bit form.
  std::string signed_entity;
  Result<std::string> canonical = options.detached_signature ? mime::ToSevenBit(kWrapper + message)
                                                             : Result<std::string>(FailedPreconditionError("opaque"));
  if (canonical.ok()) {
    Result<std::string> detached = SignDetached(*canonical, signer);
    if (!detached.ok()) return detached.status();
    signed_entity = std::move(*detached);
  } else {
    Result<std::string> signed_der = SignEntity(kWrapper + message, signer);
    if (!signed_der.ok()) return signed_der.status();
    signed_entity = Pkcs7Entity("signed-data", *signed_der);
  }
  if (options.sign_only) {
    std::string subject;
    for (const mime::HeaderField& f : root.headers)
      if (f.name.size() == 7 && strncasecmp(f.name.c_str(), "Subject", 7) == 0) subject = f.raw;
    return StrCat(outer, subject, "MIME-Version: 1.0\r\n", signed_entity);
  }
  // 2. Envelope it for the partner's DCA.
  BioPtr sin = MemIn(signed_entity);
  const EVP_CIPHER* cipher = EvpCipher(options.cipher);
  CmsPtr env(CMS_encrypt(nullptr, nullptr, cipher, CMS_BINARY | CMS_PARTIAL | CMS_STREAM));
  if (!env) return InternalError(base::OpenSslError("encryption failed"));
  for (X509* r : recipients) {
    CMS_RecipientInfo* ri = CMS_add1_recipient_cert(env.get(), r, CMS_KEY_PARAM);
    if (!ri) return InvalidArgumentError(base::OpenSslError("recipient certificate unusable"));
    EVP_PKEY_CTX* pctx = CMS_RecipientInfo_get0_pkey_ctx(ri);
    bool rsa = EVP_PKEY_get_base_id(X509_get0_pubkey(r)) == EVP_PKEY_RSA;
    if (rsa && options.key_transport == KeyTransport::kRsaOaep &&
        (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_OAEP_PADDING) != 1 ||
         EVP_PKEY_CTX_set_rsa_oaep_md(pctx, EVP_sha256()) != 1 || EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, EVP_sha256()) != 1))
      return InternalError(base::OpenSslError("RSA-OAEP setup failed"));
  }
  std::string env_der;
  env_der.reserve(signed_entity.size() + 4096);
  BioPtr env_out = StringSink(&env_der);
  if (i2d_CMS_bio_stream(env_out.get(), env.get(), sin.get(), CMS_BINARY | CMS_STREAM) != 1)
    return InternalError(base::OpenSslError("encryption failed"));
  const char* type = IsAead(options.cipher) ? "authEnveloped-data" : "enveloped-data";
  std::string entity = Pkcs7Entity(type, env_der);
  if (options.triple_wrap) {
    // RFC 2634 triple wrapping: the encrypted entity is signed again, so relays can check who
    // sent it without decrypting.
    Result<std::string> outer_sig = SignEntity(entity, signer);
    if (!outer_sig.ok()) return outer_sig.status();
    entity = Pkcs7Entity("signed-data", *outer_sig);
  }
  return StrCat(outer, "Subject: ", options.outer_subject, "\r\nMIME-Version: 1.0\r\n", entity);
}

namespace {
// RecordSigner notes who signed a layer and what they can read.
void RecordSigner(CMS_ContentInfo* sig, Opened* out) {
  out->signer_emails.clear();
  out->capabilities.clear();
  STACK_OF(X509)* signers = CMS_get0_signers(sig);
  if (signers && sk_X509_num(signers) > 0) {
    X509* s = sk_X509_value(signers, 0);
    char name[512];
    X509_NAME_oneline(X509_get_subject_name(s), name, sizeof name);
    out->signer_subject = name;
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(s, NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      if (g->type == GEN_EMAIL)
        out->signer_emails.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.rfc822Name)),
                                        static_cast<size_t>(ASN1_STRING_length(g->d.rfc822Name)));
    }
    GENERAL_NAMES_free(sans);
  }
  sk_X509_free(signers);
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(sig);
  for (int i = 0; infos && i < sk_CMS_SignerInfo_num(infos); ++i) {
    X509_ALGOR* digest = nullptr;
    CMS_SignerInfo_get0_algs(sk_CMS_SignerInfo_value(infos, i), nullptr, nullptr, &digest, nullptr);
    const ASN1_OBJECT* obj = nullptr;
    if (digest) X509_ALGOR_get0(&obj, nullptr, nullptr, digest);
    int nid = obj ? OBJ_obj2nid(obj) : NID_undef;
    if (nid == NID_md5) out->weak_digest = "MD5";
    else if (nid == NID_sha1 && out->weak_digest.empty()) out->weak_digest = "SHA1";
  }
  if (!infos || sk_CMS_SignerInfo_num(infos) == 0) return;
  CMS_SignerInfo* si = sk_CMS_SignerInfo_value(infos, 0);
  X509_ATTRIBUTE* attr = CMS_signed_get_attr(si, CMS_signed_get_attr_by_NID(si, NID_SMIMECapabilities, -1));
  ASN1_TYPE* t = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
  STACK_OF(X509_ALGOR)* algs = nullptr;
  if (t && t->type == V_ASN1_SEQUENCE) {
    const unsigned char* p = t->value.sequence->data;
    algs = reinterpret_cast<STACK_OF(X509_ALGOR)*>(
        ASN1_item_d2i(nullptr, &p, t->value.sequence->length, ASN1_ITEM_rptr(X509_ALGORS)));
  }
  for (int i = 0; algs && i < sk_X509_ALGOR_num(algs) && i < 64; ++i) {
    const ASN1_OBJECT* obj = nullptr;
    X509_ALGOR_get0(&obj, nullptr, nullptr, sk_X509_ALGOR_value(algs, i));
    int nid = OBJ_obj2nid(obj);
    char oid[80];
    OBJ_obj2txt(oid, sizeof oid, obj, 1);
    out->capabilities.emplace_back(nid != NID_undef ? OBJ_nid2sn(nid) : oid);
  }
  sk_X509_ALGOR_pop_free(algs, X509_ALGOR_free);
}

}  // namespace

namespace {
// PathStatus: a certificate's path to the trust anchors through the one validator
// (dataplane/pki), its verdict in the SEE-2.8 terms, and the reason an operator can act on.
std::pair<CertStatus, std::string> PathStatus(X509* cert, const std::vector<X509*>& untrusted, X509_STORE* trust,
                                              int purpose, int64_t at_unix = 0) {
  pki::Request r;
  r.leaf = cert;
  r.untrusted = untrusted;
  if (r.untrusted.size() > static_cast<size_t>(pki::kMaxUntrusted)) r.untrusted.resize(pki::kMaxUntrusted);
  r.at_unix = at_unix;
  r.purpose = purpose == X509_PURPOSE_SMIME_ENCRYPT ? pki::Purpose::kSmimeEncrypt
            : purpose == X509_PURPOSE_SMIME_SIGN ? pki::Purpose::kSmimeSign : pki::Purpose::kAny;
  pki::Outcome o = pki::Validate(trust, r);
  static_assert(static_cast<int>(pki::Verdict::kUntrusted) == static_cast<int>(CertStatus::kUnknownCa) &&
                static_cast<int>(pki::Verdict::kRevoked) == static_cast<int>(CertStatus::kRevoked));
  return {static_cast<CertStatus>(o.verdict), o.reason};
}

// ValidationTime: when a signer's certificate is judged — its signingTime attribute (RFC 5652
// §11.3), bounded by now and by kMaxTransit before now; now when it has none.
constexpr int64_t kMaxTransit = 7 * 24 * 3600;
int64_t ValidationTime(CMS_SignerInfo* si) {
  int64_t now = static_cast<int64_t>(std::time(nullptr));
  X509_ATTRIBUTE* attr = CMS_signed_get_attr(si, CMS_signed_get_attr_by_NID(si, NID_pkcs9_signingTime, -1));
  ASN1_TYPE* t = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
  if (!t || (t->type != V_ASN1_UTCTIME && t->type != V_ASN1_GENERALIZEDTIME)) return now;
  int64_t at = pki::UnixTime(t->value.utctime);
  return at == 0 ? now : std::clamp(at, now - kMaxTransit, now);
}

// IsDomainAuthority: the certificate claims to be a domain authority (CN or rfc822Name, see
// ExamineAuthority): its layer is a gateway's and is peeled, and the gateway then judges whether
// the claim holds — a broken claim is a HARD warning, never a "user-level" signature left alone.
bool IsDomainAuthority(X509* cert, std::string_view authority) { return ExamineAuthority(cert, authority).claims; }

// ForUs: an enveloped layer has a key-transport recipient info for our DCA.
bool ForUs(CMS_ContentInfo* cms, X509* us) {
  STACK_OF(CMS_RecipientInfo)* ris = CMS_get0_RecipientInfos(cms);
  for (int i = 0; ris && us && i < sk_CMS_RecipientInfo_num(ris); ++i) {
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(ris, i);
    if (CMS_RecipientInfo_type(ri) == CMS_RECIPINFO_TRANS && CMS_RecipientInfo_ktri_cert_cmp(ri, us) == 0) return true;
  }
  return false;
}

// SignedByAuthority: every signer of a signed layer is a domain-signing-authority (found in
// the message's certificates or `known`).
bool SignedByAuthority(CMS_ContentInfo* cms, const std::vector<X509*>& known) {
  STACK_OF(X509)* certs = CMS_get1_certs(cms);
  if (!certs) certs = sk_X509_new_null();
  for (X509* k : known) {
    X509_up_ref(k);
    sk_X509_push(certs, k);
  }
  STACK_OF(CMS_SignerInfo)* sis = CMS_get0_SignerInfos(cms);
  bool all = sis && sk_CMS_SignerInfo_num(sis) > 0;
  for (int i = 0; all && i < sk_CMS_SignerInfo_num(sis); ++i) {
    CMS_SignerInfo* si = sk_CMS_SignerInfo_value(sis, i);
    bool match = false;
    for (int j = 0; j < sk_X509_num(certs) && !match; ++j) {
      X509* c = sk_X509_value(certs, j);
      match = CMS_SignerInfo_cert_cmp(si, c) == 0 && IsDomainAuthority(c, "domain-signing-authority");
    }
    all = match;
  }
  sk_X509_pop_free(certs, X509_free);
  return all;
}
}  // namespace

bool IsSmimeEntity(const std::string& entity) { return IsSmime(entity); }

namespace {
// BeginsWithHeader: decrypted content is a MIME entity: it starts with an RFC 5322 header
// field ("Name:" of printable characters other than ':') and has the blank line that ends a
// header block, or its header is empty (it starts with the blank line).
bool BeginsWithHeader(const std::string& content) {
  if (content.rfind("\r\n", 0) == 0 || content.rfind("\n", 0) == 0) return true;   // an empty header (RFC 2045)
  size_t colon = content.find(':');
  if (colon == 0 || colon == std::string::npos || colon > 76) return false;
  for (size_t i = 0; i < colon; ++i)
    if (content[i] < 33 || content[i] > 126) return false;
  size_t window = std::min<size_t>(content.size(), 1 << 20);
  return std::string_view(content.data(), window).find("\n\r\n") != std::string_view::npos ||
         std::string_view(content.data(), window).find("\n\n") != std::string_view::npos;
}
}  // namespace

std::pair<CertStatus, std::string> CheckPath(X509* cert, const std::vector<X509*>& untrusted, X509_STORE* trust,
                                             int purpose, int64_t at_unix) {
  return PathStatus(cert, untrusted, trust, purpose, at_unix);
}

Result<Opened> Open(const std::string& sealed, const Recipient& us, X509_STORE* trust,
                    const std::vector<X509*>& known, const OpenOptions& options) {
  // Peel the layers: any order of signed and enveloped data (signed, encrypted, triple
  // wrapped), at most kMaxLayers deep. Every signature's math must verify; certificate
  // problems are reported in cert_status.
  constexpr int kMaxLayers = 4;
  Opened out;
  if (!IsSmime(sealed)) return InvalidArgumentError("not an S/MIME message");
  std::string current = sealed;
  bool any_signed = false, user_inner = false;
  for (int layer = 0; layer < kMaxLayers && IsSmime(current); ++layer) {
    BioPtr in = MemIn(current);
    BIO* detached = nullptr;
    CmsPtr cms(SMIME_read_CMS(in.get(), &detached));
    // The detached content goes to CMS_verify behind a buffer BIO: handed a memory BIO,
    // OpenSSL 3.0's CMS_verify leaks a copy of it when the signed data is malformed (found by
    // fuzz_smime_open).
    if (detached) detached = BIO_push(BIO_new(BIO_f_buffer()), detached);
    BioPtr detached_owner(detached);
    if (!cms) return InvalidArgumentError(base::OpenSslError(StrCat("S/MIME layer ", layer + 1, " is unreadable")));
    int type = OBJ_obj2nid(CMS_get0_type(cms.get()));
    std::string next_text;
    next_text.reserve(current.size());
    BioPtr next = StringSink(&next_text);
    // The DCA pair this enveloped layer names: the current one, else a previous one.
    X509* dca_cert = us.cert;
    EVP_PKEY* dca_key = us.key;
    if ((type == NID_pkcs7_enveloped || type == NID_id_smime_ct_authEnvelopedData) && !ForUs(cms.get(), us.cert))
      for (const auto& [c, k] : us.previous)
        if (c && k && ForUs(cms.get(), c)) {
          dca_cert = c;
          dca_key = k;
          break;
        }
    if (options.domain_layers_only) {
      bool ours = (type == NID_pkcs7_enveloped || type == NID_id_smime_ct_authEnvelopedData)
                      ? ForUs(cms.get(), dca_cert)
                      : type == NID_pkcs7_signed && SignedByAuthority(cms.get(), known);
      if (!ours) {
        if (layer == 0) return FailedPreconditionError("S/MIME, but no layer of it is our domain's (user-level)");
        user_inner = true;
        break;  // a user's own S/MIME inside: delivered intact
      }
    }
    if (type == NID_pkcs7_enveloped || type == NID_id_smime_ct_authEnvelopedData) {
      const char* name = type == NID_id_smime_ct_authEnvelopedData ? "authEnveloped-data" : "enveloped-data";
      if (!dca_key || !dca_cert) return Status(StatusCode::kPermissionDenied, "encrypted, and no decryption key");
      // One text for every failure: with implicit rejection (hsm/token_key.cc) and OpenSSL's
      // random key on a failed key transport, a damaged key block, a wrong key and damaged
      // content all end here, and nothing (log, hold reason, bounce) tells them apart.
      // A wrong content key (a damaged key block, implicit rejection) makes CBC padding fail —
      // or, once in 256 times, "succeed" with noise: noise is no MIME entity, so it is the same
      // failure (AES-GCM's tag rules it out anyway). Every damaged message is held alike.
      if (CMS_decrypt(cms.get(), dca_key, dca_cert, nullptr, next.get(), CMS_BINARY) != 1 || !BeginsWithHeader(next_text)) {
        ERR_clear_error();
        return Status(StatusCode::kPermissionDenied,
                      "the encrypted content cannot be decrypted for our domain (damaged, or not for our key)");
      }
      out.cipher = name;
      out.layers.emplace_back(name);
    } else if (type == NID_pkcs7_signed) {
      STACK_OF(X509)* extra = sk_X509_new_null();
      for (X509* k : known) sk_X509_push(extra, k);
      int ok = CMS_verify(cms.get(), extra, trust, detached, next.get(), CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY);
      if (ok != 1) {
        unsigned long e = ERR_peek_error();
        sk_X509_free(extra);
        if (ERR_GET_REASON(e) == CMS_R_SIGNER_CERTIFICATE_NOT_FOUND)
          return Status(StatusCode::kNotFound, base::OpenSslError("the signer's certificate is neither in the message nor known"));
        return Status(StatusCode::kPermissionDenied, base::OpenSslError("the signature does not verify"));
      }
      any_signed = true;
      out.layers.emplace_back("signed-data");
      RecordSigner(cms.get(), &out);  // the innermost signature is the one over the content
      // Every signer's certificate path; the worst status counts. Each is validated at its
      // signing time, bounded by now and by kMaxTransit before it (a message in transit when
      // the certificate expired still verifies; a signing time claimed further back does not
      // move validation into the past).
      STACK_OF(X509)* carried = CMS_get1_certs(cms.get());
      std::vector<X509*> untrusted;
      for (int i = 0; carried && i < sk_X509_num(carried); ++i) {
        untrusted.push_back(sk_X509_value(carried, i));
        out.certs.push_back(RefUp(sk_X509_value(carried, i)));
      }
      untrusted.insert(untrusted.end(), known.begin(), known.end());
      STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(cms.get());
      bool first = true;   // this layer's first signer: the innermost layer's is kept
      for (int i = 0; infos && i < sk_CMS_SignerInfo_num(infos); ++i) {
        CMS_SignerInfo* si = sk_CMS_SignerInfo_value(infos, i);
        X509* sc = nullptr;
        CMS_SignerInfo_get0_algs(si, nullptr, &sc, nullptr, nullptr);
        if (!sc) continue;
        if (first) out.signer_cert = RefUp(sc);
        first = false;
        auto [st, why] = PathStatus(sc, untrusted, trust, X509_PURPOSE_SMIME_SIGN, ValidationTime(si));
        // The worst status counts; its first reason is kept.
        if (st > out.cert_status || (st == out.cert_status && out.cert_detail.empty())) {
          out.cert_status = st;
          out.cert_detail = why;
        }
      }
      sk_X509_pop_free(carried, X509_free);
      sk_X509_free(extra);
    } else {
      return InvalidArgumentError(StrCat("unsupported S/MIME layer (", OBJ_nid2ln(type), ")"));
    }
    current = std::move(next_text);
  }
  out.signature_ok = any_signed;
  out.signed_ok = out.signature_ok && out.cert_status == CertStatus::kValid;
  if (IsSmime(current) && !user_inner)
    return InvalidArgumentError(StrCat("more than ", kMaxLayers, " S/MIME layers"));
  ERR_clear_error();
  // Unwrap our message/rfc822 entity; anything else is returned as the entity it is.
  mime::Part root;
  if (RootHeader(current, &root) && root.type == "message" && root.subtype == "rfc822") {
    out.message = current.substr(root.body_begin);
    out.rfc822 = true;
  } else {
    out.message = std::move(current);
  }
  return out;
}

}  // namespace mailseal::smime
