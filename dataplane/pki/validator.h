// validator.h — the one certificate path validator (issue #15): the send path, the receive
// path, the management API and the CLI all decide with it, so they cannot disagree.
//
// Validation is OpenSSL's RFC 5280 verifier with the project's inputs made explicit: trust
// anchors only from the managed trust list (never the operating system's store), untrusted
// intermediates from the message or the certificate store in any order (OpenSSL builds the
// path), key usage and extended key usage for the purpose (S/MIME signing or encryption:
// digitalSignature / keyEncipherment with emailProtection), name constraints, certificate
// policies when the caller asks (initial policy set, explicit policy, inhibit policy mapping,
// inhibit anyPolicy), revocation from CRLs for every certificate of the path, and the validation
// time chosen by the caller (now for sending; for receiving the signing time, bounded by now).
// Every problem found is collected (the verifier goes on after the first), mapped to the
// SEE-2.8 statuses, and the worst one decides; its reason names the certificate and what is
// wrong with it, in words an operator can act on.
//
// SECURITY: inputs are certificates and CRLs from outside (messages, LDAP, HTTP, operators).
// The anchors are the only trusted input. Bounded: at most kMaxUntrusted intermediates and
// kMaxCrls CRLs are considered per request (more are refused with a reason), paths at most
// kMaxDepth long. Nothing here does I/O.
//
// STANDARDS: RFC 5280 §6 (path validation), §4.2.1.3/§4.2.1.12 (key usage, EKU), §4.2.1.10
// (name constraints), §6.1 policy processing, §6.3 (CRL validation); RFC 8550 §4.4 (S/MIME
// certificate purposes); REQUIREMENTS.md §3 SEE-2.7, SEE-2.8.
#pragma once

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dataplane/base/status.h"

namespace mailseal::pki {

// Verdict, in the terms of the SEE-2.8 table; ordered from best to worst (the worst decides).
enum class Verdict {
  kValid,           // chains to a trust anchor, in date, not revoked, fit for the purpose
  kStatusUnknown,   // revocation could not be checked (no CRL, CRL expired or unusable)
  kExpired,         // a certificate of the path has expired
  kNotYetValid,     // a certificate of the path is not valid yet
  kUntrusted,       // no path to a trust anchor, or the path breaks a rule (signature, usage,
                    // constraints, policy): not to be relied on
  kRevoked,         // a certificate of the path is revoked
};
const char* VerdictName(Verdict v);   // "valid", "status unknown", "expired", ...

enum class Purpose {
  kAny,           // only the path (key usage and EKU not checked): PKITS, CA certificates
  kSmimeSign,     // digitalSignature/nonRepudiation, EKU emailProtection if present
  kSmimeEncrypt,  // keyEncipherment (RSA) / keyAgreement, EKU emailProtection if present
  kTlsServer,     // serverAuth (x509-limbo SERVER cases; authenticated delivery)
  kTlsClient,     // clientAuth (management API clients)
};

constexpr int kMaxUntrusted = 64;
constexpr int kMaxCrls = 256;
constexpr int kMaxDepth = 16;

using X509Ptr = std::shared_ptr<X509>;
using CrlPtr = std::shared_ptr<X509_CRL>;
X509Ptr Own(X509* owned);          // takes the reference
CrlPtr Own(X509_CRL* owned);

// Policy: RFC 5280 §6.1.1 inputs (c)-(f). Empty initial_policy_set = {anyPolicy}.
struct Policy {
  bool check = false;                        // run policy processing at all
  std::vector<std::string> initial_policy_set;   // dotted OIDs
  bool explicit_policy = false;
  bool inhibit_mapping = false;
  bool inhibit_any = false;
};

struct Request {
  X509* leaf = nullptr;
  std::vector<X509*> untrusted;     // candidate intermediates, any order (message, store)
  std::vector<X509_CRL*> crls;      // CRLs beyond the trust list's (message, cache)
  int64_t at_unix = 0;              // validation time; 0: now
  Purpose purpose = Purpose::kAny;
  Policy policy;
  bool revocation = false;          // check every certificate of the path against CRLs
  bool delta_crls = false;          // use delta CRLs (RFC 5280 §5.2.4) when given
  int max_depth = kMaxDepth;        // intermediates allowed between leaf and anchor
  std::string email, host, ip;      // name the leaf must carry (rfc822Name / dNSName / iPAddress)
};

struct Outcome {
  Verdict verdict = Verdict::kUntrusted;
  std::string reason;               // "" when valid; else which certificate and what is wrong
  int error = X509_V_OK;            // OpenSSL's code of the deciding problem
  std::vector<X509Ptr> chain;       // the path built, leaf first, anchor last (when one was)
  std::vector<std::string> user_constrained_policies;   // RFC 5280 §6.1.6 output (dotted OIDs)
  bool ok() const { return verdict == Verdict::kValid; }
};

// TrustList: the managed trust anchors and the CRLs that come with them. Immutable once built
// (a reload builds a new one and swaps a shared_ptr), so validation needs no lock.
class TrustList {
 public:
  TrustList();
  ~TrustList();
  TrustList(const TrustList&) = delete;
  TrustList& operator=(const TrustList&) = delete;

  // Add an anchor / a CRL (DER or PEM files; LoadFile takes every certificate and CRL in a
  // file, PEM bundle or single DER). Refused with a reason when nothing usable is in it.
  [[nodiscard]] Status AddAnchor(X509* cert);
  [[nodiscard]] Status AddCrl(X509_CRL* crl);
  [[nodiscard]] Status LoadFile(const std::string& path, bool anchors, bool crls);
  size_t anchors() const { return anchors_.size(); }
  size_t crls() const { return crls_.size(); }
  const std::vector<X509Ptr>& anchor_list() const { return anchors_; }
  X509_STORE* store() const { return store_; }

 private:
  X509_STORE* store_;
  std::vector<X509Ptr> anchors_;
  std::vector<CrlPtr> crls_;
};

// Validate decides one certificate. Never fails: bad input is a verdict with its reason.
Outcome Validate(const TrustList& trust, const Request& request);
// The same against an OpenSSL store the caller built (anchors and CRLs only; its flags add to
// the request's): for callers that hold a store already (the S/MIME layer, tests).
Outcome Validate(X509_STORE* store, const Request& request);

// Reading certificates and CRLs from outside (files, LDAP, HTTP bodies): DER or PEM, at most
// `max` objects; the reason when none can be read.
Result<std::vector<X509Ptr>> ParseCertificates(std::string_view data, size_t max = kMaxUntrusted);
Result<std::vector<CrlPtr>> ParseCrls(std::string_view data, size_t max = kMaxCrls);

// Describe: "CN=DCA,O=Agency B (serial 0x1f)" — how reasons name a certificate.
std::string Describe(X509* cert);
// SubjectOf: the subject in one line; SerialHex: the serial in hex ("1F").
std::string SubjectOf(X509* cert);
std::string SerialHex(X509* cert);
// UnixTime: an ASN.1 time in seconds since the epoch; 0 when it cannot be read.
int64_t UnixTime(const ASN1_TIME* t);

}  // namespace mailseal::pki
