// gateway.h — what the crypto stage does with one message (RFC 3183 domain security).
//
// Sans-I/O: given the envelope's addresses and the message, Process returns one Output per
// group of recipients: mail for partner domains sealed once per domain (signed by our DSA,
// encrypted to that domain's DCA, SEE-AG-3/2.9), mail for our own domains opened (decrypted,
// every signature and certificate checked, RFC 3183 naming checked, marked with an
// Authentication-Results header and, where the SEE-2.8 table says so, a HARD or SOFT warning
// in the Subject), and everything else passed unchanged (SEE-AG-1). The caller (the crypto
// worker) turns outputs into spool copies.
//
// SECURITY (fail closed): mail for a partner is never passed in clear — no valid DCA
// certificate holds it; a token failure defers it. Inbound mail whose signature fails, that
// cannot be decrypted, or is malformed is held with the reason, never delivered with a mark it
// did not earn. A forged Authentication-Results bearing our authserv-id is removed first
// (RFC 8601 §5). A user's own S/MIME inside is never altered (SEE-AG-2).
//
// STANDARDS: RFC 3183, RFC 8551, RFC 8601 (Authentication-Results), RFC 9788.
#pragma once

#include <openssl/evp.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "dataplane/policy/classify.h"
#include "dataplane/smime/cert_store.h"
#include "dataplane/smime/seal.h"

namespace mailseal::smime {

struct PartnerPolicy {
  bool triple_wrap = false;
  bool detached_signature = false;
};

struct GatewayPolicy {
  std::vector<std::string> local_domains;          // lower case; ".x" matches sub-domains
  std::map<std::string, PartnerPolicy> partners;   // lower-case domain (covers sub-domains)
  bool seal_when_known = false;
  std::string outer_subject = "[...]";   // RFC 9788's obscured Subject
  bool keep_subject = false;
  bool show_classification = false;   // the Subject's classification word stays visible
  std::string authserv_id;
  // seemail-ping (SEE-2.14): what the reply says about us.
  std::string gateway_name;            // our host name
  std::string product_version = "mailseal 0.1.0";
  std::string seemail_version = "2.2";   // SEE business requirements v2.2 (config: smime.seemail_version)
};

// PingLimiter: seemail-ping replies at most one per `per_domain_s` per sender domain and
// `per_minute` in all (no reflector, no storm). Shared by every crypto worker.
class PingLimiter {
 public:
  PingLimiter(int64_t per_domain_s = 60, uint32_t per_minute = 30) : per_domain_ms_(per_domain_s * 1000), per_minute_(per_minute) {}
  bool Allow(const std::string& domain, int64_t now_ms);

 private:
  std::mutex mu_;
  int64_t per_domain_ms_;
  uint32_t per_minute_;
  std::map<std::string, int64_t> last_;   // bounded: entries older than per_domain_ms_ are dropped
  std::vector<int64_t> minute_;
};

// GatewayKeys: our certificates and the worker's session-bound token keys (not owned).
struct GatewayKeys {
  X509Ref dsa_cert, dca_cert;
  std::vector<X509Ref> chain;
  EVP_PKEY* dsa_key = nullptr;
  EVP_PKEY* dca_key = nullptr;
  // Previous DCA pairs (after a key rollover): inbound mail sealed to them still opens.
  std::vector<std::pair<X509Ref, EVP_PKEY*>> previous_dca;
  // unusable: why a key or certificate above is missing when the token itself is up (e.g. the
  // domain keys are not made yet); empty: the security module is unavailable.
  std::string unusable;
};

enum class Action {
  kPass,      // recipients stay on the original, unchanged
  kDeliver,   // a new body (sealed or opened) goes to these recipients
  kHold,      // a copy goes to hold/ with `reason`; nothing is delivered
  kTempFail,  // try the whole message again later (token unavailable)
  kConsume,   // the recipients are done with; nothing is delivered to them (a seemail-ping probe)
};
const char* ActionName(Action a);

// Inbound: who handed the message to us and how (from the spool envelope), for SEE 2.11's
// rulesets and the authentication level (SM-8.2).
struct Inbound {
  std::string client_address;   // "ip:port"
  std::string helo;
  std::string tls;              // "TLSv1.3 TLS_AES_256_GCM_SHA384"; empty: in clear
  std::string spf_result;       // RFC 7208 result; empty: not checked
  std::string spf_domain;
};

// kAuthLevelHeader carries SM-8.2's authentication level of inbound mail: "signed+verified"
// (a domain signature that verified), "tls+spf" (over TLS from a client SPF lets send for the
// sender's domain) or "none". Any copy arriving from outside is removed first.
inline constexpr char kAuthLevelHeader[] = "X-Mailseal-Auth-Level";

// Treatment: what was done to a kDeliver body, for the typed audit event (never derived from
// the `protection` text).
enum class Treatment {
  kNone,
  kSealed,     // signed and encrypted for a partner domain
  kSigned,     // signed only (a partner whose certificate is not known yet)
  kOpened,     // inbound: domain layers removed, verified and marked
  kMarked,     // inbound, no domain S/MIME: marked and passed on
  kPingReply,  // a seemail-ping reply of our own
  kCertAnswer, // our certificate sent to a domain-certificate-request@ (SEE-2.8b)
};

struct Output {
  Action action = Action::kPass;
  Treatment treatment = Treatment::kNone;
  bool warned = false;        // the administrator is told (digested): kOpened with a signature that failed,
                              // or kSealed to a certificate whose status could not be checked (SEE-2.8)
  uint64_t policy_version = 0;   // of the decision (0: none applied)
  std::vector<uint32_t> rcpts;
  std::string body;
  std::string reason;       // for hold/, the log and the audit trail
  std::string cert_domain;  // kHold for want of a usable certificate of this partner domain: released
                            // automatically when one turns up (learnt, discovered, pinned)
  std::string protection;   // what was done ("sealed for agency-b.test (authEnveloped-data)")
  // A message of our own instead of the original (seemail-ping reply): its envelope, and that
  // it must leave sealed. Empty envelope_to: the original's envelope.
  std::string envelope_from, envelope_to;
  bool require_seal = false;
  bool require_signature = false;   // a certificate answer: signed, sealed when their certificate is known
};

// Plan: the policy decision for one message, typed — where each recipient goes and why — made
// before any key is used (Decide) and carried out after (Execute).
struct Plan {
  std::map<std::string, std::vector<uint32_t>> pings;   // seemail-ping@ probes, by the address
  std::map<std::string, std::vector<uint32_t>> cert_requests;   // domain-certificate-request@ (SEE-2.8b)
  std::vector<uint32_t> local;                          // our own domains
  bool open_local = true;                               // false: no smime section, passed as is
  struct Group {
    std::string domain;
    policy::Decision decision;                          // protection, reason, triple wrap
    std::vector<uint32_t> rcpts;
  };
  std::vector<Group> remote;                            // one per (domain, protection, wrap)
  std::string classification;                           // "[RESTRICTED]", or "" (outbound only)
  uint64_t policy_version = 0;
};

class Gateway {
 public:
  Gateway(const GatewayPolicy* policy, CertStore* store, PingLimiter* ping_limiter = nullptr)
      : policy_(policy), store_(store), ping_limiter_(ping_limiter) {}
  // Process: `recipients` are the envelope's addresses in index order; `sender` the reverse
  // path. `keys` may have null keys when the token is unavailable (sealing then defers).
  // `doc` is the compiled policy document (lists, rules, trigger words; issue #6); null: an
  // empty one — classified mail then goes only to configured partners (SEE-2.1b).
  std::vector<Output> Process(const std::string& sender, const std::vector<std::string>& recipients,
                              const std::string& message, const GatewayKeys& keys,
                              const policy::CompiledPolicy* doc = nullptr, bool require_seal = false,
                              const Inbound* inbound = nullptr) const;

