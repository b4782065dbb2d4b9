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
#pragma once

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::smime {

enum class ContentCipher { kAes256Gcm, kAes256Cbc };

struct Signer {
  X509* cert = nullptr;             // our DSA certificate
  EVP_PKEY* key = nullptr;          // its private key (in the HSM)
  std::vector<X509*> chain;         // intermediates to include
};

struct SealOptions {
  ContentCipher cipher = ContentCipher::kAes256Gcm;
  std::string outer_subject = "[sealed by the sending domain]";  // RFC 9788 placeholder
  bool triple_wrap = false;     // sign, encrypt, sign again (RFC 2634 / RFC 3183 triple wrap)
};

// Seal: `message` is an RFC 5322 message with CRLF line ends.
Result<std::string> Seal(const std::string& message, const Signer& signer,
                         const std::vector<X509*>& recipients, const SealOptions& options = SealOptions());

struct Opened {
  std::string message;          // the original message, byte-exact
  std::vector<std::string> capabilities;  // the signer's SMIMECapabilities (OpenSSL short names
                                          // or dotted OIDs), in
                                          // its order of preference (learnt per domain, SEE-2.4)
  bool signed_ok = false;       // a signature verified against the trust store
  std::string signer_subject;   // of the signing certificate
  std::vector<std::string> signer_emails;   // its rfc822Name SANs
  std::string cipher;           // "authEnveloped-data", "enveloped-data"; empty: not encrypted
  std::vector<std::string> layers;  // outermost first: "signed-data", "authEnveloped-data"...
};

struct Recipient {
  X509* cert = nullptr;         // our DCA certificate
  EVP_PKEY* key = nullptr;      // its private key (in the HSM)
};

// ChooseCipher picks the strongest content cipher a partner announced (SEE-2.4): AES-256-GCM
// when it lists an AES-GCM algorithm, else AES-256-CBC (every S/MIME 3.2+ agent reads it).
// Never 3DES, whatever the partner lists. No capabilities known: AES-256-CBC, readable by all.
ContentCipher ChooseCipher(const std::vector<std::string>& capabilities);

// OurCapabilities: what Seal announces, strongest first.
const std::vector<std::string>& OurCapabilities();

// Open peels every S/MIME layer (signed, encrypted, triple wrapped; at most 4): decrypts with
// `us`, verifies each signature with `trust` (a store with the trust anchors), and returns the
// original message. A signature that does not verify is an error naming why; a message that
// was only encrypted opens with signed_ok == false (never a "verified" mark it did not earn).
Result<Opened> Open(const std::string& sealed, const Recipient& us, X509_STORE* trust);

}  // namespace mailseal::smime
