// mailsealctl — the operator's CLI for mailseald's management API (issue #5).
//
//   mailsealctl [--server H:P --cert F --key F --ca F | --config FILE] [-o table|json] COMMAND
//     queue counts | list --state S | show ID | release ID | delete ID --reason R
//           | recall (ID | --from ADDR [--since MS] [--until MS]) --reason R
//     policy get [--version N] | set FILE --expect-version N | edit | diff A B | history
//     audit head | records [--start N --limit N] | tail [-f] [--start N] | proof SEQ
//           | export FILE | verify --exported FILE
//     keys list | generate LABEL --purpose P [--type T] --domain D... | csr LABEL --domain D...
//           | install LABEL CERT --domain D... [--chain F] | rotate PURPOSE --label NEW --domain D...
//     ceremony start --key LABEL --reason R | approve ID --custodian NAME --custodian-key F
//           | status ID [--transcript-out F]
//     health | completion bash
//
// Connection settings: flags, else MAILSEALCTL_SERVER / _CERT / _KEY / _CA, else the config file
// (--config, MAILSEALCTL_CONFIG or ~/.config/mailsealctl.conf; lines "server = host:port").
// TLS 1.3 with our client certificate (mTLS); the server is checked against --ca.
// Exit codes: 0 ok, 1 error (including no connection or a failed check), 2 usage, 3 permission
// denied. Private keys given to it (the client key, a custodian's key) never leave this host.
#include <CLI/CLI.hpp>
#include <google/protobuf/text_format.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/pem.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>

#include "control/audit/merkle.h"
#include "dataplane/base/sha256_sign.h"
#include "dataplane/base/file.h"
#include "google/rpc/error_details.pb.h"
#include "google/rpc/status.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "mailseal/v1/control.grpc.pb.h"

namespace v1 = mailseal::v1;