  // Decide: the policy stage's typed decision (no key, no I/O); Execute carries it out.
  // `require_signature`: a certificate request or answer of our own (remote recipients get it
  // signed, sealed when their certificate is known, never held for want of it).
  Plan Decide(const std::string& sender, const std::vector<std::string>& recipients, const std::string& message,
              const policy::CompiledPolicy* doc = nullptr, bool require_seal = false,
              bool require_signature = false) const;
  std::vector<Output> Execute(const Plan& plan, const std::string& sender, const std::string& message,
                              const GatewayKeys& keys, const policy::CompiledPolicy* doc = nullptr,
                              const Inbound* inbound = nullptr) const;

  bool IsLocal(const std::string& domain) const;
  // PartnerFor: the partner entry covering `domain`, or null.
  const PartnerPolicy* PartnerFor(const std::string& domain) const;

 private:
  Output Seal1(const std::string& domain, std::vector<uint32_t> rcpts, const std::string& message,
               const GatewayKeys& keys, const policy::Decision& decision, const std::string& classification) const;
  Output Open1(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& message,
               const GatewayKeys& keys, const policy::CompiledPolicy* doc = nullptr, const Inbound* inbound = nullptr,
               bool* verified = nullptr, bool* encrypted = nullptr) const;
  Output Ping(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& ping_address,
              const std::string& message, const GatewayKeys& keys, const policy::CompiledPolicy& doc) const;
  Output CertRequest(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& address,
                     const std::string& message, const GatewayKeys& keys) const;

  const GatewayPolicy* policy_;
  CertStore* store_;
  PingLimiter* ping_limiter_;
};

// ClassificationWord: the first SEE-2.1 classification word in `subject` ("[RESTRICTED]",
// normalised to upper case with square brackets), or "" when none (policy::FindTriggerWord
// with the default words).
std::string ClassificationWord(std::string_view subject);

// CertificatesIn: the certificates attached to a message (a SEE-2.8b answer): parts typed
// application/pkix-cert, application/x-x509-ca-cert, application/x-x509-user-cert,
// application/pkcs7-mime with smime-type=certs-only, application/x-pkcs7-certificates, or named
// *.cer, *.crt, *.der, *.p7b, *.p7c; base64 or binary; at most 16. `attachments`: how many
// such parts there were (read or not).
std::vector<X509Ref> CertificatesIn(const std::string& message, size_t* attachments = nullptr);

// CertificateRequest: the request our gateway sends to domain-certificate-request@<domain>
// from `from` (SEE-2.8b: the Subject is the address of the certificate wanted).
std::string CertificateRequest(const std::string& from, const std::string& domain, const std::string& gateway_name,
                               int64_t now_ms);

// Warning texts of the SEE-2.8 table (receiving column), put in front of the Subject.
std::string WarningFor(CertStatus s);

// UnsuitableDca: why a certificate cannot be encrypted to (SEE-2.6 naming, SEE-2.4 key
// strength), or "". The gateway holds mail rather than seal to such a certificate; discovery
// releases held mail only for one that passes (else a release would be held again at once).
std::string UnsuitableDca(X509* dca);

}  // namespace mailseal::smime
