// queue.cc — mailsealctl queue: spool states, held and queued mail.
#include "tools/mailsealctl/cli.h"

namespace mailsealctl {
namespace {
using QS = v1::QueueService::Stub;

struct QueueArgs {
  std::string state = "hold", qid, reason, from;
  int64_t since = 0, until = 0;
};

int Counts(const Context& c) {
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::GetCountsResponse resp;
  if (int rc = Call(qs.get(), &QS::GetCounts, v1::GetCountsRequest(), &resp)) return rc;
  return c.Print(resp, [&] {
    for (const char* s : {"incoming", "active", "deferred", "hold", "corrupt"})
      std::printf("%-10s %llu\n", s, static_cast<unsigned long long>(resp.counts().count(s) ? resp.counts().at(s) : 0));
  });
}

int List(const Context& c, const QueueArgs& a) {
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::ListMessagesRequest req;
  req.set_state(a.state);
  v1::ListMessagesResponse all;
  do {
    v1::ListMessagesResponse page;
    if (int rc = Call(qs.get(), &QS::ListMessages, req, &page)) return rc;
    for (const auto& m : page.messages()) *all.add_messages() = m;
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  return c.Print(all, [&] {
    std::printf("%-28s %-30s %8s  %s\n", "QUEUE ID", "FROM", "SIZE", a.state == "hold" ? "REASON" : "RECIPIENTS");
    for (const auto& m : all.messages()) {
      std::string rcpts;
      for (const auto& r : m.recipients()) rcpts += (rcpts.empty() ? "" : ",") + r;
      std::printf("%-28s %-30s %8llu  %s\n", m.queue_id().c_str(), m.mail_from().empty() ? "<>" : m.mail_from().c_str(),
                  static_cast<unsigned long long>(m.size()), a.state == "hold" ? m.hold_reason().c_str() : rcpts.c_str());
    }
  });
}

int Show(const Context& c, const QueueArgs& a) {
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::GetMessageRequest req;
  req.set_queue_id(a.qid);
  v1::GetMessageResponse resp;
  if (int rc = Call(qs.get(), &QS::GetMessage, req, &resp)) return rc;
  return c.Print(resp, [&] {
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
      if (!resp.spf_result().empty()) std::printf("spf          %s for %s\n", resp.spf_result().c_str(), resp.spf_domain().c_str());
    }
    for (const auto& r : resp.recipients())
      std::printf("  %-36s %-11s %s %s\n", r.address().c_str(), r.status().c_str(), Time(r.at_unix_ms()).c_str(),
                  r.detail().c_str());
  });
}

int Release(const Context& c, const QueueArgs& a) {
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::ReleaseMessageRequest req;
  req.set_queue_id(a.qid);
  v1::ReleaseMessageResponse resp;
  if (int rc = Call(qs.get(), &QS::ReleaseMessage, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("released %s: queued again as %s\n", a.qid.c_str(), resp.queue_id().c_str()); });
}

int Delete(const Context& c, const QueueArgs& a) {
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::DeleteMessageRequest req;
  req.set_queue_id(a.qid);
  req.set_reason(a.reason);
  v1::DeleteMessageResponse resp;
  if (int rc = Call(qs.get(), &QS::DeleteMessage, req, &resp)) return rc;
  return c.Print(resp, [&] { std::printf("deleted %s from %s/\n", a.qid.c_str(), resp.state().c_str()); });
}

int Recall(const Context& c, const QueueArgs& a) {
  if (a.qid.empty() == a.from.empty()) {
    std::fprintf(stderr, "mailsealctl: give a queue id or --from ADDRESS\n");
    return kUsage;
  }
  auto qs = v1::QueueService::NewStub(c.channel);
  v1::RecallMessagesRequest req;
  req.set_queue_id(a.qid);
  req.set_mail_from(a.from);
  req.set_since_unix_ms(a.since);
  req.set_until_unix_ms(a.until);
  req.set_reason(a.reason);
  v1::RecallMessagesResponse resp;
  if (int rc = Call(qs.get(), &QS::RecallMessages, req, &resp)) return rc;
  int failed = 0;
  for (const auto& m : resp.messages()) failed += !m.error().empty();
  c.Print(resp, [&] {
    for (const auto& m : resp.messages()) {
      std::string rcpts;
      for (const auto& r : m.recipients()) rcpts += (rcpts.empty() ? "" : ",") + r;
      std::printf("%-28s %s\n", m.queue_id().c_str(), m.error().empty() ? ("recalled " + rcpts).c_str() : m.error().c_str());
    }
  });
  return failed ? kError : kOk;
}
}  // namespace

void AddQueueCommands(CLI::App& app, Runner* chosen) {
  auto a = std::make_shared<QueueArgs>();
  CLI::App* queue = app.add_subcommand("queue", "spool states, held and queued mail")->require_subcommand(1);
  On(queue->add_subcommand("counts", "messages per state"), chosen, Counts);
  CLI::App* list = queue->add_subcommand("list", "messages of one state");
  list->add_option("--state", a->state, "incoming, active, deferred, hold or corrupt");
  On(list, chosen, [a](const Context& c) { return List(c, *a); });
  CLI::App* show = queue->add_subcommand("show", "one message's envelope and each recipient's status");
  show->add_option("queue_id", a->qid, "queue id")->required();
  On(show, chosen, [a](const Context& c) { return Show(c, *a); });
  CLI::App* release = queue->add_subcommand("release", "send a held message back through policy and sealing");
  release->add_option("queue_id", a->qid, "queue id of the held message")->required();
  On(release, chosen, [a](const Context& c) { return Release(c, *a); });
  CLI::App* del = queue->add_subcommand("delete", "remove a message from hold/ or corrupt/ (no DSN)");
  del->add_option("queue_id", a->qid, "queue id")->required();
  del->add_option("--reason", a->reason, "why (audited)")->required();
  On(del, chosen, [a](const Context& c) { return Delete(c, *a); });
  CLI::App* recall = queue->add_subcommand("recall", "withdraw queued or held mail not yet delivered (DE-6)");
  recall->add_option("queue_id", a->qid, "queue id (or select with --from)");
  recall->add_option("--from", a->from, "every message from this sender");
  recall->add_option("--since", a->since, "arrived at or after (unix ms)");
  recall->add_option("--until", a->until, "arrived at or before (unix ms)");
  recall->add_option("--reason", a->reason, "why (audited)")->required();
  On(recall, chosen, [a](const Context& c) { return Recall(c, *a); });
}

}  // namespace mailsealctl
