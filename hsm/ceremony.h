// ceremony.h — quorum (M of N) key ceremonies with a signed, offline-verifiable transcript.
//
// A ceremony is a hash-chained list of steps. A step that changes key material is first
// proposed; it runs only after M distinct registered custodians have approved it, each by
// signing the step's approval statement with the key behind their certificate:
//
//   "mailseal ceremony approval v1\n" <ceremony_id> "\n" <hex SHA-256 step hash> "\n"
//
// (a custodian can do that with `openssl dgst -sha256 -sign key.pem -out approval.sig
// statement.txt`). The result of every approved action, and every refusal, is recorded as a
// further step. At the end the HSM audit key signs the last hash; VerifyTranscript checks the
// chain, every approval and that signature without any HSM — offline, on any machine.
//
// SECURITY: approvals are verified against the certificates registered when the ceremony
// began; an unknown custodian, a repeated custodian, a signature over anything else, or fewer
// than M approvals leave the token untouched. Details never hold secrets.
#pragma once

#include <openssl/evp.h>

#include <functional>
#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "hsm/keys.h"
#include "mailseal/v1/hsm.pb.h"

namespace mailseal::hsm {

class Ceremony {
 public:
  // Begin starts a ceremony of `kind` needing `threshold` approvals from `custodians`.
  static Result<Ceremony> Begin(const std::string& kind, unsigned threshold,
                                const std::vector<mailseal::v1::CustodianRecord>& custodians,
                                const std::string& detail);

  // Resume continues a pending ceremony from its stored transcript (issue #20: pending
  // ceremonies survive a restart). The stored file is untrusted: its chain and approvals are
  // checked, its custodians and quorum must be the configured ones, and it must be waiting for
  // approvals.
  static Result<Ceremony> Resume(const mailseal::v1::CeremonyTranscript& t, unsigned threshold,
                                 const std::vector<mailseal::v1::CustodianRecord>& custodians);

  // Propose records a step that needs approval and returns the statement custodians sign.
  Result<std::string> Propose(const std::string& action, const std::string& detail);
  // Approve adds one custodian's approval of the pending step (checked at once).
  Status Approve(const std::string& custodian, const std::string& signature);
  // Execute runs `action` if the pending step has enough approvals, and records its outcome
  // (the returned detail, or the error) as a "result"/"failed" step. A refused execution is
  // recorded too, and `action` is not called.
  Status Execute(const std::function<Result<std::string>()>& action);
  // Note records an informational step (no approval needed).
  void Note(const std::string& action, const std::string& detail);
  // Finish signs the transcript with the HSM audit key and returns it.
  Result<mailseal::v1::CeremonyTranscript> Finish(Session& s, const KeyPair& audit_key);

  const mailseal::v1::CeremonyTranscript& transcript() const { return t_; }

 private:
  mailseal::v1::CeremonyStep& Add(const std::string& action, const std::string& detail, bool needs_approval);
  mailseal::v1::CeremonyTranscript t_;
};

// ApprovalStatement: the exact bytes a custodian signs for a step.
std::string ApprovalStatement(const std::string& ceremony_id, const std::string& step_hash);

// SignApproval: what a custodian's tool does (tests and the CLI use it).
Result<std::string> SignApproval(EVP_PKEY* custodian_key, const std::string& statement);

// VerifyTranscript: the offline check. `trusted_audit_key_der`, if not empty, must equal the
// transcript's audit key (pin the appliance's audit key). Reports the first problem found.
Status VerifyTranscript(const mailseal::v1::CeremonyTranscript& t, const std::string& trusted_audit_key_der = "");

}  // namespace mailseal::hsm
