// recipients.h — the recipient directory (DE-11): local recipients checked at RCPT against
// the agency's LDAP / Active Directory, so mail for an unknown user is refused in the SMTP
// dialogue (550 5.1.1) instead of accepted and bounced later (no backscatter).
//
// Lookups run on a few threads of their own (libldap is blocking) from a bounded queue; the
// net thread that asked gets the answer posted back and never waits. Answers are cached with
// a bound on entries and a time to live (known and unknown addresses separately); a failure
// (server down, bind refused, timeout) is never cached and never turned into "unknown": the
// caller answers 451 so that the sender's server tries again.
//
// SECURITY: the address is outside input: it is escaped into the filter (RFC 4515) and
// bounded in length; the bind password is read from a file (0600/0400) at start, sent only
// over TLS (ldaps:// or StartTLS) unless the server is on loopback, and never logged.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "dataplane/base/status.h"
#include "dataplane/pki/ldap.h"

namespace mailseal::directory {

struct DirectoryOptions {
  pki::LdapSearch query;   // server, base, filter template ("%s": the address), bind, TLS
  long timeout_ms = 3000;
  size_t cache_entries = 10000;
  int64_t known_ttl_ms = 300000;
  int64_t unknown_ttl_ms = 60000;
  int threads = 2;
  size_t max_queued = 1024;
};

enum class Lookup { kKnown, kUnknown, kUnavailable };

struct Answer {
  Lookup result = Lookup::kUnavailable;
  std::string detail;   // for the log (the error, or how many entries matched)
  bool cached = false;
};

class RecipientDirectory {
 public:
  using Done = std::function<void(const Answer&)>;
  explicit RecipientDirectory(DirectoryOptions options);
  ~RecipientDirectory();
  RecipientDirectory(const RecipientDirectory&) = delete;
  RecipientDirectory& operator=(const RecipientDirectory&) = delete;

  // Cached: the cached answer for `address`, if a fresh one is there. Any thread.
  std::optional<Answer> Cached(const std::string& address);
  // Submit queues a lookup; false when the queue is full (then nothing is called). `done`
  // runs on a directory thread.
  bool Submit(const std::string& address, Done done);
  // Lookup: the same, synchronously (tests, the CLI's check).
  Answer Lookup(const std::string& address);
  void Stop();

  struct Stats {
    uint64_t lookups = 0, hits = 0, unknown = 0, unavailable = 0;
  };
  Stats stats() const;

 private:
  struct Job {
    std::string address;
    Done done;
  };
  struct Entry {
    bool known;
    int64_t expires_ms;
    std::list<std::string>::iterator lru;
  };
  void Run();
  void Remember(const std::string& key, bool known);

  DirectoryOptions options_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  bool stopping_ = false;
  std::unordered_map<std::string, Entry> cache_;   // under mu_
  std::list<std::string> lru_;                     // most recent first
  Stats stats_;
  std::vector<std::thread> threads_;
};

}  // namespace mailseal::directory
