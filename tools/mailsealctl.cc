// mailsealctl — the operator's CLI for mailseald's management API (issue #5).
//
//   mailsealctl [--server H:P] [--cert F --key F --ca F] [-o table|json] queue counts
//   mailsealctl ... queue list --state hold        mailsealctl ... queue release QUEUE_ID
//   mailsealctl ... audit head                     mailsealctl ... audit records [--start N] [--limit N]
//   mailsealctl ... health
//   mailsealctl ... policy get [--version N] | set FILE --expect-version N | diff FROM TO | history
//
// Connection settings come from flags, else MAILSEALCTL_SERVER / _CERT / _KEY / _CA. TLS with
// our client certificate (mTLS); the server is checked against --ca. Exit codes: 0 ok, 1 error
// (including no connection), 2 usage, 3 permission denied.
#include <CLI/CLI.hpp>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "grpc/health/v1/health.grpc.pb.h"
#include "mailseal/v1/control.grpc.pb.h"

namespace v1 = mailseal::v1;

namespace {
constexpr int kOk = 0, kError = 1, kUsage = 2, kDenied = 3;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool Slurp(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  return true;
}

int Report(const grpc::Status& st) {
  std::fprintf(stderr, "mailsealctl: %s: %s\n",
               st.error_code() == grpc::StatusCode::PERMISSION_DENIED ? "permission denied" : "error",
               st.error_message().c_str());
  return st.error_code() == grpc::StatusCode::PERMISSION_DENIED ? kDenied : kError;
}

std::string Json(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, o);
  return out;
}

