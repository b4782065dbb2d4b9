// seal.h — domain-level S/MIME (RFC 3183 with RFC 8551 messages, RFC 5652/5083 CMS): seal a
// whole message for a partner domain, and open one sealed for us. Issue #4, first part: the
// CMS core over OpenSSL. Keys come as EVP_PKEYs (HSM keys through hsm/openssl_bridge.h).
//
// Sealed form: the original message, headers and all, becomes a message/rfc822 entity (so its
// header is protected), which is signed as opaque signed-data by our DSA (signer certificate,
// chain and SMIMECapabilities included, SEE-2.9), and that is enveloped for the partner's DCA
// (AuthEnvelopedData AES-256-GCM by default, EnvelopedData AES-256-CBC for partners that only
// announce that; never 3DES, SEE-2.4). The outer message carries From, To, Cc, Date,
// Message-ID and a placeholder Subject.
//
// SECURITY: everything opened is untrusted until the signature verifies against the trust
// store; a verdict says exactly what held. Sizes are bounded by the caller (SMTP limits).
//
// STANDARDS: RFC 5652 (CMS), RFC 5083/5084 (AuthEnvelopedData, AES-GCM), RFC 8551 (S/MIME 4.0),
// RFC 3183 (domain security), RFC 8017 (RSA-OAEP, PKCS#1 v1.5), RFC 9788 (header protection).
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::smime {

enum class ContentCipher { kAes256Gcm, kAes128Gcm, kAes256Cbc, kAes192Cbc, kAes128Cbc };
// CipherName: "AES-256-GCM", ... for logs and marks.
const char* CipherName(ContentCipher c);
inline bool IsAead(ContentCipher c) { return c == ContentCipher::kAes256Gcm || c == ContentCipher::kAes128Gcm; }

struct Signer {
  X509* cert = nullptr;             // our DSA certificate
  EVP_PKEY* key = nullptr;          // its private key (in the HSM)
  std::vector<X509*> chain;         // intermediates to include
};

// Key transport to an RSA recipient: RSAES-OAEP (SHA-256, MGF1-SHA-256) when the partner
// announced it (RFC 8551 §2.3), else PKCS#1 v1.5. EC recipients always get ECDH (RFC 5753).
enum class KeyTransport { kRsaPkcs1, kRsaOaep };

struct SealOptions {
  ContentCipher cipher = ContentCipher::kAes256Gcm;
  KeyTransport key_transport = KeyTransport::kRsaPkcs1;
  std::string outer_subject = "[...]";  // RFC 9788's obscured Subject
  bool triple_wrap = false;     // sign, encrypt, sign again (RFC 2634 / RFC 3183 triple wrap)
  // detached_signature: the inner signature as multipart/signed (RFC 8551 §3.5.3) over the
  // canonical 7-bit form of the wrapped message (mime::ToSevenBit), readable by agents that
  // do not understand pkcs7-mime once decrypted. When the message cannot be made 7-bit
  // without touching a user's signed part, opaque signed-data is used instead.
  bool detached_signature = false;
  // sign_only: no envelope (no recipient certificate needed): the wrapped message is signed by
  // our DSA and readable by anyone; the outer Subject is then the real one (SEE-2.9 "sign").
  bool sign_only = false;
  // trace: header fields put first on the outer message — our own Received: field, so that
  // the sealed message still records this hop (RFC 5321 §4.4). Empty: none.
  std::string trace;
};

// Seal: `message` is an RFC 5322 message with CRLF line ends.
Result<std::string> Seal(const std::string& message, const Signer& signer,
                         const std::vector<X509*>& recipients, const SealOptions& options = SealOptions());

using X509Ref = std::shared_ptr<X509>;
X509Ref Ref(X509* owned);       // takes ownership
X509Ref RefUp(X509* borrowed);  // takes a new reference

// CertStatus of a signer certificate, in the terms of the SEE-2.8 table (receiving column).
enum class CertStatus {
  kValid,           // chains to a trust anchor, in date, not revoked: pass
  kStatusUnknown,   // revocation could not be checked (no CRL): SOFT warning
  kExpired,         // expired: SOFT warning
  kNotYetValid,     // not valid yet (a clock apart, or issued ahead): SOFT warning of its own
  kUnknownCa,       // no path to a trust anchor, or otherwise invalid: HARD warning
  kRevoked,         // revoked or suspended: HARD warning
};
const char* CertStatusName(CertStatus s);

struct Opened {
  std::string message;          // the original message, byte-exact
  std::vector<std::string> capabilities;  // the signer's SMIMECapabilities (OpenSSL short names
                                          // or dotted OIDs), in
                                          // its order of preference (learnt per domain, SEE-2.4)
  bool signed_ok = false;       // every signature verified and its certificate is kValid
  bool signature_ok = false;    // at least one signature layer, and every one's math verified
  CertStatus cert_status = CertStatus::kValid;  // the worst of every signer's
  std::string cert_detail;      // OpenSSL's reason for the worst status, for logs
  X509Ref signer_cert;          // of the innermost signature
  std::vector<X509Ref> certs;   // every certificate carried by the signed layers (harvest)
  std::string signer_subject;   // of the signing certificate
  std::vector<std::string> signer_emails;   // its rfc822Name SANs
  // weak_digest: "SHA1" (legacy, accepted to read old mail and marked so, SEE-2.4) or "MD5"
  // (broken) when some signature of the message used it; empty: SHA-2 throughout.
  std::string weak_digest;
  std::string cipher;           // "authEnveloped-data", "enveloped-data"; empty: not encrypted
  std::vector<std::string> layers;  // outermost first: "signed-data", "authEnveloped-data"...
  bool rfc822 = false;          // the content was a whole message (message/rfc822), so its
                                // header is the protected original; else `message` is a MIME
                                // entity that goes under the outer header
};

struct OpenOptions {
  // domain_layers_only: peel only a gateway's layers — enveloped data with a recipient info
  // for our DCA, signed data whose signer is a domain-signing-authority (RFC 3183) — and keep
  // a user's own S/MIME intact (SEE-AG-2). Nothing for us at the top: FAILED_PRECONDITION.
  bool domain_layers_only = false;
};

struct Recipient {
  Recipient() = default;
  Recipient(X509* c, EVP_PKEY* k) : cert(c), key(k) {}
  X509* cert = nullptr;         // our DCA certificate
  EVP_PKEY* key = nullptr;      // its private key (in the HSM)
  // Our previous DCA certificates and keys (still on the token after a rollover): mail a
  // partner sealed to the old certificate before it learnt the new one still opens. Each
  // enveloped layer is opened with the pair its recipient info names.
  std::vector<std::pair<X509*, EVP_PKEY*>> previous;
};

// ChooseCipher picks the strongest content cipher the partner announced (SEE-2.4, RFC 8551
// §2.7.1.1): the first of ours (AES-256-GCM, AES-128-GCM, AES-256-CBC, AES-192-CBC,
// AES-128-CBC) that its SMIMECapabilities list — a partner that announced only AES-128-CBC
// gets AES-128-CBC. Never 3DES: a partner that announced none of ours gets AES-128-CBC, which
// every S/MIME 4.0 agent must read (RFC 8551 §2.7). No capabilities known: AES-256-CBC.
ContentCipher ChooseCipher(const std::vector<std::string>& capabilities);

// OurCapabilities: what Seal announces, strongest first.
const std::vector<std::string>& OurCapabilities();

// KeyTransportFor: OAEP when the partner announced RSAES-OAEP.
KeyTransport KeyTransportFor(const std::vector<std::string>& capabilities);

// Open peels every S/MIME layer (signed, encrypted, triple wrapped; at most 4): decrypts with
// `us`, verifies each signature and then its certificate's path to `trust` (a store with the
// trust anchors, and CRLs when the caller set X509_V_FLAG_CRL_CHECK), and returns the original
// message. A signature whose math fails (tampered content, wrong key) is an error
// (PERMISSION_DENIED); so is a signature whose certificate is neither in the message nor in
// `known` (NOT_FOUND). A certificate that is expired, revoked or from an unknown CA does not
// fail the open: cert_status says which (the SEE-2.8 table decides the warning). A message
// that was only encrypted opens with signed_ok == false (never a "verified" mark it did not
// earn). `us.key` may be null when no layer is encrypted.
Result<Opened> Open(const std::string& sealed, const Recipient& us, X509_STORE* trust,
                    const std::vector<X509*>& known = {}, const OpenOptions& options = OpenOptions());

// IsSmimeEntity: whether an entity's own Content-Type is an S/MIME layer.
bool IsSmimeEntity(const std::string& entity);

// CheckPath: a certificate's status for `purpose` (X509_PURPOSE_SMIME_SIGN / _ENCRYPT) against
// the trust store, with `untrusted` as path candidates, at `at_unix` (0: now); the reason for logs.
std::pair<CertStatus, std::string> CheckPath(X509* cert, const std::vector<X509*>& untrusted, X509_STORE* trust,
                                             int purpose, int64_t at_unix = 0);

}  // namespace mailseal::smime