namespace {
constexpr int kOk = 0, kError = 1, kUsage = 2, kDenied = 3;

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

bool Slurp(const std::string& path, std::string* out) {   // base::ReadFile, as a bool for && chains
  mailseal::Result<std::string> r = mailseal::base::ReadFile(path);
  if (!r.ok()) return false;
  *out = std::move(*r);
  return true;
}

// Report prints a failed call, with the field named by a google.rpc.BadRequest detail.
int Report(const grpc::Status& st) {
  bool denied = st.error_code() == grpc::StatusCode::PERMISSION_DENIED;
  std::fprintf(stderr, "mailsealctl: %s: %s\n", denied ? "permission denied" : "error", st.error_message().c_str());
  google::rpc::Status details;
  if (!st.error_details().empty() && details.ParseFromString(st.error_details()))
    for (const auto& any : details.details()) {
      google::rpc::BadRequest bad;
      if (any.UnpackTo(&bad))
        for (const auto& v : bad.field_violations())
          std::fprintf(stderr, "  field %s: %s\n", v.field().c_str(), v.description().c_str());
    }
  return denied ? kDenied : kError;
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
  for (unsigned char c : b) h += {d[c >> 4], d[c & 15]};
  return h;
}

std::string Time(int64_t unix_ms) {
  if (unix_ms <= 0) return "-";
  time_t t = static_cast<time_t>(unix_ms / 1000);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", gmtime(&t));
  return buf;
}

// Call makes one unary call with a deadline; prints the error and returns its exit code.
template <typename Stub, typename Req, typename Resp, typename Method>
int Call(Stub* stub, Method method, const Req& req, Resp* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status st = (stub->*method)(&ctx, req, resp);
  return st.ok() ? kOk : Report(st);
}

void PrintRecord(const v1::AuditRecord& r) {
  std::printf("%6llu %s %-28s %-44s %-7s %s %s\n", static_cast<unsigned long long>(r.seq()), Time(r.time_unix_ms()).c_str(),
              r.actor().c_str(), r.action().c_str(), v1::AuditRecord::Outcome_Name(r.outcome()).c_str() + 8,
              r.object().c_str(), r.detail().c_str());
}

void PrintKey(const v1::KeyInfo& k) {
  std::printf("%-20s %-12s %-9s %5lld d  %-3s %-40s %s%s\n", k.label().c_str(), k.purpose().c_str(), k.key_type().c_str(),
              static_cast<long long>(k.age_days()), k.in_use() ? "yes" : "no",
              k.certificate_subject().empty() ? "(no certificate)" : k.certificate_subject().c_str(),
              k.certificate_not_after_unix_s() ? Time(k.certificate_not_after_unix_s() * 1000).c_str() : "",
              k.expiry_warning() < 0 ? " EXPIRED" : k.expiry_warning() > 0 ? " (expires soon)" : "");
}

// BashCompletion writes a completion script for the command tree of `app`.
std::string BashCompletion(const CLI::App& app) {
  std::string cases;
  std::function<void(const CLI::App*, const std::string&)> walk = [&](const CLI::App* a, const std::string& path) {
    std::string words;
    for (const CLI::App* sub : a->get_subcommands({})) words += sub->get_name() + " ";
    for (const CLI::Option* o : a->get_options({}))
      for (const std::string& n : o->get_lnames()) words += "--" + n + " ";
    cases += "    \"" + path + "\") words=\"" + words + "\" ;;\n";
    for (const CLI::App* sub : a->get_subcommands({})) walk(sub, path.empty() ? sub->get_name() : path + " " + sub->get_name());
  };
  walk(&app, "");
  return "# bash completion for mailsealctl: source <(mailsealctl completion bash)\n"
         "_mailsealctl() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]} path=\"\" w words\n"
         "  for w in \"${COMP_WORDS[@]:1:COMP_CWORD-1}\"; do\n"
         "    [[ $w == -* ]] && continue\n"
         "    case \"${path:+$path }$w\" in\n" + [&] {
           std::string known;
           std::function<void(const CLI::App*, const std::string&)> k = [&](const CLI::App* a, const std::string& p) {
             for (const CLI::App* sub : a->get_subcommands({})) {
               std::string q = p.empty() ? sub->get_name() : p + " " + sub->get_name();
               known += "      \"" + q + "\") path=\"" + q + "\" ;;\n";
               k(sub, q);
             }
           };
           k(&app, "");
           return known;
         }() +
         "    esac\n"
         "  done\n"
         "  case \"$path\" in\n" + cases +
         "  esac\n"
         "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
         "}\n"
         "complete -o default -F _mailsealctl mailsealctl\n";
}
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"mailsealctl — manage a mailseal gateway through its management API (mTLS)"};
  app.set_help_all_flag("--help-all", "help for every command");
  std::string server = Env("MAILSEALCTL_SERVER"), cert = Env("MAILSEALCTL_CERT"), key = Env("MAILSEALCTL_KEY"),
              ca = Env("MAILSEALCTL_CA"), output = "table";
  std::string default_config = Env("MAILSEALCTL_CONFIG");
  if (default_config.empty() && !Env("HOME").empty()) default_config = Env("HOME") + "/.config/mailsealctl.conf";
  app.set_config("--config", default_config, "connection settings file (server = , cert = , key = , ca = )");
  app.add_option("--server", server, "management address host:port (MAILSEALCTL_SERVER)");
  app.add_option("--cert", cert, "client certificate, PEM (MAILSEALCTL_CERT)");
  app.add_option("--key", key, "client key, PEM (MAILSEALCTL_KEY)");
  app.add_option("--ca", ca, "CA that issued the server certificate, PEM (MAILSEALCTL_CA)");
  app.add_option("-o,--output", output, "table or json")->check(CLI::IsMember({"table", "json"}));
  app.require_subcommand(1);

  // queue
  CLI::App* queue = app.add_subcommand("queue", "spool states, held and queued mail")->require_subcommand(1);
  queue->add_subcommand("counts", "messages per state");
  std::string state = "hold", qid, reason, from;
  int64_t since = 0, until = 0;
  CLI::App* qlist = queue->add_subcommand("list", "messages of one state");
  qlist->add_option("--state", state, "incoming, active, deferred, hold or corrupt");
  CLI::App* qshow = queue->add_subcommand("show", "one message's envelope and each recipient's status");
  qshow->add_option("queue_id", qid, "queue id")->required();
  CLI::App* release = queue->add_subcommand("release", "send a held message back through policy and sealing");
  release->add_option("queue_id", qid, "queue id of the held message")->required();
  CLI::App* qdel = queue->add_subcommand("delete", "remove a message from hold/ or corrupt/ (no DSN)");
  qdel->add_option("queue_id", qid, "queue id")->required();
  qdel->add_option("--reason", reason, "why (audited)")->required();
  CLI::App* recall = queue->add_subcommand("recall", "withdraw queued or held mail not yet delivered (DE-6)");
  recall->add_option("queue_id", qid, "queue id (or select with --from)");
  recall->add_option("--from", from, "every message from this sender");
  recall->add_option("--since", since, "arrived at or after (unix ms)");
  recall->add_option("--until", until, "arrived at or before (unix ms)");
  recall->add_option("--reason", reason, "why (audited)")->required();

  app.add_subcommand("health", "SERVING or NOT_SERVING, overall and per part: smtp (accepting mail), sealing "
                               "(the token), audit (the trail records)");
  std::string shell;
  app.add_subcommand("completion", "print a shell completion script")->add_option("shell", shell, "bash")->required()
      ->check(CLI::IsMember({"bash"}));

  // policy
  CLI::App* policy = app.add_subcommand("policy", "the versioned policy document")->require_subcommand(1);
  uint64_t version = 0, expect = 0, pfrom = 0, pto = 0;
  std::string policy_file;
  CLI::App* pget = policy->add_subcommand("get", "print a version (text format)");
  pget->add_option("--version", version, "0 or absent: the current one");
  CLI::App* pset = policy->add_subcommand("set", "store a new version from a text-format file");
  pset->add_option("file", policy_file, "PolicyDocument in protobuf text format")->required();
  pset->add_option("--expect-version", expect, "the version the change was made against")->required();
  policy->add_subcommand("edit", "edit the current version in $EDITOR and store it");
  CLI::App* pdiff = policy->add_subcommand("diff", "what changed between two versions");
  pdiff->add_option("from", pfrom, "version (0: current)")->required();
  pdiff->add_option("to", pto, "version (0: current)")->required();
  policy->add_subcommand("history", "every version, newest first");

  // audit
  CLI::App* audit = app.add_subcommand("audit", "the audit trail")->require_subcommand(1);
  audit->add_subcommand("head", "sign and show the tree head over every record");
  uint64_t start = 0, seq = 0;
  uint32_t limit = 100;
  bool follow = false;
  std::string file;
  CLI::App* records = audit->add_subcommand("records", "query records");
  records->add_option("--start", start, "first record");
  records->add_option("--limit", limit, "at most this many");
  std::string q_action, q_actor, q_message, q_outcome;
  records->add_option("--action", q_action, "action prefix (mail., mailseal.v1.KeyService, ceremony.)");
  records->add_option("--actor", q_actor, "exact actor (CN=admin-1, mailseald)");
  records->add_option("--message", q_message, "queue id the record concerns");
  records->add_option("--outcome", q_outcome, "allowed, denied, done or failed")
      ->check(CLI::IsMember({"allowed", "denied", "done", "failed"}));
  CLI::App* tail = audit->add_subcommand("tail", "print records; with -f, keep printing new ones");
  tail->add_option("--start", start, "first record (default: the last 10)");
  tail->add_flag("-f,--follow", follow, "wait for new records");
  CLI::App* proof = audit->add_subcommand("proof", "prove a record is in the signed tree (RFC 9162 inclusion)");
  proof->add_option("seq", seq, "record number")->required();
  CLI::App* aexport = audit->add_subcommand("export", "save a signed tree head to FILE, to check the log against later");
  aexport->add_option("file", file, "where to write the head (JSON)")->required();
  CLI::App* averify = audit->add_subcommand("verify", "check the live log is an extension of an exported head");
  averify->add_option("--exported", file, "a head saved by 'audit export'")->required();

  // keys
  CLI::App* keys = app.add_subcommand("keys", "key pairs on the token")->require_subcommand(1);
  keys->add_subcommand("list", "labels, purposes, ages and certificates");
  std::string label, purpose, key_type, cert_file, chain_file, csr_out;
  std::vector<std::string> domains;
  CLI::App* kgen = keys->add_subcommand("generate", "new key pair inside the token, with its CSR");
  kgen->add_option("label", label, "label of the new pair")->required();
  kgen->add_option("--purpose", purpose, "dsa-sign or dca-encrypt")->required();
  CLI::App* krot = keys->add_subcommand("rotate", "new key pair for PURPOSE (then install its certificate, "
                                                  "and name it in the configuration)");
  krot->add_option("purpose", purpose, "dsa-sign or dca-encrypt")->required();
  krot->add_option("--label", label, "label of the new pair")->required();
  for (CLI::App* c : {kgen, krot}) {
    c->add_option("--type", key_type, "rsa:2048 (default), rsa:3072, rsa:4096, ec:P-256, ec:P-384");
    c->add_option("--domain", domains, "served domain (repeat)")->required();
    c->add_option("--csr-out", csr_out, "write the CSR here (default: print it)");
  }
  CLI::App* kcsr = keys->add_subcommand("csr", "new CSR for an existing key");
  kcsr->add_option("label", label, "key pair label")->required();
  kcsr->add_option("--domain", domains, "served domain (repeat)")->required();
  kcsr->add_option("--csr-out", csr_out, "write the CSR here (default: print it)");
  CLI::App* kinst = keys->add_subcommand("install", "install the CA's certificate for a key");
  kinst->add_option("label", label, "key pair label")->required();
  kinst->add_option("certificate", cert_file, "certificate (PEM)")->required();
  kinst->add_option("--chain", chain_file, "intermediate certificates (PEM)");
  kinst->add_option("--domain", domains, "served domain the certificate must name (repeat)")->required();

  // ceremony
  CLI::App* cer = app.add_subcommand("ceremony", "quorum key ceremonies")->require_subcommand(1);
  std::string cid, custodian, custodian_key, transcript_out;
  CLI::App* cstart = cer->add_subcommand("start", "propose destroying a key pair (needs M custodians)");
  cstart->add_option("--key", label, "key pair label")->required();
  cstart->add_option("--reason", reason, "why (in the transcript)")->required();
  CLI::App* capprove = cer->add_subcommand("approve", "sign the pending step with a custodian's key, here");
  capprove->add_option("ceremony_id", cid, "ceremony id")->required();
  capprove->add_option("--custodian", custodian, "registered custodian name")->required();
  capprove->add_option("--custodian-key", custodian_key, "the custodian's private key (PEM; stays on this host)")
      ->required();
  CLI::App* cstatus = cer->add_subcommand("status", "state and transcript of a ceremony");
  cstatus->add_option("ceremony_id", cid, "ceremony id")->required();
  cstatus->add_option("--transcript-out", transcript_out, "write the transcript (binary) here");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? kOk : kUsage;
  }
  if (app.got_subcommand("completion")) {
    std::fputs(BashCompletion(app).c_str(), stdout);
    return kOk;
  }
  std::string cert_pem, key_pem, ca_pem;
  if (server.empty() || !Slurp(cert, &cert_pem) || !Slurp(key, &key_pem) || !Slurp(ca, &ca_pem)) {
    std::fprintf(stderr, "mailsealctl: --server, --cert, --key and --ca (or MAILSEALCTL_*, or a config file) must name "
                         "a server and readable PEM files\n");
    return kUsage;
  }
  auto provider = std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
      ca_pem, std::vector<grpc::experimental::IdentityKeyCertPair>{{key_pem, cert_pem}});
  grpc::experimental::TlsChannelCredentialsOptions tls;
  tls.set_certificate_provider(provider);
  tls.watch_root_certs();
  tls.watch_identity_key_cert_pairs();
  auto channel = grpc::CreateChannel(server, grpc::experimental::TlsCredentials(tls));
  bool json = output == "json";
  auto qs = v1::QueueService::NewStub(channel);
  auto ps = v1::PolicyService::NewStub(channel);
  auto as = v1::AuditService::NewStub(channel);
  auto ks = v1::KeyService::NewStub(channel);
  auto cs = v1::CeremonyService::NewStub(channel);
  using QS = v1::QueueService::Stub;
  using PS = v1::PolicyService::Stub;
  using AS = v1::AuditService::Stub;
  using KS = v1::KeyService::Stub;
  using CS = v1::CeremonyService::Stub;
  auto print = [&](const google::protobuf::Message& m, const std::function<void()>& table) {
    if (json) std::printf("%s\n", Json(m).c_str());
    else table();
    return kOk;
  };

  if (app.got_subcommand("health")) {
    auto stub = grpc::health::v1::Health::NewStub(channel);
    grpc::health::v1::HealthCheckResponse resp;
    if (int rc = Call(stub.get(), &grpc::health::v1::Health::Stub::Check, grpc::health::v1::HealthCheckRequest(), &resp))
      return rc;
    std::printf("%s\n", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(resp.status()).c_str());
    for (const char* part : {"mailseal.smtp", "mailseal.sealing", "mailseal.audit"}) {
      grpc::health::v1::HealthCheckRequest req;
      req.set_service(part);
      grpc::health::v1::HealthCheckResponse r;
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
      grpc::Status st = stub->Check(&ctx, req, &r);   // a part not reported yet: UNKNOWN
      std::printf("  %-17s %s\n", part,
                  st.ok() ? grpc::health::v1::HealthCheckResponse::ServingStatus_Name(r.status()).c_str() : "UNKNOWN");
    }
    return resp.status() == grpc::health::v1::HealthCheckResponse::SERVING ? kOk : kError;
  }

  // ---- policy
  if (policy->got_subcommand("get")) {
    v1::GetPolicyRequest req;
    req.set_version(version);
    v1::GetPolicyResponse resp;
    if (int rc = Call(ps.get(), &PS::GetPolicy, req, &resp)) return rc;
    return print(resp, [&] {
      std::string text;
      google::protobuf::TextFormat::PrintToString(resp.policy(), &text);
      std::fputs(text.c_str(), stdout);
    });
  }
  if (policy->got_subcommand("set") || policy->got_subcommand("edit")) {
    v1::SetPolicyRequest req;
    if (policy->got_subcommand("edit")) {
      v1::GetPolicyResponse cur;
      if (int rc = Call(ps.get(), &PS::GetPolicy, v1::GetPolicyRequest(), &cur)) return rc;
      char path[] = "/tmp/mailsealctl-policy-XXXXXX";
      int fd = mkstemp(path);
      if (fd < 0) return kError;
      close(fd);
      std::string text;
      google::protobuf::TextFormat::PrintToString(cur.policy(), &text);
      std::ofstream(path) << text;
      std::string editor = Env("EDITOR").empty() ? "vi" : Env("EDITOR");
      int rc = std::system((editor + " '" + path + "'").c_str());
      std::string edited;
      Slurp(path, &edited);
      unlink(path);
      if (rc != 0) {
        std::fprintf(stderr, "mailsealctl: the editor failed; nothing stored\n");
        return kError;
      }
      if (edited == text) {
        std::printf("no change\n");
        return kOk;
      }
      if (!google::protobuf::TextFormat::ParseFromString(edited, req.mutable_policy())) {
        std::fprintf(stderr, "mailsealctl: the edited document does not parse; nothing stored\n");
        return kError;
      }
      req.set_expected_version(cur.policy().version());
    } else {
      std::string text;
      if (!Slurp(policy_file, &text) || !google::protobuf::TextFormat::ParseFromString(text, req.mutable_policy())) {
        std::fprintf(stderr, "mailsealctl: %s: not a readable PolicyDocument in text format\n", policy_file.c_str());
        return kUsage;
      }
      req.set_expected_version(expect);
    }
    v1::SetPolicyResponse resp;
    if (int rc = Call(ps.get(), &PS::SetPolicy, req, &resp)) return rc;
    return print(resp, [&] { std::printf("policy version %llu stored\n", static_cast<unsigned long long>(resp.version())); });
  }
  if (policy->got_subcommand("diff")) {
    v1::DiffPolicyRequest req;
    req.set_from_version(pfrom);
    req.set_to_version(pto);
    v1::DiffPolicyResponse resp;
    if (int rc = Call(ps.get(), &PS::DiffPolicy, req, &resp)) return rc;
    return print(resp, [&] {
      for (const auto& line : resp.changes()) std::printf("%s\n", line.c_str());
    });
  }
  if (policy->got_subcommand("history")) {
    v1::ListPolicyHistoryResponse resp;
    if (int rc = Call(ps.get(), &PS::ListPolicyHistory, v1::ListPolicyHistoryRequest(), &resp)) return rc;
    return print(resp, [&] {
      for (const auto& v : resp.versions())
        std::printf("%4llu  %s  %-24s %s\n", static_cast<unsigned long long>(v.version()), Time(v.set_unix_ms()).c_str(),
                    v.actor().c_str(), v.comment().c_str());
    });
  }

  // ---- queue
  if (queue->got_subcommand("counts")) {
    v1::GetCountsResponse resp;
    if (int rc = Call(qs.get(), &QS::GetCounts, v1::GetCountsRequest(), &resp)) return rc;
    return print(resp, [&] {
      for (const char* s : {"incoming", "active", "deferred", "hold", "corrupt"})
        std::printf("%-10s %llu\n", s, static_cast<unsigned long long>(resp.counts().count(s) ? resp.counts().at(s) : 0));
    });
  }
  if (queue->got_subcommand("list")) {
    v1::ListMessagesRequest req;
    req.set_state(state);
    v1::ListMessagesResponse all;
    do {
      v1::ListMessagesResponse page;
      if (int rc = Call(qs.get(), &QS::ListMessages, req, &page)) return rc;
      for (const auto& m : page.messages()) *all.add_messages() = m;
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty());
    return print(all, [&] {
      std::printf("%-28s %-30s %8s  %s\n", "QUEUE ID", "FROM", "SIZE", state == "hold" ? "REASON" : "RECIPIENTS");
      for (const auto& m : all.messages()) {
        std::string rcpts;
        for (const auto& r : m.recipients()) rcpts += (rcpts.empty() ? "" : ",") + r;
        std::printf("%-28s %-30s %8llu  %s\n", m.queue_id().c_str(), m.mail_from().empty() ? "<>" : m.mail_from().c_str(),
                    static_cast<unsigned long long>(m.size()), state == "hold" ? m.hold_reason().c_str() : rcpts.c_str());
      }
    });
  }
  if (queue->got_subcommand("show")) {
    v1::GetMessageRequest req;
    req.set_queue_id(qid);
    v1::GetMessageResponse resp;
    if (int rc = Call(qs.get(), &QS::GetMessage, req, &resp)) return rc;
    return print(resp, [&] {
      const auto& m = resp.message();
      std::printf("queue id     %s\nstate        %s\nfrom         <%s>\narrived      %s\nsize         %llu\n",
                  m.queue_id().c_str(), resp.state().c_str(), m.mail_from().c_str(), Time(m.arrival_unix_ms()).c_str(),
                  static_cast<unsigned long long>(m.size()));
      if (!m.hold_reason().empty()) std::printf("held because %s\n", m.hold_reason().c_str());
      if (!resp.protection().empty()) std::printf("protection   %s\n", resp.protection().c_str());
      if (!resp.derived_from().empty()) std::printf("copy of      %s\n", resp.derived_from().c_str());
      if (!resp.client_address().empty()) {
        std::printf("client       %s (%s)\n", resp.client_address().c_str(), resp.helo().c_str());
        std::printf("transport    %s\n", resp.tls().empty() ? "in clear" : resp.tls().c_str());
        if (!resp.spf_result().empty())
          std::printf("spf          %s for %s\n", resp.spf_result().c_str(), resp.spf_domain().c_str());
      }
      for (const auto& r : resp.recipients())
        std::printf("  %-36s %-11s %s %s\n", r.address().c_str(), r.status().c_str(), Time(r.at_unix_ms()).c_str(),
                    r.detail().c_str());
    });
  }
  if (queue->got_subcommand("release")) {
    v1::ReleaseMessageRequest req;
    req.set_queue_id(qid);
    v1::ReleaseMessageResponse resp;
    if (int rc = Call(qs.get(), &QS::ReleaseMessage, req, &resp)) return rc;
    return print(resp, [&] { std::printf("released %s: queued again as %s\n", qid.c_str(), resp.queue_id().c_str()); });
  }
  if (queue->got_subcommand("delete")) {
    v1::DeleteMessageRequest req;
    req.set_queue_id(qid);
    req.set_reason(reason);
    v1::DeleteMessageResponse resp;
    if (int rc = Call(qs.get(), &QS::DeleteMessage, req, &resp)) return rc;
    return print(resp, [&] { std::printf("deleted %s from %s/\n", qid.c_str(), resp.state().c_str()); });
  }
  if (queue->got_subcommand("recall")) {
    if (qid.empty() == from.empty()) {
      std::fprintf(stderr, "mailsealctl: give a queue id or --from ADDRESS\n");
      return kUsage;
    }
    v1::RecallMessagesRequest req;
    req.set_queue_id(qid);
    req.set_mail_from(from);
    req.set_since_unix_ms(since);
    req.set_until_unix_ms(until);
    req.set_reason(reason);
    v1::RecallMessagesResponse resp;
    if (int rc = Call(qs.get(), &QS::RecallMessages, req, &resp)) return rc;
    int failed = 0;
    for (const auto& m : resp.messages()) failed += !m.error().empty();
    print(resp, [&] {
      for (const auto& m : resp.messages()) {
        std::string rcpts;
        for (const auto& r : m.recipients()) rcpts += (rcpts.empty() ? "" : ",") + r;
        std::printf("%-28s %s\n", m.queue_id().c_str(), m.error().empty() ? ("recalled " + rcpts).c_str() : m.error().c_str());
      }
    });
    return failed ? kError : kOk;
  }

  // ---- audit
  if (audit->got_subcommand("head") || audit->got_subcommand("export")) {
    v1::GetTreeHeadResponse resp;
    if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &resp)) return rc;
    if (audit->got_subcommand("export")) {
      std::ofstream out(file, std::ios::trunc);
      out << Json(resp.head()) << "\n";
      if (!out) {
        std::fprintf(stderr, "mailsealctl: %s: cannot be written\n", file.c_str());
        return kError;
      }
      std::printf("tree head over %llu records saved to %s\n", static_cast<unsigned long long>(resp.head().tree_size()),
                  file.c_str());
      return kOk;
    }
    return print(resp, [&] {
      std::printf("tree_size %llu\nroot_hash %s\nsigned_at %s\n", static_cast<unsigned long long>(resp.head().tree_size()),
                  Hex(resp.head().root_hash()).c_str(), Time(resp.head().time_unix_ms()).c_str());
    });
  }
  if (audit->got_subcommand("verify")) {
    // The live log must extend the exported head: same first records (consistency proof to
    // the current signed head). A truncated or rewritten log fails here.
    std::string text;
    v1::TreeHead old;
    if (!Slurp(file, &text) || !google::protobuf::util::JsonStringToMessage(text, &old).ok()) {
      std::fprintf(stderr, "mailsealctl: %s: not a tree head saved by 'audit export'\n", file.c_str());
      return kUsage;
    }
    v1::GetTreeHeadResponse now;
    if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &now)) return rc;
    if (now.head().tree_size() < old.tree_size()) {
      std::printf("FAILED: the log has %llu records, fewer than the %llu of the exported head: it was truncated\n",
                  static_cast<unsigned long long>(now.head().tree_size()), static_cast<unsigned long long>(old.tree_size()));
      return kError;
    }
    v1::GetConsistencyProofRequest req;
    req.set_old_size(old.tree_size());
    req.set_new_size(now.head().tree_size());
    v1::GetConsistencyProofResponse cproof;
    if (int rc = Call(as.get(), &AS::GetConsistencyProof, req, &cproof)) return rc;
    std::vector<mailseal::audit::Hash> hashes(cproof.hashes().begin(), cproof.hashes().end());
    bool ok = old.tree_size() == now.head().tree_size()
                  ? old.root_hash() == now.head().root_hash()
                  : mailseal::audit::VerifyConsistency(old.tree_size(), now.head().tree_size(), old.root_hash(),
                                                       now.head().root_hash(), hashes);
    if (!ok) {
      std::printf("FAILED: the log is not an extension of the exported head (%llu records): records were rewritten\n",
                  static_cast<unsigned long long>(old.tree_size()));
      return kError;
    }
    std::printf("consistent: the %llu records of the exported head are unchanged in the log of %llu\n",
                static_cast<unsigned long long>(old.tree_size()), static_cast<unsigned long long>(now.head().tree_size()));
    return kOk;
  }
  if (audit->got_subcommand("proof")) {
    v1::GetTreeHeadResponse head;
    if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &head)) return rc;
    v1::GetInclusionProofRequest req;
    req.set_seq(seq);
    req.set_tree_size(head.head().tree_size());
    v1::GetInclusionProofResponse resp;
    if (int rc = Call(as.get(), &AS::GetInclusionProof, req, &resp)) return rc;
    std::vector<mailseal::audit::Hash> hashes(resp.hashes().begin(), resp.hashes().end());
    bool ok = mailseal::audit::VerifyInclusion(resp.leaf_hash(), seq, resp.tree_size(), hashes, head.head().root_hash());
    print(resp, [&] {
      PrintRecord(resp.record());
      std::printf("%s: record %llu is in the signed tree of %llu records (root %s)\n", ok ? "included" : "FAILED",
                  static_cast<unsigned long long>(seq), static_cast<unsigned long long>(resp.tree_size()),
                  Hex(head.head().root_hash()).c_str());
    });
    return ok ? kOk : kError;
  }
  if (audit->got_subcommand("records")) {
    v1::ListRecordsRequest req;
    req.set_start_seq(start);
    req.set_action_prefix(q_action);
    req.set_actor(q_actor);
    req.set_message_id(q_message);
    if (!q_outcome.empty()) {
      v1::AuditRecord::Outcome o = v1::AuditRecord::OUTCOME_UNSPECIFIED;
      std::string name = "OUTCOME_" + q_outcome;
      for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      v1::AuditRecord::Outcome_Parse(name, &o);
      req.set_outcome(o);
    }
    v1::ListRecordsResponse all;
    do {   // filtered pages may be short: go on until `limit` records or the end
      req.set_page_size(limit - static_cast<uint32_t>(all.records_size()));
      v1::ListRecordsResponse page;
      if (int rc = Call(as.get(), &AS::ListRecords, req, &page)) return rc;
      for (auto& r : *page.mutable_records()) *all.add_records() = std::move(r);
      req.set_page_token(page.next_page_token());
    } while (!req.page_token().empty() && static_cast<uint32_t>(all.records_size()) < limit);
    return print(all, [&] {
      for (const auto& r : all.records()) PrintRecord(r);
    });
  }
  if (audit->got_subcommand("tail")) {
    if (tail->count("--start") == 0) {
      v1::GetTreeHeadResponse head;
      if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &head)) return rc;
      start = head.head().tree_size() > 10 ? head.head().tree_size() - 10 : 0;
    }
    grpc::ClientContext ctx;
    v1::WatchRecordsRequest req;
    req.set_start_seq(start);
    std::unique_ptr<grpc::ClientReader<v1::WatchRecordsResponse>> reader = as->WatchRecords(&ctx, req);
    v1::WatchRecordsResponse batch;
    while (reader->Read(&batch)) {
      for (const auto& r : batch.records()) {
        if (json) std::printf("%s\n", Json(r).c_str());
        else PrintRecord(r);
      }
      std::fflush(stdout);
      if (!follow) {
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status st = reader->Finish();
    if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) return Report(st);
    return kOk;
  }

  // ---- keys
  if (keys->got_subcommand("list")) {
    v1::ListKeysResponse resp;
    if (int rc = Call(ks.get(), &KS::ListKeys, v1::ListKeysRequest(), &resp)) return rc;
    return print(resp, [&] {
      std::printf("%-20s %-12s %-9s %7s  %-3s %-40s %s\n", "LABEL", "PURPOSE", "TYPE", "AGE", "USE", "CERTIFICATE", "NOT AFTER");
      for (const auto& k : resp.keys()) PrintKey(k);
    });
  }
  auto write_csr = [&](const std::string& csr) {
    if (csr_out.empty()) {
      std::fputs(csr.c_str(), stdout);
      return kOk;
    }
    std::ofstream out(csr_out, std::ios::trunc);
    out << csr;
    if (!out) {
      std::fprintf(stderr, "mailsealctl: %s: cannot be written\n", csr_out.c_str());
      return kError;
    }
    std::printf("CSR written to %s\n", csr_out.c_str());
    return kOk;
  };
  if (keys->got_subcommand("generate") || keys->got_subcommand("rotate")) {
    v1::GenerateKeyRequest req;
    req.set_label(label);
    req.set_purpose(purpose);
    req.set_key_type(key_type);
    for (const auto& d : domains) req.add_domains(d);
    v1::GenerateKeyResponse resp;
    if (int rc = Call(ks.get(), &KS::GenerateKey, req, &resp)) return rc;
    if (json) return print(resp, [] {});
    PrintKey(resp.key());
    return write_csr(resp.csr_pem());
  }
  if (keys->got_subcommand("csr")) {
    v1::CreateCsrRequest req;
    req.set_label(label);
    for (const auto& d : domains) req.add_domains(d);
    v1::CreateCsrResponse resp;
    if (int rc = Call(ks.get(), &KS::CreateCsr, req, &resp)) return rc;
    if (json) return print(resp, [] {});
    return write_csr(resp.csr_pem());
  }
  if (keys->got_subcommand("install")) {
    v1::InstallCertificateRequest req;
    req.set_label(label);
    std::string chain;
    if (!Slurp(cert_file, req.mutable_certificate_pem()) || (!chain_file.empty() && !Slurp(chain_file, &chain))) {
      std::fprintf(stderr, "mailsealctl: certificate or chain file cannot be read\n");
      return kUsage;
    }
    if (!chain.empty()) req.add_chain_pem(chain);
    for (const auto& d : domains) req.add_domains(d);
    v1::InstallCertificateResponse resp;
    if (int rc = Call(ks.get(), &KS::InstallCertificate, req, &resp)) return rc;
    return print(resp, [&] { PrintKey(resp.key()); });
  }

  // ---- ceremonies
  if (cer->got_subcommand("start")) {
    v1::StartCeremonyRequest req;
    req.set_kind("destroy-key");
    req.set_key_label(label);
    req.set_reason(reason);
    v1::StartCeremonyResponse resp;
    if (int rc = Call(cs.get(), &CS::StartCeremony, req, &resp)) return rc;
    return print(resp, [&] {
      std::string names;
      for (const auto& c : resp.custodians()) names += (names.empty() ? "" : ", ") + c;
      std::printf("ceremony %s: destroy key pair '%s' once %u of %s approve\nstatement to sign:\n%s",
                  resp.ceremony_id().c_str(), label.c_str(), resp.threshold(), names.c_str(), resp.statement().c_str());
    });
  }
  if (cer->got_subcommand("approve")) {
    v1::GetCeremonyRequest greq;
    greq.set_ceremony_id(cid);
    v1::GetCeremonyResponse cur;
    if (int rc = Call(cs.get(), &CS::GetCeremony, greq, &cur)) return rc;
    if (cur.statement().empty()) {
      std::fprintf(stderr, "mailsealctl: ceremony %s is %s: nothing to approve\n", cid.c_str(), cur.state().c_str());
      return kError;
    }
    // The custodian signs here; only the signature is sent.
    FILE* f = std::fopen(custodian_key.c_str(), "r");
    EVP_PKEY* pkey = f ? PEM_read_PrivateKey(f, nullptr, nullptr, nullptr) : nullptr;
    if (f) std::fclose(f);
    if (!pkey) {
      std::fprintf(stderr, "mailsealctl: %s: not a readable private key (PEM)\n", custodian_key.c_str());
      return kUsage;
    }
    mailseal::Result<std::string> signature = mailseal::base::Sha256Sign(pkey, cur.statement());
    EVP_PKEY_free(pkey);
    if (!signature.ok()) {
      std::fprintf(stderr, "mailsealctl: signing the statement failed: %s\n", signature.status().message().c_str());
      return kError;
    }
    std::string sig = *signature;
    std::printf("signing for key pair '%s':\n%s", cur.key_label().c_str(), cur.statement().c_str());
    v1::ApproveCeremonyRequest req;
    req.set_ceremony_id(cid);
    req.set_custodian(custodian);
    req.set_signature(sig);
    v1::ApproveCeremonyResponse resp;
    if (int rc = Call(cs.get(), &CS::ApproveCeremony, req, &resp)) return rc;
    print(resp, [&] {
      std::printf("approvals %u; ceremony %s%s%s\n", resp.approvals(), resp.state().c_str(),
                  resp.detail().empty() ? "" : ": ", resp.detail().c_str());
    });
    return resp.state() == "failed" ? kError : kOk;
  }
  if (cer->got_subcommand("status")) {
    v1::GetCeremonyRequest req;
    req.set_ceremony_id(cid);
    v1::GetCeremonyResponse resp;
    if (int rc = Call(cs.get(), &CS::GetCeremony, req, &resp)) return rc;
    if (!transcript_out.empty()) {
      std::ofstream out(transcript_out, std::ios::binary | std::ios::trunc);
      out << resp.transcript();
    }
    return print(resp, [&] { std::printf("state %s\n%s", resp.state().c_str(), resp.text().c_str()); });
  }
  return kUsage;
}
