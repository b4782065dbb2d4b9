// cli.h — what mailsealctl's command groups share: the connection and output choice (Context),
// the one printer for table and JSON output, calls with deadlines and error reports, and the
// registration of each group's commands (one file per group: queue.cc, policy.cc, audit.cc,
// keys.cc, ceremony.cc, health.cc, certs.cc, cluster.cc).
#pragma once

#include <CLI/CLI.hpp>
#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "mailseal/v1/control.grpc.pb.h"

namespace mailsealctl {

namespace v1 = mailseal::v1;

// Exit codes: 0 ok, 1 error (including no connection or a failed check), 2 usage, 3 permission
// denied.
constexpr int kOk = 0, kError = 1, kUsage = 2, kDenied = 3;

// Context: the connection and the output format, known once the command line is parsed.
struct Context {
  std::shared_ptr<grpc::Channel> channel;
  bool json = false;
  // Print: `m` as JSON with -o json, else the table printer. Returns kOk.
  int Print(const google::protobuf::Message& m, const std::function<void()>& table) const;
};

// Runner: the command the user chose, run after parsing with the connection.
using Runner = std::function<int(const Context&)>;

// Each group adds its commands to `app`; the one chosen leaves itself in *chosen.
void AddQueueCommands(CLI::App& app, Runner* chosen);
void AddPolicyCommands(CLI::App& app, Runner* chosen);
void AddAuditCommands(CLI::App& app, Runner* chosen);
void AddKeyCommands(CLI::App& app, Runner* chosen);
void AddCeremonyCommands(CLI::App& app, Runner* chosen);
void AddHealthCommand(CLI::App& app, Runner* chosen);
void AddCertCommands(CLI::App& app, Runner* chosen);
void AddClusterCommands(CLI::App& app, Runner* chosen);

std::string Env(const char* name);
// Slurp: a file's bytes (base::ReadFile), as a bool for && chains.
bool Slurp(const std::string& path, std::string* out);
// Report prints a failed call, with the field named by a google.rpc.BadRequest detail; returns
// the exit code.
int Report(const grpc::Status& st);
std::string Json(const google::protobuf::Message& m);
std::string Hex(const std::string& bytes);
std::string Time(int64_t unix_ms);
void PrintRecord(const v1::AuditRecord& r);
void PrintKey(const v1::KeyInfo& k);

// Call makes one unary call with a deadline; prints the error and returns its exit code.
template <typename Stub, typename Req, typename Resp, typename Method>
int Call(Stub* stub, Method method, const Req& req, Resp* resp) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::Status st = (stub->*method)(&ctx, req, resp);
  return st.ok() ? kOk : Report(st);
}

// On: registers the runner a subcommand leaves when the user chose it.
inline void On(CLI::App* sub, Runner* chosen, Runner run) {
  sub->callback([chosen, run = std::move(run)] { *chosen = run; });
}

}  // namespace mailsealctl
