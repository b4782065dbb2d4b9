// notifier.h — notices about held mail (SEE-2.1b "the sender and administrator are told",
// SEE-2.8 "notify S, SA", SEE-2.12): from postmaster@, digested, rate-limited, loop-proof.
//
// Sans-I/O: the queue manager reports each held copy (OnHeld) and asks, on its scan, which
// notices are due (Due); it queues them as messages from the null sender, marked as
// notifications (is_dsn) and RFC 3834 Auto-Submitted, so that nothing is ever sent about them.
//
// Rules:
//  - Nothing about mail from the null sender, from postmaster@/mailer-daemon@, or about a
//    notification; the sender is told only when its domain is one of ours (never another
//    agency's postmaster or users).
//  - Per notified address, the first held message opens a gathering window (`gather_ms`); at
//    its end one notice lists everything held meanwhile. After a notice, the next one to the
//    same address waits at least `interval_ms`; everything held meanwhile goes into it. One
//    notice lists at most `max_listed` messages and says how many more there were. A thousand
//    messages held by one missing certificate are one notice to the administrator.
//  - Pending items per address are bounded (`max_pending`); beyond it only a count is kept.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mailseal::queue {

struct NotifierOptions {
  std::string hostname;                  // reporting host, in the notice
  std::vector<std::string> local_domains;   // ours (lower case; ".x" covers sub-domains)
  std::string admin_address;             // empty: postmaster@<first local domain>
  bool notify_sender = true;
  int64_t gather_ms = 10000;
  int64_t interval_ms = 600000;
  size_t max_listed = 500;
  size_t max_pending = 10000;
};

struct HeldItem {
  std::string queue_id;
  std::string sender;
  std::vector<std::string> recipients;
  std::string reason;
  int64_t at_ms = 0;
  bool warned = false;   // delivered with a security warning (SEE-2.8 receiving: notify RA), not held
};

struct Notice {
  std::string to;        // envelope recipient
  std::string message;   // the whole RFC 5322 message (CRLF)
  size_t items = 0;      // held messages it reports
};

class Notifier {
 public:
  explicit Notifier(NotifierOptions o) : o_(std::move(o)) {}
  void SetOptions(NotifierOptions o) { o_ = std::move(o); }
  const NotifierOptions& options() const { return o_; }

  // OnHeld: a copy was held. `is_notification`: the held message is itself a notice or DSN.
  void OnHeld(const HeldItem& item, bool is_notification, int64_t now_ms);
  // OnWarned: inbound mail was delivered with a HARD/SOFT warning; the recipients'
  // administrator is told (SEE-2.8 "notify RA"), in the same digests.
  void OnWarned(HeldItem item, bool is_notification, int64_t now_ms);
  // Forget: held copy `queue_id` was released before its notice went: leave it out (a notice
  // left with nothing to report is not sent).
  void Forget(const std::string& queue_id);
  // Due: the notices whose time has come (their items leave the pending set).
  std::vector<Notice> Due(int64_t now_ms);
  // Suppressed: held items about which, by the rules above, nobody is told (tests, metrics).
  uint64_t suppressed() const { return suppressed_; }

  bool IsLocalDomain(const std::string& domain) const;
  std::string AdminAddress() const;

 private:
  struct Pending {
    std::vector<HeldItem> items;
    size_t dropped = 0;           // beyond max_pending: counted only
    int64_t due_ms = 0;           // when the next notice goes (0: nothing pending)
    int64_t last_sent_ms = -1;
    bool admin = false;
  };
  void Add(const std::string& to, bool admin, const HeldItem& item, int64_t now_ms);
  Notice Render(const std::string& to, const Pending& p, int64_t now_ms) const;

  NotifierOptions o_;
  std::map<std::string, Pending> pending_;   // by notified address (lower case)
  uint64_t suppressed_ = 0;
};

}  // namespace mailseal::queue
