// test_handler.h — a ServerHandler for tests that records what the session decided.
#pragma once

#include <string>
#include <vector>

#include "dataplane/smtp/server_session.h"

namespace mailseal::smtp::testing {

struct Message {
  Transaction txn;
  std::string body;
};

class RecordingHandler : public ServerHandler {
 public:
  // auto_commit: answer 250 inside OnDataEnd (otherwise the test calls CompleteData).
  bool auto_commit = true;
  ServerSession* session = nullptr;
  std::vector<Message> messages;
  std::string current;
  int aborts = 0;
  bool refuse_mail = false;
  bool pending_mail = false;   // OnMail answers kReplyPending (the test calls CompleteMail)
  bool pending_rcpt = false;   // OnRcpt answers kReplyPending for @dir.test (the test calls CompleteRcpt)
  std::vector<std::string> events;   // for golden transcripts

  Reply OnMail(const Transaction& t) override {
    if (refuse_mail) return MakeReply(452, "4.3.1", "Insufficient system resources");
    if (pending_mail) return MakeReply(kReplyPending, "", "");
    return {};
  }
  Reply OnRcpt(const Transaction& t, const Recipient& r) override {
    if (pending_rcpt && r.address.find("@dir.test") != std::string::npos) return MakeReply(kReplyPending, "", "");
    if (r.address.find("@denied.test") != std::string::npos)
      return MakeReply(554, "5.7.1", "Relay access denied");
    return {};
  }
  Reply OnDataStart(const Transaction&) override {
    current.clear();
    return {};
  }
  void OnDataChunk(std::string_view b) override { current.append(b); }
  void OnDataEnd(const Transaction& t) override {
    messages.push_back({t, current});
    current.clear();
    if (auto_commit && session)
      session->CompleteData(MakeReply(250, "2.0.0", "Ok: queued as Q" + std::to_string(messages.size())));
  }
  void OnDataAbort() override {
    ++aborts;
    current.clear();
  }
};

}  // namespace mailseal::smtp::testing
