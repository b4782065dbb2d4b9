// lifecycle.h — the life of a gateway key: certificate installation, age and expiry rules
// (SEE-2.3), activation with an overlap period, and destruction.
//
// Rules (REQUIREMENTS.md §6, SEE-2.3, SEE-2.6):
//  - A certificate is installed only if its public key is the token key's, its names follow
//    RFC 3183 (CN and one rfc822Name "<authority>@<domain>" per served domain), its key usage
//    fits the purpose, it chains to a trust anchor, it is valid now and it lasts at most
//    13 months. It is stored on the token with the key's CKA_ID and label.
//  - A key older than 4 years gets no new CSR; a key older than 5 years may not sign.
//  - Expiry warnings at 30, 14, 7 and 1 days before notAfter.
#pragma once

#include <openssl/x509.h>

#include <cstdint>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/keys.h"

namespace mailseal::hsm {

constexpr int64_t kDay = 86400;
constexpr int64_t kMaxCertLifetimeS = 396 * kDay;       // 13 months
constexpr int64_t kKeyRecertifyLimitS = 4 * 365 * kDay + kDay;   // 4 years (with a leap day)
constexpr int64_t kKeyUseLimitS = 5 * 365 * kDay + 2 * kDay;     // 5 years

struct InstallRequest {
  std::string key_label;
  std::string cert_pem;
  std::vector<std::string> chain_pem;     // intermediates, may be empty
  std::vector<std::string> anchors_pem;   // trust anchors (the managed trust list)
  std::vector<std::string> domains;       // served domains that must all be named
  int64_t now_unix_s = 0;                 // 0: now
};

// InstallCertificate checks the certificate against the rules above and stores it.
// Returns the certificate's object handle.
Result<CK_OBJECT_HANDLE> InstallCertificate(Session& s, const InstallRequest& req);

// KeyAgeSeconds: now minus the key's CKA_START_DATE.
Result<int64_t> KeyAgeSeconds(Session& s, const KeyPair& key, int64_t now_unix_s = 0);
// CheckMayRecertify: refuses a CSR for a key older than 4 years (SEE-2.3).
Status CheckMayRecertify(Session& s, const KeyPair& key, int64_t now_unix_s = 0);
// CheckMaySign: refuses signing with a key older than 5 years (SEE-2.3).
Status CheckMaySign(Session& s, const KeyPair& key, int64_t now_unix_s = 0);

// ExpiryWarning: the warning due for a certificate valid until `not_after`: 30, 14, 7 or 1
// (days) when that threshold has been crossed, 0 when none, -1 when expired.
int ExpiryWarning(int64_t not_after_unix_s, int64_t now_unix_s);

// KeyInfo: what the management API shows of a key pair on the token (no secret).
struct KeyInfo {
  std::string label;
  Purpose purpose = Purpose::kDsaSign;
  std::string id_hex;
  std::string key_type;             // "rsa:2048", "ec:P-256"
  int64_t created_unix_s = 0;       // CKA_START_DATE
  std::string cert_subject;         // empty: no certificate installed
  int64_t cert_not_after_unix_s = 0;
};
// ListKeys: every private key's pair on the token, with its certificate if one is stored.
Result<std::vector<KeyInfo>> ListKeys(Session& s);

// StoredCertificate: the DER certificate stored beside the key pair (InstallCertificate);
// NotFound when none is.
Result<std::string> StoredCertificate(Session& s, const KeyPair& key);

// DestroyKeyPair removes the private key, public key and certificate with the pair's CKA_ID.
Status DestroyKeyPair(Session& s, const KeyPair& key);

// KeyRing: which keys are active, and which old decryption keys still open mail in flight.
struct RetiredKey {
  std::string label;
  int64_t decrypt_until_unix_s = 0;   // overlap end; destroyed after it
  bool compromised = false;           // never used to sign; decrypts only within the overlap
};
struct KeyRing {
  std::string active_dsa;             // signs outbound mail
  std::string active_dca;             // decrypts inbound mail (newest certificate)
  std::vector<RetiredKey> retired;

  // Activate makes `label` the active key of its purpose; the previous one, if any, keeps
  // decrypting (DCA) for `overlap_s`.
  void Activate(Purpose purpose, const std::string& label, int64_t now_unix_s, int64_t overlap_s);
  // DecryptCandidates: the DCA keys to try for inbound mail, newest first.
  std::vector<std::string> DecryptCandidates(int64_t now_unix_s) const;
  // ExpiredRetirees: retired keys whose overlap has ended (to destroy on the token).
  std::vector<std::string> ExpiredRetirees(int64_t now_unix_s) const;
  // MarkCompromised: the key stops signing at once; as a DCA it decrypts only in flight.
  void MarkCompromised(const std::string& label, int64_t now_unix_s, int64_t in_flight_s);
};

class OpenSslBridge;
struct CsrRequest;

// Compromise procedure (SEE-1.9b), first half: the compromised key stops signing at once (and
// as a DCA decrypts only mail already in flight), a new key pair is generated in the HSM and a
// CSR for it is returned for the CA. Second half, when the CA answers: InstallCertificate,
// then KeyRing::Activate. (Announcing the new certificate by LDAP and signed mail comes with
// the PKI issue.)
struct Replacement {
  KeyPair key;
  std::string csr_pem;
};
Result<Replacement> BeginCompromiseRecovery(Session& s, OpenSslBridge& bridge, const std::string& token_label,
                                            KeyRing& ring, const std::string& compromised_label,
                                            const KeyPairSpec& new_key, const CsrRequest& csr,
                                            int64_t now_unix_s, int64_t in_flight_s);

}  // namespace mailseal::hsm
