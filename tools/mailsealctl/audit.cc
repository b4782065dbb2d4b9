// audit.cc — mailsealctl audit: the audit trail (records, live tail, signed heads, proofs).
#include <google/protobuf/util/json_util.h>

#include <cctype>
#include <fstream>
#include <vector>

#include "control/audit/merkle.h"
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using AS = v1::AuditService::Stub;

struct AuditArgs {
  uint64_t start = 0, seq = 0;
  uint32_t limit = 100;
  bool follow = false;
  std::string file, action, actor, message, outcome;
  CLI::App* tail = nullptr;   // to tell whether --start was given
};

// Head prints the signed tree head, or (export) saves it for a later 'audit verify'.
int Head(const Context& c, const AuditArgs& a, bool save) {
  auto as = v1::AuditService::NewStub(c.channel);
  v1::GetTreeHeadResponse resp;
  if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &resp)) return rc;
  if (save) {
    std::ofstream out(a.file, std::ios::trunc);
    out << Json(resp.head()) << "\n";
    if (!out) {
      std::fprintf(stderr, "mailsealctl: %s: cannot be written\n", a.file.c_str());
      return kError;
    }
    std::printf("tree head over %llu records saved to %s\n", static_cast<unsigned long long>(resp.head().tree_size()),
                a.file.c_str());
    return kOk;
  }
  return c.Print(resp, [&] {
    std::printf("tree_size %llu\nroot_hash %s\nsigned_at %s\n", static_cast<unsigned long long>(resp.head().tree_size()),
                Hex(resp.head().root_hash()).c_str(), Time(resp.head().time_unix_ms()).c_str());
  });
}

// Verify: the live log must extend the exported head — same first records (consistency
// proof to the current signed head). A truncated or rewritten log fails here.
int Verify(const Context& c, const AuditArgs& a) {
  auto as = v1::AuditService::NewStub(c.channel);
  std::string text;
  v1::TreeHead old;
  if (!Slurp(a.file, &text) || !google::protobuf::util::JsonStringToMessage(text, &old).ok()) {
    std::fprintf(stderr, "mailsealctl: %s: not a tree head saved by 'audit export'\n", a.file.c_str());
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

int Proof(const Context& c, const AuditArgs& a) {
  auto as = v1::AuditService::NewStub(c.channel);
  v1::GetTreeHeadResponse head;
  if (int rc = Call(as.get(), &AS::GetTreeHead, v1::GetTreeHeadRequest(), &head)) return rc;
  v1::GetInclusionProofRequest req;
  req.set_seq(a.seq);
  req.set_tree_size(head.head().tree_size());
  v1::GetInclusionProofResponse resp;
  if (int rc = Call(as.get(), &AS::GetInclusionProof, req, &resp)) return rc;
  std::vector<mailseal::audit::Hash> hashes(resp.hashes().begin(), resp.hashes().end());
  bool ok = mailseal::audit::VerifyInclusion(resp.leaf_hash(), a.seq, resp.tree_size(), hashes, head.head().root_hash());
  c.Print(resp, [&] {
    PrintRecord(resp.record());
    std::printf("%s: record %llu is in the signed tree of %llu records (root %s)\n", ok ? "included" : "FAILED",
                static_cast<unsigned long long>(a.seq), static_cast<unsigned long long>(resp.tree_size()),
                Hex(head.head().root_hash()).c_str());
  });
  return ok ? kOk : kError;
}

int Records(const Context& c, const AuditArgs& a) {
  auto as = v1::AuditService::NewStub(c.channel);
  v1::ListRecordsRequest req;
  req.set_start_seq(a.start);
  req.set_action_prefix(a.action);
  req.set_actor(a.actor);
  req.set_message_id(a.message);
  if (!a.outcome.empty()) {
    v1::AuditRecord::Outcome o = v1::AuditRecord::OUTCOME_UNSPECIFIED;
    std::string name = "OUTCOME_" + a.outcome;
    for (char& ch : name) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    v1::AuditRecord::Outcome_Parse(name, &o);
    req.set_outcome(o);
  }
  v1::ListRecordsResponse all;
  do {   // filtered pages may be short: go on until `limit` records or the end
    req.set_page_size(a.limit - static_cast<uint32_t>(all.records_size()));
    v1::ListRecordsResponse page;
    if (int rc = Call(as.get(), &AS::ListRecords, req, &page)) return rc;
    for (auto& r : *page.mutable_records()) *all.add_records() = std::move(r);
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty() && static_cast<uint32_t>(all.records_size()) < a.limit);
  return c.Print(all, [&] {
    for (const auto& r : all.records()) PrintRecord(r);
  });
}

int Tail(const Context& c, const AuditArgs& a) {
  auto as = v1::AuditService::NewStub(c.channel);
  uint64_t start = a.start;
  if (a.tail->count("--start") == 0) {
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
      if (c.json) std::printf("%s\n", Json(r).c_str());
      else PrintRecord(r);
    }
    std::fflush(stdout);
    if (!a.follow) {
      ctx.TryCancel();
      break;
    }
  }
  grpc::Status st = reader->Finish();
  if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) return Report(st);
  return kOk;
}
}  // namespace

void AddAuditCommands(CLI::App& app, Runner* chosen) {
  auto a = std::make_shared<AuditArgs>();
  CLI::App* audit = app.add_subcommand("audit", "the audit trail")->require_subcommand(1);
  On(audit->add_subcommand("head", "sign and show the tree head over every record"), chosen,
     [a](const Context& c) { return Head(c, *a, false); });
  CLI::App* records = audit->add_subcommand("records", "query records");
  records->add_option("--start", a->start, "first record");
  records->add_option("--limit", a->limit, "at most this many");
  records->add_option("--action", a->action, "action prefix (mail., mailseal.v1.KeyService, ceremony.)");
  records->add_option("--actor", a->actor, "exact actor (CN=admin-1, mailseald)");
  records->add_option("--message", a->message, "queue id the record concerns");
  records->add_option("--outcome", a->outcome, "allowed, denied, done or failed")
      ->check(CLI::IsMember({"allowed", "denied", "done", "failed"}));
  On(records, chosen, [a](const Context& c) { return Records(c, *a); });
  a->tail = audit->add_subcommand("tail", "print records; with -f, keep printing new ones");
  a->tail->add_option("--start", a->start, "first record (default: the last 10)");
  a->tail->add_flag("-f,--follow", a->follow, "wait for new records");
  On(a->tail, chosen, [a](const Context& c) { return Tail(c, *a); });
  CLI::App* proof = audit->add_subcommand("proof", "prove a record is in the signed tree (RFC 9162 inclusion)");
  proof->add_option("seq", a->seq, "record number")->required();
  On(proof, chosen, [a](const Context& c) { return Proof(c, *a); });
  CLI::App* exp = audit->add_subcommand("export", "save a signed tree head to FILE, to check the log against later");
  exp->add_option("file", a->file, "where to write the head (JSON)")->required();
  On(exp, chosen, [a](const Context& c) { return Head(c, *a, true); });
  CLI::App* verify = audit->add_subcommand("verify", "check the live log is an extension of an exported head");
  verify->add_option("--exported", a->file, "a head saved by 'audit export'")->required();
  On(verify, chosen, [a](const Context& c) { return Verify(c, *a); });
}

}  // namespace mailsealctl
