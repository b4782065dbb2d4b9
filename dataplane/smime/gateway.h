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
#pragma once

#include <openssl/evp.h>

#include <map>
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
};

// GatewayKeys: our certificates and the worker's session-bound token keys (not owned).
struct GatewayKeys {
  X509Ref dsa_cert, dca_cert;
  std::vector<X509Ref> chain;
  EVP_PKEY* dsa_key = nullptr;
  EVP_PKEY* dca_key = nullptr;
};

enum class Action {
  kPass,      // recipients stay on the original, unchanged
  kDeliver,   // a new body (sealed or opened) goes to these recipients
  kHold,      // a copy goes to hold/ with `reason`; nothing is delivered
  kTempFail,  // try the whole message again later (token unavailable)
};
const char* ActionName(Action a);

struct Output {
  Action action = Action::kPass;
  std::vector<uint32_t> rcpts;
  std::string body;
  std::string reason;       // for hold/, the log and the audit trail
  std::string protection;   // what was done ("sealed for agency-b.test (authEnveloped-data)")
};

class Gateway {
 public:
  Gateway(const GatewayPolicy* policy, CertStore* store) : policy_(policy), store_(store) {}
  // Process: `recipients` are the envelope's addresses in index order; `sender` the reverse
  // path. `keys` may have null keys when the token is unavailable (sealing then defers).
  // `doc` is the compiled policy document (lists, rules, trigger words; issue #6); null: an
  // empty one — classified mail then goes only to configured partners (SEE-2.1b).
  std::vector<Output> Process(const std::string& sender, const std::vector<std::string>& recipients,
                              const std::string& message, const GatewayKeys& keys,
                              const policy::CompiledPolicy* doc = nullptr) const;

  bool IsLocal(const std::string& domain) const;
  // PartnerFor: the partner entry covering `domain`, or null.
  const PartnerPolicy* PartnerFor(const std::string& domain) const;

 private:
  Output Seal1(const std::string& domain, std::vector<uint32_t> rcpts, const std::string& message,
               const GatewayKeys& keys, const policy::Decision& decision) const;
  Output Open1(const std::string& sender, std::vector<uint32_t> rcpts, const std::string& message,
               const GatewayKeys& keys) const;

  const GatewayPolicy* policy_;
  CertStore* store_;
};

// ClassificationWord: the first SEE-2.1 classification word in `subject` ("[RESTRICTED]",
// normalised to upper case with square brackets), or "" when none (policy::FindTriggerWord
// with the default words).
std::string ClassificationWord(std::string_view subject);

// Warning texts of the SEE-2.8 table (receiving column), put in front of the Subject.
std::string WarningFor(CertStatus s);

}  // namespace mailseal::smime
