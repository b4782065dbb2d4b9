// tls13.cc — see tls13.h.
#include "control/tls13.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

// The core library's SSL server credentials class; only the one exported, non-virtual member
// used here is declared (see tls13.h for why).
class grpc_ssl_server_credentials {
 public:
  void set_min_tls_version(grpc_tls_version version);
  void set_max_tls_version(grpc_tls_version version);
};

namespace mailseal::control {
namespace {

class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  // The base class holds a gRPC library reference, so the core is initialised here.
  CoreServerCredentials() = default;
  ~CoreServerCredentials() override {
    if (creds_) grpc_server_credentials_release(creds_);
  }
  grpc_server_credentials* creds_ = nullptr;
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }
};

}  // namespace

Result<std::shared_ptr<grpc::ServerCredentials>> Tls13ServerCredentials(const std::string& cert_pem,
                                                                       const std::string& key_pem,
                                                                       const std::string& client_ca_pem) {
  auto out = std::make_shared<CoreServerCredentials>();
  grpc_ssl_pem_key_cert_pair pair{key_pem.c_str(), cert_pem.c_str()};
  grpc_server_credentials* c = grpc_ssl_server_credentials_create_ex(
      client_ca_pem.c_str(), &pair, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, nullptr);
  if (!c) return InvalidArgumentError("management TLS credentials refused by gRPC");
  out->creds_ = c;
  // grpc_ssl_server_credentials derives from grpc_server_credentials alone: same address.
  auto* ssl = reinterpret_cast<grpc_ssl_server_credentials*>(c);
  ssl->set_min_tls_version(grpc_tls_version::TLS1_3);
  ssl->set_max_tls_version(grpc_tls_version::TLS1_3);
  return std::shared_ptr<grpc::ServerCredentials>(std::move(out));
}

}  // namespace mailseal::control
