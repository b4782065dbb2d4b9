// tls13.h — gRPC server credentials that speak TLS 1.3 only and require a verified client
// certificate (issue #5: "TLS 1.3, client certificates required").
//
// Why this file exists: gRPC 1.51 (Debian 12) has no public setting for the minimum TLS
// version — TlsServerCredentialsOptions gained set_min_tls_version only in later releases —
// so a TLS 1.2 client would be accepted. The core library does have the setting on its SSL
// server credentials (grpc_ssl_server_credentials::set_min_tls_version, an exported member of
// libgrpc.so.29). We create those credentials with the public C API, call that member, and
// hand them to the C++ server through a ServerCredentials subclass. If a later gRPC drops the
// symbol the link fails loudly; the integration test checks that TLS 1.2 is refused.
#pragma once

#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "dataplane/base/status.h"

namespace mailseal::control {

// Tls13ServerCredentials: `cert_pem`/`key_pem` identify the server; clients must present a
// certificate that chains to `client_ca_pem`.
Result<std::shared_ptr<grpc::ServerCredentials>> Tls13ServerCredentials(const std::string& cert_pem,
                                                                       const std::string& key_pem,
                                                                       const std::string& client_ca_pem);

}  // namespace mailseal::control
