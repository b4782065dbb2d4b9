// seal.cc — see seal.h. STANDARDS: RFC 8551 (S/MIME 4.0), RFC 5652 (CMS), RFC 5083/5084
// (AuthEnvelopedData, AES-GCM), RFC 3183 (domain security), RFC 9788 (header protection).
#include "dataplane/smime/seal.h"

#include <openssl/bio.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <openssl/x509.h>
#include <openssl/asn1t.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <strings.h>

#include "dataplane/mime/parser.h"

namespace mailseal::smime {
namespace {

constexpr char kWrapper[] = "Content-Type: message/rfc822\r\n\r\n";

std::string SslError(std::string_view what) {
  unsigned long e = ERR_get_error();
  char buf[256] = "unknown error";
  if (e) ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return StrCat(what, ": ", buf);
}

struct BioDel { void operator()(BIO* b) const { BIO_free_all(b); } };
struct CmsDel { void operator()(CMS_ContentInfo* c) const { CMS_ContentInfo_free(c); } };
using BioPtr = std::unique_ptr<BIO, BioDel>;
using CmsPtr = std::unique_ptr<CMS_ContentInfo, CmsDel>;

BioPtr MemIn(const std::string& s) { return BioPtr(BIO_new_mem_buf(s.data(), static_cast<int>(s.size()))); }

std::string Drain(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return std::string(data, static_cast<size_t>(n));
}

std::string Der(CMS_ContentInfo* cms) {
  unsigned char* der = nullptr;
  int n = i2d_CMS_ContentInfo(cms, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(n > 0 ? n : 0));
  OPENSSL_free(der);
  return out;
}

std::string Base64Lines(const std::string& der) {
  std::string out;
  for (size_t off = 0; off < der.size(); off += 57) {  // 57 bytes -> 76 characters a line
    size_t n = std::min<size_t>(57, der.size() - off);
    unsigned char buf[80];
    int len = EVP_EncodeBlock(buf, reinterpret_cast<const unsigned char*>(der.data()) + off, static_cast<int>(n));
    out.append(reinterpret_cast<char*>(buf), static_cast<size_t>(len));
    out += "\r\n";
  }
  return out;
}

std::string Pkcs7Entity(const char* smime_type, const std::string& der) {
  return StrCat("Content-Type: application/pkcs7-mime; smime-type=", smime_type,
                "; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n"
                "Content-Disposition: attachment; filename=smime.p7m\r\n\r\n",
                Base64Lines(der));
}

}  // namespace

const std::vector<std::string>& OurCapabilities() {
  static const std::vector<std::string> kCaps = {"id-aes256-GCM", "id-aes128-GCM", "AES-256-CBC", "AES-192-CBC",
                                                 "AES-128-CBC"};
  return kCaps;
}

ContentCipher ChooseCipher(const std::vector<std::string>& caps) {
  for (const std::string& c : caps)
    if (c == "id-aes256-GCM" || c == "id-aes128-GCM" || c == "id-aes192-GCM") return ContentCipher::kAes256Gcm;
  return ContentCipher::kAes256Cbc;
}

Result<std::string> Seal(const std::string& message, const Signer& signer, const std::vector<X509*>& recipients,
                         const SealOptions& options) {
  if (!signer.cert || !signer.key) return InvalidArgumentError("no signer");
  if (recipients.empty()) return InvalidArgumentError("no recipient certificate");
  // The outer header: the routing fields of the original, byte-exact; the rest stays inside.
  mime::Parser parser;
  Status pst = parser.Feed(message);
  if (pst.ok()) pst = parser.Finish();
  if (!pst.ok()) return InvalidArgumentError(StrCat("message cannot be sealed: ", pst.message()));
  std::string outer;
  for (const mime::HeaderField& f : parser.parts()[0].headers) {
    for (const char* keep : {"From", "To", "Cc", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References"}) {
      if (f.name.size() == std::strlen(keep) && strncasecmp(f.name.c_str(), keep, f.name.size()) == 0) outer += f.raw;
    }
  }
  // 1. Sign the wrapped message (opaque signed-data; signer cert, chain, SMIMECapabilities).
  std::string inner = kWrapper + message;
  BioPtr in = MemIn(inner);
  STACK_OF(X509)* chain = sk_X509_new_null();
  for (X509* c : signer.chain) sk_X509_push(chain, c);
  // SMIMECapabilities: our own list (OpenSSL's default omits AES-GCM), strongest first.
  CmsPtr signed_cms(CMS_sign(nullptr, nullptr, chain, nullptr, CMS_BINARY | CMS_PARTIAL));
  sk_X509_free(chain);
  if (!signed_cms) return InternalError(SslError("signing failed"));
  CMS_SignerInfo* si = CMS_add1_signer(signed_cms.get(), signer.cert, signer.key, EVP_sha256(),
                                       CMS_BINARY | CMS_NOSMIMECAP);
  STACK_OF(X509_ALGOR)* caps = nullptr;
  bool caps_ok = si != nullptr;
  for (const std::string& name : OurCapabilities())
    caps_ok = caps_ok && CMS_add_simple_smimecap(&caps, OBJ_txt2nid(name.c_str()), -1) == 1;
  caps_ok = caps_ok && CMS_add_smimecap(si, caps) == 1;
  sk_X509_ALGOR_pop_free(caps, X509_ALGOR_free);
  if (!caps_ok || CMS_final(signed_cms.get(), in.get(), nullptr, CMS_BINARY) != 1)
    return InternalError(SslError("signing failed"));
  std::string signed_entity = Pkcs7Entity("signed-data", Der(signed_cms.get()));
  // 2. Envelope it for the partner's DCA.
  STACK_OF(X509)* recips = sk_X509_new_null();
  for (X509* r : recipients) sk_X509_push(recips, r);
  BioPtr sin = MemIn(signed_entity);
  const EVP_CIPHER* cipher = options.cipher == ContentCipher::kAes256Gcm ? EVP_aes_256_gcm() : EVP_aes_256_cbc();
  CmsPtr env(CMS_encrypt(recips, sin.get(), cipher, CMS_BINARY));
  sk_X509_free(recips);
  if (!env) return InternalError(SslError("encryption failed"));
  const char* type = options.cipher == ContentCipher::kAes256Gcm ? "authEnveloped-data" : "enveloped-data";
  return StrCat(outer, "Subject: ", options.outer_subject, "\r\nMIME-Version: 1.0\r\n", Pkcs7Entity(type, Der(env.get())));
}

Result<Opened> Open(const std::string& sealed, const Recipient& us, X509_STORE* trust) {
  Opened out;
  BioPtr in = MemIn(sealed);
  BIO* content = nullptr;
  CmsPtr env(SMIME_read_CMS(in.get(), &content));
  if (content) BIO_free(content);
  if (!env) return InvalidArgumentError(SslError("not an S/MIME message"));
  int type = OBJ_obj2nid(CMS_get0_type(env.get()));
  if (type != NID_pkcs7_enveloped && type != NID_id_smime_ct_authEnvelopedData)
    return InvalidArgumentError("the message is not encrypted (no enveloped or authEnveloped data)");
  out.cipher = type == NID_id_smime_ct_authEnvelopedData ? "authEnveloped-data" : "enveloped-data";
  BioPtr dec(BIO_new(BIO_s_mem()));
  if (CMS_decrypt(env.get(), us.key, us.cert, nullptr, dec.get(), CMS_BINARY) != 1)
    return Status(StatusCode::kPermissionDenied, SslError("cannot decrypt for our domain"));
  std::string entity = Drain(dec.get());
  BioPtr ein = MemIn(entity);
  BIO* detached = nullptr;
  CmsPtr sig(SMIME_read_CMS(ein.get(), &detached));
  BioPtr detached_owner(detached);
  if (!sig) return InvalidArgumentError(SslError("decrypted content is not signed S/MIME"));
  BioPtr verified(BIO_new(BIO_s_mem()));
  if (CMS_verify(sig.get(), nullptr, trust, detached, verified.get(), CMS_BINARY) != 1)
    return Status(StatusCode::kPermissionDenied, SslError("the signature does not verify"));
  out.signed_ok = true;
  STACK_OF(X509)* signers = CMS_get0_signers(sig.get());
  if (signers && sk_X509_num(signers) > 0) {
    X509* s = sk_X509_value(signers, 0);
    char name[512];
    X509_NAME_oneline(X509_get_subject_name(s), name, sizeof name);
    out.signer_subject = name;
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(s, NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans, i);
      if (g->type == GEN_EMAIL)
        out.signer_emails.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.rfc822Name)),
                                       static_cast<size_t>(ASN1_STRING_length(g->d.rfc822Name)));
    }
    GENERAL_NAMES_free(sans);
  }
  sk_X509_free(signers);
  // The signer's SMIMECapabilities, to learn what the partner can read.
  STACK_OF(CMS_SignerInfo)* infos = CMS_get0_SignerInfos(sig.get());
  if (infos && sk_CMS_SignerInfo_num(infos) > 0) {
    STACK_OF(X509_ALGOR)* algs = nullptr;
    X509_ATTRIBUTE* attr = CMS_signed_get_attr(
        sk_CMS_SignerInfo_value(infos, 0),
        CMS_signed_get_attr_by_NID(sk_CMS_SignerInfo_value(infos, 0), NID_SMIMECapabilities, -1));
    ASN1_TYPE* t = attr ? X509_ATTRIBUTE_get0_type(attr, 0) : nullptr;
    if (t && t->type == V_ASN1_SEQUENCE) {
      const unsigned char* p = t->value.sequence->data;
      algs = reinterpret_cast<STACK_OF(X509_ALGOR)*>(ASN1_item_d2i(nullptr, &p, t->value.sequence->length,
                                                                   ASN1_ITEM_rptr(X509_ALGORS)));
    }
    for (int i = 0; algs && i < sk_X509_ALGOR_num(algs) && i < 64; ++i) {
      const ASN1_OBJECT* obj = nullptr;
      X509_ALGOR_get0(&obj, nullptr, nullptr, sk_X509_ALGOR_value(algs, i));
      int nid = OBJ_obj2nid(obj);
      char oid[80];
      OBJ_obj2txt(oid, sizeof oid, obj, 1);
      out.capabilities.emplace_back(nid != NID_undef ? OBJ_nid2sn(nid) : oid);
    }
    sk_X509_ALGOR_pop_free(algs, X509_ALGOR_free);
  }
  std::string body = Drain(verified.get());
  // Unwrap our message/rfc822 entity; anything else is returned as the entity it is.
  mime::Parser p;
  Status pst = p.Feed(body);
  if (pst.ok()) pst = p.Finish();
  if (pst.ok() && p.parts()[0].type == "message" && p.parts()[0].subtype == "rfc822") {
    out.message = body.substr(p.parts()[0].body_begin);
  } else {
    out.message = body;
  }
  return out;
}

}  // namespace mailseal::smime
