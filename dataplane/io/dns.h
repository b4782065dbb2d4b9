// dns.h — MX and address lookups for delivery, through libunbound.
//
// SECURITY: answers are untrusted network data; at most 32 MX hosts and 16 addresses per host
// are used. DNSSEC validation arrives with the DANE/transport-security issue.
// STANDARDS: RFC 5321 §5.1 (MX, implicit MX), RFC 7505 (null MX).
#pragma once

#include <sys/socket.h>

#include <string>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/spf/spf.h"

struct ub_ctx;

namespace mailseal::io {

struct MxHost {
  int preference = 0;
  std::string host;
};

class Resolver {
 public:
  // forwarder: "ip" or "ip@port", empty for /etc/resolv.conf. local_zones: unbound
  // "name type" zones; local_data: unbound RRs.
  Resolver(const std::string& forwarder, const std::vector<std::string>& local_zones,
           const std::vector<std::string>& local_data);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  Status init_status() const { return init_; }
  // LookupMx: the MX hosts by preference, or the domain itself (implicit MX) when it has
  // addresses but no MX. NotFound: the domain does not exist (permanent). FailedPrecondition:
  // null MX (permanent). Unavailable: try again later.
  Result<std::vector<MxHost>> LookupMx(const std::string& domain);
  // LookupAddresses: A then AAAA records of a host (port left 0).
  Result<std::vector<sockaddr_storage>> LookupAddresses(const std::string& host);
  // Query answers one SPF question (RFC 7208): TXT, A, AAAA, MX or PTR, at most 64 records,
  // CNAMEs followed by unbound.
  spf::Answer Query(const std::string& name, spf::RrType type);

 private:
  ub_ctx* ctx_ = nullptr;
  Status init_;
};

// SpfDns: the SPF evaluator's DNS through a Resolver.
class SpfDns : public spf::Dns {
 public:
  explicit SpfDns(Resolver* r) : r_(r) {}
  spf::Answer Query(const std::string& name, spf::RrType type) override { return r_->Query(name, type); }

 private:
  Resolver* r_;
};

}  // namespace mailseal::io
