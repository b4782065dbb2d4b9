// policy.cc — mailsealctl policy: the versioned policy document.
#include <google/protobuf/text_format.h>
#include <unistd.h>

#include <fstream>

#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using PS = v1::PolicyService::Stub;

struct PolicyArgs {
  uint64_t version = 0, expect = 0, from = 0, to = 0;
  std::string file;
};

int Get(const Context& c, const PolicyArgs& a) {
  auto ps = v1::PolicyService::NewStub(c.channel);
  v1::GetPolicyRequest req;
  req.set_version(a.version);
  v1::GetPolicyResponse resp;
  if (int rc = Call(ps.get(), &PS::GetPolicy, req, &resp)) return rc;
  return c.Print(resp, [&] {
    std::string text;
    google::protobuf::TextFormat::PrintToString(resp.policy(), &text);
    std::fputs(text.c_str(), stdout);
  });
}

// Set stores a new version: from a file, or (edit) the current one changed in $EDITOR.
int Set(const Context& c, const PolicyArgs& a, bool edit) {
  auto ps = v1::PolicyService::NewStub(c.channel);
  v1::SetPolicyRequest req;
  if (edit) {
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
    if (!Slurp(a.file, &text) || !google::protobuf::TextFormat::ParseFromString(text, req.mutable_policy())) {
      std::fprintf(stderr, "mailsealctl: %s: not a readable PolicyDocument in text format\n", a.file.c_str());
      return kUsage;
    }
    req.set_expected_version(a.expect);
  }
  v1::SetPolicyResponse resp;
  if (int rc = Call(ps.get(), &PS::SetPolicy, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("policy version %llu stored\n", static_cast<unsigned long long>(resp.version())); });
}

int Diff(const Context& c, const PolicyArgs& a) {
  auto ps = v1::PolicyService::NewStub(c.channel);
  v1::DiffPolicyRequest req;
  req.set_from_version(a.from);
  req.set_to_version(a.to);
  v1::DiffPolicyResponse resp;
  if (int rc = Call(ps.get(), &PS::DiffPolicy, req, &resp)) return rc;
  return c.Print(resp, [&] {
    for (const auto& line : resp.changes()) std::printf("%s\n", line.c_str());
  });
}

int History(const Context& c) {
  auto ps = v1::PolicyService::NewStub(c.channel);
  v1::ListPolicyHistoryResponse resp;
  if (int rc = Call(ps.get(), &PS::ListPolicyHistory, v1::ListPolicyHistoryRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    for (const auto& v : resp.versions())
      std::printf("%4llu  %s  %-24s %s\n", static_cast<unsigned long long>(v.version()), Time(v.set_unix_ms()).c_str(),
                  v.actor().c_str(), v.comment().c_str());
  });
}
}  // namespace

void AddPolicyCommands(CLI::App& app, Runner* chosen) {
  auto a = std::make_shared<PolicyArgs>();
  CLI::App* policy = app.add_subcommand("policy", "the versioned policy document")->require_subcommand(1);
  CLI::App* get = policy->add_subcommand("get", "print a version (text format)");
  get->add_option("--version", a->version, "0 or absent: the current one");
  On(get, chosen, [a](const Context& c) { return Get(c, *a); });
  CLI::App* set = policy->add_subcommand("set", "store a new version from a text-format file");
  set->add_option("file", a->file, "PolicyDocument in protobuf text format")->required();
  set->add_option("--expect-version", a->expect, "the version the change was made against")->required();
  On(set, chosen, [a](const Context& c) { return Set(c, *a, false); });
  On(policy->add_subcommand("edit", "edit the current version in $EDITOR and store it"), chosen,
     [a](const Context& c) { return Set(c, *a, true); });
  CLI::App* diff = policy->add_subcommand("diff", "what changed between two versions");
  diff->add_option("from", a->from, "version (0: current)")->required();
  diff->add_option("to", a->to, "version (0: current)")->required();
  On(diff, chosen, [a](const Context& c) { return Diff(c, *a); });
  On(policy->add_subcommand("history", "every version, newest first"), chosen, History);
}

}  // namespace mailsealctl
