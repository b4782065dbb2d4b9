// guard.h — what every management service shares: the Guard that authorises and audits each
// call, and the mapping of internal errors to gRPC statuses with google.rpc.BadRequest details.
//
// SECURITY: the caller's identity is the common name of a client certificate verified by the TLS
// front (tls_front.h) and nothing else; a call without one has no role and is refused. Every
// refusal and every change is written to the audit log before the call proceeds (fail closed).
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "control/audit/log.h"
#include "control/tls_front.h"
#include "dataplane/base/log.h"
#include "dataplane/base/status.h"
#include "mailseal/v1/control.pb.h"

namespace mailseal::control {

// Roles of client certificate common names (from the configuration).
using RoleMap = std::map<std::string, mailseal::v1::Role>;

// Guard authorises one call: who is calling (the client certificate's CN), which role that
// is, whether the method (by its declaration in control.proto) allows it, and — for mutating
// methods and refusals — the audit record that must be written first.
class Guard {
 public:
  // Identify: who is on a call's connection (the TLS front's verified caller); nothing for a
  // connection that did not come through it (then no role: every method is refused).
  using Identify = std::function<std::optional<Caller>(grpc::ServerContextBase*)>;
  Guard(const RoleMap* roles, audit::AuditLog* a, Identify identify)
      : roles_(roles), audit_(a), identify_(std::move(identify)) {}
  // on_audit_failure: called when the audit log refuses a record (health goes NOT_SERVING).
  std::function<void()> on_audit_failure;

  // Outcome records how an allowed mutating call ended when it did not succeed (the ALLOWED
  // record was written before it ran).
  void Failed(const std::string& actor, const char* method, const std::string& object, const std::string& why) const {
    mailseal::v1::AuditRecord r;
    r.set_actor(StrCat("CN=", actor));
    r.set_action(method);
    r.set_object(object);
    r.set_outcome(mailseal::v1::AuditRecord::OUTCOME_FAILED);
    r.set_detail(why);
    (void)audit_->Append(r);
  }

  // Refuse records that an allowed mutating call was refused before it changed anything
  // (invalid argument, failed precondition: OUTCOME_DENIED with the reason — issue #12: a
  // refusal is never left looking allowed in the trail) and returns `st`.
  grpc::Status Refuse(const std::string& actor, const char* method, const std::string& object, grpc::Status st) const {
    mailseal::v1::AuditRecord r;
    r.set_actor(StrCat("CN=", actor));
    r.set_action(method);
    r.set_object(object);
    r.set_outcome(mailseal::v1::AuditRecord::OUTCOME_DENIED);
    r.set_detail(st.error_message());
    (void)audit_->Append(r);
    return st;
  }

  grpc::Status Check(grpc::ServerContext* ctx, const char* method, const std::string& object, std::string* actor) const {
    std::optional<Caller> who = identify_ ? identify_(ctx) : std::nullopt;
    *actor = who ? who->common_name : "";
    auto role_it = roles_->find(*actor);
    mailseal::v1::Role role = role_it == roles_->end() ? mailseal::v1::ROLE_UNSPECIFIED : role_it->second;
    const google::protobuf::MethodDescriptor* md =
        google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(method);
    bool allowed = false, mutating = false;
    if (md) {
      const auto& opts = md->options();
      for (int i = 0; i < opts.ExtensionSize(mailseal::v1::allowed_roles); ++i)
        allowed = allowed || (role != mailseal::v1::ROLE_UNSPECIFIED && opts.GetExtension(mailseal::v1::allowed_roles, i) == role);
      mutating = opts.GetExtension(mailseal::v1::mutating);
    }
    if (!allowed || mutating) {
      mailseal::v1::AuditRecord r;
      r.set_actor(StrCat("CN=", *actor));
      r.set_action(method);
      r.set_object(object);
      r.set_outcome(allowed ? mailseal::v1::AuditRecord::OUTCOME_ALLOWED : mailseal::v1::AuditRecord::OUTCOME_DENIED);
      if (who) r.set_client_address(who->client_address);
      if (!allowed) r.set_detail(StrCat("role ", mailseal::v1::Role_Name(role), " may not call it"));
      Result<uint64_t> seq = audit_->Append(r);
      if (!seq.ok()) {
        if (on_audit_failure) on_audit_failure();
        base::Log(base::LogLevel::kError, "control", "audit log unavailable: management call refused",
            {{"method", method}, {"actor", *actor}, {"error", seq.status().message()}});
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, StrCat("the audit log cannot be written (", seq.status().message(),
                                                      "): refused, nothing changed"));
      }
    }
    if (!allowed) {
      base::Log(base::LogLevel::kWarning, "control", "permission denied", {{"method", method}, {"actor", *actor}});
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                    StrCat("role ", mailseal::v1::Role_Name(role), " of '", *actor, "' may not call ", method));
    }
    return grpc::Status::OK;
  }

 private:
  const RoleMap* roles_;
  audit::AuditLog* audit_;
  Identify identify_;
};


// Invalid: INVALID_ARGUMENT naming the field in the message and, for programs, in a
// google.rpc.BadRequest detail (the grpc-status-details-bin trailer).
grpc::Status Invalid(const std::string& field, const std::string& description);
// FromStatus maps an internal status; "field 'x': why" messages become Invalid(x, why).
grpc::Status FromStatus(const mailseal::Status& s);

}  // namespace mailseal::control
