// notifier.cc — see notifier.h.
#include "dataplane/queue/notifier.h"

#include <algorithm>

#include <cctype>
#include <random>

#include "dataplane/base/status.h"
#include "dataplane/base/strings.h"
#include "dataplane/queue/dsn.h"

namespace mailseal::queue {
namespace {

// Clean: a value from the envelope or a reason, safe on one header or body line.
std::string Clean(const std::string& s, size_t max = 300) {
  std::string out;
  for (char c : s) {
    if (out.size() >= max) break;
    out.push_back(c == '\r' || c == '\n' || c == '\t' || static_cast<unsigned char>(c) < 0x20 ? ' ' : c);
  }
  return out;
}

}  // namespace

bool Notifier::IsLocalDomain(const std::string& domain) const {
  return base::DomainListCovers(o_.local_domains, base::AsciiLower(domain));
}

std::string Notifier::AdminAddress() const {
  if (!o_.admin_address.empty()) return base::AsciiLower(o_.admin_address);
  for (const std::string& l : o_.local_domains)
    if (!l.empty() && l[0] != '.') return "postmaster@" + l;
  return "postmaster@" + base::AsciiLower(o_.hostname);
}

void Notifier::OnHeld(const HeldItem& item, bool is_notification, int64_t now_ms) {
  std::string sender = base::AsciiLower(item.sender);
  size_t at = sender.rfind('@');
  std::string local = at == std::string::npos ? sender : sender.substr(0, at);
  std::string domain = at == std::string::npos ? "" : sender.substr(at + 1);
  // Loop-proof (SEE-2.12): never about a notice, the null sender or a postmaster/daemon.
  if (is_notification || sender.empty() || local == "postmaster" || local == "mailer-daemon") {
    ++suppressed_;
    return;
  }
  Add(AdminAddress(), true, item, now_ms);
  if (o_.notify_sender && IsLocalDomain(domain) && sender != AdminAddress()) Add(sender, false, item, now_ms);
}

void Notifier::OnWarned(HeldItem item, bool is_notification, int64_t now_ms) {
  if (is_notification) {
    ++suppressed_;
    return;
  }
  item.warned = true;
  Add(AdminAddress(), true, item, now_ms);
}

void Notifier::Add(const std::string& to, bool admin, const HeldItem& item, int64_t now_ms) {
  Pending& p = pending_[to];
  p.admin = admin;
  if (p.items.size() < o_.max_pending) p.items.push_back(item);
  else ++p.dropped;
  if (p.due_ms == 0) {
    int64_t earliest = p.last_sent_ms < 0 ? now_ms : p.last_sent_ms + o_.interval_ms;
    p.due_ms = std::max(now_ms + o_.gather_ms, earliest);
  }
}

void Notifier::Forget(const std::string& queue_id) {
  for (auto& [to, p] : pending_) {
    auto gone = std::remove_if(p.items.begin(), p.items.end(), [&](const HeldItem& i) { return !i.warned && i.queue_id == queue_id; });
    if (gone == p.items.end()) continue;
    p.items.erase(gone, p.items.end());
    if (p.items.empty() && p.dropped == 0) p.due_ms = 0;
  }
}

std::vector<Notice> Notifier::Due(int64_t now_ms) {
  std::vector<Notice> out;
  // Addresses with nothing pending whose rate limit has run out are forgotten (bounded map).
  for (auto it = pending_.begin(); it != pending_.end();)
    it = it->second.due_ms == 0 && now_ms - it->second.last_sent_ms >= o_.interval_ms ? pending_.erase(it) : std::next(it);
  for (auto& [to, p] : pending_) {
    if (p.due_ms == 0 || p.due_ms > now_ms) continue;
    out.push_back(Render(to, p, now_ms));
    p.items.clear();
    p.dropped = 0;
    p.due_ms = 0;
    p.last_sent_ms = now_ms;
  }
  return out;
}

Notice Notifier::Render(const std::string& to, const Pending& p, int64_t now_ms) const {
  size_t total = p.items.size() + p.dropped;
  std::string from = AdminAddress();
  size_t at = from.rfind('@');
  std::string postmaster = "postmaster@" + (at == std::string::npos ? base::AsciiLower(o_.hostname) : from.substr(at + 1));
  static thread_local std::mt19937_64 rnd{std::random_device{}()};
  std::string msgid = StrCat("<held.", now_ms, ".", rnd() % 1000000000, "@", base::AsciiLower(o_.hostname), ">");
  std::string m;
  m += StrCat("From: Mail Delivery System <", postmaster, ">\r\n");
  m += StrCat("To: <", to, ">\r\n");
  size_t warned = 0;
  for (const HeldItem& it : p.items) warned += it.warned;
  std::string subject = warned == 0          ? (total == 1 ? "A message was held and not sent"
                                                           : StrCat(total, " messages were held and not sent"))
                        : warned == total    ? (total == 1 ? "A message was delivered with a security warning"
                                                           : StrCat(total, " messages were delivered with a security warning"))
                                             : StrCat(total, " messages need attention (held, or delivered with a warning)");
  m += StrCat("Subject: ", subject, "\r\n");
  m += StrCat("Date: ", Rfc5322Date(now_ms), "\r\n");
  m += StrCat("Message-ID: ", msgid, "\r\n");
  m += "Auto-Submitted: auto-generated\r\n";   // RFC 3834 §5: automatic, not a reply; nothing answers it
  m += "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n\r\n";
  if (warned < total) {
    m += StrCat("The mail gateway ", Clean(o_.hostname), " held ", total - warned == 1 ? "a message" : StrCat(total - warned, " messages"),
                " instead of sending\r\nthem, because they could not be sent with the protection the policy requires.\r\n");
    m += p.admin ? "An administrator can release or delete them (mailsealctl queue list --state hold).\r\n"
                 : "Your administrator has been told and can release them once the reason is resolved.\r\n";
  }
  if (warned > 0)
    m += StrCat("The mail gateway ", Clean(o_.hostname), " delivered ", warned == 1 ? "a message" : StrCat(warned, " messages"),
                " with a security warning\r\n(SEE-2.8): a signature or certificate could not be fully checked (each one's\r\n"
                "warning is below: inbound mail carries it in the Subject; outbound mail was sealed\r\n"
                "to a certificate whose revocation status could not be had).\r\n");
  m += "\r\n";
  size_t listed = 0;
  for (const HeldItem& it : p.items) {
    if (listed == o_.max_listed) break;
    ++listed;
    std::string rcpts;
    for (const std::string& r : it.recipients) rcpts += StrCat(rcpts.empty() ? "" : ", ", Clean(r, 200));
    m += StrCat("Queue id:   ", Clean(it.queue_id, 80), "\r\n");
    m += StrCat(it.warned ? "Delivered:  " : "Held at:    ", Rfc5322Date(it.at_ms), "\r\n");
    if (p.admin) m += StrCat("From:       <", Clean(it.sender, 200), ">\r\n");
    m += StrCat("To:         ", Clean(rcpts, 600), "\r\n");
    m += StrCat(it.warned ? "Warning:    " : "Reason:     ", Clean(it.reason, 600), "\r\n\r\n");
  }
  if (total > listed) m += StrCat("... and ", total - listed, " more held message(s), not listed here.\r\n");
  return {to, m, total};
}

}  // namespace mailseal::queue