std::string Hex(const std::string& b) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (unsigned char c : b) {
    h += d[c >> 4];
    h += d[c & 15];
  }
  return h;
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mailsealctl — manage a mailseal gateway through its management API (mTLS)"};
  std::string server = Env("MAILSEALCTL_SERVER"), cert = Env("MAILSEALCTL_CERT"), key = Env("MAILSEALCTL_KEY"),
              ca = Env("MAILSEALCTL_CA"), output = "table";
  app.add_option("--server", server, "management address host:port (MAILSEALCTL_SERVER)");
  app.add_option("--cert", cert, "client certificate, PEM (MAILSEALCTL_CERT)");
  app.add_option("--key", key, "client key, PEM (MAILSEALCTL_KEY)");
  app.add_option("--ca", ca, "CA that issued the server certificate, PEM (MAILSEALCTL_CA)");
  app.add_option("-o,--output", output, "table or json")->check(CLI::IsMember({"table", "json"}));
  app.require_subcommand(1);
  CLI::App* queue = app.add_subcommand("queue", "spool states and held mail")->require_subcommand(1);
  queue->add_subcommand("counts", "messages per state");
  std::string state = "hold", qid;
  CLI::App* qlist = queue->add_subcommand("list", "messages of one state");
  qlist->add_option("--state", state, "incoming, active, deferred, hold or corrupt");
  CLI::App* release = queue->add_subcommand("release", "send a held message back through policy and sealing");
  release->add_option("queue_id", qid, "queue id of the held message")->required();
  app.add_subcommand("health", "SERVING, or NOT_SERVING when the audit trail cannot be written");
  CLI::App* policy = app.add_subcommand("policy", "the versioned policy document")->require_subcommand(1);
  uint64_t version = 0, expect = 0, from = 0, to = 0;
  std::string policy_file;
  CLI::App* pget = policy->add_subcommand("get", "print a version (text format)");
  pget->add_option("--version", version, "0 or absent: the current one");
  CLI::App* pset = policy->add_subcommand("set", "store a new version from a text-format file");
  pset->add_option("file", policy_file, "PolicyDocument in protobuf text format")->required();
  pset->add_option("--expect-version", expect, "the version the change was made against")->required();
  CLI::App* pdiff = policy->add_subcommand("diff", "what changed between two versions");
  pdiff->add_option("from", from, "version (0: current)")->required();
  pdiff->add_option("to", to, "version (0: current)")->required();
  policy->add_subcommand("history", "every version, newest first");
  CLI::App* audit = app.add_subcommand("audit", "the audit trail")->require_subcommand(1);
  audit->add_subcommand("head", "sign and show the tree head over every record");
  uint64_t start = 0;
  uint32_t limit = 100;
  CLI::App* records = audit->add_subcommand("records", "list records");
  records->add_option("--start", start, "first record");
  records->add_option("--limit", limit, "at most this many");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  std::string cert_pem, key_pem, ca_pem;
  if (server.empty() || !Slurp(cert, &cert_pem) || !Slurp(key, &key_pem) || !Slurp(ca, &ca_pem)) {
    std::fprintf(stderr, "mailsealctl: --server, --cert, --key and --ca (or MAILSEALCTL_*) must name a server and "
                         "readable PEM files\n");
    return kUsage;
  }
  auto provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
      ca_pem, std::vector<grpc::experimental::IdentityKeyCertPair>{{key_pem, cert_pem}});
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  auto channel = grpc::CreateChannel(server, grpc::experimental::TlsCredentials(tls));
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(10); };
  bool json = output == "json";

  if (app.got_subcommand("health")) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    grpc::health::v1::HealthCheckResponse resp;
    grpc::Status st = stub->Check(&ctx, grpc::health::v1::HealthCheckRequest(), &resp);
    if (!st.ok()) return Report(st);
    std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kOk : kError;
  }
  if (policy->got_subcommand("get")) {
    auto stub = v1::PolicyService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::GetPolicyRequest req;
    req.set_version(version);
    v1::GetPolicyResponse resp;
    grpc::Status st = stub->GetPolicy(&ctx, req, &resp);
    if (!st.ok()) return Report(st);
    std::string text;
    google::protobuf::TextFormat::PrintToString(resp.policy(), &text);
    std::printf("%s", json ? (Json(resp) + "\n").c_str() : text.c_str());
    return kOk;
  }
  if (policy->got_subcommand("set")) {
    std::string text;
    v1::SetPolicyRequest req;
    if (!Slurp(policy_file, &text) || !google::protobuf::TextFormat::ParseFromString(text, req.mutable_policy())) {
      std::fprintf(stderr, "mailsealctl: %s: not a readable PolicyDocument in text format\n", policy_file.c_str());
      return kUsage;
    }
    req.set_expected_version(expect);
    auto stub = v1::PolicyService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::SetPolicyResponse resp;
    grpc::Status st = stub->SetPolicy(&ctx, req, &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else std::printf("policy version %llu stored\n", static_cast<unsigned long long>(resp.version()));
    return kOk;
  }
  if (policy->got_subcommand("diff")) {
    auto stub = v1::PolicyService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::DiffPolicyRequest req;
    req.set_from_version(from);
    req.set_to_version(to);
    v1::DiffPolicyResponse resp;
    grpc::Status st = stub->DiffPolicy(&ctx, req, &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else
      for (const auto& line : resp.changes()) std::printf("%s\n", line.c_str());
    return kOk;
  }
  if (policy->got_subcommand("history")) {
    auto stub = v1::PolicyService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::ListPolicyHistoryResponse resp;
    grpc::Status st = stub->ListPolicyHistory(&ctx, v1::ListPolicyHistoryRequest(), &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else
      for (const auto& v : resp.versions())
        std::printf("%4llu  %lld  %-24s %s\n", static_cast<unsigned long long>(v.version()),
                    static_cast<long long>(v.set_unix_ms()), v.actor().c_str(), v.comment().c_str());
    return kOk;
  }
  if (queue->got_subcommand("counts")) {
    auto stub = v1::QueueService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::GetCountsResponse resp;
    grpc::Status st = stub->GetCounts(&ctx, v1::GetCountsRequest(), &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else
      for (const char* s : {"incoming", "active", "deferred", "hold", "corrupt"})
        std::printf("%-10s %llu\n", s, static_cast<unsigned long long>(resp.counts().count(s) ? resp.counts().at(s) : 0));
    return kOk;
  }
  if (queue->got_subcommand("list")) {
    auto stub = v1::QueueService::NewStub(channel);
    v1::ListMessagesRequest req;
    req.set_state(state);
    v1::ListMessagesResponse all;
    do {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline());
      v1::ListMessagesResponse page;
      grpc::Status st = stub->ListMessages(&ctx, req, &page);
      if (!st.ok()) return Report(st);
      for (const auto& m : page.messages()) *all.add_messages() = m;
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    if (json) {
      std::printf("%s\n", Json(all).c_str());
    } else {
      std::printf("%-28s %-30s %8s  %s\n", "QUEUE ID", "FROM", "SIZE", state == "hold" ? "REASON" : "RECIPIENTS");
      for (const auto& m : all.messages()) {
        std::string rcpts;
        for (const auto& r : m.recipients()) rcpts += (rcpts.empty() ? "" : ",") + r;
        std::printf("%-28s %-30s %8llu  %s\n", m.queue_id().c_str(), m.mail_from().empty() ? "<>" : m.mail_from().c_str(),
                    static_cast<unsigned long long>(m.size()), state == "hold" ? m.hold_reason().c_str() : rcpts.c_str());
      }
    }
    return kOk;
  }
  if (queue->got_subcommand("release")) {
    auto stub = v1::QueueService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::ReleaseMessageRequest req;
    req.set_queue_id(qid);
    v1::ReleaseMessageResponse resp;
    grpc::Status st = stub->ReleaseMessage(&ctx, req, &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else std::printf("released %s: queued again as %s\n", qid.c_str(), resp.queue_id().c_str());
    return kOk;
  }
  if (audit->got_subcommand("head")) {
    auto stub = v1::AuditService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::GetTreeHeadResponse resp;
    grpc::Status st = stub->GetTreeHead(&ctx, v1::GetTreeHeadRequest(), &resp);
    if (!st.ok()) return Report(st);
    if (json) std::printf("%s\n", Json(resp).c_str());
    else
      std::printf("tree_size %llu\nroot_hash %s\nsigned_at_ms %lld\n", static_cast<unsigned long long>(resp.head().tree_size()),
                  Hex(resp.head().root_hash()).c_str(), static_cast<long long>(resp.head().time_unix_ms()));
    return kOk;
  }
  if (audit->got_subcommand("records")) {
    auto stub = v1::AuditService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline());
    v1::ListRecordsRequest req;
    req.set_start_seq(start);
    req.set_page_size(limit);
    v1::ListRecordsResponse resp;
    grpc::Status st = stub->ListRecords(&ctx, req, &resp);
    if (!st.ok()) return Report(st);
    if (json) {
      std::printf("%s\n", Json(resp).c_str());
    } else {
      for (const auto& r : resp.records())
        std::printf("%6llu %lld %-28s %-40s %-9s %s %s\n", static_cast<unsigned long long>(r.seq()),
                    static_cast<long long>(r.time_unix_ms()), r.actor().c_str(), r.action().c_str(),
                    v1::AuditRecord::Outcome_Name(r.outcome()).c_str() + 8, r.object().c_str(), r.detail().c_str());
    }
    return kOk;
  }
  return kUsage;
}
