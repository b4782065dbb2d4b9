// keys_service.h — KeyService and CeremonyService of the management API (issue #5): the
// gateway's key pairs on the token, and quorum ceremonies for what destroys key material.
//
// SECURITY: every operation runs inside the token through a session of the shared pool; no
// call returns or logs private key material. A key the configuration uses (DSA, DCA, audit)
// cannot be destroyed. A ceremony acts only after `threshold` distinct registered custodians
// signed its statement; its transcript, signed by the audit key, is kept in transcript_dir.
#pragma once

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "control/guard.h"
#include "hsm/token_manager.h"
#include "mailseal/v1/hsm.pb.h"

namespace mailseal::control {

struct KeyDeps {
  hsm::TokenManager* token = nullptr;
  std::set<std::string> in_use;            // labels the configuration uses
  std::map<std::string, std::string> config_certs;   // label -> certificate PEM the configuration names
  std::vector<std::string> anchors_pem;    // trust anchors certificates must chain to
  std::string audit_key_label;             // signs ceremony transcripts
  unsigned threshold = 0;                  // 0: ceremonies refused (not configured)
  std::vector<mailseal::v1::CustodianRecord> custodians;
  std::string transcript_dir;
  bool keys_only_in_ceremony = false;      // GenerateKey refused: keys only from an initialise ceremony
  std::string archive_dir;                 // the e-records archive (DE-21); empty: none
  uint64_t archive_max_bytes = 256u << 20; // the most one open-archive export returns
};

// DescribeKeys: every key pair on the token as `keys list` shows it (UNAVAILABLE while the
// token is away); the key-expiry notices (SEE-2.3) read it.
Result<std::vector<mailseal::v1::KeyInfo>> DescribeKeys(const KeyDeps* deps);

std::unique_ptr<grpc::Service> NewKeyService(const Guard* guard, const KeyDeps* deps);
std::unique_ptr<grpc::Service> NewCeremonyService(const Guard* guard, const KeyDeps* deps, audit::AuditLog* audit);

}  // namespace mailseal::control
