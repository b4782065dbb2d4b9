// server.h — the management API server (issue #5): gRPC behind our own TLS 1.3 front
// (tls_front.h) with client certificates required, roles from the client certificate's common name, every call
// authorised by the allowed_roles its method declares in control.proto, mutating calls and
// every refusal written to the audit log first (fail closed: no audit, no change).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "control/audit/log.h"
#include "control/keys_service.h"
#include "control/policy_store.h"
#include "dataplane/base/status.h"
#include "dataplane/queue/queue_manager.h"
#include "dataplane/queue/spool.h"
#include "mailseal/v1/control.pb.h"

typedef struct evp_pkey_st EVP_PKEY;

namespace grpc {
class Server;
}

namespace mailseal::cluster {
class ClusterNode;
}

namespace mailseal::control {

struct ServerOptions {
  std::string listen;              // "host:port", a management address
  std::string cert_file, key_file; // the server's certificate and key (PEM)
  EVP_PKEY* token_key = nullptr;   // or the key in the token (hsm::SharedTokenKey; key_file unused)
  std::string client_ca_file;      // CA(s) whose client certificates may connect
  std::map<std::string, mailseal::v1::Role> roles;   // client certificate CN -> role
  std::string private_dir;         // for the gRPC server's Unix socket (made 0700)
};

// CertDeps: what the certificate service reads and does (wired in mailseald.cc; absent without
// an smime section).
struct CertDeps {
  std::function<std::vector<mailseal::v1::CertificateInfo>(const std::string& domain)> list;
  std::function<mailseal::Result<std::string>(const std::string& domain, const std::string& cert, bool pin)> add;
  std::function<mailseal::Status(const std::string& domain, const std::string& kind)> remove;
  std::function<mailseal::Result<std::string>(const std::string& domain)> approve;
  std::function<std::vector<mailseal::v1::RevocationSource>()> sources;
  std::function<mailseal::Status()> reload;
  std::function<std::string(const std::string& domain)> refresh;         // null: no discovery
  std::function<std::vector<mailseal::v1::CertificateLookup>()> lookups;
  std::function<std::vector<std::string>(int ttl)> smimea;
};

struct Deps {
  queue::Spool* spool = nullptr;
  queue::QueueManager* qmgr = nullptr;
  audit::AuditLog* audit = nullptr;
  PolicyStore* policy = nullptr;
  const KeyDeps* keys = nullptr;   // null: no token, no Key/Ceremony services
  const CertDeps* certs = nullptr; // null: no smime section, no Cert service
  cluster::ClusterNode* cluster = nullptr;   // null: a single appliance (the status says so)
};

class ControlServer {
 public:
  static Result<std::unique_ptr<ControlServer>> Start(const ServerOptions& options, Deps deps);
  ~ControlServer();
  void Stop();
  int port() const { return port_; }
  // SetServing: grpc.health.v1 status of one part of the gateway — "mailseal.smtp" (new mail is
  // accepted), "mailseal.sealing" (the token is there for sealing and opening),
  // "mailseal.audit" (the trail records) — and "" (all of them), issue #13.
  void SetServing(const std::string& service, bool serving);
  struct State;   // what the services share (server.cc); named here for its log hook

 private:
  ControlServer() = default;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<State> state_;
  int port_ = 0;
};

}  // namespace mailseal::control
